"""ODE solvers for encode (data → latent) and decode (latent → data) — docs/design.md §1.

One routine, `solve`, walks a time grid; an ascending grid encodes, a descending one decodes.
The grid has knots at every schedule kink, so each step lies inside one group's phase. During
group j's phase only group j moves: `Δx̄_Sj = Δα_j · (Uᵀf)_Sj`, with f the network's output.

A velocity callable is `f(x_t: float32 [B, C, H, W], levels: float32 [B, k]) → float32 [B, C, H, W]`
(pixel space in and out; `Uᵀf` predicts `E[x̄ − z̄ | x̄_t]`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from grouplat import arrays
from grouplat.arrays import Array
from grouplat.oracle import FullCovarianceGaussianPart, GaussianPart
from grouplat.schedule import Schedule
from grouplat.space import LatentSpace

# f(x_t: float32 [B, C, H, W] pixels, levels: float32 [B, k]) → float32 [B, C, H, W] pixels
Velocity = Callable[[np.ndarray, np.ndarray], np.ndarray]
Query = tuple[np.ndarray, np.ndarray]  # one network evaluation: (pixels [B, C, H, W], levels [B, k])
# callback(i, t1, x) after step i: t1 its end (forward time), x the live state [B, C, H·W] (copy to keep)
Callback = Callable[[int, float, np.ndarray], None]

# Euler, Heun, and the Gaussian exponential integrators (`GaussianPart`): gei1, midpoint gei2m,
# the multistep (Adams–Bashforth in τ) gei2ab and gei3ab, one evaluation per step, and gei2pc,
# gei2ab with a corrector that reuses the next step's evaluation (still one per step)
SOLVERS = ("euler", "heun", "gei1", "gei2m", "gei2ab", "gei3ab", "gei2pc")
# network evaluations per ODE step: a solve costs NFE_PER_STEP[solver] × its steps
NFE_PER_STEP = {"euler": 1, "heun": 2, "gei1": 1, "gei2m": 2, "gei2ab": 1, "gei3ab": 1, "gei2pc": 1}
ADAMS_ORDER = {"gei2ab": 2, "gei3ab": 3, "gei2pc": 2}  # the multistep solvers: residuals of this many steps
CORRECTED = ("gei2pc",)  # multistep solvers whose steps are corrected with the next evaluation
# knot spacing inside a group's phase (`phase_levels`): even in α, or even in the Gaussian flow's τ
SPACINGS = ("uniform", "tau")
DEFAULT_STD_RANGE = (0.1, 10.0)  # coefficient std range assumed by `tau` spacing without stats


def chunked(velocity: Velocity, max_batch: int) -> Velocity:
    """The same velocity callable, called on at most `max_batch` images at a time (bounds memory).

    Args:
        velocity: any velocity callable.
        max_batch: the largest batch it is given at once.

    Returns:
        A velocity callable that splits larger batches and concatenates the results.
    """

    def call(x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        if len(x_t) <= max_batch:
            return velocity(x_t, levels)
        return np.concatenate(
            [
                velocity(x_t[i : i + max_batch], levels[i : i + max_batch])
                for i in range(0, len(x_t), max_batch)
            ]
        )

    return call


def allocate_steps(schedule: Schedule, steps: int | Sequence[int], min_steps: int = 3) -> np.ndarray:
    """Steps per group (S1 first). A total N is split in proportion to the generation schedule's
    interval lengths (largest remainder); a group whose share falls below `min(min_steps, N // k)`
    gets that many instead (docs/design.md: a group with 1–2 steps is degenerate), taken from the others.

    Args:
        schedule: the generation schedule; its interval lengths weigh a total.
        steps: a total N ≥ k, or one count per group (S1 first), returned as given.
        min_steps: the fewest steps a group gets from a total (at most N // k).

    Returns:
        int [k], S1 first; a total's counts add up to N.

    Raises:
        ValueError: a total below k, or per-group counts that are not k positive numbers.

    Example:
        >>> allocate_steps(Schedule.from_cuts("0.1,0.2,0.3"), 20).tolist()  # S1's phase is 0.7 long
        [11, 3, 3, 3]
    """
    if not isinstance(steps, (int, np.integer)):
        per_group = np.asarray(steps, dtype=int)
        if per_group.shape != (schedule.k,) or (per_group < 1).any():
            raise ValueError(f"per-group steps need {schedule.k} positive counts, got {list(steps)}")
        return per_group
    total = int(steps)
    if total < schedule.k:
        raise ValueError(f"{total} steps cannot cover {schedule.k} groups: need at least {schedule.k}")
    floor = min(min_steps, total // schedule.k)
    lengths = schedule.end - schedule.start
    pinned = np.zeros(schedule.k, dtype=bool)
    while True:  # pin groups to the floor until every free group's share is above it
        share = np.full(schedule.k, float(floor))
        free = ~pinned
        if free.any():
            share[free] = (total - floor * pinned.sum()) * lengths[free] / lengths[free].sum()
        newly = free & (share < floor)
        if not newly.any():
            break
        pinned |= newly
    counts = np.floor(share).astype(int)
    by_remainder = np.argsort(-(share - counts), kind="stable")
    counts[by_remainder[: total - counts.sum()]] += 1
    return counts


def phase_levels(
    steps: int, spacing: str, std_range: tuple[float, float], knots: Sequence[float] | None = None
) -> np.ndarray:
    """The active group's levels α from 1 (data) down to 0 (noise), `steps + 1` knots.

    `tau` places the knots evenly in the Gaussian flow's own time
    `τ_σ(α) = asinh(((1 + σ²)α − 1)/σ) / sqrt(1 + σ²)` (docs/design.md §1, GEI), averaged over the
    group's smallest and largest coefficient std: knots crowd where a coefficient's path bends
    (near α = 1 for σ < 1, near α = 0 for σ > 1). On the oracle with an image-like spectrum it
    beat uniform spacing by 9–14 dB of one-way decode PSNR at equal NFE.

    Args:
        steps: the phase's number of steps.
        spacing: `uniform` (even in α) or `tau`.
        std_range: the group's (min, max) coefficient std, used by `tau`.
        knots: `steps − 1` increasing inner positions u in (0, 1) of the spacing's coordinate (0 the
            data end), as `grouplat solvers --calibrate` fits them; None: evenly spaced.

    Returns:
        float64 [steps + 1], from exactly 1 down to exactly 0.

    Raises:
        ValueError: an unknown spacing (only checked when steps ≥ 2), or knots that are not
            `steps − 1` increasing numbers inside (0, 1).

    Example:
        >>> phase_levels(4, "tau", (0.1, 10.0)).round(3).tolist()
        [1.0, 0.829, 0.5, 0.171, 0.0]
    """
    u = np.linspace(0.0, 1.0, steps + 1)
    if knots is not None:
        inner = np.asarray(knots, dtype=np.float64)
        edges = np.concatenate([[0.0], inner, [1.0]])
        if inner.shape != (steps - 1,) or not (np.diff(edges) > 0).all():
            raise ValueError(
                f"a phase of {steps} steps needs {steps - 1} increasing knots inside (0, 1), "
                f"got {inner.tolist()}"
            )
        u = edges
    if spacing == "uniform" or steps < 2:
        return 1.0 - u
    if spacing != "tau":
        raise ValueError(f"unknown spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
    alphas = np.linspace(1.0, 0.0, 4001)
    warp = np.mean([_normalized_tau(alphas, max(float(s), 1e-6)) for s in std_range], axis=0)
    return np.interp(u, warp, alphas)


def _normalized_tau(alpha: np.ndarray, std: float) -> np.ndarray:
    """τ_σ(α) rescaled to run from 0 at α = 1 to 1 at α = 0."""
    root = np.sqrt(1.0 + std**2)
    tau = np.arcsinh(((1.0 + std**2) * alpha - 1.0) / std) / root
    return (tau - tau[0]) / (tau[-1] - tau[0])


def time_grid(
    schedule: Schedule,
    steps: int | Sequence[int],
    spacing: str = "tau",
    std_ranges: np.ndarray | None = None,
    min_steps: int = 3,
    knots: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Ascending forward times from 0 to 1 with a knot at every interval end.

    Each group's phase gets its `allocate_steps` share, its knots placed by `phase_levels`.

    Args:
        schedule: the generation schedule.
        steps: a total, or one count per group (S1 first), as for `allocate_steps`.
        spacing: `tau` or `uniform` (SPACINGS).
        std_ranges: [k, 2], each group's (min, max) coefficient std for `tau` spacing
            (`group_std_ranges`); None: DEFAULT_STD_RANGE for every group.
        min_steps: as for `allocate_steps`.
        knots: per group (S1 first), its phase's inner knots for `phase_levels` (`grouplat solvers
            --calibrate`);
            None: evenly spaced.

    Returns:
        float64 [total steps + 1], ascending from exactly 0 to exactly 1.

    Raises:
        ValueError: steps that `allocate_steps` rejects, an unknown spacing, or knots that do not
            fit the steps (see `phase_levels`).

    Example:
        >>> time_grid(Schedule.from_cuts("0.5"), [2, 2], "uniform").tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    per_group = allocate_steps(schedule, steps, min_steps)
    ranges = np.tile(DEFAULT_STD_RANGE, (schedule.k, 1)) if std_ranges is None else std_ranges
    pieces = []
    for j in np.argsort(schedule.start):  # phases in forward-time order
        alphas = phase_levels(
            int(per_group[j]), spacing, tuple(ranges[j]), None if knots is None else knots[j]
        )
        pieces.append(schedule.end[j] - alphas * (schedule.end[j] - schedule.start[j]))
    grid = np.concatenate([p[:-1] for p in pieces] + [[1.0]])
    return grid


def group_std_ranges(
    space: LatentSpace, std: np.ndarray, s1_covariance: np.ndarray | None = None
) -> np.ndarray:
    """[k, 2]: min and max of the per-coefficient data std ([C, H·W]) inside each group.

    Args:
        space: the latent space (its groups).
        std: the per-coefficient data std, broadcastable to [C, H·W].
        s1_covariance: S1's full covariance (as for `solve`): S1's range is then that of its
            eigen-stds, the stds along which the `gei` solvers' S1 flow bends.

    Returns:
        [k, 2], S1 first, in std's dtype (float64 for float64 stats).

    Raises:
        ValueError: a std that does not broadcast to [C, H·W].

    Example:
        >>> group_std_ranges(LatentSpace((1, 2, 2), "pixel", (1, 3)), np.array([4.0, 1.0, 3.0, 2.0])).tolist()
        [[4.0, 4.0], [1.0, 3.0], [2.0, 2.0]]
    """
    std = np.broadcast_to(std, space.latent_shape)
    ranges = np.array(
        [[std[:, ix].min(), std[:, ix].max()] for ix in (space.indices(g) for g in range(1, space.k + 1))]
    )
    if s1_covariance is not None:
        eigen_std = np.sqrt(np.maximum(np.linalg.eigvalsh(np.asarray(s1_covariance, np.float64)), 1e-20))
        ranges[0] = eigen_std.min(), eigen_std.max()
    return ranges


def solve(
    velocity: Velocity,
    latents: Array,
    space: LatentSpace,
    schedule: Schedule,
    grid: np.ndarray,
    solver: str = "heun",
    hide: bool = True,
    callback: Callback | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    s1_covariance: np.ndarray | None = None,
) -> Array:
    """Integrate the latents along `grid` (forward times). Returns float32 [B, C, H·W].

    Solvers: `euler`, `heun` (1 and 2 NFE per step), and the Gaussian exponential integrators
    `gei1`, `gei2m`, `gei2ab`, `gei3ab`, `gei2pc` (1, 2, 1, 1, 1 NFE per step; the `ab` and `pc`
    ones are multistep, restarted at every phase; they need the per-coefficient data `mean` and
    `std`, [C, H·W], and are exact for Gaussian data at any step count). With `hide`, the groups
    that decode makes after the active one are zeroed in the network's input and marked HIDDEN in
    its levels (docs/design.md: hidden groups).

    Args:
        velocity: the network (or oracle) as a `Velocity` callable.
        latents: the start state [B, C, H·W] (data coefficients to encode, latents to decode); not
            modified. numpy, or a torch tensor: the solve then runs on its device, copying nothing
            to the host, and returns a tensor there (grouplat.arrays).
        space: the latent space.
        schedule: the generation schedule, with space's k groups.
        grid: forward times with a knot at every interval end (`time_grid`); an ascending grid
            encodes (0 → 1), a descending one decodes (1 → 0).
        solver: one of SOLVERS.
        hide: hide the groups decode makes later from the network (see above).
        callback: `callback(i, t1, x)` after every step i, with t1 the step's end and x the live
            state array, updated in place by later steps: copy it to keep it.
        mean: the data mean per coefficient, broadcastable to [C, H·W]; needed by the `gei` solvers.
        std: the data std, likewise.
        s1_covariance: S1's full covariance [C·|S1|, C·|S1|] (a model with an S1 head): the `gei`
            solvers then take S1's Gaussian part with it (`FullCovarianceGaussianPart`); None:
            per coefficient.

    Returns:
        float32 [B, C, H·W], the state at the grid's last time.

    Raises:
        ValueError: an unknown solver, a schedule whose k is not the space's, latents of
            another shape, or a `gei` solver without mean and std (or with stats that do not
            broadcast to [C, H·W]).

    Example:
        >>> from grouplat.oracle import GaussianOracle
        >>> space = LatentSpace((1, 8, 8), "dct", (4, 16))
        >>> oracle, schedule = GaussianOracle(space, 0.0, 0.5), Schedule.from_cuts("0.5,0.8")
        >>> images = oracle.sample(2)
        >>> z = solve(oracle, space.to_latent(images), space, schedule, time_grid(schedule, 6),
        ...           "gei1", mean=oracle.mean, std=oracle.std)  # ascending grid: encode
        >>> z.dtype, z.shape, bool(np.abs(z - oracle.encode(images)).max() < 1e-4)
        (dtype('float32'), (2, 1, 64), True)
    """
    steps = solve_steps(latents, space, schedule, grid, solver, hide, callback, mean, std, s1_covariance)
    try:
        query = next(steps)
        while True:
            query = steps.send(velocity(*query))
    except StopIteration as finished:
        return finished.value


def solve_steps(
    latents: Array,
    space: LatentSpace,
    schedule: Schedule,
    grid: np.ndarray,
    solver: str = "heun",
    hide: bool = True,
    callback: Callback | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    s1_covariance: np.ndarray | None = None,
) -> Generator[Query, Array, Array]:
    """`solve` as a generator: the same integration, but each network evaluation is handed out.

    It yields every query `(pixels [B, C, H, W], levels [B, k])` and takes the velocity's answer
    back through `send`; its return value (`StopIteration.value`) is the final state. `solve` is
    this driven by one velocity callable; a scheduler can interleave many of them and answer their
    queries in one batched network call. Arguments and errors are those of `solve` (the errors
    are raised on the first `next`).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: expected one of {', '.join(SOLVERS)}")
    if schedule.k != space.k:
        raise ValueError(f"schedule has {schedule.k} groups, the latent space {space.k}")
    space.check_latents(latents)
    if solver.startswith("gei") and (mean is None or std is None):
        raise ValueError(f"solver {solver!r} needs the data mean and std of every coefficient")
    xp = arrays.namespace(latents)
    # one layout (C order, float32): results bit-identical; a device array stays on its device
    x = (
        np.array(latents, np.float32, order="C")
        if arrays.is_host(latents)
        else xp.asarray(latents, dtype=xp.float32, copy=True)
    )
    batch = len(x)
    # The method's constants go beside the state once per solve, so a step copies nothing between
    # host and device: each group's coefficients, the groups each phase hides, the Gaussian parts.
    groups = range(1, space.k + 1)
    members = [_members(space.indices(g), x) for g in groups]
    hidden = [arrays.beside(schedule.hidden[j][space.group_of], x) for j in range(space.k)]
    zero = arrays.beside(np.float32(0), x)  # what a hidden coefficient reads, in the state's dtype
    gaussian: list[GaussianPart] = []
    if solver.startswith("gei"):
        mean, std = (np.broadcast_to(v, space.latent_shape) for v in (mean, std))  # type: ignore[arg-type]
        gaussian = [
            GaussianPart(arrays.beside(mean[:, ix], x), arrays.beside(std[:, ix], x))
            for ix in map(space.indices, groups)
        ]
        if s1_covariance is not None:
            s1 = space.indices(1)
            size = space.channels * len(s1)
            if np.shape(s1_covariance) != (size, size):
                raise ValueError(
                    f"S1's covariance has shape {np.shape(s1_covariance)}, expected {(size, size)}"
                )
            gaussian[0] = FullCovarianceGaussianPart(arrays.beside(mean[:, s1], x), s1_covariance)
    steps = [
        (float(t0), float(t1), int(schedule.active(0.5 * (t0 + t1)))) for t0, t1 in zip(grid[:-1], grid[1:])
    ]

    def midpoint(t0: float, t1: float, phase: int) -> float:  # gei2m: the forward time halfway in α
        a_mid = 0.5 * sum(float(schedule.levels(t)[phase]) for t in (t0, t1))
        return float(schedule.end[phase] - a_mid * (schedule.end[phase] - schedule.start[phase]))

    def asked_at(t0: float, t1: float, phase: int) -> tuple[float, ...]:  # the step's network times
        return {"heun": (t0, t1), "gei2m": (t0, midpoint(t0, t1, phase))}.get(solver, (t0,))

    times = [asked_at(*step) for step in steps]
    # every (time, phase) the network is asked at, and its level vector: one table, placed once
    keys = sorted({(t, phase) for (_, _, phase), ts in zip(steps, times) for t in ts})
    table = schedule.conditioning(np.array([t for t, _ in keys]), np.array([p for _, p in keys]), hide)
    placed = arrays.beside(table, x)
    row = {key: r for r, key in enumerate(keys)}

    def group_velocity(state: Any, t: float, phase: int) -> Generator[Query, Any, Any]:
        visible = xp.where(hidden[phase], zero, state) if hide else state
        pixels = xp.astype(space.basis.from_latent(visible), xp.float32, copy=False)
        f = yield pixels, xp.asarray(xp.broadcast_to(placed[row[t, phase]], (batch, space.k)), copy=True)
        return space.basis.to_latent(xp.asarray(f, dtype=xp.float32))[..., members[phase]]

    history: list[tuple[Any, Any]] = []  # gei?ab, gei2pc: (τ, residual) of the phase, newest first
    start: Any = None  # gei2pc: the last step's start state (float64) and level, for the corrector
    a_start = 0.0
    previous_phase = -1
    for i, (t0, t1, phase) in enumerate(steps):
        if phase != previous_phase:  # multistep history never crosses phases: phase ends stay exact
            history, previous_phase = [], phase
        own = members[phase]
        a0, a1 = (float(schedule.levels(t)[phase]) for t in (t0, t1))
        # the step as a Python float that is exactly the float32 step: the same product on any library
        h = float(np.float32(a1 - a0))
        u0 = yield from group_velocity(x, t0, phase)
        if solver == "euler":
            x[..., own] += h * u0
        elif solver == "heun":
            predicted = xp.asarray(x, copy=True)
            predicted[..., own] += h * u0
            u1 = yield from group_velocity(predicted, t1, phase)
            x[..., own] += h * 0.5 * (u0 + u1)
        else:
            part, x0 = gaussian[phase], xp.astype(x[..., own], xp.float64)
            residual = part.residual(x0, u0, a0)
            if solver == "gei2m":  # DPM-Solver-2 style: the residual at the midpoint in α
                a_mid = 0.5 * (a0 + a1)
                middle = xp.asarray(x, copy=True)
                middle[..., own] = xp.astype(part.advance(x0, residual, a0, a_mid), xp.float32)
                u_mid = yield from group_velocity(middle, times[i][1], phase)
                residual = part.residual(xp.astype(middle[..., own], xp.float64), u_mid, a_mid)
            elif solver in ADAMS_ORDER:  # gei1, then gei2ab, then the named order
                tau0 = part.tau(a0)
                if solver in CORRECTED and history:
                    # UniPC's corrector in τ: this step's start was predicted by the last step; the
                    # residual just evaluated there redoes that step as an Adams–Moulton one (the
                    # polynomial through it and the last two residuals). The residual stays the one
                    # of the predicted state (the network is not asked again), so no evaluation is
                    # added; a phase's last step stays a prediction, so phase ends need no extra one.
                    held = _adams_mean([history[0], (tau0, residual), *history[1:2]], tau0)
                    x0 = part.advance(start, held, a_start, a0)  # the step's end overwrites x below
                start, a_start = x0, a0
                history = [(tau0, residual), *history[: ADAMS_ORDER[solver] - 1]]
                residual = _adams_mean(history, part.tau(a1))
            x[..., own] = xp.astype(part.advance(x0, residual, a0, a1), xp.float32)
        if callback is not None:
            callback(i, t1, x)
    return x


