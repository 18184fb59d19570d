"""Triton Python-backend model `velocity` for the embedded server: ONNX Runtime in-process.

On GPU hosts the NGC container serves the same `model.onnx` (or a TensorRT plan) natively.
"""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from grouplat.serving import contract, engines, orchestration


class TritonPythonModel:
    def initialize(self, args):
        params = orchestration.config_parameters(json.loads(args["model_config"]))
        engine = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        threads = int(params.get(contract.THREADS_PARAM, "1"))
        spinning = params.get(contract.SPINNING_PARAM, "0") == "1"
        device = params.get(contract.DEVICE_PARAM, "cpu")
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        self.engine = engines.OnnxVelocity(engine, threads, spinning, device, device_id)

    def execute(self, requests):
        return engines.answer_velocity(pb_utils, requests, self.engine)
