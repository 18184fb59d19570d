"""Checkpoints: a directory of safetensors + JSON. Loading never unpickles.

    model.safetensors       ema.<name>, raw.<name>, data_mean, data_std  (header: the metadata JSON)
    metadata.json           format, network config, latent space, training schedule, hide, weighting,
                            step, images seen, data set, training config, fingerprint, created, version
    optimizer.safetensors   Adam state tensors     ┐ only for resuming
    optimizer.json          the rest of its state  │
    trainer.json            step, images seen, …   ┘
    knots.json              calibrated knots of the served settings (`grouplat calibrate`; optional)

The fingerprint (sha256 over the EMA weights, the data statistics and the metadata that shape the
latent space) identifies the model that makes — and alone may decode — a latent (docs/design.md §2).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from grouplat.knots import KNOTS_FILE
from grouplat.knots import read as read_knots
from grouplat.s1phase import S1PhaseVelocity
from grouplat.schedule import Schedule
from grouplat.space import LatentSpace
from grouplat.training.networks import S1Head, S1HeadAlone, build_network, numpy_velocity

FORMAT = "grouplat-checkpoint/1"
MODEL, METADATA = "model.safetensors", "metadata.json"
OPTIMIZER, OPTIMIZER_JSON, TRAINER = "optimizer.safetensors", "optimizer.json", "trainer.json"
FINGERPRINT_KEYS = ("network", "space", "schedule", "hide")  # metadata that changes what a latent means


def fingerprint(
    weights: dict[str, torch.Tensor], data_mean: np.ndarray, data_std: np.ndarray, metadata: dict[str, Any]
) -> str:
    """sha256 (hex) over the FINGERPRINT_KEYS metadata (canonical JSON), the weights (by name:
    dtype, shape, bytes) and the data statistics."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps({k: metadata[k] for k in FINGERPRINT_KEYS}, sort_keys=True, separators=(",", ":")).encode()
    )
    named = {
        **{f"w.{k}": v for k, v in weights.items()},
        "data_mean": torch.as_tensor(np.asarray(data_mean, np.float32)),
        "data_std": torch.as_tensor(np.asarray(data_std, np.float32)),
    }
    for name in sorted(named):
        tensor = named[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def grouplat_version() -> str:
    try:
        return importlib_metadata.version("grouplat")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def save_checkpoint(
    directory: str | Path,
    network: torch.nn.Module,  # raw (trained) weights
    ema: torch.nn.Module,  # EMA weights: the model that latents belong to
    metadata: dict[str, Any],  # network, space, schedule, hide, … (see module docstring)
    data_mean: np.ndarray,  # per-coefficient statistics [C, H·W]
    data_std: np.ndarray,
    optimizer: torch.optim.Optimizer | None = None,
    trainer: dict[str, Any] | None = None,  # JSON-ready resume state
) -> dict[str, Any]:
    """Write a checkpoint directory atomically (a temporary sibling, then a rename). Returns the
    metadata as written, with the fingerprint."""
    directory = Path(directory)
    ema_state = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    metadata = {
        "format": FORMAT,
        **metadata,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "grouplat_version": grouplat_version(),
    }
    metadata["fingerprint"] = fingerprint(ema_state, data_mean, data_std, metadata)
    metadata["raw_fingerprint"] = fingerprint(network.state_dict(), data_mean, data_std, metadata)
    tensors = {f"ema.{k}": v for k, v in ema_state.items()}
    tensors.update(
        {f"raw.{k}": v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    )
    tensors["data_mean"] = torch.as_tensor(np.ascontiguousarray(data_mean, np.float32))
    tensors["data_std"] = torch.as_tensor(np.ascontiguousarray(data_std, np.float32))
    text = json.dumps(metadata, indent=2, sort_keys=True)

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, str(partial / MODEL), metadata={"format": FORMAT, "grouplat": text})
    (partial / METADATA).write_text(text + "\n")
    if optimizer is not None:
        state, info = _optimizer_tensors(optimizer)
        save_file(state, str(partial / OPTIMIZER))
        (partial / OPTIMIZER_JSON).write_text(json.dumps(info, indent=1) + "\n")
    if trainer is not None:
        (partial / TRAINER).write_text(json.dumps(trainer, indent=2, sort_keys=True) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return metadata


def release_checkpoint(source: str | Path, target: str | Path) -> Path:
    """The shipped form of a checkpoint: EMA weights, data statistics and metadata only (no raw
    weights, no optimizer), half the size. Its fingerprint is unchanged; it loads but cannot resume."""
    root = resolve_checkpoint(source)
    text = (root / METADATA).read_text()
    kept = {k: v for k, v in read_tensors(root / MODEL).items() if not k.startswith("raw.")}
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(target / MODEL), metadata={"format": FORMAT, "grouplat": text.strip()})
    (target / METADATA).write_text(text)
    if (root / KNOTS_FILE).is_file():  # calibrated for these weights: they stay with them
        shutil.copyfile(root / KNOTS_FILE, target / KNOTS_FILE)
    return target


@dataclass
class Checkpoint:
    """A loaded model: everything encode / decode / export need."""

    path: Path
    metadata: dict[str, Any]
    space: LatentSpace
    schedule: Schedule  # the training schedule
    network: torch.nn.Module  # eval mode, on the requested device
    data_mean: np.ndarray  # float32 [C, H·W]
    data_std: np.ndarray  # float32 [C, H·W]
    fingerprint: str
    knots: dict[str, list[list[float]]] = field(default_factory=dict)  # calibrated (grouplat.knots)

    @property
    def hide(self) -> bool:
        return bool(self.metadata["hide"])

    @property
    def config(self) -> dict[str, Any]:
        """The network config: `build_network(config)` rebuilds the architecture."""
        return dict(self.metadata["network"])

    @property
    def s1_covariance(self) -> np.ndarray | None:
        """S1's full covariance when the network has an S1 head (the `gei` solvers use it), else None."""
        return self.network.covariance() if isinstance(self.network, S1Head) else None

    def velocity(self, max_batch: int = 256) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """The network as a numpy velocity callable for `grouplat.decode` / `encode` (a headed
        model's S1 phase on its head alone, as served: `S1PhaseVelocity`)."""
        velocity = numpy_velocity(self.network, max_batch=max_batch)
        if not isinstance(self.network, S1Head):
            return velocity
        return S1PhaseVelocity(velocity, numpy_velocity(S1HeadAlone(self.network), max_batch=max_batch))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (→ its newest `checkpoint-*`)."""
    path = Path(path)
    if (path / METADATA).is_file() or (path / MODEL).is_file():
        return path
    candidates = sorted(
        p for p in path.glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".partial")
    )
    if not candidates:
        raise ValueError(
            f"no checkpoint at {str(path)!r}: expected {METADATA} and {MODEL} there, "
            "or checkpoint-* directories"
        )
    return candidates[-1]


def load_checkpoint(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint (or a run directory's newest one).

    `weights="raw"` loads the un-averaged weights (for study; they carry their own fingerprint,
    `raw_fingerprint`: latents of the EMA model do not belong to them). Any missing, corrupt or
    inconsistent file raises ValueError naming the file.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    root = resolve_checkpoint(path)
    metadata = read_metadata(root)
    where = root / METADATA
    try:
        space = LatentSpace.from_description(metadata["space"])
        schedule = Schedule.from_description(metadata["schedule"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"inconsistent checkpoint metadata in {str(where)!r}: {error}") from None
    tensors = read_tensors(root / MODEL)
    if "data_mean" not in tensors or "data_std" not in tensors:
        raise ValueError(f"{str(root / MODEL)!r} has no data statistics (data_mean, data_std)")
    mean, std = tensors["data_mean"].numpy(), tensors["data_std"].numpy()
    if mean.shape != space.latent_shape or std.shape != space.latent_shape:
        raise ValueError(
            f"{str(root / MODEL)!r}: data statistics have shape {mean.shape}, "
            f"the latent space needs {space.latent_shape}"
        )
    try:
        network = build_network(metadata["network"], space, mean, std)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"inconsistent checkpoint metadata in {str(where)!r}: {error}") from None
    state = {k[len(weights) + 1 :]: v for k, v in tensors.items() if k.startswith(weights + ".")}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{str(root / MODEL)!r} does not match its metadata's network: {str(error).splitlines()[0]}"
        ) from None
    actual = _verify(root, metadata, weights, state, mean, std)
    knots = read_knots(root, actual) if weights == "ema" else {}  # fitted to the EMA weights
    network.eval().requires_grad_(False).to(device)
    return Checkpoint(root, metadata, space, schedule, network, mean, std, actual, knots)


def _verify(
    root: Path,
    metadata: dict[str, Any],
    weights: str,
    state: dict[str, torch.Tensor],
    mean: np.ndarray,
    std: np.ndarray,
) -> str:
    """Recompute the fingerprint of the `weights` ("ema" or "raw") and compare it with the stored one."""
    stored = metadata.get("fingerprint" if weights == "ema" else "raw_fingerprint")
    actual = fingerprint(state, mean, std, metadata)
    if actual != stored:
        raise ValueError(
            f"checkpoint {str(root)!r} fails its {weights} fingerprint check (stored {stored}, "
            f"computed {actual}): a file was modified or is corrupt"
        )
    return actual


def read_metadata(root: Path) -> dict[str, Any]:
    where = root / METADATA
    try:
        metadata = json.loads(where.read_text())
    except FileNotFoundError:
        raise ValueError(f"checkpoint file {str(where)!r} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint file {str(where)!r} is corrupt: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ValueError(f"{str(where)!r} is not a {FORMAT} checkpoint (format {found!r})")
    return metadata


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"checkpoint file {str(file)!r} is missing")
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"checkpoint file {str(file)!r} is corrupt: {error}") from None


# ----------------------------------------------------------------------------
# Resume state.


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and the rest (JSON)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def load_training_state(
    path: str | Path, network: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore raw and EMA weights and the optimizer from a checkpoint; return trainer.json."""
    root = resolve_checkpoint(path)
    tensors = read_tensors(root / MODEL)
    try:
        for prefix, module in (("raw", network), ("ema", ema)):
            module.load_state_dict(
                {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")},
                strict=True,
            )
    except RuntimeError as error:
        raise ValueError(
            f"{str(root / MODEL)!r} does not match the network: {str(error).splitlines()[0]}"
        ) from None
    try:
        info = json.loads((root / OPTIMIZER_JSON).read_text())
        trainer = json.loads((root / TRAINER).read_text())
    except FileNotFoundError as error:
        raise ValueError(f"cannot resume from {str(root)!r}: {error.filename!r} is missing") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot resume from {str(root)!r}: corrupt JSON ({error})") from None
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in read_tensors(root / OPTIMIZER).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, entries in info["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    except (KeyError, ValueError) as error:
        raise ValueError(f"{str(root / OPTIMIZER)!r} does not match the optimizer: {error}") from None
    return trainer
