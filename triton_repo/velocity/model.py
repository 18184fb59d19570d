"""Triton Python-backend model `velocity` for the embedded server: ONNX Runtime in-process.

On GPU hosts the NGC container serves the same `model.onnx` (or a TensorRT plan) natively.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from grouplat import serving


class TritonPythonModel:
    def initialize(self, args):
        params = serving.config_parameters(json.loads(args["model_config"]))
        engine = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        threads, spinning = int(params.get("threads", "1")), params.get("spinning", "0") == "1"
        self.engine = serving.OnnxVelocity(engine, threads, spinning)

    def execute(self, requests):
        return serving.answer_velocity(pb_utils, requests, self.engine)
