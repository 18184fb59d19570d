"""`grouplat solvers CKPT`: one-way decode accuracy vs NFE for every solver, spacing and step split.

One-way, not round trip (docs/design.md §1.7): fixed N(0, I) latents decoded at each setting are
compared with a many-step GEI-2m reference decode of the same latents (its own accuracy is shown
by a second reference at half the steps). Three ways to split the steps over the groups:

- `schedule`: in proportion to the generation schedule's intervals (the paper's 0.1,0.2,0.3 for
  four groups), at least 3 per group;
- `even`: the same number for every group;
- `measured`: by each group's measured error. Per solver, the phase of group j alone is solved with
  n and 2n steps while the other phases get many; the end-to-end error of each fits
  `e_j(n) = C_j n^(−p_j)`, and steps are handed out one at a time to the group whose error falls
  most. The split at the target NFE is written as a generation schedule (interval lengths ∝
  steps), so `grouplat export --generate-schedule` can serve it.

The per-group counts of `--splits` are also measured as a round trip (encode then decode with the
same solver and split, or encode with `--encode-split` and decode with each split) of held-out
images, for models of the procedural shapes: what an editing caller sees of an unedited
photograph, and where a one-way-accurate setting can still lose.

With `--calibrate P`, each split of `--splits` also gets its knots fitted per solver
(`calibrate_knots`, P passes) to the PSNR of the latents above against their
reference, and is then measured on as many other latents (seed 1, their own reference): the
calibrated knots' gain on latents they were not fitted to.

Writes OUT/solvers.json and OUT/solvers.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import grouplat
from grouplat.s1phase import network_steps
from grouplat.schedule import Schedule
from grouplat.solvers import (
    NFE_PER_STEP,
    SOLVERS,
    Velocity,
    allocate_steps,
)
from grouplat.tools.calibrate import calibrate_knots
from grouplat.tools.evaluation.metrics import psnr

SPACINGS = ("tau", "uniform")
SPLITS = ("schedule", "even", "measured")
FULL = dict(latents=8, nfe="10,16,20,24,30,40,60,80", reference=1024, probe=4)
QUICK = dict(latents=2, nfe="8,12", reference=32, probe=2)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "solvers",
        help="one-way decode PSNR vs NFE for every solver, spacing and step split (chooses defaults)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", nargs="+", help="checkpoints or run directories (each measured alone)")
    p.add_argument("--target-nfe", type=int, default=24, help="the NFE budget the split is tuned for")
    p.add_argument("--latents", type=int, help=f"latents decoded (default {FULL['latents']})")
    p.add_argument("--nfe", help=f"NFE values, comma-separated (default {FULL['nfe']})")
    p.add_argument(
        "--reference", type=int, help=f"GEI-2m steps of the reference (default {FULL['reference']})"
    )
    p.add_argument(
        "--splits",
        default="",
        help="per-group step counts to measure too, S1 first, space-separated (e.g. '8,4,3,3 5,3,2,2')",
    )
    p.add_argument(
        "--encode-split",
        default="",
        help="per-group step counts the round trips encode with (default: each split's own), e.g. 16,8,6,6",
    )
    p.add_argument(
        "--solvers", default=",".join(SOLVERS), help=f"solvers to measure (default {','.join(SOLVERS)})"
    )
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="PASSES",
        help="fit each split's knots per solver in this many passes, check them on other latents "
        "(default 0: off)",
    )
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    p.add_argument("--out", default="solvers", help="output folder (default ./solvers)")
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke test, not a measurement")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from grouplat.tools.evaluation.cli import Engine, held_out_shapes, load_model

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    nfes = sorted({int(n) for n in str(args.nfe).split(",")})
    try:
        splits = [[int(n) for n in split.split(",")] for split in args.splits.split()]
        encode_split = [int(n) for n in args.encode_split.split(",")] if args.encode_split else None
        if any(min(split) < 1 for split in [*splits, *([encode_split] if encode_split else [])]):
            raise ValueError
    except ValueError:
        print(
            "grouplat solvers: --splits and --encode-split take positive counts like '8,4,3,3 5,3,2,2', "
            f"got {args.splits!r} and {args.encode_split!r}",
            file=sys.stderr,
        )
        return 2
    if args.calibrate < 0:
        print(
            f"grouplat solvers: --calibrate takes a number of passes (0: off), got {args.calibrate}",
            file=sys.stderr,
        )
        return 2
    solvers = [name for name in args.solvers.split(",") if name]
    unknown = [name for name in solvers if name not in SOLVERS]
    if unknown or not solvers:
        print(f"grouplat solvers: --solvers takes names from {', '.join(SOLVERS)}, got {args.solvers!r}",
              file=sys.stderr)  # fmt: skip
        return 2
    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "handler"},
        "models": {},
    }
    started = time.perf_counter()
    for path in args.checkpoint:
        try:
            model = load_model(path, Path(path).name, Engine("onnx", args.threads))
        except ValueError as error:
            print(f"grouplat solvers: {error}", file=sys.stderr)
            return 2
        fitting = tuple(split for split in splits if len(split) == model.space.k)  # not a baseline's
        if (splits and not fitting or encode_split and len(encode_split) != model.space.k) and len(
            args.checkpoint
        ) == 1:
            print(
                f"grouplat solvers: --splits and --encode-split need {model.space.k} positive counts each "
                f"for {path}",
                file=sys.stderr,
            )
            return 2
        try:
            images = held_out_shapes(path, model.space.shape).images(np.arange(args.latents))
        except ValueError:  # not a shapes model: no held-out images to round-trip
            images = None
        encoding = encode_split if encode_split and len(encode_split) == model.space.k else None
        report["models"][path] = study(
            model, nfes, args.latents, args.reference, args.target_nfe, args.probe, fitting, solvers, images,
            encoding, args.calibrate,
        )  # fmt: skip
    report["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "solvers.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / "solvers.md").write_text(text)
    print(text)
    return 0


def study(
    model: Any,
    nfes: list[int],
    count: int,
    reference_steps: int,
    target: int,
    probe: int,
    splits: tuple[list[int], ...] = (),
    solvers: Sequence[str] = SOLVERS,
    images: np.ndarray | None = None,
    encode_split: list[int] | None = None,
    calibrate: int = 0,
) -> dict:
    """Every measurement of one model (a `grouplat.tools.evaluation.measure.Model`); `splits` are
    per-group step counts measured with every solver (tau spacing) beside the curves, and as a round
    trip of `images` when given (encoded with `encode_split`, default each split's own); with
    `calibrate` passes, each split's knots are fitted and checked on other latents."""
    k = model.space.k
    latents = np.random.default_rng(0).standard_normal((count, *model.space.latent_shape)).astype(np.float32)

    def decode(
        solver: str,
        steps: int | list[int],
        spacing: str = "tau",
        velocity: Velocity | None = None,
        start: np.ndarray | None = None,
    ) -> Any:
        return grouplat.decode(
            velocity or model.velocity, latents if start is None else start, model.space, model.generate,
            steps, solver, spacing, std=model.std, mean=model.mean, hide=model.hide,
            s1_covariance=model.s1_covariance,
        )  # fmt: skip

    reference = decode("gei2m", reference_steps)
    result: dict[str, Any] = {
        "k": k,
        "s1_on_head": model.s1_on_head(model.generate),
        "generate": model.generate.text,
        "reference": f"gei2m, {reference_steps} steps ({2 * reference_steps} NFE)",
        "reference_psnr_vs_half": psnr(decode("gei2m", reference_steps // 2), reference),
        "curves": {},
        "errors": {},
        "splits": {},
        "round_trip": {},
        "encode_split": encode_split,
        "calibrated": {},
    }
    if calibrate and splits:
        result["calibrated"] = calibrated_knots(
            model, latents, reference, reference_steps, splits, solvers, calibrate
        )
    for solver in solvers:
        per_step = NFE_PER_STEP[solver]
        fits = phase_errors(decode, reference, solver, k, probe) if k > 1 else None
        result["errors"][solver] = fits
        for spacing in SPACINGS:
            for split in SPLITS if k > 1 else ("schedule",):
                curve = {}
                for nfe in nfes:
                    total = nfe // per_step
                    if total < k:
                        continue
                    steps = split_steps(split, model.generate, total, fits)
                    curve[str(nfe)] = round(psnr(decode(solver, steps, spacing), reference), 2)
                result["curves"][f"{solver}/{spacing}/{split}"] = curve
        encoded: dict[tuple[int, ...], np.ndarray] = {}
        for counts in splits:
            name = f"{solver}/tau/{'-'.join(map(str, counts))}"
            network = (
                network_steps(model.generate, counts) if model.s1_on_head(model.generate) else sum(counts)
            )
            result["curves"][name] = {
                str(network * per_step): round(psnr(decode(solver, counts), reference), 2)
            }
            if images is not None:
                by = tuple(encode_split or counts)
                if by not in encoded:
                    encoded[by] = grouplat.encode(
                        model.velocity, images, model.space, model.generate, list(by), solver,
                        std=model.std, mean=model.mean, hide=model.hide, s1_covariance=model.s1_covariance,
                    )  # fmt: skip
                back = decode(solver, counts, "tau", None, encoded[by])
                result["round_trip"][name] = round(psnr(back, images), 2)
        if fits is not None:
            steps = split_steps("measured", model.generate, target // per_step, fits)
            result["splits"][solver] = {"steps": steps, "schedule": Schedule.from_steps(steps).text}
    result["best"] = best(result["curves"], target)
    return result


def calibrated_knots(
    model: Any,
    latents: np.ndarray,
    reference: np.ndarray,
    reference_steps: int,
    splits: Sequence[list[int]],
    solvers: Sequence[str],
    passes: int,
) -> dict[str, dict]:
    """Per solver and split: knots fitted to `latents`' PSNR against `reference`, and the PSNR of
    as many other latents (seed 1, their own reference) with the even and the fitted knots."""
    others = np.random.default_rng(1).standard_normal(latents.shape).astype(np.float32)

    def decode(z: np.ndarray, solver: str, steps: Sequence[int], knots: Any = None) -> np.ndarray:
        return grouplat.decode(
            model.velocity, z, model.space, model.generate, list(steps), solver,
            std=model.std, mean=model.mean, hide=model.hide, s1_covariance=model.s1_covariance, knots=knots,
        )  # fmt: skip

    held_out_reference = grouplat.decode(
        model.velocity, others, model.space, model.generate, reference_steps, "gei2m",
        std=model.std, mean=model.mean, hide=model.hide, s1_covariance=model.s1_covariance,
    )  # fmt: skip
    result = {}
    for solver in solvers:
        for counts in splits:

            def score(knots: list[np.ndarray], solver: str = solver, counts: list[int] = counts) -> float:
                return psnr(decode(latents, solver, counts, knots), reference)

            knots, fitted = calibrate_knots(score, counts, passes)
            result[f"{solver}/tau/{'-'.join(map(str, counts))}"] = {
                "knots": [[round(float(u), 4) for u in k] for k in knots],
                "fit": [round(psnr(decode(latents, solver, counts), reference), 2), round(fitted, 2)],
                "held_out": [
                    round(psnr(decode(others, solver, counts, chosen), held_out_reference), 2)
                    for chosen in (None, knots)
                ],
            }
    return result


def phase_errors(decode: Any, reference: np.ndarray, solver: str, k: int, probe: int) -> list[dict]:
    """Per group j: the end-to-end RMS error when only phase j is coarse (n and 2n steps), fitted
    as `C n^(−p)`."""
    many = max(4 * probe, 16)  # steps of the other phases: their error must be far below phase j's
    fits = []
    for j in range(k):
        errors = []
        for n in (probe, 2 * probe):
            steps = [many] * k
            steps[j] = n
            errors.append(float(np.sqrt(np.mean((decode(solver, steps) - reference) ** 2))) + 1e-12)
        order = float(np.clip(np.log2(errors[0] / errors[1]), 0.5, 4.0))
        fits.append(
            {
                "C": errors[0] * probe**order,
                "p": order,
                "rms": {str(probe): errors[0], str(2 * probe): errors[1]},
            }
        )
    return fits


def split_steps(split: str, schedule: Schedule, total: int, fits: list[dict] | None) -> list[int]:
    """Steps per group (S1 first) for a total."""
    k = schedule.k
    if split == "schedule" or fits is None:
        return allocate_steps(schedule, total).tolist()
    if split == "even":
        return allocate_steps(Schedule.from_cuts([j / k for j in range(1, k)]), total).tolist()
    floor = min(3, total // k)
    steps = [floor] * k
    for _ in range(total - floor * k):  # greedy: the next step goes where the error falls most

        def gain(j: int) -> float:
            c, p = fits[j]["C"], fits[j]["p"]
            return c * steps[j] ** -p - c * (steps[j] + 1) ** -p

        steps[max(range(k), key=gain)] += 1
    return steps


def best(curves: dict[str, dict[str, float]], target: int) -> dict[str, Any]:
    """The setting with the highest PSNR at an NFE ≤ target."""
    rows = [(psnr_db, int(nfe), name) for name, curve in curves.items() for nfe, psnr_db in curve.items()
            if int(nfe) <= target]  # fmt: skip
    psnr_db, nfe, name = max(rows)
    return {"setting": name, "nfe": nfe, "psnr_db": psnr_db}


def markdown(report: dict) -> str:
    lines = []
    for path, r in report["models"].items():
        nfes = sorted({int(n) for curve in r["curves"].values() for n in curve})
        lines += [
            f"### {path}",
            "",
            f"{report['settings']['latents']} N(0, I) latents; reference {r['reference']} "
            f"(vs half its steps: {r['reference_psnr_vs_half']:.1f} dB); "
            f"generation schedule {r['generate']}. One-way decode PSNR (dB):"
            + (
                " (S1's phase runs on the S1 head alone: a split's NFE counts S2..Sk's steps only; "
                "the curves' NFE counts every step)"
                if r.get("s1_on_head")
                else ""
            ),
            "",
            "| solver / spacing / split | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
            "|---|" + "---:|" * len(nfes),
        ]
        for name, curve in r["curves"].items():
            cells = [f"{curve[str(n)]:.1f}" if str(n) in curve else "" for n in nfes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if r.get("round_trip"):
            trips = ", ".join(f"{name} {db:.1f}" for name, db in r["round_trip"].items())
            count = report["settings"]["latents"]
            how = f"encoded with {r['encode_split']}" if r.get("encode_split") else "same split both ways"
            lines += ["", f"Round trip of {count} held-out images (encode, then decode, same solver; {how}), "
                      f"PSNR (dB): {trips}."]  # fmt: skip
        if r["splits"]:
            lines += [
                "",
                f"Measured splits at {report['settings']['target_nfe']} NFE (steps S1..Sk → schedule):",
                "",
            ]
            for solver, s in r["splits"].items():
                share = " / ".join(
                    f"{e['rms'][str(report['settings']['probe'])]:.2g}" for e in r["errors"][solver]
                )
                lines.append(
                    f"- {solver}: {s['steps']} → `{s['schedule']}` (phase-alone RMS error S1..Sk: {share})"
                )
        if r.get("calibrated"):
            count = report["settings"]["latents"]
            passes = report["settings"]["calibrate"]
            lines += ["", f"Calibrated knots ({passes} passes, fitted on the latents above, checked on "
                      f"{count} others), PSNR (dB) even → calibrated:", ""]  # fmt: skip
            for name, c in r["calibrated"].items():
                lines.append(
                    f"- {name}: other latents {c['held_out'][0]:.1f} → **{c['held_out'][1]:.1f}** "
                    f"(fitted ones {c['fit'][0]:.1f} → {c['fit'][1]:.1f}); knots {c['knots']}"
                )
        b = r["best"]
        target = report["settings"]["target_nfe"]
        lines += [
            "",
            f"Best at ≤ {target} NFE: **{b['setting']}**, {b['nfe']} NFE, {b['psnr_db']:.1f} dB.",
            "",
        ]
    lines.append(f"Measured in {report['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grouplat")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["solvers", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
