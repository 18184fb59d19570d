"""A batch job: every item of a source through the server once, into Parquet shards; resumable, exact.

A job turns a source (SRC) into an output, item by item, in a job folder:

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
    _errors.csv      the items that failed (unreadable, not an image, wrong size, refused by the
                     server), rewritten from the shards when the job completes
    _lock            held (flock) while a run works on the folder

A re-run does only the shards whose file is missing, so a job killed at any point (kill -9 too) and
run again ends with every item exactly once. Item errors are recorded and the job goes on; server
trouble that outlasts the client's retries (`timeout`) stops the job, and a re-run resumes it.
For `encode` the job folder is `--out` itself, a Parquet data set (pyarrow skips the files whose
names start with "_" or "."). Decode and mix write images to `--out`, a folder (the job folder is
then `OUT/_batch`) or a `.zip` (assembled when the job completes; the job folder is `OUT.zip.batch`).

The local engine (`run_local`) pipelines batches over `concurrency` threads, each with its own gRPC
client (and channel), spread over the servers; `grouplat.client.batch.ray_engine` runs the same
shards on Ray Data.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from grouplat.client.client import Client
from grouplat.client.errors import ModelMismatchError
from grouplat.client.images import _from_pil, load_image, to_pil
from grouplat.client.latents import DTYPES, Latents, Settings
from grouplat.client.transport import DEFAULT_TIMEOUT, parse_endpoints

FORMAT, VERSION = "grouplat-batch", 1
OPERATIONS = ("encode", "decode", "mix")
ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 1000  # items per shard (the unit of work that survives a crash), fewer for big images:
SHARD_BYTES = 2**28  # at most about this many bytes of float32 latents in memory per shard (256 MiB)
DEFAULT_CONCURRENCY = 4  # concurrent requests (threads, each with its own gRPC channel)
ROW_GROUP = 32  # Parquet rows per row group: `batch decode` reads one group per batch, not a shard
MANIFEST, PLAN, ERRORS, LOCK, TMP = "_manifest.json", "_plan.parquet", "_errors.csv", "_lock", ".tmp"
SHARD = "part-{:05d}.parquet"
OK, ERROR = "ok", "error"
LABELS = "dataset.json"  # EDM-style archives and folders: the labels file beside the images, not an item
Callback = Callable[[int, dict[str, int]], None]


class JobError(ValueError):
    """The job folder holds another job, or cannot be used."""


# -- what to do and where the items come from ---------------------------------------------------
@dataclass(frozen=True)
class Task:
    """What happens to each item: the operation and its options (they are part of the job's identity)."""

    op: str  # encode | decode | mix
    steps: int | None = None  # generation settings; None: the model's (decode: each latent's own)
    solver: str | None = None
    schedule: str | None = None
    dtype: str = "float32"  # encode: how the latent codes store coefficients (float16 halves them)
    resize: bool = False  # encode, mix: centre-crop and resize images to the model's size
    reference: str | None = None  # mix: the reference, an image file or a .latent file
    groups: tuple[int, ...] = ()  # mix: the groups taken from the reference (S1 = 1)

    def check(self) -> Task:
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown batch operation {self.op!r}: expected one of {', '.join(OPERATIONS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown latent dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.op == "mix" and (not self.reference or not self.groups):
            raise ValueError("batch mix needs a reference (--reference) and the groups to take (--groups)")
        return self


@dataclass(frozen=True)
class Source:
    """The items of SRC: `folder`, `glob`, `zip`, `list` (Parquet/CSV of paths) or `latents`."""

    kind: str
    location: str  # an absolute path (glob: an absolute pattern)

    @classmethod
    def parse(cls, spec: str, op: str) -> Source:
        if any(c in spec for c in "*?["):
            source = cls("glob", os.path.abspath(spec))
        else:
            path = Path(spec)
            if not path.exists():
                raise FileNotFoundError(f"no such source: {spec}")
            location = str(path.resolve())
            if _holds_latents(path):
                source = cls("latents", location)
            elif path.is_dir():
                source = cls("folder", location)
            elif path.suffix.lower() == ".zip":
                source = cls("zip", location)
            elif path.suffix.lower() in (".parquet", ".csv"):
                source = cls("list", location)
            else:
                raise ValueError(
                    f"SRC {spec!r} is not a folder, a glob pattern, a .zip archive, a .parquet/.csv list "
                    "of paths (column 'path', optional 'id'), or latents from batch encode"
                )
        if op == "decode" and source.kind != "latents":
            raise ValueError(
                f"batch decode reads latents: SRC must be the output folder of batch encode or a Parquet "
                f"file with a 'latent' column, not {spec!r}"
            )
        if op == "encode" and source.kind == "latents":
            raise ValueError(f"{spec!r} holds latents; batch encode reads images (use batch decode)")
        return source

    def scan(self, exclude: Sequence[Path] = ()) -> tuple[list[str], list[str]]:
        """(ids, paths) of every item, in a fixed order; ids are unique."""
        location = Path(self.location)
        if self.kind == "folder":
            files = _walk(location, [p.resolve() for p in exclude])
            ids, paths = [f.relative_to(location).as_posix() for f in files], [str(f) for f in files]
        elif self.kind == "glob":
            files = sorted(Path(p).resolve() for p in glob.glob(self.location, recursive=True))
            root = _glob_root(self.location)
            files = [f for f in files if f.is_file() and not any(f.is_relative_to(e) for e in exclude)]
            ids, paths = (
                [os.path.relpath(f, root).replace(os.sep, "/") for f in files],
                [str(f) for f in files],
            )
        elif self.kind == "zip":
            with zipfile.ZipFile(location) as archive:
                names = sorted(
                    n
                    for n in archive.namelist()
                    if not n.endswith("/") and n != LABELS and not n.startswith("__MACOSX/")
                )
            ids, paths = names, [f"{self.location}#{n}" for n in names]
        elif self.kind == "list":
            ids, paths = _read_list(location)
        else:
            ids, paths = [], []
            for file in _latent_files(location):
                file_ids = pq.read_table(file, columns=["id"]).column("id").to_pylist()
                ids += [str(i) for i in file_ids]
                paths += [f"{file}#{row}" for row in range(len(file_ids))]
        if len(set(ids)) != len(ids):
            twice = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"SRC names item {twice!r} more than once: ids must be unique")
        return ids, paths


def _walk(root: Path, exclude: Sequence[Path]) -> list[Path]:
    """Every file under `root` (hidden ones and the excluded folders left out), sorted by relative path."""
    files = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (here / d).resolve() not in exclude]
        for name in names:
            if not name.startswith(".") and not (here == root and name == LABELS) and (here / name).is_file():
                files.append(here / name)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def _glob_root(pattern: str) -> str:
    """The folder before the first wildcard: ids are paths relative to it."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    return str(Path(*parts[:first])) if first else "."


def _read_list(path: Path) -> tuple[list[str], list[str]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        columns = set(rows[0]) if rows else set()
    else:
        table = pq.read_table(path)
        rows, columns = table.to_pylist(), set(table.column_names)
    if "path" not in columns:
        raise ValueError(f"{path}: a list of inputs needs a 'path' column (and, optionally, 'id')")
    given = [str(row["path"] or "") for row in rows]
    paths = [str(p if os.path.isabs(p) else (path.parent / p).resolve()) for p in given]
    ids = [str(row["id"]) for row in rows] if "id" in columns else given
    return ids, paths


def _holds_latents(path: Path) -> bool:
    if path.is_dir():
        try:
            return bool(json.loads((path / MANIFEST).read_text()).get("op") == "encode")
        except (OSError, ValueError):
            return False
    return path.suffix.lower() == ".parquet" and "latent" in pq.read_schema(path).names


def _latent_files(location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    return sorted(p for p in location.glob("*.parquet") if not p.name.startswith(("_", ".")))


def image_names(ids: Sequence[str]) -> list[str]:
    """Output image names: each id as a relative path with the suffix .png; clashes get `~1`, `~2`, …"""
    names, taken = [], set()
    for item in ids:
        parts = [p for p in PurePosixPath(item.replace("\\", "/")).parts if p not in ("/", ".", "..")]
        stem = str(PurePosixPath(*parts).with_suffix("")) if parts else "item"
        name, n = f"{stem}.png", 0
        while name in taken:
            n += 1
            name = f"{stem}~{n}.png"
        taken.add(name)
        names.append(name)
    return names


# -- the prepared job, as workers see it (picklable for Ray actors) ------------------------------
@dataclass(frozen=True)
class PlanRow:
    index: int
    id: str
    path: str
    name: str | None  # decode, mix: the output image's name


@dataclass(frozen=True)
class Job:
    task: Task
    source: Source
    directory: str  # the job folder (plan, manifest, shards, errors)
    images: str | None  # decode, mix: the image folder, or the .zip assembled at the end
    fingerprint: str  # the model every server must serve
    shape: tuple[int, int, int]  # its image shape (C, H, W)
    settings: dict[str, Any]  # passed to every call: resolved (encode, mix) or the overrides (decode)
    shard_size: int
    items: int
    reference: bytes | None = None  # mix: the reference's latent code

    @property
    def shards(self) -> int:
        return -(-self.items // self.shard_size)

    @property
    def zipped(self) -> bool:
        return self.images is not None and self.images.lower().endswith(".zip")

    def schema(self) -> pa.Schema:
        fields = [("id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string())]
        if self.task.op == "encode":
            fields += [("latent", pa.binary()), ("fingerprint", pa.string()), ("shape", pa.list_(pa.int32()))]
        else:
            fields += [("image", pa.string())] + ([("png", pa.binary())] if self.zipped else [])
        return pa.schema(fields)


def plan_rows(plan: pa.Table, job: Job, shard: int) -> list[PlanRow]:
    part = plan.slice(shard * job.shard_size, job.shard_size).to_pydict()
    return [PlanRow(*row) for row in zip(part["index"], part["id"], part["path"], part["name"])]


# -- files ------------------------------------------------------------------------------------
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


@lru_cache(maxsize=16)
def _row_group(file: str, group: int) -> list[bytes | None]:
    return pq.ParquetFile(file).read_row_group(group, columns=["latent"]).column("latent").to_pylist()


@lru_cache(maxsize=64)
def _group_starts(file: str) -> list[int]:
    meta = pq.ParquetFile(file).metadata
    return list(np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]))


def _read_latent(file: str, row: int) -> bytes | None:
    starts = _group_starts(file)
    group = int(np.searchsorted(starts, row, side="right")) - 1
    return _row_group(file, group)[row - starts[group]]


# -- the worker: items in, records out --------------------------------------------------------
class Worker:
    """Loads items, calls the server and returns one record per item. One per thread or Ray actor."""

    def __init__(self, job: Job, endpoints: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.job = job
        self.client = Client(list(endpoints), timeout=timeout)
        served = self.client.info().fingerprint  # the client checks that the other endpoints agree
        if served != job.fingerprint:
            raise JobError(
                f"the server at {endpoints[0]} serves model {served!r}, but this job is for model "
                f"{job.fingerprint!r}"
            )
        self.reference = Latents.from_bytes(job.reference) if job.reference is not None else None
        self._archive: zipfile.ZipFile | None = None

    def close(self) -> None:
        self.client.close()
        if self._archive is not None:
            self._archive.close()

    def process(self, rows: Sequence[PlanRow]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = [
            {"id": row.id, "path": row.path, "status": OK, "error": None} for row in rows
        ]
        loaded: dict[int, Any] = {}
        for i, row in enumerate(rows):
            try:
                loaded[i] = self._load(row.path)
            except Exception as e:  # any failure to read or parse an input is that input's error
                records[i].update(status=ERROR, error=_message(e))
        keys = list(loaded)
        try:
            results = self._request([loaded[k] for k in keys]) if keys else []
        except ValueError:  # refused (InvalidRequestError, ModelMismatchError): find which item
            results = []
            for k in keys:
                try:
                    results += self._request([loaded[k]])
                except ValueError as e:
                    records[k].update(status=ERROR, error=_message(e))
                    results.append(None)
        for k, result in zip(keys, results):
            if result is not None:
                records[k].update(self._result(rows[k], result))
        columns = self.job.schema().names
        return [{name: record.get(name) for name in columns} for record in records]  # every column

    def _load(self, path: str) -> np.ndarray | Latents:
        job = self.job
        if job.source.kind == "latents":
            file, row = path.rsplit("#", 1)
            code = _read_latent(file, int(row))
            if code is None:
                raise ValueError("the source row has no latent (its item failed in the job that made it)")
            latents = Latents.from_bytes(code)
            if len(latents) != 1:
                raise ValueError(f"the source row holds {len(latents)} latents, not one")
            return latents
        c, h, w = job.shape
        size = (h, w) if job.task.resize else None
        if job.source.kind == "zip":
            if self._archive is None:
                self._archive = zipfile.ZipFile(job.source.location)
            from PIL import Image

            data = self._archive.read(path[len(job.source.location) + 1 :])
            image = _from_pil(Image.open(io.BytesIO(data)), c, size)
        else:
            image = load_image(path, c, size)
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"the image is {image.shape[1]}×{image.shape[0]} (W×H); the model takes {w}×{h} "
                "(pass --resize to centre-crop and resize)"
            )
        return image

    def _request(self, items: list[Any]) -> list[Any]:
        """The server call for loaded items; one result per item. ValueError: a refused request."""
        op, client, settings = self.job.task.op, self.client, self.job.settings
        if op == "encode":
            z = client.encode(np.stack(items), **settings)
            return [z[i] for i in range(len(z))]
        if op == "mix":
            a = Latents.concat(items) if isinstance(items[0], Latents) else np.stack(items)
            return list(client.mix(a, self.reference, self.job.task.groups, **settings))
        groups: dict[tuple[str, Settings], list[int]] = {}  # decode: one call per model and settings
        for i, z in enumerate(items):
            groups.setdefault((z.fingerprint, z.settings), []).append(i)
        results: list[Any] = [None] * len(items)
        for members in groups.values():
            images = client.decode(Latents.concat([items[i] for i in members]), **settings)
            for i, image in zip(members, images):
                results[i] = image
        return results

    def _result(self, row: PlanRow, result: Any) -> dict[str, Any]:
        job = self.job
        if job.task.op == "encode":
            z = Latents(result.values, result.fingerprint, result.space, result.settings, job.task.dtype)
            return {"latent": z.to_bytes(), "fingerprint": z.fingerprint, "shape": list(z.space.latent_shape)}
        buffer = io.BytesIO()
        to_pil(result[None])[0].save(buffer, format="PNG")
        assert row.name is not None and job.images is not None
        if job.zipped:
            return {"image": row.name, "png": buffer.getvalue()}
        atomic_write(Path(job.images) / row.name, lambda p: p.write_bytes(buffer.getvalue()), _tmp(job))
        return {"image": row.name}


def _tmp(job: Job) -> Path:
    return Path(job.directory) / TMP


def _message(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"


# -- the local engine: batches pipelined over threads ----------------------------------------
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
) -> None:
    """Process `shards`: up to 2 × `concurrency` batches in flight, each shard written when complete.

    Thread k's client starts at server k (mod the number of servers) and fails over to the others.
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


# -- preparing, resuming and finishing a job ---------------------------------------------------
@dataclass
class Summary:
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
        if (
            job.zipped
            and job.images is not None
            and not (self.manifest.get("finished") and Path(job.images).exists())
        ):
            atomic_write(Path(job.images), self._write_zip, directory / TMP)
        self.manifest["finished"] = True
        self.manifest["errors"] = len(failed)
        self.save()
        shutil.rmtree(directory / TMP, ignore_errors=True)

    def _write_zip(self, path: Path) -> None:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for shard in range(self.job.shards):
                table = pq.read_table(
                    Path(self.job.directory) / SHARD.format(shard), columns=["image", "png"]
                )
                for name, png in zip(table.column("image").to_pylist(), table.column("png").to_pylist()):
                    if png is not None:
                        archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), png)


