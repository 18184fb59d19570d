"""Training: network, loss, data, trainer, checkpoints and CLI (tiny nets, 16×16, seconds each)."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grouplat import LatentSpace, Schedule, decode  # noqa: E402
from grouplat.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from grouplat.training.cli import main as cli_main  # noqa: E402
from grouplat.training.dataset import FACTORS, SHAPE_KINDS, Shapes, data_statistics, open_dataset  # noqa: E402
from grouplat.training.loss import GroupedFlowLoss, TorchBasis  # noqa: E402
from grouplat.training.networks import build_network  # noqa: E402
from grouplat.training.training_loop import TrainConfig, resume_config, train  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine, OpenMP's spinning made these tests 10–30× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_NET = dict(
    arch="unet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0
)


def tiny(out: Path, **changes: object) -> TrainConfig:
    cfg = TrainConfig(
        data="shapes:16",
        groups="10,30,100",
        network=dict(TINY_NET),
        batch=8,
        steps=4,
        lr=2e-3,
        warmup=2,
        out=str(out),
        log_every=1,
        checkpoint_every=1000,
        sample_every=0,
        sample_count=4,
        sample_steps=4,
        stats_items=64,
        progress=False,
        ema_halflife_kimg=0.1,
    )
    return cfg.replace(**changes)


def tiny_net(levels: int = 4, **changes: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network({**TINY_NET, "channels": 3, "resolution": [16, 16], "levels": levels, **changes})


SPACE = LatentSpace((3, 16, 16), "dct", (10, 30, 100))
SCHEDULE = Schedule.from_cuts("0.6,0.8,0.9")


def fixed_batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """Images, one t per phase in turn, and noise — deterministic."""
    images = torch.as_tensor(Shapes(16).images(np.arange(1000, 1000 + n)))
    t = (np.arange(n) + np.random.default_rng(seed).random(n)) / n
    noise = torch.randn((n, 3, 256), generator=torch.Generator().manual_seed(seed))
    return images, t, noise


# ----------------------------------------------------------------------------
# Basis, network, loss.


@pytest.mark.parametrize("basis", ["dct", "pixel"])
def test_torch_basis_matches_the_core(basis: str) -> None:
    space = LatentSpace((2, 8, 12), basis, (5, 20))
    images = np.random.default_rng(0).standard_normal((3, 2, 8, 12)).astype(np.float32)
    torch_basis = TorchBasis(space)
    latents = torch_basis.to_latent(torch.as_tensor(images))
    np.testing.assert_allclose(latents.numpy(), space.to_latent(images), atol=1e-5)
    np.testing.assert_allclose(torch_basis.from_latent(latents).numpy(), images, atol=1e-5)


def test_networks_take_levels_with_hidden_groups() -> None:
    net = tiny_net()
    x = torch.randn(3, 3, 16, 16)
    levels = torch.tensor([[1, 1, 0.5, -1], [0.2, -1, -1, -1], [1, 1, 1, 0]], dtype=torch.float32)
    out = net(x, levels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(net.map_levels(levels)[0], net.map_levels(levels.clamp(0, 1))[0])
    mlp = build_network(dict(arch="mlp", channels=1, resolution=[1, 2], levels=2, hidden=32, layers=2))
    assert mlp(torch.randn(5, 1, 1, 2), torch.tensor([[0.5, -1.0]] * 5)).shape == (5, 1, 1, 2)
    assert build_network(net.config).config == net.config
    with pytest.raises(ValueError, match="architecture"):
        build_network({"arch": "resnet"})
    with pytest.raises(ValueError, match="unet network config"):
        build_network({**net.config, "widht": 3})
    with pytest.raises(ValueError, match="divisible by 2"):
        build_network({**net.config, "resolution": [15, 16]})


def test_an_untrained_gaussian_residual_network_is_the_gaussian_predictor() -> None:
    """residual="gaussian": u = u_g + r ⊙ Uᵀnet; with the net's output zeroed, exactly the oracle."""
    from grouplat import GaussianOracle

    rng = np.random.default_rng(0)
    mean = rng.normal(0, 0.5, SPACE.latent_shape).astype(np.float32)
    std = rng.uniform(0.05, 3, SPACE.latent_shape).astype(np.float32)
    net = build_network({**tiny_net().config, "residual": "gaussian"}, SPACE, mean, std)
    torch.nn.init.zeros_(net.net.out_conv.weight)
    torch.nn.init.zeros_(net.net.out_conv.bias)
    x = rng.standard_normal((5, *SPACE.shape)).astype(np.float32)
    levels = SCHEDULE.conditioning(rng.random(5))
    expected = GaussianOracle(SPACE, mean, std)(x, levels)
    got = net(torch.as_tensor(x), torch.as_tensor(levels)).detach().numpy()
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()  # float32 vs float64
    with pytest.raises(ValueError, match="data mean/std"):
        build_network({**tiny_net().config, "residual": "gaussian"})
    with pytest.raises(ValueError, match="unknown network residual"):
        build_network({**tiny_net().config, "residual": "edm"}, SPACE, mean, std)


