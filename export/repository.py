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
from importlib import resources
from pathlib import Path

import grouplat
from grouplat import settings
from grouplat.modelinfo import ModelInfo
from grouplat.schedule import Schedule
from grouplat.serving import contract as c
from grouplat.serving.configs import ENGINES, ServingOptions, orchestrator_config, velocity_config

# The model.py adapters export copies: package data of grouplat.serving (their folders are no
# packages), found through importlib.resources in a checkout and in an installed wheel alike.
SERVING = resources.files("grouplat.serving")
DEFAULT_OPTIONS = ServingOptions()
DEFAULTS_FILE = "defaults.json"  # per version: its default schedules, steps and solver
__all__ = ["ENGINES", "ServingOptions", "write_repository"]


def default_generate_schedule(info: ModelInfo, options: ServingOptions) -> Schedule:
    """The served default decode schedule: the option's, else the measured one (grouplat.settings)."""
    if options.generate_schedule is not None:
        return settings.parse_schedule(options.generate_schedule, info.space.k, "generation schedule")
    return settings.default_generate_schedule(info.space.k, info.train_schedule, info.headed)


def default_encode_schedule(info: ModelInfo, options: ServingOptions) -> Schedule:
    """The served default encode schedule: the option's, else the generation schedule when that
    was given, else the measured one."""
    if options.encode_schedule is not None:
        return settings.parse_schedule(options.encode_schedule, info.space.k, "encode schedule")
    if options.generate_schedule is not None:
        return default_generate_schedule(info, options)
    return settings.default_encode_schedule(info.space.k, info.train_schedule, info.headed)


def write_repository(
    directory: str | Path,
    info: ModelInfo,
    onnx_model: bytes,
    options: ServingOptions = DEFAULT_OPTIONS,
    version: int | None = None,
    force: bool = False,
    plan: bytes | None = None,
    checkpoint: str | Path | None = None,
    s1_head: bytes | None = None,
) -> int:
    """Write every model of the repository for `info`; returns the version number written.

    `plan` is the TensorRT engine (`engine: tensorrt`); `checkpoint` the checkpoint whose EMA
    weights the PyTorch engine loads (`engine: torch`); `s1_head` a headed model's S1 head alone
    (ONNX), which the orchestrators run S1's phase on (`S1PhaseVelocity`), whatever the engine.
    """
    options = options.resolved(info)
    options.check(info.space.k)
    if options.engine == "tensorrt" and plan is None:
        raise ValueError("engine tensorrt needs a TensorRT plan")
    if options.engine == "torch" and checkpoint is None:
        raise ValueError("engine torch needs the checkpoint")
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
    defaults = {
        c.GENERATE_SCHEDULE_PARAM: generate.text,
        c.ENCODE_SCHEDULE_PARAM: default_encode_schedule(info, options).text,
        c.STEPS_PARAM: str(options.steps),
        c.ENCODE_STEPS_PARAM: str(options.encode_steps or options.steps),
        c.SOLVER_PARAM: options.solver,
    }
    call = {
        c.VELOCITY_CALL_PARAM: options.velocity_call,
        c.VELOCITY_MODEL_PARAM: c.VELOCITY,
        c.VELOCITY_MAX_BATCH_PARAM: str(options.max_batch),
    }
    engine = {
        c.VERSION_PARAM: grouplat.__version__,
        c.THREADS_PARAM: str(options.threads),
        c.DEVICE_PARAM: options.device,
        c.PRECISION_PARAM: options.precision,
        c.SPINNING_PARAM: str(int(options.spinning)),
        c.MAX_COST_PARAM: str(options.max_cost),
        c.SCHEDULING_PARAM: options.scheduling,
        c.CACHE_BYTES_PARAM: str(options.cache_bytes),
    }
    for name in (c.VELOCITY, *c.ORCHESTRATORS):
        write_version(root, name, version, info, defaults)
    target = root / c.VELOCITY / str(version)
    (target / "model.onnx").write_bytes(onnx_model)
    if s1_head is not None:
        (target / c.S1_HEAD_FILE).write_bytes(s1_head)
    if options.engine == "python":
        (target / "model.py").write_bytes(adapter("velocity"))
    if options.engine == "torch":  # the EMA weights and metadata beside the torch adapter
        from grouplat.training.checkpoint import release_checkpoint

        release_checkpoint(checkpoint, target)  # type: ignore[arg-type]
        (target / "model.py").write_bytes(
            (resources.files("grouplat.export") / "torch_model.py").read_bytes()
        )
    if plan is not None:
        (target / "model.plan").write_bytes(plan)
    # torch: the orchestrators keep the ODE on the engine's device (in-process, or BLS by DLPack)
    orchestrator = (
        (resources.files("grouplat.export") / "torch_orchestrator.py").read_bytes()
        if options.engine == "torch"
        else adapter("orchestrator")
    )
    for operation in c.ORCHESTRATORS:
        (root / operation / str(version) / "model.py").write_bytes(orchestrator)
    # The configs describe every version (each loads: version_policy all); the top-level
    # parameters are the newest version's, which Triton serves to callers who name none.
    params = {**version_parameters(root), **engine}
    (root / c.VELOCITY / "config.pbtxt").write_text(velocity_config(info, options, params))
    for operation in c.ORCHESTRATORS:
        config = orchestrator_config(info, options, operation, {**params, **call})
        (root / operation / "config.pbtxt").write_text(config)
    return version


def version_parameters(root: Path) -> dict[str, str]:
    """Config parameters: the newest version's identity and defaults, and every version's (JSON)."""
    versions = {}
    for path in (root / c.VELOCITY).glob("[0-9]*"):
        if path.is_dir() and path.name.isdigit():
            info = ModelInfo.load(path)
            defaults = (
                json.loads((path / DEFAULTS_FILE).read_text()) if (path / DEFAULTS_FILE).is_file() else {}
            )
            versions[path.name] = {**info.describe(), **defaults}
    newest = versions[max(versions, key=int)]
    return {
        c.FINGERPRINT_PARAM: newest["fingerprint"],
        c.SPACE_PARAM: json.dumps(newest["space"]),
        c.TRAIN_SCHEDULE_PARAM: Schedule.from_description(newest["train_schedule"]).text,
        c.HIDE_PARAM: str(int(newest["hide"])),
        **{key: newest[key] for key in c.DEFAULT_PARAMS if key in newest},
        c.VERSIONS_PARAM: json.dumps(dict(sorted(versions.items(), key=lambda kv: int(kv[0])))),
    }


def adapter(kind: str) -> bytes:
    """The `velocity` or `orchestrator` model.py adapter's source."""
    return (SERVING / kind / "model.py").read_bytes()


def existing_versions(root: Path) -> dict[int, str]:
    """Version number → fingerprint of what the repository's velocity model already holds."""
    found = {}
    for path in (root / c.VELOCITY).glob("[0-9]*"):
        if path.is_dir() and path.name.isdigit():
            try:
                found[int(path.name)] = ModelInfo.load(path).fingerprint
            except ValueError:
                found[int(path.name)] = ""
    return found


def write_version(root: Path, name: str, version: int, info: ModelInfo, defaults: dict[str, str]) -> None:
    """A fresh version directory of one model: its ModelInfo and its serving defaults."""
    target = root / name / str(version)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    info.save(target)
    (target / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=1))
