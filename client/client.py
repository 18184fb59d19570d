"""Typed gRPC client of the grouplat Triton server: images in, images out; latents as `Latents`.

Every method is written once, as a *plan*: a generator that yields the server requests it needs
(`_Config`, `_Infer`) and receives their answers. `Client` runs plans with tritonclient's blocking
gRPC client, `AsyncClient` (grouplat.client.aio) with its asyncio one. The runner owns the transport:
a deadline over the whole method call, retries with exponential backoff on UNAVAILABLE only (and on
Triton's NOT_FOUND for a model that is unloading, which a restarting server answers: `_retryable`),
fail-over across several endpoints (each checked to serve the same model), TLS.

The server contract (model and tensor names, shapes, parameters) is in proto/README.md.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

import grouplat
from grouplat.client.images import to_model_images
from grouplat.client.latents import Latents, Settings
from grouplat.space import LatentSpace

DEFAULT_SERVER = "127.0.0.1:8001"
SERVER_ENV = "GROUPLAT_SERVER"  # "host:port" or a comma-separated list of endpoints
DEFAULT_TIMEOUT = 120.0  # seconds for one method call, retries included
MIN_ATTEMPT = 0.05  # seconds: no retry is started with less time than this left
UNLOADING = "has no available versions"  # Triton's NOT_FOUND message while a model unloads
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

T = TypeVar("T")


# -- errors ---------------------------------------------------------------------------------
class ClientError(Exception):
    """Base of the errors the client raises for server-side problems."""


class ServerUnavailableError(ClientError, ConnectionError):
    """No endpoint answered (gRPC UNAVAILABLE) before the call's deadline."""


class DeadlineExceededError(ClientError, TimeoutError):
    """The call did not finish within its deadline."""


class InvalidRequestError(ClientError, ValueError):
    """The server refused the request (gRPC INVALID_ARGUMENT); the message is the server's."""


class ModelMismatchError(ClientError, ValueError):
    """Latents of one model given to another (or endpoints serving different models)."""


class ServerError(ClientError, RuntimeError):
    """Any other server-side failure (unknown model, internal error, …)."""


# -- configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between tries after UNAVAILABLE, until the call's deadline."""

    initial: float = 0.05  # seconds before the second round of tries
    maximum: float = 1.0  # longest wait between rounds
    multiplier: float = 2.0  # growth per round
    jitter: float = 0.5  # each wait is scaled by a uniform factor in [1 − jitter, 1]

    def delay(self, round_: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier**round_)
        return base * (1.0 - self.jitter * random.random())


@dataclass(frozen=True)
class ServedModel:
    """What the client reads from the server once: the model's identity, layout and defaults."""

    fingerprint: str
    space: LatentSpace
    settings: Settings  # the generation defaults (config `solver`, `steps`, `generate_schedule`)
    train_schedule: str
    hide: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ServedModel:
        """From a model config as JSON (`get_model_config(name, as_json=True)["config"]`)."""
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        needed = ("fingerprint", "space", "solver", "steps", "generate_schedule")
        missing = [name for name in needed if not params.get(name)]
        if missing:
            raise ServerError(
                f"model {config.get('name', '?')!r} is not a grouplat model: its config has no "
                f"parameters {', '.join(missing)}"
            )
        space = LatentSpace.from_description(json.loads(params["space"]))
        settings = Settings(params["solver"], int(params["steps"]), params["generate_schedule"])
        return cls(
            fingerprint=params["fingerprint"],
            space=space,
            settings=settings.check(space.k),
            train_schedule=params.get("train_schedule", ""),
            hide=params.get("hide", "true").strip().lower() in ("1", "true", "yes"),
        )


def parse_endpoints(server: str | Sequence[str] | None = None) -> list[str]:
    """Endpoints from `server` ("host:port", "a:1,b:2" or a list), else $GROUPLAT_SERVER, else the default."""
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


# -- requests that plans yield ----------------------------------------------------------------
@dataclass(frozen=True)
class _Config:
    model: str


@dataclass(frozen=True)
class _Infer:
    model: str
    inputs: dict[str, np.ndarray]
    output: str
    parameters: dict[str, str | int]


Plan = Generator[_Config | _Infer, Any, T]
Images = Any  # see grouplat.client.images: uint8 HWC / float CHW arrays, PIL images, paths, lists
LatentsOrImages = Latents | Images


def _status(error: InferenceServerException) -> str:
    return str(error.status() or "").removeprefix("StatusCode.")