def _members(indices: np.ndarray, state: Any) -> slice | Any:
    """One group's coefficient indices as a slice where they are contiguous (a view, no gather:
    the DCT groups), else as an index array beside the state (the pixel-quadrant groups)."""
    if len(indices) and (np.diff(indices) == 1).all():
        return slice(int(indices[0]), int(indices[-1]) + 1)
    return arrays.beside(indices, state)


def _adams_mean(history: list[tuple[Any, Any]], tau_end: Any) -> Any:
    """The mean over the step from history[0]'s τ to `tau_end` of the polynomial in τ through the
    residuals in history (1–3 (τ, residual) pairs, the step's start first, the others at any τ):
    the residual an Adams–Bashforth step holds (the others older), or an Adams–Moulton one (one
    of them at `tau_end`). τ, the node offsets d_i = τ_i − τ_0 and the step h are per coefficient."""
    tau0 = history[0][0]
    h = tau_end - tau0
    nodes = [tau - tau0 for tau, _ in history]
    mean = None
    for i, (_, residual) in enumerate(history):
        others = nodes[:i] + nodes[i + 1 :]
        if not others:
            weight = 1.0
        elif len(others) == 1:  # ∫_0^h (d − a)/(d_i − a) dd / h
            (a,) = others
            weight = (h / 2 - a) / (nodes[i] - a)
        else:  # ∫_0^h (d − a)(d − b)/((d_i − a)(d_i − b)) dd / h
            a, b = others
            weight = (h * h / 3 - (a + b) * h / 2 + a * b) / ((nodes[i] - a) * (nodes[i] - b))
        mean = weight * residual if mean is None else mean + weight * residual
    return mean