def test_phase_times_give_every_group_an_equal_share() -> None:
    from grouplat.training.loss import draw_times

    t = draw_times(SCHEDULE, "phase", np.random.default_rng(0), 40_000)
    share = np.bincount(SCHEDULE.active(t), minlength=4) / len(t)
    assert np.abs(share - 0.25).max() < 0.01  # under "schedule", S1 would get 10% (0.9..1)
    t = draw_times(SCHEDULE, "schedule", np.random.default_rng(0), 40_000)
    assert abs(np.mean(SCHEDULE.active(t) == 0) - 0.1) < 0.01
    with pytest.raises(ValueError, match="unknown time sampling"):
        draw_times(SCHEDULE, "log", np.random.default_rng(0), 3)
    t = draw_times(SCHEDULE, "phase", np.random.default_rng(0), 40_000, np.array([0.5, 0.2, 0.15, 0.15]))
    share = np.bincount(SCHEDULE.active(t), minlength=4) / len(t)
    assert np.abs(share - [0.5, 0.2, 0.15, 0.15]).max() < 0.01
    from grouplat.training.training_loop import parse_shares

    for bad in ("0.5,0.5", "a,b,c,d", "-1,1,1,1", "0,0,0,0"):
        with pytest.raises(ValueError, match="phase shares"):
            parse_shares(bad, 4)


def test_group_weighting_makes_each_phase_its_groups_mean() -> None:
    images, t, noise = fixed_batch(8)
    net = tiny_net()
    uniform, stats = GroupedFlowLoss(SPACE, SCHEDULE, weighting="uniform")(net, images, t, noise, True)
    group, _ = GroupedFlowLoss(SPACE, SCHEDULE, weighting="group")(net, images, t, noise)
    sizes = np.bincount(SPACE.group_of, minlength=4)[stats["group"]]
    np.testing.assert_allclose(
        group.detach().numpy(), uniform.detach().numpy() * SPACE.size / sizes, rtol=1e-5
    )


