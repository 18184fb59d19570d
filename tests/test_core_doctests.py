"""The examples in the core's docstrings run (and give what they say)."""

from __future__ import annotations

import doctest
import importlib

import pytest

CORE = [
    "basis",
    "space",
    "schedule",
    "solvers",
    "s1phase",
    "oracle",
    "ops",
    "modelinfo",
    "settings",
    "images",
    "__init__",
]


@pytest.mark.parametrize("name", CORE)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module("grouplat" if name == "__init__" else f"grouplat.{name}")
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert failures == 0
