"""The client against the real embedded tritonserver serving the exact Gaussian oracle (conftest).

No mocks: every call goes over gRPC to Triton's Python-backend orchestrators. About 30 s, most of
it starting and stopping servers (the restart test, a second model, a fail-over pair).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_certificates, make_oracle, oracle_images, oracle_repository_at

import grouplat
from grouplat.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidRequestError,
    Latents,
    ModelMismatchError,
    ServerUnavailableError,
    Settings,
    save_image,
    to_pil,
    to_uint8,
)
from grouplat.client.transport import ConfigRequest, Deadline, InferRequest
from grouplat.serving.server import EmbeddedServer, _free_ports
from grouplat.settings import (
    DEFAULT_SOLVER,
    DEFAULT_STEPS,
    default_encode_schedule,
    default_generate_schedule,
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(4.0 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))  # range [-1, 1]


@pytest.fixture(scope="module")
def client(oracle_server: EmbeddedServer):
    with Client(oracle_server.grpc_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return oracle_images(make_oracle(), 4, seed=3)


@pytest.fixture(scope="module")
def other_server(tmp_path_factory: pytest.TempPathFactory):
    """A second model: the same layout, another oracle, so another fingerprint."""
    repository = oracle_repository_at(tmp_path_factory.mktemp("other_repository"), seed=1)
    with EmbeddedServer(repository) as server:
        yield server


def test_reads_the_model_once(client: Client, oracle_server: EmbeddedServer) -> None:
    import tritonclient.grpc as grpcclient

    info = client.info()
    with grpcclient.InferenceServerClient(oracle_server.grpc_url) as raw:
        params = raw.get_model_config("decode", as_json=True)["config"]["parameters"]
    assert info.fingerprint == params["fingerprint"]["string_value"]
    assert info.space == grouplat.LatentSpace((3, 16, 16), "dct", (30, 100, 200))
    served = (info.settings.solver, info.settings.steps, info.settings.schedule)
    assert served == (DEFAULT_SOLVER, DEFAULT_STEPS, default_generate_schedule(4).cuts)
    assert info.settings.encode_schedule == default_encode_schedule(4).cuts
    assert info.hide and client.info() is info


def record_requests(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[InferRequest]:
    """The inference requests `client` sends from now on (it still sends them)."""
    sent: list[InferRequest] = []
    call = client._call

    def record(request: ConfigRequest | InferRequest, deadline: Deadline) -> object:
        if isinstance(request, InferRequest):
            sent.append(request)
        return call(request, deadline)

    monkeypatch.setattr(client, "_call", record)
    return sent


def test_each_direction_sends_its_own_default_schedule(
    client: Client, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encode with the served encode schedule, decode its latents with the served decode schedule;
    the latents keep both (their file too)."""
    sent = record_requests(client, monkeypatch)
    z = client.encode(images[:1])
    client.decode(Latents.from_bytes(z.to_bytes()))
    client.decode(z, schedule="0.3,0.5,0.7")
    encode_schedule, decode_schedule = default_encode_schedule(4).cuts, default_generate_schedule(4).cuts
    assert [(r.model, r.parameters.get("schedule"), "encode_schedule" in r.parameters) for r in sent] == [
        ("encode", encode_schedule, False),
        ("decode", decode_schedule, False),
        ("decode", "0.3,0.5,0.7", False),
    ]
    assert (z.settings.schedule, z.settings.encode_schedule) == (decode_schedule, encode_schedule)


def test_round_trip_psnr_at_default_steps(client: Client, images: np.ndarray) -> None:
    z = client.encode(images)
    assert z.values.shape == (4, 3, 256) and z.values.dtype == np.float32
    assert z.fingerprint == client.info().fingerprint and z.settings == client.info().settings
    x = client.decode(z)
    assert x.shape == images.shape and x.dtype == np.float32
    value = psnr(x, images)
    print(f"round-trip PSNR at the default settings ({z.settings}): {value:.1f} dB")
    assert value > 100  # the oracle is Gaussian: GEI-2m (the default) is exact up to float32 rounding
    # A solver that does err (Heun): more steps, closer.
    heun = [
        psnr(client.decode(client.encode(images, steps=n, solver="heun"), steps=n, solver="heun"), images)
        for n in (20, 200)
    ]
    assert 30 < heun[0] < heun[1] - 10


def test_image_inputs_agree(client: Client, images: np.ndarray, tmp_path: Path) -> None:
    pixels = to_uint8(images[:2])  # uint8 [2, H, W, C]
    quantized = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    for i, image in enumerate(to_pil(quantized)):
        image.save(tmp_path / f"{i}.png")
    reference = client.encode(quantized).values
    for given in (pixels, list(pixels), to_pil(quantized), [tmp_path / "0.png", str(tmp_path / "1.png")]):
        np.testing.assert_allclose(client.encode(given).values, reference, atol=1e-5)
    np.testing.assert_allclose(client.encode(pixels[0]).values, reference[:1], atol=1e-5)  # one HWC image


