"""Write (or add a version to) a Triton model repository for one model.

    DIR/velocity/config.pbtxt   X_T [-1,C,H,W], LEVELS [-1,k] → U [-1,C,H,W]
    DIR/velocity/N/             model.onnx (+ model.py for the embedded server, model.plan for TensorRT)
    DIR/{encode,decode,mix}/config.pbtxt and N/model.py — the Python-backend orchestrators

Every version directory also holds `model.json` + `stats.npz` (ModelInfo). Configs carry the
model's parameters (fingerprint, space, schedules, defaults) so that clients read them through
ModelConfig. A new model adds version N+1; an existing version is never overwritten silently.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import grouplat
from grouplat.modelinfo import ModelInfo
from grouplat.schedule import PAPER_GENERATE, Schedule
from grouplat.serving import CALL_MODES, INPUTS, OUTPUTS
from grouplat.solvers import SOLVERS

TRITON_REPO = Path(__file__).resolve().parents[1] / "triton_repo"  # the model.py files
ENGINES = ("python", "onnx", "tensorrt")
ORCHESTRATORS = ("encode", "decode", "mix")
_SEP = ",\n"


@dataclass(frozen=True)
class ServingOptions:
    """What the configs say beyond the model itself; each has a CLI flag in `grouplat export`."""

    engine: str = "python"  # python: ORT in the embedded server; onnx / tensorrt: native NGC backends
    velocity_call: str = "inprocess"  # how orchestrators call the engine: inprocess or bls
    generate_schedule: str | None = None  # default generation schedule; None: the paper's for k=4
    steps: int = 20  # default steps per request (Heun: 2 NFE per step)
    solver: str = "heun"
    max_batch: int = 64  # velocity engine's max batch (BLS merges steps of several requests)
    request_batch: int = 8  # orchestrators' max images per request
    queue_delay_us: int = 500  # dynamic batching delay of every model
    threads: int = 1  # ONNX Runtime intra-op threads per instance
    spinning: bool = False  # ONNX Runtime spin-waiting (hurts when instances share cores)
    velocity_instances: int = 1
    orchestrator_instances: int = 1

    def check(self, k: int) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.velocity_call not in CALL_MODES:
            raise ValueError(
                f"unknown velocity call {self.velocity_call!r}: expected {' or '.join(CALL_MODES)}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}: expected one of {', '.join(SOLVERS)}")
        if self.velocity_call == "inprocess" and self.engine == "tensorrt":
            raise ValueError(
                "in-process velocity calls run ONNX Runtime; use --velocity-call bls with tensorrt"
            )
        if self.steps < k:
            raise ValueError(f"default steps must be at least the number of groups ({k})")


def default_generate_schedule(info: ModelInfo, options: ServingOptions) -> Schedule:
    if options.generate_schedule is not None:
        return Schedule.parse(options.generate_schedule, info.space.k)
    return Schedule.from_cuts(PAPER_GENERATE) if info.space.k == 4 else info.train_schedule


def write_repository(
    directory: str | Path,
    info: ModelInfo,
    onnx_model: bytes,
    options: ServingOptions = ServingOptions(),
    version: int | None = None,
    force: bool = False,
    plan: bytes | None = None,
) -> int:
    """Write every model of the repository for `info`; returns the version number written."""
    options.check(info.space.k)
    if options.engine == "tensorrt" and plan is None:
        raise ValueError("engine tensorrt needs a TensorRT plan")
    root = Path(directory)
    existing = existing_versions(root)
    for number, fingerprint in existing.items():
        if fingerprint == info.fingerprint and number != version and not force:
            raise FileExistsError(
                f"{root} already serves this model as version {number}; pass --force to write it again"
            )
    if version is None:
        version = max(existing, default=0) + 1
    elif version in existing and not force:
        raise FileExistsError(f"{root}/velocity/{version} exists; pass --force to overwrite it")
    generate = default_generate_schedule(info, options)
    params = {
        "fingerprint": info.fingerprint,
        "space": json.dumps(info.space.describe()),
        "train_schedule": info.train_schedule.text,
        "generate_schedule": generate.text,
        "hide": str(int(info.hide)),
        "steps": str(options.steps),
        "solver": options.solver,
        "grouplat_version": grouplat.__version__,
    }
    engine_params = {"threads": str(options.threads), "spinning": str(int(options.spinning))}
    write_model(root, "velocity", velocity_config(info, options, {**params, **engine_params}), version, info)
    target = root / "velocity" / str(version)
    (target / "model.onnx").write_bytes(onnx_model)
    if options.engine == "python":
        shutil.copy(TRITON_REPO / "velocity" / "model.py", target / "model.py")
    if plan is not None:
        (target / "model.plan").write_bytes(plan)
    call = {"velocity_call": options.velocity_call, "velocity_model": "velocity"}
    call["velocity_max_batch"] = str(options.max_batch)
    for operation in ORCHESTRATORS:
        config = orchestrator_config(info, options, operation, {**params, **engine_params, **call})
        write_model(root, operation, config, version, info)
        shutil.copy(TRITON_REPO / "orchestrator" / "model.py", root / operation / str(version) / "model.py")
    return version


def existing_versions(root: Path) -> dict[int, str]:
    """Version number → fingerprint of what the repository's velocity model already holds."""
    found = {}
    for path in (root / "velocity").glob("[0-9]*"):
        if path.is_dir() and path.name.isdigit():
            try:
                found[int(path.name)] = ModelInfo.load(path).fingerprint
            except ValueError:
                found[int(path.name)] = ""
    return found


