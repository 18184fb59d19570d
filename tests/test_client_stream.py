"""Progressive previews: `decode_stream` / `mix_stream` of Client and AsyncClient, and the CLI's
`--previews`, against the real embedded tritonserver serving the exact Gaussian oracle (conftest).

One server for the module: two versions of the oracle model (two fingerprints, so streams must be
routed like unary calls), one orchestrator instance each, a cost budget large enough for the long
requests that the cancellation tests leave early.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest
from conftest import make_oracle, oracle_images
from PIL import Image
from tritonclient.utils import InferenceServerException

import grouplat
from grouplat.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidRequestError,
    Latents,
    Preview,
    RetryPolicy,
    Settings,
    to_uint8,
)
from grouplat.client.cli import main
from grouplat.client.transport import status, stream_error
from grouplat.export.oracle import oracle_info, oracle_onnx
from grouplat.export.repository import ServingOptions, write_repository
from grouplat.serving.server import EmbeddedServer, _free_ports

ORACLES = {"1": make_oracle(0), "2": make_oracle(1)}  # the same layout, two models
K = 4  # groups of the oracle's space (conftest.ORACLE_SPACE)
FAST = {"solver": "gei2m", "steps": 8}  # exact for the oracle, and quick
# A long request whose first phase is short: S1 is generated over [0.9, 1] (a tenth of the steps),
# so leaving after the first preview leaves ~90 % of the work to cancel.
LONG = {"solver": "euler", "steps": 4000, "schedule": "0.7,0.8,0.9"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stream_repository")
    options = ServingOptions(max_cost=10**8, orchestrator_instances=1)
    for oracle in ORACLES.values():
        info = oracle_info(oracle, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
        write_repository(root, info, oracle_onnx(oracle).SerializeToString(), options)
    with EmbeddedServer(root) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: EmbeddedServer):
    with Client(server.grpc_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return oracle_images(ORACLES["2"], 10, seed=5)  # above the orchestrators' max_batch_size (8)


def check_previews(previews: list[Preview], final: np.ndarray, space: grouplat.LatentSpace, mean) -> None:
    """Phases 1 … k in order, the last final and equal to `final`; phase j has S1 … Sj decoded
    (as in the final image) and the finer groups at the data mean."""
    assert [p.phase for p in previews] == list(range(1, K + 1))
    assert [p.final for p in previews] == [False] * (K - 1) + [True]
    for p in previews:
        assert p.images.shape == final.shape and p.images.dtype == np.float32
    np.testing.assert_array_equal(previews[-1].images, final)
    last = space.to_latent(final)
    done = np.zeros(space.size, bool)
    for j, p in enumerate(previews):
        done |= space.group_of == j
        latent = space.to_latent(p.images)
        np.testing.assert_allclose(latent[..., done], last[..., done], atol=1e-5)
        rest = np.broadcast_to(mean, latent.shape)[..., ~done]
        np.testing.assert_allclose(latent[..., ~done], rest, atol=1e-5)


def log_lines(server: EmbeddedServer, text: str, timeout: float = 10.0) -> list[str]:
    """The server log's lines holding `text` (the stub's lines reach the file shortly after)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def cancelled(server: EmbeddedServer, request_id: str) -> bool:
    """The server logged `request_id`'s request as cancelled by its caller (it never finished)."""
    return any("cancelled by its caller" in line for line in log_lines(server, f"[request {request_id}]"))


def fresh_latents(client: Client, n: int, seed: int) -> Latents:
    """Latents no earlier request decoded (the server's phase cache cannot shorten their decode)."""
    info = client.info()
    values = np.random.default_rng(seed).standard_normal((n, *info.space.latent_shape)).astype(np.float32)
    return Latents(values, info.fingerprint, info.space, info.settings, model_version=info.version)


def test_status_less_stream_errors_get_the_status_of_the_same_unary_refusal() -> None:
    def code(message: str, given: str | None = None) -> str:
        return status(stream_error(InferenceServerException(message, status=given)))

    assert (
        code("[request id: r] unexpected shape for input 'LATENT' for model 'decode_stream'")
        == "INVALID_ARGUMENT"
    )
    assert code("inference input 'LATENT' data-type is 'FP64', but model 'decode_stream' expects 'FP32'") == (
        "INVALID_ARGUMENT"
    )
    assert code("Request for unknown model: 'decode_stream' version 9 is not found") == "NOT_FOUND"
    assert code("steps must be an integer", "StatusCode.INVALID_ARGUMENT") == "INVALID_ARGUMENT"  # kept
    assert code("the engine broke", "StatusCode.INTERNAL") == "INTERNAL"
    assert code("something else") == ""  # a ServerError


# ---- Client --------------------------------------------------------------------------------------


