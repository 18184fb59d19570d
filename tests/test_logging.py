"""Operations: request ids from the client to the server's errors and log, logging configuration,
and Triton's request traces through `grouplat serve` (real embedded tritonserver, oracle model)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_oracle, oracle_images
from tritonclient.utils import InferenceServerException

from grouplat.cli import LOG_LEVEL_ENV, _StderrHandler, configure_logging
from grouplat.cli import main as cli_main
from grouplat.client import AsyncClient, Client, InvalidRequestError, ServerUnavailableError
from grouplat.serving import contract as c
from grouplat.serving.engines import MESSAGE_LIMIT, error_response
from grouplat.serving.server import EmbeddedServer, _free_ports, trace_arguments

HEX_ID = re.compile(r"[0-9a-f]{32}")
OVER_BUDGET = {"solver": "heun", "steps": 3000}  # 6000 network evaluations > the default budget 4096


def tensor(name: str, array: np.ndarray, dtype: str = "FP32") -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def refusal(url: str, model: str, inputs: list, request_id: str = "", **parameters: object) -> str:
    """The error message of a request the server must refuse with INVALID_ARGUMENT."""
    with grpcclient.InferenceServerClient(url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs, request_id=request_id, parameters=parameters or None)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
    message = caught.value.message() or ""
    assert len(message) <= MESSAGE_LIMIT, message
    return message


def log_lines(server: EmbeddedServer, text: str, timeout: float = 10.0) -> list[str]:
    """The server log's lines holding `text` (the stub's log lines reach the file shortly after)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def warning_lines(server: EmbeddedServer, request_id: str) -> list[str]:
    """Triton's WARNING lines (`W<date> …] "WARNING <logger>: …"`) naming `[request <id>]`."""
    return [
        line
        for line in log_lines(server, f"[request {request_id}]")
        if line.startswith("W") and "WARNING grouplat.serving" in line
    ]


# ---- the server: every error names its request, and is logged once with it -------------------


def test_a_refused_request_names_its_id_in_the_error_and_a_warning_line(oracle_server) -> None:
    x = oracle_images(make_oracle(), 1)
    message = refusal(oracle_server.grpc_url, c.ENCODE, [tensor(c.IMAGE, x * np.nan)], "bad-image-41")
    assert message.endswith("[request bad-image-41]") and "NaN or Inf" in message
    (line,) = warning_lines(oracle_server, "bad-image-41")
    assert "encode failed (INVALID_ARG)" in line and "NaN or Inf" in line

    message = refusal(oracle_server.grpc_url, c.ENCODE, [tensor(c.IMAGE, x)], "costly-42", **OVER_BUDGET)
    assert "budget of 4096" in message and message.endswith("[request costly-42]")
    assert len(warning_lines(oracle_server, "costly-42")) == 1

    # The velocity model too.
    levels = np.full((1, 4), 2.0, np.float32)
    inputs = [tensor(c.X_T, x), tensor(c.LEVELS, levels)]
    message = refusal(oracle_server.grpc_url, c.VELOCITY, inputs, "levels-43")
    assert "must lie in [0, 1]" in message and message.endswith("[request levels-43]")
    (line,) = warning_lines(oracle_server, "levels-43")
    assert "velocity failed (INVALID_ARG)" in line


def test_ids_are_made_safe_and_short_and_a_request_without_one_gets_one(oracle_server) -> None:
    x = oracle_images(make_oracle(), 1)
    bad = [tensor(c.IMAGE, x * np.nan)]
    message = refusal(oracle_server.grpc_url, c.ENCODE, bad)
    server_id = re.search(r"\[request (srv-[0-9a-f]{12})\]$", message)
    assert server_id, message
    assert len(warning_lines(oracle_server, server_id[1])) == 1

    message = refusal(oracle_server.grpc_url, c.ENCODE, bad, 'odd id\n"quoted"')
    assert message.endswith("[request odd?id??quoted?]"), message
    assert len(warning_lines(oracle_server, "odd?id??quoted?")) == 1

    message = refusal(oracle_server.grpc_url, c.ENCODE, bad, "L" * 500)  # cut to 64 characters
    assert message.endswith(f"[request {'L' * 63}…]") and len(message) <= MESSAGE_LIMIT


def test_a_long_message_is_cut_before_its_id() -> None:
    class Error:
        def __init__(self, message: str, code: int) -> None:
            self.message = message

    class Response:
        def __init__(self, output_tensors: list, error: Error) -> None:
            self.error = error

    class PbUtils:
        TritonError, InferenceResponse = Error, Response

    message = error_response(PbUtils, "m" * 1000, 3, "id-5").error.message
    assert len(message) == MESSAGE_LIMIT and message.endswith("m… [request id-5]")
    assert error_response(PbUtils, "short", 3).error.message == "short"


