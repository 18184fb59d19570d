"""Generation settings: how one encode or decode is solved — the one type and the one set of
defaults that export, the server, the client, batch jobs and the demo share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from grouplat.schedule import Schedule
from grouplat.solvers import SOLVERS, SPACINGS

# The served defaults of a model without an S1 head (with one: HEADED_* below). Chosen by measurement
# (docs/solvers.md) on models/shapes32 before S1's phase ran on its head: GEI-2pc (GEI-2ab
# with UniPC's corrector, no extra evaluation), each direction with its own steps and split, and
# each split's knots calibrated to the model (`grouplat calibrate`, grouplat.knots). A decode is
# what a caller does often (samples, previews, variations, every edit): 24 steps [10, 5, 5, 4] decode
# one-way at 41.2 dB with calibrated knots (38.7 evenly spaced; with the 256-wide S1 head 42.7 and 40.3,
# before the S1 head 41.7 and 38.7; 36 steps [12, 13, 6, 5]: 47.4). S1 gets the most steps: its data end is
# the stiffest part of the flow, and the first preview (the end of S1's phase) comes at 10 of 24 steps. An
# encode turns a caller's own image into a latent once per image and ends at that stiff data end: 36 steps
# [16, 8, 6, 6], with which held-out images round-trip at 39.4 dB (256-wide head 40.5, before the S1 head
# 39.8; 24 steps: 38.0 at best; 36 steps both ways with even knots, the default before: 40.9 dB round trip,
# 44.2 one-way).
# `grouplat export` writes these into every model's config as the default settings for four groups
# (schedules with intervals in proportion to the splits).
DEFAULT_SOLVER = "gei2pc"
DEFAULT_GROUP_STEPS = (10, 5, 5, 4)  # decode (generation), S1..S4
DEFAULT_ENCODE_GROUP_STEPS = (16, 8, 6, 6)
DEFAULT_STEPS = sum(DEFAULT_GROUP_STEPS)  # 24: the decode's
DEFAULT_ENCODE_STEPS = sum(DEFAULT_ENCODE_GROUP_STEPS)  # 36
# A model with an S1 head solves S1's phase on the head alone (s1phase.S1PhaseVelocity; one call of the
# shipped head costs 10% of the image network's in ONNX Runtime at batch 1, 2–4% at batch 8–64), so S1 gets
# many steps and the image network's evaluations all go to S2..S4: a decode of 24 network evaluations
# [8, 8, 8] plus 64 head steps, an encode of 24 plus 256. S1's statistics follow the head's steps: with 32
# decode steps the model's own samples came back at S1 std 1.16 / max |corr| 0.53, with 64 at 0.98 / 0.30
# (1024-wide head; docs/recipe.md, "A 1024-wide head"). With today's film head 128 encode steps give held-out
# S1 std 0.89-0.90 on four draws, 256 give 0.90-0.92 (max |corr| <= 0.18) for +40% of a batch-1 encode, +9%
# at batch 8 ("Where S1's scale is made"); one-way 47.0 dB, even knots.
HEADED_GROUP_STEPS = (64, 8, 8, 8)
HEADED_ENCODE_GROUP_STEPS = (256, 8, 8, 8)
DEFAULT_SPACING = "tau"
MAX_STEPS = 4096  # per request; the server may bound the cost further
MAX_SCHEDULE_TEXT = 2000  # characters of a schedule given as text


@dataclass(frozen=True)
class GenerationSettings:
    """ODE settings of an encode and of the decode that goes with it.

    The two directions share solver and spacing; their steps and schedules (how the steps are
    split over the groups) may differ: a model serves a 36-step encode and a 24-step decode by
    default (see DEFAULT_GROUP_STEPS). A latent is the same whatever the steps and split (they
    only discretize the one flow), so any decode may follow any encode.

    Attributes:
        solver: `euler`, `heun`, `gei1`, `gei2m`, `gei2ab`, `gei3ab` or `gei2pc`
            (grouplat.solvers.SOLVERS).
        steps: total ODE steps of a decode (and of an encode, unless `encode_steps`), split across
            the groups by the schedule.
        schedule: the generation (decode) schedule in the paper's cut notation ("0.1,0.2,0.3") or
            as JSON intervals; None means the model's defaults for both directions.
        spacing: knot spacing inside a group's phase, `tau` or `uniform`.
        encode_schedule: the encode's schedule where it differs from `schedule`; None: `schedule`
            serves both directions.
        encode_steps: the encode's total steps where they differ from `steps`; None: `steps`
            serves both directions.

    Example:
        >>> s = GenerationSettings(steps=30).check(k=4)
        >>> s.schedule, s.encode_schedule
        ('0.166667,0.375,0.583333', '0.166667,0.333333,0.555556')
        >>> GenerationSettings(steps=24, encode_steps=36).encoding().steps
        36
    """

    solver: str = DEFAULT_SOLVER
    steps: int = DEFAULT_STEPS
    schedule: str | None = None
    spacing: str = DEFAULT_SPACING
    encode_schedule: str | None = None
    encode_steps: int | None = None

    def check(self, k: int) -> GenerationSettings:
        """These settings validated for a model with k groups, the schedules filled in and normalized.

        Args:
            k: the model's number of groups; a None `schedule` becomes the default pair
                (`default_generate_schedule`, `default_encode_schedule`).

        Returns:
            Equal settings with the schedules in canonical text (so equal settings compare equal);
            `encode_schedule` is None where it equals `schedule`.

        Raises:
            ValueError: an unknown solver or spacing, steps or encode steps that are not an
                integer in k..MAX_STEPS, or a schedule that is malformed or has the wrong number
                of groups.
        """
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {_short(self.solver)}: expected one of {', '.join(SOLVERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {_short(self.spacing)}: expected one of {', '.join(SPACINGS)}")
        for name, steps in (("steps", self.steps), ("encode steps", self.encode_steps)):
            if steps is None and name == "encode steps":
                continue
            if isinstance(steps, bool) or not isinstance(steps, int) or not k <= steps <= MAX_STEPS:
                raise ValueError(f"{name} must be an integer in {k}..{MAX_STEPS}, got {_short(steps)}")
        encode: str | Schedule | None = self.encode_schedule
        if self.schedule is not None:
            schedule = parse_schedule(self.schedule, k, "schedule")
        else:  # the default pair (an encode schedule given alone is kept)
            schedule, encode = default_generate_schedule(k), encode or default_encode_schedule(k)
        encoding = None if encode is None else parse_schedule(encode, k, "encode schedule").text
        same = encoding == schedule.text
        return replace(
            self,
            schedule=schedule.text,
            encode_schedule=None if same else encoding,
            encode_steps=None if self.encode_steps == self.steps else self.encode_steps,
        )

    def generation_schedule(self, k: int) -> Schedule:
        """The generation (decode) schedule as a `Schedule` (the default one when `schedule` is None).

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

    def encoding(self) -> GenerationSettings:
        """The settings of the encode direction: `encode_schedule` and `encode_steps` (where set)
        as the schedule and steps.

        Example:
            >>> GenerationSettings(schedule="0.5", encode_schedule="0.25").encoding().schedule
            '0.25'
        """
        if self.encode_schedule is None and self.encode_steps is None:
            return self
        schedule = self.schedule if self.encode_schedule is None else self.encode_schedule
        steps = self.steps if self.encode_steps is None else self.encode_steps
        return replace(self, steps=steps, schedule=schedule, encode_schedule=None, encode_steps=None)

    def decoding(self) -> GenerationSettings:
        """The settings of the decode direction alone (no encode schedule or steps).

        Example:
            >>> GenerationSettings(steps=24, encode_steps=36).decoding().encode_steps is None
            True
        """
        return replace(self, encode_schedule=None, encode_steps=None)

    def parameters(self) -> dict[str, str | int]:
        """The per-request Triton parameters (`solver`, `steps`, and `schedule`, `encode_schedule`
        and `encode_steps` when set).

        Returns:
            `{"solver": ..., "steps": ...}`, with `"schedule"`, `"encode_schedule"` and
            `"encode_steps"` too when they are not None; the values as stored (`check` first for
            canonical ones).

        Example:
            >>> GenerationSettings(steps=30, schedule="0.5").check(k=2).parameters()
            {'solver': 'gei2pc', 'steps': 30, 'schedule': '0.5'}
        """
        values: dict[str, str | int] = {"solver": self.solver, "steps": self.steps}
        if self.schedule is not None:
            values["schedule"] = self.schedule
        if self.encode_schedule is not None:
            values["encode_schedule"] = self.encode_schedule
        if self.encode_steps is not None:
            values["encode_steps"] = self.encode_steps
        return values

    def with_parameters(self, parameters: Mapping[str, Any], k: int) -> GenerationSettings:
        """These settings (a model's defaults) overridden by a request's parameters, checked.

        Args:
            parameters: `steps` (an integer, or a string of ASCII digits; both directions, unless
                `encode_steps` is given too), `encode_steps`, `solver`, `schedule` (both
                directions, unless `encode_schedule` is given too), `encode_schedule`.
            k: the model's number of groups.

        Returns:
            New settings, checked for k (`check`); a parameter left out keeps this value, and
            `spacing` (not a request parameter) is always kept.

        Raises:
            ValueError: an unknown parameter or a bad value (see `check`).

        Example:
            >>> s = GenerationSettings(encode_steps=36).with_parameters({"steps": "30", "schedule": "0.5"}, 2)
            >>> s.steps, s.encode_steps, s.schedule, s.encode_schedule
            (30, None, '0.5', None)
        """
        unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
        if unknown:
            names = ", ".join(_short(u, 40) for u in unknown[:5])
            raise ValueError(f"unknown request parameter(s) {names}: use {', '.join(REQUEST_PARAMETERS)}")
        if "steps" in parameters:  # a request's steps serve both directions unless it says
            steps, encode_steps = parameters["steps"], parameters.get("encode_steps")
        else:
            steps, encode_steps = self.steps, parameters.get("encode_steps", self.encode_steps)
        steps, encode_steps = (
            _integer(value, name, k) for value, name in ((steps, "steps"), (encode_steps, "encode steps"))
        )
        if "schedule" in parameters:  # a request's schedule serves both directions unless it says
            schedule, encode_schedule = parameters["schedule"], parameters.get("encode_schedule")
        else:
            schedule, encode_schedule = self.schedule, parameters.get("encode_schedule", self.encode_schedule)
        for name, value in (("schedule", schedule), ("encode_schedule", encode_schedule)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {_short(value)}")
        solver = parameters.get("solver", self.solver)
        return GenerationSettings(solver, steps, schedule, self.spacing, encode_schedule, encode_steps).check(
            k
        )


REQUEST_PARAMETERS = ("steps", "solver", "schedule", "encode_schedule", "encode_steps")


def _integer(value: Any, name: str, k: int) -> Any:
    """A request's steps as sent: an integer, or a string of ASCII digits made one (else refused);
    anything else is left for `check` to refuse by name."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 6):
        raise ValueError(f"{name} must be an integer in {k}..{MAX_STEPS}, got {_short(value)}")
    return int(text)


def default_steps(k: int, headed: bool = False) -> tuple[int, int]:
    """The served default total steps (decode, encode) of a model with k groups, and an S1 head
    when `headed` (HEADED_GROUP_STEPS, for four groups).

    Example:
        >>> default_steps(4), default_steps(4, headed=True), default_steps(3, headed=True)
        ((24, 36), (88, 280), (24, 36))
    """
    if headed and k == len(HEADED_GROUP_STEPS):
        return sum(HEADED_GROUP_STEPS), sum(HEADED_ENCODE_GROUP_STEPS)
    return DEFAULT_STEPS, DEFAULT_ENCODE_STEPS


def default_generate_schedule(k: int, train: Schedule | None = None, headed: bool = False) -> Schedule:
    """The default generation (decode) schedule: for four groups the measured split
    (DEFAULT_GROUP_STEPS, HEADED_GROUP_STEPS with an S1 head; in place of the paper's
    0.1,0.2,0.3), else the training schedule when given, else even cuts.

    Args:
        k: the model's number of groups.
        train: the model's training schedule, returned as is when k ≠ 4; None: even cuts.
        headed: the model has an S1 head (S1's steps are almost free: `default_steps`).

    Returns:
        The schedule.

    Example:
        >>> [default_generate_schedule(k).cuts for k in (4, 3, 1)]
        ['0.166667,0.375,0.583333', '0.333333,0.666667', '-']
    """
    return _default(k, train, HEADED_GROUP_STEPS if headed else DEFAULT_GROUP_STEPS)


def default_encode_schedule(k: int, train: Schedule | None = None, headed: bool = False) -> Schedule:
    """The default encode schedule: for four groups the measured split DEFAULT_ENCODE_GROUP_STEPS
    (HEADED_ENCODE_GROUP_STEPS with an S1 head), otherwise the same as `default_generate_schedule`.

    Example:
        >>> default_encode_schedule(4).cuts
        '0.166667,0.333333,0.555556'
    """
    return _default(k, train, HEADED_ENCODE_GROUP_STEPS if headed else DEFAULT_ENCODE_GROUP_STEPS)


def _default(k: int, train: Schedule | None, split: tuple[int, ...]) -> Schedule:
    if k == len(split):
        return Schedule.from_steps(split)
    if train is not None:
        return train
    return Schedule.from_cuts([j / k for j in range(1, k)])


def parse_schedule(spec: str | Schedule, k: int, name: str = "schedule") -> Schedule:
    """A schedule checked for k groups (at most MAX_SCHEDULE_TEXT characters of text).

    Raises:
        ValueError: `bad <name>: <why>` for a malformed schedule or one without k groups.

    Example:
        >>> parse_schedule("0.5,0.3", 3, "encode schedule")
        Traceback (most recent call last):
        ...
        ValueError: bad encode schedule: schedule cuts must increase strictly inside (0, 1), got '0.5,0.3'
    """
    if isinstance(spec, str) and len(spec) > MAX_SCHEDULE_TEXT:
        raise ValueError(f"bad {name}: longer than {MAX_SCHEDULE_TEXT} characters")
    try:
        return Schedule.parse(spec, k)
    except (ValueError, TypeError, RecursionError) as error:
        reason = str(error)  # the parser's own words, which quote at most a short prefix of the spec
        raise ValueError(f"bad {name}: {reason if len(reason) <= 200 else reason[:199] + '…'}") from None


def _short(value: object, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: error messages never echo a whole bad value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