@pytest.mark.parametrize("weighting", ["paper", "uniform"])
def test_loss_weights_only_the_active_group(weighting: str) -> None:
    """Perturbing the network output outside the active group changes nothing; inside, it does."""
    loss_fn = GroupedFlowLoss(SPACE, SCHEDULE, weighting=weighting)
    net = tiny_net()
    images, t, noise = fixed_batch()
    active = SCHEDULE.active(t)
    inside = torch.as_tensor(SPACE.group_of[None, :] == active[:, None])[:, None]  # [B, 1, H·W]
    delta = torch.randn(len(t), 3, 256, generator=torch.Generator().manual_seed(5))

    def perturbed(mask: torch.Tensor) -> torch.nn.Module:
        shift = loss_fn.basis.from_latent(delta * mask)
        return lambda x, a: net(x, a) + shift  # type: ignore[return-value]

    with torch.no_grad():
        base, _ = loss_fn(net, images, t, noise)
        outside, _ = loss_fn(perturbed(~inside), images, t, noise)
        within, _ = loss_fn(perturbed(inside), images, t, noise)
    torch.testing.assert_close(outside, base, rtol=1e-5, atol=1e-6)
    assert (within - base).abs().min() > 1e-3
    if weighting == "paper":  # Eq. 7: the α'² of the active group scales its error
        rate = -SCHEDULE.rates(t)[np.arange(len(t)), active]
        ratio = (within - base).numpy() / rate**2
        uniform = GroupedFlowLoss(SPACE, SCHEDULE, weighting="uniform")
        with torch.no_grad():
            expected = (
                uniform(perturbed(inside), images, t, noise)[0] - uniform(net, images, t, noise)[0]
            ).numpy()
        np.testing.assert_allclose(ratio, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("hide", [True, False])
def test_network_sees_hidden_groups_zeroed_and_marked(hide: bool) -> None:
    seen: dict[str, torch.Tensor] = {}

    def spy(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        seen["x"], seen["levels"] = x, levels
        return torch.zeros_like(x)

    images, t, noise = fixed_batch()
    GroupedFlowLoss(SPACE, SCHEDULE, hide=hide)(spy, images, t, noise)  # type: ignore[arg-type]
    magnitude = np.abs(SPACE.to_latent(seen["x"].numpy())).max(axis=1)  # [B, H·W], over channels
    hidden = SCHEDULE.hidden[SCHEDULE.active(t)] & hide  # [B, k]
    coefficient_hidden = hidden[:, SPACE.group_of]
    assert hidden.any() == hide
    assert (magnitude[coefficient_hidden] < 1e-5).all()
    assert (magnitude[~coefficient_hidden] > 1e-6).mean() > 0.99  # nothing else is zeroed
    np.testing.assert_array_equal(seen["levels"].numpy() == -1, hidden)


# ----------------------------------------------------------------------------
# Data.


def test_shapes_are_deterministic_with_factors() -> None:
    data = Shapes(16, seed=3)
    a, b = data.images(np.array([5, 6, 5])), Shapes(16, seed=3).images(np.array([5]))
    assert a.shape == (3, 3, 16, 16) and a.dtype == np.float32
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[0], a[2]) and not np.array_equal(a[0], a[1])
    assert a.min() >= -1 and a.max() <= 1
    factors = data.factors(np.arange(400))
    assert factors.shape == (400, len(FACTORS))
    assert set(np.unique(factors[:, 0]).astype(int)) == set(range(len(SHAPE_KINDS)))
    assert Shapes(24).images(np.arange(2)).shape == (2, 3, 24, 24)
    assert not np.array_equal(Shapes(16, seed=4).images(np.array([5]))[0], a[0])


def _write_images(folder: Path) -> None:
    folder.mkdir()
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, 20:] = 255  # after the centre crop (columns 10..30): left half black, right half white
    from PIL import Image

    Image.fromarray(half).save(folder / "a.png")
    (folder / "sub").mkdir()
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(folder / "sub" / "b.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(
        folder / "c.jpg"
    )


