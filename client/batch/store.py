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
_manifest.json   what the job is (operation, source, model, settings, shard size), the shards
                 done, the shards begun (`started`: decode and mix into a folder write each image
                 as they go) and whether the .zip was begun (`zipping`); a re-run with other
                 arguments is refused
_errors.csv      the items that failed, rewritten from the shards when the job completes
_lock            held (flock) while a run works on the folder

Every file is written through `grouplat.client.batch.files`: only under the job's root, never
through a symbolic link. A job never replaces a file it did not write: an image (or the .zip) that
is already there when the job starts (or, for an image, when its shard starts) and that the job's
state does not account for is an error naming it, unless the job runs with `overwrite`. What the
state accounts for: the images of the shards begun by earlier runs of the job (a re-run writes them
again), and the .zip once the job began writing it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from grouplat.client.batch.archive import write_zip
from grouplat.client.batch.files import exists, folder, open_file, remove_tree, taken, write_file
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
    job_root,
    layout,
    reference_code,
)
from grouplat.client.client import Client
from grouplat.client.served import Wanted

FORMAT, VERSION = "grouplat-batch", 1
ROW_GROUP = 32  # Parquet rows per row group: `batch decode` reads one group per batch, not a shard


atomic_write = write_file  # the name from before `files`: write a file whole or not at all


def _write_json(root: Path, relative: str, data: dict[str, Any], tmp: str) -> None:
    text = (json.dumps(data, indent=1) + "\n").encode()
    write_file(root, relative, lambda f: f.write(text), tmp)


