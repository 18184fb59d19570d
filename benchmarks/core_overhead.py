"""Non-network work of one Heun step (basis transforms, masking, update) vs one forward of a
~10M-parameter U-Net, 3×64×64 at batch 8 (issue 2's budget: ≤ 5%). Medians of interleaved runs.

    python benchmarks/core_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import grouplat
from grouplat.serving.engines import OnnxVelocity

NETWORK = dict(arch="unet", channels=3, resolution=[64, 64], levels=4, model_channels=64,
               channel_mult=[1, 2, 2, 2], num_blocks=2, attn_resolutions=[16], dropout=0.0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from grouplat.export.engine import export_onnx
    from grouplat.modelinfo import ModelInfo
    from grouplat.training.networks import build_network

    space = grouplat.LatentSpace((3, 64, 64), "dct", grouplat.PAPER_BOUNDARIES)
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_GENERATE)
    network = build_network(NETWORK).eval()
    params = sum(p.numel() for p in network.parameters())
    ones = np.ones(space.latent_shape, np.float32)
    info = ModelInfo("benchmark", space, schedule, True, 0 * ones, ones)
    onnx_engine = OnnxVelocity(export_onnx(network, info), threads=os.cpu_count() or 1)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32)
    levels = schedule.conditioning(np.full(8, 0.5))
    latents = space.to_latent(x)
    steps = 40
    grid = grouplat.time_grid(schedule, steps)[::-1]

    def identity(x_t: np.ndarray, _: np.ndarray) -> np.ndarray:
        return x_t

    def torch_forward() -> None:
        with torch.no_grad():
            network(torch.from_numpy(x), torch.from_numpy(levels))

    timings: dict[str, list[float]] = {"heun step, no network": [], "torch forward": [], "onnx forward": []}
    for _ in range(args.repeats):  # interleaved
        start = time.perf_counter()
        grouplat.solve(identity, latents, space, schedule, grid, "heun")
        timings["heun step, no network"].append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        torch_forward()
        timings["torch forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        onnx_engine(x, levels)
        timings["onnx forward"].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in timings.items()}
    threads, load = torch.get_num_threads(), os.getloadavg()[0]
    print(
        f"U-Net {params / 1e6:.2f} M parameters, batch 8 of 3×64×64, torch threads {threads}, load {load:.2f}"
    )
    for name, seconds in median.items():
        print(f"  {name:24s} {seconds * 1e3:8.2f} ms (median of {args.repeats})")
    for engine in ("torch forward", "onnx forward"):
        share = median["heun step, no network"] / median[engine]
        print(f"  non-network work of one Heun step / one {engine}: {100 * share:.2f}% (budget 5%)")


if __name__ == "__main__":
    main()
