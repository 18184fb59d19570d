"""`import grouplat.client` works without torch (docs/design.md §3: the client installs without torch)."""

import subprocess
import sys

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime"):
            raise ImportError(name + " is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def test_client_imports_without_torch():
    code = (
        BLOCK
        + """
import grouplat.client
import grouplat.client.cli
from grouplat.client import AsyncClient, Client, Latents
from grouplat.proto import latent_pb2
assert not {"torch", "onnx", "onnxruntime"} & set(sys.modules), sorted(sys.modules)
print("ok")
"""
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
