"""`grouplat fit-s1 CHECKPOINT --out DIR`: give a hidden-groups model an S1 head, fitted on S1 alone.

S1 holds identity, pose and class, and S1's statistics on held-out images are how the method is
judged (Remark 2.1: N(0, I) latents). Under hidden groups S1's velocity depends on S1's few
coefficients and α_1 only (`networks.S1Head`), yet the image network learns it from the small
share of training times that fall in S1's phase. This command fits a small MLP to exactly that
problem — S1's coefficients of the checkpoint's own training data, many noise draws per image —
and writes a new checkpoint: the image network unchanged, S1 taken over by the head.

Noise levels are drawn log-uniformly in σ = (1 − α)/α over [0.002, 80] (EDM's range), not
uniformly in α: S1's coefficients span eigen-stds 0.02–5.6 on shapes32, and the thin directions
are only learned at small σ; three quarters of them below σ = 1, where how thin the head's S1 is
across the data's shape — S1's spread on held-out images — is made (docs/recipe.md, "An S1 head"
and "Where S1's scale is made", has the measurements behind every default here).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouplat.oracle import gaussian_residual_scale
from grouplat.training.checkpoint import load_checkpoint, release_checkpoint, save_checkpoint
from grouplat.training.dataset import open_dataset
from grouplat.training.networks import MLP_BLOCKS, S1Head

log = logging.getLogger(__name__)
SIGMA_RANGE = (0.002, 80.0)  # noise levels σ = (1 − α)/α of the fit, log-uniform
FOCUS = (0.75, 1.0)  # that share of each batch's levels log-uniform on [0.002, 1.0] instead (`fit`)


def s1_training_codes(checkpoint: Any, head: S1Head, images: int, seed: int, batch: int = 1024) -> np.ndarray:
    """S1's coefficients [N, C·|S1|] of `images` seeded items of the checkpoint's training data."""
    described = checkpoint.metadata.get("data") or {}
    if "spec" not in described:
        raise ValueError(f"{str(checkpoint.path)!r} does not record its training data: nothing to fit S1 on")
    data = open_dataset(**described)
    count = min(images, len(data))
    indices = np.sort(np.random.default_rng(seed).choice(len(data), count, replace=False))
    codes = []
    for start in range(0, count, batch):
        latents = checkpoint.space.to_latent(data.images(indices[start : start + batch]).astype(np.float32))
        codes.append(head.s1_codes(torch.as_tensor(latents)).double().numpy())
    return np.concatenate(codes)


def s1_loss(head: S1Head, clean: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The fit's loss: flow matching on S1 (Eq. 7), each eigen-direction's error in the MLP's own
    units — divided by the Gaussian residual scale its output is multiplied by.

    So every direction and level weighs alike (EDM's 1/c_out² weight) instead of the widest
    directions' high-noise targets drowning the rest: the head comes out smoother, S1 decoding
    5 dB closer at 10 steps (docs/recipe.md, "An S1 head").
    """
    velocity = head.s1_velocity(alpha * clean + (1 - alpha) * noise, alpha)
    error = (velocity - (clean - noise)) @ head.s1_rotation
    return ((error / gaussian_residual_scale(alpha, head.s1_variance)) ** 2).mean()


