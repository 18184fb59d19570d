"""Served latency and throughput of encode / decode for both velocity call modes (issue 5).

For one model (a checkpoint, or the shapes32 network with random weights): the bare ONNX Runtime
forward at batch 1; single-request encode / decode latency at the default steps divided by
(NFE × bare forward); decode throughput and p50/p90/p99 latency at 1, 4 and 8 concurrent gRPC
clients — for in-process and BLS velocity calls, each on its own embedded tritonserver.

    python benchmarks/serving.py [--checkpoint CKPT] [--seconds 6] [--out serving.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from grouplat.export.repository import ServingOptions, write_repository
from grouplat.modelinfo import ModelInfo
from grouplat.server import EmbeddedServer
from grouplat.serving import OnnxVelocity

CLIENTS = (1, 4, 8)
MODES = {  # name → serving options
    "inprocess": ServingOptions(velocity_call="inprocess"),
    "bls": ServingOptions(velocity_call="bls", orchestrator_instances=4),
}


def load_model(checkpoint: str | None) -> tuple[ModelInfo, bytes]:
    import torch

    from grouplat.export.engine import export_onnx, model_info
    from grouplat.training.checkpoint import load_checkpoint

    if checkpoint:
        loaded = load_checkpoint(checkpoint)
        return model_info(loaded), export_onnx(loaded.network, model_info(loaded))
    import grouplat
    from grouplat.training.networks import build_network
    from grouplat.training.presets import PRESETS

    space = grouplat.LatentSpace((3, 32, 32), "dct", grouplat.PAPER_BOUNDARIES)
    config = {**PRESETS["shapes32"]["network"], "channels": 3, "resolution": [32, 32], "levels": 4}
    network = build_network(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ones = np.ones(space.latent_shape, np.float32)
    info = ModelInfo(
        "random-shapes32", space, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN), True, 0 * ones, ones
    )
    return info, export_onnx(network, info)


def infer(client: grpcclient.InferenceServerClient, model: str, name: str, array: np.ndarray) -> np.ndarray:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor]).as_numpy("LATENT" if model == "encode" else "IMAGE")


def median_seconds(run: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def load_test(url: str, latent: np.ndarray, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        while time.perf_counter() < stop:
            start = time.perf_counter()
            infer(client, "decode", "LATENT", latent)
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    p50, p90, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 99))
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "n": len(latencies),
    }


def report(mode: str, row: dict[str, Any]) -> None:
    print(f"\n{mode}:", ", ".join(
        f"{m} {row[m]['latency_s'] * 1e3:.1f} ms (ratio {row[m]['ratio']:.2f})" for m in ("encode", "decode")
    ))  # fmt: skip
    for n, load in row["load"].items():
        ms = {q: f"{load[q] * 1e3:6.1f}" for q in ("p50", "p90", "p99")}
        print(f"  {n} clients: {load['requests_per_s']:6.2f} decodes/s  p50 {ms['p50']} ms  p90 {ms['p90']}  "
              f"p99 {ms['p99']}  ({load['n']} requests)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: shapes32 net, random weights)")
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each load test")
    parser.add_argument("--repeats", type=int, default=7, help="single-request repetitions")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    info, onnx_model = load_model(args.checkpoint)
    steps, nfe = ServingOptions().steps, 2 * ServingOptions().steps  # Heun: 2 NFE per step
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, *info.space.shape)).astype(np.float32)
    latent = rng.standard_normal((1, *info.space.latent_shape)).astype(np.float32)
    engine = OnnxVelocity(onnx_model, threads=1)
    levels = info.train_schedule.conditioning(np.full(1, 0.5), hide=info.hide)
    engine(image, levels)
    forward = median_seconds(lambda: engine(image, levels), 50)
    results: dict[str, Any] = {
        "load_average": os.getloadavg()[0],
        "steps": steps,
        "nfe": nfe,
        "forward_s": forward,
    }
    print(f"bare ONNX Runtime forward, batch 1: {forward * 1e3:.2f} ms; {steps} Heun steps = {nfe} NFE; "
          f"floor {nfe * forward * 1e3:.1f} ms; load average {results['load_average']:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for mode, options in MODES.items():
            repository = Path(tmp) / mode
            write_repository(repository, info, onnx_model, options)
            with EmbeddedServer(repository) as server:
                client = grpcclient.InferenceServerClient(server.grpc_url)
                for _ in range(3):  # warm up both models
                    infer(client, "encode", "IMAGE", image)
                    infer(client, "decode", "LATENT", latent)
                row: dict[str, Any] = {}
                for model, name, array in (("encode", "IMAGE", image), ("decode", "LATENT", latent)):
                    call = lambda c=client, m=model, n=name, a=array: infer(c, m, n, a)  # noqa: E731
                    latency = median_seconds(call, args.repeats)
                    row[model] = {"latency_s": latency, "ratio": latency / (nfe * forward)}
                row["load"] = {n: load_test(server.grpc_url, latent, n, args.seconds) for n in CLIENTS}
            results[mode] = row
            report(mode, row)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