def test_batches_beyond_max_batch_size_are_split(client: Client) -> None:
    many = oracle_images(make_oracle(), 11, seed=4)  # the orchestrators take at most 8 per request
    z = client.encode(many)
    assert len(z) == 11
    np.testing.assert_allclose(z.values[8:], client.encode(many[8:]).values, atol=1e-6)
    assert client.decode(z).shape == (11, 3, 16, 16)
    assert client.traverse(z[0], 1, 2, np.linspace(-2, 2, 10)).shape == (10, 3, 16, 16)


def test_client_side_validation(client: Client, images: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"3-channel 16×16 images; got a float image .* 32×32"):
        client.encode(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"scaled to \[-1, 1\]"):
        client.encode(images * 200)
    with pytest.raises(ValueError, match="NaN"):
        client.encode(np.full((1, 3, 16, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="uint8 images must be"):
        client.encode(np.zeros((1, 1, 16, 16, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="no image file"):
        client.encode("missing.png")
    with pytest.raises(ValueError, match="group 5 does not exist: groups are numbered 1..4"):
        client.mix(images[:1], images[1:2], groups=[5])
    with pytest.raises(ValueError, match="at least one group"):
        client.mix(images[:1], images[1:2], groups=[])
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        client.encode(images, solver="rk4")
    with pytest.raises(ValueError, match="3 cut points"):
        client.encode(images, schedule="0.5")
    with pytest.raises(ValueError, match="expected latents"):
        client.decode(np.zeros((1, 3, 100), np.float32))
    with pytest.raises(ValueError, match="as many b as a"):
        client.mix(images[:2], images[:3], groups=1)
    # Settings are checked by the one type the server uses too, so with the server's own words.
    with pytest.raises(ValueError, match="steps must be an integer in 4..4096"):
        client.encode(images, steps=5000)


def test_mix_on_the_server_equals_client_mix_plus_decode(client: Client, images: np.ndarray) -> None:
    a, b = images[:2], images[2:]
    served = client.mix(a, b, groups=[1])  # the server's `mix` model, one call
    za, zb = client.encode(a), client.encode(b)
    local = client.decode(za.replace(grouplat.mix(za.space, za.values, zb.values, [1])))
    np.testing.assert_allclose(served, local, atol=1e-4)
    np.testing.assert_allclose(client.mix(za, zb, groups=1), local, atol=1e-6)  # Latents: mixed here
    assert psnr(served, client.decode(za)) < 40  # S1 of b really changed the images
    # One reference for several images; a boolean group mask.
    one = client.mix(a, b[:1], groups=np.array([True, False, False, False]))
    np.testing.assert_allclose(one[1], client.mix(a[1:], b[:1], groups=1)[0], atol=1e-4)


def test_edits(client: Client, images: np.ndarray) -> None:
    z = client.encode(images[:2])
    za, zb = z[0], z[1]
    decoded = client.decode(za)

    row = client.interpolate(za, zb, group=1, weights=[0.0, 0.5, 1.0])
    assert row.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(row[0], decoded[0], atol=1e-5)
    np.testing.assert_allclose(row[2], client.mix(za, zb, groups=1)[0], atol=1e-5)
    assert client.interpolate(images[0], images[1], 2, [0.5], method="slerp").shape == (1, 3, 16, 16)

    values = np.linspace(-3, 3, 5)
    swept = client.traverse(za, channel=0, index=0, values=values)  # the DC of channel 0
    assert swept.shape == (5, 3, 16, 16)
    means = swept.mean(axis=(2, 3))
    assert np.all(np.diff(means[:, 0]) > 0.01)  # the channel's brightness rises with the value
    assert np.abs(means[:, 1:] - means[0, 1:]).max() < 1e-4  # other channels stay

    full = client.reconstruct(z, keep=256)
    np.testing.assert_allclose(full, client.decode(z), atol=1e-6)
    coarse = client.reconstruct(z, keep=30)
    assert coarse.shape == (2, 3, 16, 16) and psnr(coarse, full) < 35
    resampled = client.reconstruct(za, keep=30, fill="resample", seed=1)
    assert not np.allclose(resampled, coarse[:1])

    varied = client.variations(za, keep_groups=[1, 2], n=4, seed=0)
    assert varied.shape == (4, 3, 16, 16)
    assert min(psnr(varied[0], v) for v in varied[1:]) < 40  # they differ …
    np.testing.assert_array_equal(varied, client.variations(za, [1, 2], 4, seed=0))  # … by seed
    # … in the resampled groups only (the oracle's decode is diagonal in the basis, so the images'
    # S1 and S2 coefficients are those of the kept latent's image).
    kept = za.space.coefficient_mask([1, 2])
    image_coefficients, reference = za.space.to_latent(varied), za.space.to_latent(decoded)
    assert np.abs(image_coefficients[..., kept] - reference[..., kept]).max() < 1e-3
    assert np.abs(image_coefficients[..., ~kept] - reference[..., ~kept]).max() > 0.5

    with pytest.raises(ValueError, match="interpolate takes one latent"):
        client.interpolate(z, zb, 1, [0.5])


def test_latent_file_round_trip_and_decode(client: Client, images: np.ndarray, tmp_path: Path) -> None:
    z = client.encode(images[:2], solver="euler", steps=30)
    z.save(tmp_path / "z.latent")
    back = Latents.load(tmp_path / "z.latent")
    assert back.to_bytes() == z.to_bytes() == (tmp_path / "z.latent").read_bytes()
    assert back.settings.solver == "euler" and back.settings.steps == 30
    # Decoding uses the code's own settings (which invert its encode) unless told otherwise.
    np.testing.assert_array_equal(client.decode(back), client.decode(z, solver="euler", steps=30))
    assert not np.allclose(client.decode(back), client.decode(back, solver="heun", steps=20), atol=1e-4)


def test_settings_object_and_keywords_make_the_same_request(
    client: Client, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    z = client.encode(images[:2], solver="euler", steps=30)
    sent = record_requests(client, monkeypatch)
    by_keywords = client.decode(z, steps=12, solver="gei2m")
    by_object = client.decode(z, settings=Settings("gei2m", 12))
    (a, b) = sent
    assert a.model == b.model == "decode" and a.parameters == b.parameters
    assert a.parameters == {"solver": "gei2m", "steps": 12, "schedule": z.settings.schedule}
    assert a.inputs.keys() == b.inputs.keys()
    for name in a.inputs:
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])
    np.testing.assert_array_equal(by_object, by_keywords)  # same request, same (deterministic) answer
    # Keywords override single fields of the object; with neither, the latents' own settings apply.
    client.decode(z, settings=Settings("gei2m", 12), steps=8)
    client.decode(z)
    assert [(r.parameters["solver"], r.parameters["steps"]) for r in sent[2:]] == [
        ("gei2m", 8),
        ("euler", 30),
    ]


def test_wrong_fingerprint_is_refused(
    client: Client, images: np.ndarray, other_server: EmbeddedServer
) -> None:
    z = client.encode(images[:1])
    with Client(other_server.grpc_url) as other:
        assert other.info().fingerprint != z.fingerprint
        with pytest.raises(ModelMismatchError, match="made by model .* but the server at .* serves model"):
            other.decode(z)
        with pytest.raises(ModelMismatchError, match="made by model"):
            other.traverse(z, 0, 0, [1.0])
        assert other.decode(z, force=True).shape == (1, 3, 16, 16)  # the caller insists
        zo = other.encode(images[:1])
    with pytest.raises(ModelMismatchError, match="made by model"):
        client.mix(z, zo, groups=1)
    # The server refuses too, whatever the client does: a FINGERPRINT of another model.
    info = client.info()
    plan = client._plan_infer(
        "decode",
        {"LATENT": z.values, "FINGERPRINT": np.array([[zo.fingerprint.encode()]], dtype=object)},
        "IMAGE",
        info.settings,
    )
    with pytest.raises(InvalidRequestError, match="refusing to decode"):
        client._run(plan, None)


def test_unreachable_server_fails_clearly_within_the_deadline(images: np.ndarray) -> None:
    (port,) = _free_ports("127.0.0.1", 1)
    start = time.monotonic()
    with Client(f"127.0.0.1:{port}", timeout=1.5) as c:
        with pytest.raises(ServerUnavailableError, match=rf"127.0.0.1:{port} within the 1.5 s deadline"):
            c.encode(images)
        assert c.retries >= 3
    assert time.monotonic() - start < 2.5

    async def unreachable() -> None:
        async with AsyncClient(f"127.0.0.1:{port}", timeout=1.0) as ac:
            await ac.decode(np.zeros((1, 3, 256), np.float32))

    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="unavailable"):
        asyncio.run(unreachable())
    assert time.monotonic() - start < 2.0


def test_deadline_exceeded(client: Client, images: np.ndarray) -> None:
    z = client.encode(images[:1])
    start = time.monotonic()
    # 4000 Euler steps: 4000 network evaluations, within a server's default cost budget (4096).
    # Measured 0.8 s on two busy cores; half of Heun's 8000 evaluations (~0.5 s) on a quiet machine.
    with pytest.raises(DeadlineExceededError, match="0.1 s deadline"):
        client.decode(z, solver="euler", steps=4000, timeout=0.1)
    assert time.monotonic() - start < 1.0


def test_fail_over_to_the_next_endpoint(
    oracle_server: EmbeddedServer, images: np.ndarray, client: Client
) -> None:
    (dead,) = _free_ports("127.0.0.1", 1)
    with Client([f"127.0.0.1:{dead}", oracle_server.grpc_url], timeout=20) as c:
        np.testing.assert_allclose(c.encode(images).values, client.encode(images).values, atol=1e-6)
        assert c.retries == 1 and c.endpoints[c._current] == oracle_server.grpc_url


def test_fail_over_refuses_an_endpoint_with_another_model(
    oracle_server: EmbeddedServer, other_server: EmbeddedServer, images: np.ndarray
) -> None:
    with Client([oracle_server.grpc_url, other_server.grpc_url]) as c:
        z = c.encode(images[:1])
        c._current = 1  # as if the first endpoint had failed
        with pytest.raises(ModelMismatchError, match="every endpoint must serve the same model"):
            c.decode(z)


def test_survives_a_server_restart(oracle_repository: Path, images: np.ndarray) -> None:
    """Stop the server mid-sequence and start a new one on the same ports; every call completes."""
    server = EmbeddedServer(oracle_repository).start()
    ports = {
        "grpc_port": server.grpc_port,
        "http_port": server.http_port,
        "metrics_port": server.metrics_port,
    }
    servers = [server]
    events: dict[str, float] = {}

    def restart() -> None:
        time.sleep(0.3)
        events["stop"] = time.monotonic()
        servers[0].stop()
        events["down"] = time.monotonic()
        servers.append(EmbeddedServer(oracle_repository, **ports).start())
        events["up"] = time.monotonic()

    thread = threading.Thread(target=restart)
    try:
        with Client(server.grpc_url, timeout=60) as c:
            expected = c.decode(c.encode(images[:2]))
            thread.start()
            calls, after = 0, 0
            while thread.is_alive() or after < 5:  # until a few calls after the restart
                np.testing.assert_allclose(c.decode(c.encode(images[:2])), expected, atol=1e-6)
                calls += 1
                after += not thread.is_alive()
            assert c.retries > 0, "the restart went unnoticed"
        print(f"{calls} encode+decode pairs across a restart (down {events['up'] - events['stop']:.1f} s)")
    finally:
        thread.join()
        for s in servers:
            s.stop()


def test_async_client(oracle_server: EmbeddedServer, client: Client, images: np.ndarray) -> None:
    async def main() -> None:
        async with AsyncClient(oracle_server.grpc_url) as ac:
            z = await ac.encode(images)
            np.testing.assert_allclose(z.values, client.encode(images).values, atol=1e-6)
            decoded, mixed, swept = await asyncio.gather(
                ac.decode(z), ac.mix(images[:2], images[2:], groups=1), ac.traverse(z[0], 0, 0, [-1, 1])
            )
            np.testing.assert_allclose(decoded, client.decode(z), atol=1e-6)
            np.testing.assert_allclose(mixed, client.mix(images[:2], images[2:], groups=1), atol=1e-5)
            assert swept.shape == (2, 3, 16, 16)
            assert (await ac.reconstruct(z, keep=256)).shape == images.shape
            assert (await ac.variations(z[0], [1], 2)).shape == (2, 3, 16, 16)
            assert (await ac.interpolate(z[0], z[1], 1, [0.0, 1.0])).shape == (2, 3, 16, 16)
            with pytest.raises(ModelMismatchError):
                await ac.decode(Latents(z.values, "0" * 64, z.space, z.settings))

    asyncio.run(main())


def test_save_image_helpers(client: Client, images: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    out = client.decode(client.encode(images[:1]))
    save_image(out[0], tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        assert image.size == (16, 16) and image.mode == "RGB"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
def test_tls(oracle_repository: Path, images: np.ndarray, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    tls = [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={certs / 'server.pem'}",
        f"--grpc-server-key={certs / 'server.key'}",
        f"--grpc-root-cert={certs / 'ca.pem'}",
    ]
    with EmbeddedServer(oracle_repository, extra_args=tls) as server:
        with Client(server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")) as c:
            assert c.decode(c.encode(images[:1])).shape == (1, 3, 16, 16)
        with Client(server.grpc_url, timeout=1.0) as plain:  # no TLS: the server hangs up
            with pytest.raises(ServerUnavailableError, match="unavailable"):
                plain.info()
