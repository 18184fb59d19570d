"""`grouplat evaluate`: the metrics on synthetic data with known answers, and a --quick run on tiny
checkpoints (a grouped model with hidden groups must show exactly 0 leakage into coarser groups)."""

import argparse
import json

import numpy as np
import pytest
import torch

import grouplat
from grouplat.tools.evaluation import cli, measure, metrics
from grouplat.training.checkpoint import save_checkpoint
from grouplat.training.dataset import Shapes
from grouplat.training.networks import build_network

SHAPE = 0  # the categorical factor's column
NETWORK = dict(
    arch="unet", channels=3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]
)


@pytest.fixture(scope="module")
def factors():
    return Shapes(16, seed=5).factors(np.arange(600))


def test_metrics_score_a_copy_of_the_factors_near_one(factors):
    rng = np.random.default_rng(0)
    codes = np.column_stack(
        [factors + 1e-3 * rng.standard_normal(factors.shape), rng.standard_normal((600, 5))]
    )
    assert metrics.mig(codes, factors, [SHAPE])["score"] > 0.8
    dci = metrics.dci(codes, factors, [SHAPE])
    assert min(dci["disentanglement"], dci["completeness"], dci["informativeness"]) > 0.95
    assert metrics.sap(codes, factors, [SHAPE])["score"] > 0.9


def test_metrics_score_noise_near_zero(factors):
    codes = np.random.default_rng(1).standard_normal((600, 12))
    assert metrics.mig(codes, factors, [SHAPE])["score"] < 0.05
    dci = metrics.dci(codes, factors, [SHAPE])
    assert max(dci["disentanglement"], dci["completeness"], dci["informativeness"]) < 0.2
    assert metrics.sap(codes, factors, [SHAPE])["score"] < 0.05


def test_mig_sees_one_entangled_code_dimension(factors):
    """x and y in one dimension (and a copy of the rest): MIG drops for x and y alone."""
    codes = factors.copy()
    codes[:, 2] = factors[:, 2] + factors[:, 3]
    codes[:, 3] = np.random.default_rng(2).standard_normal(600)
    gaps = metrics.mig(codes, factors, [SHAPE])["per_factor"]
    assert max(gaps[2], gaps[3]) < 0.5 and min(gaps[:2] + gaps[4:]) > 0.8


def test_sliced_wasserstein_and_correlation():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 6))
    assert metrics.sliced_wasserstein(a, a) == 0
    shift = np.array([2.0, 0, 0, 0, 0, 0])
    directions = np.random.default_rng(0).standard_normal((6, 128))
    expected = np.mean(np.abs(shift @ (directions / np.linalg.norm(directions, axis=0))))
    assert metrics.sliced_wasserstein(a, a + shift) == pytest.approx(expected, rel=1e-9)
    b = np.column_stack([a, 2 * a[:, 0] + 1])
    assert metrics.max_abs_correlation(b) == pytest.approx(1.0)
    assert metrics.null_max_abs_correlation(400, 6) < 0.25
    assert metrics.psnr(np.zeros((1, 3, 4, 4)), np.full((1, 3, 4, 4), 0.2)) == pytest.approx(20.0)


def test_shape_classifier_reads_the_kind_regardless_of_colour_and_place():
    data = Shapes(16, seed=9)
    train, test = np.arange(1500), np.arange(1500, 1800)
    classifier = metrics.ShapeClassifier(data.images(train), data.factors(train)[:, SHAPE])
    assert classifier.accuracy(data.images(test), data.factors(test)[:, SHAPE]) > 0.9
    scores = metrics.kind_scores(classifier.probabilities(data.images(test)))
    assert scores["confidence"] > 0.9 and scores["kind_score"] > 3


def write_checkpoint(directory, groups, schedule, seed):
    torch.manual_seed(seed)
    space = grouplat.LatentSpace((3, 16, 16), "dct", groups)
    network = build_network(NETWORK | dict(resolution=[16, 16], levels=space.k))
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.02 * torch.randn_like(p))  # not the near-identity init: every group is seen
    rng = np.random.default_rng(seed)
    data = {"spec": "shapes:16", "seed": 0, "length": 1 << 20}
    metadata = {
        "network": network.config,
        "space": space.describe(),
        "schedule": schedule,
        "hide": True,
        "data": data,
    }
    mean = 0.1 * rng.standard_normal(space.latent_shape).astype(np.float32)
    std = rng.uniform(0.2, 2, space.latent_shape).astype(np.float32)
    save_checkpoint(directory, network, network, metadata, mean, std)
    return str(directory)


