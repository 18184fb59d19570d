"""The wheel is complete: built from the package's own files and installed into a fresh virtualenv
outside the checkout, it exports a shipped demo model, serves it and decodes over gRPC.

Only grouplat comes from the wheel: its dependencies come from this environment's site-packages,
put on the new environment's path by a .pth file (after its own site-packages, and without running
this environment's .pth files, so the checkout's editable install cannot leak in).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pip
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "metadata.json").is_file())
STEPS = 8  # decode steps per request (the test checks the plumbing, not the picture)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def package_sources(target: Path) -> None:
    """What the wheel is built from: pyproject.toml, README.md, grouplat/ with its links, and the
    top-level folders they point to (a copy, so the build writes nothing into the checkout)."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "grouplat", target / "grouplat", symlinks=True, ignore=junk)
    for link in (ROOT / "grouplat").iterdir():
        if link.is_symlink():
            folder = link.resolve()
            assert folder.parent == ROOT, f"grouplat/{link.name} points outside the checkout"
            shutil.copytree(folder, target / folder.name, symlinks=True, ignore=junk)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    package_sources(work / "src")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "-w", str(work / "dist"), "."],
        cwd=work / "src",
    )  # fmt: skip
    (found,) = (work / "dist").glob("grouplat-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory) -> Path:
    """A fresh virtualenv, outside the checkout, holding grouplat from the wheel; returns its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    # This environment's pip, alone on the path (not its site-packages, which list the editable
    # grouplat), run by the new interpreter: it installs there, scripts starting with its python.
    pip_only = venv.parent / "pip-only"
    pip_only.mkdir(exist_ok=True)
    if not (pip_only / "pip").exists():
        (pip_only / "pip").symlink_to(Path(pip.__file__).parent)
    run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir",
         "--disable-pip-version-check", str(wheel)],
        env={**clean_env(), "PYTHONPATH": str(pip_only)},
    )  # fmt: skip
    (site / "grouplat-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "GROUPLAT_"))}
    return {**env, "PYTHONNOUSERSITE": "1"}


def test_the_wheel_holds_the_adapters_and_the_shipped_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for adapter in ("velocity", "orchestrator"):
        assert f"grouplat/serving/{adapter}/model.py" in names
    assert SHIPPED == ["gmm2d", "shapes32", "shapes32-quadrants", "shapes32-scalar"]
    for model in SHIPPED:
        for name in ("metadata.json", "model.safetensors"):
            assert f"grouplat/models/{model}/{name}" in names
    assert {"grouplat/proto/latent.proto", "grouplat/cli.py", "grouplat/tools/demo.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "models/"))]


def test_installed_outside_a_checkout_it_exports_serves_decodes(installed: Path, tmp_path: Path) -> None:
    env = clean_env()
    work = tmp_path / "cwd"  # outside the checkout
    work.mkdir()
    grouplat = str(installed / "grouplat")
    # Where the installed package finds itself, its model.py adapters and `grouplat demo`'s models.
    where = run(
        [str(installed / "python"), "-c",
         "import grouplat; from grouplat.cli import build_parser; "
         "from grouplat.export.repository import SERVING; a = build_parser('demo').parse_args(['demo']); "
         "print(grouplat.__file__, SERVING, a.model, a.baseline, a.gmm, sep='\\n')"],
        cwd=work, env=env,
    ).stdout.split("\n")[:5]  # fmt: skip
    venv = installed.parent
    assert all(Path(p).is_relative_to(venv) and Path(p).exists() for p in where), where  # not the checkout
    shipped = Path(where[2])
    assert shipped.name == "shapes32"

    started = time.perf_counter()
    run([grouplat, "export", str(shipped), "--repository", "repo"], cwd=work, env=env)
    exported = time.perf_counter() - started
    assert (work / "repo" / "decode" / "1" / "model.py").read_bytes() == (
        ROOT / "triton_repo" / "orchestrator" / "model.py"
    ).read_bytes()
    log = work / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [grouplat, "serve", "--repository", "repo", "--grpc-port", "0", "--http-port", "0",
             "--metrics-port", "0"],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (found := re.search(r"on grpc (\S+), http", log.read_text())):
            assert server.poll() is None, f"grouplat serve exited {server.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"grouplat serve not ready:\n{log.read_text()}"
            time.sleep(0.2)
        served = time.perf_counter() - started - exported
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(found.group(1))
        config = client.get_model_config("decode", as_json=True)["config"]
        assert config["parameters"]["fingerprint"]["string_value"]
        latent = np.random.default_rng(0).standard_normal((2, 3, 32 * 32)).astype(np.float32)
        request = triton.InferInput("LATENT", list(latent.shape), "FP32")
        request.set_data_from_numpy(latent)
        answer = client.infer("decode", [request], parameters={"steps": STEPS})
        image = answer.as_numpy("IMAGE")
        client.close()
        assert image.shape == (2, 3, 32, 32) and image.dtype == np.float32
        assert np.isfinite(image).all()
    finally:
        os.kill(server.pid, signal.SIGTERM)  # grouplat serve stops its tritonserver
        try:
            code = server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            code = None
    assert code == 0, log.read_text()
    print(f"export {exported:.1f} s, serve {served:.1f} s, total {time.perf_counter() - started:.1f} s")
