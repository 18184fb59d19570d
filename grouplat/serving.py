"""The library behind the Triton Python-backend models in `triton_repo/` (DESIGN §4).

`model.py` files stay thin: they build an `Orchestrator` (or a velocity engine) from Triton's
arguments and hand every `execute` to `answer`, which validates each request on its own, runs
all good requests with the same settings as one batched ODE solve, and answers every request —
a bad one with INVALID_ARG naming the problem, without failing the others.
No torch here; `pb_utils` (triton_python_backend_utils) is passed in, as it only exists in the stub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import ops
from grouplat.modelinfo import ModelInfo
from grouplat.schedule import Schedule
from grouplat.solvers import SOLVERS, Velocity, decode, encode

INPUTS = {"encode": ("IMAGE",), "decode": ("LATENT",), "mix": ("IMAGE_A", "IMAGE_B", "GROUPS")}
OUTPUTS = {"encode": "LATENT", "decode": "IMAGE", "mix": "IMAGE"}
CALL_MODES = ("inprocess", "bls")  # how an orchestrator calls the velocity engine
MAX_STEPS = 4096
IMAGE_RANGE_SLACK = 1e-3  # images are in [-1, 1]; allow rounding from uint8 conversions


class RequestError(ValueError):
    """A bad request: answered with INVALID_ARG, the server keeps serving."""


@dataclass(frozen=True)
class Settings:
    """How one request is solved; requests with equal settings share one ODE solve."""

    steps: int
    solver: str
    schedule: Schedule
    spacing: str = "tau"

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.steps, self.solver, str(self.schedule.describe()), self.spacing)


class Orchestrator:
    """encode / decode / mix for one model over one velocity engine, with request validation."""

    def __init__(self, info: ModelInfo, velocity: Velocity, defaults: Settings) -> None:
        self.info = info
        self.space = info.space
        self.velocity = velocity
        self.defaults = defaults

    def settings(self, parameters: dict[str, Any]) -> Settings:
        """Request parameters `steps`, `solver`, `schedule` over the model's defaults."""
        unknown = set(parameters) - {"steps", "solver", "schedule"}
        if unknown:
            raise RequestError(f"unknown request parameter(s) {sorted(unknown)}: use steps, solver, schedule")
        steps = parameters.get("steps", self.defaults.steps)
        if isinstance(steps, str) and steps.strip().isdigit():
            steps = int(steps)
        if isinstance(steps, bool) or not isinstance(steps, int) or not self.space.k <= steps <= MAX_STEPS:
            raise RequestError(f"steps must be an integer in {self.space.k}..{MAX_STEPS}, got {steps!r}")
        solver = parameters.get("solver", self.defaults.solver)
        if solver not in SOLVERS:
            raise RequestError(f"unknown solver {solver!r}: expected one of {', '.join(SOLVERS)}")
        schedule = self.defaults.schedule
        if "schedule" in parameters:
            try:
                schedule = Schedule.parse(str(parameters["schedule"]), self.space.k)
            except ValueError as error:
                raise RequestError(f"bad schedule: {error}") from None
        return Settings(steps, solver, schedule, self.defaults.spacing)

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
            raise RequestError(f"LATENT must be {expected} for this model, got {latents.shape}")
        if not np.isfinite(latents).all():
            raise RequestError("LATENT contains NaN or Inf")
        return latents.astype(np.float32, copy=False)

    def check_groups(self, groups: np.ndarray, batch: int) -> np.ndarray:
        if groups.shape != (batch, self.space.k):
            raise RequestError(f"GROUPS must be [B, {self.space.k}] (one flag per group), got {groups.shape}")
        return groups.astype(bool)

    def check_fingerprints(self, fingerprints: np.ndarray) -> None:
        for value in np.asarray(fingerprints).ravel():
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if text != self.info.fingerprint:
                raise RequestError(
                    f"this latent was made by model {text[:16]}…, not by this model "
                    f"({self.info.fingerprint[:16]}…): refusing to decode it"
                )

    def validate(self, operation: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checked float32/bool inputs of one request; raises RequestError."""
        if operation == "encode":
            return {"IMAGE": self.check_images("IMAGE", tensors["IMAGE"])}
        if operation == "decode":
            if tensors.get("FINGERPRINT") is not None:
                self.check_fingerprints(tensors["FINGERPRINT"])
            return {"LATENT": self.check_latents(tensors["LATENT"])}
        a, b = (self.check_images(n, tensors[n]) for n in ("IMAGE_A", "IMAGE_B"))
        if a.shape != b.shape:
            raise RequestError(f"IMAGE_A {a.shape} and IMAGE_B {b.shape} differ in shape")
        return {
            "IMAGE_A": a,
            "IMAGE_B": b,
            "GROUPS": self.check_groups(np.asarray(tensors["GROUPS"]), len(a)),
        }

    def run(self, operation: str, inputs: dict[str, np.ndarray], settings: Settings) -> np.ndarray:
        """One batched solve for already validated inputs."""
        solve = self.info.solve_args(settings.schedule, settings.steps, settings.solver, settings.spacing)
        solve["velocity"] = self.velocity
        if operation == "encode":
            return encode(images=inputs["IMAGE"], **solve)
        if operation == "decode":
            return decode(latents=inputs["LATENT"], **solve)
        a = inputs["IMAGE_A"]
        both = encode(images=np.concatenate([a, inputs["IMAGE_B"]]), **solve)  # one solve for A and B
        mixed = ops.mix(self.space, both[: len(a)], both[len(a) :], inputs["GROUPS"])
        return decode(latents=mixed, **solve)


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
        return self.session.run(["U"], {"X_T": x_t, "LEVELS": levels})[0]


class BlsVelocity:
    """The velocity engine through Triton (BLS): the dynamic batcher can merge the steps of
    different requests, since each sample carries its own levels."""

    def __init__(self, pb_utils: Any, model: str = "velocity", max_batch: int = 64) -> None:
        self.pb_utils = pb_utils
        self.model = model
        self.max_batch = max_batch

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(x_t), self.max_batch):
            stop = start + self.max_batch
            request = self.pb_utils.InferenceRequest(
                model_name=self.model,
                requested_output_names=["U"],
                inputs=[
                    self.pb_utils.Tensor("X_T", np.ascontiguousarray(x_t[start:stop])),
                    self.pb_utils.Tensor("LEVELS", np.ascontiguousarray(levels[start:stop])),
                ],
            )
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"velocity engine failed: {response.error().message()}")
            parts.append(self.pb_utils.get_output_tensor_by_name(response, "U").as_numpy())
        return np.concatenate(parts)


def config_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """A Triton model config's `parameters` as plain strings."""
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


def orchestrator_from_triton(args: dict[str, str], pb_utils: Any) -> tuple[Orchestrator, str]:
    """Build the orchestrator of one Triton model from its `initialize` arguments."""
    config = json.loads(args["model_config"])
    params = config_parameters(config)
    model_dir = Path(args["model_repository"])
    version = args["model_version"]
    info = ModelInfo.load(model_dir / version)
    if params.get("fingerprint") != info.fingerprint:
        raise ValueError(f"{model_dir}: config fingerprint differs from {version}/model.json")
    mode = params.get("velocity_call", "inprocess")
    velocity: Velocity
    if mode == "bls":
        velocity = BlsVelocity(
            pb_utils, params.get("velocity_model", "velocity"), int(params["velocity_max_batch"])
        )
    elif mode == "inprocess":
        engine = model_dir.parent / params.get("velocity_model", "velocity") / version / "model.onnx"
        velocity = OnnxVelocity(engine, int(params.get("threads", "1")), params.get("spinning", "0") == "1")
    else:
        raise ValueError(f"velocity_call must be one of {CALL_MODES}, got {mode!r}")
    defaults = Settings(
        int(params["steps"]),
        params["solver"],
        Schedule.parse(params["generate_schedule"], info.space.k),
        params.get("spacing", "tau"),
    )
    return Orchestrator(info, velocity, defaults), params["operation"]


def answer(pb_utils: Any, requests: Sequence[Any], orchestrator: Orchestrator, operation: str) -> list[Any]:
    """Responses for every request of one `execute`, in order."""
    responses: list[Any] = [None] * len(requests)
    batches: dict[tuple[Any, ...], list[tuple[int, dict[str, np.ndarray], Settings]]] = {}
    for i, request in enumerate(requests):
        try:
            tensors = {}
            for name in (*INPUTS[operation], "FINGERPRINT"):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            inputs = orchestrator.validate(operation, tensors)
            settings = orchestrator.settings(json.loads(request.parameters() or "{}"))
        except RequestError as error:
            responses[i] = _error(pb_utils, str(error), pb_utils.TritonError.INVALID_ARG)
            continue
        batches.setdefault(settings.key, []).append((i, inputs, settings))
    for members in batches.values():
        settings = members[0][2]
        names = list(members[0][1])
        joined = {n: np.concatenate([inputs[n] for _, inputs, _ in members]) for n in names}
        try:
            output = orchestrator.run(operation, joined, settings)
        except Exception as error:  # an engine failure fails this batch, not the server
            for i, _, _ in members:
                responses[i] = _error(pb_utils, f"{operation} failed: {error}", pb_utils.TritonError.INTERNAL)
            continue
        sizes = np.cumsum([len(inputs[names[0]]) for _, inputs, _ in members])[:-1]
        for (i, _, _), part in zip(members, np.split(output, sizes)):
            tensor = pb_utils.Tensor(OUTPUTS[operation], np.ascontiguousarray(part, dtype=np.float32))
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
    return responses


def answer_velocity(pb_utils: Any, requests: Sequence[Any], engine: Callable[..., np.ndarray]) -> list[Any]:
    """The python-backend velocity model: all requests of one `execute` as one engine call."""
    x_t = [pb_utils.get_input_tensor_by_name(r, "X_T").as_numpy() for r in requests]
    levels = [pb_utils.get_input_tensor_by_name(r, "LEVELS").as_numpy() for r in requests]
    try:
        u = engine(np.concatenate(x_t), np.concatenate(levels))
    except Exception as error:
        return [
            _error(pb_utils, f"velocity failed: {error}", pb_utils.TritonError.INTERNAL) for _ in requests
        ]
    parts = np.split(u, np.cumsum([len(x) for x in x_t])[:-1])
    return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("U", p)]) for p in parts]


def _error(pb_utils: Any, message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