def _retryable(error: InferenceServerException) -> bool:
    """UNAVAILABLE, CANCELLED, or Triton's NOT_FOUND for a model that is unloading.

    A Triton server that is shutting down cancels the requests in flight (seen about once in ten
    restarts) and unloads its models before it closes its port, answering NOT_FOUND "has no
    available versions" in between (measured: about 1 s of a 3.5 s graceful stop). A restart is
    transient and every model is deterministic, so those are retried like UNAVAILABLE. An unknown
    model name ("… is not found") is not.
    """
    status = _status(error)
    return status in ("UNAVAILABLE", "CANCELLED") or (
        status == "NOT_FOUND" and UNLOADING in str(error.message())
    )


class _Deadline:
    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"timeout must be positive, got {seconds}")
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


class _Base:
    """State and plans shared by `Client` and `AsyncClient`; the subclasses add the transport."""

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
    ) -> None:
        self.endpoints = parse_endpoints(server)
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self._tls = {
            "ssl": ssl,
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
        }
        self._current = 0  # index of the endpoint in use
        self._configs: dict[str, dict[str, Any]] = {}
        self._info: ServedModel | None = None
        self._checked: set[str] = set()  # endpoints known to serve the model in `_info`
        self.retries = 0  # tries repeated after UNAVAILABLE, over the client's life (for monitoring)
        self._connections: dict[str, Any] = {}  # endpoint → tritonclient (grpc or grpc.aio) client

    # -- transport helpers (shared by both runners) -----------------------------------------
    def _connection_args(self) -> dict[str, Any]:
        return {**self._tls, "channel_args": CHANNEL_ARGS}

    def _needs_check(self, endpoint: str, request: _Config | _Infer) -> bool:
        """A new endpoint (after fail-over) is asked for its fingerprint before it gets an infer."""
        return self._info is not None and endpoint not in self._checked and isinstance(request, _Infer)

    def _check_endpoint(self, endpoint: str, config: dict[str, Any]) -> None:
        fingerprint = config.get("parameters", {}).get("fingerprint", {}).get("string_value", "")
        if self._info is not None and fingerprint != self._info.fingerprint:
            raise ModelMismatchError(
                f"the server at {endpoint} serves model {fingerprint!r} ({config.get('name')}), but this "
                f"client talks to model {self._info.fingerprint!r}: every endpoint must serve the same model"
            )
        self._checked.add(endpoint)

    @staticmethod
    def _infer_inputs(module: Any, request: _Infer) -> tuple[list[Any], list[Any]]:
        inputs = []
        for name, array in request.inputs.items():
            tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs, [module.InferRequestedOutput(request.output)]

    @staticmethod
    def _output(result: Any, request: _Infer) -> np.ndarray:
        out = result.as_numpy(request.output)
        if out is None:
            raise ServerError(f"the {request.model} model answered without output {request.output}")
        return np.asarray(out)

    def _after_unavailable(self, error: InferenceServerException, tries: int, deadline: _Deadline) -> float:
        """Move to the next endpoint; return how long to wait first, or raise when out of time."""
        self.retries += 1
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
        return min(delay, left - MIN_ATTEMPT)

    @staticmethod
    def _translate(
        error: InferenceServerException, endpoint: str, request: _Config | _Infer, deadline: _Deadline
    ) -> ClientError:
        status, message = _status(error), error.message()
        what = f"{request.model} {'request' if isinstance(request, _Infer) else 'config request'}"
        if status == "INVALID_ARGUMENT":
            return InvalidRequestError(f"the server at {endpoint} refused the {what}: {message}")
        if status == "DEADLINE_EXCEEDED":
            return DeadlineExceededError(
                f"the {what} to {endpoint} did not finish within the call's {deadline.seconds:g} s deadline "
                "(pass a longer timeout= for slow models)"
            )
        return ServerError(f"the {what} to {endpoint} failed ({status or 'error'}): {message}")

    # -- plans ------------------------------------------------------------------------------
    def _plan_config(self, model: str) -> Plan[dict[str, Any]]:
        if model not in self._configs:
            self._configs[model] = yield _Config(model)
        return self._configs[model]

    def _plan_info(self) -> Plan[ServedModel]:
        if self._info is None:
            config = yield from self._plan_config("decode")
            self._info = ServedModel.from_config(config)
        return self._info

    def _plan_infer(
        self, model: str, inputs: dict[str, np.ndarray], output: str, settings: Settings
    ) -> Plan[Any]:
        """Run one model on a batch, split into requests of at most the model's max_batch_size."""
        config = yield from self._plan_config(model)
        size = len(next(iter(inputs.values())))
        step = int(config.get("max_batch_size") or size) or 1
        parts = []
        for start in range(0, size, step):
            chunk = {name: array[start : start + step] for name, array in inputs.items()}
            parts.append((yield _Infer(model, chunk, output, settings.parameters())))
        return np.concatenate(parts).astype(np.float32)

    def _settings(
        self,
        info: ServedModel,
        base: Settings | None,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Settings:
        """Explicit arguments over `base` (a latent's settings) over the model's defaults, validated."""
        base = base or info.settings
        return Settings(
            solver if solver is not None else base.solver,
            steps if steps is not None else base.steps,
            schedule if schedule is not None else base.schedule,
        ).check(info.space.k)

    @staticmethod
    def _groups(info: ServedModel, groups: int | Iterable[int] | np.ndarray) -> np.ndarray:
        """bool [k] from a group number, numbers (S1 is 1) or a mask, with a clear error."""
        if isinstance(groups, int | np.integer) and not isinstance(groups, bool):
            groups = [int(groups)]
        try:
            return info.space.selection(groups)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            hint = "" if "1.." in str(e) else f" (groups are numbered 1..{info.space.k}, S1 is 1)"
            raise ValueError(f"bad groups {groups!r}: {e}{hint}") from None

    def _check_latents(self, latents: Latents, info: ServedModel, force: bool) -> None:
        """Refuse latents of another model (unless forced) and latents of another shape (always)."""
        if latents.space.latent_shape != info.space.latent_shape:
            raise ModelMismatchError(
                f"these latents are {latents.space.latent_shape} (images {latents.space.shape}), but the "
                f"model at {self.endpoints[self._current]} uses {info.space.latent_shape} "
                f"(images {info.space.shape})"
            )
        if force:
            return
        if latents.fingerprint != info.fingerprint:
            raise ModelMismatchError(
                f"these latents were made by model {latents.fingerprint!r}, but the server at "
                f"{self.endpoints[self._current]} serves model {info.fingerprint!r}: decode them with the "
                "model that made them (or pass force=True to decode them anyway)"
            )
        if latents.space != info.space:
            raise ModelMismatchError(
                f"these latents use {latents.space!r}, the model uses {info.space!r} (pass force=True to "
                "decode them anyway)"
            )

    def _plan_encode(
        self, images: Images, steps: int | None, solver: str | None, schedule: str | None
    ) -> Plan[Latents]:
        info = yield from self._plan_info()
        x = to_model_images(images, info.space.shape)
        settings = self._settings(info, None, steps, solver, schedule)
        z = yield from self._plan_infer("encode", {"IMAGE": x}, "LATENT", settings)
        return Latents(z, info.fingerprint, info.space, settings)

    def _plan_latents(
        self,
        item: LatentsOrImages,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
        single: str = "",
    ) -> Plan[Latents]:
        """`Latents` as given (checked against the model), anything else encoded as images."""
        if isinstance(item, Latents):
            info = yield from self._plan_info()
            self._check_latents(item, info, force)
            latents = item
        else:
            latents = yield from self._plan_encode(item, steps, solver, schedule)
        if single and len(latents) != 1:
            raise ValueError(f"{single} takes one latent or image, got {len(latents)}")
        return latents

    def _plan_decode(
        self,
        latents: Latents | np.ndarray,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_info()
        inputs: dict[str, np.ndarray] = {}
        base = None
        if isinstance(latents, Latents):
            self._check_latents(latents, info, force)
            values = latents.values
            if latents.space == info.space:
                base = latents.settings  # decode with the settings that made the latents
            if latents.fingerprint == info.fingerprint:  # the server checks it too
                inputs["FINGERPRINT"] = np.full((len(values), 1), info.fingerprint.encode(), dtype=object)
        else:  # a bare array claims no model: only its shape is checked
            values = np.asarray(latents, dtype=np.float32)
            values = values[None] if values.ndim == 2 else values
            info.space.check_latents(values)
            if not np.isfinite(values).all():
                raise ValueError("latents contain NaN or infinity")
        settings = self._settings(info, base, steps, solver, schedule)
        inputs = {"LATENT": np.ascontiguousarray(values, dtype=np.float32), **inputs}
        return (yield from self._plan_infer("decode", inputs, "IMAGE", settings))

    def _plan_mix(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: int | Iterable[int] | np.ndarray,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_info()
        chosen = self._groups(info, groups)
        if not chosen.any():
            raise ValueError("mix needs at least one group to take from b")
        if not isinstance(a, Latents) and not isinstance(b, Latents):  # the server's mix model
            xa, xb = _pair(to_model_images(a, info.space.shape), to_model_images(b, info.space.shape))
            settings = self._settings(info, None, steps, solver, schedule)
            inputs = {"IMAGE_A": xa, "IMAGE_B": xb, "GROUPS": np.repeat(chosen[None], len(xa), axis=0)}
            return (yield from self._plan_infer("mix", inputs, "IMAGE", settings))
        za = yield from self._plan_latents(a, force, steps, solver, schedule)
        zb = yield from self._plan_latents(b, force, steps, solver, schedule)
        if za.fingerprint != zb.fingerprint and not force:
            raise ModelMismatchError(
                f"cannot mix latents of model {za.fingerprint!r} with latents of model {zb.fingerprint!r}"
            )
        va, vb = _pair(za.values, zb.values)
        mixed = za.replace(grouplat.mix(za.space, va, vb, chosen))
        return (yield from self._plan_decode(mixed, force, steps, solver, schedule))

    def _plan_interpolate(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        group: int,
        weights: Sequence[float] | np.ndarray,
        method: str,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all():
            raise ValueError(f"weights must be a non-empty list of finite numbers, got {weights!r}")
        za = yield from self._plan_latents(a, force, steps, solver, schedule, single="interpolate")
        zb = yield from self._plan_latents(b, force, steps, solver, schedule, single="interpolate")
        moved = za.replace(grouplat.interpolate(za.space, za.values[0], zb.values[0], group, w, method))
        return (yield from self._plan_decode(moved, force, steps, solver, schedule))

    def _plan_traverse(
        self,
        latent: LatentsOrImages,
        channel: int,
        index: int,
        values: Sequence[float] | np.ndarray,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise ValueError(f"values must be a non-empty list of finite numbers, got {values!r}")
        z = yield from self._plan_latents(latent, force, steps, solver, schedule, single="traverse")
        moved = z.replace(grouplat.traverse(z.space, z.values[0], channel, index, v))
        return (yield from self._plan_decode(moved, force, steps, solver, schedule))

    def _plan_reconstruct(
        self,
        latent: LatentsOrImages,
        keep: int,
        fill: str,
        seed: int,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        z = yield from self._plan_latents(latent, force, steps, solver, schedule)
        kept = z.replace(grouplat.keep_first(z.space, z.values, keep, fill, seed))
        return (yield from self._plan_decode(kept, force, steps, solver, schedule))

    def _plan_variations(
        self,
        latent: LatentsOrImages,
        keep_groups: int | Iterable[int] | np.ndarray,
        n: int,
        seed: int,
        force: bool,
        steps: int | None,
        solver: str | None,
        schedule: str | None,
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_info()
        keep = self._groups(info, keep_groups)
        z = yield from self._plan_latents(latent, force, steps, solver, schedule, single="variations")
        varied = z.replace(grouplat.variations(z.space, z.values[0], keep, n, seed))
        return (yield from self._plan_decode(varied, force, steps, solver, schedule))


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast one of two batches of one against the other (mix: one reference for many)."""
    if len(a) == len(b):
        return a, b
    if len(b) == 1:
        return a, np.repeat(b, len(a), axis=0)
    if len(a) == 1:
        return np.repeat(a, len(b), axis=0), b
    raise ValueError(f"mix needs as many b as a, or one of either; got {len(a)} and {len(b)}")


class Client(_Base):
    """Blocking client: `Client("localhost:8001")`, or several endpoints for fail-over.

    `server` is "host:port", "host1:port1,host2:port2" or a list; by default $GROUPLAT_SERVER or
    127.0.0.1:8001. `timeout` is the deadline (seconds) of each method call, retries included; tries
    that find a server UNAVAILABLE (or restarting) are repeated with `retry`'s backoff, moving to the
    next endpoint. Every other server error is raised at once: INVALID_ARGUMENT as
    InvalidRequestError (a ValueError) with the server's message.
    TLS: `ssl=True` with optional PEM file paths (`root_certificates`, and `private_key` +
    `certificate_chain` for client authentication).

    Images go in as uint8 [.., H, W, C] / float [.., C, H, W] in [-1, 1] arrays, PIL images or file
    paths, and come out as float32 [B, C, H, W] in [-1, 1] (`to_uint8`, `to_pil`, `save_image`
    convert). Methods that edit a latent take `Latents` or images (encoded first). `steps`, `solver`
    and `schedule` override the generation settings: by default, decoding uses the settings stored
    in the latents (which inverts their encode) and encoding the model's defaults.

    Not thread-safe: use one client per thread (or `AsyncClient` in one event loop).
    """

    # -- transport ----------------------------------------------------------------------------
    def _run(self, plan: Plan[T], timeout: float | None) -> T:
        deadline = _Deadline(self.timeout if timeout is None else timeout)
        try:
            request = next(plan)
            while True:
                request = plan.send(self._call(request, deadline))
        except StopIteration as done:
            return done.value
        finally:
            plan.close()

    def _call(self, request: _Config | _Infer, deadline: _Deadline) -> Any:
        tries = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                return self._attempt(endpoint, request, deadline)
            except InferenceServerException as e:
                if not _retryable(e):
                    raise self._translate(e, endpoint, request, deadline) from None
                self._drop(endpoint)  # a fresh channel reconnects without gRPC's own backoff
                tries += 1
                time.sleep(self._after_unavailable(e, tries, deadline))

    def _attempt(self, endpoint: str, request: _Config | _Infer, deadline: _Deadline) -> Any:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = grpcclient.InferenceServerClient(endpoint, **self._connection_args())
            self._connections[endpoint] = connection
        if self._needs_check(endpoint, request):
            answer = connection.get_model_config("decode", as_json=True, client_timeout=deadline.remaining())
            self._check_endpoint(endpoint, answer["config"])
        if isinstance(request, _Config):
            answer = connection.get_model_config(
                request.model, as_json=True, client_timeout=deadline.remaining()
            )
            self._check_endpoint(endpoint, answer["config"])
            return answer["config"]
        inputs, outputs = self._infer_inputs(grpcclient, request)
        result = connection.infer(
            request.model,
            inputs,
            outputs=outputs,
            client_timeout=deadline.remaining(),
            parameters=request.parameters,
        )
        return self._output(result, request)

    def _drop(self, endpoint: str) -> None:
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for endpoint in list(self._connections):
            self._drop(endpoint)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- API -----------------------------------------------------------------------------------
    def info(self, timeout: float | None = None) -> ServedModel:
        """The served model's fingerprint, latent layout and default settings (read once)."""
        return self._run(self._plan_info(), timeout)

    def encode(
        self,
        images: Images,
        *,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> Latents:
        """Images → `Latents` (with the model's fingerprint and the settings used)."""
        return self._run(self._plan_encode(images, steps, solver, schedule), timeout)

    def decode(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """`Latents` (or a bare float32 [B, C, H·W] array) → images [B, C, H, W].

        Latents of another model are refused with ModelMismatchError unless `force`.
        """
        return self._run(self._plan_decode(latents, force, steps, solver, schedule), timeout)

    def mix(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: int | Iterable[int] | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Images of `a` with the chosen groups taken from `b` (Fig. 6); S1 is group 1.

        Two sets of images go to the server's `mix` model in one call; with `Latents` the groups
        are mixed here and decoded. `b` may be one reference for all of `a`.
        """
        return self._run(self._plan_mix(a, b, groups, force, steps, solver, schedule), timeout)

    def interpolate(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        group: int,
        weights: Sequence[float] | np.ndarray,
        *,
        method: str = "linear",
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """One group moved from a to b by each weight, others kept (Fig. 4): [len(weights), C, H, W]."""
        plan = self._plan_interpolate(a, b, group, weights, method, force, steps, solver, schedule)
        return self._run(plan, timeout)

    def traverse(
        self,
        latent: LatentsOrImages,
        channel: int,
        index: int,
        values: Sequence[float] | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Element (channel, index) set to each value (Fig. 7): [len(values), C, H, W]."""
        plan = self._plan_traverse(latent, channel, index, values, force, steps, solver, schedule)
        return self._run(plan, timeout)

    def reconstruct(
        self,
        latent: LatentsOrImages,
        keep: int,
        *,
        fill: str = "zeros",
        seed: int = 0,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """Decode from the first `keep` coefficients of each channel, the rest zero or resampled (Fig. 5)."""
        plan = self._plan_reconstruct(latent, keep, fill, seed, force, steps, solver, schedule)
        return self._run(plan, timeout)

    def variations(
        self,
        latent: LatentsOrImages,
        keep_groups: int | Iterable[int] | np.ndarray,
        n: int,
        *,
        seed: int = 0,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        """n images with the kept groups fixed and the others resampled from `seed` (Fig. 9)."""
        plan = self._plan_variations(latent, keep_groups, n, seed, force, steps, solver, schedule)
        return self._run(plan, timeout)
