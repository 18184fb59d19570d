"""Checkpoint → ONNX velocity engine with a dynamic batch axis, checked against PyTorch.

`f_θ(X_T [B,C,H,W], LEVELS [B,k]) → U [B,C,H,W]` from the EMA weights, TorchScript-based exporter
(it gave a smaller, faster ONNX Runtime graph than `dynamo=True` on a similar U-Net here), the
model's metadata in `metadata_props`, and a parity check at every export.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import torch

import grouplat
from grouplat.modelinfo import ModelInfo
from grouplat.s1phase import S1PhaseVelocity
from grouplat.serving.engines import OnnxVelocity
from grouplat.solvers import Velocity
from grouplat.training.networks import S1Head, S1HeadAlone

OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs difference ONNX Runtime vs PyTorch, fp32
PARITY_BATCHES = (1, 3, 8)


class ParityError(RuntimeError):
    """The exported engine does not reproduce the network within the tolerance."""


def model_info(checkpoint) -> ModelInfo:  # type: ignore[no-untyped-def]
    """The ModelInfo of a loaded `grouplat.training.checkpoint.Checkpoint`."""
    return ModelInfo(
        checkpoint.fingerprint,
        checkpoint.space,
        checkpoint.schedule,
        checkpoint.hide,
        np.asarray(checkpoint.data_mean, np.float32),
        np.asarray(checkpoint.data_std, np.float32),
        checkpoint.knots,
        checkpoint.s1_covariance,
    )


def export_onnx(network: torch.nn.Module, info: ModelInfo, opset: int = OPSET) -> bytes:
    """The ONNX file (bytes) of `network`, with `info` in its metadata_props."""
    c, h, w = info.space.shape
    network = network.eval().float().cpu()
    example = (torch.zeros(2, c, h, w), torch.zeros(2, info.space.k))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            network,
            example,
            buffer,  # type: ignore[arg-type]  # file objects are accepted at run time
            input_names=["X_T", "LEVELS"],
            output_names=["U"],
            dynamic_axes={"X_T": {0: "batch"}, "LEVELS": {0: "batch"}, "U": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    meta = {**info.describe(), "grouplat_version": grouplat.__version__}
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return model.SerializeToString()


def export_s1_head(network: torch.nn.Module, info: ModelInfo) -> bytes | None:
    """The ONNX file of a headed network's S1 head alone (`S1HeadAlone`); None without a head."""
    return export_onnx(S1HeadAlone(network), info) if isinstance(network, S1Head) else None


def export_engines(network: torch.nn.Module, info: ModelInfo) -> tuple[bytes, bytes | None, float]:
    """The velocity engine and a headed network's S1 head alone (None without one) as ONNX files,
    each checked against PyTorch (`check_parity`), and the larger parity error."""
    onnx_model = export_onnx(network, info)
    error = check_parity(network, onnx_model, info)
    s1_head = None
    if isinstance(network, S1Head):
        s1_head = export_onnx(S1HeadAlone(network), info)
        error = max(error, check_parity(S1HeadAlone(network), s1_head, info))
    return onnx_model, s1_head, error


def engine_velocity(onnx_model: bytes, s1_head: bytes | None, threads: int = 1) -> Velocity:
    """ONNX Runtime on the velocity engine, and on a headed model's S1 head for S1's phase
    (`S1PhaseVelocity`), as the served orchestrators run them."""
    velocity = OnnxVelocity(onnx_model, threads=threads)
    return velocity if s1_head is None else S1PhaseVelocity(velocity, OnnxVelocity(s1_head, threads=threads))


def onnx_velocity(checkpoint, threads: int = 1) -> Velocity:  # type: ignore[no-untyped-def]
    """A loaded checkpoint's network exported to ONNX (in memory) and run by ONNX Runtime: the
    velocity callable the tools decode with (faster than PyTorch eager on a CPU), S1's phase on
    a headed model's head alone, as served."""
    info = model_info(checkpoint)
    return engine_velocity(
        export_onnx(checkpoint.network, info), export_s1_head(checkpoint.network, info), threads
    )


def read_metadata(onnx_model: bytes) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(onnx_model).metadata_props}


def parity_inputs(info: ModelInfo, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images and level vectors as encode/decode produce them (hidden groups included)."""
    rng = np.random.default_rng(seed + batch)
    x = rng.standard_normal((batch, *info.space.shape)).astype(np.float32)
    levels = info.train_schedule.conditioning(rng.uniform(0, 1, batch), hide=info.hide)
    return x, levels


def check_parity(
    network: torch.nn.Module,
    onnx_model: bytes,
    info: ModelInfo,
    batches: tuple[int, ...] = PARITY_BATCHES,
    tolerance: float = FP32_TOLERANCE,
) -> float:
    """Max abs difference of ONNX Runtime vs PyTorch over `batches`; ParityError above tolerance."""
    session = OnnxVelocity(onnx_model)
    worst = 0.0
    for batch in batches:
        x, levels = parity_inputs(info, batch)
        with torch.no_grad():
            expected = network(torch.from_numpy(x), torch.from_numpy(levels)).numpy()
        worst = max(worst, float(np.abs(session(x, levels) - expected).max()))
    if worst > tolerance:
        raise ParityError(f"ONNX Runtime differs from PyTorch by {worst:.3g} (tolerance {tolerance:g})")
    return worst
