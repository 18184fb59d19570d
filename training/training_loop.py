"""The training loop: Adam, linear warm-up and anneal, EMA, gradient clipping, DDP, checkpoints.

Every random draw is a function of (seed, step[, rank]): the batch's data indices, t and z̄ for the
*global* batch (each rank takes its slice), and the dropout masks. So a fixed seed gives identical
runs on CPU, a resumed run continues exactly, and N ranks compute the same step as one process.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from grouplat.images import to_uint8
from grouplat.schedule import PAPER_GENERATE, PAPER_TRAIN, Schedule
from grouplat.solvers import decode
from grouplat.space import LatentSpace, quadrant_groups
from grouplat.training import misc
from grouplat.training.checkpoint import (
    MODEL,
    load_training_state,
    read_metadata,
    read_tensors,
    resolve_checkpoint,
    save_checkpoint,
)
from grouplat.training.dataset import Dataset, data_statistics, open_dataset
from grouplat.training.loss import TIMES, GroupedFlowLoss, draw_times
from grouplat.training.networks import build_network, numpy_velocity

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint (metadata `training`)."""

    # fmt: off
    data:              str = "shapes:32"     # shapes[:RES] | gmm2d | folder:PATH | zip:PATH
    resolution:        int | None = None     # image size for folder / zip data (default: native)
    xflip:             bool = False          # horizontal flips as extra data
    network:           dict[str, Any] = dataclasses.field(default_factory=dict)  # build_network overrides
    basis:             str = "dct"           # dct | pixel
    groups:            str = "30,100,500"    # boundaries | "-" (one group) | quadrants | elements
    schedule:          str | None = None     # training cuts; default PAPER_TRAIN for k=4, else even
    hide:              bool = True           # hidden groups (docs/design.md §1.4); False: paper-exact
    weighting:         str = "paper"         # paper (α'², Eq. 7) | uniform (1 on the active group) | group
    times:             str = "schedule"      # schedule (t ~ U(0, 1)) | phase (a group, then t inside it)
    phase_shares:      str | None = None     # times=phase: how often each group (S1 first) is drawn
    steps:             int = 10000           # optimizer steps in total
    batch:             int = 64              # global batch (all ranks together)
    batch_gpu:         int | None = None     # per-rank micro-batch (gradient accumulation); None = all
    lr:                float = 2e-4          # peak learning rate (Adam)
    warmup:            int = 500             # linear warm-up steps
    anneal:            bool = True           # linear decay to 0 at `steps` after the warm-up
    ema_halflife_kimg: float = 500.0         # EMA half-life in thousands of images (EDM)
    ema_rampup:        float | None = 0.05   # half-life ≤ this × images seen (EDM); None = off
    grad_clip:         float = 0.0           # max global gradient norm; 0 = off (as EDM)
    seed:              int = 0               # all randomness derives from it
    precision:         str = "fp32"          # fp32 | bf16 | fp16 (autocast; GPU only)
    compile:           bool = False          # torch.compile the network
    device:            str = "auto"          # auto | cpu | cuda
    threads:           int | None = None     # CPU intra-op threads (torch.set_num_threads); None = default
    out:               str = "runs/train"    # run directory (checkpoints, log.jsonl, samples/)
    log_every:         int = 50              # steps between log lines
    checkpoint_every:  int = 1000            # steps between checkpoints (the last step always saves)
    keep:              int = 3               # checkpoints kept; 0 = all
    sample_every:      int = 1000            # steps between sample grids; 0 = only at the end
    sample_count:      int = 36              # images per grid (points: 1024)
    sample_steps:      int = 40              # ODE steps for the grids (Heun, tau spacing)
    sample_schedule:   str | None = None     # generation cuts; default PAPER_GENERATE for PAPER_TRAIN
    stats_items:       int = 4096            # items for the per-coefficient data mean / std
    workers:           int = 4               # image-decoding threads (folder / zip)
    progress:          bool = True           # progress bar on rank 0
    # fmt: on

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def parse_groups(spec: str, shape: tuple[int, int, int]) -> list[int] | list[list[int]]:
    """`30,100,500` | `-` (one group) | `quadrants` (pixel basis, Fig. 2b) | `elements` (one each)."""
    spec = str(spec).strip()
    size = shape[1] * shape[2]
    if spec == "quadrants":
        return quadrant_groups(shape[1], shape[2])
    if spec == "elements":
        return [[i] for i in range(size)]
    if spec in ("", "-"):
        return []
    try:
        return [int(b) for b in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"bad --groups {spec!r}: expected boundaries like 30,100,500, '-', 'quadrants' or 'elements'"
        ) from None


