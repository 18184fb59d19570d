"""Triton Python-backend model for `encode`, `decode` and `mix` (its config's `operation`).

Thin adapter: the ODE loop, validation and batching live in `grouplat.serving.orchestration`.
"""

import triton_python_backend_utils as pb_utils

from grouplat.serving import orchestration


class TritonPythonModel:
    def initialize(self, args):
        self.orchestrator, self.operation = orchestration.orchestrator_from_triton(args, pb_utils)

    def execute(self, requests):
        return orchestration.answer(pb_utils, requests, self.orchestrator, self.operation)
