"""A careless or hostile caller cannot hurt other callers or the server (plain tritonclient, real
embedded tritonserver): bad batch-mates, admin protocols, kill -9, budgets, cancellation,
non-finite results, long parameter values, TLS."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_certificates, make_oracle, oracle_images, oracle_repository_at
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

import grouplat
from grouplat.export.oracle import oracle_info
from grouplat.export.repository import ServingOptions, write_repository
from grouplat.serving import contract as c
from grouplat.serving.server import ADMIN_HEADER, EmbeddedServer, TlsFiles


def tensor(name: str, array: np.ndarray, dtype: str = "FP32") -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def infer(url: str, model: str, inputs: list, **parameters: object) -> np.ndarray:
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, inputs, parameters=parameters or None)
        return result.as_numpy(c.OUTPUTS[model])


def status_of(call) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    try:
        call()
    except InferenceServerException as error:
        return str(error.status()), error.message() or ""
    return "OK", ""


# ---- one bad request never hurts another ----------------------------------------------------


def test_good_requests_succeed_beside_every_kind_of_bad_one_in_one_execute(tmp_path: Path) -> None:
    # One instance and a long queue delay: the dynamic batcher hands all requests to one execute().
    options = ServingOptions(queue_delay_us=400_000, orchestrator_instances=1, request_batch=16)
    repository = oracle_repository_at(tmp_path / "repo", options)
    oracle = make_oracle()
    x = oracle_images(oracle, 3)
    good = {"solver": "gei2m", "steps": 4}
    sends = [
        ("encode", [tensor(c.IMAGE, x[:1])], good),
        ("encode", [tensor(c.IMAGE, x[:1])], {"steps": "²"}),  # isdigit() but not int()
        ("encode", [tensor(c.IMAGE, x[1:2])], good),
        ("encode", [tensor(c.IMAGE, x[:1])], {"schedule": "[[0, 0.5], [0.5"}),  # malformed JSON
        ("encode", [tensor(c.IMAGE, x[:1])], {"schedule": "[" * 5000 + "]" * 5000}),  # RecursionError bait
        ("encode", [tensor(c.IMAGE, x[:1])], {"schedule": "[[0, NaN], [NaN, 0.5], [0.5, 0.7], [0.7, 1]]"}),
        ("encode", [tensor(c.IMAGE, x[:1])], {"schedule": "[[0, null], [null, 0.5], [0.5, 0.7], [0.7, 1]]"}),
        ("encode", [tensor(c.IMAGE, x[:1])], {"solver": "y" * 100_000}),  # must not be echoed
        ("encode", [tensor(c.IMAGE, x[:1] * np.nan)], good),
        ("encode", [tensor(c.IMAGE, x[2:])], good),
    ]
    with EmbeddedServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        answers: queue.Queue = queue.Queue()
        for i, (model, inputs, parameters) in enumerate(sends):
            client.async_infer(
                model,
                inputs,
                lambda result, error, i=i: answers.put((i, result, error)),
                parameters=parameters,
            )
        results = dict((i, (r, e)) for i, r, e in (answers.get(timeout=60) for _ in sends))
        for _ in range(50):  # Triton records the statistics just after it answers
            stats = client.get_inference_statistics("encode", as_json=True)["model_stats"][0]
            if int(stats.get("inference_count", 0)) == len(sends):
                break
            time.sleep(0.1)
        log = server.log_path.read_text()
    assert int(stats["inference_count"]) == len(sends) and int(stats["execution_count"]) == 1
    for i, image in ((0, x[:1]), (2, x[1:2]), (9, x[2:])):  # every good one, exactly
        result, error = results[i]
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy(c.LATENT), oracle.encode(image), atol=1e-4)
    for i in (1, 3, 4, 5, 6, 7, 8):
        error = results[i][1]
        assert error is not None and error.status() == "StatusCode.INVALID_ARGUMENT", (i, error)
        assert len(error.message()) <= 300 and "Traceback" not in error.message()
    assert "y" * 100 not in results[7][1].message()
    assert "Traceback" not in log


# ---- outputs are checked ---------------------------------------------------------------------


def test_a_huge_latent_is_refused_and_a_non_finite_result_is_never_ok(tmp_path: Path, oracle_server) -> None:
    z = np.full((1, 3, 256), 1e38, np.float32)
    status, message = status_of(lambda: infer(oracle_server.grpc_url, "decode", [tensor(c.LATENT, z)]))
    assert status == "StatusCode.INVALID_ARGUMENT" and "within ±" in message
    # An engine that overflows: U = X_T · 1e30 · 1e30 (inf for any non-zero input).
    oracle = make_oracle()
    info = oracle_info(oracle, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
    write_repository(tmp_path / "repo", info, overflowing_engine(info.space))
    with EmbeddedServer(tmp_path / "repo") as server:
        x = oracle_images(oracle, 1)
        status, message = status_of(lambda: infer(server.grpc_url, "encode", [tensor(c.IMAGE, x)]))
    assert status == "StatusCode.INTERNAL" and "non-finite" in message


def overflowing_engine(space: grouplat.LatentSpace) -> bytes:
    big = helper.make_tensor("big", TensorProto.FLOAT, [], [1e30])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["X_T", "big"], ["y"]), helper.make_node("Mul", ["y", "big"], ["U"])],
        "overflow",
        [
            helper.make_tensor_value_info("X_T", TensorProto.FLOAT, ["batch", *space.shape]),
            helper.make_tensor_value_info("LEVELS", TensorProto.FLOAT, ["batch", space.k]),
        ],
        [helper.make_tensor_value_info("U", TensorProto.FLOAT, ["batch", *space.shape])],
        [big],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


# ---- costs are bounded; a cancelled request leaves ---------------------------------------------


def test_a_request_over_the_budget_is_refused(oracle_server) -> None:
    x = oracle_images(make_oracle(), 8)
    call = lambda: infer(oracle_server.grpc_url, "mix", [tensor(c.IMAGE_A, x), tensor(c.IMAGE_B, x),  # noqa: E731
                                                        tensor(c.GROUPS, np.ones((8, 4), bool), "BOOL")],
                         steps=200)  # fmt: skip
    status, message = status_of(call)
    assert status == "StatusCode.INVALID_ARGUMENT" and "budget of 4096" in message  # 3·8·200·2 = 9600


def test_a_cancelled_request_frees_the_engine_within_a_step(tmp_path: Path) -> None:
    options = ServingOptions(orchestrator_instances=1, max_cost=10**7)
    repository = oracle_repository_at(tmp_path / "repo", options)
    x = oracle_images(make_oracle(), 8)
    with EmbeddedServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:

        def encode(steps: int, timeout: float | None = None) -> float:
            started = time.perf_counter()
            parameters = {"steps": steps, "solver": "heun"}
            client.infer("encode", [tensor(c.IMAGE, x)], parameters=parameters, client_timeout=timeout)
            return time.perf_counter() - started

        steps = min(4096, int(200 * 3.0 / max(encode(200), 1e-3)))  # a request of ~3 s on this machine
        alone = encode(steps)  # the long request, undisturbed
        with pytest.raises(InferenceServerException, match="Deadline"):
            encode(steps, timeout=0.2)
        after = encode(4)
    # Had the cancelled request kept the only instance, the small one would wait ~alone − 0.2 s.
    assert alone > 1.0 and after < 0.5 * alone, (steps, alone, after)


# ---- the server cannot be taken over or orphaned ------------------------------------------------


def test_shared_memory_registration_is_refused_by_default(oracle_repository: Path) -> None:
    region = "/grouplat_test_region"
    with EmbeddedServer(oracle_repository, admin_key="s3cret") as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with pytest.raises(InferenceServerException, match="restricted"):
                client.register_system_shared_memory("attack", region, 1 << 16)
            headers = {f"triton-grpc-protocol-{ADMIN_HEADER}": "s3cret"}  # the operator still can
            assert client.get_system_shared_memory_status(headers=headers) is not None
            assert client.is_server_live()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_kill_9_of_grouplat_serve_leaves_no_server_stub_or_shared_memory(oracle_repository: Path) -> None:
    before = set(os.listdir("/dev/shm"))
    command = [sys.executable, "-m", "grouplat.serving.server", "--repository", str(oracle_repository),
               "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"]  # fmt: skip
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in (serve.stdout.readline() if serve.stdout else "")
        servers = _children(serve.pid)
        stubs = [p for s in servers for p in _children(s)]
        regions = set(os.listdir("/dev/shm")) - before
        assert len(servers) == 1 and stubs and regions
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = [p for p in servers + stubs if _alive(p)], regions & set(os.listdir("/dev/shm"))
        if not any(left):
            break
        time.sleep(0.2)
    assert not any(left), f"left behind: processes {left[0]}, shared memory {sorted(left[1])}"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_grouplat_serve_speaks_tls(oracle_repository: Path, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    files = TlsFiles(str(certs / "server.pem"), str(certs / "server.key"))
    x = oracle_images(make_oracle(), 1)
    with EmbeddedServer(oracle_repository, tls=files, http_host="127.0.0.1") as server:
        secure = grpcclient.InferenceServerClient(
            server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")
        )
        with secure:
            z = secure.infer("encode", [tensor(c.IMAGE, x)]).as_numpy(c.LATENT)
        assert np.isfinite(z).all()
        with grpcclient.InferenceServerClient(server.grpc_url) as plain:  # no TLS: refused
            with pytest.raises(InferenceServerException):
                plain.is_server_live(client_timeout=2)
    with pytest.raises(ValueError, match="does not exist"):
        TlsFiles(str(tmp_path / "missing.pem"), str(certs / "server.key")).arguments()


def test_reserved_triton_keys_are_triton_options_not_model_parameters(oracle_server) -> None:
    """`timeout` / `priority` are Triton's own request options: Triton consumes them (the model
    never sees them), and a queue timeout is honoured (proto/README.md says so)."""
    x = oracle_images(make_oracle(), 1)
    with grpcclient.InferenceServerClient(oracle_server.grpc_url) as client:
        result = client.infer("encode", [tensor(c.IMAGE, x)], priority=1, timeout=10_000_000)
        assert np.isfinite(result.as_numpy(c.LATENT)).all()