def setup(
    cfg: TrainConfig, dataset: Dataset | None = None
) -> tuple[Dataset, LatentSpace, Schedule, dict[str, Any]]:
    """Data set (`cfg.data` unless given), latent space, training schedule and network config."""
    if dataset is None:
        dataset = open_dataset(cfg.data, cfg.resolution, cfg.xflip, cfg.workers)
    space = LatentSpace(dataset.shape, cfg.basis, parse_groups(cfg.groups, dataset.shape))
    schedule = Schedule.parse(cfg.schedule or default_cuts(space.k), space.k)
    arch = "mlp" if dataset.shape[1] == 1 else "unet"
    network = {
        "arch": arch,
        "channels": space.channels,
        "resolution": [space.height, space.width],
        "levels": space.k,
        **cfg.network,
    }
    return dataset, space, schedule, network


def parse_shares(text: str | None, k: int) -> np.ndarray | None:
    """`0.5,0.2,0.15,0.15` → how often `times=phase` draws each group (S1 first); None: equal."""
    if not text:
        return None
    try:
        shares = np.array([float(v) for v in str(text).split(",")])
    except ValueError:
        raise ValueError(f"bad phase shares {text!r}: expected {k} comma-separated numbers") from None
    if len(shares) != k or (shares < 0).any() or shares.sum() <= 0 or not np.isfinite(shares).all():
        raise ValueError(f"phase shares need {k} non-negative numbers with a positive sum, got {text!r}")
    return shares


