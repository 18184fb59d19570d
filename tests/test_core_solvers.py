"""Solvers against the exact Gaussian oracle (docs/design.md §1): the strongest test this project has."""

import numpy as np
import pytest

from grouplat import (
    GaussianOracle,
    LatentSpace,
    Schedule,
    allocate_steps,
    decode,
    encode,
    quadrant_groups,
    solve,
    time_grid,
)
from grouplat.solvers import group_std_ranges, phase_levels
from grouplat.tools.solvers import calibrate_knots


def oracle_for(space, seed=0):
    """Random per-coefficient mean and std (std in [0.3, 3]) and 4 samples of that Gaussian."""
    rng = np.random.default_rng(seed)
    oracle = GaussianOracle(
        space, 0.5 * rng.standard_normal(space.latent_shape), rng.uniform(0.3, 3, space.latent_shape)
    )
    return oracle, oracle.sample(4, seed + 1).astype(np.float32)


# 16×16 has only 256 coefficients per channel, so its last paper boundary (500) becomes 200.
PAPER_SPACES = [((3, 16, 16), "dct", (30, 100, 200)), ((3, 32, 32), "dct", (30, 100, 500))]


@pytest.mark.parametrize("schedule", ["0.6,0.8,0.9", "0.1,0.2,0.3"])
@pytest.mark.parametrize(("shape", "basis", "groups"), PAPER_SPACES)
def test_heun_encode_matches_the_exact_encode(shape, basis, groups, schedule):
    space = LatentSpace(shape, basis, groups)
    oracle, x = oracle_for(space)
    steps = 800  # 1600 NFE: the oracle's 1e-3 needs this many plain Heun steps (docs/design.md §1)
    z = encode(oracle, x, space, Schedule.from_cuts(schedule), steps=steps, std=oracle.std)
    assert np.abs(z - oracle.encode(x)).max() <= 1e-3
    x_back = decode(oracle, z, space, Schedule.from_cuts(schedule), steps=steps, std=oracle.std)
    assert np.abs(x_back - x).max() <= 1e-4


@pytest.mark.parametrize(
    ("space", "schedule"),
    [
        (LatentSpace((1, 16, 16), "pixel", quadrant_groups(16, 16)), "0.25,0.5,0.75"),
        (LatentSpace((3, 16, 16), "dct", []), "-"),
    ],
    ids=["pixel-quadrants", "scalar-k1"],
)
def test_pixel_basis_and_scalar_schedule(space, schedule):
    oracle, x = oracle_for(space)
    z = encode(oracle, x, space, Schedule.from_cuts(schedule), steps=800, std=oracle.std)
    assert np.abs(z - oracle.encode(x)).max() <= 1e-3
    x_back = decode(oracle, z, space, Schedule.from_cuts(schedule), steps=800, std=oracle.std)
    assert np.abs(x_back - x).max() <= 1e-4


@pytest.mark.parametrize(("solver", "order"), [("euler", 1.0), ("heun", 2.0)])
def test_convergence_order(solver, order):
    space = LatentSpace((3, 16, 16), "dct", (30, 100, 200))
    oracle, x = oracle_for(space, seed=3)
    schedule = Schedule.from_cuts("0.6,0.8,0.9")
    exact = oracle.encode(x)
    errors = [
        np.abs(encode(oracle, x, space, schedule, n, solver, "uniform") - exact).max() for n in (400, 800)
    ]
    measured = np.log2(errors[0] / errors[1])
    assert abs(measured - order) < 0.2, f"{solver}: measured order {measured:.2f}"


def test_only_the_active_group_moves_during_its_phase():
    space = LatentSpace((3, 16, 16), "dct", (30, 100, 200))
    oracle, x = oracle_for(space)
    schedule = Schedule.from_cuts("0.1,0.2,0.3")
    grid = time_grid(schedule, 24)[::-1]
    states = [space.to_latent(x)]  # any latent will do: decode from the image's coefficients

    def record(step, t, latents):
        states.append(latents.copy())

    decode(oracle, states[0], space, schedule, steps=24, callback=record)
    assert len(states) == len(grid)
    for (t0, t1), before, after in zip(zip(grid, grid[1:]), states, states[1:]):
        active = int(schedule.active((t0 + t1) / 2)) + 1
        outside = ~space.mask(active)
        assert np.array_equal(before[..., outside], after[..., outside])
        assert not np.array_equal(before[..., ~outside], after[..., ~outside])


