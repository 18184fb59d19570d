"""`grouplat evaluate CKPT [--baseline CKPT] [--out DIR] [--quick]`: the paper's claims as numbers.

Held-out data are fresh draws of the checkpoint's procedural shapes (another seed than training).
Measured for the model and, side by side, the scalar baseline: round-trip and one-way decode PSNR
vs NFE; group leakage; latent statistics (of held-out images, of the model's own samples, and
S1's spread along the data's principal directions, which says why the two differ); MIG / DCI / SAP
of the S1 latents against the shapes' factors; reconstruction from the first m coefficients vs DCT
truncation; a small Table 1 (sample quality over generation schedules, and training schedules with
--table1). Writes OUT/evaluation.json and OUT/evaluation.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from grouplat.schedule import Schedule
from grouplat.settings import default_encode_schedule, default_generate_schedule, default_steps
from grouplat.solvers import Velocity, chunked
from grouplat.tools.evaluation import measure, metrics
from grouplat.tools.evaluation.measure import FULL, QUICK, Budget, Model
from grouplat.tools.evaluation.report import markdown

logger = logging.getLogger(__name__)

CHUNK = 128  # images per engine call (bounds memory)
# index ranges of the held-out shapes, one per use, so that no two uses share an image
ENCODED, REAL, REAL_FLOOR, CLASSIFIER_TRAIN, CLASSIFIER_TEST = (0, 1 << 16, 2 << 16, 3 << 16, 4 << 16)


def register(subparsers: Any) -> None:
    """Add `evaluate` to the `grouplat` command line (its handler returns an exit code)."""
    p = subparsers.add_parser(
        "evaluate",
        help="measure a model and a scalar baseline: PSNR, leakage, latent statistics, MIG/DCI/SAP, Table 1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="the grouped-latent model: a checkpoint or run directory")
    p.add_argument(
        "--baseline", metavar="CKPT", help="the scalar (one-group) baseline, trained on the same data"
    )
    p.add_argument(
        "--table1", nargs="+", default=[], metavar="CKPT",
        help="more checkpoints of the same data and groups with other training schedules (Table 1's rows)",
    )  # fmt: skip
    p.add_argument("--out", default="evaluation", help="output folder (default: ./evaluation)")
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test, not a measurement")
    p.add_argument(
        "--schedule", help="generation schedule (cuts) for both directions of everything but Table 1 "
        "(default: the served pair, grouplat.settings, for four groups, else the training schedule)",
    )  # fmt: skip
    p.add_argument(
        "--engine", choices=("onnx", "torch"), default="onnx", help="velocity engine (default: onnx)"
    )
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime / torch threads (default: 2)")
    p.add_argument("--device", default="cpu", help="torch device for --engine torch, e.g. cuda (TF32 off)")
    p.add_argument("--seed", type=int, default=0, help="seed for latents, noise and metrics")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        engine = Engine(args.engine, args.threads, args.device)
        budget = QUICK if args.quick else FULL
        report = evaluate(
            args.checkpoint, args.baseline, args.table1, budget, args.schedule, engine, args.seed
        )
    except ValueError as error:
        print(f"grouplat evaluate: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / "evaluation.md").write_text(text)
    print(text)
    return 0


@dataclasses.dataclass(frozen=True)
class Engine:
    """How the network runs: ONNX Runtime (exported in memory; on the CPU) or torch on `device`."""

    kind: str = "onnx"
    threads: int = 2
    device: str = "cpu"


def load_model(path: str, name: str, engine: Engine, schedule: str | None = None) -> Model:
    """A checkpoint with its velocity engine."""
    import torch

    from grouplat.training.checkpoint import load_checkpoint

    if engine.kind == "onnx" and engine.device != "cpu":
        raise ValueError("--device is for --engine torch: the ONNX engine runs on the CPU here")
    torch.set_num_threads(engine.threads)
    if engine.device.startswith("cuda"):  # full fp32 and repeatable: PSNRs of 40+ dB, leakage exactly 0
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    ckpt = load_checkpoint(path, device=engine.device)
    velocity: Velocity
    if engine.kind == "onnx":
        from grouplat.export.engine import onnx_velocity

        velocity = onnx_velocity(ckpt, engine.threads)
    else:
        velocity = ckpt.velocity(max_batch=CHUNK)
    if schedule:  # one schedule for both directions
        generate = encoding = Schedule.parse(schedule, ckpt.space.k)
    else:  # the served pair
        headed = ckpt.s1_covariance is not None
        generate = default_generate_schedule(ckpt.space.k, ckpt.schedule, headed)
        encoding = default_encode_schedule(ckpt.space.k, ckpt.schedule, headed)
    return Model(
        name, str(ckpt.path), ckpt.fingerprint, ckpt.space, ckpt.schedule, generate, chunked(velocity, CHUNK),
        ckpt.data_mean, ckpt.data_std, ckpt.hide, encoding, ckpt.knots, ckpt.s1_covariance,
        default_steps(ckpt.space.k, ckpt.s1_covariance is not None),
    )  # fmt: skip


def held_out_shapes(path: str, space_shape: tuple[int, int, int]) -> Any:
    """The checkpoint's shapes data set with a fresh seed."""
    from grouplat.training.checkpoint import read_metadata, resolve_checkpoint
    from grouplat.training.dataset import held_out_shapes

    data = read_metadata(resolve_checkpoint(path)).get("data") or {}
    spec = str(data.get("spec", ""))
    if not spec.startswith("shapes"):
        raise ValueError(
            f"evaluate needs a model of the procedural shapes (their factors are the ground truth); "
            f"{path!r} was trained on {spec or 'unrecorded data'!r}"
        )
    if space_shape[0] != 3 or space_shape[1] != space_shape[2]:
        raise ValueError(f"shapes images are 3×R×R, the model's are {space_shape}")
    return held_out_shapes(space_shape[1], int(data.get("seed", 0)))


