"""`grouplat bench --scheduler`: the step scheduler against the request-at-a-time path, in one run.

Both paths serve the same model from their own repository (`scheduling: step` and `request`):

1. single-request decode latency (batch 1, the default settings), and its ratio to NFE × forward;
2. a realistic mix: N clients, each sending a decode after a random pause (0–50 ms) with a
   random step count (10, 20 or 30): ODE steps per second over all clients (÷ one client's), and
   latency per step, p50 and p99;
3. reuse (step path only, cache warm): variations keeping S1–S2, traversal of an S3 and an S4
   element, each against a full decode of as many unrelated latents, outputs compared bit for bit;
4. time to the first preview (decode_stream, end of S1's phase) ÷ the full decode latency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import grouplat
from grouplat.schedule import Schedule
from grouplat.serving import contract as c
from grouplat.solvers import NFE_PER_STEP
from grouplat.tools.bench.nets import Net

MIX_STEPS = (10, 20, 30)
PAUSE_S = (0.0, 0.05)
REUSE_BATCH = 8


def bench_scheduler(
    net: Net,
    seconds: float,
    clients: int,
    repeats: int,
    seed: int = 0,
    instances: int | None = None,
    preview_split: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """`preview_split`: per-group steps whose time to the first preview is measured too (another
    split beside the served decode split, e.g. the encode's S1-heavy one)."""
    import tritonclient.grpc as grpcclient

    from grouplat.export.repository import ServingOptions, write_repository
    from grouplat.serving.engines import OnnxVelocity
    from grouplat.serving.server import EmbeddedServer

    base = ServingOptions() if instances is None else ServingOptions(orchestrator_instances=instances)
    base = base.resolved(net.info)
    assert base.steps is not None  # resolved
    options = {
        "steps": base.steps,
        "solver": base.solver,
        "orchestrator_instances": base.orchestrator_instances,
    }
    results: dict[str, Any] = {"options": options}
    forward = OnnxVelocity(net.onnx, base.threads)
    x = np.zeros((1, *net.info.space.shape), np.float32)
    levels = np.zeros((1, net.info.space.k), np.float32)
    forward(x, levels)
    results["forward_s"] = float(np.median([_timed(forward, x, levels) for _ in range(30)]))
    with tempfile.TemporaryDirectory(prefix="grouplat-sched-") as tmp, contextlib.ExitStack() as stack:
        servers = {}
        for path in ("step", "request"):
            serving = dataclasses.replace(base, scheduling=path)
            write_repository(Path(tmp) / path, net.info, net.onnx, serving)
            servers[path] = stack.enter_context(EmbeddedServer(Path(tmp) / path, startup_timeout=600))
        rng = np.random.default_rng(seed)
        # A new latent for every timed request: the step path's phase cache would answer a repeated
        # one without evaluating the network.
        fresh = [
            rng.standard_normal((1, *net.info.space.latent_shape)).astype(np.float32)
            for _ in range(3 * repeats + 3)
        ]
        nfe = base.steps * NFE_PER_STEP[base.solver]
        for path, server in servers.items():
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                _decode(client, fresh[0], {})  # warm up
                single = [_timed(_decode, client, fresh[1 + i], {}) for i in range(repeats)]
            results[path] = {
                "single_s": float(np.median(single)),
                "P1": float(np.median(single) / (nfe * results["forward_s"])),
                "mix": {n: _mix_load(server.grpc_url, net, n, seconds, seed) for n in (1, clients)},
            }
        results["reuse"] = _reuse(servers["step"].grpc_url, net, repeats, seed)
        url, k = servers["step"].grpc_url, net.info.space.k
        results["preview"] = _preview(url, fresh[repeats + 1 : 2 * repeats + 2], k)
        if preview_split is not None:
            light = {"steps": sum(preview_split), "schedule": Schedule.from_steps(preview_split).text}
            measured = _preview(url, fresh[2 * repeats + 2 :], k, light)
            results["preview_light"] = {"split": list(preview_split), **measured}
    for path in ("step", "request"):
        one, many = (results[path]["mix"][n] for n in (1, clients))
        results[path]["throughput_ratio"] = many["steps_per_s"] / one["steps_per_s"]
        results[path]["p99_over_p50"] = many["per_step_p99_s"] / many["per_step_p50_s"]
    results["P1_change"] = results["step"]["single_s"] / results["request"]["single_s"] - 1
    return results


def _timed(function: Any, *args: Any) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def _tensor(name: str, array: np.ndarray) -> Any:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def _decode(client: Any, latents: np.ndarray, parameters: dict[str, Any]) -> np.ndarray:
    return client.infer(c.DECODE, [_tensor(c.LATENT, latents)], parameters=parameters or None).as_numpy(
        c.IMAGE
    )


def _mix_load(url: str, net: Net, clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """Closed-loop clients with random pauses and step counts: steps/s and latency per step."""
    import tritonclient.grpc as grpcclient

    per_step: list[float] = []
    steps_done = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        with grpcclient.InferenceServerClient(url) as client:
            while time.monotonic() < stop:
                time.sleep(rng.uniform(*PAUSE_S))
                steps = int(rng.choice(MIX_STEPS))
                latent = rng.standard_normal((1, *net.info.space.latent_shape)).astype(np.float32)
                elapsed = _timed(_decode, client, latent, {"steps": steps})
                with lock:
                    per_step.append(elapsed / steps)
                    steps_done[0] += steps

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    return {
        "clients": clients,
        "requests": len(per_step),
        "steps_per_s": steps_done[0] / elapsed,
        "per_step_p50_s": float(np.percentile(per_step, 50)),
        "per_step_p99_s": float(np.percentile(per_step, 99)),
    }


def _reuse(url: str, net: Net, repeats: int, seed: int) -> dict[str, Any]:
    """Edits that share coarse groups with an already decoded latent vs full decodes."""
    import tritonclient.grpc as grpcclient

    space = net.info.space
    rng = np.random.default_rng(seed + 1)
    source = rng.standard_normal((1, *space.latent_shape)).astype(np.float32)
    unrelated = rng.standard_normal((REUSE_BATCH, *space.latent_shape)).astype(np.float32)
    s3, s4 = (int(space.indices(min(g, space.k))[0]) for g in (3, 4))
    values = np.linspace(-3, 3, REUSE_BATCH)

    def edits(r: int) -> dict[str, np.ndarray]:
        """Round r's edits of `source`: new rows every round (a repeated request would be answered
        from the phase cache whole), the same coarse groups as `source` always."""
        made = {
            "variations keeping S1-S2": grouplat.variations(space, source, [1, 2], REUSE_BATCH, seed + r),
            "traverse an S3 element": grouplat.traverse(space, source, 0, s3, values + 0.01 * r),
            "traverse an S4 element": grouplat.traverse(space, source, 0, s4, values + 0.01 * r),
        }
        return {k: np.asarray(v, np.float32).reshape(-1, *space.latent_shape) for k, v in made.items()}

    out: dict[str, Any] = {"batch": REUSE_BATCH}
    with grpcclient.InferenceServerClient(url) as client:
        _decode(client, source, {})  # warm: the source's phases are in the cache
        full = float(np.median([_timed(_decode, client, unrelated + i, {}) for i in range(repeats)]))
        out["full_decode_s"] = full
        rounds = [edits(r) for r in range(repeats + 1)]
        for name in rounds[0]:
            reused = _decode(client, rounds[0][name], {})
            times = [_timed(_decode, client, round_[name], {}) for round_ in rounds[1:]]
            alone = np.concatenate([_decode_uncached(net, row[None]) for row in rounds[0][name][:2]])
            out[name] = {
                "seconds": float(np.median(times)),
                "speedup": full / float(np.median(times)),
                "bit_identical": bool(np.array_equal(reused[:2], alone)),
            }
    return out


def _decode_uncached(net: Net, latents: np.ndarray) -> np.ndarray:
    """The core's own decode of `latents` at the served defaults (no server, no reuse)."""
    from grouplat.export.repository import ServingOptions, default_generate_schedule
    from grouplat.serving.engines import OnnxVelocity

    options = ServingOptions().resolved(net.info)
    assert options.steps is not None  # resolved
    schedule = default_generate_schedule(net.info, options)
    solve = net.info.solve_args(schedule, options.steps, options.solver)
    return grouplat.decode(OnnxVelocity(net.onnx, options.threads), latents, **solve)


def _preview(url: str, latents: list[np.ndarray], k: int, parameters: dict | None = None) -> dict[str, Any]:
    """Time to the first preview of decode_stream, and to its final image, per request (each a new
    latent; the first warms up)."""
    import tritonclient.grpc as grpcclient

    firsts, totals = [], []
    with grpcclient.InferenceServerClient(url) as client:
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((time.perf_counter(), result, error)))
        for latent in latents:
            start = time.perf_counter()
            client.async_stream_infer(c.DECODE_STREAM, [_tensor(c.LATENT, latent)], parameters=parameters)
            first = None
            while True:
                at, result, error = answers.get(timeout=120)
                if error is not None:
                    raise RuntimeError(str(error))
                first = first or at - start
                if int(result.as_numpy(c.PHASE)[0, 0]) == k:  # the final image
                    break
            firsts.append(first)
            totals.append(at - start)
        client.stop_stream()
    first, total = float(np.median(firsts[1:])), float(np.median(totals[1:]))
    return {"first_preview_s": first, "decode_s": total, "ratio": first / total}


def scheduler_report(results: dict[str, Any]) -> str:
    lines = [
        f"Forward (batch 1): {results['forward_s'] * 1e3:.2f} ms. Default decode: {results['options']}.",
        "",
        "| path | single decode ms | P1 | steps/s, 1 client | steps/s, N clients | ratio "
        "| per-step p50 ms | p99 ms | p99/p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in ("step", "request"):
        r = results[path]
        one, many = r["mix"][min(r["mix"])], r["mix"][max(r["mix"])]
        lines.append(
            f"| {path} | {r['single_s'] * 1e3:.1f} | {r['P1']:.2f} | {one['steps_per_s']:.1f} | "
            f"{many['steps_per_s']:.1f} ({many['clients']}) | {r['throughput_ratio']:.2f} | "
            f"{many['per_step_p50_s'] * 1e3:.1f} | {many['per_step_p99_s'] * 1e3:.1f} | "
            f"{r['p99_over_p50']:.2f} |"
        )
    reuse = results["reuse"]
    lines += ["", f"Reuse (batch {reuse['batch']}, cache warm; a full decode of as many latents: "
              f"{reuse['full_decode_s'] * 1e3:.0f} ms):", ""]  # fmt: skip
    for name, r in reuse.items():
        if isinstance(r, dict):
            lines.append(f"- {name}: {r['seconds'] * 1e3:.0f} ms, {r['speedup']:.2f}× faster, "
                         f"bit-identical: {r['bit_identical']}")  # fmt: skip
    p = results["preview"]
    first, total = p["first_preview_s"] * 1e3, p["decode_s"] * 1e3
    lines += ["", f"First preview after {first:.0f} ms of a {total:.0f} ms "
              f"decode_stream ({p['ratio'] * 100:.0f}%). Single-request latency, step vs request path: "
              f"{results['P1_change'] * 100:+.1f}%."]  # fmt: skip
    if "preview_light" in results:
        p = results["preview_light"]
        first, total = p["first_preview_s"] * 1e3, p["decode_s"] * 1e3
        lines += ["", f"With the split {p['split']} (S1 first): first preview after "
                  f"{first:.0f} ms of {total:.0f} ms ({p['ratio'] * 100:.0f}%)."]  # fmt: skip
    return "\n".join(lines)
