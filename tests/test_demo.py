"""`grouplat demo --quick` end to end: export, the real embedded server, the client, every figure."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import grouplat
from grouplat.cli import main as grouplat_main
from grouplat.training.checkpoint import save_checkpoint
from grouplat.training.networks import build_network
from grouplat.training.training_loop import parse_groups

FIGURES = [
    "fig1_baseline_traversal.png",
    "fig2a_gmm.png",
    "fig2b_quadrants.png",
    "fig3_sequential.png",
    "fig4_interpolation.png",
    "fig5_reconstruction.png",
    "fig6_mixing.png",
    "fig7_traversal.png",
    "fig8_real_edit.png",
    "fig9_variations.png",
]


def tiny_checkpoint(directory, space, schedule, network):
    """Random weights: the demo's plumbing, not its pictures, is under test here."""
    torch.manual_seed(0)
    net = build_network(network)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    metadata = {"network": network, "space": space.describe(), "schedule": schedule, "hide": True}
    ones = np.ones(space.latent_shape, np.float32)
    save_checkpoint(directory, net, net, metadata, 0 * ones, ones)
    return str(directory)


def unet(levels):
    return dict(arch="unet", channels=3, resolution=[32, 32], levels=levels, model_channels=8,
                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)  # fmt: skip


def test_demo_writes_every_figure(tmp_path):
    grouped = grouplat.LatentSpace((3, 32, 32), "dct", grouplat.PAPER_BOUNDARIES)
    scalar = grouplat.LatentSpace((3, 32, 32), "dct", [])
    points = grouplat.LatentSpace((1, 1, 2), "pixel", [[0], [1]])
    quadrants = grouplat.LatentSpace((3, 32, 32), "pixel", parse_groups("quadrants", (3, 32, 32)))
    mlp = dict(arch="mlp", channels=1, resolution=[1, 2], levels=2, hidden=32, layers=2)
    args = [
        "demo", "--quick", "--out", str(tmp_path / "demo"),
        "--model", tiny_checkpoint(tmp_path / "grouped", grouped, grouplat.PAPER_TRAIN, unet(4)),
        "--baseline", tiny_checkpoint(tmp_path / "scalar", scalar, "-", unet(1)),
        "--gmm", tiny_checkpoint(tmp_path / "gmm", points, "0.5", mlp),
        "--quadrants", tiny_checkpoint(tmp_path / "quadrants", quadrants, "0.25,0.5,0.75", unet(4)),
    ]  # fmt: skip
    assert grouplat_main(args) == 0
    for name in FIGURES:
        image = Image.open(tmp_path / "demo" / name)
        assert image.width > 100 and image.height > 100, name
    # Fig. 7 traverses an element over [-3, 3]: the cells along a row must differ.
    traversal = np.asarray(Image.open(tmp_path / "demo" / "fig7_traversal.png"), np.float32)
    cell = 32 * 4
    first, last = traversal[:cell, :cell], traversal[:cell, -cell:]
    assert np.abs(first - last).mean() > 1.0
