"""The library behind the Python-backend orchestrators `encode`, `decode` and `mix` (docs/design.md §4).

`orchestrator/model.py` stays thin: it builds an `Orchestrator` from Triton's arguments and hands
every `execute` to `answer`, which validates each request on its own, runs all good requests with
the same settings as one batched ODE solve, and answers every request — a bad one with
INVALID_ARG naming the problem, without failing the others. Every error message ends with
`[request <id>]` (the caller's Triton request id) and is logged once with it (engines.fail);
successful requests are logged at DEBUG only.
No torch here; `pb_utils` (triton_python_backend_utils) is passed in, as it only exists in the stub.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import arrays, ops
from grouplat.modelinfo import ModelInfo
from grouplat.s1phase import S1PhaseVelocity, network_steps
from grouplat.serving import contract as c
from grouplat.serving.engines import (
    BlsVelocity,
    OnnxVelocity,
    bridge_logging,
    fail,
    request_id,
    succeeded,
)
from grouplat.settings import GenerationSettings
from grouplat.solvers import NFE_PER_STEP, Velocity, decode, encode

IMAGE_RANGE_SLACK = 1e-3  # images are in [-1, 1]; allow rounding from uint8 conversions
DEFAULTS_FILE = "defaults.json"  # in a version directory: its default schedule, steps, solver (export)
LATENT_LIMIT = 1e4  # |latent| above this is no latent of a model (they are ~N(0, 1)) and overflows
DEFAULT_MAX_COST = 4096  # network evaluations × images per request (Heun 20 steps, 8 images: 320)

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A bad request: answered with INVALID_ARG, the server keeps serving."""


