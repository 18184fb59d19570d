"""Serving variants and closed-loop load windows for `grouplat bench`."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from grouplat.serving.contract import OUTPUTS
from grouplat.tools.perf_analyzer import infer


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


def start_all(servers: list[Any], stack: contextlib.ExitStack) -> None:
    """Start the servers in parallel; every one is stopped (in parallel) when `stack` closes."""

    def stop_all() -> None:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda s: s.stop(), servers))

    stack.callback(stop_all)
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))
