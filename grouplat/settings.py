"""Generation settings: how one encode or decode is solved — the one type and the one set of
defaults that export, the server, the client, batch jobs and the demo share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from grouplat.schedule import Schedule
from grouplat.solvers import SOLVERS, SPACINGS

# The served defaults. Chosen by measurement (docs/solvers.md) on models/shapes32: at the previous
# default's cost (36 network evaluations), GEI-3ab with 36 steps split [16, 8, 6, 6] over S1..S4
# decodes at 45.1 dB one-way (GEI-2m [8, 4, 3, 3]: 42.1) and round-trips held-out images at
# 40.8 dB (38.7). Fewer evaluations cost the round trip: 32 → 38.3 dB, 28 → 35.2 dB. Heun with the
# paper's split [11, 3, 3, 3] gave 33 dB one-way at 40. `grouplat export` writes these into every
# model's config; the split is served as the default generation schedule for four groups
# (intervals in proportion to it).
DEFAULT_SOLVER = "gei3ab"
DEFAULT_GROUP_STEPS = (16, 8, 6, 6)
DEFAULT_STEPS = sum(DEFAULT_GROUP_STEPS)  # 36
DEFAULT_SPACING = "tau"
MAX_STEPS = 4096  # per request; the server may bound the cost further
MAX_SCHEDULE_TEXT = 2000  # characters of a schedule given as text


@dataclass(frozen=True)
class GenerationSettings:
    """ODE settings of an encode or decode.

    Attributes:
        solver: `euler`, `heun`, `gei1`, `gei2m`, `gei2ab` or `gei3ab` (grouplat.solvers.SOLVERS).
        steps: total ODE steps, split across the groups by the generation schedule.
        schedule: the generation schedule in the paper's cut notation ("0.1,0.2,0.3") or as JSON
            intervals; None means the model's default.
        spacing: knot spacing inside a group's phase, `tau` or `uniform`.

    Example:
        >>> GenerationSettings(steps=30).check(k=4).parameters()
        {'solver': 'gei3ab', 'steps': 30, 'schedule': '0.166667,0.333333,0.555556'}
    """

    solver: str = DEFAULT_SOLVER
    steps: int = DEFAULT_STEPS
    schedule: str | None = None
    spacing: str = DEFAULT_SPACING

    def check(self, k: int, default_schedule: str | Schedule | None = None) -> GenerationSettings:
        """These settings validated for a model with k groups, the schedule filled in and normalized.

        Args:
            k: the model's number of groups.
            default_schedule: used when `schedule` is None; by default the paper's generation
                split for k = 4 and even cuts otherwise (`default_generate_schedule`).

        Returns:
            Equal settings with `schedule` in its canonical text (so equal settings compare equal).

        Raises:
            ValueError: an unknown solver or spacing, steps that are not an integer in
                k..MAX_STEPS, or a schedule that is malformed or has the wrong number of groups.
        """
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {_short(self.solver)}: expected one of {', '.join(SOLVERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {_short(self.spacing)}: expected one of {', '.join(SPACINGS)}")
        steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not k <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in {k}..{MAX_STEPS}, got {_short(steps)}")
        spec = self.schedule if self.schedule is not None else default_schedule
        if isinstance(spec, str) and len(spec) > MAX_SCHEDULE_TEXT:
            raise ValueError(f"bad schedule: longer than {MAX_SCHEDULE_TEXT} characters")
        try:
            schedule = default_generate_schedule(k) if spec is None else Schedule.parse(spec, k)
        except (ValueError, TypeError, RecursionError) as error:
            raise ValueError(f"bad schedule: {_short(str(error), 200)}") from None
        return replace(self, steps=int(steps), schedule=schedule.text)

    def generation_schedule(self, k: int) -> Schedule:
        """The generation schedule as a `Schedule` (the default one when `schedule` is None).

        Args:
            k: the model's number of groups.

        Returns:
            `Schedule.parse(schedule, k)`, or `default_generate_schedule(k)` when `schedule` is None.

        Raises:
            ValueError: a malformed schedule or one without k groups (not after `check(k)`).

        Example:
            >>> GenerationSettings(schedule="0.5").generation_schedule(2).intervals.tolist()
            [[0.5, 1.0], [0.0, 0.5]]
        """
        return default_generate_schedule(k) if self.schedule is None else Schedule.parse(self.schedule, k)

    def parameters(self) -> dict[str, str | int]:
        """The per-request Triton parameters (`solver`, `steps`, `schedule` when set).

        Returns:
            `{"solver": ..., "steps": ...}`, with `"schedule"` too when it is not None; the
            values as stored (`check` first for canonical ones).

        Example:
            >>> GenerationSettings(steps=30).check(k=4).parameters()
            {'solver': 'gei3ab', 'steps': 30, 'schedule': '0.166667,0.333333,0.555556'}
        """
        values: dict[str, str | int] = {"solver": self.solver, "steps": self.steps}
        if self.schedule is not None:
            values["schedule"] = self.schedule
        return values

    def with_parameters(self, parameters: Mapping[str, Any], k: int) -> GenerationSettings:
        """These settings (a model's defaults) overridden by a request's parameters, checked.

        Args:
            parameters: `steps` (an integer, or a string of ASCII digits), `solver`, `schedule`.
            k: the model's number of groups.

        Returns:
            New settings, checked for k (`check`); a parameter left out keeps this value, and
            `spacing` (not a request parameter) is always kept.

        Raises:
            ValueError: an unknown parameter or a bad value (see `check`).

        Example:
            >>> GenerationSettings().with_parameters({"steps": "30", "solver": "heun"}, 4)
            GenerationSettings(solver='heun', steps=30, schedule='0.166667,0.333333,0.555556', spacing='tau')
        """
        unknown = sorted(set(parameters) - {"steps", "solver", "schedule"})
        if unknown:
            names = ", ".join(_short(u, 40) for u in unknown[:5])
            raise ValueError(f"unknown request parameter(s) {names}: use steps, solver, schedule")
        steps = parameters.get("steps", self.steps)
        if isinstance(steps, str):
            text = steps.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 6):
                raise ValueError(f"steps must be an integer in {k}..{MAX_STEPS}, got {_short(steps)}")
            steps = int(text)
        schedule = parameters.get("schedule", self.schedule)
        if schedule is not None and not isinstance(schedule, str):
            raise ValueError(f"schedule must be a string, got {_short(schedule)}")
        solver = parameters.get("solver", self.solver)
        return GenerationSettings(solver, steps, schedule, self.spacing).check(k)


def default_generate_schedule(k: int, train: Schedule | None = None) -> Schedule:
    """The default generation schedule: for four groups the measured split (DEFAULT_GROUP_STEPS,
    in place of the paper's 0.1,0.2,0.3), else the training schedule when given, else even cuts.

    Args:
        k: the model's number of groups.
        train: the model's training schedule, returned as is when k ≠ 4; None: even cuts.

    Returns:
        The schedule.

    Example:
        >>> [default_generate_schedule(k).cuts for k in (4, 3, 1)]
        ['0.166667,0.333333,0.555556', '0.333333,0.666667', '-']
    """
    if k == len(DEFAULT_GROUP_STEPS):
        return Schedule.from_steps(DEFAULT_GROUP_STEPS)
    if train is not None:
        return train
    return Schedule.from_cuts([j / k for j in range(1, k)])


def _short(value: object, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: error messages never echo a whole bad value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
