"""`grouplat bench`: the quick run writes every ratio; P4's search on the exact oracle; variants."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
from conftest import make_oracle, oracle_images
from test_export import write_checkpoint

import grouplat
from grouplat.export.oracle import oracle_info
from grouplat.tools.bench import headline, parse_variant, round_trip_nfe


def test_quick_soak_reports_isolation_statuses_and_memory(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-0000001")
    out = tmp_path / "soak.json"
    command = [sys.executable, "-m", "grouplat.tools.bench", "--quick", "--soak", "4", "--checkpoint",
               str(checkpoint), "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["isolation"]["max_cost_request"]["status"] == "OK" and report["isolation"]["samples"] > 0
    statuses = report["soak"]["statuses"]
    assert not report["soak"]["unexpected"] and any(k.endswith(": OK") for k in statuses)
    assert all("INVALID_ARGUMENT" in k for k in statuses if k.startswith("bad"))
    assert report["soak"]["rss_mib_end"] > 0 and "Isolation:" in result.stdout


def test_quick_bench_writes_every_ratio(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-0000001")  # tiny, random: P4 runs but means nothing
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "grouplat.tools.bench",
        "--quick",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    ratios = results["ratios"]
    assert set(ratios) == {"P1", "P2", "P3", "P4"}
    for key in ("P1", "P2", "P3"):
        assert ratios[key]["value"] > 0 and isinstance(ratios[key]["met"], bool), key
    assert set(ratios["P4"]["value"]) == {"euler", "heun"}
    assert set(results["p4"]["heun"]["round_trip_psnr_db"]) >= {"8", "16"}  # NFE → dB
    demo = results["nets"]["demo"]
    assert demo["trained"] and demo["space"]["shape"] == [3, 16, 16]
    assert set(demo["served"]) == {"inprocess", "bls"}
    for row in demo["served"].values():
        assert set(row["latency_s"]) == {"encode", "decode", "mix"}
        assert set(row["load"]["decode"]) == {"1", "4", "8"}
        assert all(s["n"] >= int(n) and s["requests_per_s"] > 0 for n, s in row["load"]["decode"].items())
    assert {"ODE loop, engine in-process", "ODE loop, PyTorch eager"} <= set(demo["median_s"])
    assert results["machine"]["cores"] >= 1 and len(results["load_average"]["end"]) == 3
    assert "| P1 |" in result.stdout and "| P4 |" in result.stdout
    del results["p4"]  # as without a trained checkpoint
    p4 = headline(results, "inprocess", ["decode"])["P4"]
    assert p4["value"] is None and "n/a" in p4["note"]


def test_round_trip_nfe_on_the_oracle():
    oracle = make_oracle()
    info = oracle_info(oracle, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_GENERATE)
    images = oracle_images(oracle, 4)
    p4 = round_trip_nfe(oracle, images, info, schedule, ladder=(8, 32, 128), reference_steps=256)
    heun, euler = p4["heun"], p4["euler"]
    assert heun["nfe"] is not None and heun["round_trip_psnr_db"][heun["nfe"]] >= 40.0
    assert max(heun["round_trip_psnr_db"]) == heun["nfe"]  # the search stops at the first hit
    assert heun["one_way_psnr_db"] is not None
    assert euler["nfe"] is None or euler["nfe"] > heun["nfe"]  # first order needs more


def test_parse_variant():
    assert parse_variant("inprocess") == ("inprocess", {})
    name, options = parse_variant("bls2:velocity_call=bls,velocity_instances=2,spinning=1,queue_delay_us=0")
    assert name == "bls2"
    assert options == {"velocity_call": "bls", "velocity_instances": 2, "spinning": True, "queue_delay_us": 0}
    for bad in ("x:no_such_field=1", "x:threads", ":threads=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_variant(bad)


def test_quick_scheduler_bench_compares_both_paths(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-0000001")
    out = tmp_path / "scheduler.json"
    command = [sys.executable, "-m", "grouplat.tools.bench", "--quick", "--scheduler", "--checkpoint",
               str(checkpoint), "--out", str(out), "--preview-split", "2,3,3"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    for path in ("step", "request"):
        assert report[path]["single_s"] > 0 and report[path]["throughput_ratio"] > 0
    reuse = [v for v in report["reuse"].values() if isinstance(v, dict)]
    assert len(reuse) == 3 and all(r["bit_identical"] for r in reuse)
    assert 0 < report["preview"]["ratio"] < 1 and "First preview" in result.stdout
    assert 0 < report["preview_light"]["ratio"] < 1 and "With the split [2, 3, 3]" in result.stdout
    bad = subprocess.run([*command[:-1], "2,3"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--preview-split needs 3 positive counts" in bad.stderr