def evaluate(
    checkpoint: str,
    baseline: str | None = None,
    table1: list[str] | None = None,
    budget: Budget = FULL,
    schedule: str | None = None,
    engine: Engine = Engine(),
    seed: int = 0,
) -> dict:
    """Measure the model (and the baseline) and return the JSON-ready report."""
    from grouplat.training.dataset import FACTORS

    started = time.perf_counter()
    main = load_model(checkpoint, "grouped", engine, schedule)
    models = [main]
    if baseline is not None:
        base = load_model(baseline, "baseline", engine)
        if base.space.shape != main.space.shape or base.space.basis.name != main.space.basis.name:
            raise ValueError(
                f"the baseline's latent space {base.space} differs from the model's {main.space} "
                "in shape or basis"
            )
        models.append(base)
    probe = main.space  # the grouped model's groups, for both models
    data = held_out_shapes(checkpoint, main.space.shape)
    index = np.arange(budget.latents)
    images, factors = data.images(ENCODED + index), data.factors(ENCODED + index)
    few = images[: budget.images]
    keep = [*(b for b in probe.boundaries or () if b < probe.size), probe.size]
    report: dict = {
        "budget": dataclasses.asdict(budget) | {"quick": budget == QUICK},
        "data": {"spec": f"shapes:{main.space.height}", "seed": data.seed, "held_out_images": budget.latents},
        "models": {m.name: m.describe() for m in models},
        "engine": dataclasses.asdict(engine),
        "factors": list(FACTORS),
        "probe_groups": probe.describe()["groups"],
        "s1_numbers": int(probe.channels * len(probe.indices(1))),
        "keep": keep,
    }
    keys = ("round_trip", "one_way", "leakage", "latent_statistics", "sample_latent_statistics", "s1_spread")
    for key in (*keys, "disentanglement", "keep_first"):
        report[key] = {}
    for m in models:
        clock = _Clock(m.name)
        report["round_trip"][m.name] = measure.round_trip(m, few, budget)
        clock("round trip")
        report["one_way"][m.name] = measure.one_way(m, budget, seed)
        clock("one-way decode")
        latents = m.encode(images, budget.encode_nfe, budget.solver)
        clock(f"encode {len(images)} held-out images")
        report["leakage"][m.name] = measure.leakage(m, latents[: budget.images], probe, budget, seed)
        clock("leakage")
        report["latent_statistics"][m.name] = measure.latent_statistics(latents, probe, seed)
        noise = np.random.default_rng(seed).standard_normal((budget.samples, *m.space.latent_shape))
        samples = m.decode(noise.astype(np.float32), budget.decode_nfe, budget.solver)
        report["sample_latent_statistics"][m.name] = measure.latent_statistics(
            m.encode(samples, budget.encode_nfe, budget.solver), probe, seed
        )
        report["s1_spread"][m.name] = measure.s1_spread(probe, main.mean, main.std, images, samples, latents)
        report["disentanglement"][m.name] = measure.disentanglement(
            measure.s1_codes(latents, probe), factors, [0]
        )
        clock(f"statistics, {budget.samples} samples encoded, disentanglement")
        report["keep_first"][m.name] = measure.keep_first(m, few, latents[: budget.images], keep, budget)
        clock("Fig. 5")
    report["disentanglement"]["dct"] = measure.disentanglement(
        measure.s1_codes(probe.to_latent(images), probe), factors, [0]
    )
    report["keep_first"]["dct"] = measure.dct_keep_first(probe, few, main.mean, keep)
    report["table1"] = table_one(main, models[1:], table1 or [], data, budget, engine, seed)
    report["seconds"] = time.perf_counter() - started
    return report