class RandomNetwork:
    """A fixed nonlinear pixel-space 'network' that sees every pixel and the levels."""

    def __init__(self, space, seed=0):
        rng = np.random.default_rng(seed)
        n = space.channels * space.size
        self.weight = rng.standard_normal((n, n)).astype(np.float32) / np.sqrt(n)
        self.level_weight = rng.standard_normal((space.k, n)).astype(np.float32)

    def __call__(self, x_t, levels):
        flat = x_t.reshape(len(x_t), -1)
        return np.tanh(flat @ self.weight + levels @ self.level_weight).reshape(x_t.shape)


@pytest.mark.parametrize("hide", [True, False])
def test_changing_a_group_leaves_coarser_groups_exactly_alone_only_with_hiding(hide):
    space = LatentSpace((1, 8, 8), "dct", (4, 16, 40))
    schedule = Schedule.from_cuts("0.1,0.2,0.3")
    network = RandomNetwork(space)
    z = np.random.default_rng(0).standard_normal((1, *space.latent_shape)).astype(np.float32)
    edited = z.copy()
    edited[..., space.mask(3)] += 1.0
    grid = time_grid(schedule, 12)[::-1]
    a, b = (solve(network, v, space, schedule, grid, hide=hide) for v in (z, edited))
    coarser = space.mask(1) | space.mask(2)
    if hide:
        assert np.array_equal(a[..., coarser], b[..., coarser])
    else:
        assert np.abs(a[..., coarser] - b[..., coarser]).max() > 1e-3
    assert np.abs(a[..., space.mask(3)] - b[..., space.mask(3)]).max() > 1e-3


def test_steps_split_by_the_generation_schedule():
    schedule = Schedule.from_cuts("0.1,0.2,0.3")
    assert allocate_steps(schedule, 40).tolist() == [28, 4, 4, 4]
    assert allocate_steps(schedule, 20).tolist() == [11, 3, 3, 3]  # 2 would be degenerate
    assert allocate_steps(schedule, 100).tolist() == [70, 10, 10, 10]
    assert allocate_steps(schedule, 4).tolist() == [1, 1, 1, 1]
    assert allocate_steps(schedule, [5, 4, 3, 2]).tolist() == [5, 4, 3, 2]
    for total in range(4, 60):
        assert allocate_steps(schedule, total).sum() == total
    with pytest.raises(ValueError, match="cannot cover 4 groups"):
        allocate_steps(schedule, 3)
    with pytest.raises(ValueError, match="per-group steps need 4"):
        allocate_steps(schedule, [5, 4])


@pytest.mark.parametrize("spacing", ["uniform", "tau"])
def test_time_grid_has_a_knot_at_every_kink(spacing):
    schedule = Schedule.from_cuts("0.6,0.8,0.9")
    grid = time_grid(schedule, [4, 3, 5, 6], spacing)
    assert len(grid) == 19 and grid[0] == 0 and grid[-1] == 1 and np.all(np.diff(grid) > 0)
    assert {0.6, 0.8, 0.9} <= set(np.round(grid, 12))
    # no step straddles a kink: each step's midpoint and both ends share one interval
    for t0, t1 in zip(grid, grid[1:]):
        phase = schedule.active((t0 + t1) / 2)
        assert schedule.start[phase] <= t0 and t1 <= schedule.end[phase]


def test_tau_spacing_crowds_knots_where_paths_bend():
    small = phase_levels(8, "tau", (0.05, 0.05))  # fine detail bends near the clean end α = 1
    large = phase_levels(8, "tau", (20.0, 20.0))  # coarse coefficients bend near the noise end
    assert small[0] - small[1] < 1 / 8 < small[-2] - small[-1]
    assert large[-2] - large[-1] < 1 / 8 < large[0] - large[1]


def test_bad_solver_settings_are_refused():
    space = LatentSpace((1, 4, 4), "dct", (4,))
    oracle, x = oracle_for(space)
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        encode(oracle, x, space, Schedule.from_cuts("0.5"), steps=4, solver="rk4")
    with pytest.raises(ValueError, match="unknown spacing"):
        encode(oracle, x, space, Schedule.from_cuts("0.5"), steps=4, spacing="cosine")
    with pytest.raises(ValueError, match="schedule has 3 groups, the latent space 2"):
        encode(oracle, x, space, Schedule.from_cuts("0.3,0.5"), steps=4)


@pytest.mark.parametrize("solver", ["gei1", "gei2m", "gei2ab", "gei3ab", "gei2pc"])
def test_gaussian_exponential_integrators_are_exact_for_gaussian_data(solver):
    space = LatentSpace((3, 32, 32), "dct", (30, 100, 500))
    oracle, x = oracle_for(space)
    schedule = Schedule.from_cuts("0.1,0.2,0.3")
    stats = {"mean": oracle.mean, "std": oracle.std}
    z = encode(oracle, x, space, schedule, steps=4, solver=solver, **stats)  # one step per group
    assert np.abs(z - oracle.encode(x)).max() <= 1e-4
    x_back = decode(oracle, oracle.encode(x), space, schedule, steps=4, solver=solver, **stats)
    assert np.abs(x_back - x).max() <= 1e-4