def test_s1_spread_of_a_per_coefficient_gaussian_model_of_few_factor_data():
    # Data whose S1 is 3 factors spread over 30 numbers, and the model that knows only each
    # coefficient's mean and std (the exact encode (x̄ − μ) / σ; samples μ + σ·N(0, I)): its samples
    # are ~1 wide along every principal direction, so the images' latents are as narrow as the images.
    rng = np.random.default_rng(0)
    space = grouplat.LatentSpace((3, 8, 8), "dct", (10, 40))
    mean = rng.standard_normal(space.latent_shape)
    std = rng.uniform(0.5, 2, space.latent_shape)
    codes = rng.standard_normal((2000, *space.latent_shape))
    s1 = space.indices(1)
    mixing = rng.standard_normal((3, 30)) / np.sqrt(3)
    few = rng.standard_normal((2000, 3)) @ mixing + 0.05 * rng.standard_normal((2000, 30))
    codes[..., s1] = few.reshape(2000, 3, 10)
    gaussian = grouplat.GaussianOracle(space, mean, std)
    images = gaussian.decode(codes)
    samples = gaussian.decode(rng.standard_normal((2000, *space.latent_shape)))
    latents = gaussian.encode(images)

    bands = measure.s1_spread(space, mean, std, images, samples, latents)
    assert [b["directions"] for b in bands] == [[0, 10], [10, 20], [20, 30]]
    assert bands[0]["images"] > 0.9  # 3 wide directions (std ~3) among its 10
    assert bands[1]["images"] < 0.07 and bands[2]["images"] < 0.07  # the other 27 are thin
    for band in bands:
        assert band["latents"] == pytest.approx(band["images"], rel=1e-6)
        assert 0.9 < band["samples"] < 1.1


def test_quick_evaluation_of_a_model_and_its_baseline(tmp_path, capsys):
    grouped = write_checkpoint(tmp_path / "grouped", (10, 40), "0.6,0.8", seed=0)
    baseline = write_checkpoint(tmp_path / "baseline", (), "-", seed=1)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", grouped, "--baseline", baseline, "--quick", "--out", str(tmp_path / "out")]
    )
    assert args.handler(args) == 0

    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert set(report["models"]) == {"grouped", "baseline"}
    leak = report["leakage"]
    assert leak["grouped"] == {"S2": {"S1": 0.0}, "S3": {"S1": 0.0, "S2": 0.0}}  # hidden groups: exactly 0
    assert min(leak["baseline"]["S3"].values()) > 1e-3  # the same probe moves the scalar model's coarse part
    assert report["latent_statistics"]["grouped"]["count"] == cli.QUICK.latents
    assert report["s1_numbers"] == 30  # 10 coefficients × 3 channels, for both models
    for name in ("grouped", "baseline"):
        assert report["sample_latent_statistics"][name]["count"] == cli.QUICK.samples
        assert [b["directions"] for b in report["s1_spread"][name]] == [[0, 10], [10, 20], [20, 30]]
    assert set(report["disentanglement"]) == {"grouped", "baseline", "dct"}
    assert report["keep_first"]["dct"]["256"] > 100  # every coefficient kept: exact up to float32
    assert {r["generate"] for r in report["table1"]["rows"] if r["model"] == "grouped"} == {
        "0.6,0.8",
        "0.333333,0.666667",
    }
    text = (tmp_path / "out" / "evaluation.md").read_text()
    assert "| S3 | S2 | 0% |" in text and "## Table 1" in text and "The model's own samples" in text
    assert text in capsys.readouterr().out


def test_refuses_a_baseline_of_another_shape(tmp_path, capsys):
    grouped = write_checkpoint(tmp_path / "grouped", (10, 40), "0.6,0.8", seed=0)
    torch.manual_seed(0)
    other = tmp_path / "other"
    space = grouplat.LatentSpace((3, 8, 8), "dct", ())
    network = build_network(
        NETWORK | dict(resolution=[8, 8], levels=1, channel_mult=[1], attn_resolutions=[])
    )
    data = {"spec": "shapes:8", "seed": 0}
    metadata = {
        "network": network.config,
        "space": space.describe(),
        "schedule": "-",
        "hide": True,
        "data": data,
    }
    ones = np.ones(space.latent_shape, np.float32)
    save_checkpoint(other, network, network, metadata, 0 * ones, ones)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(
        ["evaluate", grouped, "--baseline", str(other), "--quick", "--out", str(tmp_path)]
    )
    assert args.handler(args) == 2
    assert "differs from the model's" in capsys.readouterr().err
