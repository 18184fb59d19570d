"""The served models against the real embedded tritonserver, called with plain tritonclient.

The velocity engine is the exact Gaussian oracle, so served results are checked against the
exact encode `(x̄ − μ)/σ` and against the in-process core solver over the same ONNX file.
"""

from __future__ import annotations

import json
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_oracle, oracle_images, oracle_repository_at
from tritonclient.utils import InferenceServerException

import grouplat
from grouplat.export.repository import ServingOptions
from grouplat.modelinfo import ModelInfo
from grouplat.serving.engines import OnnxVelocity
from grouplat.serving.server import EmbeddedServer
from grouplat.settings import (
    DEFAULT_ENCODE_STEPS,
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    default_encode_schedule,
    default_generate_schedule,
)


def tensor(name, array, dtype="FP32"):
    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


def call(server, model, inputs, **parameters):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    result = client.infer(model, [tensor(*i) for i in inputs], parameters=parameters or None)
    return result.as_numpy({"encode": "LATENT", "velocity": "U"}.get(model, "IMAGE"))


DEFAULT_SCHEDULE = default_generate_schedule(4).cuts
DEFAULT_ENCODE_SCHEDULE = default_encode_schedule(4).cuts


def in_process(
    repository,
    operation,
    *args,
    steps=None,
    solver=DEFAULT_SOLVER,
    schedule=None,
    encode_schedule=None,
    encode_steps=None,
):
    """The same solve with the core solver over the same ONNX engine, no server. Schedules and
    steps: the served pairs by default; a `schedule` (`steps`) given serves both directions unless
    `encode_schedule` (`encode_steps`) is."""
    if schedule is None:
        schedule, encode_schedule = DEFAULT_SCHEDULE, encode_schedule or DEFAULT_ENCODE_SCHEDULE
    if steps is None:
        steps, encode_steps = DEFAULT_STEPS, encode_steps or DEFAULT_ENCODE_STEPS
    info = ModelInfo.load(repository / "encode" / "1")
    velocity = OnnxVelocity(repository / "velocity" / "1" / "model.onnx")
    settings = dict(space=info.space, solver=solver, std=info.std, mean=info.mean, hide=info.hide)
    decoding = dict(settings, schedule=grouplat.Schedule.from_cuts(schedule), steps=steps)
    encoding = dict(
        settings,
        schedule=grouplat.Schedule.from_cuts(encode_schedule or schedule),
        steps=encode_steps or steps,
    )
    if operation == "encode":
        return grouplat.encode(velocity, args[0], **encoding)
    if operation == "decode":
        return grouplat.decode(velocity, args[0], **decoding)
    a, b, groups = args
    z = grouplat.encode(velocity, np.concatenate([a, b]), **encoding)
    return grouplat.decode(velocity, grouplat.mix(info.space, z[: len(a)], z[len(a) :], groups), **decoding)


def test_served_velocity_is_the_oracle(oracle, oracle_server):
    x = oracle_images(oracle, 3)
    levels = np.array([[1, 1, 0.5, -1], [1, 0.2, -1, -1], [0.7, -1, -1, -1]], np.float32)
    u = call(oracle_server, "velocity", [("X_T", x), ("LEVELS", levels)])
    np.testing.assert_allclose(u, oracle(x, levels), atol=1e-4)


def test_served_encode_is_the_exact_encode(oracle, oracle_server):
    x = oracle_images(oracle, 4)
    exact = oracle.encode(x)
    z_gei = call(oracle_server, "encode", [("IMAGE", x)], solver="gei2m", steps=4)
    assert np.abs(z_gei - exact).max() < 1e-4  # GEI is exact for Gaussian data
    z_heun = call(oracle_server, "encode", [("IMAGE", x)], solver="heun", steps=400)
    assert np.abs(z_heun - exact).max() < 1e-2  # Heun: solver accuracy at 800 NFE