# gei3ab starts every phase with a gei1 and a gei2ab step, whose local errors keep its global order
# at 2; its later steps make its constant smaller than gei2ab's (the bound: 0.01 vs 0.02). gei2pc's
# corrector makes its later steps third order: measured 2.6 from 30 to 60 steps, a tenth of
# gei2ab's error (the bound: 1e-3).
@pytest.mark.parametrize(
    ("solver", "bound", "order"),
    [("gei2m", 1e-2, (1.6, 2.6)), ("gei2ab", 2e-2, (1.6, 2.6)), ("gei3ab", 1e-2, (1.6, 2.6)),
     ("gei2pc", 1e-3, (2.3, 3.3))],
)  # fmt: skip
def test_gei_converges_on_a_non_gaussian_flow(solver, bound, order):
    """Oracle plus a smooth nonlinear residual: the error falls as steps^-order."""
    space = LatentSpace((1, 8, 8), "dct", (4, 16))
    oracle, x = oracle_for(space)
    schedule = Schedule.from_cuts("0.5,0.8")

    def velocity(x_t, levels):
        return oracle(x_t, levels) + 0.3 * np.tanh(x_t[:, :, ::-1] + levels[:, :1, None, None])

    stats = {"mean": oracle.mean, "std": oracle.std}
    reference = encode(velocity, x, space, schedule, steps=1200, solver="heun", **stats)
    errors = [
        np.abs(encode(velocity, x, space, schedule, steps=n, solver=solver, **stats) - reference).max()
        for n in (30, 60)
    ]
    assert errors[1] < bound and order[0] < np.log2(errors[0] / errors[1]) < order[1], errors


def test_calibrated_knots_beat_even_ones_on_other_latents():
    """A flow that bends sharply near S1's data end (α ≈ 0.9): knots fitted on four latents decode
    four others more accurately than the even spacing at the same steps."""
    space = LatentSpace((1, 8, 8), "dct", (4, 16))
    oracle, _ = oracle_for(space)
    schedule, split = Schedule.from_cuts("0.5,0.8"), [5, 3, 3]

    def velocity(x_t, levels):
        bend = 1 + np.tanh(20 * (levels[:, :1, None, None] - 0.9))
        return oracle(x_t, levels) + 0.3 * np.tanh(x_t[:, :, ::-1]) * bend

    stats = {"mean": oracle.mean, "std": oracle.std}
    ranges = group_std_ranges(space, oracle.std)
    fit, check = (np.random.default_rng(seed).standard_normal((4, *space.latent_shape)) for seed in (1, 2))

    fine = time_grid(schedule, 400)[::-1]
    reference = {id(z): solve(velocity, z, space, schedule, fine, "gei2m", **stats) for z in (fit, check)}

    def error(z, knots):
        grid = time_grid(schedule, split, "tau", ranges, knots=knots)[::-1]
        return np.sqrt(
            np.mean((solve(velocity, z, space, schedule, grid, "gei2pc", **stats) - reference[id(z)]) ** 2)
        )

    knots, _ = calibrate_knots(lambda k: -error(fit, k), split, passes=2)
    assert [len(k) for k in knots] == [4, 2, 2]
    assert error(check, knots) < 0.5 * error(check, None)  # measured: 0.009 vs 0.037
    # a group left even (a headed model's S1, on the head alone) keeps its knots; the others still move
    kept, _ = calibrate_knots(lambda k: -error(fit, k), split, passes=1, even=[0])
    np.testing.assert_array_equal(kept[0], np.linspace(0, 1, split[0] + 1)[1:-1])
    assert any(not np.allclose(k, np.linspace(0, 1, n + 1)[1:-1]) for k, n in zip(kept[1:], split[1:]))
    with pytest.raises(ValueError, match="a phase of 5 steps needs 4 increasing knots"):
        time_grid(schedule, split, knots=[[0.5], [0.3, 0.6], [0.3, 0.6]])


def test_gei_needs_the_data_statistics():
    space = LatentSpace((1, 4, 4), "dct", (4,))
    oracle, x = oracle_for(space)
    with pytest.raises(ValueError, match="needs the data mean and std"):
        encode(oracle, x, space, Schedule.from_cuts("0.5"), steps=4, solver="gei2m")


