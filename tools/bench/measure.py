"""Every measurement of one net, interleaved round by round (see `grouplat.tools.bench`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import grouplat
from grouplat.serving.contract import DECODE, ENCODE, GROUPS, IMAGE, IMAGE_A, IMAGE_B, LATENT, MIX, OUTPUTS
from grouplat.solvers import NFE_PER_STEP
from grouplat.tools.bench.load import load_summary, load_window, start_all
from grouplat.tools.bench.nets import Net
from grouplat.tools.perf_analyzer import held_out_images, infer

OPERATIONS = (ENCODE, DECODE, MIX)

logger = logging.getLogger(__name__)


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
        name: replace(ServingOptions(steps=args.steps, solver=args.solver), **overrides).resolved(info)
        for name, overrides in variants.items()
    }
    schedule = default_generate_schedule(info, ServingOptions())
    solve = info.solve_args(schedule, args.steps, args.solver)
    engine = OnnxVelocity(net.onnx, threads=threads)  # the in-process loop: all cores, as PyTorch
    eager = numpy_velocity(net.network)
    images = held_out_images(2, space.shape)
    latent = grouplat.encode(engine, images[:1], **solve)
    levels = info.train_schedule.conditioning(np.full(1, 0.5), hide=info.hide)
    groups = np.zeros((1, space.k), bool)
    groups[0, 0] = True  # mix takes S1 from B
    requests = {
        ENCODE: {IMAGE: images[:1]},
        DECODE: {LATENT: latent},
        MIX: {IMAGE_A: images[:1], IMAGE_B: images[1:], GROUPS: groups},
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
        start_all(list(servers.values()), stack)
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
            progress(f"{net.name}: round {r + 1}/{args.rounds} done")
    median = {name: float(np.median(values)) for name, values in samples.items()}
    served: dict[str, Any] = {}
    for name, o in options.items():
        assert o.steps is not None  # resolved
        nfe = o.steps * NFE_PER_STEP[o.solver]
        forward = median[_forward(o.threads, o.spinning)]
        latency = {op: median[f"served {op}, {name}"] for op in OPERATIONS}
        load = {op: {n: load_summary(windows[(name, op, n)]) for n in args.clients} for op in args.load_ops}
        low, high = min(args.clients), max(args.clients)
        served[name] = {
            "options": asdict(o),
            "nfe": nfe,
            "latency_s": latency,
            "P1": {op: latency[op] / (nfe * forward) for op in (ENCODE, DECODE)},
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


def progress(message: str) -> None:
    """Progress of a long benchmark, logged at INFO with the load average."""
    logger.info("%s (load %.2f)", message, os.getloadavg()[0])
