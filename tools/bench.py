"""`grouplat bench`: the latency / throughput table and the ratios P1–P4, in one process tree.

For each net — the demo model (`--checkpoint`, else the shapes32 network with random weights) and
the ffhq64-sized network (random weights: fine for timing) — it measures, interleaved round by
round so that a change in the machine's load hits every figure alike:

- the bare engine forward at batch 1 (ONNX Runtime, with the served threads / spinning);
- the ODE loop in-process: `grouplat.decode` over the same engine, no server;
- the same loop in PyTorch eager (`numpy_velocity(net)`, the researcher's baseline);
- served encode / decode / mix at batch 1 over gRPC, for each serving variant (default: velocity
  calls in-process and through BLS), each variant on its own embedded tritonserver;
- throughput and p50 / p90 / p99 latency with 1, 4 and 8 closed-loop gRPC clients.

It prints markdown tables of medians and the ratios, and writes everything as JSON:

    P1  served decode latency at batch 1 ÷ (NFE × bare forward)      goal ≤ 1.10
    P2  PyTorch eager ODE loop ÷ in-process engine ODE loop          goal ≥ 2
    P3  throughput at 8 clients ÷ 1 client, with p99 ≤ 2 × p50       goal ≥ 1.5
    P4  NFE for round-trip PSNR ≥ 40 dB, Euler vs Heun (needs a trained --checkpoint)

NFE = steps × network evaluations per step (Heun: 2). `--variant NAME:key=value,…` adds a serving
variant (any `ServingOptions` field), to tune the defaults, e.g.
`--variant bls2:velocity_call=bls,velocity_instances=2`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import grouplat
from grouplat.modelinfo import ModelInfo
from grouplat.tools.perf_analyzer import held_out_shapes, infer

NETS = {"demo": "shapes32", "ffhq64": "ffhq64"}  # net → network preset (grouplat.training.presets)
RESOLUTION = {"shapes32": 32, "ffhq64": 64}
OPERATIONS = ("encode", "decode", "mix")
OUTPUTS = {"encode": "LATENT", "decode": "IMAGE", "mix": "IMAGE"}
NFE_PER_STEP = {"euler": 1, "heun": 2, "gei1": 1, "gei2m": 2}
VARIANTS = ("inprocess", "bls:velocity_call=bls,orchestrator_instances=4")  # the first is the headline
GOALS = {"P1": "≤ 1.10", "P2": "≥ 2", "P3": "≥ 1.5, p99 ≤ 2 × p50", "P4": "report"}
P4_SOLVERS = ("euler", "heun")
P4_TARGET_DB = 40.0
P4_STEPS = tuple(2**i for i in range(2, 12))  # 4 … 2048 steps, tried until the round trip reaches the target
P4_REFERENCE_STEPS = 256  # Heun (64 dB round trip on the demo model), for the one-way decode PSNR beside it
P4_IMAGES = 8
FULL = dict(nets="demo,ffhq64", steps=20, rounds=3, repeats=3, seconds=5.0)
QUICK = dict(nets="demo", steps=4, rounds=1, repeats=1, seconds=0.3)


@dataclass
class Net:
    name: str
    preset: str  # the preset, or the checkpoint's path
    network: Any  # torch.nn.Module, eval mode
    info: ModelInfo
    onnx: bytes
    trained: bool


def random_network(preset: str, seed: int = 0, scale: float = 0.02) -> tuple[Any, ModelInfo]:
    """A preset's U-Net at its resolution with random weights (perturbed so that no layer is exactly
    zero), the paper's groups, unit data statistics."""
    import torch

    from grouplat.training.networks import build_network
    from grouplat.training.presets import PRESETS

    size = RESOLUTION[preset]
    space = grouplat.LatentSpace((3, size, size), "dct", grouplat.PAPER_BOUNDARIES)
    config = {**PRESETS[preset]["network"], "channels": 3, "resolution": [size, size], "levels": space.k}
    torch.manual_seed(seed)
    network = build_network({**config, "dropout": 0.0}).eval()
    with torch.no_grad():
        for p in network.parameters():
            p.add_(scale * torch.randn_like(p))
    ones = np.ones(space.latent_shape, np.float32)
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN)
    return network, ModelInfo(f"random-{preset}", space, schedule, True, 0 * ones, ones)


