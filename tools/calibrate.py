"""`grouplat calibrate CKPT`: fit the knots of a model's served settings and store them with it.

The served solver and steps (grouplat.settings, or --solver/--steps) are split over the groups
by the model's default decode and encode schedules. Both directions get their knots inside each
phase fitted (`calibrate_knots`, coordinate search from the even `tau` spacing):

- decode: to the one-way PSNR of N(0, I) latents (seed 0) against a many-step GEI-2m decode;
- encode: to the round trip (encode with the knots, decode with the fitted decode knots) of the
  model's own samples, those reference decodes: any model has them, real data or not.

Then both are checked on latents they were not fitted to (seed 1, their own reference decodes):
one-way decode and round trip, even vs calibrated. The knots are written to CKPT/knots.json
(grouplat.knots; entries of other settings already there are kept), which `grouplat export`
carries into every engine version: the server, the client's local solves, `grouplat evaluate`
and the demo use them wherever a request's settings match.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import grouplat
from grouplat import knots as calibrated
from grouplat.settings import DEFAULT_SOLVER, MAX_STEPS
from grouplat.solvers import SOLVERS, allocate_steps
from grouplat.tools.evaluation.metrics import psnr

FULL = dict(passes=3, latents=8, reference=512)
QUICK = dict(passes=1, latents=2, reference=16)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the knots of a model's served encode and decode settings and store them with it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint or run directory (knots.json is written there)")
    p.add_argument("--solver", default=DEFAULT_SOLVER, help=f"solver (default {DEFAULT_SOLVER})")
    p.add_argument(
        "--steps",
        type=int,
        help="decode steps (default: the model's served ones, grouplat.settings.default_steps)",
    )
    p.add_argument(
        "--encode-steps", type=int, help="encode steps (default: --steps if given, else the model's)"
    )
    p.add_argument("--passes", type=int, help=f"search passes (default {FULL['passes']})")
    p.add_argument(
        "--latents", type=int, help=f"latents fitted to, and as many checked (default {FULL['latents']})"
    )
    p.add_argument(
        "--reference", type=int, help=f"GEI-2m steps of the reference (default {FULL['reference']})"
    )
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    p.add_argument("--dry-run", action="store_true", help="fit and check, write nothing")
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test, not a calibration")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grouplat.tools.evaluation.cli import Engine, load_model

    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.encode_steps is None:
        args.encode_steps = args.steps
    problem = (
        f"unknown solver {args.solver!r}: expected one of {', '.join(SOLVERS)}" if args.solver not in SOLVERS
        else f"--steps and --encode-steps must be in 1..{MAX_STEPS}, got {args.steps} and {args.encode_steps}"
        if not all(1 <= n <= MAX_STEPS for n in (args.steps, args.encode_steps) if n is not None)
        else f"--passes, --latents and --reference must be positive, got {args.passes}, {args.latents}, "
        f"{args.reference}" if min(args.passes, args.latents, args.reference) < 1
        else None
    )  # fmt: skip
    if problem is None:
        try:
            model = load_model(args.checkpoint, "model", Engine("onnx", args.threads))
        except ValueError as error:
            problem = str(error)
    if problem is None:  # the model's served steps where not given
        args.steps, args.encode_steps = args.steps or model.served[0], args.encode_steps or model.served[1]
        try:
            decode_split = allocate_steps(model.generate, args.steps).tolist()
            encode_split = allocate_steps(model.encoding or model.generate, args.encode_steps).tolist()
        except ValueError as error:
            problem = f"--steps {args.steps}, --encode-steps {args.encode_steps}: {error}"
    if problem is not None:
        print(f"grouplat calibrate: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report = calibrate(
        model, args.solver, decode_split, encode_split, args.passes, args.latents, args.reference
    )
    report["seconds"] = round(time.perf_counter() - started)
    print(summary(report))
    if not args.dry_run:
        table = {**_existing(model.path, model.fingerprint), **report["knots"]}
        fitted = {k: v for k, v in report.items() if k != "knots"} | {
            "command": f"grouplat calibrate --solver {args.solver} --steps {args.steps} "
            f"--encode-steps {args.encode_steps} "
            f"--passes {args.passes} --latents {args.latents} --reference {args.reference}"
        }
        print(f"wrote {calibrated.write(model.path, model.fingerprint, table, fitted)}")
    return 0


def calibrate(
    model: Any,
    solver: str,
    decode_split: Sequence[int],
    encode_split: Sequence[int],
    passes: int,
    count: int,
    reference_steps: int,
) -> dict[str, Any]:
    """Both directions' knots of one model (a `grouplat.tools.evaluation.measure.Model`) fitted,
    and checked on other latents. Returns `knots` (a grouplat.knots table), `decode` and
    `round_trip` ({"fit", "even", "calibrated"} PSNRs in dB) and the settings."""
    common = dict(
        space=model.space, solver=solver, std=model.std, mean=model.mean, hide=model.hide,
        s1_covariance=model.s1_covariance,
    )  # fmt: skip

    def decode(latents: np.ndarray, knots: Any = None) -> np.ndarray:
        return grouplat.decode(model.velocity, latents, schedule=model.generate, steps=list(decode_split),
                               knots=knots, **common)  # fmt: skip

    def round_trip(images: np.ndarray, encode_knots: Any, decode_knots: Any) -> float:
        latents = grouplat.encode(model.velocity, images, schedule=model.encoding or model.generate,
                                  steps=list(encode_split), knots=encode_knots, **common)  # fmt: skip
        return psnr(decode(latents, decode_knots), images)

    fit, check = (
        np.random.default_rng(seed).standard_normal((count, *model.space.latent_shape)).astype(np.float32)
        for seed in (0, 1)
    )
    samples = [  # the references: many-step decodes, also the model's own images to round-trip
        grouplat.decode(
            model.velocity,
            z,
            schedule=model.generate,
            steps=reference_steps,
            **(common | {"solver": "gei2m"}),
        )  # fmt: skip
        for z in (fit, check)
    ]
    # a headed model's S1 steps run on the head alone: many, and cheap; their knots stay even
    even = [0] if model.s1_on_head(model.generate) else []
    decode_knots, _ = calibrate_knots(lambda k: psnr(decode(fit, k), samples[0]), decode_split, passes, even)
    encode_knots, _ = calibrate_knots(
        lambda k: round_trip(samples[0], k, decode_knots), encode_split, passes, even
    )
    return {
        "knots": {
            calibrated.key("decode", solver, "tau", decode_split): [k.tolist() for k in decode_knots],
            calibrated.key("encode", solver, "tau", encode_split): [k.tolist() for k in encode_knots],
        },
        "solver": solver,
        "decode_split": list(decode_split),
        "encode_split": list(encode_split),
        "reference": f"gei2m, {reference_steps} steps",
        "latents": count,
        # [even, calibrated] PSNR (dB), on the latents fitted to and on the others
        "decode": {
            name: [round(psnr(decode(z, k), reference), 2) for k in (None, decode_knots)]
            for name, z, reference in (("fit", fit, samples[0]), ("held_out", check, samples[1]))
        },
        "round_trip": {
            name: [round(round_trip(images, *k), 2) for k in ((None, None), (encode_knots, decode_knots))]
            for name, images in (("fit", samples[0]), ("held_out", samples[1]))
        },
    }


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"{report['solver']}, decode split {report['decode_split']}, encode split {report['encode_split']}, "
        f"reference {report['reference']}, {report['latents']} latents, {report['seconds']} s"
    ]
    for name, what in (("decode", "one-way decode"), ("round_trip", "round trip of samples")):
        (fit_even, fit_knots), (even, knots) = report[name]["fit"], report[name]["held_out"]
        lines.append(
            f"{what}, other latents: even {even:.2f} dB → calibrated {knots:.2f} dB "
            f"(fitted ones {fit_even:.2f} → {fit_knots:.2f})"
        )
    return "\n".join(lines)


def _existing(path: str, fingerprint: str) -> calibrated.Table:
    """The checkpoint's knots of other settings, kept beside the new ones (a stale file is replaced)."""
    try:
        return calibrated.read(path, fingerprint)
    except ValueError:
        return {}


