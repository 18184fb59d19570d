"""Generation settings: how one encode or decode is solved — the one type and the one set of
defaults that export, the server, the client, batch jobs and the demo share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from grouplat.schedule import Schedule
from grouplat.solvers import SOLVERS, SPACINGS

# The served defaults. Chosen by measurement (docs/solvers.md) on models/shapes32, at the previous
# default's cost (36 network evaluations): GEI-2pc (GEI-2ab with UniPC's corrector, no extra
# evaluation), with its 36 steps split differently in the two directions. Decoding runs S1 first
# and shows the image at the end of S1's phase, so the decode split gives S1 a third of the steps
# ([12, 13, 6, 5]: the first preview at a third of the decode, and S3 + S4 a third too, so an edit
# that keeps S1..S2 redoes only 11 of 36 steps). Encoding ends at S1's data end, the stiffest part
# of the flow, and needs S1's steps most: [16, 8, 6, 6]. Held-out images round-trip at 41.9 dB and
# the decode split decodes one-way at 44.6 dB (GEI-3ab, the default before, with the same splits:
# 40.3 and 43.5; GEI-2m [8, 4, 3, 3]: 42.1 one-way; Heun's [11, 3, 3, 3]: 33 at 40 evaluations).
# `grouplat export` writes both splits into every model's config as the default generation and
# encode schedules for four groups (intervals in proportion to the splits).
DEFAULT_SOLVER = "gei2pc"
DEFAULT_GROUP_STEPS = (12, 13, 6, 5)  # decode (generation), S1..S4
DEFAULT_ENCODE_GROUP_STEPS = (16, 8, 6, 6)
DEFAULT_STEPS = sum(DEFAULT_GROUP_STEPS)  # 36, both directions
DEFAULT_SPACING = "tau"
MAX_STEPS = 4096  # per request; the server may bound the cost further
MAX_SCHEDULE_TEXT = 2000  # characters of a schedule given as text


@dataclass(frozen=True)
class GenerationSettings:
    """ODE settings of an encode and of the decode that goes with it.

    The two directions share solver, steps and spacing; their schedules (how the steps are split
    over the groups) may differ: a model serves an S1-heavy encode and an S1-light decode by
    default (see DEFAULT_GROUP_STEPS). A latent is the same whatever the split (the schedule only
    reparametrizes time inside the flow), so any decode may follow any encode.

    Attributes:
        solver: `euler`, `heun`, `gei1`, `gei2m`, `gei2ab`, `gei3ab` or `gei2pc`
            (grouplat.solvers.SOLVERS).
        steps: total ODE steps, split across the groups by the schedule.
        schedule: the generation (decode) schedule in the paper's cut notation ("0.1,0.2,0.3") or
            as JSON intervals; None means the model's defaults for both directions.
        spacing: knot spacing inside a group's phase, `tau` or `uniform`.
        encode_schedule: the encode's schedule where it differs from `schedule`; None: `schedule`
            serves both directions.

    Example:
        >>> s = GenerationSettings(steps=30).check(k=4)
        >>> s.schedule, s.encode_schedule
        ('0.138889,0.305556,0.666667', '0.166667,0.333333,0.555556')
    """

    solver: str = DEFAULT_SOLVER
    steps: int = DEFAULT_STEPS
    schedule: str | None = None
    spacing: str = DEFAULT_SPACING
    encode_schedule: str | None = None

    def check(self, k: int) -> GenerationSettings:
        """These settings validated for a model with k groups, the schedules filled in and normalized.

        Args:
            k: the model's number of groups; a None `schedule` becomes the default pair
                (`default_generate_schedule`, `default_encode_schedule`).

        Returns:
            Equal settings with the schedules in canonical text (so equal settings compare equal);
            `encode_schedule` is None where it equals `schedule`.

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
        encode: str | Schedule | None = self.encode_schedule
        if self.schedule is not None:
            schedule = parse_schedule(self.schedule, k, "schedule")
        else:  # the default pair (an encode schedule given alone is kept)
            schedule, encode = default_generate_schedule(k), encode or default_encode_schedule(k)
        encoding = None if encode is None else parse_schedule(encode, k, "encode schedule").text
        same = encoding == schedule.text
        return replace(
            self, steps=int(steps), schedule=schedule.text, encode_schedule=None if same else encoding
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
        """The settings of the encode direction: `encode_schedule` (where set) as the schedule.

        Example:
            >>> GenerationSettings(schedule="0.5", encode_schedule="0.25").encoding().schedule
            '0.25'
        """
        if self.encode_schedule is None:
            return self
        return replace(self, schedule=self.encode_schedule, encode_schedule=None)

    def parameters(self) -> dict[str, str | int]:
        """The per-request Triton parameters (`solver`, `steps`, `schedule` and `encode_schedule`
        when set).

        Returns:
            `{"solver": ..., "steps": ...}`, with `"schedule"` and `"encode_schedule"` too when
            they are not None; the values as stored (`check` first for canonical ones).

        Example:
            >>> GenerationSettings(steps=30, schedule="0.5").check(k=2).parameters()
            {'solver': 'gei2pc', 'steps': 30, 'schedule': '0.5'}
        """
        values: dict[str, str | int] = {"solver": self.solver, "steps": self.steps}
        if self.schedule is not None:
            values["schedule"] = self.schedule
        if self.encode_schedule is not None:
            values["encode_schedule"] = self.encode_schedule
        return values

    def with_parameters(self, parameters: Mapping[str, Any], k: int) -> GenerationSettings:
        """These settings (a model's defaults) overridden by a request's parameters, checked.

        Args:
            parameters: `steps` (an integer, or a string of ASCII digits), `solver`, `schedule`
                (both directions, unless `encode_schedule` is given too), `encode_schedule`.
            k: the model's number of groups.

        Returns:
            New settings, checked for k (`check`); a parameter left out keeps this value, and
            `spacing` (not a request parameter) is always kept.

        Raises:
            ValueError: an unknown parameter or a bad value (see `check`).

        Example:
            >>> GenerationSettings().with_parameters({"steps": "30", "solver": "heun", "schedule": "0.5"}, 2)
            GenerationSettings(solver='heun', steps=30, schedule='0.5', spacing='tau', encode_schedule=None)
        """
        unknown = sorted(set(parameters) - set(REQUEST_PARAMETERS))
        if unknown:
            names = ", ".join(_short(u, 40) for u in unknown[:5])
            raise ValueError(f"unknown request parameter(s) {names}: use {', '.join(REQUEST_PARAMETERS)}")
        steps = parameters.get("steps", self.steps)
        if isinstance(steps, str):
            text = steps.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 6):
                raise ValueError(f"steps must be an integer in {k}..{MAX_STEPS}, got {_short(steps)}")
            steps = int(text)
        if "schedule" in parameters:  # a request's schedule serves both directions unless it says
            schedule, encode_schedule = parameters["schedule"], parameters.get("encode_schedule")
        else:
            schedule, encode_schedule = self.schedule, parameters.get("encode_schedule", self.encode_schedule)
        for name, value in (("schedule", schedule), ("encode_schedule", encode_schedule)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {_short(value)}")
        solver = parameters.get("solver", self.solver)
        return GenerationSettings(solver, steps, schedule, self.spacing, encode_schedule).check(k)


REQUEST_PARAMETERS = ("steps", "solver", "schedule", "encode_schedule")


def default_generate_schedule(k: int, train: Schedule | None = None) -> Schedule:
    """The default generation (decode) schedule: for four groups the measured split
    (DEFAULT_GROUP_STEPS, in place of the paper's 0.1,0.2,0.3), else the training schedule when
    given, else even cuts.

    Args:
        k: the model's number of groups.
        train: the model's training schedule, returned as is when k ≠ 4; None: even cuts.

    Returns:
        The schedule.

    Example:
        >>> [default_generate_schedule(k).cuts for k in (4, 3, 1)]
        ['0.138889,0.305556,0.666667', '0.333333,0.666667', '-']
    """
    return _default(k, train, DEFAULT_GROUP_STEPS)


def default_encode_schedule(k: int, train: Schedule | None = None) -> Schedule:
    """The default encode schedule: for four groups the measured split DEFAULT_ENCODE_GROUP_STEPS,
    otherwise the same as `default_generate_schedule`.

    Example:
        >>> default_encode_schedule(4).cuts
        '0.166667,0.333333,0.555556'
    """
    return _default(k, train, DEFAULT_ENCODE_GROUP_STEPS)


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