def table_one(
    main: Model,
    baselines: list[Model],
    others: list[str],
    data: Any,
    budget: Budget,
    engine: Engine,
    seed: int,
) -> dict:
    """Sample quality per (training schedule, generation schedule): the same N(0, I) latents decoded
    by each, against held-out real images; the real data against other real data as the floor."""
    clock = _Clock("table 1")
    n = budget.samples
    real = data.images(REAL + np.arange(n))
    pooled = metrics.pooled(real)
    scale = (pooled.mean(axis=0), pooled.std(axis=0) + 1e-6)
    kinds = data.factors(CLASSIFIER_TRAIN + np.arange(budget.classifier))[:, 0]
    classifier = metrics.ShapeClassifier(
        data.images(CLASSIFIER_TRAIN + np.arange(budget.classifier)), kinds, seed, budget.classifier_iter
    )
    test = CLASSIFIER_TEST + np.arange(max(n, 200))
    floor = measure.sample_quality(data.images(REAL_FLOOR + np.arange(n)), real, scale, classifier)
    result: dict = {
        "samples": n,
        "nfe": budget.sample_nfe,
        "solver": budget.solver,
        "classifier_accuracy": classifier.accuracy(data.images(test), data.factors(test)[:, 0]),
        "real": floor,
        "rows": [],
    }
    clock("classifier and real floor")
    models = [main, *(load_model(p, f"table1-{i}", engine) for i, p in enumerate(others, 1))]
    for m in models[1:]:
        if m.space != main.space:
            raise ValueError(f"--table1 model {m.path!r} has latent space {m.space}, the model {main.space}")
    for m, scalar in [*((m, False) for m in models), *((b, True) for b in baselines)]:
        latents = np.random.default_rng(seed).standard_normal((n, *m.space.latent_shape)).astype(np.float32)
        schedules = [m.train] if scalar else measure.generation_schedules(m.space.k, m.train)
        for generate in schedules:
            samples = m.decode(latents, budget.sample_nfe, budget.solver, generate)
            quality = measure.sample_quality(samples, real, scale, classifier)
            row = {"model": m.name, "train": m.train.text, "generate": generate.text, **quality}
            result["rows"].append(row)
            clock(f"{m.name} {m.train.text} → {generate.text}")
    return result


class _Clock:
    """Progress (logged at INFO): each call says what was done and how long it took."""

    def __init__(self, name: str) -> None:
        self.name, self.last = name, time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        logger.info("[%s] %s: %.1f s", self.name, what, now - self.last)
        self.last = now
