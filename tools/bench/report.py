"""What `grouplat bench` prints: the machine, medians per net, load tables and the ratios P1–P4."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from grouplat.tools.bench.nets import P4_SOLVERS, P4_TARGET_DB

GOALS = {"P1": "≤ 1.10", "P2": "≥ 2", "P3": "≥ 1.5, p99 ≤ 2 × p50", "P4": "report"}


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
