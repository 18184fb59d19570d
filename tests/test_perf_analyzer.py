"""perf_analyzer from the tritonclient wheel, run briefly against the embedded server for every model,
with input data generated from the served model (real images, served latents, recorded engine inputs)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import oracle_repository_at

from grouplat.export.repository import ServingOptions
from grouplat.serving.server import EmbeddedServer
from grouplat.tools import perf_analyzer

# About 3 s a run: three windows of at least 10 requests; any steady rate counts as stable.
BRIEF = ["--measurement-mode", "count_windows", "--measurement-request-count", "10"]
BRIEF += ["--stability-percentage", "100"]
STEPS = ["--request-parameter", "steps:4:int"]  # the orchestrators' smallest step count (k = 4)


@pytest.fixture(scope="module")
def runnable():
    """Skip only if the binary itself cannot be made to run here (not installed, libraries missing)."""
    try:
        perf_analyzer.environment()
    except perf_analyzer.PerfAnalyzerUnavailable as error:
        pytest.skip(f"perf_analyzer cannot run on this machine: {error}")


@pytest.fixture(scope="module")
def inputs(oracle_repository, oracle_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("perf_inputs")
    return perf_analyzer.write_inputs(oracle_repository, out, fingerprint=True, server=oracle_server.grpc_url)


def analyze(url: str, model: str, data, *extra: str) -> str:
    args = ["-m", model, "-i", "grpc", "-u", url, "--input-data", str(data), *BRIEF, *extra]
    result = perf_analyzer.run(args, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "error" not in result.stdout.lower(), result.stdout[-3000:]
    rates = perf_analyzer.throughputs(result.stdout)
    assert rates and all(r > 0 for r in rates), result.stdout[-3000:]
    return result.stdout


def test_input_data_match_the_served_model(inputs, oracle_repository):
    assert set(inputs) == set(perf_analyzer.MODELS)
    shapes = {"IMAGE": [3, 16, 16], "IMAGE_A": [3, 16, 16], "IMAGE_B": [3, 16, 16], "GROUPS": [4],
              "LATENT": [3, 256], "FINGERPRINT": [1], "X_T": [3, 16, 16], "LEVELS": [4]}  # fmt: skip
    for path in inputs.values():
        entries = json.loads(path.read_text())["data"]
        assert entries
        for entry in entries:
            for name, tensor in entry.items():
                assert tensor["shape"] == shapes[name]
                assert len(tensor["content"]) == math.prod(shapes[name])
    levels = [e["LEVELS"]["content"] for e in json.loads(inputs["velocity"].read_text())["data"]]
    assert len({tuple(v) for v in levels}) > 1  # recorded along the decode, not one time point
    manifest = json.loads((inputs["encode"].parent / "manifest.json").read_text())
    assert manifest["space"]["shape"] == [3, 16, 16]


@pytest.mark.parametrize("model", perf_analyzer.MODELS)
def test_perf_analyzer_on_every_model(runnable, oracle_server, inputs, model):
    analyze(oracle_server.grpc_url, model, inputs[model], *(STEPS if model != "velocity" else []))


def test_perf_analyzer_bls_composing_model(runnable, inputs, tmp_path):
    """Every decode of the window reaches the velocity model: with the phase cache on, perf_analyzer's
    few repeated latents would be answered from it and the composing model would see no request."""
    options = ServingOptions(velocity_call="bls", cache_bytes=0)
    repository = oracle_repository_at(tmp_path / "bls", options)
    with EmbeddedServer(repository) as server:
        output = analyze(
            server.grpc_url, "decode", inputs["decode"], *STEPS, "--bls-composing-models", "velocity:1"
        )
    decodes = int(re.search(r"Server:\s+Inference count: (\d+)", output).group(1))
    composing = output.split("Composing models:")[1]
    velocity_images = int(re.search(r"velocity, version: 1\s+Inference count: (\d+)", composing).group(1))
    assert velocity_images >= 3 * decodes > 0, output[-3000:]  # 4 steps of one evaluation each


def test_bundled_libraries_stand_in(runnable, monkeypatch, capfd):
    """Without the CUDA runtime wheel, nvidia-pytriton's bundled copy serves; the CLI passes -h etc. on."""
    real = perf_analyzer._package_dir
    monkeypatch.setattr(perf_analyzer, "_package_dir", lambda n: None if n.startswith("nvidia") else real(n))
    assert perf_analyzer.main(["perf-analyzer", "--version"]) == 0
    assert "Perf Analyzer Version 2.51.0" in "".join(capfd.readouterr())


@pytest.mark.parametrize("photos", [True, False])
def test_sample_images_fit_any_model_shape(monkeypatch, photos):
    if not photos:  # without scikit-learn / scikit-image: held-out procedural shapes
        from grouplat.training import dataset

        monkeypatch.setattr(dataset, "sample_photographs", lambda size, count=None: [])
    for shape in ((3, 16, 16), (1, 12, 20)):
        images, source = perf_analyzer.sample_images(3, shape)
        assert images.shape == (3, *shape) and images.dtype == np.float32 and source
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.05
