"""`grouplat train`: train a grouped-latent flow model (or resume one).

Values come from, in order: TrainConfig's defaults, the preset, then the flags given. With
`--resume` they come from the checkpoint instead, and only flags that keep the run identical
(steps, output, logging, sampling, device, …) may change. Multi-GPU / multi-node: launch with
`torchrun --nproc_per_node N -m grouplat.cli train …` (NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from grouplat.training.presets import PRESETS

# flags that may change on --resume without changing what the run computes
RESUMABLE = {
    "steps",
    "out",
    "log_every",
    "checkpoint_every",
    "keep",
    "sample_every",
    "sample_count",
    "sample_steps",
    "sample_schedule",
    "workers",
    "progress",
    "device",
    "threads",
    "compile",
    "batch_gpu",
}
NETWORK_FLAGS = {
    "arch": "arch",
    "channels": "model_channels",
    "mults": "channel_mult",
    "blocks": "num_blocks",
    "attn": "attn_resolutions",
    "dropout": "dropout",
    "hidden": "hidden",
    "layers": "layers",
    "residual": "residual",
}


def _ints(text: str) -> list[int]:
    return [] if text.strip() in ("", "-") else [int(v) for v in text.split(",")]


def register(subparsers: Any) -> None:
    """Add `train` to the `grouplat` command line (its handler returns an exit code)."""
    p = subparsers.add_parser(
        "train",
        help="train a grouped-latent flow model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flag = p.add_argument
    flag(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="starting configuration: shapes32 (the demo model, default), shapes32-scalar (its "
        "one-group baseline), shapes32-quadrants (pixel groups, Fig. 2b), gmm2d (Fig. 2a), "
        "ffhq64 (the paper's DDPM++ 64×64 recipe, for GPUs; needs --data)",
    )
    flag(
        "--resume", metavar="PATH", help="continue a run: a checkpoint directory or a run directory (newest)"
    )
    g = p.add_argument_group("data and latent space")
    g.add_argument(
        "--data", metavar="SPEC", help="shapes[:RES] | gmm2d | folder:PATH | zip:PATH (EDM-style zip)"
    )
    g.add_argument(
        "--resolution",
        type=int,
        help="image size for folder/zip data (centre crop + resize; default: the first image's shorter side)",
    )
    g.add_argument(
        "--xflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add horizontally flipped copies of the data",
    )
    g.add_argument(
        "--basis", choices=["dct", "pixel"], help="latent basis U: dct (frequency groups) or pixel"
    )
    g.add_argument(
        "--groups",
        help="group boundaries like 30,100,500 (4 groups), '-' (one group: the "
        "scalar baseline), 'quadrants' (pixel basis, Fig. 2b) or 'elements' (one group each)",
    )
    g.add_argument(
        "--schedule",
        help="training schedule as cut points, e.g. 0.6,0.8,0.9 (the paper's); "
        "'-' for one group; default: the paper's for 4 groups, else even cuts",
    )
    g.add_argument(
        "--hide",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hidden groups (default on): --no-hide trains the paper-exact ablation",
    )
    g.add_argument(
        "--weighting",
        choices=["paper", "uniform", "group"],
        help="loss weight: paper = α'(t)² of Eq. 7, uniform = 1 on the active group, "
        "group = 1/|S_j| on the active group (each phase weighs the same)",
    )
    g.add_argument(
        "--times",
        choices=["schedule", "phase"],
        help="training times: schedule = t ~ U(0,1) under the training schedule (the paper's), "
        "phase = a group first (equally often, or --phase-shares), then t inside its interval",
    )
    g.add_argument(
        "--phase-shares",
        metavar="S1,S2,…",
        help="with --times phase: how often each group is drawn, e.g. 0.5,0.2,0.15,0.15 (default equal)",
    )
    n = p.add_argument_group("network")
    n.add_argument("--arch", choices=["unet", "mlp"], help="network type (default: unet; mlp for points)")
    n.add_argument("--channels", type=int, help="U-Net base channels (model_channels)")
    n.add_argument("--mults", type=_ints, help="U-Net channel multiplier per resolution, e.g. 1,2,2,2")
    n.add_argument("--blocks", type=int, help="U-Net residual blocks per resolution")
    n.add_argument(
        "--attn", type=_ints, help="U-Net resolutions with self-attention, e.g. 16 ('-': lowest only)"
    )
    n.add_argument("--dropout", type=float, help="U-Net dropout probability")
    n.add_argument("--hidden", type=int, help="MLP width")
    n.add_argument("--layers", type=int, help="MLP residual layers")
    n.add_argument(
        "--residual",
        choices=["none", "gaussian"],
        help="gaussian: the network adds to the data's per-coefficient Gaussian velocity (EDM-style "
        "skip per coefficient); none: it predicts the whole velocity",
    )
    o = p.add_argument_group("optimization")
    o.add_argument("--steps", type=int, help="total optimizer steps")
    o.add_argument("--batch", type=int, help="global batch size (all processes together)")
    o.add_argument("--batch-gpu", type=int, help="per-process micro-batch: accumulate gradients over several")
    o.add_argument("--lr", type=float, help="peak learning rate (Adam)")
    o.add_argument("--warmup", type=int, help="linear learning-rate warm-up, in steps")
    o.add_argument(
        "--anneal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decay the learning rate linearly to 0 at the last step (default on)",
    )
    o.add_argument("--ema", type=float, dest="ema_halflife_kimg", help="EMA half-life in thousands of images")
    o.add_argument("--ema-rampup", type=float, help="EMA half-life ≤ this × images seen early on (EDM: 0.05)")
    o.add_argument("--grad-clip", type=float, help="clip the global gradient norm (0: off)")
    o.add_argument("--seed", type=int, help="seed for weights, data order, noise and dropout (default 0)")
    r = p.add_argument_group("run")
    r.add_argument("--out", help="run directory: checkpoint-*/, log.jsonl, samples/ (default runs/PRESET)")
    r.add_argument("--device", help="auto (default), cpu or cuda")
    r.add_argument("--threads", type=int, help="CPU threads for torch (on a busy machine 1 can be faster)")
    r.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (GPU only)")
    r.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the network"
    )
    r.add_argument("--log-every", type=int, help="steps between log lines in log.jsonl")
    r.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    r.add_argument("--keep", type=int, help="checkpoints to keep (0: all)")
    r.add_argument("--sample-every", type=int, help="steps between sample grids (0: only at the end)")
    r.add_argument("--sample-count", type=int, help="images per sample grid")
    r.add_argument("--sample-steps", type=int, help="ODE steps for the sample grids")
    r.add_argument(
        "--sample-schedule",
        help="generation schedule for the grids (default 0.1,0.2,0.3 when training with 0.6,0.8,0.9)",
    )
    r.add_argument("--stats-items", type=int, help="data items for the per-coefficient mean/std")
    r.add_argument("--workers", type=int, help="image-decoding threads for folder/zip data")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig that `args` describe (see the module docstring for the precedence)."""
    from grouplat.training.training_loop import TrainConfig, resume_config

    given = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("preset", "resume", "handler", "command") and k not in NETWORK_FLAGS
    }
    network = {NETWORK_FLAGS[k]: v for k, v in vars(args).items() if k in NETWORK_FLAGS and v is not None}
    if args.resume:
        changed = sorted(set(given) - RESUMABLE) + sorted(network) + (["preset"] if args.preset else [])
        if changed:
            raise ValueError(
                f"cannot change {', '.join('--' + c.replace('_', '-') for c in changed)} when "
                "resuming: the run would not continue the same training"
            )
        from grouplat.training.checkpoint import resolve_checkpoint

        given.setdefault("out", str(resolve_checkpoint(args.resume).parent))
        return resume_config(args.resume, **given)
    preset = args.preset or "shapes32"
    values = dict(PRESETS[preset])
    values["network"] = {**values.get("network", {}), **network}
    if "arch" in network and network["arch"] != PRESETS[preset].get("network", {}).get("arch"):
        values["network"] = network  # a different architecture starts from its own defaults
    values.update(given)
    values.setdefault("out", f"runs/{preset}")
    if values.get("data") is None:
        raise ValueError(f"preset {preset} needs --data (e.g. zip:ffhq-64x64.zip or folder:PATH)")
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    # OpenMP threads that spin while they wait made CPU training 6× slower on a busy 2-core machine
    # (5.5 → 33 img/s for shapes32); sleeping costs little when the machine is idle. Only effective
    # before torch is imported; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from grouplat.training.training_loop import train

    try:
        cfg = config_from_args(args)
        final = train(cfg, resume=args.resume)
    except ValueError as error:
        print(f"grouplat train: error: {error}", file=sys.stderr)
        return 2
    print(f"Done: {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m grouplat.training.cli train …` (what `grouplat train …` dispatches to)."""
    from grouplat.cli import configure_logging

    parser = argparse.ArgumentParser(prog="grouplat")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    configure_logging()  # progress at $GROUPLAT_LOG_LEVEL (default INFO) on stderr, as `grouplat train`
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
