"""Batch jobs against a hostile output folder (issue 13 A): a job writes only inside --out, follows no
symbolic link there, and never replaces a file it did not write (unless --overwrite); a re-run of
the same job still rewrites its own files. The jobs decode 12 latents of the exact oracle (16×16)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_oracle, oracle_images

from grouplat.client import Client, to_uint8
from grouplat.client.batch import store
from grouplat.client.batch.cli import build_parser, main
from grouplat.client.batch.files import open_file, write_file
from grouplat.client.batch.job import LOCK, MANIFEST, SHARD, TMP, JobError, Summary, Task, run
from grouplat.serving.server import EmbeddedServer

EXACT = {"solver": "gei2m", "steps": 4}
IDS = ["a", "b", "sub/c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]  # 6 shards of 2


@pytest.fixture(scope="module")
def server(oracle_server: EmbeddedServer) -> str:
    return oracle_server.grpc_url


@pytest.fixture(scope="module")
def latents(server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Parquet source of 12 latents (batch decode reads it); item "sub/c" decodes to sub/c.png."""
    pixels = to_uint8(oracle_images(make_oracle(), len(IDS), seed=3))
    with Client(server) as client:
        z = client.encode(pixels, **EXACT)
    path = tmp_path_factory.mktemp("latents") / "codes.parquet"
    pq.write_table(pa.table({"id": IDS, "latent": [z[i].to_bytes() for i in range(len(z))]}), path)
    return str(path)


def decode(latents: str, out: Path, server: str, overwrite: bool = False) -> Summary:
    return run(Task("decode"), latents, out, server, shard_size=2, progress=False, overwrite=overwrite)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- the file primitives -----------------------------------------------------------------------


