"""Batch jobs (grouplat.client.batch) against the real embedded tritonserver serving the exact oracle.

"Decodes back to its image" is checked at `solver="gei2m", steps=4`: the Gaussian exponential
integrator is exact for the oracle, so encode then decode returns the input to float32 rounding
(measured max error ~1e-6; the bound is 1e-3). About 60 s on two busy cores: the kill -9 test and the
restart test each run a 200-image job at 400 steps to be slow enough to interrupt.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import make_oracle, oracle_images
from PIL import Image

from grouplat.client import Client, Latents, load_image, to_uint8
from grouplat.client.batch.cli import build_parser, main
from grouplat.client.batch.job import (
    ERRORS,
    MANIFEST,
    SHARD,
    TMP,
    JobError,
    Source,
    Task,
    default_shard_size,
    image_names,
    run,
)
from grouplat.serving.server import EmbeddedServer

ROOT = Path(__file__).resolve().parents[1]
EXACT = {"solver": "gei2m", "steps": 4}  # exact for the oracle (docs/design.md §1.7, GEI)
N = 200


def write_pngs(folder: Path, pixels: np.ndarray, names: list[str] | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:04d}.png" for i in range(len(pixels))]
    for name, image in zip(names, pixels):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)
    return names


def as_model(pixels: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] → float32 [B, C, H, W] in [-1, 1], as the server sees them."""
    return pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1


def read(out: Path) -> pa.Table:
    return pq.read_table(out).sort_by("id")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return to_uint8(oracle_images(make_oracle(), N, seed=5))  # uint8 [200, 16, 16, 3]


