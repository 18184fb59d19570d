"""scripts/gpu_train_demo.py is the first call a lent GPU gets (issue 12): its --quick form runs here,
so that a broken script is found on the CPU, not in the device minutes."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("torch")

from grouplat.training.checkpoint import load_checkpoint  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_train_demo.py"


def test_gpu_train_script_quick_trains_and_releases_every_shipped_model(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    groups = {"shapes32": 4, "shapes32-scalar": 1, "gmm2d": 2}
    for name, k in groups.items():
        run = results[name]
        assert run["steps"] >= 20 and run["images"] == run["steps"] * run["batch"]
        # what comes back is the released checkpoint: the EMA weights and metadata, no optimizer state
        assert sorted(p.name for p in (out / name).iterdir()) == ["metadata.json", "model.safetensors"]
        assert load_checkpoint(out / name).space.k == k
        assert ("s1_head" in load_checkpoint(out / name).config) == (name == "shapes32")  # fit-s1 ran
        assert json.loads((out / name / "metadata.json").read_text())["step"] == run["steps"]
    with tarfile.open(out / "logs.tar.gz") as archive:
        logs = {name for name in archive.getnames() if name.endswith("log.jsonl")}
    assert logs == {f"{name}/log.jsonl" for name in groups}
