"""Triton Python-backend model for `encode`, `decode` and `mix` (its config's `operation`).

Thin adapter: the ODE loop, validation and batching live in `grouplat.serving`.
"""

import triton_python_backend_utils as pb_utils

from grouplat import serving


class TritonPythonModel:
    def initialize(self, args):
        self.orchestrator, self.operation = serving.orchestrator_from_triton(args, pb_utils)

    def execute(self, requests):
        return serving.answer(pb_utils, requests, self.orchestrator, self.operation)
