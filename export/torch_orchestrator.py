"""Triton Python-backend model for `encode`, `decode`, `mix` and their streams with the PyTorch
engine (`grouplat export --engine torch`).

Thin adapter, copied into the repository as `<operation>/N/model.py`: the same orchestrator as
`grouplat/serving/orchestrator/model.py`, with the ODE state on the instance's device — the torch
engine in-process (`--velocity-call inprocess`), or the velocity model through BLS, the state
travelling by DLPack (`--velocity-call bls`). A request's inputs go there once, its output comes
back once; no step copies to the host.
"""

import triton_python_backend_utils as pb_utils

from grouplat.export.torch_engine import Placement, triton_device, triton_engine
from grouplat.serving import service


class TritonPythonModel:
    def initialize(self, args):
        self.model = service.model_from_triton(
            args,
            pb_utils,
            engine=lambda directory: triton_engine(args, directory),
            placement=Placement(triton_device(args)),
        )

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