class Orchestrator:
    """encode / decode / mix for one model over one velocity engine, with request validation."""

    def __init__(
        self,
        info: ModelInfo,
        velocity: Velocity,
        defaults: GenerationSettings,
        max_cost: int = DEFAULT_MAX_COST,
    ) -> None:
        self.info = info
        self.space = info.space
        self.velocity = velocity
        self.defaults = defaults.check(info.space.k)
        self.max_cost = max_cost

    def settings(self, parameters: dict[str, Any]) -> GenerationSettings:
        """Request parameters `steps`, `solver`, `schedule`, `encode_schedule` over the model's defaults."""
        try:
            return self.defaults.with_parameters(parameters, self.space.k)
        except ValueError as error:
            raise RequestError(str(error)) from None

    def check_images(self, name: str, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1:] != self.space.shape:
            raise RequestError(
                f"{name} must be [B, {', '.join(map(str, self.space.shape))}], got {images.shape}"
            )
        if not np.isfinite(images).all():
            raise RequestError(f"{name} contains NaN or Inf")
        if np.abs(images).max(initial=0) > 1 + IMAGE_RANGE_SLACK:
            raise RequestError(f"{name} values must lie in [-1, 1], found {np.abs(images).max():.4g}")
        return images.astype(np.float32, copy=False)

    def check_latents(self, latents: np.ndarray) -> np.ndarray:
        if latents.ndim != 3 or latents.shape[1:] != self.space.latent_shape:
            expected = f"[B, {self.space.channels}, {self.space.size}]"
            raise RequestError(f"{c.LATENT} must be {expected} for this model, got {latents.shape}")
        if not np.isfinite(latents).all():
            raise RequestError(f"{c.LATENT} contains NaN or Inf")
        if np.abs(latents).max(initial=0) > LATENT_LIMIT:
            raise RequestError(
                f"{c.LATENT} values must lie within ±{LATENT_LIMIT:g} (a model's latents are about "
                f"N(0, 1)), found {np.abs(latents).max():.4g}"
            )
        return latents.astype(np.float32, copy=False)

    def check_groups(self, groups: np.ndarray, batch: int) -> np.ndarray:
        if groups.shape != (batch, self.space.k):
            raise RequestError(
                f"{c.GROUPS} must be [B, {self.space.k}] (one flag per group), got {groups.shape}"
            )
        return groups.astype(bool)

    def check_fingerprints(self, fingerprints: np.ndarray) -> None:
        for value in np.asarray(fingerprints).ravel():
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text != self.info.fingerprint:
                raise RequestError(
                    f"this latent was made by model {text[:16]!r}…, not by this model "
                    f"({self.info.fingerprint[:16]}…): refusing to decode it"
                )

    def validate(self, operation: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked float32/bool inputs of one request; raises RequestError."""
        missing = [n for n in c.INPUTS[operation] if n not in tensors]
        if missing:
            raise RequestError(f"{operation} needs input tensor(s) {', '.join(missing)}")
        if operation == c.ENCODE:
            return {c.IMAGE: self.check_images(c.IMAGE, tensors[c.IMAGE])}
        if operation == c.DECODE:
            latents = self.check_latents(tensors[c.LATENT])
            if tensors.get(c.FINGERPRINT) is not None:
                self.check_fingerprints(tensors[c.FINGERPRINT])
            return {c.LATENT: latents}
        a, b = (self.check_images(n, tensors[n]) for n in (c.IMAGE_A, c.IMAGE_B))
        if a.shape != b.shape:
            raise RequestError(f"{c.IMAGE_A} {a.shape} and {c.IMAGE_B} {b.shape} differ in shape")
        return {
            c.IMAGE_A: a,
            c.IMAGE_B: b,
            c.GROUPS: self.check_groups(np.asarray(tensors[c.GROUPS]), len(a)),
        }

    def read(
        self, operation: str, tensors: dict[str, np.ndarray], request: Any
    ) -> tuple[dict[str, np.ndarray], GenerationSettings]:
        """One request's checked inputs and settings, within this server's cost budget."""
        inputs = self.validate(operation, tensors)
        try:
            parameters = json.loads(request.parameters() or "{}")
        except (TypeError, ValueError):
            raise RequestError("request parameters are not valid JSON") from None
        if not isinstance(parameters, dict):
            raise RequestError("request parameters must be a JSON object")
        settings = self.settings(parameters)
        cost = self.cost(operation, len(next(iter(inputs.values()))), settings)
        if cost > self.max_cost:
            raise RequestError(
                f"this request costs {cost} network evaluations × images, above this server's budget "
                f"of {self.max_cost} (config parameter {c.MAX_COST_PARAM}): use fewer steps or images"
            )
        return inputs, settings

    def cost(self, operation: str, images: int, settings: GenerationSettings) -> int:
        """Network evaluations × images of one request (mix: two encodes and a decode). A headed
        model's steps in S1's phase run on the head alone (`S1PhaseVelocity`): they count as none."""
        encode, decode = (self.network_steps(s) for s in (settings.encoding(), settings))
        steps = {c.ENCODE: encode, c.DECODE: decode, c.MIX: 2 * encode + decode}[
            c.STREAMS.get(operation, operation)
        ]
        return images * steps * NFE_PER_STEP[settings.solver]

    def network_steps(self, settings: GenerationSettings) -> int:
        """The steps of one direction's solve that call the whole network."""
        if not isinstance(self.velocity, S1PhaseVelocity):
            return settings.steps
        return network_steps(settings.generation_schedule(self.space.k), settings.steps)

    def run(
        self,
        operation: str,
        inputs: dict[str, np.ndarray],
        settings: GenerationSettings,
        owners: np.ndarray | None = None,
        cancelled: Callable[[], np.ndarray] | None = None,
    ) -> np.ndarray:
        """One batched solve for already validated inputs.

        `owners` (the request of every image) and `cancelled` (per request) let the rows of a
        cancelled request stop using the engine (`LiveRows`); without them every row runs.
        """

        return arrays.to_numpy(self._solve(operation, self.place(inputs), settings, owners, cancelled))

    def place(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Validated inputs where the engine computes. An engine with `to_device` (the torch
        engine) keeps the whole ODE on its device: the inputs go there once, the output comes back
        once (`arrays.to_numpy`), and no step copies to the host. Other engines: as they are."""
        to_device = getattr(self.velocity, "to_device", None)
        if to_device is None:
            return inputs
        return {n: v if n == c.GROUPS else to_device(v) for n, v in inputs.items()}

    def _solve(
        self,
        operation: str,
        inputs: dict[str, Any],
        settings: GenerationSettings,
        owners: np.ndarray | None,
        cancelled: Callable[[], np.ndarray] | None,
    ) -> Any:
        def solve(direction: str) -> dict[str, Any]:
            chosen = settings.encoding() if direction == "encode" else settings
            schedule = chosen.generation_schedule(self.space.k)
            return self.info.solve_args(schedule, chosen.steps, chosen.solver, chosen.spacing, direction)

        def engine(rows: np.ndarray | None) -> Velocity:
            return (
                self.velocity
                if rows is None or cancelled is None
                else LiveRows(self.velocity, rows, cancelled)
            )

        if operation == c.ENCODE:
            return encode(engine(owners), images=inputs[c.IMAGE], **solve("encode"))
        if operation == c.DECODE:
            return decode(engine(owners), latents=inputs[c.LATENT], **solve("decode"))
        a = inputs[c.IMAGE_A]
        both_owners = None if owners is None else np.concatenate([owners, owners])
        images = arrays.namespace(a).concat([a, inputs[c.IMAGE_B]])
        both = encode(engine(both_owners), images=images, **solve("encode"))
        mixed = ops.mix(self.space, both[: len(a)], both[len(a) :], inputs[c.GROUPS])
        return decode(engine(owners), latents=mixed, **solve("decode"))


def config_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """A Triton model config's `parameters` as plain strings."""
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def orchestrator_from_triton(
    args: dict[str, str],
    pb_utils: Any,
    engine: Callable[[Path], Velocity] | None = None,
    placement: Any = None,
) -> tuple[Orchestrator, str]:
    """Build the orchestrator of one Triton model from its `initialize` arguments.

    The torch adapter passes its own `engine` (the in-process engine, made from the velocity
    model's version directory; default: ONNX Runtime on model.onnx) and `placement` (where a BLS
    caller keeps the ODE state: `to_device`, `from_dlpack`, the velocity model's device): either
    way the ODE stays there.
    """
    bridge_logging(pb_utils)
    config = json.loads(args["model_config"])
    params = config_parameters(config)
    model_dir = Path(args["model_repository"])
    version = args["model_version"]
    info = ModelInfo.load(model_dir / version)  # each version is its own model (they coexist)
    listed = json.loads(params.get(c.VERSIONS_PARAM) or "{}").get(version, {})
    if listed.get("fingerprint", info.fingerprint) != info.fingerprint:
        raise ValueError(f"{model_dir}: the config's versions list another model for {version}/model.json")
    own = model_dir / version / DEFAULTS_FILE  # this version's defaults; older repositories: the config's
    params = {**params, **(json.loads(own.read_text()) if own.is_file() else {})}
    mode = params.get(c.VELOCITY_CALL_PARAM, "inprocess")
    velocity_model = params.get(c.VELOCITY_MODEL_PARAM, c.VELOCITY)
    velocity: Velocity
    if mode == "bls":
        velocity = BlsVelocity(
            pb_utils, velocity_model, int(params[c.VELOCITY_MAX_BATCH_PARAM]), int(version), placement
        )
    elif mode == "inprocess" and engine is not None:
        velocity = engine(model_dir.parent / velocity_model / version)
    elif mode == "inprocess":
        onnx = model_dir.parent / velocity_model / version / "model.onnx"
        threads = int(params.get(c.THREADS_PARAM, "1"))
        spinning = params.get(c.SPINNING_PARAM, "0") == "1"
        device_id = int(args.get("model_instance_device_id", "0") or 0)
        velocity = OnnxVelocity(onnx, threads, spinning, params.get(c.DEVICE_PARAM, "cpu"), device_id)
    else:
        raise ValueError(f"velocity_call must be one of {c.CALL_MODES}, got {mode!r}")
    s1_head = model_dir.parent / velocity_model / version / c.S1_HEAD_FILE
    if s1_head.is_file():  # a headed model: S1's phase on the head alone, in this process
        velocity = S1PhaseVelocity(velocity, OnnxVelocity(s1_head, int(params.get(c.THREADS_PARAM, "1"))))
    defaults = GenerationSettings(
        params[c.SOLVER_PARAM],
        int(params[c.STEPS_PARAM]),
        params[c.GENERATE_SCHEDULE_PARAM],
        params.get(c.SPACING_PARAM, "tau"),
        params.get(c.ENCODE_SCHEDULE_PARAM),  # repositories written before it: one schedule
        int(params.get(c.ENCODE_STEPS_PARAM) or 0) or None,  # and one step count
    )
    max_cost = int(params.get(c.MAX_COST_PARAM, DEFAULT_MAX_COST))
    operation = params[c.OPERATION_PARAM]
    logger.info(
        "%s (%s, instance %s): model %s…, velocity %s, defaults %s %d steps, budget %d",
        operation,
        config.get("name", operation),
        args.get("model_instance_name", "?"),
        info.fingerprint[:16],
        mode,
        defaults.solver,
        defaults.steps,
        max_cost,
    )
    return Orchestrator(info, velocity, defaults, max_cost), operation


class Cancelled(Exception):
    """Every request of a solve was cancelled (or timed out): stop using the engine."""


class LiveRows:
    """A velocity callable for one batched solve: rows of cancelled requests stop using the engine.

    `owners[r]` is the request that row r belongs to; `cancelled()` says, per request, whether its
    caller gave up (polled at every network evaluation, so a cancelled request leaves within one
    step). Dead rows get a zero velocity: their values are never returned.
    """

    def __init__(self, velocity: Velocity, owners: np.ndarray, cancelled: Callable[[], np.ndarray]) -> None:
        self.velocity, self.owners, self.cancelled = velocity, owners, cancelled

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        live = ~self.cancelled()[self.owners]
        if not live.any():
            raise Cancelled
        if live.all():
            return self.velocity(x_t, levels)
        rows = arrays.beside(np.flatnonzero(live), x_t)
        out = arrays.namespace(x_t).zeros_like(x_t)
        out[rows] = self.velocity(x_t[rows], levels[rows])
        return out


def answer(pb_utils: Any, requests: Sequence[Any], orchestrator: Orchestrator, operation: str) -> list[Any]:
    """Responses for every request of one `execute`, in order.

    Each request is read and validated on its own (any failure there is that request's error
    alone); the good ones with equal settings run as one batched solve. If a batch fails, its
    requests are retried one by one, so one poisonous input cannot fail its batch-mates. A
    non-finite output is an error, never OK. Every error names its request (`[request <id>]`)
    and is logged once; a success is logged at DEBUG.
    """
    bridge_logging(pb_utils)
    ids = [request_id(request) for request in requests]
    responses: list[Any] = [None] * len(requests)
    batches: dict[GenerationSettings, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for i, request in enumerate(requests):
        try:
            inputs, settings = orchestrator.read(operation, tensors_of(pb_utils, request, operation), request)
        except RequestError as error:
            responses[i] = fail(pb_utils, operation, ids[i], str(error), "INVALID_ARG")
            continue
        except Exception as error:  # a bug shown by this request: its error only, no traceback
            logger.debug("[request %s] %s: reading the request raised", ids[i], operation, exc_info=True)
            message = f"{operation}: unexpected {type(error).__name__} while reading the request"
            responses[i] = fail(pb_utils, operation, ids[i], message, "INTERNAL")
            continue
        batches.setdefault(settings, []).append((i, inputs))
    for settings, members in batches.items():
        started = time.perf_counter()
        outputs = _solve(orchestrator, operation, settings, members, requests)
        if outputs is None and len(members) > 1:  # isolate the culprit: each request alone
            logger.debug("%s: a batch of %d requests failed; running each alone", operation, len(members))
            outputs = {}
            for member in members:
                outputs.update(_solve(orchestrator, operation, settings, [member], requests) or {})
        seconds = time.perf_counter() - started
        for i, inputs in members:
            responses[i] = response(pb_utils, operation, (outputs or {}).get(i), ids[i])
            if logger.isEnabledFor(logging.DEBUG) and not responses[i].has_error():
                what = "%d image(s), %s %d steps, batch of %d request(s) in %.3f s"
                images, batch = len(next(iter(inputs.values()))), len(members)
                succeeded(operation, ids[i], what, images, settings.solver, settings.steps, batch, seconds)
    return responses


def tensors_of(pb_utils: Any, request: Any, operation: str) -> dict[str, np.ndarray]:
    tensors = {}
    for name in (*c.INPUTS[operation], *c.OPTIONAL_INPUTS[operation]):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            tensors[name] = tensor.as_numpy()
    return tensors


def _solve(
    orchestrator: Orchestrator,
    operation: str,
    settings: GenerationSettings,
    members: list[tuple[int, dict[str, np.ndarray]]],
    requests: Sequence[Any],
) -> dict[int, np.ndarray | BaseException] | None:
    """Request index → its output (or why it has none); None when the batch as a whole failed."""
    names = list(members[0][1])
    joined = {n: np.concatenate([inputs[n] for _, inputs in members]) for n in names}
    sizes = [len(inputs[names[0]]) for _, inputs in members]
    owners = np.repeat(np.arange(len(members)), sizes)

    def cancelled() -> np.ndarray:
        return np.array([_is_cancelled(requests[i]) for i, _ in members])

    try:
        output = orchestrator.run(operation, joined, settings, owners, cancelled)
    except Cancelled:
        return {i: Cancelled() for i, _ in members}
    except Exception as error:  # noqa: BLE001 - an engine failure fails this batch, not the server
        if len(members) > 1:
            return None
        return {members[0][0]: error}
    gone = cancelled()
    parts = np.split(output, np.cumsum(sizes)[:-1])
    return {i: Cancelled() if gone[j] else part for j, ((i, _), part) in enumerate(zip(members, parts))}


def response(pb_utils: Any, operation: str, output: np.ndarray | BaseException | None, request: str) -> Any:
    if isinstance(output, Cancelled):
        return fail(pb_utils, operation, request, f"{operation} cancelled by its caller", "CANCELLED")
    if isinstance(output, BaseException) or output is None:
        return fail(pb_utils, operation, request, f"{operation} failed: {output}", "INTERNAL")
    if not np.isfinite(output).all():
        message = (
            f"{operation} produced non-finite values: the inputs lie far outside what the model "
            "was trained on, or the solver diverged (try more steps or another solver)"
        )
        return fail(pb_utils, operation, request, message, "INTERNAL")
    tensor = pb_utils.Tensor(c.OUTPUTS[operation], np.ascontiguousarray(output, dtype=np.float32))
    return pb_utils.InferenceResponse(output_tensors=[tensor])


def _is_cancelled(request: Any) -> bool:
    """Triton ≥ 23.11 tells a Python backend whether the caller cancelled (or timed out)."""
    probe = getattr(request, "is_cancelled", None)
    return bool(probe()) if probe is not None else False