def test_successful_requests_are_not_logged_at_info(oracle_server) -> None:
    x = oracle_images(make_oracle(), 1)
    with grpcclient.InferenceServerClient(oracle_server.grpc_url) as client:
        client.infer(c.ENCODE, [tensor(c.IMAGE, x)], request_id="fine-44", parameters={"steps": 4})
    assert log_lines(oracle_server, "fine-44", timeout=1.0) == []
    # The orchestrators said at load that they were ready, through the same bridge (INFO).
    assert any(
        line.startswith("I") and "INFO grouplat.serving.orchestration: encode" in line
        for line in log_lines(oracle_server, "grouplat.serving.orchestration")
    )


# ---- the client: an id on every request and on every error -------------------------------------


@pytest.fixture()
def sent_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request id of every infer the blocking tritonclient sends."""
    sent: list[str] = []
    original = grpcclient.InferenceServerClient.infer

    def infer(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(kwargs.get("request_id", ""))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(grpcclient.InferenceServerClient, "infer", infer)
    return sent


def test_the_client_sends_an_id_with_every_request(oracle_server, sent_ids: list[str]) -> None:
    images = oracle_images(make_oracle(), 3, seed=5)
    calls = []

    def call(method, *args, **kwargs):  # type: ignore[no-untyped-def]
        first = len(sent_ids)
        result = method(*args, steps=4, solver="gei2m", **kwargs)
        calls.append(sent_ids[first:])
        assert calls[-1] and len(set(calls[-1])) == 1  # one id for all the requests of a call
        return result

    with Client(oracle_server.grpc_url, timeout=60) as client:
        z = call(client.encode, images)
        call(client.decode, z)
        call(client.mix, images[:1], images[1:], groups=1)
        assert all(HEX_ID.fullmatch(ids[0]) for ids in calls)
        assert len({ids[0] for ids in calls}) == 3  # a new id per call
        call(client.decode, z, request_id="mine-1")
    with Client(oracle_server.grpc_url, timeout=60, request_id="job-7") as client:
        call(client.encode, images)
        call(client.encode, images, request_id="mine-2")  # the call's id wins over the client's
    assert [ids[0] for ids in calls[-3:]] == ["mine-1", "job-7", "mine-2"]


def test_client_errors_carry_the_request_id(oracle_server, sent_ids: list[str]) -> None:
    images = oracle_images(make_oracle(), 1, seed=6)
    with Client(oracle_server.grpc_url, timeout=60) as client:
        with pytest.raises(InvalidRequestError, match="budget") as caught:
            client.encode(images, **OVER_BUDGET)
        generated = caught.value.request_id
        assert generated is not None and HEX_ID.fullmatch(generated) and sent_ids[-1] == generated
        assert str(caught.value).endswith(f"[request {generated}]")  # the server's message names it
        assert str(caught.value).count(generated) == 1  # and the client adds it no second time
        assert len(warning_lines(oracle_server, generated)) == 1

        with pytest.raises(InvalidRequestError) as caught:
            client.encode(images, request_id="quote-me-9", **OVER_BUDGET)
        assert caught.value.request_id == "quote-me-9" and "[request quote-me-9]" in str(caught.value)
        assert len(warning_lines(oracle_server, "quote-me-9")) == 1

    async def refused() -> InvalidRequestError:
        async with AsyncClient(oracle_server.grpc_url, timeout=60, request_id="async-3") as client:
            with pytest.raises(InvalidRequestError) as caught:
                await client.encode(images, **OVER_BUDGET)
            return caught.value

    error = asyncio.run(refused())
    assert error.request_id == "async-3" and str(error).endswith("[request async-3]")
    assert len(warning_lines(oracle_server, "async-3")) == 1


def test_an_error_without_a_server_still_names_the_call(sent_ids: list[str]) -> None:
    (port,) = _free_ports("127.0.0.1", 1)
    with Client(f"127.0.0.1:{port}", timeout=0.5) as client:
        with pytest.raises(ServerUnavailableError) as caught:
            client.info(request_id="nobody-home")  # a config request: no infer sent
    assert caught.value.request_id == "nobody-home" and str(caught.value).endswith("[request nobody-home]")
    with Client(f"127.0.0.1:{port}", timeout=0.5) as client, pytest.raises(ValueError, match="request_id"):
        client.info(request_id="")


# ---- logging configuration ----------------------------------------------------------------------


@pytest.fixture()
def fresh_logging(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The root and grouplat loggers and $GROUPLAT_LOG_LEVEL as they were, after the test."""
    monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)  # monkeypatch restores it
    root, ours = logging.getLogger(), logging.getLogger("grouplat")
    before, levels = list(root.handlers), (root.level, ours.level)
    for handler in before:  # one an earlier test's `grouplat` command left: as if never configured
        if isinstance(handler, _StderrHandler):
            root.removeHandler(handler)
    yield
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


