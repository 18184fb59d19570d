"""Velocity engine speed (issue 4): ONNX Runtime vs PyTorch eager for the shapes32 and ffhq64
networks at batch 1 and 8 (medians of interleaved runs), export time, and the ONNX Runtime CPU
settings (intra-op threads, spin-waiting) alone and with two instances sharing the cores.
`grouplat bench` covers batch 1, the ODE loops and serving; this script the engine settings.

    python benchmarks/engine.py [--repeats 9] [--out engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouplat.export.engine import export_onnx
from grouplat.modelinfo import ModelInfo
from grouplat.serving.engines import OnnxVelocity
from grouplat.tools.bench import RESOLUTION, random_network

NETS = RESOLUTION  # preset → resolution
SETTINGS = [(1, False), (2, False), (1, True), (2, True)]  # (intra-op threads, spinning)


def network_and_info(preset: str) -> tuple[torch.nn.Module, ModelInfo]:
    return random_network(preset)  # the same nets `grouplat bench` times


def timed(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {"load_average": os.getloadavg()[0], "cores": cores}
    print(
        f"{cores} cores, torch threads {torch.get_num_threads()}, load average {results['load_average']:.2f}"
    )
    for preset in NETS:
        network, info = network_and_info(preset)
        start = time.perf_counter()
        onnx_model = export_onnx(network, info)
        export_s = time.perf_counter() - start
        engine = OnnxVelocity(onnx_model, threads=cores)
        params = sum(p.numel() for p in network.parameters())
        row: dict[str, Any] = {"params": params, "export_s": export_s}
        print(f"\n{preset}: {params / 1e6:.2f} M parameters, export {export_s:.1f} s")
        for batch in (1, 8):
            x = np.random.default_rng(batch).standard_normal((batch, *info.space.shape)).astype(np.float32)
            levels = info.train_schedule.conditioning(np.full(batch, 0.5))
            xt, lt = torch.from_numpy(x), torch.from_numpy(levels)
            with torch.no_grad():
                network(xt, lt)
                engine(x, levels)
                onnx_times, torch_times = [], []
                for _ in range(args.repeats):  # interleaved
                    onnx_times.append(timed(lambda: engine(x, levels)))
                    torch_times.append(timed(lambda: network(xt, lt)))
            ort_ms, torch_ms = 1e3 * np.median(onnx_times), 1e3 * np.median(torch_times)
            row[f"batch{batch}"] = {"onnxruntime_ms": ort_ms, "torch_eager_ms": torch_ms}
            print(f"  batch {batch}: ONNX Runtime {ort_ms:8.2f} ms   PyTorch eager {torch_ms:8.2f} ms   "
                  f"ratio {torch_ms / ort_ms:.2f}×")  # fmt: skip
        results[preset] = row
    results["cpu_settings"] = cpu_settings(args.repeats)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def cpu_settings(repeats: int) -> dict[str, Any]:
    """shapes32 at batch 1: one instance alone, then two instances running at once (as two
    Triton instances or two orchestrators would), for each threads / spinning setting."""
    network, info = network_and_info("shapes32")
    onnx_model = export_onnx(network, info)
    x = np.zeros((1, *info.space.shape), np.float32)
    levels = info.train_schedule.conditioning(np.full(1, 0.5))
    print("\nONNX Runtime CPU settings, shapes32 batch 1 (ms per forward):")
    out = {}
    for threads, spinning in SETTINGS:
        engines = [OnnxVelocity(onnx_model, threads, spinning) for _ in range(2)]
        for e in engines:
            e(x, levels)
        alone = 1e3 * np.median([timed(lambda: engines[0](x, levels)) for _ in range(5 * repeats)])
        shared: list[float] = []

        def loop(engine: OnnxVelocity) -> None:
            for _ in range(5 * repeats):
                shared.append(timed(lambda: engine(x, levels)))

        workers = [threading.Thread(target=loop, args=(e,)) for e in engines]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        both = 1e3 * float(np.median(shared))
        out[f"threads{threads}_spin{int(spinning)}"] = {"alone_ms": alone, "two_instances_ms": both}
        print(f"  threads {threads}, spinning {'on ' if spinning else 'off'}: alone {alone:6.2f}   "
              f"two instances at once {both:6.2f}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
