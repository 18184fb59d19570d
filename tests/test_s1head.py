"""The S1 head (`networks.S1Head`, `grouplat fit-s1`): tiny models, 16×16, seconds each."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grouplat import LatentSpace  # noqa: E402
from grouplat.cli import main as grouplat_main  # noqa: E402
from grouplat.export.engine import check_parity, export_onnx, model_info  # noqa: E402
from grouplat.modelinfo import ModelInfo  # noqa: E402
from grouplat.space import quadrant_groups  # noqa: E402
from grouplat.training import s1head  # noqa: E402
from grouplat.training.checkpoint import load_checkpoint  # noqa: E402
from grouplat.training.networks import S1Head, build_network  # noqa: E402
from grouplat.training.s1head import FOCUS, SIGMA_RANGE, s1_loss, s1_training_codes  # noqa: E402
from grouplat.training.training_loop import TrainConfig, train  # noqa: E402

NET = dict(
    arch="unet", model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0
)
HEAD = {"hidden": 32, "layers": 2, "embedding": 8}
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("s1_benchmark", ROOT / "benchmarks" / "s1_head.py")
s1_benchmark = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(s1_benchmark)  # type: ignore[union-attr]
FITTED = {"hidden": 64, "layers": 2, "embedding": 32, "block": "film"}


def gaussian_s1_velocity(s1: np.ndarray, alpha: float, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """E[x̄ − z̄ | x̄_t] for S1 ~ N(mean, cov), written out with the whole covariance (no eigenvectors)."""
    eye = np.eye(len(mean))
    gain = (alpha * cov - (1 - alpha) * eye) @ np.linalg.inv(alpha**2 * cov + (1 - alpha) ** 2 * eye)
    return mean + (s1 - alpha * mean) @ gain.T


@pytest.mark.parametrize(
    ("space", "head"),
    [
        (LatentSpace((3, 16, 16), "dct", (10, 30, 100)), HEAD),
        (LatentSpace((3, 16, 16), "pixel", quadrant_groups(16, 16)), HEAD),
        (LatentSpace((3, 16, 16), "dct", (10, 30, 100)), {**HEAD, "block": "film"}),
    ],
)
def test_an_untrained_s1_head_is_the_full_covariance_gaussian_and_passes_other_groups(
    space: LatentSpace, head: dict
) -> None:
    torch.manual_seed(0)
    config = {**NET, "channels": 3, "resolution": [16, 16], "levels": space.k, "s1_head": head}
    net = build_network(config, space).eval()
    assert isinstance(net, S1Head) and build_network(net.config, space).config == net.config
    rng = np.random.default_rng(0)
    size = 3 * len(space.indices(1))
    codes = rng.standard_normal((4000, size)) @ rng.normal(0, 0.5, (size, size)) + rng.normal(0, 1, size)
    net.set_statistics(codes)
    torch.nn.init.zeros_(net.mlp.out.weight)
    torch.nn.init.zeros_(net.mlp.out.bias)
    x = rng.standard_normal((4, *space.shape)).astype(np.float32)
    for levels in (
        [0.3] + [-1.0] * (space.k - 1),
        [0.85] + [-1.0] * (space.k - 1),
        [1.0, 0.4] + [-1.0] * (space.k - 2),
    ):
        batch = torch.tensor([levels] * 4)
        with torch.no_grad():
            out = space.to_latent(net(torch.as_tensor(x), batch).numpy())
            inner = space.to_latent(net.net(torch.as_tensor(x), batch).numpy())
        s1 = space.to_latent(x)[..., space.indices(1)].reshape(4, -1)
        expected = gaussian_s1_velocity(s1, levels[0], codes.mean(0), np.cov(codes, rowvar=False))
        got = out[..., space.indices(1)].reshape(4, -1)
        assert np.abs(got - expected).max() < 2e-4 * np.abs(expected).max()  # float32 vs float64
        others = np.setdiff1d(np.arange(space.size), space.indices(1))
        np.testing.assert_allclose(out[..., others], inner[..., others], atol=2e-5)
    with pytest.raises(ValueError, match="S1 head"):
        build_network({**config, "s1_head": {"width": 3}}, space)
    with pytest.raises(ValueError, match="unknown MLP block 'dense'"):
        build_network({**config, "s1_head": {**head, "block": "dense"}}, space)


def test_the_fit_loss_weighs_every_direction_and_level_alike() -> None:
    # under a Gaussian S1 the residual target's conditional variance is exactly the scale² the MLP's
    # output is multiplied by, so an untrained head scores 1 at every level, eigen-stds 0.03 to 5
    # alike; the plain flow-matching loss would be ~λ + 1 (25 for the widest)
    space = LatentSpace((3, 16, 16), "dct", (10, 30, 100))
    net = S1Head(torch.nn.Identity(), space, hidden=16, layers=1)
    rng = np.random.default_rng(0)
    size = 3 * len(space.indices(1))
    rotation, _ = np.linalg.qr(rng.standard_normal((size, size)))
    codes = (rng.standard_normal((40_000, size)) * np.geomspace(0.03, 5.0, size)) @ rotation.T + 0.5
    net.set_statistics(codes)
    torch.nn.init.zeros_(net.mlp.out.weight)
    torch.nn.init.zeros_(net.mlp.out.bias)
    clean = torch.as_tensor(codes[:20_000], dtype=torch.float32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    for alpha in (0.02, 0.5, 0.995):
        level = torch.full((len(clean), 1), alpha)
        with torch.no_grad():
            loss = float(s1_loss(net, clean, noise, level))
        assert abs(loss - 1) < 0.03, (alpha, loss)


def test_the_fit_draws_its_levels_log_uniform_with_a_share_focused_below_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # FOCUS's share of the levels lies on [σ_min, σ_high]; the rest covers SIGMA_RANGE: with the
    # defaults (0.75 below 1) 90% of all levels are below 1 against 58% log-uniform
    drawn: list[torch.Tensor] = []

    def recording_loss(head: S1Head, clean: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor):
        drawn.append(alpha.detach().clone())
        return s1_loss(head, clean, noise, alpha)

    monkeypatch.setattr(s1head, "s1_loss", recording_loss)
    space = LatentSpace((1, 8, 8), "dct", (4, 16))
    head = S1Head(torch.nn.Identity(), space, hidden=8, layers=1)
    codes = np.random.default_rng(0).standard_normal((100, len(space.indices(1))))

    def drawn_sigmas(focus: tuple[float, float]) -> torch.Tensor:
        drawn.clear()
        s1head.fit(head, codes, steps=20, batch=500, lr=1e-3, seed=0, focus=focus)
        alpha = torch.cat(drawn).double().flatten()
        return (1 - alpha) / alpha

    low, high = SIGMA_RANGE
    share, focus_high = FOCUS
    log_share = np.log(focus_high / low) / np.log(high / low)
    sigma = drawn_sigmas(FOCUS)
    assert sigma.min() >= low * 0.999 and sigma.max() <= high * 1.001
    assert abs(float((sigma <= focus_high).double().mean()) - (share + (1 - share) * log_share)) < 0.02
    sigma = drawn_sigmas((0.0, focus_high))
    assert abs(float((sigma <= focus_high).double().mean()) - log_share) < 0.02


def tiny_run(out: Path, **changes: object) -> Path:
    config = TrainConfig(
        data="shapes:16", groups="10,30,100", network=dict(NET), batch=8, steps=2, lr=2e-3, warmup=1,
        out=str(out), log_every=1, checkpoint_every=1000, sample_every=0, stats_items=64, progress=False,
    )  # fmt: skip
    return Path(train(config.replace(**changes)))


def test_fit_s1_learns_s1_and_keeps_the_image_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tiny_run(tmp_path / "run")
    fitted = tmp_path / "fitted"
    args = ["fit-s1", str(source), "--out", str(fitted), "--images", "2048", "--steps", "800"]
    film_head = ("--hidden", "64", "--layers", "2", "--embedding", "32", "--block", "film")
    assert grouplat_main([*args, "--batch", "256", *film_head]) == 0
    assert "S1 head fitted on 2048 items" in capsys.readouterr().out
    before, after = load_checkpoint(source), load_checkpoint(fitted)  # loads: fingerprint verified
    assert after.config == {**before.config, "s1_head": FITTED}
    assert after.metadata["s1_head_fit"]["images"] == 2048
    assert after.metadata["s1_head_fit"]["source_fingerprint"] == before.fingerprint
    assert not (fitted / "optimizer.safetensors").exists()

    # other groups: the source's network, exactly; S1: the head's, not the source's
    space = after.space
    x = np.random.default_rng(0).standard_normal((3, *space.shape)).astype(np.float32)
    levels = np.array([[1.0, 0.5, -1, -1]] * 3, np.float32)
    old, new = (space.to_latent(ck.velocity()(x, levels)) for ck in (before, after))
    others = np.setdiff1d(np.arange(space.size), space.indices(1))
    np.testing.assert_allclose(new[..., others], old[..., others], atol=1e-5)

    # the fit learned something a Gaussian does not know: lower loss than the head's Gaussian part
    # on S1 of images it did not see, at noise levels drawn as in the fit
    head = after.network
    assert isinstance(head, S1Head)
    codes = torch.as_tensor(s1_training_codes(after, head, 20_000, seed=7)[-2048:], dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(codes.shape, generator=generator)
    sigma = torch.exp(torch.empty(len(codes), 1).uniform_(*np.log(SIGMA_RANGE), generator=generator))
    alpha = 1 / (1 + sigma)
    with torch.no_grad():
        fitted_loss = s1_loss(head, codes, noise, alpha)
        torch.nn.init.zeros_(head.mlp.out.weight)
        torch.nn.init.zeros_(head.mlp.out.bias)
        gaussian_loss = s1_loss(head, codes, noise, alpha)
    assert fitted_loss < 0.985 * gaussian_loss, (float(fitted_loss), float(gaussian_loss))  # measured: 0.945

    # benchmarks/s1_head.py: an untrained head (S1's full-covariance Gaussian) whitens S1 exactly, so
    # its RK4 encode of held-out images gives std ~1 in every eigen-band; the fitted head's differs
    fitted_stats = s1_benchmark.measure(load_checkpoint(fitted), count=256, steps=40, samples=64, items=512)
    gaussian = load_checkpoint(fitted)
    torch.nn.init.zeros_(gaussian.network.mlp.out.weight)
    torch.nn.init.zeros_(gaussian.network.mlp.out.bias)
    stats = s1_benchmark.measure(gaussian, count=256, steps=40, samples=64, items=512)
    assert stats["abs_mean"] < 0.15 and abs(stats["std_mean"] - 1) < 0.1, stats
    assert all(abs(s - 1) < 0.25 for s in stats["std_by_eigen_band"]), stats
    assert stats["loss"] > fitted_stats["loss"] and fitted_stats["std_mean"] != stats["std_mean"]
    # another held-out draw: other images, whitened as well (the criterion's spread over draws)
    codes = s1_benchmark.held_out_codes(gaussian, 256, draw=1)
    other = s1_benchmark.encoded_s1_statistics(gaussian.network, codes, steps=40)
    assert abs(other["std_mean"] - 1) < 0.1 and other["std_mean"] != stats["std_mean"], other

    # exported: ONNX Runtime computes what PyTorch does (the head is part of the velocity graph)
    onnx_model = export_onnx(load_checkpoint(fitted).network, model_info(after))
    assert check_parity(load_checkpoint(fitted).network, onnx_model, model_info(after)) < 1e-3

    # the served model info carries S1's covariance (the gei solvers' S1 part), through its files too
    info = model_info(after)
    fitted_on = s1_training_codes(after, head, 2048, seed=0)  # the fit's own items
    np.testing.assert_allclose(info.s1_covariance, np.cov(fitted_on, rowvar=False), rtol=1e-4, atol=1e-6)
    info.save(tmp_path)
    np.testing.assert_array_equal(ModelInfo.load(tmp_path).s1_covariance, info.s1_covariance)
    assert info.solve_args(after.schedule, 8)["s1_covariance"] is info.s1_covariance
    assert model_info(before).s1_covariance is None
    with pytest.raises(ValueError, match="S1's covariance must be"):
        ModelInfo(info.fingerprint, space, after.schedule, True, info.mean, info.std, {}, np.eye(3))

    # a model that has a head gets a new one; the image network stays
    again = tmp_path / "again"
    assert grouplat_main(["fit-s1", str(fitted), "--out", str(again), "--images", "64", "--steps", "2"]) == 0
    defaults = {"hidden": 512, "layers": 4, "embedding": 256, "block": "film"}  # the shipped head's
    assert load_checkpoint(again).config == {**before.config, "s1_head": defaults}
    assert json.loads((again / "metadata.json").read_text())["images"] == before.metadata["images"]
    # one seed, one head: the same command again writes the same weights
    twice = tmp_path / "twice"
    assert grouplat_main(["fit-s1", str(fitted), "--out", str(twice), "--images", "64", "--steps", "2"]) == 0
    weights = [load_checkpoint(path).network.state_dict() for path in (again, twice)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # a narrower noise-level embedding than the MLP's width: in the config, so served models rebuild it
    narrow = tmp_path / "narrow"
    shape = ["--hidden", "64", "--embedding", "16", "--block", "shift", "--images", "64", "--steps", "2"]
    assert grouplat_main(["fit-s1", str(fitted), "--out", str(narrow), *shape]) == 0
    narrowed = load_checkpoint(narrow)
    assert narrowed.config["s1_head"] == {"hidden": 64, "layers": 4, "embedding": 16}
    assert narrowed.network.mlp.affine[0].weight.shape == (64, 16)


def test_fit_s1_refuses_what_it_cannot_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = tiny_run(tmp_path / "shown", hide=False, steps=1)
    assert grouplat_main(["fit-s1", str(shown), "--out", str(tmp_path / "a"), "--steps", "1"]) == 2
    assert "hidden groups" in capsys.readouterr().err
    assert grouplat_main(["fit-s1", str(shown), "--out", str(tmp_path / "shown"), "--steps", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert grouplat_main(["fit-s1", str(tmp_path / "nothing"), "--out", str(tmp_path / "b")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert grouplat_main(["fit-s1", str(shown), "--out", str(tmp_path / "c"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    for option, value, why in (("--focus-share", "1.5", "[0, 1]"), ("--focus-sigma", "100", "(0.002, 80.0]")):
        assert grouplat_main(["fit-s1", str(shown), "--out", str(tmp_path / "d"), option, value]) == 2
        assert f"{option} must lie in {why}, got {float(value)}" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")
