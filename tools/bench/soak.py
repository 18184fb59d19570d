"""`grouplat bench --soak SECONDS`: the served stack under a long mixed load, and isolation.

1. Isolation: a small decode's latency when the server is idle, then while a request of the
   maximum cost (the repository's `max_cost`) runs beside it.
2. Soak: closed-loop clients send a mix of good requests (encode, decode, mix) and bad ones (NaN,
   wrong shape, hostile parameters) for SECONDS; the resident memory of tritonserver and its stubs
   is sampled throughout. Reported: statuses, latency percentiles of the good requests, and the
   RSS slope (least squares over the second half of the run, after warm-up).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from grouplat.serving import contract as c
from grouplat.tools.bench.nets import Net
from grouplat.tools.perf_analyzer import held_out_images

SMALL = {"steps": 4, "solver": "gei2m"}  # a small request: 8 NFE, one image


def soak(
    net: Net, seconds: float, clients: int = 4, seed: int = 0, max_cost: int | None = None
) -> dict[str, Any]:
    """Isolation and soak figures of one net served with the default ServingOptions (and
    `max_cost`, when given)."""
    import tritonclient.grpc as grpcclient

    from grouplat.export.repository import ServingOptions, write_repository
    from grouplat.serving.server import EmbeddedServer

    options = ServingOptions() if max_cost is None else ServingOptions(max_cost=max_cost)
    with tempfile.TemporaryDirectory(prefix="grouplat-soak-") as tmp:
        write_repository(Path(tmp) / "repo", net.info, net.onnx, options)
        with EmbeddedServer(Path(tmp) / "repo", startup_timeout=600) as server:
            requests = _requests(net, grpcclient)
            isolation = _isolation(server.grpc_url, requests, options.max_cost)
            load = _load(server, requests, seconds, clients, seed)
    served = {"max_cost": options.max_cost, "orchestrator_instances": options.orchestrator_instances}
    return {"options": served, "isolation": isolation, "soak": load}


Request = tuple[str, "list[Any] | Callable[[], list[Any]]", "dict[str, Any]"]  # model, inputs, parameters


def _requests(net: Net, grpcclient: Any) -> dict[str, Request]:
    space = net.info.space
    images = held_out_images(2, space.shape)
    latent = np.random.default_rng(0).standard_normal((1, *space.latent_shape)).astype(np.float32)
    groups = np.zeros((1, space.k), bool)
    groups[0, 0] = True

    def tensor(name: str, array: np.ndarray, kind: str = "FP32") -> Any:
        t = grpcclient.InferInput(name, list(array.shape), kind)
        t.set_data_from_numpy(array)
        return t

    def fresh_latent() -> list[Any]:
        """A new latent per call: the step scheduler's phase cache answers a repeated decode whole."""
        values = np.random.default_rng().standard_normal((1, *space.latent_shape)).astype(np.float32)
        return [tensor(c.LATENT, values)]

    mix = [tensor(c.IMAGE_A, images[:1]), tensor(c.IMAGE_B, images[1:]), tensor(c.GROUPS, groups, "BOOL")]
    return {
        "decode": (c.DECODE, fresh_latent, {}),
        "encode": (c.ENCODE, [tensor(c.IMAGE, images[:1])], {}),
        "mix": (c.MIX, mix, {}),
        "small": (c.DECODE, fresh_latent, SMALL),
        "bad nan": (c.DECODE, [tensor(c.LATENT, latent * np.nan)], {}),
        "bad shape": (c.DECODE, [tensor(c.LATENT, latent[:, :, :-1])], {}),
        "bad steps": (c.DECODE, [tensor(c.LATENT, latent)], {"steps": "²"}),
        "bad schedule": (c.DECODE, [tensor(c.LATENT, latent)], {"schedule": "[" * 3000}),
        "bad cost": (c.DECODE, [tensor(c.LATENT, latent)], {"steps": 4096}),
    }


def _time(client: Any, request: Request) -> tuple[float, str]:
    from tritonclient.utils import InferenceServerException

    model, inputs, parameters = request
    if callable(inputs):
        inputs = inputs()
    start = time.perf_counter()
    try:
        client.infer(model, inputs, parameters=parameters or None)
        status = "OK"
    except InferenceServerException as error:
        status = str(error.status()).replace("StatusCode.", "")
    return time.perf_counter() - start, status


