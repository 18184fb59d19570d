"""The GPU checks of the serving path, in one call on a lent GPU (issue 14; `--quick` runs on a CPU).

1. torch engine parity vs ONNX Runtime (CPU) at fp32, bf16 and fp16 — a forward's max abs
   difference and a whole default decode's PSNR;
2. the decode loop (the core's solver over the torch engine, its state on the GPU) at batch 1 / 8 /
   32: CUDA eager, CUDA graphs (grouplat.export.torch_engine), torch.compile — ms per decode, the
   same with the state on the host (every step through it), and ÷ (NFE × the graphed forward at
   that batch), the goal being ≤ 1.2 at batch 1 with graphs ≥ 2× faster than eager; how often one
   decode makes the host wait for the GPU (torch's sync debug mode);
3. the orchestrator in-process on the GPU (the torch engine: what `--engine torch` serves), per decode;
4. the orchestrator's in-process ONNX Runtime engine on the GPU, when onnxruntime-gpu is installed.

Writes OUT/gpu_check.json and prints a Markdown table for docs/BENCHMARKS.md.

    python scripts/gpu_check.py --checkpoint models/shapes32 --out gpu_check      # on a GPU
    python scripts/gpu_check.py --quick --out /tmp/gpu_check                       # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import grouplat
from grouplat.export.engine import export_onnx, model_info
from grouplat.export.torch_engine import TorchVelocity
from grouplat.serving.engines import OnnxVelocity
from grouplat.serving.orchestration import Orchestrator
from grouplat.settings import DEFAULT_SOLVER, DEFAULT_STEPS, GenerationSettings, default_generate_schedule
from grouplat.solvers import NFE_PER_STEP
from grouplat.training.checkpoint import load_checkpoint


def timed(function: Any, repeats: int, sync: Any) -> float:
    """Median seconds of `function()` over `repeats` runs (after one warm-up)."""
    function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def syncs_per_decode(engine: Any, z: torch.Tensor, solve: dict[str, Any]) -> int:
    """How many times one warm decode on device tensors makes the host wait for the GPU: torch's
    sync debug mode warns at each synchronizing call (a device-to-host copy, `.item()`, a blocking
    host-to-device copy); the device-resident loop should make only its start-up copies."""
    grouplat.decode(engine, z, **solve)  # warm: graphs captured
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            grouplat.decode(engine, z, **solve)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="models/shapes32")
    p.add_argument("--out", default="gpu_check")
    p.add_argument("--quick", action="store_true", help="CPU, batch 1 and 2, 2 repeats: a smoke run")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batches, repeats = ((1, 2), 2) if args.quick else ((1, 8, 32), 10)
    checkpoint = load_checkpoint(args.checkpoint)
    info = model_info(checkpoint)
    onnx = OnnxVelocity(export_onnx(checkpoint.network, info), threads=4)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
    }
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, *info.space.shape)).astype(np.float32)
    levels = info.train_schedule.conditioning(rng.uniform(0, 1, 8), hide=info.hide)
    expected = onnx(x, levels)
    schedule = default_generate_schedule(info.space.k, info.train_schedule)
    solve = info.solve_args(schedule, DEFAULT_STEPS, DEFAULT_SOLVER)
    # each precision: one forward's max |Δ|, and a whole decode's PSNR (images in [-1, 1]), both
    # against ONNX Runtime in fp32 on the host; the torch decode keeps its state on the device
    z = rng.standard_normal((2, *info.space.latent_shape)).astype(np.float32)
    reference = grouplat.decode(onnx, z, **solve)
    results["parity_vs_onnxruntime"], results["decode_psnr_vs_onnxruntime"] = {}, {}
    for precision in ("fp32", "bf16", "fp16"):
        engine = TorchVelocity(checkpoint.network, device, precision, graphs=False)
        results["parity_vs_onnxruntime"][precision] = float(np.abs(engine(x, levels) - expected).max())
        images = grouplat.decode(engine, torch.from_numpy(z).to(device), **solve).cpu().numpy()
        error = float(np.mean((images - reference) ** 2))
        results["decode_psnr_vs_onnxruntime"][precision] = 10 * np.log10(4 / max(error, 1e-30))
    nfe = DEFAULT_STEPS * NFE_PER_STEP[DEFAULT_SOLVER]
    engines: dict[str, Any] = {"eager": TorchVelocity(checkpoint.network, device, graphs=False)}
    if cuda:
        engines["cuda graphs"] = TorchVelocity(checkpoint.network, device, graphs=True)
        compiled = torch.compile(checkpoint.network.to(device))
        engines["torch.compile"] = TorchVelocity(compiled, device, graphs=False)  # type: ignore[arg-type]
    best = "cuda graphs" if cuda else "eager"
    defaults = GenerationSettings(DEFAULT_SOLVER, DEFAULT_STEPS).check(info.space.k)
    orchestrator = Orchestrator(info, engines[best], defaults)  # in-process: the state on the device
    results["decode"] = {}
    for batch in batches:
        z = rng.standard_normal((batch, *info.space.latent_shape)).astype(np.float32)
        z_device = torch.from_numpy(z).to(device)
        xb = torch.from_numpy(np.resize(x, (batch, *x.shape[1:]))).to(device)
        ab = torch.from_numpy(np.resize(levels, (batch, levels.shape[1]))).to(device)
        row: dict[str, Any] = {}
        for name, engine in engines.items():
            # the state on the device (the served loop) and, for comparison, through the host
            row[f"{name} decode ms"] = 1e3 * timed(
                lambda e=engine, z=z_device: grouplat.decode(e, z, **solve), repeats, sync
            )
            row[f"{name} host-state decode ms"] = 1e3 * timed(
                lambda e=engine, z=z: grouplat.decode(e, z, **solve), repeats, sync
            )
            row[f"{name} forward ms"] = 1e3 * timed(
                lambda e=engine, xb=xb, ab=ab: e(xb, ab), 5 * repeats, sync
            )
        row["orchestrator decode ms"] = 1e3 * timed(
            lambda z=z: orchestrator.run("decode", {"LATENT": z}, defaults), repeats, sync
        )
        row["decode ÷ (NFE × forward)"] = row[f"{best} decode ms"] / (nfe * row[f"{best} forward ms"])
        if cuda:
            row["graphs speed-up over eager"] = row["eager decode ms"] / row["cuda graphs decode ms"]
        results["decode"][batch] = row
    results["host syncs per decode"] = syncs_per_decode(engines[best], z_device, solve) if cuda else None
    try:
        gpu_onnx = OnnxVelocity(export_onnx(checkpoint.network, info), device="gpu")
        results["onnxruntime_gpu"] = {"provider": gpu_onnx.provider, "forward ms, batch 8": 1e3 * timed(
            lambda: gpu_onnx(x, levels), repeats, sync)}  # fmt: skip
    except RuntimeError as error:  # no onnxruntime-gpu here: say so
        results["onnxruntime_gpu"] = {"skipped": str(error)[:200]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"device: {results['device']}, torch {results['torch']}; NFE per decode: {nfe}")
    print(
        "parity vs ONNX Runtime (max abs): "
        + ", ".join(f"{k} {v:.2e}" for k, v in results["parity_vs_onnxruntime"].items())
        + "; decode PSNR: "
        + ", ".join(f"{k} {v:.1f} dB" for k, v in results["decode_psnr_vs_onnxruntime"].items())
    )
    keys = list(next(iter(results["decode"].values())))
    print("\n| batch | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for batch, row in results["decode"].items():
        print(f"| {batch} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    print(f"\nhost syncs per decode: {results['host syncs per decode']}")
    print(f"ONNX Runtime on the GPU: {results['onnxruntime_gpu']}")


if __name__ == "__main__":
    main()