def _grid(
    space: LatentSpace,
    schedule: Schedule,
    steps: int | Sequence[int],
    spacing: str,
    std: np.ndarray | None,
    knots: Sequence[Sequence[float]] | None = None,
    s1_covariance: np.ndarray | None = None,
) -> np.ndarray:
    ranges = None if std is None else group_std_ranges(space, std, s1_covariance)
    return time_grid(schedule, steps, spacing, ranges, knots=knots)


def encode(
    velocity: Velocity,
    images: Array,
    space: LatentSpace,
    schedule: Schedule,
    steps: int | Sequence[int] = 40,
    solver: str = "heun",
    spacing: str = "tau",
    std: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    hide: bool = True,
    callback: Callback | None = None,
    knots: Sequence[Sequence[float]] | None = None,
    s1_covariance: np.ndarray | None = None,
) -> Array:
    """Images [B, C, H, W] in [-1, 1] → latents [B, C, H·W] (integrate t from 0 to 1).

    `steps` is a total (split by `schedule`, the generation schedule) or one count per group.
    `std` and `mean` are the per-coefficient data statistics [C, H·W] stored with a model:
    `std` places the `tau` knots, and the `gei` solvers need both.

    Args:
        velocity: the network (or oracle) as a `Velocity` callable.
        images: [B, C, H, W] pixels.
        space: the latent space.
        schedule: the generation schedule, with space's k groups.
        steps: a total, or one count per group (S1 first), as for `allocate_steps`.
        solver: one of SOLVERS.
        spacing: one of SPACINGS.
        std: the data std per coefficient, broadcastable to [C, H·W]; None: `tau` spacing assumes
            DEFAULT_STD_RANGE, and the `gei` solvers cannot run.
        mean: the data mean per coefficient, broadcastable to [C, H·W]; needed by the `gei` solvers.
        hide: as for `solve`.
        callback: as for `solve` (copy the state to keep it).
        knots: each phase's inner knots, as for `time_grid`; None: evenly spaced.
        s1_covariance: as for `solve`.

    Returns:
        float32 latents [B, C, H·W].

    Raises:
        ValueError: images of another shape, a std that does not broadcast, or anything that
            `time_grid` or `solve` rejects (bad steps, spacing or solver, a k mismatch, a `gei`
            solver without mean and std).

    Example:
        >>> from grouplat.oracle import GaussianOracle
        >>> space = LatentSpace((1, 8, 8), "dct", (4, 16))
        >>> oracle, schedule = GaussianOracle(space, 0.0, 0.5), Schedule.from_cuts("0.5,0.8")
        >>> images = oracle.sample(2)
        >>> stats = dict(solver="gei2m", mean=oracle.mean, std=oracle.std)
        >>> z = encode(oracle, images, space, schedule, steps=6, **stats)
        >>> back = decode(oracle, z, space, schedule, steps=6, **stats)
        >>> z.shape, back.shape, bool(np.abs(back - images).max() < 1e-6)  # GEI: exact on Gaussians
        ((2, 1, 64), (2, 1, 8, 8), True)
    """
    grid = _grid(space, schedule, steps, spacing, std, knots, s1_covariance)
    latents = space.to_latent(images)
    return solve(velocity, latents, space, schedule, grid, solver, hide, callback, mean, std, s1_covariance)


