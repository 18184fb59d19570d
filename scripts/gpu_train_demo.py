"""Train the shipped demo models on one GPU within a time budget, and time the ffhq64 recipe.

Made for a single call on a lent H200 (see README, "The demo model"): renders a pool of shapes
with every CPU core (the numpy renderer, not the GPU, would otherwise limit a small net), trains
the shapes32 grouped-latent model and its scalar-schedule baseline with the same net and budget
(the grouped model then gets its S1 head: `grouplat fit-s1`, on the CPU, on the same images),
and the gmm2d model, then measures ffhq64 training img/s (fp32 eager vs bf16 + channels-last +
torch.compile). Results go to OUT; the shipped checkpoints keep only the EMA weights.

    python scripts/gpu_train_demo.py --out OUT [--seconds 180] [--quick] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouplat.images import from_uint8, to_uint8
from grouplat.training.checkpoint import release_checkpoint
from grouplat.training.dataset import Dataset, Shapes
from grouplat.training.s1head import fit_s1_head


class Pool(Dataset):
    """A fixed set of pre-rendered shapes (uint8 in memory), described as the shapes it holds."""

    def __init__(self, resolution: int, count: int, workers: int) -> None:
        chunks = [(resolution, start, min(start + 4096, count)) for start in range(0, count, 4096)]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_render, chunks)
        self.pixels = np.concatenate(parts)
        self.shape = (3, resolution, resolution)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.pixels)

    def images(self, indices: np.ndarray) -> np.ndarray:
        return from_uint8(self.pixels[np.asarray(indices)])

    def describe(self) -> dict[str, Any]:
        return {**Shapes(self.resolution).describe(), "length": len(self), "pool": "pre-rendered, uint8"}


def _render(chunk: tuple[int, int, int]) -> np.ndarray:
    resolution, start, stop = chunk
    images = Shapes(resolution).images(np.arange(start, stop))
    return to_uint8(images)  # [B, H, W, C]


def train_for(
    name: str, overrides: dict[str, Any], pool: Dataset | None, seconds: float, out: Path, quick: bool = False
) -> dict:
    """Calibrate the step time, then train for about `seconds` with the preset's LR schedule (`quick`:
    a few steps and a tiny sample grid, a check of this script)."""
    from grouplat.training.presets import PRESETS
    from grouplat.training.training_loop import TrainConfig, train

    preset = overrides.pop("preset")
    config = {**PRESETS[preset], **overrides}
    if quick:
        config.update(sample_count=4, sample_steps=4)
    probe_steps, min_steps = (10, 20) if quick else (60, 200)
    probe = TrainConfig(
        **{
            **config,
            "steps": probe_steps,
            "warmup": probe_steps // 6,
            "out": str(out / f"{name}-probe"),
            "sample_every": 0,
            "progress": False,
            "checkpoint_every": probe_steps,
        }
    )
    start = time.perf_counter()
    train(probe, dataset=pool)
    lines = [json.loads(x) for x in (out / f"{name}-probe" / "log.jsonl").read_text().splitlines()]
    step_time = min(line["sec_per_step"] for line in lines if "sec_per_step" in line)
    shutil.rmtree(out / f"{name}-probe")
    steps = max(min_steps, int(seconds / step_time))
    cfg = TrainConfig(
        **{
            **config,
            "steps": steps,
            "out": str(out / name),
            "progress": False,
            "checkpoint_every": steps,
            "sample_every": 0,
            "keep": 1,
        }
    )
    begin = time.perf_counter()
    checkpoint = train(cfg, dataset=pool)
    return {
        "name": name,
        "steps": steps,
        "batch": cfg.batch,
        "images": steps * cfg.batch,
        "train_seconds": time.perf_counter() - begin,
        "probe_seconds": begin - start,
        "step_time_probe": step_time,
        "checkpoint": str(checkpoint),
        "config": dataclasses.asdict(cfg),
    }


def ffhq64_speed(batch: int, steps: int) -> dict[str, float]:
    """Training img/s of the ffhq64 net: fp32 eager vs bf16 + channels-last + torch.compile."""
    results = {}
    for name, fast in (("fp32_eager", False), ("bf16_channels_last_compile", True)):
        results[name], results[f"{name}_warmup_s"] = _ffhq64_run(fast, batch, steps)
        torch.cuda.empty_cache()
    return results


def _ffhq64_run(fast: bool, batch: int, steps: int, device_name: str = "cuda") -> tuple[float, float]:
    import grouplat
    from grouplat.training.loss import GroupedFlowLoss
    from grouplat.training.networks import build_network
    from grouplat.training.presets import PRESETS

    device = torch.device(device_name)
    space = grouplat.LatentSpace((3, 64, 64), "dct", grouplat.PAPER_BOUNDARIES)
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN)
    ones = np.ones(space.latent_shape, np.float32)
    torch.manual_seed(0)
    config = {**PRESETS["ffhq64"]["network"], "channels": 3, "resolution": [64, 64], "levels": 4}
    net = build_network(config).to(device).train()
    x = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
    model: Any = net
    if fast:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
        model = torch.compile(net)
    loss_fn = GroupedFlowLoss(space, schedule, True, "paper", 0 * ones, ones, device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    context = torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast)

    def step(i: int) -> None:
        t = np.random.default_rng(i).random(batch)
        noise = torch.randn(batch, *space.latent_shape, device=device)
        optimizer.zero_grad(set_to_none=True)
        with context:
            loss, _ = loss_fn(model, x, t, noise, True)
        loss.sum().div(batch).backward()
        optimizer.step()

    start = time.perf_counter()
    for i in range(3):  # warm-up (and compilation)
        step(i)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return batch * steps / (time.perf_counter() - start), warm


def decode_loop_speed(
    checkpoint: Path, batch: int = 8, steps: int = 20, repeats: int = 5
) -> dict[str, float]:
    """The decode ODE loop (the core's numpy solver) over the network on CUDA: eager forward vs a
    CUDA-graph replay of the forward (static buffers: copy in, replay, copy out)."""
    import grouplat
    from grouplat.training.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, device="cuda")
    net, space = model.network, model.space
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_GENERATE)
    x_in = torch.zeros(batch, *space.shape, device="cuda")
    levels_in = torch.zeros(batch, space.k, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            net(x_in, levels_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = net(x_in, levels_in)

    def graphed(x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        x_in.copy_(torch.from_numpy(x_t))
        levels_in.copy_(torch.from_numpy(levels))
        graph.replay()
        return out.cpu().numpy()

    z = np.random.default_rng(0).standard_normal((batch, *space.latent_shape)).astype(np.float32)
    timings: dict[str, list[float]] = {"eager": [], "cuda_graph": []}
    for _ in range(repeats):
        for name, velocity in (("eager", model.velocity()), ("cuda_graph", graphed)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            grouplat.decode(velocity, z, space, schedule, steps=steps, std=model.data_std, hide=model.hide)
            timings[name].append(time.perf_counter() - start)
    return {f"{k}_ms": 1e3 * float(np.median(v)) for k, v in timings.items()} | {
        "nfe": 2 * steps,
        "batch": batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=180.0, help="training time of each shapes32 model")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a CPU check of this script)")
    parser.add_argument(
        "--work", default="/tmp/gpu_train_demo", help="the runs with their optimizer state (not brought back)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }

    def save_results() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))

    start = time.perf_counter()
    pool = Pool(32, 2048 if args.quick else 1 << 18, os.cpu_count() or 1)
    results["pool_seconds"] = time.perf_counter() - start
    # fp32 with TF32 matmuls: bf16 autocast would also round the loss's DCT transforms.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    gpu = (
        {}
        if args.quick
        else {
            "device": "cuda",
            "precision": "fp32",
            "batch": 256,
            "lr": 1e-3,
            "warmup": 500,
            "ema_halflife_kimg": 200.0,
        }
    )
    if args.quick:
        gpu = {
            "batch": 8,
            "network": {
                "arch": "unet",
                "model_channels": 8,
                "channel_mult": [1, 2],
                "num_blocks": 1,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
        }
    runs = [
        ("shapes32", {"preset": "shapes32", **gpu}),
        ("shapes32-scalar", {"preset": "shapes32-scalar", **gpu}),
    ]
    for name, overrides in runs:
        run = train_for(name, overrides, pool, 1 if args.quick else args.seconds, work, args.quick)
        results[name] = run
        if name == "shapes32":  # the shipped grouped model has an S1 head (docs/design.md §1.4)
            release_checkpoint(run["checkpoint"], work / "shapes32-image-network")
            steps, images = (20, 256) if args.quick else (12_000, len(pool))  # the pool: what it saw
            fit = fit_s1_head(work / "shapes32-image-network", out / name, images=images, steps=steps)
            run["s1_head_fit"] = fit["s1_head_fit"]
        else:
            release_checkpoint(run["checkpoint"], out / name)
        save_results()
    gmm = {"preset": "gmm2d"} if args.quick else {"preset": "gmm2d", "device": "cuda"}
    results["gmm2d"] = train_for("gmm2d", gmm, None, 1 if args.quick else 25, work, args.quick)
    release_checkpoint(results["gmm2d"]["checkpoint"], out / "gmm2d")
    save_results()
    if torch.cuda.is_available():
        for key, measure in (
            ("decode_loop", lambda: decode_loop_speed(out / "shapes32")),
            ("ffhq64_img_per_s", lambda: ffhq64_speed(batch=256, steps=20)),
        ):
            try:  # a failed measurement must not lose the trained models or the other figures
                results[key] = measure()
            except Exception as error:
                results[key] = {"error": repr(error)}
            save_results()
    with tarfile.open(out / "logs.tar.gz", "w:gz") as archive:  # logs and sample grids, no weights
        for path in sorted(work.glob("*/log.jsonl")) + sorted(work.glob("*/samples/*.png")):
            archive.add(path, arcname=str(path.relative_to(work)))
    results["total_seconds"] = time.perf_counter() - start
    save_results()


if __name__ == "__main__":
    main()
