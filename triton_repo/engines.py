"""Velocity engines for the orchestrators and the Python-backend `velocity` model.

An engine is a velocity callable `f(x_t [B, C, H, W], levels [B, k]) → [B, C, H, W]` (float32):
ONNX Runtime in-process, or the `velocity` model through Triton (BLS).

Also the per-request error and log plumbing both kinds of model share: every error response
names its request (`[request <id>]`, Triton's request id, which grouplat.client always sends) and
is logged once with it; `bridge_logging` sends Python logging to the Triton server log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import arrays
from grouplat.serving.contract import LEVELS, VELOCITY, X_T, U

logger = logging.getLogger(__name__)
DEVICES = ("cpu", "gpu")


class OnnxVelocity:
    """The velocity engine in-process: ONNX Runtime on the CPU, or on a GPU through its CUDA (and,
    when asked, TensorRT) execution provider. A GPU that is asked for but not there is an error,
    never a silent run on the CPU; `provider` says which provider runs the graph."""

    def __init__(
        self,
        model: str | Path | bytes,
        threads: int = 1,
        spinning: bool = False,
        device: str = "cpu",  # cpu | gpu
        device_id: int = 0,  # the GPU (Triton's model_instance_device_id)
        tensorrt: bool = False,  # gpu: ONNX Runtime's TensorRT provider first (it falls back to CUDA)
    ) -> None:
        import onnxruntime as ort

        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Spin-waiting threads steal the cores that other instances need (measured: issue 4).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "gpu":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise RuntimeError(
                    f"device gpu was asked for, but ONNX Runtime {ort.__version__} has no CUDA provider "
                    f"(providers: {', '.join(available)}): install onnxruntime-gpu on a host with a GPU, "
                    "or export with --device cpu"
                )
            cuda = ("CUDAExecutionProvider", {"device_id": device_id})
            trt = ("TensorrtExecutionProvider", {"device_id": device_id, "trt_engine_cache_enable": True})
            providers = [*([trt] if tensorrt and "TensorrtExecutionProvider" in available else []), cuda]
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.provider = self.session.get_providers()[0]
        if device == "gpu" and self.provider == "CPUExecutionProvider":
            raise RuntimeError(
                f"ONNX Runtime could not place the engine on GPU {device_id}: it fell back to the CPU"
            )
        logger.info("velocity engine: ONNX Runtime %s on %s", ort.__version__, self.provider)

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        return self.session.run([U], {X_T: x_t, LEVELS: levels})[0]


class BlsVelocity:
    """The velocity engine through Triton (BLS): the dynamic batcher can merge the steps of
    different requests, since each sample carries its own levels.

    Host (numpy) states travel as numpy. A device state (a `placement` given: the torch
    orchestrator's `to_device` and `from_dlpack`) travels by DLPack and asks for its answer in GPU
    memory, so a step copies nothing to the host; the velocity model then needs
    FORCE_CPU_ONLY_INPUT_TENSORS "no".
    """

    def __init__(
        self,
        pb_utils: Any,
        model: str = VELOCITY,
        max_batch: int = 64,
        version: int = -1,
        placement: Any = None,
    ) -> None:
        self.pb_utils = pb_utils
        self.model = model
        self.max_batch = max_batch
        self.version = version  # the orchestrator's own version: versions of one model coexist
        if placement is not None:  # Orchestrator.place puts a request's inputs there
            self.to_device, self.from_dlpack = placement.to_device, placement.from_dlpack

    def __call__(self, x_t: Any, levels: Any) -> Any:
        pb, host = self.pb_utils, arrays.is_host(x_t)
        xp = arrays.namespace(x_t)
        extra: dict[str, Any] = {}
        if not host and x_t.device.type == "cuda":  # the answer in the state's GPU memory
            extra["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_GPU, x_t.device.index or 0)

        def tensor(name: str, value: Any) -> Any:
            if host:
                return pb.Tensor(name, np.ascontiguousarray(value))
            return pb.Tensor.from_dlpack(name, value)  # rows of a C-ordered state: C-ordered

        parts = []
        for start in range(0, len(x_t), self.max_batch):
            stop = start + self.max_batch
            request = pb.InferenceRequest(
                model_name=self.model,
                model_version=self.version,
                requested_output_names=[U],
                inputs=[tensor(X_T, x_t[start:stop]), tensor(LEVELS, levels[start:stop])],
                **extra,
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"velocity engine failed: {response.error().message()}")
            parts.append(read_tensor(pb.get_output_tensor_by_name(response, U), self))
        return xp.concat(parts)


LEVEL_HIDDEN = -1.0
X_T_LIMIT = 1e4  # |x_t| beyond this is no state of an ODE from images in [-1, 1] and N(0, 1) noise


def check_velocity_inputs(x_t: Any, levels: Any) -> str | None:
    """What is wrong with one request's engine inputs (None: nothing); numpy or device arrays."""
    xp = arrays.namespace(x_t)
    if not (str(x_t.dtype).endswith("float32") and str(levels.dtype).endswith("float32")):
        return f"{X_T} and {LEVELS} must be FP32"
    if len(x_t) != len(levels):
        return f"{X_T} has {len(x_t)} rows, {LEVELS} {len(levels)}"
    if not (bool(xp.all(xp.isfinite(x_t))) and bool(xp.all(xp.isfinite(levels)))):
        return f"{X_T} or {LEVELS} contains NaN or Inf"
    if len(x_t) and float(xp.max(xp.abs(x_t))) > X_T_LIMIT:
        return f"{X_T} values must lie within ±{X_T_LIMIT:g}"
    if not bool(xp.all(((levels >= 0) & (levels <= 1)) | (levels == LEVEL_HIDDEN))):
        return f"{LEVELS} must lie in [0, 1] or be exactly -1 (a hidden group)"
    return None


def read_tensor(tensor: Any, engine: Any) -> Any:
    """A Triton tensor as `engine` computes with it: numpy for a host engine; for an engine with
    `to_device` and `from_dlpack` (the torch engine, a device-resident BlsVelocity), a tensor on
    its device — through DLPack without a copy when it is in GPU memory (a BLS answer asked for
    there; a velocity-model input with FORCE_CPU_ONLY_INPUT_TENSORS "no")."""
    to_device = getattr(engine, "to_device", None)
    if to_device is None:
        return tensor.as_numpy()
    if tensor.is_cpu():
        return to_device(tensor.as_numpy())
    return engine.from_dlpack(tensor.to_dlpack())


def answer_velocity(pb_utils: Any, requests: Sequence[Any], engine: Callable[..., Any]) -> list[Any]:
    """The python-backend velocity model: every good request of one `execute` in one engine call;
    a bad one gets INVALID_ARG alone, a non-finite output is an error, never OK. Device outputs
    (the torch engine) go back by DLPack: a device-resident caller gets them without a host copy."""
    bridge_logging(pb_utils)
    ids = [request_id(request) for request in requests]
    responses: list[Any] = [None] * len(requests)
    good: list[tuple[int, Any, Any]] = []
    for i, request in enumerate(requests):
        try:
            x = pb_utils.get_input_tensor_by_name(request, X_T)
            a = pb_utils.get_input_tensor_by_name(request, LEVELS)
            problem = "needs X_T and LEVELS" if x is None or a is None else None
            if problem is None:
                x, a = read_tensor(x, engine), read_tensor(a, engine)
                problem = check_velocity_inputs(x, a)
        except Exception as error:  # one malformed request never fails the others
            problem = f"unreadable request ({type(error).__name__})"
        if problem is not None:
            responses[i] = fail(pb_utils, VELOCITY, ids[i], problem, "INVALID_ARG")
        else:
            good.append((i, x, a))
    if not good:
        return responses
    xp = arrays.namespace(good[0][1])
    started = time.perf_counter()
    try:
        u = engine(xp.concat([x for _, x, _ in good]), xp.concat([a for _, _, a in good]))
    except Exception as error:
        for i, _, _ in good:
            responses[i] = fail(pb_utils, VELOCITY, ids[i], f"velocity failed: {error}", "INTERNAL")
        return responses
    seconds = time.perf_counter() - started
    start = 0
    for i, x, _ in good:
        part, start = u[start : start + len(x)], start + len(x)
        if bool(xp.all(xp.isfinite(part))):
            host = arrays.is_host(part)
            tensor = pb_utils.Tensor(U, part) if host else pb_utils.Tensor.from_dlpack(U, part)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
            succeeded(VELOCITY, ids[i], "%d rows in a batch of %d, %.3f s", len(part), len(u), seconds)
        else:
            message = "the engine produced non-finite values for these inputs"
            responses[i] = fail(pb_utils, VELOCITY, ids[i], message, "INTERNAL")
    return responses


MESSAGE_LIMIT = 300  # characters: error messages travel in gRPC metadata, which is bounded
REQUEST_ID_LIMIT = 64  # characters of a caller's request id shown in messages and logs
UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.:/@+=#-]")  # shown as "?": no spaces, quotes or newlines in logs


def request_id(request: Any) -> str:
    """The id of one request as messages and logs show it.

    Triton's request id (the gRPC `ModelInferRequest.id`; grouplat.client always sends one), with
    characters outside `[A-Za-z0-9_.:/@+=#-]` shown as `?` and cut to REQUEST_ID_LIMIT characters;
    a request without one gets `srv-` and 12 random hex digits, so its error and log line still match.
    """
    try:
        raw = str(request.request_id() or "")
    except Exception:  # noqa: BLE001 - an id is never worth failing a request over
        raw = ""
    if not raw:
        return f"srv-{uuid.uuid4().hex[:12]}"
    shown = UNSAFE_ID.sub("?", raw)
    return shown if len(shown) <= REQUEST_ID_LIMIT else shown[: REQUEST_ID_LIMIT - 1] + "…"


def error_response(pb_utils: Any, message: str, code: Any, request: str | None = None) -> Any:
    """An error response; the message ends with `[request <id>]` when `request` (an id) is given,
    and is cut to MESSAGE_LIMIT characters, the id included (the id is never cut off)."""
    tail = f" [request {request}]" if request else ""
    error = pb_utils.TritonError(_cut(message, MESSAGE_LIMIT - len(tail)) + tail, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def fail(pb_utils: Any, model: str, request: str, message: str, code: str) -> Any:
    """The error response of one request, logged once with its id: WARNING when the caller's
    request was refused or cancelled, ERROR for a server-side failure (`code` INTERNAL).

    `code` names a `pb_utils.TritonError` code (INVALID_ARG, INTERNAL, CANCELLED, …); one this
    stub lacks is answered as UNAVAILABLE (Triton before 23.11 has no CANCELLED).
    """
    errors = pb_utils.TritonError
    level = logging.ERROR if code == "INTERNAL" else logging.WARNING
    logger.log(level, "[request %s] %s failed (%s): %s", request, model, code, _cut(message, MESSAGE_LIMIT))
    return error_response(pb_utils, message, getattr(errors, code, errors.UNAVAILABLE), request)


def succeeded(model: str, request: str, what: str, *args: object) -> None:
    """One DEBUG line per successful request (nothing at INFO: no per-request noise); `what` is
    a %-format of `args`, formatted only when DEBUG is on."""
    logger.debug(f"[request %s] %s ok: {what}", request, model, *args)


def _cut(message: str, limit: int) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


# -- Python logging into the Triton server log --------------------------------------------------
LOG_LEVEL_ENV = "GROUPLAT_LOG_LEVEL"  # the level of grouplat's loggers in the models (default INFO)
_bridged = False


class TritonLogHandler(logging.Handler):
    """Python log records through the Python backend's `pb_utils.Logger`, so they reach the
    tritonserver log (`grouplat serve --log-file`) in Triton's own format: ERROR and above as
    Triton errors, WARNING as warnings, INFO as info, DEBUG as verbose (shown with
    `--log-verbose 1`). A plain print or stderr line from a stub lands there unformatted."""

    def __init__(self, triton_logger: Any) -> None:
        super().__init__()
        self.triton_logger = triton_logger
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.ERROR:
                self.triton_logger.log_error(text)
            elif record.levelno >= logging.WARNING:
                self.triton_logger.log_warn(text)
            elif record.levelno >= logging.INFO:
                self.triton_logger.log_info(text)
            else:
                self.triton_logger.log_verbose(text)
        except Exception:  # noqa: BLE001 - logging never fails a request, nor prints a traceback
            with contextlib.suppress(Exception):  # the stub's stderr reaches the server log too
                sys.stderr.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")


def bridge_logging(pb_utils: Any) -> None:
    """Send the `grouplat` loggers of this stub process to the Triton log (once per process).

    Their level is $GROUPLAT_LOG_LEVEL (`grouplat --log-level` sets it for `grouplat serve`),
    default INFO. Without `pb_utils.Logger` (Triton before 22.xx) nothing changes.
    """
    global _bridged
    if _bridged or getattr(pb_utils, "Logger", None) is None:
        return
    _bridged = True
    root = logging.getLogger("grouplat")
    root.addHandler(TritonLogHandler(pb_utils.Logger))
    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper() or "INFO"
    level = logging.getLevelName(name)
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    root.propagate = False  # the stub's stderr also reaches the server log: no second copy
