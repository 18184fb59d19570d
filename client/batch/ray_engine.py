"""The Ray engine of batch jobs: the same shards as the local engine, run by Ray Data.

    plan rows of the pending shards ──ray.data.from_arrow──▶ one block per shard
      ──map_batches(_ShardStage, batch_size=None, compute=ActorPoolStrategy(size=N))──▶ each of the
        N actors holds a client to the servers, reads a shard's inputs, calls the servers batch by
        batch and writes the shard's Parquet file (atomically, as the local engine does)
      ──iter_rows──▶ the driver records each finished shard in the manifest

A block is one whole shard, so a shard is written by exactly one actor call: a job stopped or killed
part-way resumes from the shard files, exactly as with the local engine, and both engines write the
same rows. Locally `ray.init()` starts a Ray on this machine; with `address` ("auto", "ray://host:10001")
the job runs on a cluster. There, every node must see the inputs and the job folder at the same paths
(a shared file system), and the servers' addresses must be reachable from every node: typically
Triton replicas behind one load-balanced address (a Kubernetes Service), or several --server
addresses that each actor spreads over.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from grouplat.client.batch.store import write_shard
from grouplat.client.batch.task import Callback, Job, PlanRow
from grouplat.client.batch.worker import Worker
from grouplat.client.transport import DEFAULT_TIMEOUT

ACTOR_CPUS = 0.5  # an actor mostly waits on the server; the servers do the work


class _ShardStage:
    """A Ray Data actor: one client (to every server, starting at a random one); one shard per call."""

    def __init__(self, job: Job, endpoints: Sequence[str], timeout: float, batch_size: int) -> None:
        k = random.randrange(len(endpoints))
        self.worker = Worker(job, [*endpoints[k:], *endpoints[:k]], timeout)
        self.batch_size = batch_size

    def __call__(self, block: pa.Table) -> pa.Table:
        job = self.worker.job
        shards = set(block.column("shard").to_pylist())
        if len(shards) != 1:
            raise RuntimeError(f"a Ray block holds parts of shards {sorted(shards)}, not one shard")  # a bug
        shard = shards.pop()
        columns = block.to_pydict()
        rows = [PlanRow(*r) for r in zip(columns["index"], columns["id"], columns["path"], columns["name"])]
        records: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch_size):
            records += self.worker.process(rows[start : start + self.batch_size])
        counts = write_shard(job, shard, records)
        return pa.table({"shard": [shard], "rows": [counts["rows"]], "errors": [counts["errors"]]})


def run_on_ray(
    job: Job,
    plan: pa.Table,
    shards: Sequence[int],
    endpoints: Sequence[str],
    *,
    concurrency: int = 4,
    batch_size: int = 8,
    timeout: float = DEFAULT_TIMEOUT,
    address: str | None = None,
    on_shard: Callback,
    on_items: Callable[[int], None] = lambda n: None,
) -> None:
    """Process `shards` on Ray Data with `concurrency` actors, one whole shard per actor call.

    Args:
        job, plan, shards, endpoints, batch_size, timeout, on_shard, on_items: as `run_local`.
        concurrency: actors (at most one per shard).
        address: the Ray cluster ("auto", "ray://host:10001"); None starts a local Ray. A Ray that
            is already running is used as it is, and left running.

    Raises:
        RuntimeError: Ray could not be started or reached.
    """
    import ray

    if not shards:
        return
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # Ray raises plain Exceptions (a node that did not start in time, …)
            raise RuntimeError(f"could not start or reach Ray ({address or 'a local Ray'}): {e}") from e
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job has its own
        tables = []
        for shard in shards:
            table = plan.slice(shard * job.shard_size, job.shard_size)
            tables.append(table.append_column("shard", pa.array([shard] * len(table), pa.int64())))
        done = ray.data.from_arrow(tables).map_batches(
            _ShardStage,
            batch_size=None,  # a whole block, that is a whole shard, per call
            batch_format="pyarrow",
            fn_constructor_args=(job, list(endpoints), timeout, batch_size),
            compute=ray.data.ActorPoolStrategy(size=min(concurrency, len(shards))),
            num_cpus=ACTOR_CPUS,
        )
        for row in done.iter_rows():
            counts = {"rows": int(row["rows"]), "errors": int(row["errors"])}
            on_shard(int(row["shard"]), counts)
            on_items(counts["rows"])
    finally:
        if started:
            ray.shutdown()
