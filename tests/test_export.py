"""Export: checkpoint → ONNX (parity with PyTorch) → Triton model repository that the real
embedded tritonserver loads and answers with the ONNX Runtime numbers."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

import grouplat
from grouplat.cli import main as grouplat_main
from grouplat.export.engine import check_parity, export_onnx, model_info, parity_inputs, read_metadata
from grouplat.modelinfo import ModelInfo
from grouplat.serving.engines import OnnxVelocity
from grouplat.serving.server import EmbeddedServer
from grouplat.training.checkpoint import load_checkpoint, save_checkpoint
from grouplat.training.networks import build_network

NETWORK = dict(arch="unet", channels=3, resolution=[16, 16], levels=3, model_channels=16,
               channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)  # fmt: skip


def write_checkpoint(directory, seed=0, space=None, schedule="0.6,0.8"):
    """A small checkpoint with random (not near-zero) weights, so parity is a real check
    (default: 3 DCT groups; `space` and `schedule` give others)."""
    space = space or grouplat.LatentSpace((3, 16, 16), "dct", (10, 40))
    torch.manual_seed(seed)
    network = build_network({**NETWORK, "levels": space.k})
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rng = np.random.default_rng(seed)
    metadata = {
        "network": {**NETWORK, "levels": space.k},
        "space": space.describe(),
        "schedule": schedule,
        "hide": True,
        "weighting": "paper",
        "step": 0,
    }
    mean = rng.normal(size=space.latent_shape).astype(np.float32) * 0.1
    std = rng.uniform(0.2, 2, space.latent_shape).astype(np.float32)
    save_checkpoint(directory, network, network, metadata, mean, std)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint-0000001")


def test_onnx_parity_and_metadata(checkpoint):
    loaded = load_checkpoint(checkpoint)
    info = model_info(loaded)
    onnx_model = export_onnx(loaded.network, info)
    error = check_parity(loaded.network, onnx_model, info, batches=(1, 3, 8))
    assert error <= 1e-4
    x, levels = parity_inputs(info, 3)
    assert np.abs(loaded.velocity()(x, levels)).mean() > 1e-2  # outputs are O(1): parity means something
    meta = read_metadata(onnx_model)
    assert meta["fingerprint"] == loaded.fingerprint
    assert json.loads(meta["space"]) == info.space.describe()
    assert meta["train_schedule"] == "0.6,0.8" and meta["hide"] == "true"


def test_exported_repository_serves_the_onnx_numbers(checkpoint, tmp_path):
    repository = tmp_path / "repo"
    assert grouplat_main(["export", str(checkpoint), "--repository", str(repository)]) == 0
    info = ModelInfo.load(repository / "velocity" / "1")
    assert info.fingerprint == load_checkpoint(checkpoint).fingerprint
    x, levels = parity_inputs(info, 5)
    expected = OnnxVelocity(repository / "velocity" / "1" / "model.onnx")(x, levels)
    with EmbeddedServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [
            grpcclient.InferInput("X_T", list(x.shape), "FP32"),
            grpcclient.InferInput("LEVELS", [5, 3], "FP32"),
        ]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(levels)
        served = client.infer("velocity", inputs).as_numpy("U")
        image = np.zeros((1, 3, 16, 16), np.float32)
        request = grpcclient.InferInput("IMAGE", [1, 3, 16, 16], "FP32")
        request.set_data_from_numpy(image)
        latent = client.infer("encode", [request], parameters={"steps": 6}).as_numpy("LATENT")
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert latent.shape == (1, 3, 256) and np.isfinite(latent).all()


def test_versions_are_never_overwritten_silently(checkpoint, tmp_path, capsys):
    repository = str(tmp_path / "repo")
    assert grouplat_main(["export", str(checkpoint), "--repository", repository]) == 0
    assert grouplat_main(["export", str(checkpoint), "--repository", repository]) == 2
    assert "already serves this model as version 1; pass --force" in capsys.readouterr().err
    other = write_checkpoint(tmp_path / "other" / "checkpoint-0000002", seed=1)
    assert grouplat_main(["export", str(other), "--repository", repository, "--version", "1"]) == 2
    assert "velocity/1 exists; pass --force" in capsys.readouterr().err
    assert grouplat_main(["export", str(other), "--repository", repository]) == 0  # a new model: version 2
    assert (
        ModelInfo.load(tmp_path / "repo" / "encode" / "2").fingerprint == load_checkpoint(other).fingerprint
    )
    assert (
        grouplat_main(["export", str(checkpoint), "--repository", repository, "--version", "1", "--force"])
        == 0
    )


def write_inconsistent_checkpoint(directory, edit):
    """A checkpoint whose metadata disagrees with itself yet carries a valid fingerprint."""
    network = build_network(NETWORK)
    space = grouplat.LatentSpace((3, 16, 16), "dct", (10, 40))
    metadata = {"network": dict(NETWORK), "space": space.describe(), "schedule": "0.6,0.8", "hide": True}
    edit(metadata)
    stats = np.ones(space.latent_shape, np.float32)
    save_checkpoint(directory, network, network, metadata, stats, stats.copy())
    return directory


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schedule="0.5"), "training schedule has 2 groups, the latent space 3"),
        (lambda m: m["space"].update(shape=[3, 8, 8]), "data statistics have shape"),
        (lambda m: m["network"].update(levels=4), "does not match its metadata's network"),
    ],
    ids=["wrong-k", "wrong-shape", "wrong-network"],
)
def test_inconsistent_checkpoints_are_refused(tmp_path, capsys, edit, message):
    broken = write_inconsistent_checkpoint(tmp_path / "broken", edit)
    assert grouplat_main(["export", str(broken), "--repository", str(tmp_path / "repo")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_a_modified_checkpoint_fails_its_fingerprint_check(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    metadata = json.loads((broken / "metadata.json").read_text())
    metadata["schedule"] = "0.5,0.9"
    (broken / "metadata.json").write_text(json.dumps(metadata))
    assert grouplat_main(["export", str(broken), "--repository", str(tmp_path / "repo")]) == 2
    assert "fingerprint check" in capsys.readouterr().err


def test_tensorrt_without_tensorrt_or_gpu_says_so(checkpoint, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are here: the plan is built for real, not refused")
    args = ["export", str(checkpoint), "--repository", str(tmp_path / "repo"), "--engine", "tensorrt",
            "--velocity-call", "bls"]  # fmt: skip
    assert grouplat_main(args) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "no CUDA GPU" in err
    assert not (tmp_path / "repo").exists()
    assert grouplat_main([*args, "--device", "cpu"]) == 2
    assert "runs on a GPU only" in capsys.readouterr().err


def test_released_checkpoint_keeps_the_model_without_the_raw_weights(checkpoint, tmp_path):
    from grouplat.training.checkpoint import read_tensors, release_checkpoint

    released = load_checkpoint(release_checkpoint(checkpoint, tmp_path / "release"))
    original = load_checkpoint(checkpoint)
    assert released.fingerprint == original.fingerprint
    assert not any(k.startswith("raw.") for k in read_tensors(tmp_path / "release" / "model.safetensors"))
    x, levels = parity_inputs(model_info(original), 2)
    np.testing.assert_array_equal(released.velocity()(x, levels), original.velocity()(x, levels))


def test_export_serves_a_schedule_per_direction(checkpoint, tmp_path, capsys):
    """`--generate-schedule` (decode) and `--encode-schedule`; the encode's defaults to the decode's
    when only that is given; a bad one is refused by name."""
    repository = tmp_path / "repo"
    args = ["export", str(checkpoint), "--repository", str(repository)]
    assert grouplat_main([*args, "--generate-schedule", "0.5,0.8", "--encode-schedule", "0.3,0.6"]) == 0
    params = json.loads((repository / "decode" / "1" / "defaults.json").read_text())
    assert (params["generate_schedule"], params["encode_schedule"]) == ("0.5,0.8", "0.3,0.6")
    assert 'key: "encode_schedule"' in (repository / "encode" / "config.pbtxt").read_text()
    assert grouplat_main([*args, "--generate-schedule", "0.5,0.8", "--force", "--version", "1"]) == 0
    params = json.loads((repository / "decode" / "1" / "defaults.json").read_text())
    assert params["encode_schedule"] == "0.5,0.8"
    capsys.readouterr()
    assert grouplat_main([*args, "--encode-schedule", "0.6,0.3", "--force", "--version", "1"]) == 2
    assert "bad encode schedule: schedule cuts must increase" in capsys.readouterr().err


def test_export_sets_the_phase_cache_or_turns_it_off(checkpoint, tmp_path, capsys):
    """`--cache-bytes` reaches every orchestrator's config (0: off, as perf_analyzer's repeated
    inputs need); a negative size is refused by name and writes nothing."""
    repository = tmp_path / "repo"
    args = ["export", str(checkpoint), "--repository", str(repository)]
    assert grouplat_main([*args, "--cache-bytes", "0"]) == 0
    for model in ("encode", "decode", "mix"):
        assert (
            'key: "cache_bytes"\n  value {\n    string_value: "0"'
            in (repository / model / "config.pbtxt").read_text()
        )
    capsys.readouterr()
    assert grouplat_main([*args, "--cache-bytes", "-1", "--version", "2"]) == 2
    assert "cache bytes must be 0 (no cache) or more, got -1" in capsys.readouterr().err
    assert not (repository / "velocity" / "2").exists()


def test_calibrated_knots_travel_from_the_checkpoint_to_the_served_model(checkpoint, tmp_path, capsys):
    """knots.json beside a checkpoint (`grouplat calibrate`) goes into every exported version's
    model info, and the served encode and decode of those settings use it; a file fitted to
    another model is refused by name and nothing is exported."""
    from grouplat import knots
    from grouplat.settings import GenerationSettings

    source = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, source)
    fingerprint = load_checkpoint(source).fingerprint
    settings = GenerationSettings(steps=9).check(3)
    splits = {
        direction: grouplat.allocate_steps(chosen.generation_schedule(3), 9).tolist()
        for direction, chosen in (("decode", settings), ("encode", settings.encoding()))
    }
    table = {  # every phase's knots crowded towards its data end: far from the even spacing
        knots.key(d, settings.solver, "tau", split): [
            (np.linspace(0, 1, n + 1)[1:-1] ** 2).tolist() for n in split
        ]
        for d, split in splits.items()
    }
    knots.write(source, fingerprint, table, {"command": "test"})
    repository = tmp_path / "repo"
    assert grouplat_main(["export", str(source), "--repository", str(repository)]) == 0
    info = ModelInfo.load(repository / "velocity" / "1")
    assert info.knots == table
    velocity = OnnxVelocity(repository / "velocity" / "1" / "model.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with EmbeddedServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        request = grpcclient.InferInput("IMAGE", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        z = client.infer("encode", [request], parameters={"steps": 9}).as_numpy("LATENT")
        latent = grpcclient.InferInput("LATENT", list(z.shape), "FP32")
        latent.set_data_from_numpy(z)
        image = client.infer("decode", [latent], parameters={"steps": 9}).as_numpy("IMAGE")

    def local(direction: str, chosen: GenerationSettings) -> dict:
        schedule = chosen.generation_schedule(3)
        return info.solve_args(schedule, 9, chosen.solver, chosen.spacing, direction)

    want_z = grouplat.encode(velocity, x, **local("encode", settings.encoding()))
    even_z = grouplat.encode(velocity, x, **local("encode", settings.encoding()) | {"knots": None})
    np.testing.assert_allclose(z, want_z, atol=1e-4)
    assert np.abs(want_z - even_z).max() > 1e-2  # the served encode used the knots
    want_x = grouplat.decode(velocity, z, **local("decode", settings))
    even_x = grouplat.decode(velocity, z, **local("decode", settings) | {"knots": None})
    np.testing.assert_allclose(image, want_x, atol=1e-4)
    assert np.abs(want_x - even_x).max() > 1e-2
    knots.write(source, "0" * 64, table, {})
    capsys.readouterr()
    assert grouplat_main(["export", str(source), "--repository", str(tmp_path / "other")]) == 2
    assert "knots.json" in capsys.readouterr().err and not (tmp_path / "other" / "velocity").exists()


def test_export_serves_steps_per_direction(checkpoint, tmp_path, capsys):
    """Defaults: a 24-step decode, a 36-step encode; `--steps` alone sets both, `--encode-steps`
    the encode's; too few for the groups is refused by name."""
    from grouplat.settings import DEFAULT_ENCODE_STEPS, DEFAULT_STEPS

    repository = tmp_path / "repo"
    args = ["export", str(checkpoint), "--repository", str(repository), "--force", "--version", "1"]
    for extra, expected in (([], (DEFAULT_STEPS, DEFAULT_ENCODE_STEPS)), (["--steps", "30"], (30, 30)),
                            (["--steps", "30", "--encode-steps", "40"], (30, 40))):  # fmt: skip
        assert grouplat_main([*args, *extra]) == 0
        params = json.loads((repository / "decode" / "1" / "defaults.json").read_text())
        assert (int(params["steps"]), int(params["encode_steps"])) == expected
    capsys.readouterr()
    assert grouplat_main([*args, "--encode-steps", "2"]) == 2
    assert (
        "default steps and encode steps must be at least the number of groups (3)" in capsys.readouterr().err
    )
