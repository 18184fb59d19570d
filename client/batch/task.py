"""What a batch job is: the operation and its options (`Task`), the prepared job as workers see it
(`Job`, picklable for Ray actors), the plan's rows (`PlanRow`) and the names in a job folder."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from grouplat.client.errors import ModelMismatchError
from grouplat.client.images import load_image
from grouplat.client.latents import DTYPES, Latents, Settings, read_code

if TYPE_CHECKING:
    from grouplat.client.batch.sources import Source  # which imports the folder names from here
    from grouplat.client.client import Client

OPERATIONS = ("encode", "decode", "mix")
DEFAULT_SHARD_SIZE = 1000  # items per shard (the unit of work that survives a crash), fewer for big images:
SHARD_BYTES = 2**28  # at most about this many bytes of float32 latents in memory per shard (256 MiB)
MANIFEST, PLAN, ERRORS, LOCK, TMP = "_manifest.json", "_plan.parquet", "_errors.csv", "_lock", ".tmp"
SHARD = "part-{:05d}.parquet"
OK, ERROR = "ok", "error"  # an item's status
Callback = Callable[[int, dict[str, int]], None]  # (shard, its counts): a shard is done


class JobError(ValueError):
    """The job folder holds another job, or cannot be used."""


@dataclass(frozen=True)
class Task:
    """What happens to each item: the operation and its options (they are part of the job's identity).

    Attributes:
        op: `encode`, `decode` or `mix`.
        steps, solver, schedule: generation settings; None: the model's (decode: each latent's own).
        dtype: encode: how the latent codes store coefficients (`float16` halves them).
        resize: encode, mix: centre-crop and resize images to the model's size.
        reference: mix: the reference, an image file or a `.latent` file.
        groups: mix: the groups taken from the reference (S1 = 1).
    """

    op: str
    steps: int | None = None
    solver: str | None = None
    schedule: str | None = None
    dtype: str = "float32"
    resize: bool = False
    reference: str | None = None
    groups: tuple[int, ...] = ()

    def check(self) -> Task:
        """This task, validated.

        Raises:
            ValueError: an unknown operation or dtype, or a mix without reference or groups.
        """
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown batch operation {self.op!r}: expected one of {', '.join(OPERATIONS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown latent dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.op == "mix" and (not self.reference or not self.groups):
            raise ValueError("batch mix needs a reference (--reference) and the groups to take (--groups)")
        return self


@dataclass(frozen=True)
class PlanRow:
    """One item of the plan: its index (item i belongs to shard i // shard_size), id and path."""

    index: int
    id: str
    path: str
    name: str | None  # decode, mix: the output image's name


@dataclass(frozen=True)
class Job:
    """A prepared job, as workers see it (picklable for Ray actors)."""

    task: Task
    source: Source
    directory: str  # the job folder (plan, manifest, shards, errors)
    images: str | None  # decode, mix: the image folder, or the .zip assembled at the end
    fingerprint: str  # the model every server must serve
    shape: tuple[int, int, int]  # its image shape (C, H, W)
    settings: dict[str, Any]  # resolved (encode, mix: with both schedules) or the overrides (decode)
    shard_size: int
    items: int
    reference: bytes | None = None  # mix: the reference's latent code
    overwrite: bool = False  # replace files (images, the .zip) that this job did not write
    resumed: frozenset[int] = frozenset()  # shards whose images an earlier run may have written

    @property
    def shards(self) -> int:
        return -(-self.items // self.shard_size)

    @property
    def zipped(self) -> bool:
        return self.images is not None and self.images.lower().endswith(".zip")

    @property
    def root(self) -> Path:
        """The folder this job writes in (see `job_root`)."""
        return job_root(Path(self.directory), Path(self.images) if self.images else None)

    def inside(self, name: str) -> str:
        """The path of a file of the job folder (e.g. MANIFEST, TMP), relative to `root`."""
        return os.path.relpath(Path(self.directory) / name, self.root)

    def schema(self) -> pa.Schema:
        """The columns of the job's shards."""
        fields = [("id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string())]
        if self.task.op == "encode":
            fields += [("latent", pa.binary()), ("fingerprint", pa.string()), ("shape", pa.list_(pa.int32()))]
        else:
            fields += [("image", pa.string())] + ([("png", pa.binary())] if self.zipped else [])
        return pa.schema(fields)


def plan_rows(plan: pa.Table, job: Job, shard: int) -> list[PlanRow]:
    """The plan's rows of one shard."""
    part = plan.slice(shard * job.shard_size, job.shard_size).to_pydict()
    return [PlanRow(*row) for row in zip(part["index"], part["id"], part["path"], part["name"])]


def layout(op: str, out: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """(job folder, images) for `--out`: encode writes the data set there; decode/mix images.

    A folder given as `--out` is resolved (a link to a folder is the user's choice); a .zip is the
    file the job writes, so only its folder is resolved: a link there is not followed.
    """
    path = Path(out)
    if path.suffix.lower() == ".zip":
        if op == "encode":
            raise ValueError("batch encode writes a Parquet data set: --out must be a folder, not a .zip")
        path = Path(os.path.abspath(path)).parent.resolve() / path.name
        return path.with_name(path.name + ".batch"), path
    path = path.resolve()
    return (path, None) if op == "encode" else (path / "_batch", path)


def job_root(directory: Path, images: Path | None) -> Path:
    """The folder a job writes in, following no link below it (`grouplat.client.batch.files`):
    `--out` (encode: the job folder; decode, mix: the image folder), or the folder of `--out`'s .zip."""
    if images is None:
        return directory
    return images.parent if images.suffix.lower() == ".zip" else images


def default_shard_size(shape: Sequence[int]) -> int:
    """1000 items, or as many float32 latents as fit in SHARD_BYTES (341 at 3×256×256), at least 16."""
    return int(min(DEFAULT_SHARD_SIZE, max(16, SHARD_BYTES // (4 * int(np.prod(shape))))))


def call_settings(op: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A job's settings as the arguments of its client calls: encode and mix resolved them once, as
    one settings object (with the encode's own schedule); decode passes the overrides of each
    latent's own settings as keywords."""
    if op == "decode":
        return settings
    return {"settings": Settings(**settings)}


def reference_code(task: Task, client: Client, settings: dict[str, Any]) -> tuple[bytes, str]:
    """Mix: the reference as one latent code (an image is encoded with `settings`) and its file's sha256.

    Raises:
        FileNotFoundError: no such reference file.
        ValueError: a `.latent` reference that is no latent code (or too large).
        ModelMismatchError: a `.latent` reference of another model than the served one.
    """
    assert task.reference is not None
    info = client.info()
    is_code = task.reference.endswith(".latent")
    data = read_code(task.reference) if is_code else Path(task.reference).read_bytes()
    if is_code:
        ref = Latents.from_bytes(data)
        if ref.fingerprint != info.fingerprint:
            raise ModelMismatchError(f"the reference {task.reference} is a latent of another model")
    else:
        c, h, w = info.space.shape
        image = load_image(task.reference, c, (h, w) if task.resize else None)
        ref = client.encode(image, **call_settings(task.op, settings))
    return ref[0].to_bytes(), hashlib.sha256(data).hexdigest()
