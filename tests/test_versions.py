"""Two versions of one model serve side by side (plain tritonclient): each answers with its own
model, the configs list both, a latent is refused by the version that did not make it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_oracle, oracle_images
from tritonclient.utils import InferenceServerException

import grouplat
from grouplat.client import AsyncClient, Client, Latents, ModelMismatchError, ServerError, save_image
from grouplat.client.transport import InferRequest
from grouplat.export.oracle import oracle_info, oracle_onnx
from grouplat.export.repository import ServingOptions, version_parameters, write_repository
from grouplat.serving import contract as c
from grouplat.serving.server import EmbeddedServer

ORACLES = {1: make_oracle(0), 2: make_oracle(1)}  # two different models of the same shape
ORACLES_INFO = {
    v: oracle_info(o, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN)).fingerprint
    for v, o in ORACLES.items()
}


def two_versions(root: Path, velocity_call: str = "inprocess") -> Path:
    for version, oracle in ORACLES.items():
        info = oracle_info(oracle, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
        options = ServingOptions(velocity_call=velocity_call, steps=4 + version, solver="gei2m")
        assert write_repository(root, info, oracle_onnx(oracle).SerializeToString(), options) == version
    return root


def encode(url: str, images: np.ndarray, version: str = "") -> np.ndarray:
    tensor = grpcclient.InferInput(c.IMAGE, list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer(c.ENCODE, [tensor], model_version=version).as_numpy(c.LATENT)


@pytest.mark.parametrize("velocity_call", ["inprocess", "bls"])
def test_two_versions_serve_side_by_side(tmp_path: Path, velocity_call: str) -> None:
    root = two_versions(tmp_path / "repo", velocity_call)
    x = oracle_images(ORACLES[1], 2)
    with EmbeddedServer(root) as server:
        for version, oracle in ORACLES.items():  # gei2m is exact for each version's own oracle
            np.testing.assert_allclose(encode(server.grpc_url, x, str(version)), oracle.encode(x), atol=1e-4)
        np.testing.assert_allclose(encode(server.grpc_url, x), ORACLES[2].encode(x), atol=1e-4)  # newest
        z1 = encode(server.grpc_url, x, "1")
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            config = client.get_model_config(c.DECODE, as_json=True)["config"]
            fingerprint = np.array([[ORACLES_INFO[1].encode()]] * 2, object)
            inputs = [grpcclient.InferInput(c.LATENT, list(z1.shape), "FP32"),
                      grpcclient.InferInput(c.FINGERPRINT, [2, 1], "BYTES")]  # fmt: skip
            inputs[0].set_data_from_numpy(z1)
            inputs[1].set_data_from_numpy(fingerprint)
            images = client.infer(c.DECODE, inputs, model_version="1").as_numpy(c.IMAGE)
            with pytest.raises(InferenceServerException, match="not by this model"):
                client.infer(c.DECODE, inputs, model_version="2")
    np.testing.assert_allclose(images, x, atol=1e-4)
    versions = json.loads(config["parameters"][c.VERSIONS_PARAM]["string_value"])
    assert [versions[v]["fingerprint"] for v in ("1", "2")] == [ORACLES_INFO[1], ORACLES_INFO[2]]
    assert [versions[v][c.STEPS_PARAM] for v in ("1", "2")] == ["5", "6"]  # each its own defaults
    assert config["parameters"][c.FINGERPRINT_PARAM]["string_value"] == ORACLES_INFO[2]


ORACLES_INFO = {
    v: oracle_info(o, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN)).fingerprint
    for v, o in ORACLES.items()
}


def test_version_parameters_describe_every_version(tmp_path: Path) -> None:
    params = version_parameters(two_versions(tmp_path / "repo"))
    assert params[c.FINGERPRINT_PARAM] == ORACLES_INFO[2] and params[c.STEPS_PARAM] == "6"


# -- the client with versions: pinned, unpinned, latents routed to their maker -------------------
@pytest.fixture(scope="module")
def versions_server(tmp_path_factory: pytest.TempPathFactory):
    with EmbeddedServer(two_versions(tmp_path_factory.mktemp("versions"))) as server:
        yield server


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return oracle_images(ORACLES[1], 2)


def test_client_pins_a_version_and_unpinned_uses_the_newest(versions_server: EmbeddedServer, x) -> None:
    for version, oracle in ORACLES.items():
        with Client(versions_server.grpc_url, model_version=str(version)) as client:
            info = client.info()
            assert (info.version, info.fingerprint) == (str(version), ORACLES_INFO[version])
            assert info.settings.steps == 4 + version  # the version's own defaults
            z = client.encode(x, solver="gei2m")
            assert (z.fingerprint, z.model_version, z.settings.steps) == (
                ORACLES_INFO[version],
                str(version),
                4 + version,
            )
            np.testing.assert_allclose(z.values, oracle.encode(x), atol=1e-4)  # gei2m: exact
    with Client(versions_server.grpc_url) as client:
        assert list(client.versions()) == ["1", "2"]
        assert [m.fingerprint for m in client.versions().values()] == [ORACLES_INFO[1], ORACLES_INFO[2]]
        assert client.info().version == "2" and client.info() is client.versions()["2"]
        z = client.encode(x, solver="gei2m")
        assert (z.fingerprint, z.model_version) == (ORACLES_INFO[2], "2")
        np.testing.assert_allclose(z.values, ORACLES[2].encode(x), atol=1e-4)
    with Client(versions_server.grpc_url, model_version=3) as client:
        with pytest.raises(ServerError, match="no version 3 of the model .*versions 1, 2"):
            client.info()
    with pytest.raises(ValueError, match="model_version must be a version number"):
        Client(versions_server.grpc_url, model_version="latest")


def versions_sent(client: Client) -> list[tuple[str, str]]:
    """(model, version number sent) of every infer `client` makes from now on."""
    sent: list[tuple[str, str]] = []
    version_for = client._version_for

    def spy(endpoint: str, request: InferRequest) -> str:
        sent.append((request.model, version_for(endpoint, request)))
        return sent[-1][1]

    client._version_for = spy  # type: ignore[method-assign]
    return sent


def test_latents_decode_on_the_version_that_made_them(versions_server: EmbeddedServer, x) -> None:
    with Client(versions_server.grpc_url, model_version="1") as one:
        z1 = one.encode(x)
    for pin in ("2", None):  # pinned to the other version, and unpinned (the newest, 2)
        with Client(versions_server.grpc_url, model_version=pin) as client:
            sent = versions_sent(client)
            np.testing.assert_allclose(client.decode(z1), x, atol=1e-4)  # the server checks FINGERPRINT
            # Every edit that decodes latents goes to their maker too (images are encoded by it).
            np.testing.assert_allclose(client.reconstruct(z1, keep=256), x, atol=1e-4)
            np.testing.assert_allclose(client.mix(z1, z1, groups=[1, 2]), x, atol=1e-4)
            np.testing.assert_allclose(client.interpolate(z1[0], x[1], 1, [0.0]), x[:1], atol=1e-4)
            kept = [float(z1.values[1, 0, 0])]
            np.testing.assert_allclose(client.traverse(z1[1], 0, 0, kept), x[1:], atol=1e-4)
            np.testing.assert_allclose(client.variations(z1[0], [1, 2, 3, 4], 2), x[[0, 0]], atol=1e-4)
            assert set(sent) == {("decode", "1"), ("encode", "1")}  # interpolate encoded x[1] on 1
            # The same values claiming no model decode on the client's model (version 2): not x.
            assert np.abs(client.decode(z1.values) - x).max() > 0.05
            assert sent[-1] == ("decode", "2")


def test_a_fingerprint_no_version_has_is_refused(versions_server: EmbeddedServer, x) -> None:
    with Client(versions_server.grpc_url, model_version="1") as client:
        z1 = client.encode(x)
        stranger = Latents(z1.values, "cd" * 32, z1.space, z1.settings, model_version="1")
        with pytest.raises(ModelMismatchError, match="made by model 'cdcd.* serves model .* as version 1"):
            client.decode(stranger)
        with pytest.raises(ModelMismatchError, match="made by model"):
            client.variations(stranger, [1], 2)
        # Forced: decoded by the client's model (pinned version 1), as a bare array would be.
        np.testing.assert_allclose(client.decode(stranger, force=True), client.decode(z1.values), atol=1e-5)


def test_the_latent_file_records_the_version(versions_server: EmbeddedServer, x, tmp_path: Path) -> None:
    from grouplat.client.cli import main

    with Client(versions_server.grpc_url, model_version="1") as client:
        z1 = client.encode(x)
    z1.save(tmp_path / "z.latent")
    back = Latents.load(tmp_path / "z.latent")
    assert back.model_version == "1" and back.to_proto().model_version == "1"
    assert back.to_bytes() == z1.to_bytes() and back[0].model_version == "1"
    assert "version 1" in repr(back)
    unversioned = Latents(z1.values, z1.fingerprint, z1.space, z1.settings)
    assert unversioned.to_proto().model_version == "" and len(unversioned.to_bytes()) < len(z1.to_bytes())
    with pytest.raises(ValueError, match="model_version must be a version number"):
        Latents(z1.values, z1.fingerprint, z1.space, z1.settings, model_version="v1")
    code = z1.to_proto()
    code.model_version = "x" * 100
    with pytest.raises(ValueError, match="latent code model_version"):
        Latents.from_proto(code)
    # The CLI: --model-version pins encode; decode of the file goes back to version 1 anyway.
    save_image(x[0], tmp_path / "a.png")
    url = ["--server", versions_server.grpc_url]
    assert (
        main(
            [
                "encode",
                str(tmp_path / "a.png"),
                "-o",
                str(tmp_path / "a.latent"),
                *url,
                "--model-version",
                "1",
            ]
        )
        == 0
    )
    a = Latents.load(tmp_path / "a.latent")
    assert (a.model_version, a.fingerprint) == ("1", ORACLES_INFO[1])
    assert (
        main(
            [
                "decode",
                str(tmp_path / "a.latent"),
                "-o",
                str(tmp_path / "b.png"),
                *url,
                "--model-version",
                "2",
            ]
        )
        == 0
    )


def test_async_client_pins_and_routes(versions_server: EmbeddedServer, x) -> None:
    async def run() -> tuple[Latents, np.ndarray, np.ndarray]:
        async with AsyncClient(versions_server.grpc_url, model_version="1") as one:
            z1 = await one.encode(x)
        async with AsyncClient(versions_server.grpc_url, model_version="2") as two:
            assert (await two.info()).version == "2"
            return z1, await two.decode(z1), await two.mix(z1, x, groups=1)

    z1, decoded, mixed = asyncio.run(run())
    assert z1.model_version == "1"
    np.testing.assert_allclose(z1.values, ORACLES[1].encode(x), atol=1e-4)
    np.testing.assert_allclose(decoded, x, atol=1e-4)
    np.testing.assert_allclose(mixed, x, atol=1e-4)  # x mixed with itself, on version 1


def test_every_endpoint_must_serve_the_version_in_use(
    versions_server: EmbeddedServer, oracle_server: EmbeddedServer, x
) -> None:
    # oracle_server serves one model, ORACLES[1]'s, as its version 1 (conftest: make_oracle(0)).
    both = [versions_server.grpc_url, oracle_server.grpc_url]
    with Client(both, model_version="2") as client:
        z2 = client.encode(x)
        z1 = Latents(ORACLES[1].encode(x), ORACLES_INFO[1], z2.space, z2.settings)
        client._current = 1  # as if the first endpoint had failed
        np.testing.assert_allclose(client.decode(z1), x, atol=1e-4)  # version 1's model is there
        with pytest.raises(ModelMismatchError, match="every endpoint must serve the same model"):
            client.decode(z2)
    # Unpinned at a one-version server: its model is version 1 of the other endpoint, and goes there.
    with Client([oracle_server.grpc_url, versions_server.grpc_url]) as client:
        assert client.info().fingerprint == ORACLES_INFO[1]
        client._current = 1
        sent = versions_sent(client)
        z = client.encode(x, solver="gei2m")
        assert sent == [("encode", "1")]
        assert client._versions[versions_server.grpc_url] == {"1": ORACLES_INFO[1], "2": ORACLES_INFO[2]}
        np.testing.assert_allclose(z.values, ORACLES[1].encode(x), atol=1e-4)


def test_served_versions_read_the_versions_parameter(tmp_path: Path) -> None:
    from grouplat.client.served import ServedModel, served_versions
    from grouplat.serving.orchestration import config_parameters

    root = two_versions(tmp_path / "repo")
    params = version_parameters(root)
    config = {"name": "decode", "parameters": {k: {"string_value": v} for k, v in params.items()}}
    models = served_versions(config)
    assert [(n, m.fingerprint, m.settings.steps) for n, m in models.items()] == [
        ("1", ORACLES_INFO[1], 5),
        ("2", ORACLES_INFO[2], 6),
    ]
    assert models["1"].train_schedule == config_parameters(config)[c.TRAIN_SCHEDULE_PARAM]
    assert ServedModel.from_config(config) == models["2"]
    # A version listed without its own defaults takes the config's (as the server does).
    listed = json.loads(params[c.VERSIONS_PARAM])
    for key in (c.STEPS_PARAM, c.SOLVER_PARAM, c.GENERATE_SCHEDULE_PARAM):
        del listed["1"][key]
    config["parameters"][c.VERSIONS_PARAM] = {"string_value": json.dumps(listed)}
    assert served_versions(config)["1"].settings.steps == 6
    # A config without versions (an older repository): one model, under the pinned number or "".
    del config["parameters"][c.VERSIONS_PARAM]
    assert list(served_versions(config)) == [""] and list(served_versions(config, "3")) == ["3"]
    assert ServedModel.from_config(config, "3").fingerprint == ORACLES_INFO[2]
    config["parameters"][c.VERSIONS_PARAM] = {"string_value": "[1, 2]"}
    with pytest.raises(ServerError, match="unreadable versions parameter"):
        served_versions(config)