def fit(
    head: S1Head,
    codes: np.ndarray,  # S1 coefficients [N, C·|S1|] of training images
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    warmup: int = 200,
    focus: tuple[float, float] = FOCUS,  # (share, σ_high): that share of the levels on [σ_min, σ_high]
) -> list[float]:
    """Set the head's S1 statistics from `codes` and train its MLP on them (`s1_loss`); Adam,
    linear warm-up then cosine decay, gradient clipping at 1. Returns the loss of every 100th step.

    Noise levels are log-uniform over SIGMA_RANGE, except that `focus`'s share of each batch is
    log-uniform below `focus`'s σ_high: the levels where S1's spread on held-out images is made
    (docs/recipe.md, "Where S1's scale is made")."""
    head.set_statistics(codes)
    x = torch.as_tensor(codes, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    log_low, log_high = (math.log(s) for s in SIGMA_RANGE)
    focused = torch.arange(batch)[:, None] < round(focus[0] * batch)
    log_highs = torch.where(focused, math.log(focus[1]), log_high)
    parameters = list(head.mlp.parameters())
    optimizer = torch.optim.Adam(parameters, lr=lr)
    losses = []
    head.mlp.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        clean = x[torch.randint(len(x), (batch,), generator=generator)]
        noise = torch.randn(clean.shape, generator=generator)
        sigma = torch.exp(log_low + (log_highs - log_low) * torch.rand(batch, 1, generator=generator))
        alpha = 1 / (1 + sigma)
        loss = s1_loss(head, clean, noise, alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            losses.append(float(loss.detach()))
            log.info("S1 head step %d/%d: loss %.4f", step, steps, losses[-1])
    head.mlp.eval()
    return losses


def fit_s1_head(
    source: str | Path,
    out: str | Path,
    images: int | None = None,  # training items whose S1 the head sees (default: as many as the model saw)
    steps: int = 12_000,
    batch: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    hidden: int = 512,
    layers: int = 4,
    embedding: int | None = 256,  # the levels' embedding width (None: `hidden`)
    block: str = "film",  # the MLP's residual block (networks.MLP_BLOCKS)
    focus_share: float = FOCUS[0],  # the share of noise levels drawn below focus_sigma (`fit`)
    focus_sigma: float = FOCUS[1],
) -> dict[str, Any]:
    """Fit an S1 head onto the checkpoint at `source` and write the result (released form) to `out`.
    Returns its metadata. A head already there is replaced; the image network is kept as it is.
    Knots calibrated for the source are not carried over: S1's flow changed (`grouplat calibrate`)."""
    if Path(out).exists():
        raise ValueError(f"{str(out)!r} exists: the new checkpoint needs a new directory")
    for name, value in (
        ("images", images),
        ("steps", steps),
        ("batch", batch),
        ("hidden", hidden),
        ("layers", layers),
        ("embedding", embedding),
    ):
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if not lr > 0:
        raise ValueError(f"--lr must be positive, got {lr}")
    if block not in MLP_BLOCKS:
        raise ValueError(f"--block must be one of {', '.join(MLP_BLOCKS)}, got {block!r}")
    if not 0 <= focus_share <= 1:
        raise ValueError(f"--focus-share must lie in [0, 1], got {focus_share}")
    if not SIGMA_RANGE[0] < focus_sigma <= SIGMA_RANGE[1]:
        raise ValueError(f"--focus-sigma must lie in ({SIGMA_RANGE[0]}, {SIGMA_RANGE[1]}], got {focus_sigma}")
    checkpoint = load_checkpoint(source)
    schedule = checkpoint.schedule
    if not checkpoint.hide or schedule.k < 2 or not schedule.hidden[0, 1:].all():
        raise ValueError(
            f"{str(source)!r}: an S1 head needs a model with two or more groups and hidden groups "
            "(every other group hidden while S1 is active); this one has "
            f"{schedule.k} group(s), hide={checkpoint.hide}"
        )
    network = checkpoint.network
    inner = network.net if isinstance(network, S1Head) else network
    with torch.random.fork_rng():  # the initial weights from `seed` too: one seed, one head
        torch.manual_seed(seed)
        head = S1Head(inner, checkpoint.space, hidden=hidden, layers=layers, embedding=embedding, block=block)
    images = images or int(checkpoint.metadata.get("images") or 0) or 100_000
    started = time.perf_counter()
    codes = s1_training_codes(checkpoint, head, images, seed)
    losses = fit(head, codes, steps=steps, batch=batch, lr=lr, seed=seed, focus=(focus_share, focus_sigma))
    head.requires_grad_(False)
    config = {k: v for k, v in checkpoint.config.items() if k != "s1_head"}
    shape: dict[str, Any] = {"hidden": hidden, "layers": layers}
    if embedding:
        shape["embedding"] = embedding
    if block != "shift":  # the config of every head fitted before blocks had a name stays as it was
        shape["block"] = block
    head.config = {**config, "s1_head": shape}  # type: ignore[assignment]
    rewritten = ("format", "created", "grouplat_version", "fingerprint", "raw_fingerprint")
    metadata = {k: v for k, v in checkpoint.metadata.items() if k not in rewritten}
    metadata["network"] = head.config
    metadata["s1_head_fit"] = {
        "images": len(codes),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "sigma_range": list(SIGMA_RANGE),
        "sigma_focus": [focus_share, focus_sigma],
        "loss": "per eigen-direction, in the MLP's output units",
        "final_loss": losses[-1],
        "seconds": round(time.perf_counter() - started, 1),
        "source_fingerprint": checkpoint.fingerprint,
    }
    Path(out).resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out).resolve().parent) as scratch:
        # written whole, then released: EMA weights only (the image network had no others here)
        save_checkpoint(
            Path(scratch) / "full", head, head, metadata, checkpoint.data_mean, checkpoint.data_std
        )
        release_checkpoint(Path(scratch) / "full", out)
    return json.loads((Path(out) / "metadata.json").read_text())


def register(subparsers: Any) -> None:
    """Add `fit-s1` to the `grouplat` command line."""
    p = subparsers.add_parser(
        "fit-s1",
        help="give a hidden-groups model an S1 head fitted on S1 alone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint directory (or a run directory: its newest checkpoint)")
    p.add_argument("--out", required=True, help="directory for the new checkpoint (must not exist yet)")
    p.add_argument(
        "--images", type=int, help="training items whose S1 the head sees (default: as the model saw)"
    )
    p.add_argument("--steps", type=int, default=12_000, help="optimizer steps (default 12000)")
    p.add_argument("--batch", type=int, default=512, help="S1 samples per step (default 512)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights, items, noise and levels (default 0)"
    )
    p.add_argument("--hidden", type=int, default=512, help="the head MLP's width (default 512)")
    p.add_argument("--layers", type=int, default=4, help="the head MLP's residual layers (default 4)")
    p.add_argument(
        "--embedding", type=int, default=256, help="width of the head's noise-level embedding (default 256)"
    )
    p.add_argument(
        "--block",
        default="film",
        choices=MLP_BLOCKS,
        help="the MLP's residual block: shift (one linear layer, the level added) or film (normalized, "
        "scaled and shifted by the level, a two-layer MLP); default film",
    )
    p.add_argument(
        "--focus-share",
        type=float,
        default=FOCUS[0],
        help=f"share of the noise levels drawn below --focus-sigma (default {FOCUS[0]})",
    )
    p.add_argument(
        "--focus-sigma",
        type=float,
        default=FOCUS[1],
        help=f"the focused levels' highest σ = (1 − α)/α (default {FOCUS[1]})",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    options = {
        k: getattr(args, k)
        for k in (
            "images", "steps", "batch", "lr", "seed", "hidden", "layers", "embedding", "block", "focus_share",
            "focus_sigma",
        )
    }  # fmt: skip
    try:
        metadata = fit_s1_head(args.checkpoint, args.out, **options)
    except ValueError as error:
        print(f"grouplat fit-s1: error: {error}", file=sys.stderr)
        return 2
    fit_info = metadata["s1_head_fit"]
    print(f"Done: {args.out} (S1 head fitted on {fit_info['images']} items in {fit_info['seconds']} s)")
    return 0