def decode(
    velocity: Velocity,
    latents: Array,
    space: LatentSpace,
    schedule: Schedule,
    steps: int | Sequence[int] = 40,
    solver: str = "heun",
    spacing: str = "tau",
    std: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    hide: bool = True,
    callback: Callback | None = None,
    knots: Sequence[Sequence[float]] | None = None,
    s1_covariance: np.ndarray | None = None,
) -> Array:
    """Latents [B, C, H·W] → images [B, C, H, W] (integrate t from 1 to 0).

    The same grid as `encode` with the same arguments, walked backwards (`encode` has a round trip).

    Args:
        velocity: the network (or oracle) as a `Velocity` callable.
        latents: [B, C, H·W]; not modified.
        space: the latent space.
        schedule: the generation schedule, with space's k groups.
        steps: a total, or one count per group (S1 first), as for `allocate_steps`.
        solver: one of SOLVERS.
        spacing: one of SPACINGS.
        std: the data std per coefficient, broadcastable to [C, H·W]; None: `tau` spacing assumes
            DEFAULT_STD_RANGE, and the `gei` solvers cannot run.
        mean: the data mean per coefficient, broadcastable to [C, H·W]; needed by the `gei` solvers.
        hide: as for `solve`.
        callback: as for `solve` (copy the state to keep it).
        knots: each phase's inner knots, as for `time_grid`; None: evenly spaced.
        s1_covariance: as for `solve`.

    Returns:
        float32 images [B, C, H, W] (not clipped to [-1, 1]).

    Raises:
        ValueError: latents of another shape, a std that does not broadcast, or anything that
            `time_grid` or `solve` rejects (bad steps, spacing or solver, a k mismatch, a `gei`
            solver without mean and std).
    """
    grid = _grid(space, schedule, steps, spacing, std, knots, s1_covariance)[::-1]
    state = solve(velocity, latents, space, schedule, grid, solver, hide, callback, mean, std, s1_covariance)
    return space.from_latent(state)
