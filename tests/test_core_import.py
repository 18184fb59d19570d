"""The method core and the client side must import without torch (docs/design.md §3)."""

import subprocess
import sys

BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, BlockTorch())
"""


def test_core_imports_and_runs_without_torch():
    code = (
        BLOCK_TORCH
        + """
import numpy as np
import grouplat
space = grouplat.LatentSpace((3, 8, 8), "dct", (4, 16))
oracle = grouplat.GaussianOracle(space, 0.0, 1.0)
z = grouplat.encode(oracle, oracle.sample(1), space, grouplat.Schedule.from_cuts("0.5,0.8"), steps=6)
assert z.shape == (1, 3, 64) and "torch" not in sys.modules
print("ok")
"""
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