def calibrate_knots(
    score: Callable[[list[np.ndarray]], float],
    steps: Sequence[int],
    passes: int = 3,
    even: Sequence[int] = (),
) -> tuple[list[np.ndarray], float]:
    """Inner knots per phase that maximise `score`, by coordinate search from the even spacing.

    A trained network's flow is rougher in some parts of a phase than the Gaussian spacing assumes
    (docs/solvers.md: S1's data end); with the total steps fixed, moving knots there pays. Like
    Align Your Steps (Sabour et al., 2024) the knots are fitted to one model and split, scored on
    calibration latents against a many-step decode; check them on other latents. Each pass moves
    every knot towards a neighbour by 40% of the gap (60% of the last pass's move) while that helps.

    Args:
        score: knots per group (S1 first; `phase_levels`'s u) → a number to maximise, e.g. the
            decode's PSNR against a reference.
        steps: the split, one count per group (S1 first).
        passes: sweeps over every knot.
        even: groups (0 = S1) whose knots stay evenly spaced: a headed model's S1, whose many
            steps on the head alone would multiply the search for little.

    Returns:
        (knots per group, their score).

    Example:
        >>> target = np.array([0.1, 0.3])  # a toy score: S1's knots near these (even: 1/3, 2/3)
        >>> knots, best = calibrate_knots(lambda k: -float(np.abs(k[0] - target).sum()), [3, 1], 8)
        >>> knots[0].round(1).tolist(), knots[1].tolist(), round(best, 1)
        ([0.1, 0.3], [], -0.0)
        >>> kept, _ = calibrate_knots(lambda k: -float(np.abs(k[0] - target).sum()), [3, 1], 8, even=[0])
        >>> kept[0].round(2).tolist()  # S1's knots stay even
        [0.33, 0.67]
    """
    knots = [np.linspace(0.0, 1.0, int(n) + 1)[1:-1] for n in steps]
    best, move = score(knots), 0.4
    for _ in range(passes):
        for j, inner in enumerate(knots):
            for i in range(0 if j in even else len(inner)):
                for direction in (-1, 1):
                    edges = np.concatenate([[0.0], knots[j], [1.0]])
                    gap = edges[i + 1] - edges[i] if direction < 0 else edges[i + 2] - edges[i + 1]
                    trial = [k.copy() for k in knots]
                    trial[j][i] += direction * move * gap
                    if (value := score(trial)) > best:
                        best, knots = value, trial
                        break
        move *= 0.6
    return knots, best
