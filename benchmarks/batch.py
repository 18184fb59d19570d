"""Batch job throughput (issue 9): items/s of `grouplat batch encode` (the local engine) against the
naive loop (one request per image, one after another) and across --concurrency 1, 2, 4, 8.

    python benchmarks/batch.py                                   # the oracle repository, built here
    python benchmarks/batch.py --repository REPO [--images 400] [--steps 20] [--out batch.json]
    python benchmarks/batch.py --server HOST:PORT                # a server that is already running

Images are PNG files of the served model's size (uniform noise: the cost of an encode does not depend
on the pixels). Every figure is the best of --repeats runs, each job into a fresh output folder, so
reading the files, the requests and writing the shards are all counted. The load average is printed
beside the figures: on a busy machine they mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grouplat.client import Client
from grouplat.client.batch.job import Task, run
from grouplat.serving.server import EmbeddedServer

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def serving(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    if args.server:
        yield args.server
        return
    repository = args.repository
    if repository is None:  # the exact oracle of the tests, as a model repository
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import oracle_repository_at

        from grouplat.export.repository import ServingOptions

        options = ServingOptions(orchestrator_instances=args.instances)
        repository = oracle_repository_at(workdir / "repository", options)
    with EmbeddedServer(repository) as server:
        yield server.grpc_url


def best_rate(runs: int, job: Any) -> float:
    """Items/s of the fastest of `runs` calls of `job()`, which returns the number of items it did."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        items = job()
        rates.append(items / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", help="a model repository (default: the test oracle's)")
    parser.add_argument("--server", help="a running server's gRPC host:port instead of an embedded one")
    parser.add_argument("--instances", type=int, default=1, help="orchestrator instances (oracle only)")
    parser.add_argument("--images", type=int, default=400, help="images per job")
    parser.add_argument("--steps", type=int, default=None, help="ODE steps (default: the model's)")
    parser.add_argument("--concurrency", default="1,2,4,8", help="values of --concurrency to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="grouplat-bench-batch-") as tmp:
        workdir = Path(tmp)
        with serving(args, workdir) as server, Client(server) as client:
            info = client.info()
            c, h, w = info.space.shape
            steps = args.steps or info.settings.steps
            src = workdir / "images"
            src.mkdir()
            rng = np.random.default_rng(0)
            paths = []
            for i in range(args.images):
                pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
                paths.append(src / f"{i:06d}.png")
                Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(paths[-1])
            client.encode(str(paths[0]), steps=steps)  # warm up

            def naive() -> int:
                for path in paths:
                    client.encode(str(path), steps=steps)
                return len(paths)

            jobs = 0

            def job(concurrency: int) -> int:
                nonlocal jobs
                jobs += 1
                out = workdir / f"out-{jobs}"
                summary = run(Task("encode", steps=steps), str(src), out, server,
                              concurrency=concurrency, progress=False)  # fmt: skip
                return summary.done_now

            results: dict[str, Any] = {
                "model": info.fingerprint[:12],
                "image_shape": [c, h, w],
                "steps": steps,
                "solver": info.settings.solver,
                "images": args.images,
                "cores": os.cpu_count(),
                "load_average_before": os.getloadavg()[0],
            }
            print(f"model {results['model']} {c}×{h}×{w}, {info.settings.solver} {steps} steps, "
                  f"{args.images} images, best of {args.repeats}; load {os.getloadavg()[0]:.2f}")  # fmt: skip
            results["naive"] = best_rate(args.repeats, naive)
            print(f"naive loop (one request per image, sequential): {results['naive']:7.1f} items/s")
            results["concurrency"] = {}
            for level in levels:
                rate = best_rate(args.repeats, lambda: job(level))
                results["concurrency"][level] = rate
                print(f"batch encode --concurrency {level}: {rate:7.1f} items/s "
                      f"({rate / results['naive']:.1f}× naive; load {os.getloadavg()[0]:.2f})")  # fmt: skip
            results["load_average_after"] = os.getloadavg()[0]
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