def test_encode_decode_mix_equal_the_in_process_solver(oracle, oracle_server, oracle_repository):
    x = oracle_images(oracle, 4)
    z = call(oracle_server, "encode", [("IMAGE", x)])
    np.testing.assert_allclose(z, in_process(oracle_repository, "encode", x), atol=1e-4)
    images = call(oracle_server, "decode", [("LATENT", z)])
    np.testing.assert_allclose(images, in_process(oracle_repository, "decode", z), atol=1e-4)
    groups = np.array([[True, False, False, False], [False, True, True, False]])
    mixed = call(oracle_server, "mix", [("IMAGE_A", x[:2]), ("IMAGE_B", x[2:]), ("GROUPS", groups, "BOOL")])
    np.testing.assert_allclose(mixed, in_process(oracle_repository, "mix", x[:2], x[2:], groups), atol=1e-4)


def test_request_parameters_change_the_result(oracle, oracle_server, oracle_repository):
    x = oracle_images(oracle, 2)
    exact = oracle.encode(x)
    coarse = call(oracle_server, "encode", [("IMAGE", x)], steps=8, solver="heun")  # GEI: exact at any steps
    fine = call(oracle_server, "encode", [("IMAGE", x)], steps=200, solver="heun")
    assert np.abs(fine - exact).max() < np.abs(coarse - exact).max() / 10
    euler = call(oracle_server, "encode", [("IMAGE", x)], steps=8, solver="euler")
    np.testing.assert_allclose(
        euler, in_process(oracle_repository, "encode", x, steps=8, solver="euler"), atol=1e-4
    )
    other = call(oracle_server, "encode", [("IMAGE", x)], schedule="0.6,0.8,0.9", solver="heun")
    expected = in_process(oracle_repository, "encode", x, schedule="0.6,0.8,0.9", solver="heun")
    np.testing.assert_allclose(other, expected, atol=1e-4)
    assert np.abs(other - call(oracle_server, "encode", [("IMAGE", x)], solver="heun")).max() > 1e-3


def test_encode_and_decode_have_their_own_default_schedules(oracle, oracle_server, oracle_repository):
    """Served defaults: an S1-heavy encode, an S1-light decode; a request's `schedule` serves both
    directions unless it gives `encode_schedule` too. Heun, not exact on Gaussian data, tells the
    schedules apart."""
    assert DEFAULT_SCHEDULE != DEFAULT_ENCODE_SCHEDULE
    x = oracle_images(oracle, 2)
    z = call(oracle_server, "encode", [("IMAGE", x)], solver="heun")
    np.testing.assert_allclose(z, in_process(oracle_repository, "encode", x, solver="heun"), atol=1e-4)
    as_decode = in_process(oracle_repository, "encode", x, solver="heun", schedule=DEFAULT_SCHEDULE)
    assert np.abs(z - as_decode).max() > 1e-3
    images = call(oracle_server, "decode", [("LATENT", z)], solver="heun")
    np.testing.assert_allclose(images, in_process(oracle_repository, "decode", z, solver="heun"), atol=1e-4)
    groups = np.array([[True, False, False, False], [False, True, True, False]])
    inputs = [("IMAGE_A", x), ("IMAGE_B", x[::-1]), ("GROUPS", groups, "BOOL")]
    mixed = call(oracle_server, "mix", inputs, solver="heun")
    expected = in_process(oracle_repository, "mix", x, x[::-1], groups, solver="heun")
    np.testing.assert_allclose(mixed, expected, atol=1e-4)
    pair = dict(schedule="0.6,0.8,0.9", encode_schedule="0.3,0.5,0.7")
    z = call(oracle_server, "encode", [("IMAGE", x)], solver="heun", **pair)
    expected = in_process(oracle_repository, "encode", x, solver="heun", **pair)
    np.testing.assert_allclose(z, expected, atol=1e-4)


