"""S1's phase on the S1 head alone (`S1PhaseVelocity`, `S1HeadAlone`): a headed model's solves
read the same numbers as from the whole network, while the image network is never called on a
row whose every group but S1 is hidden — in-process and served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

import grouplat
from grouplat.cli import main as grouplat_main
from grouplat.export.engine import onnx_velocity
from grouplat.modelinfo import ModelInfo
from grouplat.s1phase import S1PhaseVelocity
from grouplat.serving.server import EmbeddedServer
from grouplat.training.checkpoint import load_checkpoint, save_checkpoint
from grouplat.training.networks import S1Head, S1HeadAlone, build_network, numpy_velocity

SPACE = grouplat.LatentSpace((3, 16, 16), "dct", (10, 40))
NETWORK = dict(arch="unet", channels=3, resolution=[16, 16], levels=3, model_channels=16,
               channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0,
               s1_head={"hidden": 32, "layers": 2})  # fmt: skip


@pytest.fixture(scope="module")
def headed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A headed checkpoint with random (not near-zero) weights and S1 statistics."""
    torch.manual_seed(0)
    network = build_network(NETWORK, SPACE)
    assert isinstance(network, S1Head)
    rng = np.random.default_rng(0)
    size = 3 * len(SPACE.indices(1))
    network.set_statistics(rng.standard_normal((2000, size)) @ rng.normal(0, 0.5, (size, size)))
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    metadata = {"network": NETWORK, "space": SPACE.describe(), "schedule": "0.6,0.8", "hide": True,
                "weighting": "paper", "step": 0}  # fmt: skip
    mean = rng.normal(size=SPACE.latent_shape).astype(np.float32) * 0.1
    std = rng.uniform(0.2, 2, SPACE.latent_shape).astype(np.float32)
    directory = tmp_path_factory.mktemp("headed") / "checkpoint-0000001"
    save_checkpoint(directory, network, network, metadata, mean, std)
    return directory


class Recorder:
    """A velocity callable that keeps the levels of every row it was asked for."""

    def __init__(self, velocity: grouplat.solvers.Velocity) -> None:
        self.velocity, self.levels = velocity, []

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        self.levels.extend(np.asarray(levels))
        return self.velocity(x_t, levels)


def s1_phase(levels: object) -> np.ndarray:
    return (np.asarray(levels)[:, 1:] < 0).all(axis=1)


def test_s1s_phase_runs_on_the_head_alone_and_solves_alike(headed: Path) -> None:
    checkpoint = load_checkpoint(headed)
    whole = numpy_velocity(checkpoint.network)
    image_network, head = Recorder(whole), Recorder(numpy_velocity(S1HeadAlone(checkpoint.network)))
    split = S1PhaseVelocity(image_network, head)
    args = model_args(checkpoint, 12)
    latents = np.random.default_rng(1).standard_normal((3, *SPACE.latent_shape)).astype(np.float32)
    images = grouplat.decode(split, latents, **args)
    np.testing.assert_allclose(images, grouplat.decode(whole, latents, **args), atol=1e-5)
    assert len(head.levels) >= 3 * 3 and s1_phase(head.levels).all()  # S1's steps, every latent
    assert not s1_phase(image_network.levels).any()  # the image network: only where it is read
    back = grouplat.encode(split, images, **model_args(checkpoint, 12, "encode"))
    np.testing.assert_allclose(
        back, grouplat.encode(whole, images, **model_args(checkpoint, 12, "encode")), atol=1e-4
    )

    # a batch of rows in different phases (the scheduler merges requests), on torch tensors (a
    # device state's path): S1's rows from the head, the others from the image network, in order
    net = checkpoint.network
    x = torch.randn(4, *SPACE.shape, generator=torch.Generator().manual_seed(2))
    levels = torch.tensor([[0.3, -1, -1], [1, 0.5, -1], [0.9, -1, -1], [1, 1, 0.2]])
    with torch.no_grad():
        mixed = S1PhaseVelocity(net, numpy_velocity(S1HeadAlone(net)))(x, levels)
        expected = net(x, levels)
    assert isinstance(mixed, torch.Tensor)
    s1 = SPACE.indices(1)
    latent, want = SPACE.to_latent(mixed.numpy()), SPACE.to_latent(expected.numpy())
    np.testing.assert_allclose(latent[[0, 2]][..., s1], want[[0, 2]][..., s1], atol=1e-5)
    np.testing.assert_allclose(mixed[[1, 3]].numpy(), expected[[1, 3]].numpy(), atol=1e-6)
    # the tools' velocities split the same way (ONNX Runtime and PyTorch)
    assert isinstance(onnx_velocity(checkpoint), S1PhaseVelocity)
    assert isinstance(checkpoint.velocity(), S1PhaseVelocity)


