"""Per-group noise schedules (docs/design.md §1, paper Eq. 8).

Group Sj is diffused during its own interval [s_j, e_j] of forward time (0 = data, 1 = noise);
the intervals tile [0, 1]. Its level is `α_j(t) = clip((e_j − t)/(e_j − s_j), 0, 1)`.
Training and generation schedules are separate `Schedule` objects over the same groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

HIDDEN = -1.0  # level of a group that decode makes after the active one (docs/design.md: hidden groups)


class Schedule:
    """k non-overlapping intervals that tile [0, 1]; `intervals[j]` belongs to group S(j+1).

    Args:
        intervals: one (start, end) pair of forward times per group, S1 first, in any time order.

    Attributes:
        intervals: float64 [k, 2], as given.
        k: the number of groups.
        start, end: float64 [k], the columns of `intervals`.
        hidden: bool [k, k]; `hidden[j, i]` says that group i is hidden while group j is active
            (i's whole interval comes earlier in forward time, so decode makes it later).

    Raises:
        ValueError: not one pair per group, an interval outside [0, 1] or with start ≥ end, or
            intervals that overlap, leave a gap or do not reach from 0 to 1.

    Example:
        >>> schedule = Schedule([[0.9, 1], [0.8, 0.9], [0.6, 0.8], [0, 0.6]])
        >>> schedule == Schedule.from_cuts("0.6,0.8,0.9"), schedule.levels(0.7).round(6).tolist()
        (True, [1.0, 1.0, 0.5, 0.0])
    """

    def __init__(self, intervals: Sequence[Sequence[float]]) -> None:
        spans = np.asarray(intervals, dtype=np.float64)
        if spans.ndim != 2 or spans.shape[1] != 2 or len(spans) == 0:
            raise ValueError(f"a schedule needs one (start, end) pair per group, got {intervals!r}")
        if ((spans < 0) | (spans > 1)).any():
            raise ValueError(f"schedule intervals must lie in [0, 1], got {spans.tolist()}")
        if (spans[:, 1] <= spans[:, 0]).any():
            raise ValueError(f"every interval needs start < end, got {spans.tolist()}")
        ordered = spans[np.argsort(spans[:, 0])]
        if ordered[0, 0] != 0 or ordered[-1, 1] != 1:
            raise ValueError(f"the intervals must cover [0, 1] from 0 to 1, got {spans.tolist()}")
        joins = ordered[1:, 0] - ordered[:-1, 1]
        if (joins < 0).any():
            raise ValueError(f"schedule intervals overlap: {spans.tolist()}")
        if (joins > 0).any():
            raise ValueError(f"schedule intervals leave a gap: {spans.tolist()}")
        self.intervals = spans
        self.k = len(spans)
        self.start, self.end = spans[:, 0], spans[:, 1]
        # hidden[j, i]: while group j is active, group i is one that decode makes later
        # (its whole interval comes earlier in forward time), so it is pure noise.
        self.hidden = self.end[None, :] <= self.start[:, None]

    @classmethod
    def from_cuts(cls, cuts: str | Sequence[float], k: int | None = None) -> Schedule:
        """The paper's Table-1 notation: `"0.6,0.8,0.9"` → S4 [0,.6], S3 [.6,.8], S2 [.8,.9], S1 [.9,1].

        k − 1 ascending cut points; the finest group goes first in forward time. `"-"`, `""` or
        `[]` is the one-group scalar schedule [0, 1].

        Args:
            cuts: comma-separated text or a sequence of numbers, strictly increasing inside (0, 1).
            k: when given, the number of groups the cuts must make.

        Returns:
            The schedule, S1 last in forward time.

        Raises:
            ValueError: text that is not comma-separated numbers, cuts that do not increase
                strictly inside (0, 1), or not k − 1 of them.

        Example:
            >>> Schedule.from_cuts("0.6,0.8,0.9").intervals.tolist()
            [[0.9, 1.0], [0.8, 0.9], [0.6, 0.8], [0.0, 0.6]]
        """
        if isinstance(cuts, str):
            text = cuts.strip()
            try:
                points = [] if text in ("", "-") else [float(c) for c in text.split(",")]
            except ValueError:
                raise ValueError(f"schedule cuts must be comma-separated numbers, got {cuts!r}") from None
        else:
            points = [float(c) for c in cuts]
        if k is not None and len(points) != k - 1:
            raise ValueError(
                f"a schedule for {k} groups needs {k - 1} cut points, got {len(points)} ({cuts!r})"
            )
        knots = [0.0, *points, 1.0]
        if any(not 0 < c < 1 for c in points) or any(a >= b for a, b in zip(knots, knots[1:])):
            raise ValueError(f"schedule cuts must increase strictly inside (0, 1), got {cuts!r}")
        n = len(knots) - 1
        return cls([(knots[n - 1 - j], knots[n - j]) for j in range(n)])

    @classmethod
    def from_steps(cls, steps: Sequence[int]) -> Schedule:
        """The schedule whose intervals are in proportion to per-group step counts (S1 first), so
        that a total of `sum(steps)` is split into exactly `steps` (how a measured split is served).

        Args:
            steps: positive counts, S1 first.

        Returns:
            The schedule (cuts rounded to 6 digits).

        Example:
            >>> Schedule.from_steps([8, 4, 3, 3]).cuts
            '0.166667,0.333333,0.555556'
        """
        lengths = np.asarray(steps, np.float64) / sum(steps)
        cuts = np.cumsum(lengths[::-1])[:-1]  # forward time: the finest group first
        return cls.from_cuts([round(float(c), 6) for c in cuts])

    @classmethod
    def parse(cls, spec: str | Schedule | Sequence[float], k: int) -> Schedule:
        """Cut notation, a JSON list of intervals, or a schedule; checked to have k groups.

        Args:
            spec: cut text or numbers (`from_cuts`), text starting with `[[` (JSON intervals, as
                `text` writes them), or a `Schedule` (returned as is).
            k: the number of groups the model has.

        Returns:
            The schedule.

        Raises:
            ValueError: malformed cuts, JSON or intervals, or a schedule with another k.

        Example:
            >>> Schedule.parse("[[0, 0.5], [0.5, 1]]", 2).cuts is None  # S1 first in forward time
            True
        """
        if isinstance(spec, str) and spec.strip().startswith("[["):
            try:
                spec = cls(json.loads(spec))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"schedule intervals must be a JSON list of [start, end] pairs: {error}"
                ) from None
        schedule = spec if isinstance(spec, Schedule) else cls.from_cuts(spec, k)
        if schedule.k != k:
            raise ValueError(f"schedule has {schedule.k} groups, the model has {k}")
        return schedule

    @property
    def cuts(self) -> str | None:
        """The cut notation, when the groups run finest-first (the paper's order); else None.

        A one-group schedule is `"-"`; cut points are written with up to 6 significant digits.
        """
        if not np.all(np.diff(self.start) < 0):
            return None
        return ",".join(f"{c:g}" for c in self.start[-2::-1]) or "-"

    def levels(self, t: float | np.ndarray) -> np.ndarray:
        """Eq. 8: α_j(t) for every group (1 before s_j, 0 after e_j).

        Args:
            t: forward time(s) in [0, 1], any shape [...].

        Returns:
            float64 [..., k].
        """
        t = np.asarray(t, dtype=np.float64)[..., None]
        return np.clip((self.end - t) / (self.end - self.start), 0.0, 1.0)

    def rates(self, t: float | np.ndarray) -> np.ndarray:
        """α'_j(t): −1/(e_j − s_j) while group j is active (s_j ≤ t < e_j), else 0.

        Args:
            t: forward time(s), any shape [...].

        Returns:
            float64 [..., k].
        """
        t = np.asarray(t, dtype=np.float64)[..., None]
        inside = (self.start <= t) & (t < self.end)
        return np.where(inside, -1.0 / (self.end - self.start), 0.0)

    def active(self, t: float | np.ndarray) -> np.ndarray:
        """0-based index of the group whose interval contains t (t = 1 belongs to the last one).

        At a knot t = e_i = s_j the group starting there (j) is active.

        Args:
            t: forward time(s) in [0, 1], any shape [...].

        Returns:
            int, shape [...].
        """
        t = np.asarray(t, dtype=np.float64)[..., None]
        inside = (self.start <= t) & ((t < self.end) | (self.end == 1.0))
        return np.argmax(inside, axis=-1)

    def conditioning(
        self, t: float | np.ndarray, phase: int | np.ndarray | None = None, hide: bool = True
    ) -> np.ndarray:
        """The network's level vector, float32 [..., k].

        With `hide`, groups that decode makes after the active one read HIDDEN (−1): that also
        names the active group at a phase boundary. `phase` (0-based) says whose phase it is;
        by default the group active at t.

        Args:
            t: forward time(s), any shape [...].
            phase: the 0-based active group, broadcastable to t's shape; None: `active(t)`.
            hide: mark hidden groups (docs/design.md: hidden groups); False gives plain `levels(t)`.

        Returns:
            float32 [..., k], values in [0, 1] or exactly HIDDEN.

        Example:
            >>> schedule = Schedule.from_cuts("0.6,0.8,0.9")
            >>> schedule.conditioning(0.8, phase=1).tolist()  # S2's phase ends at t = 0.8
            [1.0, 1.0, -1.0, -1.0]
            >>> schedule.conditioning(0.8, phase=2).tolist()  # S3's phase starts there
            [1.0, 1.0, 0.0, -1.0]
        """
        levels = self.levels(t)
        if hide:
            phase = self.active(t) if phase is None else np.asarray(phase)
            levels = np.where(self.hidden[phase], HIDDEN, levels)
        return levels.astype(np.float32)

    @property
    def text(self) -> str:
        """One-line form that `parse` reads back: cut notation, else JSON intervals.

        Example:
            >>> Schedule([[0, 0.5], [0.5, 1]]).text, Schedule.from_cuts("0.5").text
            ('[[0.0, 0.5], [0.5, 1.0]]', '0.5')
        """
        return self.cuts or json.dumps(self.intervals.tolist())

    def describe(self) -> str | list[list[float]]:
        """JSON-ready form that `from_description` reads back: `cuts` when not None, else the
        intervals as nested lists."""
        return self.cuts or self.intervals.tolist()

    @classmethod
    def from_description(cls, description: str | Sequence[Sequence[float]]) -> Schedule:
        """The schedule that `describe` described: cut text or a list of intervals.

        Raises:
            ValueError: as `from_cuts` or the constructor.
        """
        return cls.from_cuts(description) if isinstance(description, str) else cls(description)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and np.array_equal(self.intervals, other.intervals)

    def __repr__(self) -> str:
        return f"Schedule({self.describe()!r})"


PAPER_TRAIN = "0.6,0.8,0.9"  # Table 1's best pair: train with this …
PAPER_GENERATE = "0.1,0.2,0.3"  # … generate with this
