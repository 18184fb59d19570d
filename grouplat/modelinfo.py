"""What every served model carries: its fingerprint, latent space, training schedule and data stats.

A checkpoint produces one `ModelInfo`; export writes it beside every engine version
(`model.json` + `stats.npz`) and into the Triton configs, and the orchestrators and the client
read it back. A latent is only meaningful with the model whose fingerprint it carries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import knots as calibrated
from grouplat.schedule import Schedule
from grouplat.space import LatentSpace

INFO_FILE = "model.json"  # `ModelInfo.describe()` as JSON
STATS_FILE = "stats.npz"  # the data statistics: arrays `mean`, `std` and, with an S1 head, `s1_covariance`


@dataclass(frozen=True)
class ModelInfo:
    """One model's identity and everything its latents depend on (immutable).

    Attributes:
        fingerprint: sha256 hex (64 characters) that names the model.
        space: the latent space (shape, basis, groups).
        train_schedule: the schedule the network was trained with (k groups, as the space).
        hide: whether hidden groups (docs/design.md §1) were used in training; encode/decode must match.
        mean: per-coefficient data mean, float32 [C, H·W].
        std: per-coefficient data std, float32 [C, H·W]; finite and positive.
        knots: the calibrated knots of some settings (`grouplat.knots`; `grouplat calibrate`);
            empty: every setting spaces its knots evenly.
        s1_covariance: S1's full covariance [C·|S1|, C·|S1|], float64, for a model with an S1 head
            (docs/design.md §1.4): the `gei` solvers take S1's Gaussian part with it. None: per
            coefficient.

    Raises:
        ValueError: a training schedule with another k than the space, stats of another shape
            than [C, H·W], a std that is not finite and positive, or an invalid knots table.

    Example:
        >>> import grouplat
        >>> space = grouplat.LatentSpace((1, 8, 8), "dct", (4, 16))
        >>> mean, std = np.zeros((1, 64), np.float32), np.ones((1, 64), np.float32)
        >>> info = ModelInfo(fingerprint_of("weights"), space, grouplat.Schedule.from_cuts("0.5,0.8"),
        ...                  True, mean, std)
        >>> info.describe()["train_schedule"], len(info.fingerprint)
        ('0.5,0.8', 64)
    """

    fingerprint: str  # sha256 hex that names the model (weights + what shapes its latents)
    space: LatentSpace
    train_schedule: Schedule
    hide: bool  # hidden groups (docs/design.md §1) were used in training, so must be in encode/decode
    mean: np.ndarray  # per-coefficient data mean [C, H·W], float32
    std: np.ndarray  # per-coefficient data std [C, H·W], float32
    knots: calibrated.Table = field(default_factory=dict)  # calibrated knots by setting (grouplat.knots)
    s1_covariance: np.ndarray | None = None  # S1's full covariance (a model with an S1 head)

    def __post_init__(self) -> None:
        if self.train_schedule.k != self.space.k:
            raise ValueError(
                f"training schedule has {self.train_schedule.k} groups, the latent space {self.space.k}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if np.shape(value) != self.space.latent_shape:
                raise ValueError(
                    f"data {name} has shape {np.shape(value)}, expected {self.space.latent_shape}"
                )
        if not (np.isfinite(self.std).all() and (self.std > 0).all()):
            raise ValueError("data std must be finite and positive")
        object.__setattr__(self, "knots", calibrated.check(self.knots, self.space.k))
        if self.s1_covariance is not None:
            size = self.space.channels * len(self.space.indices(1))
            cov = np.asarray(self.s1_covariance, np.float64)
            if cov.shape != (size, size) or not np.isfinite(cov).all() or not np.allclose(cov, cov.T):
                raise ValueError(f"S1's covariance must be a finite symmetric [{size}, {size}] matrix")
            object.__setattr__(self, "s1_covariance", cov)

    @property
    def headed(self) -> bool:
        """The model has an S1 head (its S1 covariance is known): S1's phase runs on the head alone."""
        return self.s1_covariance is not None

    def solve_args(
        self,
        schedule: Schedule,
        steps: int,
        solver: str = "heun",
        spacing: str = "tau",
        direction: str = "decode",
    ) -> dict[str, Any]:
        """Keyword arguments of `grouplat.encode` / `decode` for this model: its latent space, data
        statistics, hiding and calibrated knots, with the given generation settings.

        Args:
            schedule: the generation schedule (k groups).
            steps: total ODE steps, split across the groups by `schedule`.
            solver: `euler`, `heun`, `gei1`, `gei2m`, `gei2ab`, `gei3ab` or `gei2pc`.
            spacing: `tau` or `uniform` knots inside each group's phase.
            direction: `encode` or `decode`: whose calibrated knots apply.

        Returns:
            `space`, `schedule`, `steps`, `solver`, `spacing`, `std`, `mean`, `hide`, `knots`
            (None where `knots` has no entry for these settings) and `s1_covariance`; nothing
            else is checked here (encode/decode check them).

        Example:
            >>> import grouplat
            >>> space = grouplat.LatentSpace((1, 8, 8), "dct", (4, 16))
            >>> mean, std = np.zeros((1, 64), np.float32), np.ones((1, 64), np.float32)
            >>> schedule = grouplat.Schedule.from_cuts("0.5,0.8")
            >>> info = ModelInfo(fingerprint_of("weights"), space, schedule, True, mean, std)
            >>> velocity = grouplat.GaussianOracle(space, mean, std)
            >>> latents = np.zeros((2, 1, 64), np.float32)
            >>> grouplat.decode(velocity, latents, **info.solve_args(schedule, steps=6)).shape
            (2, 1, 8, 8)
        """
        return {
            "space": self.space,
            "schedule": schedule,
            "steps": steps,
            "solver": solver,
            "spacing": spacing,
            "std": self.std,
            "mean": self.mean,
            "hide": self.hide,
            "knots": self.knots_for(direction, schedule, steps, solver, spacing),
            "s1_covariance": self.s1_covariance,
        }

    def knots_for(
        self, direction: str, schedule: Schedule, steps: int, solver: str, spacing: str
    ) -> list[list[float]] | None:
        """The calibrated knots of these settings, or None (even spacing; `grouplat.knots.lookup`)."""
        return calibrated.lookup(self.knots, direction, schedule, steps, solver, spacing)

    def describe(self) -> dict[str, Any]:
        """JSON-ready metadata (without the stats arrays).

        Returns:
            `fingerprint`, `space` (`LatentSpace.describe`), `train_schedule`
            (`Schedule.describe`), `hide` and `knots`.
        """
        return {
            "fingerprint": self.fingerprint,
            "space": self.space.describe(),
            "train_schedule": self.train_schedule.describe(),
            "hide": self.hide,
            "knots": self.knots,
        }

    def save(self, directory: str | Path) -> None:
        """Write INFO_FILE (`describe()`) and STATS_FILE (mean, std[, s1_covariance]) into an existing
        directory.

        Raises:
            OSError: the directory does not exist or cannot be written.
        """
        directory = Path(directory)
        (directory / INFO_FILE).write_text(json.dumps(self.describe(), indent=1))
        extra = {} if self.s1_covariance is None else {"s1_covariance": self.s1_covariance}
        np.savez(directory / STATS_FILE, mean=self.mean, std=self.std, **extra)

    @classmethod
    def load(cls, directory: str | Path) -> ModelInfo:
        """Read what `save` wrote; the stats come back as float32.

        Raises:
            ValueError: a missing, unreadable or inconsistent INFO_FILE or STATS_FILE, naming the
                directory (OSError, KeyError and ValueError are all turned into this).
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / INFO_FILE).read_text())
            with np.load(directory / STATS_FILE, allow_pickle=False) as stats:
                mean, std = stats["mean"], stats["std"]
                s1_covariance = stats["s1_covariance"] if "s1_covariance" in stats.files else None
            return cls(
                meta["fingerprint"],
                LatentSpace.from_description(meta["space"]),
                Schedule.from_description(meta["train_schedule"]),
                bool(meta["hide"]),
                mean.astype(np.float32),
                std.astype(np.float32),
                meta.get("knots") or {},  # model infos written before calibrated knots have none
                s1_covariance,
            )
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"cannot read the model info in {directory}: {error}") from error


def fingerprint_of(*parts: bytes | str | dict) -> str:
    """sha256 over byte strings, strings and JSON-able dicts (canonical JSON).

    Args:
        parts: hashed in order; strings as UTF-8, dicts as `json.dumps(part, sort_keys=True)`.

    Returns:
        The 64-character hex digest.

    Example:
        >>> fingerprint_of({"b": 1, "a": 2}) == fingerprint_of('{"a": 2, "b": 1}')
        True
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            part = json.dumps(part, sort_keys=True)
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()
