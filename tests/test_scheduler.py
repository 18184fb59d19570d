"""The step scheduler (grouplat.serving.scheduler) in-process, and its served streams.

Exact answers come from the Gaussian oracle: whatever the scheduler interleaves, reuses or caches,
every output must equal the core's own decode bit for bit.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_oracle, oracle_images, oracle_repository_at

import grouplat
from grouplat.modelinfo import ModelInfo
from grouplat.serving import contract as c
from grouplat.serving.scheduler import Cancelled, Job, PhaseCache, Plan, Scheduler
from grouplat.serving.server import EmbeddedServer
from grouplat.settings import GenerationSettings

ORACLE = make_oracle()
INFO = ModelInfo(
    "f" * 64,
    ORACLE.space,
    grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN),
    True,
    ORACLE.mean.astype(np.float32),
    ORACLE.std.astype(np.float32),
)


def core_decode(latents: np.ndarray, settings: GenerationSettings) -> np.ndarray:
    args = INFO.solve_args(settings.generation_schedule(4), settings.steps, settings.solver, settings.spacing)
    return grouplat.decode(ORACLE, latents, **args)


class Outcomes:
    """Collects the outcomes of submitted jobs."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.lock = threading.Condition()

    def finish(self, name: str):  # type: ignore[no-untyped-def]
        def store(output: object) -> None:
            with self.lock:
                self.values[name] = output
                self.lock.notify_all()

        return store

    def wait(self, count: int, timeout: float = 60) -> dict[str, object]:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.values) >= count, timeout), self.values.keys()
        return self.values


def assert_both_paths_solve(
    info: ModelInfo, settings: GenerationSettings, x: np.ndarray, want_z: np.ndarray, want_x: np.ndarray
) -> None:
    """The step scheduler's plans and the request path's orchestrator encode x to want_z and decode
    want_z to want_x, bit for bit."""
    from grouplat.serving.orchestration import Orchestrator

    scheduler, outcomes = Scheduler(ORACLE), Outcomes()
    try:
        scheduler.submit(Job(Plan(info, settings).encode(x), outcomes.finish("z")))
        scheduler.submit(Job(Plan(info, settings).decode(want_z), outcomes.finish("x")))
        stepped = outcomes.wait(2)
    finally:
        scheduler.close()
    np.testing.assert_array_equal(stepped["z"], want_z)
    np.testing.assert_array_equal(stepped["x"], want_x)
    orchestrator = Orchestrator(info, ORACLE, settings)
    np.testing.assert_array_equal(orchestrator.run(c.ENCODE, {c.IMAGE: x}, settings), want_z)
    np.testing.assert_array_equal(orchestrator.run(c.DECODE, {c.LATENT: want_z}, settings), want_x)


def latents(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *INFO.space.latent_shape)).astype(np.float32)


@pytest.mark.parametrize("solver", ["heun", "gei2m", "gei3ab", "gei2pc", "euler"])
def test_interleaved_requests_with_reuse_and_cache_equal_the_core_decode_bit_for_bit(solver: str) -> None:
    z = latents(5)
    z[3][..., :100] = z[0][..., :100]  # shares S1..S2 with row 0: a variation
    z[4][..., :30] = z[1][..., :30]  # shares S1 with row 1
    runs = [GenerationSettings(solver, 13).check(4), GenerationSettings(solver, 9).check(4)]
    cache = PhaseCache(1 << 20)
    scheduler = Scheduler(ORACLE, max_batch=3)  # several engine calls per tick
    outcomes = Outcomes()
    try:
        for i, settings in enumerate(runs):
            for name, rows in (("all", z), ("part", z[1:4])):
                plan = Plan(INFO, settings, cache)
                scheduler.submit(Job(plan.decode(rows), outcomes.finish(f"{i}{name}")))
        first = dict(outcomes.wait(4))
        again = Plan(INFO, runs[0], cache)  # later: every phase of every row is cached
        scheduler.submit(Job(again.decode(z), outcomes.finish("cached")))
        done = outcomes.wait(5)
    finally:
        scheduler.close()
    for i, settings in enumerate(runs):
        expected = core_decode(z, settings)
        np.testing.assert_array_equal(first[f"{i}all"], expected)
        np.testing.assert_array_equal(first[f"{i}part"], expected[1:4])
    np.testing.assert_array_equal(done["cached"], core_decode(z, runs[0]))
    assert cache.hits >= 3 + 4 + 5 + 5 and cache.saved_nfe > 0  # the unique S1..Sj rows of each phase


