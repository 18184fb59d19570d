"""Triton Python-backend model `velocity` with the PyTorch engine (`grouplat export --engine torch`).

Thin adapter, copied into the repository as `velocity/N/model.py`: the engine (CUDA graphs,
autocast) lives in `grouplat.export.torch_engine`; request handling in `grouplat.serving.engines`.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from grouplat.export.torch_engine import triton_engine
from grouplat.serving import engines


class TritonPythonModel:
    def initialize(self, args):
        self.engine = triton_engine(args, Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests):
        return engines.answer_velocity(pb_utils, requests, self.engine)