def test_decode_stream_yields_each_phase_then_exactly_the_decode(client: Client, images: np.ndarray) -> None:
    z = client.encode(images, **FAST)  # 10 latents: two chunks, two streams, previews of all 10
    previews = list(client.decode_stream(z))
    check_previews(previews, client.decode(z), z.space, ORACLES["2"].mean)
    np.testing.assert_allclose(previews[-1].images, images, atol=1e-4)  # gei2m is exact for the oracle
    # Settings precedence as in decode: keywords over the settings object over the latents' own.
    fast = list(client.decode_stream(z[:2], settings=Settings("heun", 30), steps=12))
    np.testing.assert_array_equal(fast[-1].images, client.decode(z[:2], solver="heun", steps=12))
    # A bare array claims no model; it decodes on the client's model, as decode does.
    bare = list(client.decode_stream(z.values[:1]))
    np.testing.assert_array_equal(bare[-1].images, client.decode(z.values[:1]))


def test_mix_stream_yields_each_phase_then_exactly_the_mix(client: Client, images: np.ndarray) -> None:
    a, b = images[:3], images[3:4]  # one reference for three images: the server's mix_stream
    previews = list(client.mix_stream(a, b, 1, **FAST))
    mixed = client.mix(a, b, 1, **FAST)
    check_previews(previews, mixed, client.info().space, ORACLES["2"].mean)
    # Latents are mixed here and decoded on decode_stream.
    za, zb = client.encode(a, **FAST), client.encode(b, **FAST)
    previews = list(client.mix_stream(za, zb, [1, 2]))
    assert [p.phase for p in previews] == [1, 2, 3, 4]
    np.testing.assert_array_equal(previews[-1].images, client.mix(za, zb, [1, 2]))


def test_latents_stream_on_the_version_that_made_them(server: EmbeddedServer, images: np.ndarray) -> None:
    with Client(server.grpc_url, model_version="1", timeout=60) as old, Client(server.grpc_url) as new:
        z1 = old.encode(images[:2], **FAST)
        assert (z1.model_version, new.info().version) == ("1", "2")
        previews = list(new.decode_stream(z1))  # routed to version 1 (with its FINGERPRINT)
        np.testing.assert_array_equal(previews[-1].images, new.decode(z1))
        np.testing.assert_allclose(previews[-1].images, images[:2], atol=1e-4)
        check_previews(previews, previews[-1].images, z1.space, ORACLES["1"].mean)


def test_an_invalid_request_raises_what_the_unary_call_raises(client: Client) -> None:
    huge = np.full((1, 3, 256), 1e6, np.float32)  # finite, so only the server refuses it
    with pytest.raises(InvalidRequestError) as unary:
        client.decode(huge)
    with pytest.raises(InvalidRequestError) as streamed:
        next(client.decode_stream(huge, request_id="preview-bad-1"))
    assert streamed.value.request_id == "preview-bad-1"
    assert str(streamed.value).endswith("[request preview-bad-1]") and "within ±" in str(streamed.value)
    unary_reason = str(unary.value).split("request: ")[1].split(" [request")[0]
    assert str(streamed.value).split("request: ")[1].split(" [request")[0] == unary_reason
    assert "decode_stream request" in str(streamed.value)
    with pytest.raises(ValueError, match="at least one group"):  # checked before sending, as mix does
        next(client.mix_stream(np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 3, 16, 16)), []))
    with pytest.raises(TypeError, match="unexpected keyword"):  # checked at the call
        client.decode_stream(huge, stpes=3)  # type: ignore[call-arg]


def test_breaking_out_early_cancels_the_request(server: EmbeddedServer, client: Client) -> None:
    z = fresh_latents(client, 8, seed=11)
    started = time.monotonic()
    for preview in client.decode_stream(z, request_id="preview-break-1", **LONG):
        first = time.monotonic() - started
        assert preview.phase == 1 and not preview.final
        break
    left = time.monotonic() - started - first
    assert left < 1.0, left  # leaving does not wait for the rest of the request
    assert cancelled(server, "preview-break-1")
    quick = time.monotonic()
    np.testing.assert_array_equal(client.decode(z[:1], **FAST), client.decode(z[:1], **FAST))
    assert time.monotonic() - quick < 5.0  # the client (and the server) went on at once
    # An iterator held elsewhere is cancelled by closing it.
    previews = client.decode_stream(fresh_latents(client, 8, seed=12), request_id="preview-close-1", **LONG)
    assert next(previews).phase == 1
    previews.close()
    assert cancelled(server, "preview-close-1")


def test_the_deadline_covers_the_whole_stream_and_cancels_it(server: EmbeddedServer, client: Client) -> None:
    z = fresh_latents(client, 8, seed=13)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        list(client.decode_stream(z, timeout=0.5, request_id="preview-late-1", **LONG))
    assert time.monotonic() - started < 3.0
    assert caught.value.request_id == "preview-late-1" and "decode_stream" in str(caught.value)
    assert cancelled(server, "preview-late-1")