def model_args(checkpoint, steps: int, direction: str = "decode") -> dict:  # type: ignore[no-untyped-def,type-arg]
    info = ModelInfo(checkpoint.fingerprint, checkpoint.space, checkpoint.schedule, True,
                     checkpoint.data_mean, checkpoint.data_std, {}, checkpoint.s1_covariance)  # fmt: skip
    return info.solve_args(checkpoint.schedule, steps, "gei2pc", "tau", direction)


@pytest.mark.parametrize("engine", ["python", "torch"])
def test_served_s1_steps_never_reach_the_velocity_model(headed: Path, tmp_path: Path, engine: str) -> None:
    # through BLS, so the velocity model's calls can be counted; the torch engine keeps the ODE state
    # in torch tensors (a GPU's path, by DLPack): S1's rows go to the host's head and back
    repository = tmp_path / "repo"
    args = ["export", str(headed), "--repository", str(repository), "--velocity-call", "bls",
            "--engine", engine, "--device", "cpu"]  # fmt: skip
    assert grouplat_main(args) == 0
    assert (repository / "velocity" / "1" / "s1_head.onnx").is_file()
    checkpoint = load_checkpoint(headed)
    image_network = Recorder(onnx_velocity(checkpoint).velocity)  # type: ignore[attr-defined]
    latent = np.random.default_rng(3).standard_normal((1, *SPACE.latent_shape)).astype(np.float32)
    split = S1PhaseVelocity(image_network, onnx_velocity(checkpoint).s1_head)  # type: ignore[attr-defined]
    expected = grouplat.decode(split, latent, **model_args(checkpoint, 12))
    with EmbeddedServer(repository) as server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = velocity_calls(client)
        request = grpcclient.InferInput("LATENT", list(latent.shape), "FP32")
        request.set_data_from_numpy(latent)
        served = client.infer("decode", [request], parameters={"steps": 12}).as_numpy("IMAGE")
        calls = velocity_calls(client) - before
    np.testing.assert_allclose(served, expected, atol=2e-4)
    assert calls == len(image_network.levels) < 12, before  # only the steps outside S1's phase


def velocity_calls(client: grpcclient.InferenceServerClient) -> int:
    return int(client.get_inference_statistics("velocity").model_stats[0].inference_stats.success.count)


def test_s1_steps_are_free_in_the_budget_the_defaults_and_the_evaluation(headed: Path) -> None:
    from grouplat.export.repository import ServingOptions
    from grouplat.serving.orchestration import Orchestrator
    from grouplat.settings import GenerationSettings
    from grouplat.tools.evaluation.cli import Engine, load_model

    checkpoint = load_checkpoint(headed)
    info = ModelInfo(checkpoint.fingerprint, SPACE, checkpoint.schedule, True, checkpoint.data_mean,
                     checkpoint.data_std, {}, checkpoint.s1_covariance)  # fmt: skip
    whole = numpy_velocity(checkpoint.network)
    defaults = GenerationSettings(steps=12, schedule=grouplat.Schedule.from_steps([6, 3, 3]).text)
    split = Orchestrator(info, S1PhaseVelocity(whole, whole), defaults)
    plain = Orchestrator(info, whole, defaults)
    settings = split.defaults  # 12 steps [6, 3, 3]: S1's 6 on the head
    assert plain.cost("decode", 2, settings) == 24 and split.cost("decode", 2, settings) == 12
    assert split.cost("mix", 1, settings) == 18

    # served defaults: a headed model with four groups gets S1-heavy splits, others keep theirs
    space4 = grouplat.LatentSpace((3, 16, 16), "dct", (10, 30, 100))
    stats = np.zeros(space4.latent_shape, np.float32), np.ones(space4.latent_shape, np.float32)
    size = 3 * len(space4.indices(1))
    four = grouplat.Schedule.from_cuts("0.6,0.8,0.9")
    headed4 = ModelInfo(checkpoint.fingerprint, space4, four, True, *stats, {}, np.eye(size))
    plain4 = ModelInfo(checkpoint.fingerprint, space4, four, True, *stats)
    assert (ServingOptions().resolved(headed4).steps, ServingOptions().resolved(headed4).encode_steps) == (
        88,
        280,
    )
    assert (ServingOptions().resolved(plain4).steps, ServingOptions().resolved(plain4).encode_steps) == (
        24,
        36,
    )
    assert ServingOptions(steps=30).resolved(headed4).encode_steps == 30

    # the evaluation's NFE counts network evaluations: S1's steps come on top
    model = load_model(str(headed), "headed", Engine("onnx", 1))
    schedule = grouplat.Schedule.from_steps([6, 3, 3])
    assert model.steps(6, "gei2pc", schedule) == 12 and model.steps(6, "heun", schedule) == 6
    assert model.steps(None, "gei2pc", schedule, "encode") == model.served[1] == 36
