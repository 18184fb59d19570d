"""The worker of a batch job: plan rows in, one record per item out. One per thread or Ray actor."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grouplat.client.batch.files import open_file, write_file
from grouplat.client.batch.sources import ItemReader
from grouplat.client.batch.task import ERROR, OK, TMP, Job, JobError, PlanRow, call_settings
from grouplat.client.client import Client
from grouplat.client.images import to_pil
from grouplat.client.latents import Latents, Settings
from grouplat.client.transport import DEFAULT_TIMEOUT


class Worker:
    """Loads items, calls the servers and returns one record per item, with its own client.

    Args:
        job: the prepared job.
        endpoints: the servers, the first one tried first (the client fails over to the others).
        timeout: seconds per server call, retries included.

    Raises:
        JobError: the servers serve another model than the job's.
    """

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
        self.reader = ItemReader(job.source, job.shape, job.task.resize)

    def close(self) -> None:
        self.client.close()
        self.reader.close()

    def process(self, rows: Sequence[PlanRow]) -> list[dict[str, Any]]:
        """One batch: the records of `rows`, every column of the job's schema, errors included.

        Raises:
            ClientError: server trouble that outlasts the client's retries (the job stops).
        """
        records: list[dict[str, Any]] = [
            {"id": row.id, "path": row.path, "status": OK, "error": None} for row in rows
        ]
        loaded: dict[int, Any] = {}
        for i, row in enumerate(rows):
            try:
                loaded[i] = self.reader.read(row.path)
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
                try:
                    records[k].update(self._result(rows[k], result))
                except FileExistsError as e:  # its image appeared in --out while the job ran
                    records[k].update(status=ERROR, error=str(e))
        columns = self.job.schema().names
        return [{name: record.get(name) for name in columns} for record in records]  # every column

    def _request(self, items: list[Any]) -> list[Any]:
        """The server call for loaded items; one result per item. ValueError: a refused request."""
        op, client = self.job.task.op, self.client
        settings = call_settings(op, self.job.settings)
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
            z = dataclasses.replace(result, dtype=job.task.dtype)  # keeps the model version
            return {"latent": z.to_bytes(), "fingerprint": z.fingerprint, "shape": list(z.space.latent_shape)}
        buffer = io.BytesIO()
        to_pil(result[None])[0].save(buffer, format="PNG")
        assert row.name is not None and job.images is not None
        png = buffer.getvalue()
        if job.zipped:
            return {"image": row.name, "png": png}
        replace = job.overwrite or (row.index // job.shard_size) in job.resumed  # else: new files only
        try:
            write_file(job.root, row.name, lambda f: f.write(png), job.inside(TMP), replace=replace)
        except FileExistsError:
            if not self._holds(row.name, png):  # the same bytes: this job wrote it (a retried shard)
                raise FileExistsError(
                    f"{Path(job.images) / row.name} exists and this batch job did not write it "
                    "(pass --overwrite to replace it)"
                ) from None
        return {"image": row.name}

    def _holds(self, name: str, data: bytes) -> bool:
        """Whether the file `name` in the image folder holds exactly `data`."""
        try:
            with open_file(self.job.root, name) as f:
                return os.fstat(f.fileno()).st_size == len(data) and f.read() == data
        except (OSError, JobError):
            return False


def _message(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if isinstance(error, ValueError) else f"{type(error).__name__}: {text}"
