"""Property-based fuzzing of the served models over plain gRPC (hypothesis, fixed seed).

Hundreds of generated requests to encode / decode / mix / velocity — wrong shapes, dtypes,
missing inputs, NaN / Inf / huge values, and hostile parameters (non-ASCII digits, deep or
non-finite JSON schedules, 100 KB strings, unknown keys). Every answer must be OK with finite
values or INVALID_ARGUMENT with a short message and no traceback; the server must keep serving
and answer a good request exactly as before.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import oracle_images, oracle_repository_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from grouplat.export.repository import ServingOptions
from grouplat.modelinfo import ModelInfo
from grouplat.serving import contract as c
from grouplat.serving.server import EmbeddedServer

CASES = 320
STATUS_OK, STATUS_BAD = "OK", "StatusCode.INVALID_ARGUMENT"
TRACEBACK_MARKERS = ("Traceback", 'File "/', '.py", line')
# Ours are cut to 300 characters (engines.MESSAGE_LIMIT); Triton's own shape errors run to ~440.
MESSAGE_LIMIT = 500


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    # A small cost budget: generated requests that are valid but expensive are refused quickly.
    options = ServingOptions(max_cost=600, queue_delay_us=100)
    repository = oracle_repository_at(tmp_path_factory.mktemp("fuzz") / "repo", options)
    with EmbeddedServer(repository) as server:
        yield server, ModelInfo.load(repository / c.ENCODE / "1")


def shapes(info: ModelInfo) -> dict[str, dict[str, tuple[list[int], str]]]:
    image, latent = list(info.space.shape), [info.space.channels, info.space.size]
    return {
        c.ENCODE: {c.IMAGE: (image, "FP32")},
        c.DECODE: {c.LATENT: (latent, "FP32"), c.FINGERPRINT: ([1], "BYTES")},
        c.MIX: {c.IMAGE_A: (image, "FP32"), c.IMAGE_B: (image, "FP32"), c.GROUPS: ([info.space.k], "BOOL")},
        c.VELOCITY: {c.X_T: (image, "FP32"), c.LEVELS: ([info.space.k], "FP32")},
    }


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["²", "٣", "4²", "1e3", "-4", " 8 ", "0x10", "9" * 30, "", "NaN", "inf"]),
    st.integers(1, 60).map(lambda n: "[" * n * 40 + "]" * n * 40),  # deep JSON: RecursionError bait
    st.sampled_from(
        [
            "[[0, NaN], [NaN, 1]]",
            "[[0, null], [null, 1]]",
            "[[0, 0.5], [0.5, 1e400]]",
            '{"a": 1}',
            "[[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1]]",
            "0.1,0.2,0.3",
            "0.3,0.2,0.1",
            "0.1,0.2,0.3,0.4",
        ]
    ),
    st.integers(1, 3).map(lambda n: "x" * (n * 40_000)),  # 40–120 KB: must not be echoed back
)
PARAMETER_VALUE = st.one_of(st.integers(-(2**40), 2**40), st.booleans(), HOSTILE_TEXT)


@st.composite
def requests(draw: st.DrawFn, info: ModelInfo) -> tuple[str, list[tuple[str, np.ndarray, str]], dict]:
    model = draw(st.sampled_from([c.ENCODE, c.DECODE, c.MIX, c.VELOCITY]))
    batch = draw(st.integers(1, 3))
    inputs = []
    for name, (dims, dtype) in shapes(info)[model].items():
        fault = draw(
            st.sampled_from(
                ["none"] * 6 + ["missing", "shape", "dtype", "nan", "inf", "huge", "range", "zero"]
            )
        )
        if fault == "missing" or (name == c.FINGERPRINT and draw(st.booleans())):
            continue
        if dtype == "BYTES":
            text = draw(st.one_of(st.just(info.fingerprint), st.text(max_size=70)))
            inputs.append((name, np.array([[text.encode()]] * batch, object), "BYTES"))
            continue
        shape = [batch, *dims]
        if fault == "shape":
            shape[draw(st.integers(1, len(shape) - 1))] += draw(st.sampled_from([-1, 1, 5]))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if dtype == "BOOL":
            inputs.append((name, rng.random(shape) < 0.5, "BOOL"))
            continue
        if name == c.LEVELS:
            values = (
                rng.choice([-1.0, 0.0, 0.3, 1.0], size=shape) if fault == "none" else rng.normal(size=shape)
            )
        elif name in (c.LATENT, c.X_T):
            values = rng.standard_normal(shape)
        else:
            values = rng.uniform(-1, 1, shape)
        values = {
            "nan": np.where(rng.random(shape) < 0.1, np.nan, values),
            "inf": np.where(rng.random(shape) < 0.1, -np.inf, values),
            "huge": values * 1e38,
            "range": values * 3,
            "zero": values * 0,
        }.get(fault, values)
        kind = draw(st.sampled_from(["FP64", "INT32", "FP16"])) if fault == "dtype" else "FP32"
        array = np.nan_to_num(values, posinf=7, neginf=-7).clip(-1e9, 1e9) if kind == "INT32" else values
        with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow FP16: that is the point
            array = array.astype(
                {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "FP16": np.float16}[kind]
            )
        inputs.append((name, array, kind))
    keys = st.one_of(
        st.sampled_from(["steps", "solver", "schedule"]), st.sampled_from(["temperature", "Steps"])
    )
    parameters = draw(st.dictionaries(keys, PARAMETER_VALUE, max_size=3))
    if draw(st.booleans()):  # often a valid-looking core, so that deep paths run too
        parameters.setdefault("steps", draw(st.sampled_from([4, 8, "6", 12])))
        parameters.setdefault("solver", draw(st.sampled_from(["heun", "gei2m", "euler", "gei1"])))
    return model, inputs, parameters


def send(url: str, model: str, inputs: list, parameters: dict) -> tuple[str, str, list[np.ndarray]]:
    tensors = []
    for name, array, kind in inputs:
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    output = c.OUTPUTS.get(model, c.U)
    with grpcclient.InferenceServerClient(url) as client:
        try:
            result = client.infer(model, tensors, parameters=parameters or None, client_timeout=60)
        except InferenceServerException as error:
            return str(error.status()), error.message() or "", []
    return STATUS_OK, "", [result.as_numpy(output)]


def test_fuzzed_requests_get_ok_or_invalid_argument_and_the_server_keeps_serving(fuzz_server):
    server, info = fuzz_server
    from conftest import make_oracle

    x = oracle_images(make_oracle(), 2)
    good = [(c.IMAGE, x, "FP32")], {"solver": "gei2m", "steps": 4}
    _, _, (before,) = send(server.grpc_url, c.ENCODE, *good)
    statuses: collections.Counter[str] = collections.Counter()
    per_model: collections.Counter[str] = collections.Counter()
    problems = []

    @settings(
        max_examples=CASES,
        derandomize=True,  # a fixed seed: the same corpus every run
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(requests(info))
    def case(request: tuple[str, list, dict]) -> None:
        model, inputs, parameters = request
        status, message, outputs = send(server.grpc_url, model, inputs, parameters)
        statuses[status] += 1
        per_model[model] += 1
        where = f"{model} {[(n, a.shape, k) for n, a, k in inputs]} {str(parameters)[:120]}"
        if status not in (STATUS_OK, STATUS_BAD):
            problems.append(f"{status}: {message[:200]} ← {where}")
        elif status == STATUS_OK and not all(np.isfinite(o).all() for o in outputs):
            problems.append(f"OK with non-finite values ← {where}")
        elif any(marker in message for marker in TRACEBACK_MARKERS) or len(message) > MESSAGE_LIMIT:
            problems.append(
                f"message leaks a traceback or is {len(message)} chars: {message[:200]} ← {where}"
            )

    case()
    assert not problems, "\n".join(problems[:20])
    assert sum(statuses.values()) >= 300 and set(per_model) == {c.ENCODE, c.DECODE, c.MIX, c.VELOCITY}
    assert statuses[STATUS_OK] > 20 and statuses[STATUS_BAD] > 100, statuses  # both paths exercised
    assert server.is_running()
    _, _, (after,) = send(server.grpc_url, c.ENCODE, *good)
    np.testing.assert_array_equal(after, before)  # the same answer, bit for bit
    print(f"fuzz: {dict(statuses)} over {dict(per_model)}")