def load_net(name: str, checkpoint: str | None = None) -> Net:
    from grouplat.export.engine import export_onnx, model_info
    from grouplat.training.checkpoint import load_checkpoint

    if name == "demo" and checkpoint:
        loaded = load_checkpoint(checkpoint)
        network, info, label, trained = loaded.network, model_info(loaded), str(loaded.path), True
    else:
        network, info = random_network(NETS[name])
        label, trained = NETS[name], False
    return Net(name, label, network, info, export_onnx(network, info), trained)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / max(float(np.mean((a - b) ** 2)), 1e-20)))


def round_trip_nfe(
    velocity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    images: np.ndarray,
    info: ModelInfo,
    schedule: grouplat.Schedule,
    solvers: Sequence[str] = P4_SOLVERS,
    target_db: float = P4_TARGET_DB,
    ladder: Sequence[int] = P4_STEPS,
    reference_steps: int = P4_REFERENCE_STEPS,
) -> dict[str, Any]:
    """P4: per solver, the least NFE on `ladder` whose encode → decode round trip reaches `target_db`,
    the round-trip PSNR at each NFE tried, and the one-way decode PSNR at the NFE found (against a
    `reference_steps` Heun decode of the reference latents): the round trip flatters the solver."""
    reference = info.solve_args(schedule, reference_steps, "heun")
    z = grouplat.encode(velocity, images, **reference)
    decoded = grouplat.decode(velocity, z, **reference)
    out: dict[str, Any] = {"target_db": target_db, "images": len(images), "reference_steps": reference_steps}
    for solver in solvers:
        curve: dict[int, float] = {}
        found: int | None = None
        one_way: float | None = None
        for steps in (s for s in ladder if s >= info.space.k):
            kw = info.solve_args(schedule, steps, solver)
            back = grouplat.decode(velocity, grouplat.encode(velocity, images, **kw), **kw)
            nfe = steps * NFE_PER_STEP[solver]
            curve[nfe] = round(psnr(back, images), 2)
            if curve[nfe] >= target_db:
                found = nfe
                one_way = round(psnr(grouplat.decode(velocity, z, **kw), decoded), 2)
                break
        out[solver] = {"nfe": found, "round_trip_psnr_db": curve, "one_way_psnr_db": one_way}
    return out


