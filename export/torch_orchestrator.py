"""Triton Python-backend model for `encode`, `decode`, `mix` and their streams with the PyTorch
engine in-process (`grouplat export --engine torch --velocity-call inprocess`).

Thin adapter, copied into the repository as `<operation>/N/model.py`: the same orchestrator as
`grouplat/serving/orchestrator/model.py`, over the torch engine, so the whole ODE stays on the
instance's device (a request's inputs go there once, its output comes back once).
"""

import triton_python_backend_utils as pb_utils

from grouplat.export.torch_engine import triton_engine
from grouplat.serving import service


class TritonPythonModel:
    def initialize(self, args):
        self.model = service.model_from_triton(args, pb_utils, lambda directory: triton_engine(args, directory))

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