def test_encode_and_decode_have_their_own_default_steps(oracle, oracle_server, oracle_repository):
    """Served defaults: a 36-step encode (mix: both its encodes) and a 24-step decode; a request's
    `steps` serves both directions unless it gives `encode_steps` too; bad encode steps are refused
    by name and the server goes on."""
    assert DEFAULT_ENCODE_STEPS != DEFAULT_STEPS
    client = grpcclient.InferenceServerClient(oracle_server.grpc_url)
    for model in ("encode", "decode", "mix"):
        params = client.get_model_config(model, as_json=True)["config"]["parameters"]
        assert params["steps"]["string_value"] == str(DEFAULT_STEPS)
        assert params["encode_steps"]["string_value"] == str(DEFAULT_ENCODE_STEPS)
    x = oracle_images(oracle, 2)
    at_decode_steps = in_process(oracle_repository, "encode", x, solver="heun", steps=DEFAULT_STEPS)
    assert np.abs(call(oracle_server, "encode", [("IMAGE", x)], solver="heun") - at_decode_steps).max() > 1e-3
    for steps in (dict(steps=12), dict(encode_steps=12), dict(steps=10, encode_steps=14)):
        z = call(oracle_server, "encode", [("IMAGE", x)], solver="heun", **steps)
        np.testing.assert_allclose(
            z, in_process(oracle_repository, "encode", x, solver="heun", **steps), atol=1e-4
        )
        groups = np.array([[True, False, False, False], [False, True, True, False]])
        inputs = [("IMAGE_A", x), ("IMAGE_B", x[::-1]), ("GROUPS", groups, "BOOL")]
        mixed = call(oracle_server, "mix", inputs, solver="heun", **steps)
        expected = in_process(oracle_repository, "mix", x, x[::-1], groups, solver="heun", **steps)
        np.testing.assert_allclose(mixed, expected, atol=1e-4)
    with pytest.raises(InferenceServerException, match="encode steps must be an integer in 4..") as error:
        call(oracle_server, "encode", [("IMAGE", x)], encode_steps=2)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert call(oracle_server, "encode", [("IMAGE", x)], steps=8).shape == (2, *oracle.space.latent_shape)


def test_every_model_exposes_the_model_parameters(oracle_server, oracle_repository):
    client = grpcclient.InferenceServerClient(oracle_server.grpc_url)
    info = ModelInfo.load(oracle_repository / "encode" / "1")
    for model in ("velocity", "encode", "decode", "mix"):
        params = client.get_model_config(model, as_json=True)["config"]["parameters"]
        assert params["fingerprint"]["string_value"] == info.fingerprint
        assert json.loads(params["space"]["string_value"]) == info.space.describe()
        assert params["generate_schedule"]["string_value"] == DEFAULT_SCHEDULE
        assert params["encode_schedule"]["string_value"] == DEFAULT_ENCODE_SCHEDULE
        assert params["train_schedule"]["string_value"] == grouplat.PAPER_TRAIN


def bad_requests(oracle, info):
    x = oracle_images(oracle, 1)
    z = np.zeros((1, *info.space.latent_shape), np.float32)
    groups = np.ones((1, 4), bool)
    return [
        ("encode", [("IMAGE", x * np.nan)], {}, "NaN or Inf"),
        ("encode", [("IMAGE", x + np.inf)], {}, "NaN or Inf"),
        ("encode", [("IMAGE", x * 0 + 1.5)], {}, r"\[-1, 1\]"),
        ("encode", [("IMAGE", x)], {"solver": "rk45"}, "unknown solver 'rk45'"),
        ("encode", [("IMAGE", x)], {"schedule": "0.9,0.1,0.5"}, "bad schedule"),
        ("encode", [("IMAGE", x)], {"schedule": "0.5"}, "needs 3 cut points"),
        ("encode", [("IMAGE", x)], {"steps": 2}, "steps must be an integer in 4..4096"),
        ("encode", [("IMAGE", x)], {"steps": "many"}, "steps must be an integer"),
        ("encode", [("IMAGE", x)], {"temperature": 2}, "unknown request parameter"),
        ("encode", [("IMAGE", x[:, :, :8])], {}, "unexpected shape"),
        ("encode", [("IMAGE", x.astype(np.float64), "FP64")], {}, "data-type"),
        ("decode", [("LATENT", z[:, :, :100])], {}, "unexpected shape"),
        ("decode", [("LATENT", z * np.nan)], {}, "NaN or Inf"),
        (
            "decode",
            [("LATENT", z), ("FINGERPRINT", np.array([[b"f" * 64]], object), "BYTES")],
            {},
            "not by this model",
        ),
        ("mix", [("IMAGE_A", x), ("IMAGE_B", x), ("GROUPS", groups[:, :3], "BOOL")], {}, "unexpected shape"),
        ("mix", [("IMAGE_A", x), ("IMAGE_B", x * 2), ("GROUPS", groups, "BOOL")], {}, "IMAGE_B values"),
    ]