# -- serving -------------------------------------------------------------------------------------
def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:key=value,key=value` → (NAME, ServingOptions overrides)."""
    from grouplat.export.repository import ServingOptions

    name, _, spec = text.partition(":")
    defaults = ServingOptions()
    overrides: dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not hasattr(defaults, key):
            raise argparse.ArgumentTypeError(
                f"bad variant item {item!r}: expected a ServingOptions field=value"
            )
        current = getattr(defaults, key)
        if isinstance(current, bool):
            overrides[key] = value.lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            overrides[key] = int(value)
        else:
            overrides[key] = value
    if not name:
        raise argparse.ArgumentTypeError(f"variant {text!r} has no name")
    return name, overrides


def load_window(
    url: str, operation: str, inputs: dict[str, np.ndarray], clients: int, seconds: float
) -> dict[str, Any]:
    """Closed-loop clients for `seconds` (each completes at least one request): latencies, elapsed."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        try:
            with contextlib.closing(grpcclient.InferenceServerClient(url)) as client:
                done = 0
                while done == 0 or time.perf_counter() < stop:
                    start = time.perf_counter()
                    infer(client, operation, OUTPUTS[operation], **inputs)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                    done += 1
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"latencies": latencies, "elapsed": time.perf_counter() - begin}


def load_summary(windows: list[dict[str, Any]]) -> dict[str, float]:
    latencies = np.concatenate([w["latencies"] for w in windows])
    elapsed = sum(w["elapsed"] for w in windows)
    p50, p90, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 99))
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_s": p50,
        "p90_s": p90,
        "p99_s": p99,
        "n": len(latencies),
    }


def _start_all(servers: list[Any], stack: contextlib.ExitStack) -> None:
    """Start the servers in parallel; every one is stopped (in parallel) when `stack` closes."""

    def stop_all() -> None:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.stop(), servers))

    stack.callback(stop_all)
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))


# -- one net ---------------------------------------------------------------------------------------
def bench_net(net: Net, variants: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one net, interleaved over `args.rounds` rounds; medians and ratios."""
    import torch
    import tritonclient.grpc as grpcclient

    from grouplat.export.repository import ServingOptions, default_generate_schedule, write_repository
    from grouplat.serving.engines import OnnxVelocity
    from grouplat.serving.server import EmbeddedServer
    from grouplat.training.networks import numpy_velocity

    info, space = net.info, net.info.space
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    options = {
        name: replace(ServingOptions(steps=args.steps, solver=args.solver), **overrides)
        for name, overrides in variants.items()
    }
    schedule = default_generate_schedule(info, ServingOptions())
    solve = info.solve_args(schedule, args.steps, args.solver)
    engine = OnnxVelocity(net.onnx, threads=threads)  # the in-process loop: all cores, as PyTorch
    eager = numpy_velocity(net.network)
    images = held_out_shapes(2, space.shape)
    latent = grouplat.encode(engine, images[:1], **solve)
    levels = info.train_schedule.conditioning(np.full(1, 0.5), hide=info.hide)
    groups = np.zeros((1, space.k), bool)
    groups[0, 0] = True  # mix takes S1 from B
    requests = {
        "encode": {"IMAGE": images[:1]},
        "decode": {"LATENT": latent},
        "mix": {"IMAGE_A": images[:1], "IMAGE_B": images[1:], "GROUPS": groups},
    }
    forwards = {_forward(o.threads, o.spinning): o for o in options.values()}  # as served: P1's denominator
    probes: dict[str, Callable[[], Any]] = {
        key: partial(OnnxVelocity(net.onnx, o.threads, o.spinning), images[:1], levels)
        for key, o in forwards.items()
    }
    probes[_forward(threads, False) + " (the loop's engine)"] = partial(engine, images[:1], levels)
    probes["forward, PyTorch eager"] = partial(eager, images[:1], levels)
    probes["ODE loop, engine in-process"] = partial(grouplat.decode, engine, latent, **solve)
    probes["ODE loop, PyTorch eager"] = partial(grouplat.decode, eager, latent, **solve)

    samples: dict[str, list[float]] = defaultdict(list)
    windows: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="grouplat-bench-") as tmp, contextlib.ExitStack() as stack:
        servers = {}
        for name, o in options.items():
            write_repository(Path(tmp) / name, info, net.onnx, o)
            servers[name] = EmbeddedServer(Path(tmp) / name, startup_timeout=600)
        _start_all(list(servers.values()), stack)
        for name, server in servers.items():
            client = stack.enter_context(
                contextlib.closing(grpcclient.InferenceServerClient(server.grpc_url))
            )
            for operation in OPERATIONS:  # warm up
                infer(client, operation, OUTPUTS[operation], **requests[operation])
                probes[f"served {operation}, {name}"] = partial(
                    infer, client, operation, OUTPUTS[operation], **requests[operation]
                )
        for r in range(args.rounds):
            for name, probe in probes.items():
                for _ in range(args.repeats * (5 if name.startswith("forward") else 1)):
                    start = time.perf_counter()
                    probe()
                    samples[name].append(time.perf_counter() - start)
            for variant, server in servers.items():
                for operation in args.load_ops:
                    for n in args.clients:
                        window = load_window(server.grpc_url, operation, requests[operation], n, args.seconds)
                        windows[(variant, operation, n)].append(window)
            _progress(f"{net.name}: round {r + 1}/{args.rounds} done")
    median = {name: float(np.median(values)) for name, values in samples.items()}
    served: dict[str, Any] = {}
    for name, o in options.items():
        nfe = o.steps * NFE_PER_STEP[o.solver]
        forward = median[_forward(o.threads, o.spinning)]
        latency = {op: median[f"served {op}, {name}"] for op in OPERATIONS}
        load = {op: {n: load_summary(windows[(name, op, n)]) for n in args.clients} for op in args.load_ops}
        low, high = min(args.clients), max(args.clients)
        served[name] = {
            "options": asdict(o),
            "nfe": nfe,
            "latency_s": latency,
            "P1": {op: latency[op] / (nfe * forward) for op in ("encode", "decode")},
            "load": load,
            "P3": {
                op: {
                    "value": load[op][high]["requests_per_s"] / load[op][low]["requests_per_s"],
                    "p99_within_2x_p50": load[op][high]["p99_s"] <= 2 * load[op][high]["p50_s"],
                    "clients": [low, high],
                }
                for op in args.load_ops
            },
        }
    return {
        "preset": net.preset,
        "trained": net.trained,
        "fingerprint": info.fingerprint,
        "params": sum(int(p.numel()) for p in net.network.parameters()),
        "space": space.describe(),
        "steps": args.steps,
        "solver": args.solver,
        "nfe": args.steps * NFE_PER_STEP[args.solver],
        "loop_threads": threads,
        "median_s": median,
        "samples": {name: len(values) for name, values in samples.items()},
        "served": served,
        "P2": median["ODE loop, PyTorch eager"] / median["ODE loop, engine in-process"],
    }


def _forward(threads: int, spinning: bool) -> str:
    return f"forward, {threads} thread{'s' * (threads > 1)}{', spinning' * spinning}"


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)


# -- report ----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), ""
        )
    info["cores"] = os.cpu_count()
    info["usable_cores"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    with contextlib.suppress(OSError, StopIteration, ValueError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        info["memory_gib"] = round(
            int(next(x for x in meminfo if x.startswith("MemTotal")).split()[1]) / 2**20, 1
        )
    for package in ("numpy", "onnxruntime", "torch", "nvidia-pytriton", "tritonclient"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    info["tritonserver"] = "2.51.0 (nvidia-pytriton's embedded binary)"
    return info


def headline(results: dict[str, Any], first_variant: str, load_ops: Sequence[str]) -> dict[str, Any]:
    """The four ratios of the first net (the demo model) and the first serving variant."""
    net_name = next(iter(results["nets"]))
    net = results["nets"][net_name]
    served = net["served"][first_variant]
    op = "decode" if "decode" in load_ops else load_ops[0]
    p1, p2, p3 = served["P1"]["decode"], net["P2"], served["P3"][op]
    where = f"{net_name}, {first_variant}"
    ratios: dict[str, Any] = {
        "P1": {"value": p1, "met": p1 <= 1.10, "what": f"served decode ÷ (NFE × forward), {where}"},
        "P2": {"value": p2, "met": p2 >= 2.0, "what": f"PyTorch eager loop ÷ engine loop, {net_name}"},
        "P3": {
            "value": p3["value"],
            "met": p3["value"] >= 1.5 and p3["p99_within_2x_p50"],
            "what": f"{op} throughput at {p3['clients'][1]} ÷ {p3['clients'][0]} clients, {where}",
            "p99_within_2x_p50": p3["p99_within_2x_p50"],
        },
    }
    p4 = results.get("p4")
    ratios["P4"] = {
        "value": None if p4 is None else {s: p4[s]["nfe"] for s in P4_SOLVERS},
        "met": None,
        "what": f"NFE for round-trip PSNR ≥ {P4_TARGET_DB:g} dB, Euler vs Heun, {net_name}",
    }
    if p4 is None:
        ratios["P4"]["note"] = "n/a: not measured (random weights or --no-p4)"
    for key, ratio in ratios.items():
        ratio["goal"] = GOALS[key]
    return ratios


def report(results: dict[str, Any]) -> str:
    """Markdown: the machine, medians per net, the load tables, the ratios."""
    m = results["machine"]
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m['usable_cores']} cores, {m.get('memory_gib', '?')} GiB; "
        f"load average {results['load_average']['start'][0]:.2f} at start, "
        f"{results['load_average']['end'][0]:.2f} at end; onnxruntime {m.get('onnxruntime')}, "
        f"torch {m.get('torch')}, tritonserver 2.51.",
        "",
    ]
    for name, net in results["nets"].items():
        shape = "×".join(map(str, net["space"]["shape"]))
        lines += [
            f"**{name}** ({net['preset']}, {net['params'] / 1e6:.2f} M parameters, {shape}, "
            f"{'trained' if net['trained'] else 'random weights'}; {net['solver']} {net['steps']} steps = "
            f"{net['nfe']} NFE, batch 1)",
            "",
            "| measurement | median ms | samples |",
            "|---|---:|---:|",
        ]
        lines += [f"| {k} | {v * 1e3:.2f} | {net['samples'][k]} |" for k, v in net["median_s"].items()]
        lines += ["", "| variant | operation | clients | requests/s | p50 ms | p90 ms | p99 ms | n |"]
        lines += ["|---|---|---:|---:|---:|---:|---:|---:|"]
        for variant, row in net["served"].items():
            for op, by_clients in row["load"].items():
                for n, s in by_clients.items():
                    lines.append(
                        f"| {variant} | {op} | {n} | {s['requests_per_s']:.2f} | {s['p50_s'] * 1e3:.1f} | "
                        f"{s['p90_s'] * 1e3:.1f} | {s['p99_s'] * 1e3:.1f} | {s['n']} |"
                    )
        lines += ["", "| variant | P1 encode | P1 decode | P3 (p99 ≤ 2 × p50) |", "|---|---:|---:|---|"]
        for variant, row in net["served"].items():
            p3 = ", ".join(
                f"{op} {v['value']:.2f} ({'yes' if v['p99_within_2x_p50'] else 'no'})"
                for op, v in row["P3"].items()
            )
            lines.append(f"| {variant} | {row['P1']['encode']:.2f} | {row['P1']['decode']:.2f} | {p3} |")
        lines += ["", f"P2 (eager loop ÷ engine loop): {net['P2']:.2f}", ""]
    lines += ["| ratio | value | goal | met | what |", "|---|---|---|---|---|"]
    for key, r in results["ratios"].items():
        text = f"{r['value']:.2f}" if isinstance(r["value"], float) else r.get("note", "n/a")
        if key == "P4" and results.get("p4"):
            text = "; ".join(_p4_text(solver, results["p4"][solver]) for solver in P4_SOLVERS)
        met = "—" if r["met"] is None else "yes" if r["met"] else "no"
        lines.append(f"| {key} | {text} | {r['goal']} | {met} | {r['what']} |")
    return "\n".join(lines)


def _p4_text(solver: str, row: dict[str, Any]) -> str:
    if row["nfe"] is None:
        return f"{solver} > {max(map(int, row['round_trip_psnr_db']))} NFE"
    return f"{solver} {row['nfe']} NFE (one-way decode {row['one_way_psnr_db']:.1f} dB)"


# -- command line ----------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grouplat bench` to the top-level CLI (grouplat.cli)."""
    p = subparsers.add_parser(
        "bench",
        help="latency / throughput table and the ratios P1-P4 (engine, ODE loop, served)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", help="the demo model (default: the shapes32 network, random weights)")
    p.add_argument("--nets", help=f"comma-separated, of {', '.join(NETS)} (default {FULL['nets']})")
    p.add_argument("--steps", type=int, help=f"ODE steps per request and loop (default {FULL['steps']})")
    p.add_argument("--solver", default="heun", choices=list(NFE_PER_STEP), help="solver (default heun)")
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
    p.add_argument("--quick", action="store_true", help="a < 60 s smoke run: " + json.dumps(QUICK))
    p.add_argument("--out", default="bench.json", help="write the results here (default bench.json)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
        _progress(f"{name}: loading and exporting")
        net = load_net(name, args.checkpoint)
        results["nets"][name] = bench_net(net, variants, args)
        if name == nets[0] and net.trained and not args.no_p4:
            from grouplat.export.repository import ServingOptions, default_generate_schedule
            from grouplat.serving.engines import OnnxVelocity

            _progress(f"{name}: P4 (round trips)")
            engine = OnnxVelocity(net.onnx, threads=args.threads or os.cpu_count() or 1)
            schedule = default_generate_schedule(net.info, ServingOptions())
            images = held_out_shapes(P4_IMAGES, net.info.space.shape)
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


def main(argv: list[str] | None = None) -> int:
    """`python -m grouplat.tools.bench ...`, the same as `grouplat bench ...`."""
    parser = argparse.ArgumentParser(prog="grouplat")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
