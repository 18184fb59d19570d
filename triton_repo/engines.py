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


def answer_velocity(pb_utils: Any, requests: Sequence[Any], engine: Callable[..., np.ndarray]) -> list[Any]:
    """The python-backend velocity model: all requests of one `execute` as one engine call."""
    x_t = [pb_utils.get_input_tensor_by_name(r, X_T).as_numpy() for r in requests]
    levels = [pb_utils.get_input_tensor_by_name(r, LEVELS).as_numpy() for r in requests]
    try:
        u = engine(np.concatenate(x_t), np.concatenate(levels))
    except Exception as error:
        return [
            error_response(pb_utils, f"velocity failed: {error}", pb_utils.TritonError.INTERNAL)
            for _ in requests
        ]
    parts = np.split(u, np.cumsum([len(x) for x in x_t])[:-1])
    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(U, p)]) for p in parts]


def error_response(pb_utils: Any, message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