def write_model(root: Path, name: str, config: str, version: int, info: ModelInfo) -> None:
    target = root / name / str(version)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    info.save(target)
    (root / name / "config.pbtxt").write_text(config)


def velocity_config(info: ModelInfo, options: ServingOptions, params: dict[str, str]) -> str:
    c, h, w = info.space.shape
    header = {
        "python": 'backend: "python"',
        "onnx": 'platform: "onnxruntime_onnx"\ndefault_model_filename: "model.onnx"',
        "tensorrt": 'platform: "tensorrt_plan"\ndefault_model_filename: "model.plan"',
    }[options.engine]
    inputs = [_tensor("X_T", "TYPE_FP32", [c, h, w]), _tensor("LEVELS", "TYPE_FP32", [info.space.k])]
    zeros = "data_type: TYPE_FP32 zero_data: true"
    warmup = (
        f'model_warmup [ {{ name: "zeros" batch_size: 1\n'
        f'  inputs {{ key: "X_T" value {{ dims: {[c, h, w]} {zeros} }} }}\n'
        f'  inputs {{ key: "LEVELS" value {{ dims: [{info.space.k}] {zeros} }} }}\n}} ]'
    )
    return _config(
        "velocity",
        header,
        options.max_batch,
        inputs,
        [_tensor("U", "TYPE_FP32", [c, h, w])],
        options.velocity_instances,
        options.queue_delay_us,
        params,
        warmup,
    )


def orchestrator_config(
    info: ModelInfo, options: ServingOptions, operation: str, params: dict[str, str]
) -> str:
    c, h, w = info.space.shape
    image, latent = [c, h, w], [c, info.space.size]
    shapes = {"IMAGE": image, "IMAGE_A": image, "IMAGE_B": image, "LATENT": latent, "GROUPS": [info.space.k]}
    inputs = [_tensor(n, "TYPE_BOOL" if n == "GROUPS" else "TYPE_FP32", shapes[n]) for n in INPUTS[operation]]
    if operation == "decode":
        inputs.append(_tensor("FINGERPRINT", "TYPE_STRING", [1], optional=True))
    output = OUTPUTS[operation]
    return _config(
        operation,
        'backend: "python"',
        options.request_batch,
        inputs,
        [_tensor(output, "TYPE_FP32", shapes[output])],
        options.orchestrator_instances,
        options.queue_delay_us,
        {**params, "operation": operation},
    )


def _tensor(name: str, dtype: str, dims: list[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: {dims}{extra} }}'


def _config(
    name: str,
    header: str,
    max_batch: int,
    inputs: list[str],
    outputs: list[str],
    instances: int,
    queue_delay_us: int,
    params: dict[str, str],
    extra: str = "",
) -> str:
    parameters = ",\n".join(
        f"  {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(v)} }} }}" for k, v in params.items()
    )
    return (
        f'name: "{name}"\n{header}\nmax_batch_size: {max_batch}\n'
        f"input [\n{_SEP.join(inputs)}\n]\noutput [\n{_SEP.join(outputs)}\n]\n"
        f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
        f"parameters [\n{parameters}\n]\n{extra}\n"
    )
