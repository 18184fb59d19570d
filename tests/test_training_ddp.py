"""Multi-process training: 2 gloo ranks on CPU (torchrun) compute the same steps as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grouplat.training.checkpoint import load_checkpoint, read_tensors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
    "train",
    "--data",
    "shapes:16",
    "--groups",
    "10,30,100",
    "--channels",
    "16",
    "--mults",
    "1,2",
    "--blocks",
    "1",
    "--attn",
    "8",
    "--dropout",
    "0",
    "--batch",
    "8",
    "--steps",
    "3",
    "--warmup",
    "1",
    "--lr",
    "1e-3",
    "--stats-items",
    "32",
    "--sample-count",
    "4",
    "--sample-steps",
    "4",
    "--log-every",
    "1",
    "--no-progress",
    "--device",
    "cpu",
    "--checkpoint-every",
    "1",
    "--keep",
    "0",
]


def _run(args: list[str], out: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, *args, *FLAGS, "--out", str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    """Same data, t, z̄ per sample; DDP's averaged gradient equals the one-process batch gradient.

    Compared through Adam's first moment after step 1 (= 0.1 × the clipped gradient) — weights
    themselves are a poor witness, since Adam's first step is ±lr for any non-tiny gradient — and
    through the loss curve, which depends on every update before it.
    """
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "2",
            "-m",
            "grouplat.training.cli",
        ],
        tmp_path / "ddp",
    )
    _run(["-m", "grouplat.training.cli"], tmp_path / "single")
    first = [
        read_tensors(tmp_path / run / "checkpoint-0000001" / "optimizer.safetensors")
        for run in ("ddp", "single")
    ]
    assert first[0].keys() == first[1].keys() and len(first[0]) > 10
    # A gradient entry near 0 is a sum that cancels: its float32 error follows the size of its terms,
    # not its own (here out_conv.bias's gradient is 0 up to rounding, ~1e-9), so rtol alone cannot
    # hold there. The absolute part is 1e-4 of the largest entry of the same kind (exp_avg, …).
    largest = {
        kind: max(v.abs().max().item() for k, v in first[1].items() if k.endswith(f".{kind}"))
        for kind in {name.rsplit(".", 1)[1] for name in first[1]}
    }
    for name in first[0]:
        atol = 1e-4 * largest[name.rsplit(".", 1)[1]]
        torch.testing.assert_close(first[0][name], first[1][name], rtol=1e-4, atol=atol)
    gradient = torch.cat([v.flatten() for k, v in first[1].items() if k.endswith("exp_avg")])
    assert gradient.abs().max() > 1e-3  # a real step was taken

    def curve(run: str) -> list[float]:
        lines = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        return [line["loss"] for line in lines if "loss" in line]

    assert len(curve("ddp")) == 3
    np.testing.assert_allclose(curve("ddp"), curve("single"), rtol=1e-5)
    assert load_checkpoint(tmp_path / "ddp").metadata["step"] == 3
