"""The local engine of batch jobs: batches pipelined over threads, each with its own gRPC client."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from grouplat.client.batch.store import write_shard
from grouplat.client.batch.task import Callback, Job, PlanRow, plan_rows
from grouplat.client.batch.worker import Worker
from grouplat.client.transport import DEFAULT_TIMEOUT

DEFAULT_CONCURRENCY = 4  # concurrent requests (threads, each with its own gRPC channel)


def run_local(
    job: Job,
    plan: pa.Table,
    shards: Sequence[int],
    endpoints: Sequence[str],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_size: int = 8,
    timeout: float = DEFAULT_TIMEOUT,
    on_shard: Callback,
    on_items: Callable[[int], None] = lambda n: None,
    on_start: Callable[[int], None] = lambda shard: None,
) -> None:
    """Process `shards`: up to 2 × `concurrency` batches in flight, each shard written when complete.

    Thread k's client starts at server k (mod the number of servers) and fails over to the others.

    Args:
        job, plan: the prepared job and its plan (`open_job`).
        shards: the shards to do.
        endpoints: the servers.
        concurrency: threads, so requests in flight.
        batch_size: items per request.
        timeout: seconds per request, retries included.
        on_shard: called with (shard, counts) once a shard's file is written.
        on_items: called with the number of items of each finished batch.
        on_start: called with each shard before its first batch is sent.

    Raises:
        ClientError: server trouble that outlasted the retries (the shards written so far stay).
    """
    local = threading.local()
    workers: list[Worker] = []
    lock = threading.Lock()

    def work(rows: list[PlanRow]) -> list[dict[str, Any]]:
        worker = getattr(local, "worker", None)
        if worker is None:
            with lock:
                k = len(workers) % len(endpoints)
                worker = Worker(job, [*endpoints[k:], *endpoints[:k]], timeout)
                workers.append(worker)
            local.worker = worker
        return worker.process(rows)

    window: deque[tuple[int, int, Future[list[dict[str, Any]]]]] = deque()
    records: dict[int, list[dict[str, Any]]] = {}

    def collect() -> None:
        shard, left, future = window.popleft()
        done = future.result()
        records.setdefault(shard, []).extend(done)
        on_items(len(done))
        if left == 0:
            on_shard(shard, write_shard(job, shard, records.pop(shard)))

    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="grouplat-batch")
    try:
        for shard in shards:
            rows = plan_rows(plan, job, shard)
            on_start(shard)
            starts = range(0, len(rows), batch_size)
            for n, start in enumerate(starts):
                future = pool.submit(work, rows[start : start + batch_size])
                window.append((shard, len(starts) - 1 - n, future))
                if len(window) >= 2 * concurrency:
                    collect()
        while window:
            collect()
    finally:
        pool.shutdown(wait=not window, cancel_futures=True)  # on failure: do not wait for the rest
        for worker in workers:
            worker.close()
