"""Where a batch job's items come from: the five kinds of SRC, scanned into a fixed order, and read.

- `folder`: every file under a folder (hidden ones left out), by relative path;
- `glob`: the files a pattern matches (ids relative to the folder before the first wildcard);
- `zip`: the members of an EDM-style archive (its `dataset.json` labels are not an item);
- `list`: a .parquet or .csv with a `path` column (relative to the list) and an optional `id`;
- `latents`: the output of `batch encode` (or a Parquet file with a `latent` column).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.parquet as pq

from grouplat.client.batch.task import MANIFEST
from grouplat.client.images import load_image
from grouplat.client.latents import Latents

LABELS = "dataset.json"  # EDM-style archives and folders: the labels file beside the images, not an item


@dataclass(frozen=True)
class Source:
    """The items of SRC: `folder`, `glob`, `zip`, `list` (Parquet/CSV of paths) or `latents`."""

    kind: str
    location: str  # an absolute path (glob: an absolute pattern)

    @classmethod
    def parse(cls, spec: str, op: str) -> Source:
        """The source that `spec` names, for the operation `op`.

        Raises:
            FileNotFoundError: no such path.
            ValueError: not a kind of source, or one that `op` does not read (decode reads latents).
        """
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


class ItemReader:
    """Reads the items of one source: an image as uint8 [H, W, C] of the model's size, a latent as
    `Latents` of one. Any failure is that item's error (raised)."""

    def __init__(self, source: Source, shape: tuple[int, int, int], resize: bool) -> None:
        self.source, self.shape, self.resize = source, shape, resize
        self._archive: zipfile.ZipFile | None = None

    def read(self, path: str) -> np.ndarray | Latents:
        if self.source.kind == "latents":
            file, row = path.rsplit("#", 1)
            code = _read_latent(file, int(row))
            if code is None:
                raise ValueError("the source row has no latent (its item failed in the job that made it)")
            latents = Latents.from_bytes(code)
            if len(latents) != 1:
                raise ValueError(f"the source row holds {len(latents)} latents, not one")
            return latents
        c, h, w = self.shape
        size = (h, w) if self.resize else None
        if self.source.kind == "zip":
            if self._archive is None:
                self._archive = zipfile.ZipFile(self.source.location)
            data = self._archive.read(path[len(self.source.location) + 1 :])
            image = load_image(io.BytesIO(data), c, size)
        else:
            image = load_image(path, c, size)
        if image.shape[:2] != (h, w):
            raise ValueError(
                f"the image is {image.shape[1]}×{image.shape[0]} (W×H); the model takes {w}×{h} "
                "(pass --resize to centre-crop and resize)"
            )
        return image

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()


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