def layout(op: str, out: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(job folder, images) for `--out`: encode writes the data set there; decode/mix images."""
    path = Path(out).resolve()
    if op == "encode":
        if path.suffix.lower() == ".zip":
            raise ValueError("batch encode writes a Parquet data set: --out must be a folder, not a .zip")
        return path, None
    if path.suffix.lower() == ".zip":
        return path.with_name(path.name + ".batch"), path
    return path / "_batch", path


@contextlib.contextmanager
def open_job(
    task: Task, source: str, out: str | os.PathLike[str], client: Client, shard_size: int | None = None
) -> Iterator[State]:
    """Take the job folder (create the plan and manifest, or check and resume them); hold its lock."""
    task.check()
    src = Source.parse(source, task.op)
    info = client.info()
    settings: dict[str, Any]
    if task.op == "decode":
        settings = {"steps": task.steps, "solver": task.solver, "schedule": task.schedule}
    else:
        chosen = Settings(
            task.solver or info.settings.solver,
            task.steps if task.steps is not None else info.settings.steps,
            task.schedule or info.settings.schedule,
        ).check(info.space.k)
        settings = {"steps": chosen.steps, "solver": chosen.solver, "schedule": chosen.schedule}
    reference, reference_hash = None, None
    if task.op == "mix":
        assert task.reference is not None
        data = Path(task.reference).read_bytes()
        reference_hash = hashlib.sha256(data).hexdigest()
        if task.reference.endswith(".latent"):
            ref = Latents.from_bytes(data)
            if ref.fingerprint != info.fingerprint:
                raise ModelMismatchError(f"the reference {task.reference} is a latent of another model")
        else:
            ref = client.encode(_reference_image(task, info.space.shape), **settings)
        reference = ref[0].to_bytes()
    directory, images = layout(task.op, out)
    identity = {
        "format": FORMAT,
        "version": VERSION,
        "op": task.op,
        "source": asdict(src),
        "model": info.fingerprint,
        "settings": settings,
        "options": {
            "dtype": task.dtype,
            "resize": task.resize,
            "groups": list(task.groups),
            "reference_sha256": reference_hash,
        },
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
            plan = pa.table(
                {"index": pa.array(range(len(ids)), pa.int64()), "id": ids, "path": paths, "name": names},
                schema=pa.schema(
                    [("index", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("name", pa.string())]
                ),
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
        job = Job(
            task=task,
            source=src,
            directory=str(directory),
            images=str(images) if images else None,
            fingerprint=info.fingerprint,
            shape=info.space.shape,
            settings=settings,
            shard_size=int(manifest["shard_size"]),
            items=int(manifest["items"]),
            reference=reference,
        )
        state = State(job, plan, manifest, _done_shards(job, manifest))
        yield state


def default_shard_size(shape: Sequence[int]) -> int:
    """1000 items, or as many float32 latents as fit in SHARD_BYTES (341 at 3×256×256), at least 16."""
    return int(min(DEFAULT_SHARD_SIZE, max(16, SHARD_BYTES // (4 * int(np.prod(shape))))))


def _reference_image(task: Task, shape: tuple[int, int, int]) -> np.ndarray:
    assert task.reference is not None
    c, h, w = shape
    return load_image(task.reference, c, (h, w) if task.resize else None)


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


def max_batch(client: Client, op: str) -> int:
    """The largest request the served models take (their max_batch_size)."""
    models = {"encode": ["encode"], "decode": ["decode"], "mix": ["encode", "decode"]}[op]
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
) -> Summary:
    """Run (or resume) a batch job and return its summary. See the module docstring."""
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
        open_job(task, source, out, client, shard_size) as state,
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
                          timeout=timeout, on_shard=state.completed, on_items=on_items)  # fmt: skip
            else:
                from grouplat.client.batch.ray_engine import run_on_ray

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