def test_a_stream_that_fails_reopens_at_the_next_endpoint_and_skips_the_phases_read(
    server: EmbeddedServer, client: Client, images: np.ndarray
) -> None:
    z = client.encode(images[:2], **FAST)
    expected = list(client.decode_stream(z))
    dead = f"127.0.0.1:{_free_ports('127.0.0.1', 1)[0]}"

    def fail_over(runner: Client | AsyncClient) -> None:
        """The endpoint in use moves to `dead` mid-stream (as after a fail-over): the next read
        reopens the stream there, finds it UNAVAILABLE, and reopens it back at the server."""
        runner._versions[dead] = runner._versions[server.grpc_url]  # known: no version check first
        runner._current = 1

    with Client([server.grpc_url, dead], timeout=30, retry=RetryPolicy(initial=0.01)) as failover:
        previews = failover.decode_stream(z)
        assert next(previews).phase == 1
        fail_over(failover)
        rest = list(previews)
    assert [p.phase for p in rest] == [2, 3, 4] and failover.retries == 1
    for got, want in zip(rest, expected[1:]):
        np.testing.assert_array_equal(got.images, want.images)

    async def run() -> None:
        async with AsyncClient(
            [server.grpc_url, dead], timeout=30, retry=RetryPolicy(initial=0.01)
        ) as failover:
            previews = failover.decode_stream(z)
            assert (await anext(previews)).phase == 1
            fail_over(failover)
            rest = [p async for p in previews]
        assert [p.phase for p in rest] == [2, 3, 4] and failover.retries == 1
        np.testing.assert_array_equal(rest[-1].images, expected[-1].images)

    asyncio.run(run())


# ---- AsyncClient ---------------------------------------------------------------------------------


def test_async_client_streams_like_the_client(server: EmbeddedServer, client: Client, images) -> None:
    z = client.encode(images, **FAST)
    expected, mixed = client.decode(z), client.mix(images[:2], images[2:4], 1, **FAST)

    async def run() -> None:
        async with AsyncClient(server.grpc_url, timeout=60) as aclient:

            async def collect(previews) -> list[Preview]:
                return [p async for p in previews]

            decoded, mixing = await asyncio.gather(  # two streams at once on one client
                collect(aclient.decode_stream(z)),
                collect(aclient.mix_stream(images[:2], images[2:4], 1, **FAST)),
            )
            check_previews(decoded, expected, z.space, ORACLES["2"].mean)
            check_previews(mixing, mixed, z.space, ORACLES["2"].mean)

            with pytest.raises(InvalidRequestError, match="within ±") as caught:
                await collect(
                    aclient.decode_stream(np.full((1, 3, 256), 1e6, np.float32), request_id="a-bad")
                )
            assert caught.value.request_id == "a-bad"

            long = fresh_latents(client, 8, seed=14)
            started = time.monotonic()
            async with contextlib.aclosing(
                aclient.decode_stream(long, request_id="a-break", **LONG)
            ) as stream:
                async for preview in stream:
                    assert preview.phase == 1
                    break
            assert time.monotonic() - started < 10.0
            assert cancelled(server, "a-break")
            again = await collect(aclient.decode_stream(z[:1], **FAST))  # the client goes on
            np.testing.assert_array_equal(again[-1].images, expected[:1])

            with pytest.raises(DeadlineExceededError):
                await collect(aclient.decode_stream(fresh_latents(client, 8, seed=15), timeout=0.5, **LONG))

    asyncio.run(run())


# ---- the CLI -------------------------------------------------------------------------------------


def test_cli_previews_write_an_image_per_phase(
    server: EmbeddedServer, client: Client, images, tmp_path
) -> None:
    common = ["--server", server.grpc_url, "--solver", "gei2m", "--steps", "8"]
    client.encode(images[:1], **FAST).save(tmp_path / "one.latent")
    out, folder = tmp_path / "one.png", tmp_path / "steps"
    assert (
        main(["decode", str(tmp_path / "one.latent"), "-o", str(out), "--previews", str(folder), *common])
        == 0
    )
    assert sorted(p.name for p in folder.iterdir()) == [f"phase-{j}.png" for j in range(1, K + 1)]
    final = np.asarray(Image.open(out))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / f"phase-{K}.png")), final)
    assert not np.array_equal(np.asarray(Image.open(folder / "phase-1.png")), final)
    np.testing.assert_array_equal(final, to_uint8(client.decode(Latents.load(tmp_path / "one.latent")))[0])

    # Two images: a row of two per phase; mix too.
    for i in range(2):
        Image.fromarray(to_uint8(images[i : i + 1])[0]).save(tmp_path / f"in{i}.png")
    a, b = str(tmp_path / "in0.png"), str(tmp_path / "in1.png")
    folder = tmp_path / "mix-steps"
    argv = ["mix", a, b, "--groups", "1", "-o", str(tmp_path / "m.png"), "--previews", str(folder), *common]
    assert main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"phase-{j}.png" for j in range(1, K + 1)]
    z = client.encode([a, b], **FAST)
    z.save(tmp_path / "two.latent")
    folder = tmp_path / "two-steps"
    argv = [
        "decode",
        str(tmp_path / "two.latent"),
        "-o",
        str(tmp_path / "two.png"),
        "--previews",
        str(folder),
    ]
    assert main([*argv, *common]) == 0
    with Image.open(folder / "phase-2.png") as picture:
        assert picture.size == (2 * 16 + 2, 16)
    assert (tmp_path / "two-0.png").is_file() and (tmp_path / "two-1.png").is_file()
