"""A batch job: every item of a source through the servers once, into Parquet shards; resumable, exact.

The entry point is `run` (the `grouplat batch` commands call it); the job's parts are
- `sources`: the five kinds of SRC (folder, glob, zip, list, latents), scanned and read;
- `task`: the task, the prepared job, the plan's rows, the names in a job folder;
- `store`: the job folder (plan, shards, manifest, errors, lock), written atomically (`open_job`);
- `files`: every file written under the job's root only, following no link, replacing none of others;
- `worker`: items in, records out, with its own client; `local`: the threaded engine
  (`ray_engine`: the same shards on Ray Data); `archive`: the .zip of images at the end.

A re-run does only the shards whose file is missing, so a job killed at any point (kill -9 too) and
run again ends with every item exactly once. Item errors are recorded and the job goes on; server
trouble that outlasts the client's retries (`timeout`) stops the job, and a re-run resumes it.
For `encode` the job folder is `--out` itself, a Parquet data set (pyarrow skips the files whose
names start with "_" or "."). Decode and mix write images to `--out`, a folder (the job folder is
then `OUT/_batch`) or a `.zip` (assembled when the job completes; the job folder is `OUT.zip.batch`).

A job writes only inside `--out` (and, for a .zip, its job folder beside it), follows no symbolic
link there, and never replaces a file it did not write unless run with `overwrite` (`files`, `store`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grouplat.client.batch.local import DEFAULT_CONCURRENCY, run_local
from grouplat.client.batch.sources import LABELS, Source, image_names
from grouplat.client.batch.store import FORMAT, ROW_GROUP, VERSION, State, atomic_write, open_job, write_shard
from grouplat.client.batch.task import (
    DEFAULT_SHARD_SIZE,
    ERROR,
    ERRORS,
    LOCK,
    MANIFEST,
    OK,
    OPERATIONS,
    PLAN,
    SHARD,
    SHARD_BYTES,
    TMP,
    Callback,
    Job,
    JobError,
    PlanRow,
    Task,
    default_shard_size,
    layout,
    plan_rows,
)
from grouplat.client.batch.worker import Worker
from grouplat.client.client import Client
from grouplat.client.transport import DEFAULT_TIMEOUT, parse_endpoints
from grouplat.serving.contract import DECODE, ENCODE

__all__ = [  # the names this module had before the split stay importable from it
    "DEFAULT_CONCURRENCY", "DEFAULT_SHARD_SIZE", "ENGINES", "ERROR", "ERRORS", "FORMAT", "LABELS", "LOCK",
    "MANIFEST", "OK", "OPERATIONS", "PLAN", "ROW_GROUP", "SHARD", "SHARD_BYTES", "TMP", "VERSION",
    "Callback", "Job", "JobError", "PlanRow", "Source", "State", "Summary", "Task", "Worker",
    "atomic_write", "default_shard_size", "image_names", "layout", "max_batch", "open_job", "plan_rows",
    "run", "run_local", "write_shard",
]  # fmt: skip

ENGINES = ("local", "ray")


@dataclass
class Summary:
    """What a run did (`str(summary)` is the report `grouplat batch` prints)."""

    op: str
    items: int  # in the job
    done_before: int  # items in shards done by earlier runs
    done_now: int  # items done by this run
    errors: int  # error rows in the whole output
    seconds: float  # this run
    output: str  # the data set (encode) or the images (decode, mix)
    errors_file: str
    shards: int

    @property
    def rate(self) -> float:
        return self.done_now / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [
            f"{self.op}: {self.items} items in {self.shards} shard{'s' * (self.shards != 1)} → {self.output}",
            f"  this run: {self.done_now} items in {self.seconds:.1f} s ({self.rate:.1f} items/s); "
            f"{self.done_before} done before",
            f"  errors: {self.errors}" + (f" (listed in {self.errors_file})" if self.errors else ""),
        ]
        return "\n".join(lines)


def max_batch(client: Client, op: str) -> int:
    """The largest request the served models take (their max_batch_size)."""
    models = {"encode": [ENCODE], "decode": [DECODE], "mix": [ENCODE, DECODE]}[op]
    sizes = [int(client._run(client._plan_config(m), None).get("max_batch_size") or 8) for m in models]
    return max(1, min(sizes))


def run(
    task: Task,
    source: str,
    out: str | os.PathLike[str],
    server: str | Sequence[str] | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_size: int | None = None,
    shard_size: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    engine: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Summary:
    """Run (or resume) a batch job.

    Args:
        task: the operation and its options.
        source: SRC: a folder, a glob pattern, a .zip, a .parquet/.csv list of paths, or (decode)
            the output of batch encode.
        out: encode: the output folder (a Parquet data set); decode, mix: an image folder or a .zip.
        server: the servers ("host:port", comma-separated, or a list; default $GROUPLAT_SERVER).
        concurrency: requests in flight (local threads, or Ray actors).
        batch_size: items per request (default: the served models' max_batch_size).
        shard_size: items per shard of a new job (default `default_shard_size`).
        timeout: seconds per request, retries included.
        engine: `local` (threads) or `ray` (Ray Data; `ray_address` names a cluster).
        progress: show a progress bar (tqdm).
        overwrite: replace images (or the .zip) already in `out` that this job did not write; without
            it such a file is an error naming it (a re-run of the job rewrites its own files).

    Returns:
        The `Summary` of this run; the errors file lists the items that failed.

    Raises:
        JobError: `out` holds another job, or another run holds it; a symbolic link in `out` where
            the job would write (it writes only inside `out` and follows no link there); a file
            in `out` where the job would write one, that it did not write (without `overwrite`).
        ValueError: bad arguments, task, source or settings.
        FileNotFoundError: no such source or reference.
        ClientError: server trouble that outlasted the retries (re-run to resume).

    Example:
        run(Task("encode", steps=40), "photos/", "latents/", ["a:8001", "b:8001"], concurrency=8)
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if (
        concurrency < 1
        or (batch_size is not None and batch_size < 1)
        or (shard_size is not None and shard_size < 1)
    ):
        raise ValueError("concurrency, batch size and shard size must be at least 1")
    endpoints = parse_endpoints(server)
    start = time.monotonic()
    with (
        Client(endpoints, timeout=timeout) as client,
        open_job(task, source, out, client, shard_size, overwrite=overwrite) as state,
    ):
        job = state.job
        batch = batch_size or max_batch(client, task.op)
        pending = state.pending()
        before = sum(counts["rows"] for counts in state.done.values())
        bar = _progress(job, before, progress)
        done_now = 0

        def on_items(n: int) -> None:
            nonlocal done_now
            done_now += n
            bar.update(n)

        try:
            if engine == "local":
                run_local(job, state.plan, pending, endpoints, concurrency=concurrency, batch_size=batch,
                          timeout=timeout, on_shard=state.completed, on_items=on_items,
                          on_start=lambda shard: state.start([shard]))  # fmt: skip
            else:
                from grouplat.client.batch.ray_engine import run_on_ray

                state.start(pending)  # Ray runs the shards in any order

                run_on_ray(job, state.plan, pending, endpoints, concurrency=concurrency, batch_size=batch,
                           timeout=timeout, address=ray_address, on_shard=state.completed,
                           on_items=on_items)  # fmt: skip
        finally:
            bar.close()
        state.finish()
        return Summary(
            op=task.op,
            items=job.items,
            done_before=before,
            done_now=done_now,
            errors=int(state.manifest["errors"]),
            seconds=time.monotonic() - start,
            output=job.images or job.directory,
            errors_file=str(Path(job.directory) / ERRORS),
            shards=job.shards,
        )


def _progress(job: Job, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=job.items,
        initial=initial,
        unit="item",
        desc=f"batch {job.task.op}",
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
    )