@pytest.fixture(scope="module")
def src(pixels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("src")
    write_pngs(folder, pixels)
    return folder


@pytest.fixture(scope="module")
def server(oracle_server: EmbeddedServer) -> str:
    return oracle_server.grpc_url


def test_encode_200_images_and_decode_them_back(src: Path, pixels: np.ndarray, server: str, tmp_path: Path):
    out = tmp_path / "latents"
    summary = run(
        Task("encode", **EXACT), str(src), out, server, shard_size=32, concurrency=4, progress=False
    )
    assert (summary.items, summary.done_now, summary.done_before, summary.errors, summary.shards) == (
        N,
        N,
        0,
        0,
        7,
    )
    table = read(out)
    ids = table.column("id").to_pylist()
    assert ids == [f"img{i:04d}.png" for i in range(N)]  # each image once
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("path").to_pylist() == [str(src / i) for i in ids]
    with Client(server) as client:
        info = client.info()
        assert set(table.column("fingerprint").to_pylist()) == {info.fingerprint}
        assert table.column("shape").to_pylist() == [[3, 256]] * N
        z = Latents.concat([Latents.from_bytes(b) for b in table.column("latent").to_pylist()])
        assert (z.settings.solver, z.settings.steps) == ("gei2m", 4)
        # encoded with the served encode schedule; the decode schedule kept for decoding
        served = info.settings
        assert (z.settings.schedule, z.settings.encode_schedule) == (served.schedule, served.encode_schedule)
        assert served.encode_schedule is not None
        decoded = client.decode(z)  # with the settings stored in each code
    error = float(np.abs(decoded - as_model(pixels)).max())
    print(f"200 latents decoded back: max |decoded − image| = {error:.2e} ({summary.rate:.0f} items/s)")
    assert error < 1e-3
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["finished"] and manifest["items"] == N and len(manifest["done"]) == 7
    assert (out / ERRORS).read_text().strip() == "id,path,error"
    assert not (out / TMP).exists()

    # A re-run finds everything done.
    again = run(Task("encode", **EXACT), str(src), out, server, progress=False)
    assert (again.done_now, again.done_before) == (0, N)

    # batch decode: the latents back to PNG files, named after the ids.
    images = tmp_path / "decoded"
    summary = run(Task("decode"), str(out), images, server, shard_size=64, progress=False)
    assert (summary.done_now, summary.errors) == (N, 0)
    files = sorted(p.name for p in images.glob("*.png"))
    assert files == sorted(i.replace(".png", "") + ".png" for i in ids)
    back = np.stack([load_image(images / f"img{i:04d}.png") for i in range(N)])
    assert np.abs(back.astype(int) - pixels).max() == 0  # exact to the last uint8 level
    records = pq.read_table(images / "_batch").sort_by("id")
    assert records.column("image").to_pylist() == files


def test_inputs_that_fail_are_recorded_and_the_job_goes_on(
    pixels: np.ndarray, server: str, tmp_path: Path
) -> None:
    folder = tmp_path / "src"
    write_pngs(folder, pixels[:4], ["a.png", "b.png", "sub/c.png", "d.png"])
    whole = (folder / "d.png").read_bytes()
    (folder / "d.png").write_bytes(whole[: len(whole) // 2])  # a corrupt (truncated) PNG
    (folder / "notes.txt").write_text("not an image\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "big.png")  # the wrong size
    (folder / ".hidden.png").write_text("skipped")
    out = tmp_path / "out"
    summary = run(Task("encode", **EXACT), str(folder), out, server, shard_size=2, progress=False)
    assert (summary.items, summary.errors) == (6, 3)
    table = read(out)
    assert table.column("id").to_pylist() == ["a.png", "b.png", "big.png", "d.png", "notes.txt", "sub/c.png"]
    status = dict(zip(table.column("id").to_pylist(), table.column("status").to_pylist()))
    assert [k for k, v in status.items() if v == "error"] == ["big.png", "d.png", "notes.txt"]
    with open(out / ERRORS, newline="") as f:
        errors = {row["id"]: row["error"] for row in csv.DictReader(f)}
    assert set(errors) == {"big.png", "d.png", "notes.txt"}
    assert "truncated" in errors["d.png"] or "OSError" in errors["d.png"]
    assert "cannot identify image file" in errors["notes.txt"]
    assert "32×32" in errors["big.png"] and "--resize" in errors["big.png"]
    failed = table.filter(pc.equal(table.column("status"), "error"))
    assert failed.column("latent").null_count == 3

    # Decode: rows without a latent, and a latent of another model, are errors too.
    with Client(server) as client:
        z = client.encode(pixels[:1], **EXACT)
    other = Latents(z.values, "0" * 64, z.space, z.settings)
    latents = tmp_path / "mixed.parquet"
    pq.write_table(
        pa.table({"id": ["good", "foreign", "empty"], "latent": [z.to_bytes(), other.to_bytes(), None]}),
        latents,
    )
    summary = run(Task("decode"), str(latents), tmp_path / "images", server, progress=False)
    records = pq.read_table(tmp_path / "images" / "_batch")
    assert records.column("status").to_pylist() == ["ok", "error", "error"]
    assert "made by model" in records.column("error")[1].as_py()
    assert "no latent" in records.column("error")[2].as_py()
    assert (tmp_path / "images" / "good.png").is_file() and summary.errors == 2


def test_every_kind_of_source_gives_the_same_latents(pixels: np.ndarray, server: str, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    names = write_pngs(folder, pixels[:10], [f"{i:02d}.png" for i in range(10)])
    archive = tmp_path / "edm.zip"  # EDM-style: images in subfolders and a dataset.json of labels
    with zipfile.ZipFile(archive, "w") as z:
        for i, name in enumerate(names):
            z.write(folder / name, f"{i // 5:05d}/{name}")
        z.writestr("dataset.json", json.dumps({"labels": [[n, 0] for n in names]}))
    with open(tmp_path / "list.csv", "w") as f:
        f.write("path,id\n" + "".join(f"folder/{n},item{i}\n" for i, n in enumerate(names)))
    pq.write_table(pa.table({"path": [str(folder / n) for n in names]}), tmp_path / "list.parquet")

    latents = {}
    for label, spec in [
        ("folder", str(folder)),
        ("glob", str(tmp_path / "folder" / "*.png")),
        ("zip", str(archive)),
        ("csv", str(tmp_path / "list.csv")),
        ("parquet", str(tmp_path / "list.parquet")),
    ]:
        summary = run(Task("encode", **EXACT), spec, tmp_path / f"out-{label}", server, progress=False)
        assert (summary.items, summary.errors) == (10, 0), label
        table = pq.read_table(tmp_path / f"out-{label}")
        latents[label] = np.concatenate(
            [Latents.from_bytes(b).values for b in table.column("latent").to_pylist()]
        )
        if label in ("folder", "glob"):
            assert table.column("id").to_pylist() == names
        if label == "zip":
            assert table.column("id").to_pylist()[:2] == ["00000/00.png", "00000/01.png"]
        if label == "csv":
            assert table.column("id").to_pylist()[:2] == ["item0", "item1"]
    for label, values in latents.items():
        np.testing.assert_allclose(values, latents["folder"], atol=1e-6, err_msg=label)

    with pytest.raises(ValueError, match="batch decode reads latents"):
        Source.parse(str(folder), "decode")
    with pytest.raises(ValueError, match="holds latents"):
        Source.parse(str(tmp_path / "out-folder"), "encode")
    assert Source.parse(str(tmp_path / "out-zip"), "decode").kind == "latents"
    assert image_names(["a.jpg", "a.png", "/abs/../x", "noext"]) == [
        "a.png",
        "a~1.png",
        "abs/x.png",
        "noext.png",
    ]


def test_mix_into_a_zip(pixels: np.ndarray, server: str, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    names = write_pngs(folder, pixels[:10])
    reference = tmp_path / "reference.png"
    Image.fromarray(pixels[100]).save(reference)
    out = tmp_path / "mixed.zip"
    task = Task("mix", reference=str(reference), groups=(1, 2), **EXACT)
    summary = run(task, str(folder), out, server, shard_size=4, progress=False)
    assert (summary.items, summary.errors, summary.output) == (10, 0, str(out))
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == names
        got = np.stack([np.asarray(Image.open(z.open(n))) for n in names])
    with Client(server) as client:
        ref = client.encode(pixels[100:101], **EXACT)
        expected = to_uint8(client.mix(pixels[:10], ref, groups=[1, 2], **EXACT))
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert np.abs(got.astype(int) - pixels[:10]).max() > 10  # the images did change


def test_resume_bookkeeping_and_job_identity(pixels: np.ndarray, server: str, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    write_pngs(folder, pixels[:12])
    out = tmp_path / "out"
    task = Task("encode", **EXACT)
    run(task, str(folder), out, server, shard_size=5, progress=False)
    reference = read(out)
    # What a kill -9 can leave: a shard missing, a shard on disk but not in the manifest, temp files.
    (out / SHARD.format(1)).unlink()
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["done"]["2"], manifest["done"]["1"]
    manifest["finished"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / TMP).mkdir()
    (out / TMP / "0123-part-00001.parquet").write_bytes(b"half a shard")
    summary = run(task, str(folder), out, server, progress=False)
    assert (summary.done_now, summary.done_before) == (5, 7)
    assert read(out).equals(reference)
    assert not (out / TMP).exists()

    with pytest.raises(JobError, match="differs in settings"):
        run(Task("encode", steps=10), str(folder), out, server, progress=False)
    with pytest.raises(JobError, match="differs in shard_size"):
        run(task, str(folder), out, server, shard_size=6, progress=False)
    with pytest.raises(JobError, match="not a batch job folder"):
        run(task, str(folder), folder, server, progress=False)


def test_default_shard_size_keeps_shards_near_256_mib() -> None:
    assert default_shard_size((3, 16, 16)) == 1000 and default_shard_size((3, 256, 256)) == 341


def test_several_servers_share_the_work(
    oracle_repository: Path, oracle_server: EmbeddedServer, src: Path, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient

    def encoded(url: str) -> int:
        with grpcclient.InferenceServerClient(url) as raw:
            stats = raw.get_inference_statistics("encode", as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0))

    with EmbeddedServer(oracle_repository) as second:
        urls = [oracle_server.grpc_url, second.grpc_url]
        before = [encoded(u) for u in urls]
        argv = ["encode", str(src), "--out", str(tmp_path / "out"), "--no-progress", "--concurrency", "4"]
        assert main([*argv, "--server", urls[0], "--server", urls[1]]) == 0
        counts = [encoded(u) - b for u, b in zip(urls, before)]
    print(f"images encoded by each server: {counts}")  # threads pull work: a faster server gets more
    assert sum(counts) == N and min(counts) >= 8


def test_cli(src: Path, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["batch", "mix", "x", "--out", "y", "--reference", "r.png", "--groups", "1,2"])
    assert (args.op, args.groups, args.concurrency, args.engine) == ("mix", [1, 2], 4, "local")
    out = tmp_path / "out"
    argv = ["encode", str(src / "img000*.png"), "--out", str(out), "--server", server, "--no-progress"]
    assert main([*argv, "--solver", "gei2m", "--steps", "4", "--dtype", "float16", "--concurrency", "2"]) == 0
    assert "encode: 10 items in 1 shard →" in capsys.readouterr().out
    z = Latents.from_bytes(pq.read_table(out).column("latent")[0].as_py())
    assert z.dtype == "float16"
    assert main([*argv, "--steps", "9"]) == 2  # another job in that folder
    assert "holds another job" in capsys.readouterr().err
    assert main(["decode", str(src), "--out", str(tmp_path / "d"), "--server", server]) == 2


def test_kill_9_mid_job_then_rerun_gives_each_item_exactly_once(
    src: Path, server: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "grouplat.client.batch", "encode", str(src), "--out", str(out),
               "--server", server, "--shard-size", "10", "--concurrency", "2", "--steps", "400",
               "--no-progress"]  # fmt: skip
    killed_at = []
    for wanted in (3, 9):  # kill right after a shard appears, then again later in the run
        job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(list(out.glob("part-*.parquet"))) < wanted and job.poll() is None:
                assert time.monotonic() < deadline, "the job made no progress"
                time.sleep(0.01)
        finally:
            os.kill(job.pid, signal.SIGKILL)  # by PID: the job process alone
            job.wait()
        assert job.returncode == -signal.SIGKILL, job.stderr.read() if job.stderr else ""
        killed_at.append(len(list(out.glob("part-*.parquet"))))
    assert killed_at[-1] < 20, "the job finished before it was killed"
    summary = run(Task("encode", steps=400), str(src), out, server, progress=False)
    print(f"killed with {killed_at} of 20 shards written; the re-run did {summary.done_now} items")
    table = read(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N and ids == [f"img{i:04d}.png" for i in range(N)]
    assert summary.done_before + summary.done_now == N and summary.done_now < N
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert json.loads((out / MANIFEST).read_text())["finished"]


def test_server_restart_mid_job(
    oracle_repository: Path, src: Path, pixels: np.ndarray, tmp_path: Path
) -> None:
    first = EmbeddedServer(oracle_repository).start()
    ports = {"grpc_port": first.grpc_port, "http_port": first.http_port, "metrics_port": first.metrics_port}
    servers, out, events = [first], tmp_path / "out", {}

    def restart() -> None:
        deadline = time.monotonic() + 60
        while len(list(out.glob("part-*.parquet"))) < 2:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        events["shards at the restart"] = len(list(out.glob("part-*.parquet")))
        servers[0].stop()
        servers.append(EmbeddedServer(oracle_repository, **ports).start())

    thread = threading.Thread(target=restart)
    try:
        thread.start()
        summary = run(Task("encode", steps=400), str(src), out, first.grpc_url, shard_size=10, timeout=60,
                      progress=False)  # fmt: skip
    finally:
        thread.join(120)  # before stopping: the new server may still be starting
        for s in servers:
            s.stop()
    assert len(servers) == 2 and events["shards at the restart"] < 20, events
    assert (summary.done_now, summary.errors) == (N, 0)
    ids = read(out).column("id").to_pylist()
    assert len(set(ids)) == N == len(ids)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, on start
def test_ray_engine_gives_the_same_rows(
    pixels: np.ndarray, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A local Ray on loopback only (by default Ray listens on the machine's routable address).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported
    ray = pytest.importorskip("ray")
    folder = tmp_path / "src"
    write_pngs(folder, pixels[:30])
    (folder / "broken.png").write_bytes(b"not a png")
    task = Task("encode", **EXACT)
    local = run(task, str(folder), tmp_path / "local", server, shard_size=8, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    try:
        start = time.monotonic()
        on_ray = run(task, str(folder), tmp_path / "ray", server, shard_size=8, engine="ray", concurrency=2,
                     progress=False)  # fmt: skip
        print(f"Ray engine: {on_ray.done_now} items in {time.monotonic() - start:.1f} s")
    finally:
        ray.shutdown()
    assert (on_ray.items, on_ray.done_now, on_ray.errors) == (local.items, 31, 1)
    a, b = read(tmp_path / "local"), read(tmp_path / "ray")
    for column in ("id", "path", "status", "error", "fingerprint", "shape"):
        assert a.column(column).equals(b.column(column)), column
    za = [Latents.from_bytes(v).values for v in a.column("latent").to_pylist() if v is not None]
    zb = [Latents.from_bytes(v).values for v in b.column("latent").to_pylist() if v is not None]
    np.testing.assert_allclose(np.concatenate(zb), np.concatenate(za), atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "ray").glob("part-*")) == [SHARD.format(i) for i in range(4)]


def test_imports_without_torch_and_the_cli_without_pyarrow() -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
import grouplat.client.batch.cli
assert not {"pyarrow", "ray", "tqdm"} & set(sys.modules), "the CLI registration imports too much"
import grouplat.client.batch.job, grouplat.client.batch.ray_engine
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
