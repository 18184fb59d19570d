"""Triton Python-backend model `velocity` with the PyTorch engine (`grouplat export --engine torch`).

Thin adapter, copied into the repository as `velocity/N/model.py`: the engine (CUDA graphs,
autocast) lives in `grouplat.export.torch_engine`; request handling in `grouplat.serving.engines`.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from grouplat.export.torch_engine import load_torch_velocity
from grouplat.serving import contract, engines, orchestration


class TritonPythonModel:
    def initialize(self, args):
        params = orchestration.config_parameters(json.loads(args["model_config"]))
        gpu = params.get(contract.DEVICE_PARAM, "cpu") == "gpu"
        device = f"cuda:{args.get('model_instance_device_id') or 0}" if gpu else "cpu"
        precision = params.get(contract.PRECISION_PARAM, "fp32")
        self.engine = load_torch_velocity(
            Path(args["model_repository"]) / args["model_version"], device, precision
        )

    def execute(self, requests):
        return engines.answer_velocity(pb_utils, requests, self.engine)
