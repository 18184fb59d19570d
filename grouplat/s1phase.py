"""S1's phase on a headed model's S1 head alone (docs/design.md §1.4).

While S1 is active every other group is hidden, and a hidden group's output is never read; S1's
output is the head's. So in S1's phase nothing a solve reads comes from the image network, and the
head alone (`training.networks.S1HeadAlone`) gives the same numbers at a few percent of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grouplat import arrays
from grouplat.schedule import HIDDEN, Schedule
from grouplat.solvers import Velocity, allocate_steps


class S1PhaseVelocity:
    """A headed model's velocity in two engines: rows whose every group but S1 is hidden (S1's
    phase) go to the S1 head alone (`grouplat.training.networks.S1HeadAlone`, 1–5% of the
    image network's cost), the rest to the whole network. A hidden group's velocity is never
    used, so a solve reads exactly what the whole network would give, and S1's steps cost almost
    nothing. The head takes numpy arrays (it runs on the host); a device state's rows travel there
    and back. Any other attribute (`to_device`, `provider`) is the whole network's.
    """

    def __init__(self, velocity: Any, s1_head: Velocity) -> None:
        self.velocity, self.s1_head = velocity, s1_head

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["velocity"], name)

    def __call__(self, x_t: Any, levels: Any) -> Any:
        s1_phase = (arrays.to_numpy(levels)[:, 1:] == HIDDEN).all(axis=1)
        if not s1_phase.any():
            return self.velocity(x_t, levels)
        if s1_phase.all():
            return self._head(x_t, levels)
        xp = arrays.namespace(x_t)
        head_rows, other_rows = np.flatnonzero(s1_phase), np.flatnonzero(~s1_phase)
        take = [arrays.beside(rows, x_t) for rows in (head_rows, other_rows)]
        parts = [
            self._head(xp.take(x_t, take[0], axis=0), xp.take(levels, take[0], axis=0)),
            self.velocity(xp.take(x_t, take[1], axis=0), xp.take(levels, take[1], axis=0)),
        ]
        order = arrays.beside(np.argsort(np.concatenate([head_rows, other_rows])), x_t)
        return xp.take(xp.concat(parts), order, axis=0)

    def _head(self, x_t: Any, levels: Any) -> Any:
        if arrays.is_host(x_t):
            return self.s1_head(np.asarray(x_t, np.float32), np.asarray(levels, np.float32))
        return arrays.beside(self.s1_head(arrays.to_numpy(x_t), arrays.to_numpy(levels)), x_t)


def network_steps(schedule: Schedule, steps: int | Sequence[int]) -> int:
    """The steps of a headed model's solve that call the whole network: all but S1's, when every
    other group is hidden in S1's phase (else all of them).

    Args:
        schedule: the solve's schedule; its intervals split a total (`allocate_steps`).
        steps: a total, or one count per group (S1 first).

    Example:
        >>> network_steps(Schedule.from_steps([64, 8, 8, 8]), 88)
        24
        >>> network_steps(Schedule.from_cuts("0.5"), [6, 4])
        4
    """
    counts = allocate_steps(schedule, steps)
    return int(counts.sum() - (counts[0] if schedule.hidden[0, 1:].all() else 0))
