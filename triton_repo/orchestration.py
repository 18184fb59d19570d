"""The library behind the Python-backend orchestrators `encode`, `decode` and `mix` (DESIGN §4).

`orchestrator/model.py` stays thin: it builds an `Orchestrator` from Triton's arguments and hands
every `execute` to `answer`, which validates each request on its own, runs all good requests with
the same settings as one batched ODE solve, and answers every request — a bad one with
INVALID_ARG naming the problem, without failing the others.
No torch here; `pb_utils` (triton_python_backend_utils) is passed in, as it only exists in the stub.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import ops
from grouplat.modelinfo import ModelInfo
from grouplat.serving import contract as c
from grouplat.serving.engines import BlsVelocity, OnnxVelocity, error_response
from grouplat.settings import GenerationSettings
from grouplat.solvers import Velocity, decode, encode

IMAGE_RANGE_SLACK = 1e-3  # images are in [-1, 1]; allow rounding from uint8 conversions
LATENT_LIMIT = 1e4  # |latent| above this is no latent of a model (they are ~N(0, 1)) and overflows


class RequestError(ValueError):
    """A bad request: answered with INVALID_ARG, the server keeps serving."""


class Orchestrator:
    """encode / decode / mix for one model over one velocity engine, with request validation."""

    def __init__(self, info: ModelInfo, velocity: Velocity, defaults: GenerationSettings) -> None:
        self.info = info
        self.space = info.space
        self.velocity = velocity
        self.defaults = defaults.check(info.space.k)

    def settings(self, parameters: dict[str, Any]) -> GenerationSettings:
        """Request parameters `steps`, `solver`, `schedule` over the model's defaults."""
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

    def run(self, operation: str, inputs: dict[str, np.ndarray], settings: GenerationSettings) -> np.ndarray:
        """One batched solve for already validated inputs."""
        schedule = settings.generation_schedule(self.space.k)
        solve = self.info.solve_args(schedule, settings.steps, settings.solver, settings.spacing)
        solve["velocity"] = self.velocity
        if operation == c.ENCODE:
            return encode(images=inputs[c.IMAGE], **solve)
        if operation == c.DECODE:
            return decode(latents=inputs[c.LATENT], **solve)
        a = inputs[c.IMAGE_A]
        both = encode(images=np.concatenate([a, inputs[c.IMAGE_B]]), **solve)  # one solve for A and B
        mixed = ops.mix(self.space, both[: len(a)], both[len(a) :], inputs[c.GROUPS])
        return decode(latents=mixed, **solve)


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
    if params.get(c.FINGERPRINT_PARAM) != info.fingerprint:
        raise ValueError(f"{model_dir}: config fingerprint differs from {version}/model.json")
    mode = params.get(c.VELOCITY_CALL_PARAM, "inprocess")
    velocity_model = params.get(c.VELOCITY_MODEL_PARAM, c.VELOCITY)
    velocity: Velocity
    if mode == "bls":
        velocity = BlsVelocity(pb_utils, velocity_model, int(params[c.VELOCITY_MAX_BATCH_PARAM]))
    elif mode == "inprocess":
        engine = model_dir.parent / velocity_model / version / "model.onnx"
        threads = int(params.get(c.THREADS_PARAM, "1"))
        velocity = OnnxVelocity(engine, threads, params.get(c.SPINNING_PARAM, "0") == "1")
    else:
        raise ValueError(f"velocity_call must be one of {c.CALL_MODES}, got {mode!r}")
    defaults = GenerationSettings(
        params[c.SOLVER_PARAM],
        int(params[c.STEPS_PARAM]),
        params[c.GENERATE_SCHEDULE_PARAM],
        params.get(c.SPACING_PARAM, "tau"),
    )
    return Orchestrator(info, velocity, defaults), params[c.OPERATION_PARAM]


def answer(pb_utils: Any, requests: Sequence[Any], orchestrator: Orchestrator, operation: str) -> list[Any]:
    """Responses for every request of one `execute`, in order."""
    responses: list[Any] = [None] * len(requests)
    batches: dict[GenerationSettings, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for i, request in enumerate(requests):
        try:
            tensors = {}
            for name in (*c.INPUTS[operation], *c.OPTIONAL_INPUTS[operation]):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            inputs = orchestrator.validate(operation, tensors)
            settings = orchestrator.settings(json.loads(request.parameters() or "{}"))
        except RequestError as error:
            responses[i] = error_response(pb_utils, str(error), pb_utils.TritonError.INVALID_ARG)
            continue
        batches.setdefault(settings, []).append((i, inputs))
    for settings, members in batches.items():
        names = list(members[0][1])
        joined = {n: np.concatenate([inputs[n] for _, inputs in members]) for n in names}
        try:
            output = orchestrator.run(operation, joined, settings)
        except Exception as error:  # an engine failure fails this batch, not the server
            for i, _ in members:
                message = f"{operation} failed: {error}"
                responses[i] = error_response(pb_utils, message, pb_utils.TritonError.INTERNAL)
            continue
        sizes = np.cumsum([len(inputs[names[0]]) for _, inputs in members])[:-1]
        for (i, _), part in zip(members, np.split(output, sizes)):
            tensor = pb_utils.Tensor(c.OUTPUTS[operation], np.ascontiguousarray(part, dtype=np.float32))
            responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
    return responses
