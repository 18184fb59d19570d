"""The embedded Triton server: the real tritonserver binary from nvidia-pytriton, no mocks.

Needs the `serve` extra (nvidia-pytriton, tritonclient). About 10 s in all: each start
takes ~1.5 s and each graceful stop ~3 s (Triton unloads models on a 1 s tick).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from grouplat.serving.server import EmbeddedServer, RepositoryError

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def make_repository(root: Path, model_py: str = MODEL) -> Path:
    version = root / "add_one" / "1"
    version.mkdir(parents=True)
    (root / "add_one" / "config.pbtxt").write_text(CONFIG)
    (version / "model.py").write_text(model_py)
    return root


def infer(url: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("add_one", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
        out = result.as_numpy("OUTPUT0")
        assert out is not None
        return out


def group_members(pgid: int) -> list[int]:
    """PIDs of live processes in process group `pgid` (the server and its backend stubs)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serves_python_model_and_stops_cleanly(tmp_path: Path) -> None:
    import tritonclient.grpc as grpcclient

    server = EmbeddedServer(make_repository(tmp_path / "repo"), startup_timeout=60)
    with server:
        pid = server.pid
        assert pid is not None and server.is_running()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", server.grpc_url)
        assert len({server.grpc_port, server.http_port, server.metrics_port}) == 3

        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.testing.assert_array_equal(infer(server.grpc_url, x), x + 1)

        # A wrong shape is refused by Triton, and the server keeps serving.
        with pytest.raises(grpcclient.InferenceServerException, match="unexpected shape"):
            infer(server.grpc_url, np.zeros((2, 3), np.float32))
        y = np.full((1, 4), -1.0, np.float32)
        np.testing.assert_array_equal(infer(server.grpc_url, y), np.zeros((1, 4), np.float32))
        assert group_members(pid)  # the server and its Python-backend stub

    # stop() reaped the server, and no stub of its process group is left.
    assert not pid_alive(pid)
    assert group_members(pid) == []
    assert not server.is_running()


def test_a_server_killed_before_it_was_ready_is_started_once_more(tmp_path: Path) -> None:
    """tritonserver's gRPC poller has aborted at startup on a loaded machine (SIGABRT, CI
    2026-12-03): start() launches it once more, and the first log stays."""
    server = EmbeddedServer(make_repository(tmp_path / "repo"), startup_timeout=60)
    aborted: list[int] = []

    def abort_the_first_launch() -> None:
        deadline = time.monotonic() + 30
        while server.pid is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert server.pid is not None
        aborted.append(server.pid)
        os.kill(server.pid, signal.SIGABRT)

    killer = threading.Thread(target=abort_the_first_launch)
    killer.start()
    with server:
        killer.join()
        assert aborted and server.pid != aborted[0] and server.is_running()
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(infer(server.grpc_url, x), x + 1)
        assert server.log_path.with_suffix(".first.log").is_file()  # until stop() clears the work dir
    assert not pid_alive(aborted[0])


def test_bad_repository_raises_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        EmbeddedServer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError, match="holds no models"):
        EmbeddedServer(tmp_path / "empty")


def test_failed_start_raises_with_log_tail(tmp_path: Path) -> None:
    broken = MODEL + "\nraise ImportError('grouplat-test-broken-model')\n"
    server = EmbeddedServer(make_repository(tmp_path / "repo", broken), startup_timeout=60)
    with pytest.raises(RuntimeError, match="grouplat-test-broken-model"):
        server.start()
    assert server.pid is not None
    assert not pid_alive(server.pid) and group_members(server.pid) == []
    server.stop()


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "grouplat.serving.server", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo")
    proc = cli("--repository", str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no ready line within 60 s"
        line = proc.stdout.readline()
        match = re.fullmatch(rf"grouplat: serving {re.escape(str(repo))} on grpc (\S+), http (\S+)\n", line)
        assert match, line
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(infer(match[1], x), x + 1)
        servers = children(proc.pid)  # the tritonserver the CLI started
        assert servers

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        assert out == ""  # the ready line was the only output
        assert not any(pid_alive(p) for p in servers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def children(ppid: int) -> list[int]:
    """PIDs of the child processes of `ppid` (the CLI's tritonserver)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == ppid:
            children.append(int(stat.parent.name))
    return children


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_cli_bad_repository_exits_2(tmp_path: Path, kind: str) -> None:
    repo = tmp_path / kind
    if kind == "empty":
        repo.mkdir()
    proc = cli("--repository", str(repo))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""
    assert "grouplat serve: error: model repository" in err