def test_image_folder_and_zip(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs")
    folder = open_dataset(f"folder:{tmp_path / 'imgs'}", resolution=16)
    assert len(folder) == 3 and folder.shape == (3, 16, 16)
    first = folder.images(np.array([0]))[0]
    assert first[:, :, :7].max() < -0.9 and first[:, :, 9:].min() > 0.9
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        for name in ("a.png", "sub/b.png", "c.jpg"):
            archive.write(tmp_path / "imgs" / name, name)
        archive.writestr("dataset.json", json.dumps({"labels": None}))
    packed = open_dataset(f"zip:{tmp_path / 'data.zip'}", resolution=16, xflip=True)
    assert len(packed) == 6
    both = packed.images(np.array([0, 3, 1]))
    np.testing.assert_array_equal(both[0], first)
    np.testing.assert_array_equal(both[1], first[..., ::-1])
    assert open_dataset(f"folder:{tmp_path / 'imgs'}").shape == (3, 20, 20)  # native: a.png is 40×20


def test_bad_data_specs_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    cases = {
        "nope": "unknown data spec",
        "shapes:abc": "bad data spec",
        "gmm2d:3": "unknown data spec",
        f"folder:{tmp_path / 'missing'}": "does not exist",
        f"folder:{tmp_path / 'empty'}": "no images",
        f"zip:{tmp_path / 'junk.zip'}": "cannot open data zip",
        "folder:": "unknown data spec",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message):
            open_dataset(spec)


def test_data_statistics_match_a_direct_computation() -> None:
    data = Shapes(16)
    mean, std = data_statistics(data, SPACE.to_latent, items=64, seed=0, batch=16)
    indices = np.sort(np.random.default_rng(0).choice(len(data), 64, replace=False))
    latents = SPACE.to_latent(data.images(indices).astype(np.float64))
    np.testing.assert_allclose(mean, latents.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, latents.std(0), rtol=1e-4, atol=1e-5)
    assert mean.shape == SPACE.latent_shape and mean.dtype == np.float32


# ----------------------------------------------------------------------------
# Trainer and checkpoints.


def test_loss_is_finite_and_decreases(tmp_path: Path) -> None:
    cfg = tiny(tmp_path / "run", steps=40, batch=16, warmup=5, ema_halflife_kimg=0.05)
    final = train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 40 and np.isfinite(losses).all()
    assert {"loss_S1", "mse_S4", "gauss_S2", "img_per_sec"} <= set().union(*lines[1:])

    loss_fn = GroupedFlowLoss(SPACE, SCHEDULE)
    images, t, noise = fixed_batch(64)
    trained = load_checkpoint(final, weights="raw").network
    with torch.no_grad():
        before = loss_fn(tiny_net(), images, t, noise)[0].mean().item()
        after = loss_fn(trained, images, t, noise)[0].mean().item()
    assert after < 0.75 * before, (before, after)
    assert (tmp_path / "run" / "samples" / "step-0000040.png").is_file()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net, ema = tiny_net(), tiny_net(dropout=0.0)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mean, std = np.zeros(SPACE.latent_shape, np.float32), np.ones(SPACE.latent_shape, np.float32)
    meta = {
        "network": net.config,
        "space": SPACE.describe(),
        "schedule": SCHEDULE.describe(),
        "hide": True,
        "weighting": "paper",
        "step": 0,
    }
    written = save_checkpoint(tmp_path / "ckpt", net, ema, meta, mean, std)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.fingerprint == written["fingerprint"] and len(loaded.fingerprint) == 64
    assert loaded.space == SPACE and loaded.schedule == SCHEDULE and loaded.hide
    assert not loaded.network.training
    x, levels = torch.randn(4, 3, 16, 16), torch.tensor([[1.0, 0.3, -1, -1]] * 4)
    ema.eval()
    with torch.no_grad():
        assert torch.equal(loaded.network(x, levels), ema(x, levels))
        assert torch.equal(
            load_checkpoint(tmp_path / "ckpt", weights="raw").network(x, levels), net.eval()(x, levels)
        )
    latents = np.random.default_rng(0).standard_normal((2, *SPACE.latent_shape)).astype(np.float32)
    images = decode(loaded.velocity(), latents, SPACE, SCHEDULE, steps=8, std=loaded.data_std)
    assert images.shape == (2, 3, 16, 16) and np.isfinite(images).all()
    # The same weights and metadata give the same fingerprint; other weights another.
    again = save_checkpoint(tmp_path / "again", net, ema, meta, mean, std)
    assert again["fingerprint"] == written["fingerprint"]
    assert (
        save_checkpoint(tmp_path / "swap", ema, net, meta, mean, std)["fingerprint"] != written["fingerprint"]
    )


def test_corrupt_or_inconsistent_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    net = tiny_net()
    meta = {"network": net.config, "space": SPACE.describe(), "schedule": SCHEDULE.describe(), "hide": True}
    stats = np.zeros(SPACE.latent_shape, np.float32), np.ones(SPACE.latent_shape, np.float32)
    save_checkpoint(tmp_path / "good", net, net, meta, *stats)

    def broken(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(tmp_path / "good", target)
        return target

    truncated = broken("truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt"):
        load_checkpoint(truncated.parent)
    for tensor in ("data_std", "ema.out_conv.weight", "raw.enc_in.bias"):
        flipped = broken(f"flipped-{tensor}") / "model.safetensors"
        data = bytearray(flipped.read_bytes())
        size = int.from_bytes(data[:8], "little")
        data[8 + size + json.loads(data[8 : 8 + size])[tensor]["data_offsets"][0]] ^= 0x40
        flipped.write_bytes(bytes(data))
        with pytest.raises(ValueError, match="fingerprint|checksum"):
            load_checkpoint(flipped.parent, weights="raw" if tensor.startswith("raw") else "ema")
    edited = broken("edited") / "metadata.json"
    edited.write_text(edited.read_text().replace('"0.6,0.8,0.9"', '"0.5,0.8,0.9"'))
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(edited.parent)
    (broken("nometa") / "metadata.json").unlink()
    with pytest.raises(ValueError, match=r"metadata\.json.*missing"):
        load_checkpoint(tmp_path / "nometa")
    (broken("garbled") / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"metadata\.json.*corrupt"):
        load_checkpoint(tmp_path / "garbled")
    other = broken("other") / "metadata.json"
    other.write_text(other.read_text().replace('"model_channels": 16', '"model_channels": 32'))
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(other.parent)
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    net = dict(TINY_NET, dropout=0.2)  # dropout draws random numbers too
    full = train(tiny(tmp_path / "full", network=net, steps=6, checkpoint_every=3, keep=0))
    shutil.copytree(tmp_path / "full" / "checkpoint-0000003", tmp_path / "half" / "checkpoint-0000003")
    resumed = train(resume_config(tmp_path / "half", out=str(tmp_path / "half")), resume=tmp_path / "half")
    assert resumed.name == full.name == "checkpoint-0000006"
    a, b = (load_checkpoint(p, weights="raw").network.state_dict() for p in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(full).fingerprint == load_checkpoint(resumed).fingerprint

    def losses(run: str) -> dict[int, float]:
        lines = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return {line["step"]: line["loss"] for line in lines if "loss" in line}

    assert {s: v for s, v in losses("full").items() if s > 3} == losses("half")


def test_cli_trains_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(
        flag in text for flag in ("--schedule", "--groups", "--basis", "--resume", "--no-hide", "ffhq64")
    )
    common = [
        "train",
        "--groups",
        "10,30,100",
        "--channels",
        "16",
        "--mults",
        "1,2",
        "--blocks",
        "1",
        "--attn",
        "8",
        "--batch",
        "4",
        "--stats-items",
        "16",
        "--sample-count",
        "4",
        "--sample-steps",
        "4",
        "--no-progress",
    ]
    assert cli_main([*common, "--data", "shapes:16", "--steps", "2", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "checkpoint-0000002" / "model.safetensors").is_file()
    assert load_checkpoint(tmp_path / "r").metadata["training"]["batch"] == 4
    assert cli_main([*common, "--data", "pictures", "--out", str(tmp_path / "x")]) == 2
    assert "unknown data spec" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "r"), "--lr", "1"]) == 2
    assert "cannot change --lr" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(tmp_path / "r"), "--steps", "3"]) == 0
    assert (tmp_path / "r" / "checkpoint-0000003").is_dir()
    assert cli_main(["train", "--preset", "ffhq64", "--out", str(tmp_path / "f")]) == 2
    assert "needs --data" in capsys.readouterr().err
