"""Two versions of one model serve side by side (plain tritonclient): each answers with its own
model, the configs list both, a latent is refused by the version that did not make it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import make_oracle, oracle_images
from tritonclient.utils import InferenceServerException

import grouplat
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
