"""Velocity engines for the orchestrators and the Python-backend `velocity` model.

An engine is a velocity callable `f(x_t [B, C, H, W], levels [B, k]) → [B, C, H, W]` (float32):
ONNX Runtime in-process, or the `velocity` model through Triton (BLS).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grouplat.serving.contract import LEVELS, VELOCITY, X_T, U


class OnnxVelocity:
    """The velocity engine in-process: ONNX Runtime on the CPU (or the providers given)."""

    def __init__(
        self,
        model: str | Path | bytes,
        threads: int = 1,
        spinning: bool = False,
        providers: Sequence[str] = (),
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spin-waiting threads steal the cores that other instances need (measured: issue 4).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=list(providers) or None)

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        return self.session.run([U], {X_T: x_t, LEVELS: levels})[0]


class BlsVelocity:
    """The velocity engine through Triton (BLS): the dynamic batcher can merge the steps of
    different requests, since each sample carries its own levels."""

    def __init__(self, pb_utils: Any, model: str = VELOCITY, max_batch: int = 64) -> None:
        self.pb_utils = pb_utils
        self.model = model
        self.max_batch = max_batch

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(x_t), self.max_batch):
            stop = start + self.max_batch
            request = self.pb_utils.InferenceRequest(
                model_name=self.model,
                requested_output_names=[U],
                inputs=[
                    self.pb_utils.Tensor(X_T, np.ascontiguousarray(x_t[start:stop])),
                    self.pb_utils.Tensor(LEVELS, np.ascontiguousarray(levels[start:stop])),
                ],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"velocity engine failed: {response.error().message()}")
            parts.append(self.pb_utils.get_output_tensor_by_name(response, U).as_numpy())
        return np.concatenate(parts)


LEVEL_HIDDEN = -1.0
X_T_LIMIT = 1e4  # |x_t| beyond this is no state of an ODE from images in [-1, 1] and N(0, 1) noise


def check_velocity_inputs(x_t: np.ndarray, levels: np.ndarray) -> str | None:
    """What is wrong with one request's engine inputs (None: nothing)."""
    if x_t.dtype != np.float32 or levels.dtype != np.float32:
        return f"{X_T} and {LEVELS} must be FP32"
    if len(x_t) != len(levels):
        return f"{X_T} has {len(x_t)} rows, {LEVELS} {len(levels)}"
    if not (np.isfinite(x_t).all() and np.isfinite(levels).all()):
        return f"{X_T} or {LEVELS} contains NaN or Inf"
    if np.abs(x_t).max(initial=0) > X_T_LIMIT:
        return f"{X_T} values must lie within ±{X_T_LIMIT:g}"
    if not (((levels >= 0) & (levels <= 1)) | (levels == LEVEL_HIDDEN)).all():
        return f"{LEVELS} must lie in [0, 1] or be exactly -1 (a hidden group)"
    return None


def answer_velocity(pb_utils: Any, requests: Sequence[Any], engine: Callable[..., np.ndarray]) -> list[Any]:
    """The python-backend velocity model: every good request of one `execute` in one engine call;
    a bad one gets INVALID_ARG alone, a non-finite output is an error, never OK."""
    responses: list[Any] = [None] * len(requests)
    good: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, request in enumerate(requests):
        try:
            x = pb_utils.get_input_tensor_by_name(request, X_T)
            a = pb_utils.get_input_tensor_by_name(request, LEVELS)
            problem = "needs X_T and LEVELS" if x is None or a is None else None
            if problem is None:
                x, a = x.as_numpy(), a.as_numpy()
                problem = check_velocity_inputs(x, a)
        except Exception as error:  # one malformed request never fails the others
            problem = f"unreadable request ({type(error).__name__})"
        if problem is not None:
            responses[i] = error_response(pb_utils, problem, pb_utils.TritonError.INVALID_ARG)
        else:
            good.append((i, x, a))
    if not good:
        return responses
    try:
        u = engine(np.concatenate([x for _, x, _ in good]), np.concatenate([a for _, _, a in good]))
    except Exception as error:
        for i, _, _ in good:
            responses[i] = error_response(
                pb_utils, f"velocity failed: {error}", pb_utils.TritonError.INTERNAL
            )
        return responses
    parts = np.split(u, np.cumsum([len(x) for _, x, _ in good])[:-1])
    for (i, _, _), part in zip(good, parts):
        if np.isfinite(part).all():
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(U, part)])
        else:
            message = "the engine produced non-finite values for these inputs"
            responses[i] = error_response(pb_utils, message, pb_utils.TritonError.INTERNAL)
    return responses


MESSAGE_LIMIT = 300  # characters: error messages travel in gRPC metadata, which is bounded


def error_response(pb_utils: Any, message: str, code: Any) -> Any:
    """An error response; the message cut to MESSAGE_LIMIT characters."""
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 1] + "…"
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
