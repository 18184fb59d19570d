"""Training-recipe study: grouped model vs scalar baseline at equal budget (issue: model quality).

Each variant trains the shapes32 network for the same steps and batch, then is measured the same
way on held-out data: sample quality of N(0, I) latents decoded accurately (GEI-2m, many steps,
so that solver error does not blur the comparison), S1 latent statistics of encoded held-out
images, and the last logged per-group error relative to the per-coefficient Gaussian predictor.

    python benchmarks/recipe.py --steps 1200 --out runs/recipe            # all variants
    python benchmarks/recipe.py --variants grouped,grouped+phase+gauss ... # some
    python benchmarks/recipe.py --quick                                    # seconds: a smoke run

Runs already trained to --steps are measured again without training. Writes OUT/recipe.json and
OUT/recipe.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

SCALAR = {"groups": "-", "schedule": "-"}
# The recipe before this study (the shipped one), which every variant starts from, named explicitly.
BEFORE: tuple[dict[str, Any], dict[str, Any]] = ({"times": "schedule"}, {"residual": "none"})
GAUSS = {"residual": "gaussian"}
# name → (TrainConfig changes, network changes) on top of BEFORE
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "scalar": (SCALAR, {}),
    "grouped": ({}, {}),
    "grouped+phase": ({"times": "phase"}, {}),
    "grouped+gauss": ({}, GAUSS),
    "grouped+phase+gauss": ({"times": "phase"}, GAUSS),
    "scalar+gauss": (SCALAR, GAUSS),
    "grouped+phase+gauss+group": ({"times": "phase", "weighting": "group"}, GAUSS),
    "grouped+phase+gauss+paper": ({"times": "phase", "weighting": "paper"}, GAUSS),
    "grouped+phase+gauss+even": ({"times": "phase", "schedule": "0.25,0.5,0.75"}, GAUSS),
    "grouped+phase50+gauss": ({"times": "phase", "phase_shares": "0.5,0.2,0.15,0.15"}, GAUSS),
}


def train_variant(name: str, steps: int, out: Path, threads: int, quick: bool) -> Path:
    from grouplat.training.checkpoint import read_metadata, resolve_checkpoint
    from grouplat.training.presets import PRESETS
    from grouplat.training.training_loop import TrainConfig, train

    changes, network = VARIANTS[name]
    run = out / name.replace("+", "_")
    try:
        done = read_metadata(resolve_checkpoint(run))["step"] >= steps
    except (ValueError, KeyError):
        done = False
    if done:
        return resolve_checkpoint(run)
    values = {**PRESETS["shapes32"], **BEFORE[0], **changes}
    values["network"] = {**values["network"], **BEFORE[1], **network}
    if quick:
        values["network"] = {**values["network"], "model_channels": 8, "num_blocks": 1}
    cfg = TrainConfig(
        **values,
    ).replace(
        steps=steps, out=str(run), warmup=min(200, steps // 4), checkpoint_every=steps, sample_every=0,
        keep=1, progress=False, threads=threads, stats_items=512 if quick else 4096,
    )  # fmt: skip
    if quick:  # the end-of-run sample grid, small: a smoke run looks at the numbers, not the grid
        cfg = cfg.replace(sample_count=4, sample_steps=4)
    started = time.perf_counter()
    final = train(cfg)
    print(f"[{name}] trained {steps} steps in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return final


def measure_variant(name: str, checkpoint: Path, samples: int, nfe: int, threads: int) -> dict[str, Any]:
    from grouplat.tools.evaluation import measure, metrics
    from grouplat.tools.evaluation.cli import (
        CLASSIFIER_TRAIN,
        ENCODED,
        REAL,
        Engine,
        held_out_shapes,
        load_model,
    )

    model = load_model(str(checkpoint), name, Engine("onnx", threads))
    data = held_out_shapes(str(checkpoint), model.space.shape)
    real = data.images(REAL + np.arange(samples))
    pooled = metrics.pooled(real)
    scale = (pooled.mean(axis=0), pooled.std(axis=0) + 1e-6)
    train_index = CLASSIFIER_TRAIN + np.arange(4000 if samples >= 256 else 200)
    classifier = metrics.ShapeClassifier(data.images(train_index), data.factors(train_index)[:, 0])
    latents = (
        np.random.default_rng(0).standard_normal((samples, *model.space.latent_shape)).astype(np.float32)
    )
    started = time.perf_counter()
    decoded = model.decode(latents, nfe, "gei2m")
    quality = measure.sample_quality(decoded, real, scale, classifier)
    held_out = data.images(ENCODED + np.arange(samples))
    encoded = model.encode(held_out, nfe, "gei2m")
    probe = model.space if model.space.k > 1 else _paper_probe(model.space)
    stats = measure.latent_statistics(encoded, probe, 0)
    s1 = stats["groups"][0]
    log = _last_log(checkpoint.parent / "log.jsonl")
    return {
        "variant": name,
        "checkpoint": str(checkpoint),
        **quality,
        "s1_abs_mean": s1["abs_mean"],
        "s1_std": s1["std_mean"],
        "s1_std_range": [s1["std_min"], s1["std_max"]],
        "s1_max_abs_corr": stats["s1_max_abs_corr"],
        "s1_null_max_abs_corr": stats["s1_null_max_abs_corr"],
        "s1_spread": measure.s1_spread(probe, model.mean, model.std, held_out, decoded, encoded),
        "vs_gauss": {k[len("vs_gauss_") :]: v for k, v in log.items() if k.startswith("vs_gauss_")},
        "final_loss": log.get("loss"),
        "measure_seconds": time.perf_counter() - started,
    }


def _paper_probe(space: Any) -> Any:
    from grouplat.space import PAPER_BOUNDARIES, LatentSpace

    bounds = [b for b in PAPER_BOUNDARIES if b < space.size]
    return LatentSpace(space.shape, space.basis.name, bounds)


def _last_log(path: Path) -> dict[str, Any]:
    """The mean of the last five per-step log lines (a smoother figure than one window)."""
    if not path.exists():  # a released checkpoint keeps no training log
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if '"img_per_sec"' in line][-5:]
    keys = {k for line in lines for k, v in line.items() if isinstance(v, float)}
    return {k: float(np.mean([line[k] for line in lines if k in line])) for k in keys}


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        f"Shapes32 network, {args.steps} steps × batch 64 each; {args.samples} samples decoded with "
        f"GEI-2m at {args.nfe} NFE vs as many held-out real images; S1 statistics of {args.samples} "
        "held-out images encoded the same way (the scalar model is probed on the same coefficients).\n\n"
        "S1's thinnest third: the mean std of the standardized held-out images, of the samples and of "
        "the images' latents along the images' thinnest principal directions (`grouplat evaluate`).\n\n"
        "| variant | SWD ↓ | confidence ↑ | kind score ↑ | S1 |mean| | S1 std (range) | S1 max |corr| "
        "| S1's thinnest third: images / samples / latents "
        "| error ÷ Gaussian predictor's, S1..S4 |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        ratio = " / ".join(f"{v:.3f}" for _, v in sorted(r["vs_gauss"].items())) or "–"
        low, high = r["s1_std_range"]
        thin = r["s1_spread"][-1]
        body += (
            f"| {r['variant']} | {r['swd']:.3f} | {r['confidence']:.3f} | {r['kind_score']:.2f} | "
            f"{r['s1_abs_mean']:.3f} | {r['s1_std']:.2f} ({low:.2f}–{high:.2f}) | {r['s1_max_abs_corr']:.2f} "
            f"| {thin['images']:.3f} / {thin['samples']:.3f} / {thin['latents']:.3f} | {ratio} |\n"
        )
    return head + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(list(VARIANTS)[:6]), help="comma-separated names")
    p.add_argument("--steps", type=int, default=1200, help="training steps per variant (batch 64)")
    p.add_argument("--samples", type=int, default=512, help="generated and encoded images per variant")
    p.add_argument("--nfe", type=int, default=60, help="GEI-2m network evaluations per decode / encode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/recipe")
    p.add_argument(
        "--measure",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="also measure a trained checkpoint as it is (e.g. an earlier shipped model); repeatable",
    )
    p.add_argument("--quick", action="store_true", help="a tiny network, 4 steps, 16 samples (a smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.samples, args.nfe = 4, 16, 8
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    given = dict(item.split("=", 1) for item in args.measure if "=" in item)
    if len(given) != len(args.measure):
        p.error("--measure takes NAME=CHECKPOINT")
    names = [n for n in names if n not in given]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    from grouplat.training.checkpoint import resolve_checkpoint

    trained = ((name, train_variant(name, args.steps, out, args.threads, args.quick)) for name in names)
    as_they_are = ((name, resolve_checkpoint(path)) for name, path in given.items())
    for name, checkpoint in itertools.chain(trained, as_they_are):  # each measured as soon as it exists
        rows.append(measure_variant(name, checkpoint, args.samples, args.nfe, args.threads))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        (out / "recipe.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
        (out / "recipe.md").write_text(markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
