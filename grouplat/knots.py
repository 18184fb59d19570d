"""Calibrated knots: where one model's served settings place the steps inside each group's phase.

The `tau` spacing puts a phase's knots evenly in the Gaussian flow's own time; a trained network
bends more than the Gaussian near S1's data end, so knots fitted to the model decode more
accurately at the same steps (docs/solvers.md, "Calibrated knots"). `grouplat calibrate CKPT`
fits them for the served settings and writes KNOTS_FILE into the checkpoint; export carries them
into every engine version's model info, and every encode and decode whose direction, solver,
spacing and steps per group match an entry uses them. Anything else keeps the even spacing.

The table maps `key(direction, solver, spacing, per_group)` to each phase's inner knots (S1
first; `grouplat.solvers.phase_levels`'s u in (0, 1)). Knots do not change what a latent means
(only how accurately the ODE is solved), so they are not part of the model's fingerprint; the
file names the fingerprint it was fitted to, and is refused for another model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grouplat.schedule import Schedule
from grouplat.solvers import DEFAULT_STD_RANGE, SOLVERS, SPACINGS, allocate_steps, phase_levels

KNOTS_FILE = "knots.json"  # in a checkpoint directory: {"fingerprint", "knots": table, "fitted": how}
DIRECTIONS = ("encode", "decode")
Table = dict[str, list[list[float]]]


def key(direction: str, solver: str, spacing: str, per_group: Sequence[int]) -> str:
    """The table key of one setting, e.g. `decode/gei2pc/tau/12-13-6-5`.

    Example:
        >>> key("decode", "gei2pc", "tau", [12, 13, 6, 5])
        'decode/gei2pc/tau/12-13-6-5'
    """
    return f"{direction}/{solver}/{spacing}/{'-'.join(str(int(n)) for n in per_group)}"


def lookup(
    table: Mapping[str, Any],
    direction: str,
    schedule: Schedule,
    steps: int | Sequence[int],
    solver: str,
    spacing: str,
) -> Any:
    """The knots of one setting (its steps split over the groups by `schedule`, as the solvers
    split them), or None (even spacing) where the table has none, also for steps that
    `allocate_steps` rejects (encode/decode then reject them by name)."""
    if not table:
        return None
    try:
        per_group = allocate_steps(schedule, steps).tolist()
    except ValueError:
        return None
    return table.get(key(direction, solver, spacing, per_group))


def check(table: Any, k: int | None = None) -> Table:
    """A knots table validated: keys as `key` writes them, per group `n − 1` increasing knots in (0, 1),
    and (given k) k groups in every entry.

    Returns:
        The table as plain lists of floats.

    Raises:
        ValueError: naming the entry and what is wrong with it.

    Example:
        >>> check({"decode/gei2pc/tau/3-1": [[0.2, 0.5], []]})
        {'decode/gei2pc/tau/3-1': [[0.2, 0.5], []]}
        >>> check({"decode/gei2pc/tau/3-1": [[0.5, 0.2], []]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: knots 'decode/gei2pc/tau/3-1': a phase of 3 steps needs 2 increasing knots ...
    """
    if not isinstance(table, dict):
        raise ValueError(f"a knots table is a JSON object, got {type(table).__name__}")
    result: Table = {}
    for name, knots in table.items():
        parts = str(name).split("/")
        try:
            direction, solver, spacing, counts = parts
            per_group = [int(n) for n in counts.split("-")]
        except ValueError:
            raise ValueError(
                f"knots key {str(name)[:60]!r} is not direction/solver/spacing/steps-per-group"
            ) from None
        if (
            direction not in DIRECTIONS
            or solver not in SOLVERS
            or spacing not in SPACINGS
            or min(per_group) < 1
        ):
            raise ValueError(f"knots key {name!r}: unknown direction, solver or spacing, or a count below 1")
        if k is not None and len(per_group) != k:
            raise ValueError(f"knots {name!r}: {len(per_group)} groups, the model has {k}")
        if not isinstance(knots, list) or len(knots) != len(per_group):
            raise ValueError(f"knots {name!r}: one list per group ({len(per_group)}) expected")
        try:
            for n, inner in zip(per_group, knots):
                phase_levels(n, spacing, DEFAULT_STD_RANGE, inner)
        except (ValueError, TypeError) as error:
            raise ValueError(f"knots {name!r}: {error}") from None
        result[key(direction, solver, spacing, per_group)] = [[float(u) for u in inner] for inner in knots]
    return result


def read(directory: str | Path, fingerprint: str) -> Table:
    """The checkpoint's KNOTS_FILE table; empty where there is no file.

    Raises:
        ValueError: an unreadable or invalid file, or one fitted to another fingerprint (naming the file).
    """
    path = Path(directory) / KNOTS_FILE
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
        if content.get("fingerprint") != fingerprint:
            fitted = str(content.get("fingerprint"))[:16]
            raise ValueError(f"fitted to the model {fitted}…, not to this one ({fingerprint[:16]}…)")
        return check(content.get("knots"))
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{str(path)!r}: {error}") from None


def write(directory: str | Path, fingerprint: str, table: Mapping[str, Any], fitted: dict[str, Any]) -> Path:
    """Write KNOTS_FILE (the table checked; `fitted`: how they were fitted) into `directory`."""
    content = {"fingerprint": fingerprint, "knots": check(dict(table)), "fitted": fitted}
    path = Path(directory) / KNOTS_FILE
    path.write_text(json.dumps(content, indent=1) + "\n")
    return path
