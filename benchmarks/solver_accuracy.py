"""One-way decode accuracy vs NFE for every solver and spacing (docs/design.md §1: report one-way, not
round-trip, accuracy). Two flows at 3×32×32 with the paper's groups and generation schedule:

- `gaussian`: the exact oracle with an image-like spectrum (coefficient std ∝ 1/frequency, pixel
  variance 0.25): the exact answer is known;
- `perturbed`: the same oracle plus a smooth nonlinear residual in pixel space, so no solver is
  exact; the reference is GEI-2m with 2000 steps.

    python benchmarks/solver_accuracy.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import grouplat
from grouplat.basis import dct_order
from grouplat.tools.evaluation.metrics import psnr

NFES = (10, 20, 40, 80, 160)
METHODS = [  # (solver, spacing)
    ("euler", "uniform"),
    ("heun", "uniform"),
    ("heun", "tau"),
    ("gei1", "tau"),
    ("gei2m", "uniform"),
    ("gei2m", "tau"),
]


def image_like_oracle(space: grouplat.LatentSpace, seed: int = 0) -> grouplat.GaussianOracle:
    ky, kx = np.divmod(dct_order(space.height, space.width), space.width)
    frequency = np.hypot(ky / space.height, kx / space.width)
    std = 1.0 / (frequency + 1.0 / space.height)
    std *= np.sqrt(0.25 * space.size / np.sum(std**2))  # pixel variance 0.25, like images in [-1, 1]
    rng = np.random.default_rng(seed)
    std = std[None] * rng.uniform(0.8, 1.2, space.latent_shape)
    mean = np.zeros(space.latent_shape)
    mean[:, 0] = rng.uniform(-0.3, 0.3, space.channels) * np.sqrt(space.size)  # channel means
    return grouplat.GaussianOracle(space, mean, std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    space = grouplat.LatentSpace((3, 32, 32), "dct", grouplat.PAPER_BOUNDARIES)
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_GENERATE)
    oracle = image_like_oracle(space)
    z = np.random.default_rng(1).standard_normal((4, *space.latent_shape)).astype(np.float32)

    def perturbed(x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        return oracle(x_t, levels) + 0.2 * np.tanh(2 * x_t[:, ::-1] + levels[:, :1, None, None])

    flows: dict[str, tuple[grouplat.solvers.Velocity, np.ndarray]] = {
        "gaussian": (oracle, oracle.decode(z)),
        "perturbed": (
            perturbed,
            grouplat.decode(perturbed, z, space, schedule, 2000, "gei2m", std=oracle.std, mean=oracle.mean),
        ),
    }
    print(f"std range {oracle.std.min():.3f}..{oracle.std.max():.1f}; one-way decode PSNR (dB) vs NFE")
    table: dict[str, dict[str, list[float]]] = {}
    for flow, (velocity, reference) in flows.items():
        print(f"\n{flow:10s} " + " ".join(f"{n:>7d}" for n in NFES))
        for solver, spacing in METHODS:
            row = []
            for nfe in NFES:
                images = grouplat.decode(
                    velocity,
                    z,
                    space,
                    schedule,
                    nfe // grouplat.solvers.NFE_PER_STEP[solver],
                    solver,
                    spacing,
                    std=oracle.std,
                    mean=oracle.mean,
                )
                row.append(round(psnr(images, reference), 1))
            table.setdefault(flow, {})[f"{solver}/{spacing}"] = row
            print(f"{solver + '/' + spacing:14s}" + " ".join(f"{v:7.1f}" for v in row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"nfe": NFES, "psnr_db": table}, f, indent=1)


if __name__ == "__main__":
    main()