def test_previews_come_at_the_end_of_every_phase_then_the_image() -> None:
    z = latents(2)
    settings = GenerationSettings("gei2m", 8).check(4)
    shown: list[tuple[int, np.ndarray]] = []
    plan = Plan(INFO, settings, None, lambda number, images: shown.append((number, images)))
    scheduler, outcomes = Scheduler(ORACLE), Outcomes()
    try:
        scheduler.submit(Job(plan.decode(z), outcomes.finish("image")))
        image = outcomes.wait(1)["image"]
    finally:
        scheduler.close()
    assert [n for n, _ in shown] == [1, 2, 3, 4]
    np.testing.assert_array_equal(shown[-1][1], image)  # the last preview is the image
    first = INFO.space.to_latent(shown[0][1])  # after S1: S1 decoded, the rest at the data mean
    np.testing.assert_allclose(
        first[..., 30:], np.broadcast_to(INFO.mean[..., 30:], first[..., 30:].shape), atol=1e-5
    )


def test_a_cancelled_job_leaves_at_the_next_tick_and_the_others_go_on() -> None:
    settings = GenerationSettings("heun", 400).check(4)
    stop = threading.Event()
    ticks: list[int] = []
    scheduler, outcomes = Scheduler(ORACLE, on_tick=lambda rows, live: ticks.append(live)), Outcomes()
    try:
        scheduler.submit(
            Job(Plan(INFO, settings).decode(latents(1)), outcomes.finish("cancelled"), stop.is_set)
        )
        short = GenerationSettings("heun", 8).check(4)
        scheduler.submit(Job(Plan(INFO, short).decode(latents(1, 1)), outcomes.finish("short")))
        while len(ticks) < 30:
            time.sleep(0.01)
        stop.set()
        result = outcomes.wait(2)
        at_cancel = len(ticks)
        time.sleep(0.2)
    finally:
        scheduler.close()
    assert isinstance(result["cancelled"], Cancelled)
    np.testing.assert_array_equal(result["short"], core_decode(latents(1, 1), short))
    assert len(ticks) == at_cancel and ticks[-1] >= 0  # nothing runs once it left
    assert max(ticks) == 2 and 400 * 2 > len(ticks)  # both shared ticks; the long one never finished