def test_interleaved_solve_steps_answered_in_one_batch_equal_solving_each_alone():
    """`solve_steps` hands out each network evaluation: two solves with different step counts and
    solvers, answered together in one batched call per round, give each solve's own result exactly."""
    from grouplat.solvers import solve, solve_steps, time_grid

    space = LatentSpace((3, 8, 8), "dct", (4, 16, 40))
    oracle = GaussianOracle(space, 0.1, np.linspace(2.0, 0.2, space.size))
    schedule = Schedule.from_cuts("0.1,0.2,0.3")
    z = np.random.default_rng(0).standard_normal((3, *space.latent_shape)).astype(np.float32)
    jobs = [(z[:1], 8, "heun"), (z[1:], 13, "gei2m")]
    stats = {"mean": oracle.mean, "std": oracle.std}
    alone = [solve(oracle, x, space, schedule, time_grid(schedule, n)[::-1], s, **stats) for x, n, s in jobs]
    running = [solve_steps(x, space, schedule, time_grid(schedule, n)[::-1], s, **stats) for x, n, s in jobs]
    queries = {i: next(g) for i, g in enumerate(running)}
    results: dict[int, np.ndarray] = {}
    while queries:
        order = sorted(queries)
        pixels = np.concatenate([queries[i][0] for i in order])
        levels = np.concatenate([queries[i][1] for i in order])
        answers = np.split(oracle(pixels, levels), np.cumsum([len(queries[i][0]) for i in order])[:-1])
        for i, answer in zip(order, answers):
            try:
                queries[i] = running[i].send(answer)
            except StopIteration as finished:
                results[i] = finished.value
                del queries[i]
    for i, expected in enumerate(alone):
        np.testing.assert_array_equal(results[i], expected)


def full_covariance_s1(space, seed=0):
    """A Gaussian whose S1 coefficients have a full covariance (nearly degenerate directions, as a
    shape's S1 has) and whose other coefficients are independent, with its exact velocity."""
    from grouplat.oracle import gaussian_velocity

    rng = np.random.default_rng(seed)
    oracle, _ = oracle_for(space, seed)
    s1, size = space.indices(1), space.channels * len(space.indices(1))
    rotation = np.linalg.qr(rng.standard_normal((size, size)))[0]
    covariance = (rotation * np.geomspace(0.02, 5.0, size) ** 2) @ rotation.T
    mean = oracle.mean[:, s1].reshape(-1)

    def velocity(x_t, levels):
        z = space.to_latent(x_t).astype(np.float64)
        alpha = np.clip(levels, 0, 1)
        u = gaussian_velocity(z, alpha[:, space.group_of][:, None], oracle.mean, oracle.std**2)
        for b, a in enumerate(alpha[:, 0]):
            eye = np.eye(size)
            gain = (a * covariance - (1 - a) * eye) @ np.linalg.inv(a**2 * covariance + (1 - a) ** 2 * eye)
            u[b][:, s1] = (mean + gain @ (z[b][:, s1].reshape(-1) - a * mean)).reshape(space.channels, -1)
        return space.from_latent(u).astype(np.float32)

    return oracle, covariance, velocity


@pytest.mark.parametrize("solver", ["gei1", "gei2m", "gei3ab", "gei2pc"])
def test_gei_with_s1s_covariance_is_exact_for_a_full_covariance_s1(solver):
    """A model with an S1 head has such an S1: its exact decode is μ + Σ^½ z on S1."""
    space = LatentSpace((2, 8, 8), "dct", (4, 16))
    oracle, covariance, velocity = full_covariance_s1(space)
    schedule = Schedule.from_cuts("0.5,0.8")
    z = np.random.default_rng(3).standard_normal((3, *space.latent_shape)).astype(np.float32)
    variance, rotation = np.linalg.eigh(covariance)
    s1 = space.indices(1)
    root = (rotation * variance**0.5) @ rotation.T  # Σ^½
    expected = oracle.mean[:, s1].reshape(-1) + z[:, :, s1].reshape(3, -1) @ root  # S1's exact decode
    stats = {"mean": oracle.mean, "std": oracle.std, "solver": solver}
    decoded = decode(velocity, z, space, schedule, steps=3, s1_covariance=covariance, **stats)
    assert np.abs(space.to_latent(decoded)[:, :, s1].reshape(3, -1) - expected).max() <= 1e-4
    back = encode(velocity, decoded, space, schedule, steps=3, s1_covariance=covariance, **stats)
    assert np.abs(back - z).max() <= 1e-4
    per_coefficient = decode(velocity, z, space, schedule, steps=3, **stats)  # what it replaces
    assert np.abs(space.to_latent(per_coefficient)[:, :, s1].reshape(3, -1) - expected).max() > 1e-2
    assert group_std_ranges(space, oracle.std, covariance)[0] == pytest.approx([0.02, 5.0])
    with pytest.raises(ValueError, match="S1's covariance has shape"):
        decode(velocity, z, space, schedule, steps=3, s1_covariance=covariance[1:, 1:], **stats)