def _isolation(url: str, requests: dict, max_cost: int) -> dict[str, Any]:
    """Small-request latency idle, then beside a maximum-cost decode (Heun: 2 NFE per step)."""
    import tritonclient.grpc as grpcclient

    model, inputs, _ = requests["decode"]
    steps = max_cost // 2
    big = (model, inputs, {"steps": steps, "solver": "heun"})
    result: dict[str, Any] = {}
    done = threading.Event()

    def run_big() -> None:
        with grpcclient.InferenceServerClient(url) as other:
            result["big"] = _time(other, big)
        done.set()

    with grpcclient.InferenceServerClient(url) as client:
        idle = [_time(client, requests["small"])[0] for _ in range(15)]
        thread = threading.Thread(target=run_big)
        thread.start()
        time.sleep(0.2)  # the big request is under way
        beside: list[float] = [_time(client, requests["small"])[0]]
        while not done.is_set() and len(beside) < 200:
            beside.append(_time(client, requests["small"])[0])
        thread.join()
    seconds, status = result["big"]
    return {
        "small": SMALL,
        "max_cost_request": {"steps": steps, "solver": "heun", "seconds": seconds, "status": status},
        "idle_p50_s": float(np.median(idle)),
        "beside_p50_s": float(np.median(beside)) if beside else None,
        "beside_p99_s": float(np.percentile(beside, 99)) if beside else None,
        "ratio_p50": float(np.median(beside) / np.median(idle)) if beside else None,
        "samples": len(beside),
    }


def _load(server: Any, requests: dict, seconds: float, clients: int, seed: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    names = list(requests)
    weights = np.array([0.0 if n == "small" else (1.0 if n.startswith("bad") else 3.0) for n in names])
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    memory: list[tuple[float, float]] = []

    def worker(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            while time.monotonic() < stop:
                name = names[rng.choice(len(names), p=weights / weights.sum())]
                elapsed, status = _time(client, requests[name])
                with lock:
                    statuses[f"{name}: {status}"] += 1
                    if not name.startswith("bad"):
                        latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        memory.append((time.monotonic() - begin, _rss_mib(server.pid)))
        time.sleep(1.0)
    for t in threads:
        t.join()
    times, rss = np.array(memory).T if memory else (np.zeros(1), np.zeros(1))
    late = times >= times[-1] / 2
    slope = float(np.polyfit(times[late], rss[late], 1)[0] * 60) if late.sum() >= 3 else None
    unexpected = {
        k: v for k, v in statuses.items() if not (k.endswith(": OK") or "bad" in k and "INVALID" in k)
    }
    return {
        "seconds": seconds,
        "clients": clients,
        "statuses": dict(sorted(statuses.items())),
        "unexpected": unexpected,
        "good_p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "good_p99_s": float(np.percentile(latencies, 99)) if latencies else None,
        "rss_mib_start": float(rss[0]),
        "rss_mib_end": float(rss[-1]),
        "rss_slope_mib_per_min": slope,
    }


def _rss_mib(pid: int | None) -> float:
    """Resident memory of a process and all its descendants (tritonserver and its stubs), MiB."""
    if pid is None:
        return 0.0
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(p) for p in (task / "children").read_text().split()]
    return total / 1024


def soak_report(results: dict[str, Any]) -> str:
    """Markdown of `soak`'s results."""
    i, s = results["isolation"], results["soak"]
    slope = s["rss_slope_mib_per_min"] if s["rss_slope_mib_per_min"] is not None else float("nan")
    big = i["max_cost_request"]
    lines = [
        f"Isolation: a small decode ({i['small']}) takes {i['idle_p50_s'] * 1e3:.1f} ms (p50) idle and "
        f"{(i['beside_p50_s'] or 0) * 1e3:.1f} ms (p50; p99 {(i['beside_p99_s'] or 0) * 1e3:.1f} ms, "
        f"{i['samples']} requests) beside a maximum-cost decode (heun, {big['steps']} steps, "
        f"{big['seconds']:.1f} s, {big['status']}): ratio {i['ratio_p50'] or 0:.2f}.",
        "",
        f"Soak: {s['seconds']:.0f} s, {s['clients']} clients; good requests p50 "
        f"{s['good_p50_s'] * 1e3:.1f} ms, p99 {s['good_p99_s'] * 1e3:.1f} ms; resident memory of "
        f"tritonserver and its stubs {s['rss_mib_start']:.0f} → {s['rss_mib_end']:.0f} MiB, slope over the "
        f"second half "
        f"{slope:.2f} MiB/min; unexpected statuses: {s['unexpected'] or 'none'}.",
        "",
        "| request: status | count |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in s["statuses"].items()),
    ]
    return "\n".join(lines)
