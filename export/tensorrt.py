"""ONNX → TensorRT plan with the `tensorrt` Python API (GPU hosts only).

A plan is only valid for the TensorRT version and GPU it was built on: both are recorded beside
it. Without `tensorrt` or a GPU this says so and the CLI exits non-zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grouplat.modelinfo import ModelInfo

FP16_TOLERANCE = 2e-2  # max abs difference TensorRT fp16 vs ONNX Runtime fp32 (outputs are O(1))


class TensorRTUnavailable(RuntimeError):
    """No `tensorrt` module or no CUDA GPU here."""


def _tensorrt() -> Any:
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install tensorrt` on a host with an NVIDIA GPU "
            "(or build inside the NGC tritonserver container)"
        ) from None
    return tensorrt


def gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    raise TensorRTUnavailable("no CUDA GPU is visible: a TensorRT plan must be built on the GPU that runs it")


def build_plan(
    onnx_model: bytes,
    info: ModelInfo,
    max_batch: int,
    opt_batch: int = 8,
    precision: str = "fp16",
    timing_cache: Path | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A serialized plan for batch 1..max_batch (optimized for `opt_batch`) and its build record."""
    trt = _tensorrt()
    gpu = gpu_name()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_model):
        raise RuntimeError("TensorRT could not parse the ONNX model: " + str(parser.get_error(0)))
    config = builder.create_builder_config()
    if precision in ("fp16", "bf16"):
        config.set_flag(getattr(trt.BuilderFlag, precision.upper()))
    cache = config.create_timing_cache(
        timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    )
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    c, h, w = info.space.shape
    for name, shape in (("X_T", (c, h, w)), ("LEVELS", (info.space.k,))):
        profile.set_shape(name, (1, *shape), (min(opt_batch, max_batch), *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = {"tensorrt": trt.__version__, "gpu": gpu, "precision": precision, "max_batch": str(max_batch)}
    return bytes(plan), record


def write_record(directory: Path, record: dict[str, str]) -> None:
    (directory / "tensorrt.json").write_text(json.dumps(record, indent=1))
