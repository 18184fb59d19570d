"""The layout's one rule: imports point one way — tools → client / export → training / serving → core.

Read from the source (every import statement, also those inside functions), so a lazy import
that breaks the rule fails here too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder → the grouplat parts (and heavy packages) it must never import
FORBIDDEN = {
    "grouplat": (  # the numpy method core (its files directly under grouplat/, not cli.py)
        "grouplat.serving", "grouplat.tools", "grouplat.training", "grouplat.export",
        "grouplat.client", "grouplat.proto", "torch", "onnx", "onnxruntime", "tritonclient",
    ),
    "triton_repo": ("grouplat.tools", "grouplat.training", "grouplat.export", "grouplat.client", "torch"),
    "training": ("grouplat.serving", "grouplat.tools", "grouplat.export", "grouplat.client"),
    "export": ("grouplat.tools", "grouplat.client"),
    "client": ("grouplat.tools", "grouplat.training", "grouplat.export", "torch", "onnx", "onnxruntime"),
    "proto": ("grouplat.serving", "grouplat.tools", "grouplat.training", "grouplat.export", "torch"),
}  # fmt: skip
# client may use exactly one serving module: the contract's names (standard library only)
ALLOWED = {"client": ("grouplat.serving.contract",)}


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def files(folder: str) -> list[Path]:
    if folder == "grouplat":
        return [p for p in (ROOT / "grouplat").glob("*.py") if p.name != "cli.py"]
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_one_way(folder: str) -> None:
    broken = []
    for path in files(folder):
        for name in sorted(imports(path)):
            if any(name.startswith(a) for a in ALLOWED.get(folder, ())):
                continue
            bad = [f for f in FORBIDDEN[folder] if name == f or name.startswith(f + ".")]
            if bad:
                broken.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not broken, "\n".join(broken)
    assert files(folder), f"no Python files found in {folder}/"


def test_the_core_is_numpy_only() -> None:
    """Outside the standard library, the core's modules import numpy alone (PIL lazily, in images;
    array_api_compat in grouplat/arrays.py, which imports an array library only when handed one of
    its arrays: tests/test_core_import.py checks that a numpy solve loads no torch)."""
    import sys

    third_party = set()
    for path in files("grouplat"):
        for name in imports(path):
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("grouplat", "__future__"):
                third_party.add(top)
    assert third_party <= {"numpy", "PIL", "array_api_compat"}, third_party
