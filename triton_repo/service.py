"""The orchestrator models as Triton sees them: requests in, responses out, on either path.

- `scheduling: step` (default): every request joins one `Scheduler` loop per model instance
  (step batching across requests, phase reuse with an LRU cache, cancellation between network
  evaluations). `execute` returns at once and each response is sent when its request is done,
  through its response sender; `decode_stream` / `mix_stream` (decoupled) also send a preview
  at the end of every phase.
- `scheduling: request`: `orchestration.answer`, one batched solve per `execute` (the
  request-at-a-time path, kept for comparison and for engines that batch on their own).

Metrics (pb_utils.MetricFamily, on Triton's metrics port): requests in flight, rows per tick,
phase cache hits / misses, network evaluations saved by reuse, time to the first preview.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grouplat import arrays
from grouplat.serving import contract as c
from grouplat.serving.engines import bridge_logging, fail, request_id, succeeded
from grouplat.serving.orchestration import (
    Orchestrator,
    RequestError,
    answer,
    config_parameters,
    orchestrator_from_triton,
    response,
    tensors_of,
)
from grouplat.serving.scheduler import Cancelled, Job, PhaseCache, Plan, Scheduler
from grouplat.solvers import Velocity

DEFAULT_CACHE_BYTES = 64 << 20  # phase-end states kept per model instance
CANCEL_POLL_S = 0.02  # how often a request's cancellation is asked for (an IPC call to Triton)
logger = logging.getLogger(__name__)


def model_from_triton(
    args: dict[str, str],
    pb_utils: Any,
    engine: Callable[[Path], Velocity] | None = None,
    placement: Any = None,
) -> Any:
    """The orchestrator model of one Triton model instance, from its `initialize` arguments
    (`engine`, `placement`: the torch adapter's, as for `orchestrator_from_triton`)."""
    bridge_logging(pb_utils)
    orchestrator, operation = orchestrator_from_triton(args, pb_utils, engine, placement)
    params = config_parameters(json.loads(args["model_config"]))
    if params.get(c.SCHEDULING_PARAM, "step") == "request" and operation not in c.STREAMS:
        return RequestModel(pb_utils, orchestrator, operation)
    cache_bytes = int(params.get(c.CACHE_BYTES_PARAM, DEFAULT_CACHE_BYTES))
    max_batch = int(params.get(c.VELOCITY_MAX_BATCH_PARAM, "64"))
    return StepModel(pb_utils, orchestrator, operation, cache_bytes, max_batch)


class RequestModel:
    """The request-at-a-time path: `answer` returns every response from `execute`."""

    def __init__(self, pb_utils: Any, orchestrator: Orchestrator, operation: str) -> None:
        self.pb_utils, self.orchestrator, self.operation = pb_utils, orchestrator, operation

    def execute(self, requests: list[Any]) -> list[Any]:
        return answer(self.pb_utils, requests, self.orchestrator, self.operation)

    def finalize(self) -> None:
        pass


class StepModel:
    """The scheduled path: requests join the step loop; responses go out through their senders."""

    def __init__(
        self, pb_utils: Any, orchestrator: Orchestrator, operation: str, cache_bytes: int, max_batch: int
    ) -> None:
        self.pb_utils, self.orchestrator = pb_utils, orchestrator
        self.operation = c.STREAMS.get(operation, operation)  # decode_stream runs a decode
        self.model = operation
        self.stream = operation in c.STREAMS
        self.cache = PhaseCache(cache_bytes) if cache_bytes > 0 else None
        self.scheduler = Scheduler(orchestrator.velocity, max_batch, on_tick=self._on_tick)
        self.metrics = Metrics(pb_utils, operation)
        self._saved = 0

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._submit(request)

    def finalize(self) -> None:
        self.scheduler.close()

    def _submit(self, request: Any) -> None:
        pb = self.pb_utils
        sender = request.get_response_sender()
        rid = request_id(request)
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            inputs, settings = self.orchestrator.read(
                self.operation, tensors_of(pb, request, self.operation), request
            )
        except RequestError as error:
            sender.send(fail(pb, self.model, rid, str(error), "INVALID_ARG"), flags=final)
            return
        except Exception as error:  # noqa: BLE001 - a bug shown by this request: its error only
            logger.debug("[request %s] reading the request raised", rid, exc_info=True)
            message = f"{self.model}: unexpected {type(error).__name__} while reading the request"
            sender.send(fail(pb, self.model, rid, message, "INTERNAL"), flags=final)
            return
        started = time.perf_counter()
        previews: list[float] = []
        k = self.orchestrator.space.k

        def preview(number: int, images: np.ndarray) -> None:
            if number < k:  # the last phase's image is the answer itself
                if not previews:
                    self.metrics.first_preview(time.perf_counter() - started)
                previews.append(time.perf_counter() - started)
                sender.send(self._images(arrays.to_numpy(images), number))

        plan = Plan(self.orchestrator.info, settings, self.cache, preview if self.stream else None)
        images = len(next(iter(inputs.values())))

        def finish(output: Any) -> None:
            self.metrics.done()
            if not isinstance(output, BaseException):
                output = arrays.to_numpy(output)  # from the engine's device, once per request
            if isinstance(output, Cancelled):
                sender.send(
                    fail(pb, self.model, rid, f"{self.model} cancelled by its caller", "CANCELLED"),
                    flags=final,
                )
                return
            if isinstance(output, BaseException) or not self.stream or not np.isfinite(output).all():
                sender.send(response(pb, self.operation, output, rid), flags=final)
            else:
                sender.send(self._images(output, k), flags=final)
            seconds = time.perf_counter() - started
            succeeded(
                self.model,
                rid,
                "%d image(s), %s %d steps in %.3f s",
                images,
                settings.solver,
                settings.steps,
                seconds,
            )

        last_poll = [0.0, False]

        def cancelled() -> bool:  # throttled: each poll is an IPC call to the server
            now = time.perf_counter()
            if now - last_poll[0] >= CANCEL_POLL_S:
                last_poll[0], last_poll[1] = now, bool(request.is_cancelled())
            return bool(last_poll[1])

        self.metrics.started()
        program = plan.program(self.operation, self.orchestrator.place(inputs))
        self.scheduler.submit(Job(program, finish, cancelled))

    def _images(self, images: np.ndarray, number: int) -> Any:
        pb = self.pb_utils
        phases = np.full((len(images), 1), number, np.int32)
        outputs = [pb.Tensor(c.IMAGE, np.ascontiguousarray(images, np.float32)), pb.Tensor(c.PHASE, phases)]
        return pb.InferenceResponse(output_tensors=outputs)

    def _on_tick(self, rows: int, live: int) -> None:
        self.metrics.tick(rows, live)
        if self.cache is not None:
            self.metrics.cache(self.cache.hits, self.cache.misses, self.cache.saved_nfe)


class Metrics:
    """grouplat's custom metrics of one model (pb_utils.MetricFamily); absent families are skipped."""

    def __init__(self, pb_utils: Any, model: str) -> None:
        families: Any = getattr(pb_utils, "MetricFamily", None)
        self.ok = families is not None
        if families is None:
            return
        labels = {"model": model}
        self._families: list[Any] = []  # a family must outlive its metrics

        def metric(name: str, text: str, kind: Any) -> Any:
            self._families.append(families(name=name, description=text, kind=kind))
            return self._families[-1].Metric(labels=labels)

        gauge, counter = families.GAUGE, families.COUNTER
        self.in_flight = metric("grouplat_requests_in_flight", "requests in the step loop", gauge)
        self.ticks = metric("grouplat_ticks_total", "step-loop ticks (one batched evaluation each)", counter)
        self.rows = metric(
            "grouplat_tick_rows_total", "images evaluated over all ticks (÷ ticks: batch)", counter
        )
        self.hits = metric("grouplat_phase_cache_hits_total", "phase-end states found in the cache", counter)
        self.misses = metric(
            "grouplat_phase_cache_misses_total", "phase-end states not in the cache", counter
        )
        self.saved = metric(
            "grouplat_nfe_saved_total", "network evaluations × images saved by phase reuse", counter
        )
        self.preview_s = metric(
            "grouplat_first_preview_seconds_total", "time to first preview, summed", counter
        )
        self.previews = metric("grouplat_first_previews_total", "requests that sent a preview", counter)
        self._seen = [0, 0, 0]
        self._live = 0

    def started(self) -> None:
        if self.ok:
            self._live += 1
            self.in_flight.set(self._live)

    def done(self) -> None:
        if self.ok:
            self._live -= 1
            self.in_flight.set(self._live)

    def tick(self, rows: int, live: int) -> None:
        if self.ok:
            self.ticks.increment(1)
            self.rows.increment(rows)

    def cache(self, hits: int, misses: int, saved: int) -> None:
        if self.ok:
            for i, (metric, value) in enumerate(
                zip((self.hits, self.misses, self.saved), (hits, misses, saved))
            ):
                if value > self._seen[i]:
                    metric.increment(value - self._seen[i])
                    self._seen[i] = value

    def first_preview(self, seconds: float) -> None:
        if self.ok:
            self.preview_s.increment(seconds)
            self.previews.increment(1)
