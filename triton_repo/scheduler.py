"""The step scheduler: one loop owns the ODE steps of every request in flight (docs/design.md §4).

A request becomes a *program*: a generator that yields one network query at a time (the core's
`solve_steps`, phase by phase) and returns its output. Each tick the loop takes the next query of
every live program, answers them all with one batched velocity call (chunked to the engine's
max batch), and hands each its answer back. So requests that arrive at different times, with
different step counts and at different phases, share forwards; each gets one network evaluation
per tick, and leaves when it is done, cancelled or failed.

Decodes run phase by phase. With hidden groups the state at the end of group j's phase depends
only on the latent's S1..Sj, so rows that share those groups are computed once: within a request
(variations, traversals and interpolations of one group) and across requests (an LRU cache of
phase-end states keyed by the settings and the bytes of S1..Sj). Every row computes exactly what
a full decode computes, so the output is bit-identical with reuse on or off. At the end of each
phase a program can emit a preview: the image as it stands, the groups still to come at the
data mean.

Numpy and threads: the Triton adapter (service.py) submits programs and sends the responses;
tests drive it in-process. With an engine that keeps the state on its device (the torch engine,
`Orchestrator.place`), the states, the batched queries and the cached phase ends stay there.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from grouplat import arrays, ops
from grouplat.modelinfo import ModelInfo
from grouplat.schedule import Schedule
from grouplat.serving import contract as c
from grouplat.settings import GenerationSettings
from grouplat.solvers import (
    NFE_PER_STEP,
    Query,
    Velocity,
    allocate_steps,
    group_std_ranges,
    solve_steps,
    time_grid,
)

Program = Generator[Query, np.ndarray, np.ndarray]
Preview = Callable[[int, np.ndarray], None]  # (group number just decoded, images [B, C, H, W])
logger = logging.getLogger(__name__)


class Cancelled(Exception):
    """The caller cancelled the request (or its deadline passed)."""


# ---- programs: one request as a generator of network queries ------------------------------------


@dataclass
class Plan:
    """A model's encode / decode / mix under one request's settings."""

    info: ModelInfo
    settings: GenerationSettings
    cache: PhaseCache | None = None
    preview: Preview | None = None

    def __post_init__(self) -> None:
        self.schedule, self.per_group, self.grid = self._grid(self.settings, "decode")
        # ascending-grid index range of each group's phase (phases run finest first in forward time)
        self.bounds: dict[int, tuple[int, int]] = {}
        start = 0
        for j in np.argsort(self.schedule.start):
            self.bounds[int(j)] = (start, start + int(self.per_group[j]))
            start += int(self.per_group[j])

    def _grid(self, settings: GenerationSettings, direction: str) -> tuple[Schedule, np.ndarray, np.ndarray]:
        """The schedule, steps per group and ascending time grid of `settings` in `direction`
        (`encode` or `decode`: whose calibrated knots the model may have)."""
        info = self.info
        schedule = settings.generation_schedule(info.space.k)
        per_group = allocate_steps(schedule, settings.steps)
        ranges = group_std_ranges(info.space, info.std, info.s1_covariance)
        knots = info.knots_for(direction, schedule, settings.steps, settings.solver, settings.spacing)
        return (
            schedule,
            per_group,
            time_grid(schedule, per_group.tolist(), settings.spacing, ranges, knots=knots),
        )

    def _solve(self, state: np.ndarray, grid: np.ndarray, schedule: Schedule | None = None) -> Program:
        info, s = self.info, self.settings
        return solve_steps(
            state, info.space, schedule or self.schedule, grid, s.solver, info.hide,
            mean=info.mean, std=info.std, s1_covariance=info.s1_covariance,
        )  # fmt: skip

    def encode(self, images: np.ndarray) -> Program:
        """The encode direction: its own schedule (`settings.encoding()`)."""
        schedule, _, grid = self._grid(self.settings.encoding(), "encode")
        return self._solve(self.info.space.to_latent(images), grid, schedule)

    def decode(self, latents: np.ndarray) -> Program:
        """Phase by phase, S1 first; rows sharing S1..Sj (or cached) compute phase j once.

        Reuse needs hidden groups: only then is the state after phase j a function of S1..Sj.
        """
        space = self.info.space
        # Rows are told apart and cache keys made from a host copy (the caller's latents came from
        # the host; a mix's once per request); the state stays where the latents are (a device).
        host = np.array(arrays.to_numpy(latents), dtype=np.float32, order="C")
        xp = arrays.namespace(latents)
        state = host.copy() if arrays.is_host(latents) else xp.asarray(latents, dtype=xp.float32, copy=True)
        every = arrays.beside(np.arange(len(host)), state)
        mean = arrays.beside(self.info.mean, state)  # what a preview shows for the groups to come
        descending = self.grid[::-1]
        last = len(self.grid) - 1
        done = np.zeros(space.size, bool)
        for number, j in enumerate(sorted(range(space.k), key=lambda g: -self.schedule.start[g]), start=1):
            done |= space.group_of == j
            decoded = arrays.beside(np.flatnonzero(done), state)  # S1..Sj's coefficients
            low, high = self.bounds[j]
            grid = descending[last - high : last - low + 1]  # this phase's knots, descending
            if self.info.hide:
                rows = _unique_rows(host[..., done])
                firsts = rows.first
            else:
                rows, firsts = _Rows(list(range(len(host))), list(range(len(host)))), list(range(len(host)))
            keys = {r: self._key(number, host[r][..., done]) for r in firsts} if self._reuse else {}
            cached = {r: hit for r in firsts if (hit := self._lookup(keys.get(r))) is not None}
            compute = [r for r in firsts if r not in cached]
            if self.cache is not None:  # rows not computed: cached ones and repeats of another row
                per_row = (high - low) * NFE_PER_STEP[self.settings.solver]
                self.cache.saved_nfe += (len(host) - len(compute)) * per_row
            if compute:  # every row (the usual case): the whole state, no gather
                chosen = every if len(compute) == len(host) else arrays.beside(np.array(compute), state)
                result = yield from self._solve(state[chosen], grid)
                state[chosen] = result
                for i, r in enumerate(compute if self._reuse else ()):
                    self.cache.put(keys[r], result[i][..., decoded])  # type: ignore[union-attr]
            for r, values in cached.items():
                state[r][..., decoded] = values
            for r, first in enumerate(rows.of):
                if first != r:  # the same S1..Sj as an earlier row: the same decoded groups
                    state[r][..., decoded] = state[first][..., decoded]
            if self.preview is not None:
                self.preview(number, space.from_latent(xp.where(arrays.beside(done, state), state, mean)))
        return space.from_latent(state)

    @property
    def _reuse(self) -> bool:
        return self.cache is not None and self.info.hide

    def _lookup(self, key: bytes | None) -> np.ndarray | None:
        return None if key is None or self.cache is None else self.cache.lookup(key)

    def _key(self, number: int, prefix: np.ndarray) -> bytes:
        """Cache key of one row's state after its first `number` phases."""
        s = self.settings
        head = f"{s.solver}|{s.spacing}|{self.schedule.text}|{self.per_group[:number].tolist()}|{number}"
        return hashlib.blake2b(
            head.encode() + np.ascontiguousarray(prefix).tobytes(), digest_size=20
        ).digest()

    def mix(self, a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> Program:
        both = yield from self.encode(arrays.namespace(a).concat([a, b]))
        mixed = ops.mix(self.info.space, both[: len(a)], both[len(a) :], groups)
        return (yield from self.decode(mixed))

    def program(self, operation: str, inputs: dict[str, np.ndarray]) -> Program:
        if operation == c.ENCODE:
            return self.encode(inputs[c.IMAGE])
        if operation == c.DECODE:
            return self.decode(inputs[c.LATENT])
        return self.mix(inputs[c.IMAGE_A], inputs[c.IMAGE_B], inputs[c.GROUPS])


@dataclass
class _Rows:
    first: list[int]  # the first row of every distinct value
    of: list[int]  # for every row, the first row with its value


def _unique_rows(values: np.ndarray) -> _Rows:
    seen: dict[bytes, int] = {}
    of = [seen.setdefault(np.ascontiguousarray(v).tobytes(), r) for r, v in enumerate(values)]
    return _Rows(sorted(set(of)), of)


class PhaseCache:
    """LRU of phase-end states (the decoded groups of one row), bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = self.misses = 0
        self.saved_nfe = 0  # network evaluations × images that reuse (cache or shared rows) saved

    def lookup(self, key: bytes) -> np.ndarray | None:
        with self.lock:
            values = self.items.get(key)
            if values is None:
                self.misses += 1
                return None
            self.hits += 1
            self.items.move_to_end(key)
            return values

    def put(self, key: bytes, values: Any) -> None:
        xp = arrays.namespace(values)  # kept where it was computed: a device state stays there
        values = xp.asarray(values, dtype=xp.float32, copy=True)
        with self.lock:
            if key in self.items or values.nbytes > self.max_bytes:
                return
            self.items[key] = values
            self.bytes += values.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self.items.popitem(last=False)[1].nbytes


# ---- the loop -------------------------------------------------------------------------------------


@dataclass
class Job:
    """One request in the scheduler: its program and where its outcome goes."""

    program: Program
    finish: Callable[[np.ndarray | BaseException], None]  # the output, or why there is none
    cancelled: Callable[[], bool] = lambda: False
    query: Query | None = None
    submitted: float = field(default_factory=time.perf_counter)
    nfe: int = 0


@dataclass
class Stats:
    """What the loop has done (for metrics): ticks, rows per tick, requests in flight."""

    ticks: int = 0
    rows: int = 0
    in_flight: int = 0
    finished: int = 0
    cancelled: int = 0


class Scheduler:
    """Runs jobs on one velocity engine, one network evaluation per job per tick."""

    def __init__(
        self, velocity: Velocity, max_batch: int = 64, on_tick: Callable[[int, int], None] | None = None
    ) -> None:
        self.velocity, self.max_batch = velocity, max_batch
        self.on_tick = on_tick  # (rows evaluated, jobs live) after every tick: metrics
        self.incoming: queue.Queue[Job] = queue.Queue()
        self.stats = Stats()
        self._thread = threading.Thread(target=self._loop, name="grouplat-scheduler", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.incoming.put(job)

    def close(self) -> None:
        self._stop.set()
        self.incoming.put(None)  # type: ignore[arg-type]  # wakes the loop
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        live: list[Job] = []
        while not self._stop.is_set():
            try:  # admit what arrived; block only when idle
                job = self.incoming.get(timeout=None if not live else 0)
                while job is not None:
                    self._start(job, live)
                    job = self.incoming.get_nowait()
            except queue.Empty:
                pass
            for job in [j for j in live if _asks_to_stop(j)]:
                live.remove(job)
                self.stats.cancelled += 1
                job.finish(Cancelled())
            if live:
                self._tick(live)
            self.stats.in_flight = len(live)

    def _start(self, job: Job, live: list[Job]) -> None:
        try:
            job.query = next(job.program)
            live.append(job)
        except StopIteration as finished:  # nothing to compute (e.g. every phase cached)
            self._done(job, finished.value)
        except Exception as error:  # noqa: BLE001 - a bad program fails its request alone
            job.finish(error)

    def _tick(self, live: list[Job]) -> None:
        """One network evaluation for every live job, in as few engine calls as the max batch allows."""
        queries: list[Query] = [job.query for job in live]  # type: ignore[misc]
        sizes = [len(q[0]) for q in queries]
        answers: list[Any]
        try:
            out, ends = self._evaluate(queries), np.cumsum(sizes).tolist()
            answers = [out[end - size : end] for size, end in zip(sizes, ends)]
        except Exception:  # noqa: BLE001 - isolate the culprit: each job's query alone
            answers = [_attempt(self._evaluate, [q]) for q in queries]
        self.stats.ticks += 1
        self.stats.rows += sum(sizes)
        if self.on_tick is not None:
            self.on_tick(sum(sizes), len(live))
        for job, answer in zip(list(live), answers):
            job.nfe += 1
            if isinstance(answer, BaseException):
                live.remove(job)
                job.finish(answer)
                continue
            try:
                job.query = job.program.send(answer)
            except StopIteration as finished:
                live.remove(job)
                self._done(job, finished.value)
            except Exception as error:  # noqa: BLE001 - a failing program fails its request alone
                live.remove(job)
                job.finish(error)

    def _evaluate(self, queries: list[Query]) -> Any:
        xp = arrays.namespace(queries[0][0])  # numpy, or the device's library: no host copies
        pixels = xp.concat([q[0] for q in queries])
        levels = xp.concat([q[1] for q in queries])
        return xp.concat(
            [
                xp.asarray(self.velocity(pixels[i : i + self.max_batch], levels[i : i + self.max_batch]))
                for i in range(0, len(pixels), self.max_batch)
            ]
        )

    def _done(self, job: Job, output: Any) -> None:
        self.stats.finished += 1
        job.finish(output)


def _attempt(
    evaluate: Callable[[list[Query]], np.ndarray], queries: list[Query]
) -> np.ndarray | BaseException:
    try:
        return evaluate(queries)
    except Exception as error:  # noqa: BLE001
        return error


def _asks_to_stop(job: Job) -> bool:
    try:
        return bool(job.cancelled())
    except Exception:  # noqa: BLE001 - a failing probe keeps the job running
        return False