def test_every_bad_request_gets_invalid_argument_and_the_server_keeps_serving(
    oracle, oracle_server, oracle_repository
):
    info = ModelInfo.load(oracle_repository / "encode" / "1")
    x = oracle_images(oracle, 1)
    for model, inputs, parameters, message in bad_requests(oracle, info):
        with pytest.raises(InferenceServerException, match=message) as caught:
            call(oracle_server, model, inputs, **parameters)
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", (model, message, caught.value)
        np.testing.assert_allclose(
            call(oracle_server, "encode", [("IMAGE", x)], solver="gei2m", steps=4),
            oracle.encode(x),
            atol=1e-4,
        )
    fingerprint = np.array([[info.fingerprint.encode()]], object)
    z = oracle.encode(x).astype(np.float32)
    decoded = call(
        oracle_server, "decode", [("LATENT", z), ("FINGERPRINT", fingerprint, "BYTES")], solver="gei2m"
    )
    np.testing.assert_allclose(decoded, x, atol=1e-4)


def test_a_batch_of_good_and_bad_requests_answers_each(tmp_path):
    # A long queue delay makes the dynamic batcher hand all four requests to one execute().
    repository = oracle_repository_at(tmp_path / "repo", ServingOptions(queue_delay_us=300_000))
    oracle = make_oracle()
    x = oracle_images(oracle, 2)
    requests = [x[:1], x[:1] * np.nan, x[1:], np.full_like(x[:1], 3.0)]
    with EmbeddedServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        answers: queue.Queue = queue.Queue()
        for images in requests:
            client.async_infer(
                "encode",
                [tensor("IMAGE", images)],
                lambda result, error: answers.put((result, error)),
                parameters={"solver": "gei2m", "steps": 4},
            )
        results = [answers.get(timeout=30) for _ in requests]
        for _ in range(100):  # responses leave the scheduler's thread before Triton counts them
            stats = client.get_inference_statistics("encode", as_json=True)["model_stats"][0]
            if "inference_count" in stats:
                break
            time.sleep(0.05)
    assert int(stats["inference_count"]) == 4 and int(stats["execution_count"]) == 1  # one execute()
    errors = [e for _, e in results if e is not None]
    assert len(errors) == 2 and all(e.status() == "StatusCode.INVALID_ARGUMENT" for e in errors)
    latents = sorted((r.as_numpy("LATENT") for r, e in results if e is None), key=lambda z: float(z.sum()))
    expected = sorted((oracle.encode(x[i : i + 1]) for i in range(2)), key=lambda z: float(z.sum()))
    for got, want in zip(latents, expected):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_bls_call_mode_gives_the_same_results(tmp_path, oracle_server):
    repository = oracle_repository_at(tmp_path / "bls", ServingOptions(velocity_call="bls"))
    oracle = make_oracle()
    x = oracle_images(oracle, 3)
    with EmbeddedServer(repository) as bls_server:
        for params in ({}, {"solver": "gei2m", "steps": 8}):
            z_bls = call(bls_server, "encode", [("IMAGE", x)], **params)
            np.testing.assert_allclose(
                z_bls, call(oracle_server, "encode", [("IMAGE", x)], **params), atol=1e-5
            )
        images = call(bls_server, "decode", [("LATENT", z_bls)], solver="gei2m", steps=8)
        np.testing.assert_allclose(images, x, atol=1e-4)
