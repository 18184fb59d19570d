"""benchmarks/recipe.py (the training-recipe study) in its --quick form: trains, measures, re-measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_recipe_study_quick_trains_and_measures_variants(tmp_path: Path) -> None:
    out = tmp_path / "recipe"
    command = [sys.executable, str(ROOT / "benchmarks" / "recipe.py"), "--quick", "--threads", "1"]
    variants = ["--variants", "grouped+phase+gauss,scalar", "--out", str(out)]
    subprocess.run([*command, *variants], check=True, capture_output=True, timeout=300)
    rows = json.loads((out / "recipe.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["grouped+phase+gauss", "scalar"]
    for row in rows:
        assert math.isfinite(row["swd"]) and 0.0 <= row["confidence"] <= 1.0
        assert row["s1_std"] > 0
        assert len(row["s1_spread"]) == 3 and row["s1_spread"][-1]["samples"] > 0
    assert set(rows[0]["vs_gauss"]) == {"S1", "S2", "S3", "S4"}
    # --measure: a checkpoint as it is (here the grouped run), no training, no log needed
    grouped = out / "grouped_phase_gauss"
    again = tmp_path / "again"
    measure = ["--variants", "", "--measure", f"earlier={grouped}", "--out", str(again)]
    result = subprocess.run([*command, *measure], check=True, capture_output=True, text=True, timeout=300)
    (row,) = json.loads((again / "recipe.json").read_text())["rows"]
    assert row["variant"] == "earlier" and row["swd"] == rows[0]["swd"]
    assert "| earlier |" in result.stdout