def test_configure_logging_levels_and_environment(
    fresh_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handlers = len(logging.getLogger().handlers)
    assert configure_logging() == logging.INFO
    logging.getLogger("grouplat.test").info("our progress")
    logging.getLogger("some.library").info("their chatter")  # other libraries: WARNING and above
    err = capsys.readouterr().err
    assert "INFO grouplat.test: our progress" in err and "their chatter" not in err
    assert configure_logging("warning") == logging.WARNING  # again: one handler, a new level
    assert len(logging.getLogger().handlers) == handlers + 1
    logging.getLogger("grouplat.test").info("hidden info")
    logging.getLogger("grouplat.test").warning("shown warning")
    err = capsys.readouterr().err
    assert "WARNING grouplat.test: shown warning" in err and "hidden info" not in err
    assert os.environ[LOG_LEVEL_ENV] == "WARNING"  # for the models `grouplat serve` runs
    monkeypatch.setenv(LOG_LEVEL_ENV, "debug")
    assert configure_logging() == logging.DEBUG
    monkeypatch.setenv(LOG_LEVEL_ENV, "chatty")
    assert configure_logging() == logging.INFO
    assert "'CHATTY' is no log level" in capsys.readouterr().err


def test_the_log_level_flag_comes_before_the_command(
    fresh_logging: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `train` builds its config from every argument it is given: --log-level is not among them.
    assert cli_main(["--log-level", "error", "train", "--data", "pictures", "--out", str(tmp_path)]) == 2
    assert "unknown data spec" in capsys.readouterr().err
    assert logging.getLogger("grouplat").level == logging.ERROR and os.environ[LOG_LEVEL_ENV] == "ERROR"
    assert cli_main(["--log-level=warning", "encode", str(tmp_path / "none.png"), "-o", "x.latent"]) == 2
    assert "no such file" in capsys.readouterr().err


# ---- tracing and the server log through `grouplat serve` ----------------------------------------


def test_trace_arguments() -> None:
    assert trace_arguments(["rate=10", "triton,log-frequency=5"], None) == [
        "--trace-config=rate=10",
        "--trace-config=triton,log-frequency=5",
    ]
    args = trace_arguments(["rate=10"], "t.json")
    assert args[0] == f"--trace-config=triton,file={Path('t.json').resolve()}"
    assert args[1:] == ["--trace-config=rate=10", "--trace-config=level=TIMESTAMPS"]  # rate kept
    with pytest.raises(ValueError, match="KEY=VALUE"):
        trace_arguments(["rate"], None)


def test_grouplat_serve_traces_requests_and_logs_them(oracle_repository: Path, tmp_path: Path) -> None:
    trace, log = tmp_path / "traces" / "trace.json", tmp_path / "server.log"
    command = [sys.executable, "-m", "grouplat.cli", "serve", "--repository", str(oracle_repository),
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
               "--trace-file", str(trace), "--log-file", str(log)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no ready line within 120 s"
        match = re.search(r"on grpc (\S+),", proc.stdout.readline())
        assert match
        images = oracle_images(make_oracle(), 2, seed=7)
        with Client(match[1], timeout=60) as client:
            client.encode(images, steps=4, solver="gei2m", request_id="traced-1")
            with pytest.raises(InvalidRequestError):
                client.encode(images, request_id="traced-2", **OVER_BUDGET)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Triton writes the traces when it stops: one per request, named by model and request id.
    entries = json.loads(trace.read_text())
    heads = {e["id"]: e for e in entries if "model_name" in e}
    traced = {e.get("request_id"): e for e in heads.values()}
    assert traced["traced-1"]["model_name"] == c.ENCODE and traced["traced-2"]["model_name"] == c.ENCODE
    stamps = {
        t["name"] for e in entries if e["id"] == traced["traced-1"]["id"] for t in e.get("timestamps", [])
    }
    assert {"REQUEST_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"} <= stamps
    # The refused one is in the --log-file as a warning; the good one is not logged at INFO.
    lines = log.read_text(errors="replace").splitlines()
    assert [line for line in lines if "[request traced-2]" in line and line.startswith("W")]
    assert not [line for line in lines if "traced-1" in line]