def default_cuts(k: int) -> str:
    return PAPER_TRAIN if k == 4 else ",".join(f"{j / k:g}" for j in range(1, k)) or "-"


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup` steps, then (with `anneal`) linear decay to 0 at `steps`."""
    factor = min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.anneal:
        factor = min(factor, (cfg.steps - step) / max(cfg.steps - cfg.warmup, 1))
    return cfg.lr * factor


def _seed(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixes them)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class Sampler:
    """Global sample position → data index: a fresh seeded permutation of the data every epoch."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed = length, seed
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.length)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            if epoch not in self._cache:
                self._cache = {epoch: np.random.default_rng([self.seed, int(epoch)]).permutation(self.length)}
            out[epochs == epoch] = self._cache[epoch][offsets[epochs == epoch]]
        return out


def train(cfg: TrainConfig, resume: str | Path | None = None, dataset: Dataset | None = None) -> Path:
    """Train (or resume) a run; return the last checkpoint's directory. `dataset` replaces
    `cfg.data` (e.g. a pre-rendered pool when the renderer cannot keep up with a GPU)."""
    device = misc.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world = misc.rank(), misc.world_size()
    _check(cfg, device, world)
    out = Path(cfg.out)
    dataset, space, schedule, net_config = setup(cfg, dataset)

    step, root = 0, None
    if resume is not None:
        root = resolve_checkpoint(resume)
        stored = read_tensors(root / MODEL)
        mean, std = stored["data_mean"].numpy(), stored["data_std"].numpy()
    else:
        misc.info0("Data statistics over %d items of %s …", min(cfg.stats_items, len(dataset)), cfg.data)
        mean, std = data_statistics(dataset, space.to_latent, cfg.stats_items, cfg.seed)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    net = build_network(net_config, space, mean, std).to(device).train()
    summary = (
        misc.print_module_summary(
            net, [torch.zeros(1, *space.shape, device=device), torch.zeros(1, space.k, device=device)]
        )
        if rank == 0
        else {}
    )
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    if root is not None:
        misc.info0("Resuming from %s", root)
        trainer = load_training_state(root, net, ema, optimizer)
        step = int(trainer["step"])
        if trainer.get("scaler"):
            scaler.load_state_dict(trainer["scaler"])

    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    loss_fn = GroupedFlowLoss(space, schedule, cfg.hide, cfg.weighting, mean, std, device)
    shares = parse_shares(cfg.phase_shares, space.k)
    sampler = Sampler(len(dataset), cfg.seed)
    per_rank = cfg.batch // world
    micro = cfg.batch_gpu or per_rank
    autocast = (
        torch.autocast(device.type, dtype=PRECISIONS[cfg.precision])
        if PRECISIONS[cfg.precision]
        else nullcontext()
    )
    metadata = {
        "network": net_config,
        "space": space.describe(),
        "schedule": schedule.describe(),
        "hide": cfg.hide,
        "weighting": cfg.weighting,
        "times": cfg.times,
        "data": dataset.describe(),
        "training": dataclasses.asdict(cfg),
    }

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _log(
            out,
            {
                "event": "resume" if resume else "start",
                "step": step,
                "world": world,
                "device": str(device),
                **summary,
                "config": dataclasses.asdict(cfg),
            },
        )
    tally = np.zeros((space.k, 5))  # per active group: count, loss, mse, gauss count, gauss mse
    window = {"grad": 0.0, "start": time.time(), "step": step}
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and rank == 0), unit="step")
    starts = range(rank * per_rank, (rank + 1) * per_rank, micro)  # this rank's micro-batches

    def load(step: int) -> list[np.ndarray]:
        indices = sampler(step * cfg.batch + np.arange(cfg.batch))
        return [dataset.images(indices[start : start + micro]) for start in starts]

    prefetch = ThreadPoolExecutor(1)  # the next step's data loads while this one computes
    pending = prefetch.submit(load, step)
    last = step
    while step < cfg.steps:
        batches = pending.result()
        if step + 1 < cfg.steps:
            pending = prefetch.submit(load, step + 1)
        t = draw_times(schedule, cfg.times, np.random.default_rng([cfg.seed, step, 1]), cfg.batch, shares)
        generator = torch.Generator(device=device).manual_seed(_seed(cfg.seed, step, 2))
        noise = torch.randn((cfg.batch, *space.latent_shape), generator=generator, device=device)
        torch.manual_seed(_seed(cfg.seed, step, 3, rank))  # dropout masks
        optimizer.zero_grad(set_to_none=True)
        for start, images in zip(starts, batches):
            part = slice(start, start + micro)
            sync = world == 1 or start + micro >= (rank + 1) * per_rank
            with nullcontext() if sync else model.no_sync(), autocast:  # type: ignore[operator]
                loss, stats = loss_fn(
                    model, torch.as_tensor(images, device=device), t[part], noise[part], True
                )
            scaler.scale(loss.sum() / per_rank).backward()
            _tally(tally, stats)
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scaler.unscale_(optimizer)
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or math.inf)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        _update_ema(ema, net, cfg, step)
        window["grad"] += float(grad_norm)
        bar.update(1)

        final = step == cfg.steps
        if step % cfg.log_every == 0 or final:
            line = _summarize(tally, window, step, cfg, lr, device)
            tally[:] = 0
            window = {"grad": 0.0, "start": time.time(), "step": step}
            bar.set_postfix(loss=f"{line['loss']:.4f}", img_s=f"{line['img_per_sec']:.1f}")
            if rank == 0:
                _log(out, line)
        if step % cfg.checkpoint_every == 0 or final:
            if rank == 0:
                trainer = {
                    "step": step,
                    "images": step * cfg.batch,
                    "scaler": scaler.state_dict(),
                    "note": "data, t, z̄ and dropout are reseeded from (seed, step[, rank]) every step",
                }
                meta = {**metadata, "step": step, "images": step * cfg.batch}
                save_checkpoint(out / f"checkpoint-{step:07d}", net, ema, meta, mean, std, optimizer, trainer)
                _prune(out, cfg.keep)
            last = step
            if world > 1:
                dist.barrier()
        if rank == 0 and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
            save_samples(ema, space, schedule, std, cfg, out / "samples" / f"step-{step:07d}.png")
    prefetch.shutdown()
    bar.close()
    return out / f"checkpoint-{last:07d}"


def _check(cfg: TrainConfig, device: torch.device, world: int) -> None:
    if cfg.times not in TIMES:
        raise ValueError(f"unknown time sampling {cfg.times!r}: expected one of {', '.join(TIMES)}")
    if cfg.phase_shares and cfg.times != "phase":
        raise ValueError("--phase-shares needs --times phase")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {cfg.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if cfg.precision != "fp32" and device.type != "cuda":
        raise ValueError(f"--precision {cfg.precision} needs a GPU; use fp32 on CPU")
    if cfg.batch % world:
        raise ValueError(f"--batch {cfg.batch} must divide by the number of processes ({world})")
    if cfg.batch_gpu and (cfg.batch // world) % cfg.batch_gpu:
        raise ValueError(
            f"the per-process batch {cfg.batch // world} must divide by --batch-gpu {cfg.batch_gpu}"
        )
    if cfg.steps < 1 or cfg.log_every < 1 or cfg.checkpoint_every < 1:
        raise ValueError("--steps, --log-every and --checkpoint-every must be positive")


def _update_ema(ema: torch.nn.Module, net: torch.nn.Module, cfg: TrainConfig, step: int) -> None:
    """EDM's EMA: β = 0.5^(batch / half-life in images), the half-life ramped up early in training."""
    halflife = cfg.ema_halflife_kimg * 1000
    if cfg.ema_rampup is not None:
        halflife = min(halflife, step * cfg.batch * cfg.ema_rampup)
    beta = 0.5 ** (cfg.batch / max(halflife, 1e-8))
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), net.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(ema.buffers(), net.buffers()):
            b_ema.copy_(b)


def _tally(tally: np.ndarray, stats: dict[str, np.ndarray] | None) -> None:
    """Add one micro-batch's per-sample diagnostics to the per-group sums."""
    assert stats is not None
    ones = np.ones(len(stats["group"]))
    np.add.at(tally[:, :3], stats["group"], np.stack([ones, stats["loss"], stats["mse"]], 1))
    if "gauss" in stats:
        n = len(stats["gauss"])
        np.add.at(tally[:, 3:], stats["group"][:n], np.stack([ones[:n], stats["gauss"]], 1))


def _summarize(
    tally: np.ndarray, window: dict[str, Any], step: int, cfg: TrainConfig, lr: float, device: torch.device
) -> dict[str, Any]:
    """One JSONL line: losses over the window (all ranks), per group too, and throughput.

    Per group Sj: `loss_Sj` (weighted, as optimized), `mse_Sj` (the group's plain squared error),
    `gauss_Sj` (the per-coefficient Gaussian predictor's, on a subset) and their ratio `vs_gauss_Sj`.
    """
    if misc.world_size() > 1:
        total = torch.as_tensor(tally, dtype=torch.float64, device=device)
        dist.all_reduce(total)
        tally = total.cpu().numpy()
    steps = max(step - window["step"], 1)
    elapsed = max(time.time() - window["start"], 1e-9)
    count = tally[:, 0]
    line: dict[str, Any] = {
        "step": step,
        "images": step * cfg.batch,
        "loss": float(tally[:, 1].sum() / max(count.sum(), 1)),
        "lr": lr,
        "grad_norm": window["grad"] / steps,
        "img_per_sec": steps * cfg.batch / elapsed,
        "sec_per_step": elapsed / steps,
    }
    for j, (n, loss, mse, n_gauss, gauss) in enumerate(tally, start=1):
        if n:
            line.update({f"loss_S{j}": loss / n, f"mse_S{j}": mse / n})
        if n and n_gauss:
            line.update(
                {f"gauss_S{j}": gauss / n_gauss, f"vs_gauss_S{j}": (mse / n) / max(gauss / n_gauss, 1e-12)}
            )
    return line


def _log(out: Path, line: dict[str, Any]) -> None:
    with open(out / "log.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


def _prune(out: Path, keep: int) -> None:
    if keep > 0:
        for old in sorted(out.glob("checkpoint-???????"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def save_samples(
    net: torch.nn.Module,
    space: LatentSpace,
    schedule: Schedule,
    std: np.ndarray,
    cfg: TrainConfig,
    path: Path,
) -> np.ndarray:
    """Decode fixed latents (seed 0) with the core's solver; write an image grid or a scatter plot."""
    from PIL import Image

    generate = cfg.sample_schedule or (PAPER_GENERATE if schedule.describe() == PAPER_TRAIN else None)
    gen_schedule = Schedule.parse(generate, space.k) if generate else schedule
    points = space.height == 1
    count = 1024 if points else cfg.sample_count
    latents = np.random.default_rng(0).standard_normal((count, *space.latent_shape)).astype(np.float32)
    images = decode(
        numpy_velocity(net, max_batch=256),
        latents,
        space,
        gen_schedule,
        steps=cfg.sample_steps,
        std=std,
        hide=cfg.hide,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if points:
        canvas = np.full((256, 256), 255, np.uint8)
        xy = np.clip(((images.reshape(count, -1)[:, :2] + 2) / 4 * 255).round().astype(int), 0, 255)
        canvas[255 - xy[:, 1], xy[:, 0]] = 0
        Image.fromarray(canvas).save(path)
        return images
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    c, h, w = space.shape
    grid = np.zeros((rows * cols, c, h, w), np.float32) - 1
    grid[:count] = images
    grid = grid.reshape(rows, cols, c, h, w).transpose(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)
    pixels = to_uint8(grid)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
    return images


def resume_config(path: str | Path, **changes: Any) -> TrainConfig:
    """The TrainConfig stored in a checkpoint, with `changes` applied."""
    stored = read_metadata(resolve_checkpoint(path))["training"]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in stored.items() if k in known}).replace(**changes)