def test_write_file_never_writes_through_a_link_nor_over_a_file(tmp_path: Path) -> None:
    root, outside = tmp_path / "out", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(JobError, match=r"out/sub is a symbolic link"):
        write_file(root, "sub/x.png", lambda f: f.write(b"x"), ".tmp")
    (root / "tmplink").symlink_to(outside)
    with pytest.raises(JobError, match=r"out/tmplink is a symbolic link"):
        write_file(root, "x.png", lambda f: f.write(b"x"), "tmplink")
    assert files_under(outside) == []

    (outside / "target").write_bytes(b"theirs")
    (root / "link.png").symlink_to(outside / "target")
    write_file(root, "link.png", lambda f: f.write(b"ours"), ".tmp")  # replaces the link, not its target
    assert not (root / "link.png").is_symlink() and (root / "link.png").read_bytes() == b"ours"
    assert (outside / "target").read_bytes() == b"theirs"

    (root / "mine.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        write_file(root, "mine.png", lambda f: f.write(b"new"), ".tmp", replace=False)
    assert (root / "mine.png").read_bytes() == b"mine"
    write_file(root, "deep/new.png", lambda f: f.write(b"new"), ".tmp", replace=False)
    assert (root / "deep" / "new.png").read_bytes() == b"new"
    assert files_under(root / ".tmp") == []

    (root / "read.png").symlink_to(outside / "target")
    with pytest.raises(JobError, match="symbolic link"):
        open_file(root, "read.png")
    with pytest.raises(JobError, match="symbolic link"):
        open_file(root, "sub/target")


# -- decode into a folder -----------------------------------------------------------------------


def test_a_linked_folder_inside_out_is_refused(latents: str, server: str, tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside)  # item "sub/c" would land in outside/c.png
    with pytest.raises(JobError, match=rf"{out / 'sub'} is a symbolic link"):
        decode(latents, out, server)
    assert files_under(outside) == [] and files_under(out) == ["sub"]  # its job folder removed again

    (out / "sub").unlink()
    (out / "_batch").symlink_to(outside)  # the job folder itself
    with pytest.raises(JobError, match=rf"{out / '_batch'} is a symbolic link"):
        decode(latents, out, server)
    assert files_under(outside) == []

    (out / "_batch").unlink()
    (out / "_batch").mkdir()
    (out / "_batch" / LOCK).symlink_to(outside / "lock")  # open(…, "a") made outside/lock
    with pytest.raises(JobError, match="_lock is a symbolic link"):
        decode(latents, out, server)
    assert files_under(outside) == []

    (out / "_batch" / LOCK).unlink()
    (out / "_batch" / LOCK).touch()
    (outside / "keep").write_bytes(b"keep")
    (out / "_batch" / TMP).symlink_to(outside)  # scratch space: the link is removed, not followed
    summary = decode(latents, out, server)
    assert summary.done_now == len(IDS) and summary.errors == 0
    assert files_under(outside) == ["keep"] and not (out / "_batch" / TMP).exists()
    assert (out / "sub" / "c.png").is_file() and not (out / "sub").is_symlink()


def test_an_image_the_job_did_not_write_is_not_replaced(
    latents: str, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "d.png").write_bytes(b"mine")
    (out / "unrelated.txt").write_bytes(b"kept")
    with pytest.raises(
        JobError, match=rf"{out / 'd.png'} exists and this batch job did not write it.*--overwrite"
    ):
        decode(latents, out, server)
    assert files_under(out) == ["d.png", "unrelated.txt"] and (out / "d.png").read_bytes() == b"mine"

    argv = ["decode", latents, "--out", str(out), "--server", server, "--shard-size", "2", "--no-progress"]
    assert main(argv) == 2
    assert f"{out / 'd.png'} exists and this batch job did not write it" in capsys.readouterr().err
    assert (out / "d.png").read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "d.png").read_bytes().startswith(b"\x89PNG") and (
        out / "unrelated.txt"
    ).read_bytes() == b"kept"
    assert main(argv) == 0  # the same job again: all done, nothing refused
    assert "this run: 0 items" in capsys.readouterr().out
    assert build_parser().parse_args(["batch", "decode", "x", "--out", "y", "--overwrite"]).overwrite

    link = tmp_path / "link-out"  # a dangling link at an image's name: refused, then replaced
    link.mkdir()
    (link / "a.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(JobError, match="a.png exists and this batch job did not write it"):
        decode(latents, link, server)
    decode(latents, link, server, overwrite=True)
    assert not (link / "a.png").is_symlink() and not (tmp_path / "elsewhere.png").exists()


def test_a_resumed_job_rewrites_its_own_images_only(latents: str, server: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    decode(latents, out, server)
    manifest = json.loads((out / "_batch" / MANIFEST).read_text())
    assert manifest["started"] == list(range(6))

    def killed(shard: int, started: bool = True) -> dict:
        """As a kill -9 leaves it: `shard` begun (its images written) but its shard file missing."""
        (out / "_batch" / SHARD.format(shard)).unlink()
        data = json.loads((out / "_batch" / MANIFEST).read_text())
        del data["done"][str(shard)]
        data["finished"] = False
        if not started:
            data["started"].remove(shard)
        (out / "_batch" / MANIFEST).write_text(json.dumps(data))
        return data

    killed(1)
    before = (out / "sub" / "c.png").read_bytes()
    summary = decode(latents, out, server)  # its own images of shard 1 are written again
    assert summary.done_now == 2 and (out / "sub" / "c.png").read_bytes() == before

    killed(4, started=False)  # shard 4 never begun: "i.png" is no file of this job
    (out / "j.png").unlink()
    with pytest.raises(JobError, match=rf"{out / 'i.png'} exists and this batch job did not write it"):
        decode(latents, out, server)
    (out / "i.png").unlink()
    assert decode(latents, out, server).done_now == 2

    data = killed(5)  # a job folder from before `started` was recorded: every pending shard is its own
    del data["started"]
    (out / "_batch" / MANIFEST).write_text(json.dumps(data))
    assert decode(latents, out, server).done_now == 2


def test_an_image_that_appears_while_the_job_runs_is_an_item_error(
    latents: str, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    decode(latents, first, server)
    out = tmp_path / "out"
    out.mkdir()
    (out / "e.png").write_bytes(b"appeared")  # as if made after the job's start-up check
    (out / "f.png").write_bytes((first / "f.png").read_bytes())  # the very bytes the job writes
    monkeypatch.setattr(store, "taken", lambda root, targets: [])
    summary = decode(latents, out, server)
    assert summary.errors == 1
    records = pq.read_table(out / "_batch").to_pydict()
    error = dict(zip(records["id"], records["error"]))["e"]
    assert f"{out / 'e.png'} exists and this batch job did not write it" in error
    assert (out / "e.png").read_bytes() == b"appeared"
    assert (out / "f.png").read_bytes() == (first / "f.png").read_bytes()


# -- decode into a .zip -------------------------------------------------------------------------


def test_an_unrelated_zip_is_not_replaced(latents: str, server: str, tmp_path: Path) -> None:
    out = tmp_path / "existing.zip"
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("precious.txt", "mine")
    original = out.read_bytes()
    with pytest.raises(JobError, match=rf"{out} exists and this batch job did not write it.*--overwrite"):
        decode(latents, out, server)
    assert out.read_bytes() == original and files_under(tmp_path) == ["existing.zip"]  # no job folder left

    decode(latents, out, server, overwrite=True)
    with zipfile.ZipFile(out) as z:
        assert len(z.namelist()) == len(IDS)
    made = out.read_bytes()
    decode(latents, out, server)  # the same job again: its own zip, kept
    assert out.read_bytes() == made

    manifest_path = tmp_path / "existing.zip.batch" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = False  # killed once the zip was in place, before the manifest said so
    manifest_path.write_text(json.dumps(manifest))
    decode(latents, out, server)
    assert out.read_bytes() == made
    manifest["zipping"] = False  # killed before the job began its zip: this one is someone else's
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(JobError, match="did not write it"):
        decode(latents, out, server)

    link = tmp_path / "link.zip"  # a dangling link as --out: not followed
    link.symlink_to(tmp_path / "elsewhere.zip")
    with pytest.raises(JobError, match="link.zip exists and this batch job did not write it"):
        decode(latents, link, server)
    decode(latents, link, server, overwrite=True)
    assert not link.is_symlink() and zipfile.is_zipfile(link) and not (tmp_path / "elsewhere.zip").exists()


def test_encode_job_folder_files_follow_no_link(server: str, tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    pixels = to_uint8(oracle_images(make_oracle(), 2, seed=4))
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(src / f"{i}.png")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / LOCK).touch()
    (out / MANIFEST).symlink_to(outside / "manifest.json")
    with pytest.raises(JobError, match="_manifest.json is a symbolic link"):
        run(Task("encode", **EXACT), str(src), out, server, progress=False)
    (out / MANIFEST).unlink()
    (out / SHARD.format(0)).symlink_to(outside / "part.parquet")  # a new job: replaced, not followed
    summary = run(Task("encode", **EXACT), str(src), out, server, progress=False)
    assert summary.done_now == 2 and files_under(outside) == []
    assert len(pq.read_table(out)) == 2
    assert not any(p.is_symlink() for p in out.iterdir()) and os.path.isfile(out / MANIFEST)

    (out / SHARD.format(0)).unlink()  # a resumed job: a link among its shards is refused
    (out / SHARD.format(0)).symlink_to(outside / "part.parquet")
    with pytest.raises(JobError, match="part-00000.parquet is a symbolic link"):
        run(Task("encode", **EXACT), str(src), out, server, progress=False)
    assert files_under(outside) == []
