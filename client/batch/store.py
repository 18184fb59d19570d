"""The job store: a job folder, written so that a job killed at any point resumes exactly.

_plan.parquet    the source's items in a fixed order (index, id, path, image name), made on the
                 first run and frozen: item i belongs to shard i // shard_size
part-00000.parquet …
                 one row per item: id, path (a zip member is `ARCHIVE#member`, a latent
                 `FILE#row`), status ("ok" or "error"), error, and the result (encode: the
                 grouplat.v1.LatentCode bytes of the one latent, fingerprint, latent shape
                 [C, H·W]; decode and mix: the image's name, and its PNG bytes for a .zip).
                 Each shard is written whole to a temporary file and renamed into place, so a
                 shard file exists only complete, and a shard whose file exists is done.
_manifest.json   what the job is (operation, source, model, settings, shard size) and the shards
                 done; a re-run with other arguments is refused
_errors.csv      the items that failed, rewritten from the shards when the job completes
_lock            held (flock) while a run works on the folder
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from grouplat.client.batch.archive import write_zip
from grouplat.client.batch.sources import Source, image_names
from grouplat.client.batch.task import (
    ERRORS,
    LOCK,
    MANIFEST,
    OK,
    PLAN,
    SHARD,
    TMP,
    Job,
    JobError,
    Task,
    default_shard_size,
    layout,
    reference_code,
)
from grouplat.client.client import Client
from grouplat.client.served import Wanted

FORMAT, VERSION = "grouplat-batch", 1
ROW_GROUP = 32  # Parquet rows per row group: `batch decode` reads one group per batch, not a shard


def atomic_write(path: Path, write: Callable[[Path], object], tmp: Path) -> None:
    """Write `path` whole or not at all: to a temporary file in `tmp` (same file system), fsync, rename."""
    tmp.mkdir(parents=True, exist_ok=True)
    part = tmp / f"{uuid.uuid4().hex}-{path.name}"
    try:
        write(part)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def _write_json(path: Path, data: dict[str, Any], tmp: Path) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"), tmp)


def write_shard(job: Job, shard: int, records: list[dict[str, Any]]) -> dict[str, int]:
    """Write one shard atomically; return its counts for the manifest."""
    directory = Path(job.directory)
    if len(records) != min(job.shard_size, job.items - shard * job.shard_size):
        raise RuntimeError(f"shard {shard} got {len(records)} records, not its item count")  # a bug
    table = pa.Table.from_pylist(records, schema=job.schema())
    atomic_write(
        directory / SHARD.format(shard),
        lambda p: pq.write_table(table, p, row_group_size=ROW_GROUP),
        directory / TMP,
    )
    return {"rows": len(records), "errors": sum(r["status"] != OK for r in records)}


@dataclass
class State:
    """A job folder held by this run: the job, its plan, the manifest and the shards done."""

    job: Job
    plan: pa.Table
    manifest: dict[str, Any]
    done: dict[int, dict[str, int]] = field(default_factory=dict)

    def pending(self) -> list[int]:
        return [s for s in range(self.job.shards) if s not in self.done]

    def completed(self, shard: int, counts: dict[str, int]) -> None:
        self.done[shard] = counts
        self.save()

    def save(self) -> None:
        self.manifest["done"] = {str(s): self.done[s] for s in sorted(self.done)}
        directory = Path(self.job.directory)
        _write_json(directory / MANIFEST, self.manifest, directory / TMP)

    def finish(self) -> None:
        """All shards done: write the errors file (and the zip of images); mark the manifest complete."""
        job, directory = self.job, Path(self.job.directory)
        failed: list[dict[str, Any]] = []
        for shard in sorted(s for s, counts in self.done.items() if counts["errors"]):
            table = pq.read_table(directory / SHARD.format(shard), columns=["id", "path", "status", "error"])
            failed += [row for row in table.to_pylist() if row["status"] != OK]

        def write_errors(path: Path) -> None:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, ["id", "path", "error"], extrasaction="ignore")
                writer.writeheader()
                writer.writerows(failed)

        atomic_write(directory / ERRORS, write_errors, directory / TMP)
        images = job.images
        if (
            job.zipped
            and images is not None
            and not (self.manifest.get("finished") and Path(images).exists())
        ):
            atomic_write(Path(images), lambda p: write_zip(job, p), directory / TMP)
        self.manifest["finished"] = True
        self.manifest["errors"] = len(failed)
        self.save()
        shutil.rmtree(directory / TMP, ignore_errors=True)


@contextlib.contextmanager
def open_job(
    task: Task, source: str, out: str | os.PathLike[str], client: Client, shard_size: int | None = None
) -> Iterator[State]:
    """Take the job folder (create the plan and manifest, or check and resume them); hold its lock.

    Args:
        task: what to do with each item.
        source: SRC (see grouplat.client.batch.sources).
        out: `--out`: see `layout`.
        client: a client of the servers (the model's identity and defaults; mix: the reference).
        shard_size: items per shard of a new job (default `default_shard_size`).

    Yields:
        The `State` of the job, its folder locked until the block ends.

    Raises:
        JobError: the folder holds another job (or is no job folder), or another run holds it.
        ValueError: bad task, source, settings or `out`; no items.
        FileNotFoundError: no such source or reference.
        ModelMismatchError: a reference latent of another model.
    """
    task.check()
    src = Source.parse(source, task.op)
    info = client.info()
    settings: dict[str, Any] = {"steps": task.steps, "solver": task.solver, "schedule": task.schedule}
    if task.op != "decode":  # resolved once (decode: the overrides of each latent's own settings)
        chosen = Wanted(None, task.steps, task.solver or None, task.schedule or None).resolve(info)
        settings = {"steps": chosen.steps, "solver": chosen.solver, "schedule": chosen.schedule}
    reference, reference_hash = reference_code(task, client, settings) if task.op == "mix" else (None, None)
    directory, images = layout(task.op, out)
    options = {"dtype": task.dtype, "resize": task.resize, "groups": list(task.groups)}
    identity = {
        "format": FORMAT,
        "version": VERSION,
        "op": task.op,
        "source": asdict(src),
        "model": info.fingerprint,
        "settings": settings,
        "options": {**options, "reference_sha256": reference_hash},
        "images": str(images) if images else None,
    }
    if directory.exists() and any(directory.iterdir()) and not (directory / LOCK).exists():
        raise JobError(f"{directory} exists and is not a batch job folder: choose a new --out")
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another batch job is running in {directory}") from None
        shutil.rmtree(directory / TMP, ignore_errors=True)  # leftovers of a killed run
        manifest = _read_manifest(directory)
        if manifest is None:
            ids, paths = src.scan(exclude=[p for p in (directory, images) if p is not None])
            if not ids:
                raise ValueError(f"SRC {source!r} holds no items")
            names = image_names(ids) if task.op != "encode" else [None] * len(ids)
            columns = [
                ("index", pa.int64()),
                ("id", pa.string()),
                ("path", pa.string()),
                ("name", pa.string()),
            ]
            plan = pa.table(
                {"index": pa.array(range(len(ids)), pa.int64()), "id": ids, "path": paths, "name": names},
                schema=pa.schema(columns),
            )
            atomic_write(directory / PLAN, lambda p: pq.write_table(plan, p), directory / TMP)
            size = shard_size or default_shard_size(info.space.shape)
            manifest = {**identity, "shard_size": size, "items": len(ids), "created": time.time(), "done": {}}
            _write_json(directory / MANIFEST, manifest, directory / TMP)
        else:
            differ = [key for key, value in identity.items() if manifest.get(key) != value]
            if shard_size is not None and shard_size != manifest["shard_size"]:
                differ.append("shard_size")
            if differ:
                raise JobError(
                    f"{directory} holds another job (it differs in {', '.join(differ)}): re-run it with "
                    "its own arguments, or choose a new --out"
                )
            plan = pq.read_table(directory / PLAN)
        job = Job(task=task, source=src, directory=str(directory), images=str(images) if images else None,
                  fingerprint=info.fingerprint, shape=info.space.shape, settings=settings,
                  shard_size=int(manifest["shard_size"]), items=int(manifest["items"]),
                  reference=reference)  # fmt: skip
        yield State(job, plan, manifest, _done_shards(job, manifest))


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest, or None for a job that never got one (its plan is then made again)."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise JobError(f"{directory / MANIFEST} is not a {FORMAT} manifest of version {VERSION}")
    return manifest


def _done_shards(job: Job, manifest: dict[str, Any]) -> dict[int, dict[str, int]]:
    """Shards whose file exists; a file that the manifest has not recorded yet is counted from itself."""
    recorded = {int(s): counts for s, counts in manifest.get("done", {}).items()}
    done = {}
    for file in Path(job.directory).glob("part-*.parquet"):
        shard = int(file.stem.split("-")[1])
        if shard >= job.shards:
            raise JobError(f"{file} is beyond this job's {job.shards} shards: the folder is damaged")
        if shard in recorded:
            done[shard] = recorded[shard]
        else:  # killed between the rename and the manifest update
            status = pq.read_table(file, columns=["status"]).column("status").to_pylist()
            done[shard] = {"rows": len(status), "errors": sum(s != OK for s in status)}
    return done
