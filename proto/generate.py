"""Regenerate `latent_pb2.py` / `.pyi` from `latent.proto`: `python -m grouplat.proto.generate [OUT]`.

The code is checked in; `tests/test_client_proto.py` regenerates it into a temporary directory and
compares. Use grpcio-tools 1.62.3 (its protoc 25.1 writes code without a runtime version check, so
it imports on protobuf 4.21 … 6.x; newer protoc output refuses protobuf older than itself).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ["latent.proto"]
GRPCIO_TOOLS = "1.62.3"  # the version that generated the checked-in code


def generate(out_dir: str | Path = HERE) -> list[Path]:
    """Compile the protos into `out_dir`; return the generated files.

    The protos are compiled as `grouplat/proto/<name>.proto` so their registered names and imports
    match the Python package, whatever directory they sit in.
    """
    from grpc_tools import protoc  # dev dependency only

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "grouplat" / "proto"
        src.mkdir(parents=True)
        for name in PROTOS:
            shutil.copyfile(HERE / name, src / name)
        args = ["protoc", f"-I{tmp}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
        if protoc.main(args + [f"grouplat/proto/{name}" for name in PROTOS]) != 0:
            raise RuntimeError(f"protoc failed on {PROTOS}")
        made = []
        for name in PROTOS:
            for suffix in ("_pb2.py", "_pb2.pyi"):
                target = out_dir / name.replace(".proto", suffix)
                shutil.copyfile(src / target.name, target)
                made.append(target)
    return made


if __name__ == "__main__":
    for path in generate(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(path)
