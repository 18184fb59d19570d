"""Zip assembly: the images of a finished decode or mix job, from its shards into one .zip."""

from __future__ import annotations

import zipfile
from typing import BinaryIO

import pyarrow.parquet as pq

from grouplat.client.batch.files import open_file
from grouplat.client.batch.task import SHARD, Job

FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # every member's timestamp: the same job makes the same bytes


def write_zip(job: Job, file: BinaryIO) -> None:
    """Write every PNG of the job's shards to `file`, in plan order (stored: PNGs are compressed)."""
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for shard in range(job.shards):
            with open_file(job.root, job.inside(SHARD.format(shard))) as f:
                table = pq.read_table(f, columns=["image", "png"])
            for name, png in zip(table.column("image").to_pylist(), table.column("png").to_pylist()):
                if png is not None:
                    archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_TIME), png)