def test_a_failing_query_fails_its_own_job_alone() -> None:
    def velocity(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
        if np.abs(x).max() > 50:
            raise RuntimeError("engine refused")
        return ORACLE(x, levels)

    settings = GenerationSettings("euler", 8).check(4)
    scheduler, outcomes = Scheduler(velocity), Outcomes()
    try:
        scheduler.submit(Job(Plan(INFO, settings).decode(latents(1) * 200), outcomes.finish("bad")))
        scheduler.submit(Job(Plan(INFO, settings).decode(latents(1)), outcomes.finish("good")))
        result = outcomes.wait(2)
    finally:
        scheduler.close()
    assert isinstance(result["bad"], RuntimeError)
    np.testing.assert_array_equal(result["good"], core_decode(latents(1), settings))


def test_both_paths_encode_with_the_encode_schedule_and_decode_with_the_other() -> None:
    """The step scheduler's plans and the request path's orchestrator solve each direction with its
    own schedule (Heun, not exact on Gaussian data, tells the schedules apart)."""

    settings = GenerationSettings("heun", 36, "0.2,0.4,0.6", encode_schedule="0.1,0.2,0.3").check(4)
    x = oracle_images(ORACLE, 2)

    def core(settings: GenerationSettings) -> dict:
        return INFO.solve_args(
            settings.generation_schedule(4), settings.steps, settings.solver, settings.spacing
        )

    want_z = grouplat.encode(ORACLE, x, **core(settings.encoding()))
    assert np.abs(want_z - grouplat.encode(ORACLE, x, **core(settings))).max() > 1e-3
    want_x = grouplat.decode(ORACLE, want_z, **core(settings))
    assert_both_paths_solve(INFO, settings, x, want_z, want_x)


def test_served_decode_stream_sends_a_preview_per_phase_then_the_decode(tmp_path: Path) -> None:
    repository = oracle_repository_at(tmp_path / "repo")
    x = oracle_images(ORACLE, 2)
    with EmbeddedServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        image_in = grpcclient.InferInput(c.IMAGE, list(x.shape), "FP32")
        image_in.set_data_from_numpy(x)
        z = client.infer(c.ENCODE, [image_in], parameters={"solver": "gei2m", "steps": 8}).as_numpy(c.LATENT)
        latent = grpcclient.InferInput(c.LATENT, list(z.shape), "FP32")
        latent.set_data_from_numpy(z)
        unary = client.infer(c.DECODE, [latent], parameters={"solver": "gei2m", "steps": 8}).as_numpy(c.IMAGE)
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer(c.DECODE_STREAM, [latent], parameters={"solver": "gei2m", "steps": 8})
        phases, images = [], []
        while not phases or phases[-1] < 4:
            result, error = answers.get(timeout=60)
            assert error is None, error
            phases.append(int(result.as_numpy(c.PHASE)[0, 0]))
            images.append(result.as_numpy(c.IMAGE))
        client.stop_stream()
    assert phases == [1, 2, 3, 4]
    np.testing.assert_array_equal(images[-1], unary)  # the stream's last answer is the decode
    np.testing.assert_allclose(unary, x, atol=1e-4)  # gei2m is exact for the oracle


def test_calibrated_knots_serve_the_settings_they_were_fitted_to_and_no_others() -> None:
    """A model's calibrated knots (grouplat.knots) reach both paths' encode and decode when the
    direction, solver, spacing and steps per group match, and no other settings (Heun: not exact
    on Gaussian data, so the knots change the numbers)."""
    from dataclasses import replace

    settings = GenerationSettings("heun", 12, "0.2,0.4,0.6", encode_schedule="0.1,0.2,0.3").check(4)
    decode_split = grouplat.allocate_steps(settings.generation_schedule(4), 12).tolist()
    encode_split = grouplat.allocate_steps(settings.encoding().generation_schedule(4), 12).tolist()
    skewed = {  # every phase's knots crowded towards its data end
        key: [(np.linspace(0, 1, n + 1)[1:-1] ** 2).tolist() for n in split]
        for key, split in ((f"decode/heun/tau/{'-'.join(map(str, decode_split))}", decode_split),
                           (f"encode/heun/tau/{'-'.join(map(str, encode_split))}", encode_split))
    }  # fmt: skip
    info = replace(INFO, knots=skewed)
    x = oracle_images(ORACLE, 2)

    def core(direction: str, chosen: GenerationSettings) -> dict:
        schedule = chosen.generation_schedule(4)
        return info.solve_args(schedule, chosen.steps, chosen.solver, chosen.spacing, direction)

    want_z = grouplat.encode(ORACLE, x, **core("encode", settings.encoding()))
    want_x = grouplat.decode(ORACLE, want_z, **core("decode", settings))
    assert (
        core("encode", settings.encoding())["knots"]
        == skewed[f"encode/heun/tau/{'-'.join(map(str, encode_split))}"]
    )
    even_z = grouplat.encode(
        ORACLE, x, **INFO.solve_args(settings.encoding().generation_schedule(4), 12, "heun")
    )
    assert np.abs(want_z - even_z).max() > 1e-3  # the knots were used
    assert (
        np.abs(want_x - grouplat.decode(ORACLE, want_z, **core("decode", settings) | {"knots": None})).max()
        > 1e-3
    )
    other = replace(settings, steps=16)
    assert (
        core("decode", other)["knots"] is None
        and core("decode", replace(settings, solver="euler"))["knots"] is None
    )
    assert_both_paths_solve(info, settings, x, want_z, want_x)
    scheduler, outcomes = Scheduler(ORACLE), Outcomes()
    try:
        scheduler.submit(Job(Plan(info, other).decode(want_z), outcomes.finish("other")))
        stepped = outcomes.wait(1)
    finally:
        scheduler.close()
    even = grouplat.decode(ORACLE, want_z, **INFO.solve_args(other.generation_schedule(4), 16, "heun"))
    np.testing.assert_array_equal(stepped["other"], even)
