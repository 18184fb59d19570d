"""`grouplat bench` command line (the measurements are described in `grouplat.tools.bench`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from grouplat.settings import DEFAULT_SOLVER, DEFAULT_STEPS
from grouplat.solvers import NFE_PER_STEP
from grouplat.tools import bench
from grouplat.tools.bench.load import parse_variant
from grouplat.tools.bench.measure import OPERATIONS, bench_net, progress
from grouplat.tools.bench.nets import (
    NETS,
    P4_IMAGES,
    P4_REFERENCE_STEPS,
    P4_SOLVERS,
    P4_STEPS,
    P4_TARGET_DB,
    load_net,
    round_trip_nfe,
)
from grouplat.tools.bench.report import headline, machine, report
from grouplat.tools.perf_analyzer import held_out_images

VARIANTS = ("inprocess", "bls:velocity_call=bls,orchestrator_instances=4")  # the first is the headline
FULL = dict(nets="demo,ffhq64", steps=DEFAULT_STEPS, rounds=3, repeats=3, seconds=5.0)
QUICK = dict(nets="demo", steps=4, rounds=1, repeats=1, seconds=0.3)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grouplat bench` to the top-level CLI (grouplat.cli)."""
    p = subparsers.add_parser(
        "bench",
        help="latency / throughput table and the ratios P1-P4 (engine, ODE loop, served)",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", help="the demo model (default: the shapes32 network, random weights)")
    p.add_argument("--nets", help=f"comma-separated, of {', '.join(NETS)} (default {FULL['nets']})")
    p.add_argument("--steps", type=int, help=f"ODE steps per request and loop (default {FULL['steps']})")
    p.add_argument(
        "--solver", default=DEFAULT_SOLVER, choices=list(NFE_PER_STEP), help=f"default {DEFAULT_SOLVER}"
    )
    p.add_argument(
        "--instances", type=int, help="--scheduler: orchestrator instances (default: the export default)"
    )
    p.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL['rounds']})")
    p.add_argument(
        "--repeats", type=int, help=f"single-request repeats per round (default {FULL['repeats']})"
    )
    p.add_argument("--seconds", type=float, help=f"seconds per load window (default {FULL['seconds']})")
    p.add_argument("--clients", default="1,4,8", help="concurrent clients (default 1,4,8)")
    p.add_argument("--load-ops", default="decode", help="operations under load (default decode)")
    p.add_argument("--threads", type=int, help="threads of the in-process loops (default: all cores)")
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="serving variant NAME:field=value,… (repeatable; default: " + " and ".join(VARIANTS) + ")",
    )
    p.add_argument("--no-p4", action="store_true", help="skip P4 even with a checkpoint")
    p.add_argument(
        "--scheduler",
        action="store_true",
        help="instead of the table: the step scheduler vs the request path (latency, a mixed load of "
        "8 clients, reuse of coarse phases, time to the first preview), the demo net",
    )
    p.add_argument(
        "--preview-split",
        default="",
        help="--scheduler: per-group steps (S1 first) whose first preview is timed beside the default's, "
        "e.g. 16,8,6,6 (the encode's S1-heavy split); default: none",
    )
    p.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="instead of the table: isolation (a small request beside a maximum-cost one) and a mixed "
        "good/bad load for SECONDS, with the servers' memory slope (the demo net)",
    )
    p.add_argument("--quick", action="store_true", help="a < 60 s smoke run: " + json.dumps(QUICK))
    p.add_argument("--out", default="bench.json", help="write the results here (default bench.json)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.scheduler:  # its own load: before the table's defaults fill in --seconds
        return run_scheduler(args)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in nets if n not in NETS]
    if unknown or not nets:
        print(f"grouplat bench: error: unknown net(s) {unknown}: expected {', '.join(NETS)}", file=sys.stderr)
        return 2
    args.clients = sorted({int(n) for n in args.clients.split(",")})
    args.load_ops = [op for op in args.load_ops.split(",") if op]
    if set(args.load_ops) - set(OPERATIONS):
        print(f"grouplat bench: error: --load-ops takes {', '.join(OPERATIONS)}", file=sys.stderr)
        return 2
    if args.soak is not None:
        return run_soak(args)
    variants = dict(args.variant or [parse_variant(v) for v in VARIANTS])
    results: dict[str, Any] = {
        "machine": machine(),
        "load_average": {"start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("handler", "variant")},
        "variants": variants,
        "nets": {},
    }
    started = time.perf_counter()
    for name in nets:
        progress(f"{name}: loading and exporting")
        net = load_net(name, args.checkpoint)
        results["nets"][name] = bench_net(net, variants, args)
        if name == nets[0] and net.trained and not args.no_p4:
            from grouplat.export.repository import ServingOptions, default_generate_schedule
            from grouplat.serving.engines import OnnxVelocity

            progress(f"{name}: P4 (round trips)")
            engine = OnnxVelocity(net.onnx, threads=args.threads or os.cpu_count() or 1)
            schedule = default_generate_schedule(net.info, ServingOptions())
            images = held_out_images(P4_IMAGES, net.info.space.shape)
            ladder, reference = (P4_STEPS[:6], 128) if args.quick else (P4_STEPS, P4_REFERENCE_STEPS)
            results["p4"] = round_trip_nfe(
                engine, images, net.info, schedule, P4_SOLVERS, P4_TARGET_DB, ladder, reference
            )
    results["load_average"]["end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    results["ratios"] = headline(results, next(iter(variants)), args.load_ops)
    text = report(results)
    print(text)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['seconds']:.0f} s)")
    return 0


def run_scheduler(args: argparse.Namespace) -> int:
    from grouplat.tools.bench.scheduler import bench_scheduler, scheduler_report

    progress("scheduler: step vs request path on the demo net")
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "load_average": {"start": os.getloadavg()}}
    seconds, clients, repeats = (2.0, 4, 2) if args.quick else (args.seconds or 20.0, 8, 7)
    net = load_net("demo", args.checkpoint)
    try:
        split = tuple(int(n) for n in args.preview_split.split(",")) if args.preview_split else None
        if split is not None and (len(split) != net.info.space.k or min(split) < 1):
            raise ValueError
    except ValueError:
        print(f"grouplat bench: --preview-split needs {net.info.space.k} positive counts (S1 first), "
              f"got {args.preview_split!r}", file=sys.stderr)  # fmt: skip
        return 2
    measured = bench_scheduler(net, seconds, clients, repeats, instances=args.instances, preview_split=split)
    results.update(measured)
    results["load_average"]["end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    print(scheduler_report(results))
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['seconds']:.0f} s)")
    return 0


def run_soak(args: argparse.Namespace) -> int:
    from grouplat.tools.bench.soak import soak, soak_report

    progress(f"soak: {args.soak:g} s on the demo net")
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "load_average": {"start": os.getloadavg()}}
    results.update(soak(load_net("demo", args.checkpoint), args.soak, max_cost=128 if args.quick else None))
    results["load_average"]["end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - started
    print(soak_report(results))
    Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwritten {args.out} ({results['seconds']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m grouplat.tools.bench.cli ...`, the same as `grouplat bench ...`."""
    from grouplat.cli import configure_logging

    parser = argparse.ArgumentParser(prog="grouplat")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    configure_logging()  # progress at $GROUPLAT_LOG_LEVEL (default INFO) on stderr, as `grouplat bench`
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
