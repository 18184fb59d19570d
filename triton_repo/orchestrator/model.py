"""Triton Python-backend model for `encode`, `decode`, `mix` and their streams (config `operation`).

Thin adapter: scheduling, validation and the ODE loop live in `grouplat.serving` (service.py).
"""

import triton_python_backend_utils as pb_utils

from grouplat.serving import service


class TritonPythonModel:
    def initialize(self, args):
        self.model = service.model_from_triton(args, pb_utils)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
