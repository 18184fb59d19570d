"""perf_analyzer, out of the box: the binary from the tritonclient 2.51.0 wheel and its input data.

The wheel installs `perf_analyzer` (matching the embedded tritonserver 2.51) beside the Python
executable. It links `libb64.so.0d` (Debian: `libb64-0d`) and `libcudart.so.12` (PyPI:
`nvidia-cuda-runtime-cu12`; no GPU needed). `environment()` puts the CUDA runtime's wheel directory
on LD_LIBRARY_PATH; a library that is still missing is taken from the copies nvidia-pytriton
bundles, linked under its plain name in a private directory.

    grouplat perf-analyzer -m decode -u 127.0.0.1:8001 -i grpc ...   # the binary, with its environment
    grouplat perf-inputs --repository DIR --out DIR                  # --input-data JSON for every model

The input data are real: photographs that ship with scikit-learn or scikit-image when one is
installed (else held-out procedural shapes), their latents encoded by the served model, and the
velocity engine's inputs recorded along a served decode. numpy/stdlib at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = (
    "install Debian's libb64-0d (apt-get install libb64-0d) and nvidia-cuda-runtime-cu12 "
    "(pip install 'grouplat[bench]'), or run benchmarks/perf_analyzer/setup.sh"
)
MODELS = ("encode", "decode", "mix", "velocity")
DIGITS = 4  # decimals kept in the JSON files


class PerfAnalyzerUnavailable(RuntimeError):
    """The perf_analyzer binary is not installed or cannot load its libraries."""


def binary() -> Path:
    """The perf_analyzer of the tritonclient wheel: beside this interpreter, else on PATH."""
    for candidate in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (candidate / "perf_analyzer").is_file():
            return candidate / "perf_analyzer"
    found = shutil.which("perf_analyzer")
    if found is None:
        raise PerfAnalyzerUnavailable(
            "no perf_analyzer binary: install tritonclient==2.51.0 (grouplat[serve])"
        )
    return Path(found)


def _package_dir(name: str) -> Path | None:
    """Where an installed (sub)package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # its parent package is missing
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _missing(program: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries the loader cannot find for `program` under `env` (from ldd; none without it)."""
    if shutil.which("ldd") is None:
        return []
    result = subprocess.run(["ldd", str(program)], env=env, capture_output=True, text=True, check=False)
    return re.findall(r"^\s*(\S+) => not found", result.stdout, flags=re.MULTILINE)


def environment(program: Path | None = None) -> dict[str, str]:
    """os.environ with LD_LIBRARY_PATH set so that perf_analyzer loads; raises if it cannot."""
    program = program or binary()
    env = dict(os.environ)
    dirs = []
    cuda = _package_dir("nvidia.cuda_runtime")
    if cuda is not None and (cuda / "lib").is_dir():
        dirs.append(str(cuda / "lib"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    missing = _missing(program, env)
    bundled = _package_dir("pytriton")
    if missing and bundled is not None:  # fall back on nvidia-pytriton's bundled copies
        libs = bundled.parent / "nvidia_pytriton.libs"
        private = Path(tempfile.gettempdir()) / f"grouplat-perf-analyzer-libs-{os.getuid()}"
        private.mkdir(exist_ok=True)
        for soname in missing:  # libb64.so.0d ← libb64-98cb6333.so.0d
            stem, _, version = soname.partition(".so")
            copies = sorted(libs.glob(f"{stem}-*.so{version}*"))
            link = private / soname
            if copies and (not link.exists() or link.resolve() != copies[0].resolve()):
                link.unlink(missing_ok=True)  # a stale link (another venv) is replaced
                with contextlib.suppress(FileExistsError):  # made by a concurrent call
                    link.symlink_to(copies[0])
        env["LD_LIBRARY_PATH"] = os.pathsep.join([env["LD_LIBRARY_PATH"], str(private)]).strip(os.pathsep)
        missing = _missing(program, env)
    if missing:
        raise PerfAnalyzerUnavailable(f"{program} cannot load {', '.join(missing)}: {INSTALL_HINT}")
    return env


def run(args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run perf_analyzer with `args`; its output in stdout (stderr merged)."""
    program = binary()
    return subprocess.run(
        [str(program), *args],
        env=environment(program),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def throughputs(output: str) -> list[float]:
    """The client-side throughput (infer/sec) of each concurrency perf_analyzer reports."""
    return [float(v) for v in re.findall(r"^\s*Throughput: ([0-9.eE+-]+) infer/sec", output, re.MULTILINE)]


# -- input data --------------------------------------------------------------------------------
def sample_images(count: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, str]:
    """`count` float32 images [count, C, H, W] in [-1, 1], and where they come from.

    Random crops of the sample photographs that scikit-learn or scikit-image ship, when one is
    installed, else held-out procedural shapes.
    """
    from grouplat.images import crop_resize, from_uint8
    from grouplat.training.dataset import sample_photographs

    c, h, w = shape
    photos = sample_photographs(None)
    if not photos:
        return held_out_images(count, shape), "held-out procedural shapes"
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(min(photo.shape[:2]) * rng.uniform(0.5, 1.0))  # a crop with the model's aspect
        ch, cw = (side, round(side * w / h)) if w <= h else (round(side * h / w), side)
        top, left = rng.integers(0, photo.shape[0] - ch + 1), rng.integers(0, photo.shape[1] - cw + 1)
        crop = Image.fromarray(photo[top : top + ch, left : left + cw]).convert("L" if c == 1 else "RGB")
        array = np.asarray(crop_resize(crop, (h, w)), np.uint8)
        out.append(array[..., None] if array.ndim == 2 else array)
    return from_uint8(np.stack(out)), "random crops of the sample photographs (scikit-learn, scikit-image)"


def held_out_images(count: int, shape: tuple[int, int, int]) -> np.ndarray:
    """float32 [count, C, H, W]: held-out procedural shapes cropped (and greyed) to any model's shape."""
    from grouplat.training.dataset import held_out_shapes

    c, h, w = shape
    side = max(h, w)
    images = held_out_shapes(side).images(np.arange(count))
    top, left = (side - h) // 2, (side - w) // 2
    images = images[:, :, top : top + h, left : left + w]
    if c != 3:
        images = np.repeat(images.mean(axis=1, keepdims=True), c, axis=1)
    return images.astype(np.float32)


def _entry(**tensors: np.ndarray) -> dict[str, Any]:
    """One perf_analyzer data entry: per input its flat content and its shape (without batch)."""
    out = {}
    for name, value in tensors.items():
        flat = value.ravel() if value.dtype == bool else np.round(value.ravel().astype(np.float64), DIGITS)
        out[name] = {"content": flat.tolist(), "shape": list(value.shape)}
    return out


def infer(client: Any, model: str, output: str, **inputs: np.ndarray) -> np.ndarray:
    """One gRPC request with plain tritonclient (`client`: a tritonclient.grpc client)."""
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BOOL" if array.dtype == bool else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors).as_numpy(output)


def write_inputs(
    repository: str | Path,
    out: str | Path,
    count: int = 4,
    velocity_count: int = 8,
    fingerprint: bool = False,
    server: str | None = None,
) -> dict[str, Path]:
    """Write `{encode,decode,mix,velocity}.json` (perf_analyzer --input-data) and `manifest.json`.

    Latents are encoded by the served model, and the velocity inputs (X_T, LEVELS) are those the
    served engine receives while decoding them with the repository's default settings. The server
    is the one at `server` (gRPC host:port, serving `repository`), else the embedded tritonserver
    started on `repository` meanwhile. With `fingerprint`, decode entries carry the model's
    FINGERPRINT (then they fit this model only).
    """
    import tritonclient.grpc as grpcclient

    import grouplat
    from grouplat.modelinfo import ModelInfo
    from grouplat.schedule import Schedule
    from grouplat.serving.orchestration import config_parameters
    from grouplat.serving.server import EmbeddedServer

    repository, out = Path(repository), Path(out)
    versions = [p for p in (repository / "velocity").glob("[0-9]*") if p.name.isdigit()]
    if not versions:
        raise ValueError(f"{repository} has no velocity model versions: write it with grouplat export")
    info = ModelInfo.load(max(versions, key=lambda p: int(p.name)))
    space = info.space
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(EmbeddedServer(repository)).grpc_url
        client = grpcclient.InferenceServerClient(server)
        config = client.get_model_config("encode", as_json=True)["config"]
        params = config_parameters(config)
        request_batch = int(config.get("max_batch_size", 1)) or 1
        images, source = sample_images(count, space.shape)
        latents = np.concatenate(
            [
                infer(client, "encode", "LATENT", IMAGE=images[i : i + request_batch])
                for i in range(0, count, request_batch)
            ]
        )
        recorded: list[tuple[np.ndarray, np.ndarray]] = []

        def velocity(x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
            recorded.extend(zip(x_t.copy(), levels.copy()))
            return infer(client, "velocity", "U", X_T=x_t, LEVELS=levels)

        steps, solver = int(params["steps"]), params["solver"]
        grouplat.decode(
            velocity,
            latents,
            **info.solve_args(
                Schedule.parse(params["generate_schedule"], space.k),
                steps,
                solver,
                params.get("spacing", "tau"),
            ),
        )
    picks = np.linspace(0, len(recorded) - 1, velocity_count).round().astype(int)
    groups = np.eye(space.k, dtype=bool)
    data = {
        "encode": [_entry(IMAGE=x) for x in images],
        "decode": [_entry(LATENT=z) for z in latents],
        "mix": [
            _entry(IMAGE_A=images[i], IMAGE_B=images[(i + 1) % count], GROUPS=groups[i % space.k])
            for i in range(count)
        ],
        "velocity": [_entry(X_T=recorded[i][0], LEVELS=recorded[i][1]) for i in picks],
    }
    if fingerprint:
        for entry in data["decode"]:
            entry["FINGERPRINT"] = {"content": [info.fingerprint], "shape": [1]}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for model, entries in data.items():
        written[model] = out / f"{model}.json"
        written[model].write_text(json.dumps({"data": entries}, separators=(",", ":")) + "\n")
    manifest = {
        "fingerprint": info.fingerprint,
        "space": space.describe(),
        "images": source,
        "latents": "encoded by the served model with its default settings",
        "velocity": f"engine inputs along served decodes ({solver}, {steps} steps), {velocity_count} picked",
        "settings": {"steps": steps, "solver": solver, "generate_schedule": params["generate_schedule"]},
        "fingerprint_in_decode": fingerprint,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return written


# -- command line -----------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grouplat perf-analyzer` and `grouplat perf-inputs` (grouplat.cli); idempotent."""
    if {"perf-analyzer", "perf-inputs"} <= set(subparsers.choices):
        return
    # '+' prefix: every argument, -h and --version too, goes to perf_analyzer itself.
    p = subparsers.add_parser(
        "perf-analyzer",
        prefix_chars="+",
        add_help=False,
        help="run tritonclient's perf_analyzer with the libraries it needs (arguments go to it)",
    )
    p.add_argument("args", nargs="*")
    p.set_defaults(handler=_run_command)
    p = subparsers.add_parser(
        "perf-inputs",
        help="write perf_analyzer --input-data JSON files for a model repository",
        description=write_inputs.__doc__,
    )
    p.add_argument("--repository", required=True, help="Triton model repository (grouplat export)")
    p.add_argument("--out", required=True, help="directory for encode/decode/mix/velocity.json")
    p.add_argument("--count", type=int, default=4, help="images (and latents) per file")
    p.add_argument("--velocity-count", type=int, default=8, help="entries in velocity.json")
    p.add_argument("--fingerprint", action="store_true", help="send the model's FINGERPRINT with decode")
    p.add_argument("--server", help="gRPC host:port of a server on this repository (default: start one)")
    p.set_defaults(handler=_inputs_command)


def _run_command(args: argparse.Namespace) -> int:
    try:
        program = binary()
        env = environment(program)
    except PerfAnalyzerUnavailable as error:
        print(f"grouplat perf-analyzer: error: {error}", file=sys.stderr)
        return 2
    return subprocess.run([str(program), *args.args], env=env, check=False).returncode


def _inputs_command(args: argparse.Namespace) -> int:
    try:
        written = write_inputs(
            args.repository, args.out, args.count, args.velocity_count, args.fingerprint, args.server
        )
    except (ValueError, RuntimeError) as error:
        print(f"grouplat perf-inputs: error: {error}", file=sys.stderr)
        return 1
    for model, path in written.items():
        print(f"{model:8s} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m grouplat.tools.perf_analyzer perf-analyzer|perf-inputs ...`, as the grouplat CLI."""
    parser = argparse.ArgumentParser(prog="python -m grouplat.tools.perf_analyzer")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