def write_shard(job: Job, shard: int, records: list[dict[str, Any]]) -> dict[str, int]:
    """Write one shard atomically; return its counts for the manifest."""
    if len(records) != min(job.shard_size, job.items - shard * job.shard_size):
        raise RuntimeError(f"shard {shard} got {len(records)} records, not its item count")  # a bug
    table = pa.Table.from_pylist(records, schema=job.schema())
    write_file(
        job.root,
        job.inside(SHARD.format(shard)),
        lambda f: pq.write_table(table, f, row_group_size=ROW_GROUP),
        job.inside(TMP),
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

    def start(self, shards: list[int] | range) -> None:
        """Record shards as begun before their images are written (decode, mix into a folder)."""
        if self.job.images is None or self.job.zipped:
            return
        started = set(self.manifest.get(STARTED, []))
        if not started.issuperset(shards):
            self.manifest[STARTED] = sorted(started.union(shards))
            self.save()

    def completed(self, shard: int, counts: dict[str, int]) -> None:
        self.done[shard] = counts
        self.save()

    def save(self) -> None:
        self.manifest["done"] = {str(s): self.done[s] for s in sorted(self.done)}
        job = self.job
        _write_json(job.root, job.inside(MANIFEST), self.manifest, job.inside(TMP))

    def finish(self) -> None:
        """All shards done: write the errors file (and the zip of images); mark the manifest complete.

        Raises:
            JobError: the .zip appeared while the job ran (it is not replaced).
        """
        job = self.job
        failed: list[dict[str, Any]] = []
        for shard in sorted(s for s, counts in self.done.items() if counts["errors"]):
            with open_file(job.root, job.inside(SHARD.format(shard))) as f:
                table = pq.read_table(f, columns=["id", "path", "status", "error"])
            failed += [row for row in table.to_pylist() if row["status"] != OK]

        def write_errors(f: BinaryIO) -> None:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, ["id", "path", "error"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(failed)
            text.flush()
            text.detach()  # the file stays open for the fsync

        write_file(job.root, job.inside(ERRORS), write_errors, job.inside(TMP))
        images = job.images
        if (
            job.zipped
            and images is not None
            and not (self.manifest.get("finished") and os.path.lexists(images))
        ):
            self._write_zip(Path(images))
        self.manifest["finished"] = True
        self.manifest["errors"] = len(failed)
        self.save()
        remove_tree(job.root, job.inside(TMP))

    def _write_zip(self, path: Path) -> None:
        job = self.job
        ours = _zip_is_ours(self.manifest)  # an earlier run may have written it
        if not self.manifest.get(ZIPPING):
            self.manifest[ZIPPING] = True  # recorded first: a run killed once the zip is there resumes
            self.save()
        try:
            write_file(job.root, path.name, lambda f: write_zip(job, f), job.inside(TMP),
                       replace=ours or job.overwrite)  # fmt: skip
        except FileExistsError:
            self.manifest[ZIPPING] = False
            self.save()
            raise JobError(_not_ours(path)) from None


STARTED, ZIPPING = "started", "zipping"  # manifest keys: what the job may have written outside its folder


def _not_ours(path: Path, more: int = 0) -> str:
    others = f" (and {more} more file{'s' * (more != 1)} of this job's output)" if more else ""
    return (
        f"{path} exists and this batch job did not write it{others}: remove it, choose another --out, "
        "or pass --overwrite to replace it"
    )


def _zip_is_ours(manifest: dict[str, Any] | None) -> bool:
    return bool(manifest and (manifest.get("finished") or manifest.get(ZIPPING)))


def _resumed(manifest: dict[str, Any] | None, shards: int) -> frozenset[int]:
    """The shards whose images earlier runs may have written (all, for a job that recorded none)."""
    if manifest is None:
        return frozenset()
    if STARTED not in manifest:  # a job begun before the manifest recorded the shards begun
        return frozenset(range(shards))
    return frozenset(int(s) for s in manifest[STARTED])


@contextlib.contextmanager
def open_job(
    task: Task,
    source: str,
    out: str | os.PathLike[str],
    client: Client,
    shard_size: int | None = None,
    *,
    overwrite: bool = False,
) -> Iterator[State]:
    """Take the job folder (create the plan and manifest, or check and resume them); hold its lock.

    Args:
        task: what to do with each item.
        source: SRC (see grouplat.client.batch.sources).
        out: `--out`: see `layout`.
        client: a client of the servers (the model's identity and defaults; mix: the reference).
        shard_size: items per shard of a new job (default `default_shard_size`).
        overwrite: replace images (or the .zip) already in `out` that the job did not write.

    Yields:
        The `State` of the job, its folder locked until the block ends.

    Raises:
        JobError: the folder holds another job (or is no job folder), or another run holds it; a
            symbolic link in `out` where the job would write; a file in `out` where the job would
            write one that it did not write itself (without `overwrite`).
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
        settings = {"steps": chosen.steps, "solver": chosen.solver, "schedule": chosen.schedule,
                    "encode_schedule": chosen.encode_schedule,
                    "encode_steps": chosen.encode_steps}  # fmt: skip
    reference, reference_hash = reference_code(task, client, settings) if task.op == "mix" else (None, None)
    directory, images = layout(task.op, out)
    root = job_root(directory, images)
    here = os.path.relpath(directory, root)  # the job folder, relative to the root

    def at(name: str) -> str:
        return os.path.normpath(os.path.join(here, name))

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
    created = not os.path.lexists(directory)
    with folder(root, here, create=True) as fd:
        if os.listdir(fd) and not exists(fd, LOCK):
            raise JobError(f"{directory} exists and is not a batch job folder: choose a new --out")
        lock = _lock(fd, directory / LOCK)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another batch job is running in {directory}") from None
        remove_tree(root, at(TMP))  # leftovers of a killed run (a link there is removed, not followed)
        manifest = _read_manifest(root, at(MANIFEST), directory)
        new = manifest is None
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
            size = shard_size or default_shard_size(info.space.shape)
            manifest = {**identity, "shard_size": size, "items": len(ids), "created": time.time(), "done": {},
                        STARTED: []}  # fmt: skip
            resumed: frozenset[int] = frozenset()
        else:
            differ = [key for key, value in identity.items() if manifest.get(key) != value]
            if shard_size is not None and shard_size != manifest["shard_size"]:
                differ.append("shard_size")
            if differ:
                raise JobError(
                    f"{directory} holds another job (it differs in {', '.join(differ)}): re-run it with "
                    "its own arguments, or choose a new --out"
                )
            with open_file(root, at(PLAN)) as f:
                plan = pq.read_table(f)
            resumed = _resumed(manifest, -(-int(manifest["items"]) // int(manifest["shard_size"])))
        job = Job(task=task, source=src, directory=str(directory), images=str(images) if images else None,
                  fingerprint=info.fingerprint, shape=info.space.shape, settings=settings,
                  shard_size=int(manifest["shard_size"]), items=int(manifest["items"]),
                  reference=reference, overwrite=overwrite, resumed=resumed)  # fmt: skip
        done = {} if new else _done_shards(job, manifest)
        try:
            _check_outputs(job, plan, done, None if new else manifest)
        except JobError:
            if new and created:  # leave nothing behind: the folder holds only the lock
                os.close(lock)
                lock = -1
                remove_tree(root, here)
            raise
        if new:
            write_file(root, at(PLAN), lambda f: pq.write_table(plan, f), at(TMP))
            _write_json(root, at(MANIFEST), manifest, at(TMP))
        yield State(job, plan, manifest, done)
    finally:
        if lock != -1:
            os.close(lock)


def _lock(fd: int, path: Path) -> int:
    """The job folder's lock file, open (made if missing); a link there is refused, not followed."""
    try:
        return os.open(path.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JobError(f"{path} is a symbolic link: a batch job follows no link in its folder") from None
        raise


def _check_outputs(job: Job, plan: pa.Table, done: dict[int, Any], manifest: dict[str, Any] | None) -> None:
    """Refuse to start where the job would write through a link, or over a file it did not write.

    Decode and mix into a folder: every image of a pending shard (no folder of its path may be a
    link) and, for the shards no earlier run began, no file may be there yet. Into a .zip: the .zip
    may be there only once the job began writing it.
    """
    if job.images is None:
        return
    images = Path(job.images)
    if job.zipped:
        if not (job.overwrite or _zip_is_ours(manifest)) and os.path.lexists(images):
            raise JobError(_not_ours(images))
        return
    names = plan.column("name").to_pylist()
    size = job.shard_size

    def targets() -> Iterator[tuple[str, bool]]:
        for shard in range(job.shards):
            if shard not in done:
                fresh = not job.overwrite and shard not in job.resumed
                for name in names[shard * size : (shard + 1) * size]:
                    yield name, fresh

    found = taken(images, targets())
    if found:
        raise JobError(_not_ours(images / found[0], len(found) - 1))


def _read_manifest(root: Path, relative: str, directory: Path) -> dict[str, Any] | None:
    """The manifest, or None for a job that never got one (its plan is then made again)."""
    try:
        with open_file(root, relative) as f:
            manifest: dict[str, Any] = json.loads(f.read())
    except FileNotFoundError:
        return None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise JobError(f"{directory / MANIFEST} is not a {FORMAT} manifest of version {VERSION}")
    return manifest


def _done_shards(job: Job, manifest: dict[str, Any]) -> dict[int, dict[str, int]]:
    """Shards whose file exists; a file that the manifest has not recorded yet is counted from itself."""
    recorded = {int(s): counts for s, counts in manifest.get("done", {}).items()}
    done = {}
    with folder(job.root, job.inside(".")) as fd:
        entries = sorted(n for n in os.listdir(fd) if re.fullmatch(r"part-\d+\.parquet", n))
        links = [n for n in entries if stat.S_ISLNK(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)]
    for name in entries:
        file = Path(job.directory) / name
        if name in links:
            raise JobError(f"{file} is a symbolic link, not a shard of this job: the folder is damaged")
        shard = int(name[5:-8])
        if shard >= job.shards:
            raise JobError(f"{file} is beyond this job's {job.shards} shards: the folder is damaged")
        if shard in recorded:
            done[shard] = recorded[shard]
        else:  # killed between the rename and the manifest update
            with open_file(job.root, job.inside(name)) as f:
                status = pq.read_table(f, columns=["status"]).column("status").to_pylist()
            done[shard] = {"rows": len(status), "errors": sum(s != OK for s in status)}
    return done
