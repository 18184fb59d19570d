"""The client's transport: endpoints, deadline, retries, fail-over and error translation.

Plans (grouplat.client.plans) yield requests (`ConfigRequest`, `InferRequest`) and receive their
answers; a runner (grouplat.client.runners: blocking or asyncio tritonclient) executes them with
the shared steps of `Transport`:
- a deadline over the whole method call (`Deadline`);
- retries with exponential backoff (`RetryPolicy`) on UNAVAILABLE only (and on Triton's NOT_FOUND
  for a model that is unloading, which a restarting server answers: `retryable`);
- fail-over across several endpoints, each checked to serve the model of every request sent there
  (its fingerprint);
- versions: every infer goes to the version, at the endpoint in use, that serves the model the plan
  asks for (`InferRequest.fingerprint`), so a version number read at one endpoint is never sent to
  another that numbers its versions differently;
- TLS, and the translation of gRPC statuses into the errors of grouplat.client.errors;
- a request id on every infer (Triton's `ModelInferRequest.id`): the caller's, or a fresh uuid4
  hex per method call, shared by all its requests and retries. The server names it in its errors
  and log lines (`[request <id>]`); every ClientError of the call carries it as `request_id`.

Streams (the decoupled `decode_stream` / `mix_stream` models): a plan yields a `StreamRequest`,
answered with an open `Stream`; then a `StreamRead` per response it wants, answered with that
response's (phase, images); and a `Preview` for each result it hands the caller, which the runner
passes on (a stream call's runner is an iterator). Each stream request is its own gRPC stream,
opened with Triton's `triton_grpc_error` header, so an error ends it with a gRPC status that is
translated like a unary one. A retryable failure reopens the stream (at the next endpoint) and
skips the phases already read: every model is deterministic. A stream left before its final
response (the caller stopped iterating, an error, the deadline) is cancelled, and Triton cancels
its request.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from grouplat.client.errors import (
    ClientError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelMismatchError,
    ServerError,
    ServerUnavailableError,
)
from grouplat.client.served import newest, version_fingerprints
from grouplat.serving.contract import PHASE

DEFAULT_SERVER = "127.0.0.1:8001"
SERVER_ENV = "GROUPLAT_SERVER"  # "host:port" or a comma-separated list of endpoints
DEFAULT_TIMEOUT = 120.0  # seconds for one method call, retries included
MIN_ATTEMPT = 0.05  # seconds: no retry is started with less time than this left
UNLOADING = "has no available versions"  # Triton's NOT_FOUND message while a model unloads
# Triton ≥ 24.08 (2.49): with this header a stream error ends the stream with its gRPC status.
STREAM_HEADERS = {"triton_grpc_error": "true"}
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def check_version(version: str | int | None) -> str:
    """A model version to pin as Triton names it ("2"); "" for none (None or "": the newest).

    Raises:
        ValueError: not a positive whole number.
    """
    if version is None or version == "":
        return ""
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) < 1 or len(text) > 19:
        raise ValueError(f"model_version must be a version number such as 2, got {version!r}")
    return str(int(text))


def _models(served: dict[str, str]) -> str:
    """What an endpoint serves, for an error message."""
    if len(served) == 1:
        return f"model {next(iter(served.values()))!r}"
    return "models " + ", ".join(
        f"{fingerprint!r} (version {number})" for number, fingerprint in served.items()
    )


def new_request_id() -> str:
    """A fresh request id: 32 hex digits (uuid4)."""
    return uuid.uuid4().hex


def with_request_id(error: ClientError, request_id: str) -> ClientError:
    """`error` carrying `request_id`, its message naming it (unless the server's already does)."""
    error.request_id = request_id
    if error.args and isinstance(error.args[0], str) and f"[request {request_id}]" not in error.args[0]:
        error.args = (f"{error.args[0]} [request {request_id}]", *error.args[1:])
    return error


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between tries after UNAVAILABLE, until the call's deadline."""

    initial: float = 0.05  # seconds before the second round of tries
    maximum: float = 1.0  # longest wait between rounds
    multiplier: float = 2.0  # growth per round
    jitter: float = 0.5  # each wait is scaled by a uniform factor in [1 − jitter, 1]

    def delay(self, round_: int) -> float:
        """Seconds to wait before round `round_ + 1` of tries (0: after the first round)."""
        base = min(self.maximum, self.initial * self.multiplier**round_)
        return base * (1.0 - self.jitter * random.random())


def parse_endpoints(server: str | Sequence[str] | None = None) -> list[str]:
    """The endpoints named by `server`, else by $GROUPLAT_SERVER, else the default.

    Args:
        server: "host:port", "host1:port1,host2:port2" or a list of "host:port".

    Returns:
        The endpoints, in order of preference.

    Raises:
        ValueError: no endpoint, or one that is not host:port (a URL, a missing port).
    """
    if server is None:
        server = os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    items = server.split(",") if isinstance(server, str) else list(server)
    endpoints = [e.strip() for e in items if e.strip()]
    if not endpoints:
        raise ValueError("no server address given")
    for endpoint in endpoints:
        if "://" in endpoint or ":" not in endpoint:
            raise ValueError(f"server address must be host:port (the gRPC port), got {endpoint!r}")
    return endpoints


# -- the requests that plans yield ---------------------------------------------------------------
@dataclass(frozen=True)
class ConfigRequest:
    """Read a model's config (answered with the config as JSON)."""

    model: str


@dataclass(frozen=True)
class InferRequest:
    """Run a model on one batch (answered with the named output as a numpy array)."""

    model: str
    inputs: dict[str, np.ndarray]
    output: str
    parameters: dict[str, str | int]
    request_id: str = ""  # Triton's request id: the runner gives every request its call's id
    # The model (fingerprint) the request is for: the runner sends it to the version serving it at
    # the endpoint in use (`Transport._version_for`). "": the client's pinned version (or the newest).
    fingerprint: str = ""


@dataclass(frozen=True)
class StreamRequest(InferRequest):
    """Run a decoupled model on one batch as its own gRPC stream (answered with the open `Stream`).

    `output` is the images; each response also carries `PHASE`, the groups decoded so far; the one
    with PHASE = `phases` (the model's k) is the last.
    """

    phases: int = 0


class Stream:
    """One open stream request, a runner's handle: the request, where it runs, the last phase read."""

    def __init__(self, request: StreamRequest) -> None:
        self.request = request
        self.phase = 0  # the last phase read (a reopened stream skips those up to it)
        self.final = False  # the final response was read: closing it cancels nothing
        self.endpoint = ""  # where it is open; "" when closed (the next read reopens it)
        self.handle: Any = None  # the runner's: its connection and response queue, or its call


@dataclass(frozen=True)
class StreamRead:
    """The next response of an open stream (answered with `(phase, images)`)."""

    stream: Stream


@dataclass(frozen=True)
class Preview:
    """One response of a stream call: the images as they stand after `phase` groups are decoded.

    Phases run 1 … k (the model's number of groups); the previews 1 … k − 1 show the groups decoded
    so far with the rest at the data mean, and the last (`final`, phase k) is exactly what the unary
    method returns. `images` is float32 [B, C, H, W] in [-1, 1], the whole batch.
    """

    phase: int
    images: np.ndarray
    final: bool


Request = ConfigRequest | InferRequest | StreamRead | Preview
Plan = Generator[Request, Any, T]


def status(error: InferenceServerException) -> str:
    """The gRPC status name of a tritonclient error ("UNAVAILABLE", …)."""
    return str(error.status() or "").removeprefix("StatusCode.")


# Triton refuses some stream requests before any model sees them, with a message and no status
# (even with STREAM_HEADERS): an unknown model or version, inputs that do not fit the config.
_NOT_FOUND = re.compile(r" is not found|" + UNLOADING)
_BAD_INPUT = re.compile(r"\b(unexpected|expected)\b.*\b(input|inputs|output|shape)\b|\bdata.type\b", re.I)


def stream_error(error: InferenceServerException) -> InferenceServerException:
    """A stream's error with a gRPC status: its own, or, for Triton's status-less refusals,
    the status Triton gives the same refusal of a unary request (NOT_FOUND, INVALID_ARGUMENT)."""
    if error.status():
        return error
    message = str(error.message())
    code = ""
    if _NOT_FOUND.search(message):
        code = "NOT_FOUND"
    elif _BAD_INPUT.search(message):
        code = "INVALID_ARGUMENT"
    return InferenceServerException(message, status=f"StatusCode.{code}" if code else None)


def stream_deadline(seconds: float) -> InferenceServerException:
    """The error of a stream read that ran out of the call's time."""
    return InferenceServerException(
        f"no stream response within the {seconds:g} s deadline", status="StatusCode.DEADLINE_EXCEEDED"
    )


def retryable(error: InferenceServerException) -> bool:
    """UNAVAILABLE, CANCELLED, or Triton's NOT_FOUND for a model that is unloading.

    A Triton server that is shutting down cancels the requests in flight (seen about once in ten
    restarts) and unloads its models before it closes its port, answering NOT_FOUND "has no
    available versions" in between (measured: about 1 s of a 3.5 s graceful stop). A restart is
    transient and every model is deterministic, so those are retried like UNAVAILABLE. An unknown
    model name ("… is not found") is not.
    """
    code = status(error)
    return code in ("UNAVAILABLE", "CANCELLED") or (code == "NOT_FOUND" and UNLOADING in str(error.message()))


class Deadline:
    """The end of one method call, `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


class Transport:
    """Endpoints, connections and the steps of a call that both runners share."""

    def __init__(
        self,
        server: str | Sequence[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        request_id: str | None = None,
        model_version: str | int | None = None,
    ) -> None:
        self.endpoints = parse_endpoints(server)
        self.model_version = check_version(model_version)  # "": unpinned (the newest version)
        self.timeout = float(timeout)
        self.request_id = request_id  # sent with every call's requests; None: a new id per call
        self.retry = retry or RetryPolicy()
        self._tls = {
            "ssl": ssl,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        self._current = 0  # index of the endpoint in use
        self._configs: dict[str, dict[str, Any]] = {}  # model → its config, read once
        self._versions: dict[str, dict[str, str]] = {}  # endpoint → its version number → fingerprint
        self.retries = 0  # tries repeated after UNAVAILABLE, over the client's life (for monitoring)
        self._connections: dict[str, Any] = {}  # endpoint → tritonclient (grpc or grpc.aio) client

    def _connection_args(self) -> dict[str, Any]:
        return {**self._tls, "channel_args": CHANNEL_ARGS}

    def _call_id(self, request_id: str | None) -> str:
        """The request id of one method call: the call's, else the client's, else a new one."""
        chosen = request_id if request_id is not None else self.request_id
        if chosen is not None and not (isinstance(chosen, str) and chosen):
            raise ValueError(f"request_id must be a non-empty string, got {chosen!r}")
        return chosen or new_request_id()

    @staticmethod
    def _stamp(request: Request, request_id: str) -> Request:
        """An infer request carrying the call's id (unless the plan gave it one)."""
        if isinstance(request, InferRequest) and not request.request_id:
            return replace(request, request_id=request_id)
        return request

    def _needs_check(self, endpoint: str, request: Request) -> bool:
        """A new endpoint (after fail-over) is asked for its versions before it gets an infer."""
        return endpoint not in self._versions and isinstance(request, InferRequest | StreamRead)

    @staticmethod
    def _subject(request: Request) -> Request:
        """The request an error or log line names: a stream read's own stream request."""
        return request.stream.request if isinstance(request, StreamRead) else request

    def _check_endpoint(self, endpoint: str, config: dict[str, Any]) -> None:
        """Learn the versions an endpoint serves (its infers are checked by `_version_for`)."""
        self._versions[endpoint] = version_fingerprints(config, self.model_version)

    def _version_for(self, endpoint: str, request: InferRequest) -> str:
        """The version number, at `endpoint`, of the model `request` is for ("": Triton's newest).

        So every endpoint must serve each model the client sends requests for (the pinned or
        newest version's, and that of any latents routed to their maker), under any number.

        Raises:
            ModelMismatchError: the endpoint serves no version of that model.
        """
        served = self._versions.get(endpoint, {})
        wanted = request.fingerprint
        if not wanted or served.get(self.model_version) == wanted:
            return self.model_version
        numbers = [number for number, fingerprint in served.items() if fingerprint == wanted]
        if not numbers:
            raise ModelMismatchError(
                f"the server at {endpoint} serves {_models(served)}, but this {request.model} request "
                f"is for model {wanted!r}: every endpoint must serve the same model (each version in use)"
            )
        return newest(dict.fromkeys(numbers))

    @staticmethod
    def _infer_inputs(module: Any, request: InferRequest) -> tuple[list[Any], list[Any]]:
        inputs = []
        for name, array in request.inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        names = [request.output, PHASE] if isinstance(request, StreamRequest) else [request.output]
        return inputs, [module.InferRequestedOutput(name) for name in names]

    @staticmethod
    def _output(result: Any, request: InferRequest) -> np.ndarray:
        out = result.as_numpy(request.output)
        if out is None:
            raise ServerError(f"the {request.model} model answered without output {request.output}")
        return np.asarray(out)

    def _stream_answer(self, result: Any, stream: Stream) -> tuple[int, np.ndarray] | None:
        """A stream response's (phase, images); None for a phase already read (a reopened stream)."""
        request = stream.request
        images = self._output(result, request)
        phases = result.as_numpy(PHASE)
        if phases is None or phases.size == 0 or (phases != phases.flat[0]).any():
            raise ServerError(f"the {request.model} model answered without one {PHASE} for its images")
        phase = int(phases.flat[0])
        if phase <= stream.phase:
            return None
        stream.phase, stream.final = phase, phase >= request.phases
        return phase, images

    def _after_unavailable(
        self, error: InferenceServerException, tries: int, deadline: Deadline, request: Request | None = None
    ) -> float:
        """Move to the next endpoint; return how long to wait first, or raise when out of time."""
        request = None if request is None else self._subject(request)
        self.retries += 1
        failed = self.endpoints[self._current]
        self._current = (self._current + 1) % len(self.endpoints)
        round_, position = divmod(tries, len(self.endpoints))
        delay = self.retry.delay(round_ - 1) if position == 0 else 0.0  # wait after a full round
        left = deadline.remaining()
        if left <= MIN_ATTEMPT:
            where = ", ".join(self.endpoints)
            raise ServerUnavailableError(
                f"grouplat server unavailable: no answer from {where} within the {deadline.seconds:g} s "
                f"deadline ({tries} tries; last error: {error.message()})"
            ) from None
        wait = min(delay, left - MIN_ATTEMPT)
        logger.debug(
            "%s%s: %s; trying %s in %.2f s",
            f"[request {request.request_id}] " if isinstance(request, InferRequest) else "",
            failed,
            status(error) or "unavailable",
            self.endpoints[self._current],
            wait,
        )
        return wait

    @staticmethod
    def _translate(
        error: InferenceServerException, endpoint: str, request: Request, deadline: Deadline
    ) -> ClientError:
        code, message = status(error), error.message()
        request = Transport._subject(request)
        model = request.model if isinstance(request, ConfigRequest | InferRequest) else "stream"
        what = f"{model} {'request' if isinstance(request, InferRequest) else 'config request'}"
        if code == "INVALID_ARGUMENT":
            return InvalidRequestError(f"the server at {endpoint} refused the {what}: {message}")
        if code == "DEADLINE_EXCEEDED":
            return DeadlineExceededError(
                f"the {what} to {endpoint} did not finish within the call's {deadline.seconds:g} s deadline "
                "(pass a longer timeout= for slow models)"
            )
        return ServerError(f"the {what} to {endpoint} failed ({code or 'error'}): {message}")
