"""S1's statistics through an S1 head alone, in a minute: how near N(0, I) held-out latents come.

For each headed checkpoint, S1 of held-out images (the checkpoint's shapes with the evaluation's
fresh seed) is encoded through the head alone with RK4 on a log-σ grid (no solver error worth the
name: S1's statistics depend on the head only, docs/recipe.md) and summarised as `grouplat evaluate`
does: |mean|, std (range), max |corr|, and the latents' std along S1's eigen-directions (thinnest
tenth .. widest third), a robust scale and the kurtosis; `--draws N` repeats that on N − 1 more
held-out draws (one draw of 1000 moves the std by ±0.02). Also the fit's loss on those images, and
how near the head's samples come to the data: the median distance (whitened S1) from a sample, and
from a held-out image, to the nearest of 20,000 training items.

    python benchmarks/s1_head.py models/shapes32 [more checkpoints] [--count 1000] [--steps 200] [--draws 4]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from grouplat.tools.evaluation.metrics import max_abs_correlation
from grouplat.training.checkpoint import load_checkpoint
from grouplat.training.dataset import held_out_shapes
from grouplat.training.networks import S1Head
from grouplat.training.s1head import SIGMA_RANGE, s1_loss, s1_training_codes


def alphas(steps: int) -> np.ndarray:
    """α from 1 to 0: `steps` steps, σ = (1 − α)/α log-spaced over [1e-4, 1e4] between the two ends."""
    return np.concatenate([[1.0], 1 / (1 + np.geomspace(1e-4, 1e4, steps - 1)), [0.0]])


@torch.no_grad()
def integrate(head: S1Head, s1: torch.Tensor, grid: np.ndarray) -> torch.Tensor:
    """RK4 of dS1/dα = v along `grid` (decreasing α encodes, increasing decodes)."""

    def velocity(x: torch.Tensor, alpha: float) -> torch.Tensor:
        return head.s1_velocity(x, torch.full((len(x), 1), alpha))

    for a0, a1 in zip(grid[:-1], grid[1:]):
        h = float(a1 - a0)
        k1 = velocity(s1, a0)
        k2 = velocity(s1 + h / 2 * k1, a0 + h / 2)
        k3 = velocity(s1 + h / 2 * k2, a0 + h / 2)
        k4 = velocity(s1 + h * k3, a1)
        s1 = s1 + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return s1


def held_out_codes(checkpoint: Any, count: int = 1000, draw: int = 0) -> torch.Tensor:
    """S1 [count, C·|S1|] of held-out images: draw 0 the evaluation's, draw d the held-out shapes of
    training seed + d (as fresh; the criterion's spread over draws, docs/recipe.md)."""
    head = checkpoint.network
    if not isinstance(head, S1Head):
        raise ValueError(f"{str(checkpoint.path)!r} has no S1 head (grouplat fit-s1 gives it one)")
    seed = int(checkpoint.metadata["data"].get("seed", 0)) + draw
    images = held_out_shapes(checkpoint.space.height, seed).images(np.arange(count)).astype(np.float32)
    return head.s1_codes(torch.as_tensor(checkpoint.space.to_latent(images))).float()


def encoded_s1_statistics(head: S1Head, codes: torch.Tensor, steps: int = 200) -> dict:
    """`codes` encoded through the head alone (RK4), summarised: |mean|, std (range), a robust scale
    (1.4826 × median absolute deviation), kurtosis (3 for a Gaussian), max |corr|, and the std along
    S1's eigen-directions (thinnest tenth .. widest third)."""
    z = integrate(head, codes, alphas(steps)).double().numpy()
    centred = z - z.mean(axis=0)
    std = z.std(axis=0)
    along = (centred @ head.s1_rotation.double().numpy()).std(axis=0)  # thinnest first
    bands = np.array_split(np.arange(len(along)), [len(along) // 9, len(along) // 3, 2 * len(along) // 3])
    return {
        "held_out": len(codes),
        "abs_mean": float(np.abs(z.mean(axis=0)).mean()),
        "std_mean": float(std.mean()),
        "std_min": float(std.min()),
        "std_max": float(std.max()),
        "robust_std": float((1.4826 * np.median(np.abs(z - np.median(z, axis=0)), axis=0)).mean()),
        "kurtosis": float(np.median((centred**4).mean(axis=0) / std**4)),
        "max_abs_corr": max_abs_correlation(z),
        "std_by_eigen_band": [float(along[band].mean()) for band in bands],
    }


def measure(
    checkpoint: Any, count: int = 1000, steps: int = 200, samples: int = 1000, items: int = 20_000
) -> dict:
    """The figures above for a loaded checkpoint (`load_checkpoint`) with an S1 head."""
    codes = held_out_codes(checkpoint, count)
    head = checkpoint.network
    stats = encoded_s1_statistics(head, codes, steps)
    grid = alphas(steps)
    generator = torch.Generator().manual_seed(123)
    noise = torch.randn(codes.shape, generator=generator)
    sigma = torch.exp(torch.empty(len(codes), 1).uniform_(*np.log(SIGMA_RANGE), generator=generator))
    small = sigma[:, 0] < 0.05
    with torch.no_grad():
        loss = float(s1_loss(head, codes, noise, 1 / (1 + sigma)))
        loss_small = float(s1_loss(head, codes[small], noise[small], 1 / (1 + sigma[small])))

    drawn = torch.randn(samples, codes.shape[1], generator=torch.Generator().manual_seed(7))
    generated = integrate(head, drawn, grid[::-1].copy())
    whiten = head.s1_rotation / head.s1_variance.sqrt()
    train = (
        torch.as_tensor(s1_training_codes(checkpoint, head, items, 0), dtype=torch.float32) - head.s1_mean
    ) @ whiten

    def nearest(s1: torch.Tensor) -> float:
        return float(torch.cdist((s1 - head.s1_mean) @ whiten, train).min(dim=1).values.median())

    return {
        "checkpoint": str(checkpoint.path),
        "head": checkpoint.config["s1_head"],
        **stats,
        "loss": loss,
        "loss_small_sigma": loss_small,
        "nearest_item_samples": nearest(generated),
        "nearest_item_images": nearest(codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--count", type=int, default=1000, help="held-out images (default 1000)")
    parser.add_argument("--steps", type=int, default=200, help="RK4 steps each way (default 200)")
    parser.add_argument("--samples", type=int, default=1000, help="samples for the nearest-item distance")
    parser.add_argument(
        "--draws", type=int, default=1, help="held-out draws of --count images each (default 1)"
    )
    parser.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args()
    results = []
    for path in args.checkpoints:
        started = time.perf_counter()
        checkpoint = load_checkpoint(path)
        r = measure(checkpoint, args.count, args.steps, args.samples)
        r["draws"] = [
            encoded_s1_statistics(
                checkpoint.network, held_out_codes(checkpoint, args.count, draw), args.steps
            )
            for draw in range(1, args.draws)
        ]
        results.append(r)
        bands = " / ".join(f"{s:.2f}" for s in r["std_by_eigen_band"])
        print(
            f"{path} {r['head']}: S1 of {r['held_out']} held-out images |mean| {r['abs_mean']:.3f}, "
            f"std {r['std_mean']:.3f} ({r['std_min']:.2f}–{r['std_max']:.2f}), max |corr| "
            f"{r['max_abs_corr']:.3f}; std by eigen-band, thinnest first: {bands}; loss {r['loss']:.3f} "
            f"(σ < 0.05: {r['loss_small_sigma']:.3f}); nearest training item: samples "
            f"{r['nearest_item_samples']:.2f}, images {r['nearest_item_images']:.2f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        for draw, d in enumerate([r, *r["draws"]]):
            print(
                f"  draw {draw}: |mean| {d['abs_mean']:.3f}, std {d['std_mean']:.3f} ({d['std_min']:.2f}–"
                f"{d['std_max']:.2f}), robust scale {d['robust_std']:.3f}, kurtosis {d['kurtosis']:.2f}, "
                f"max |corr| {d['max_abs_corr']:.3f}",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
