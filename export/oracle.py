"""The exact Gaussian oracle as an ONNX velocity engine (`X_T`, `LEVELS` → `U`).

Served like a trained network, it lets the whole stack — export, Triton, orchestrators, client —
be checked against the exact answer `z̄ = (x̄ − μ)/σ` (docs/design.md §1).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from grouplat.basis import dct_matrix
from grouplat.modelinfo import ModelInfo, fingerprint_of
from grouplat.oracle import GaussianOracle
from grouplat.schedule import Schedule


def basis_matrix(oracle: GaussianOracle) -> np.ndarray:
    """M [H·W, H·W] with x̄ = M x for one flattened channel (rows in basis order)."""
    space = oracle.space
    if space.basis.name == "pixel":
        return np.eye(space.size)
    return np.kron(dct_matrix(space.height), dct_matrix(space.width))[space.basis.order]


def oracle_onnx(oracle: GaussianOracle, opset: int = 17) -> onnx.ModelProto:
    space = oracle.space
    c, h, w, n = space.channels, space.height, space.width, space.size
    m = basis_matrix(oracle)
    one_hot = np.eye(space.k)[:, space.group_of]  # [k, H·W]: level of each coefficient
    constants = {
        "basis_t": m.T,
        "basis": m,
        "one_hot": one_hot,
        "mean": oracle.mean,
        "var": oracle.std**2,
        "one": np.ones(()),
        "zero": np.zeros(()),
        "flat": np.array([0, c, n], np.int64),
        "image": np.array([0, c, h, w], np.int64),
        "axis1": np.array([1], np.int64),
    }
    initializers = [
        numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k)
        for k, v in constants.items()
    ]
    node = helper.make_node
    nodes = [
        node("Reshape", ["X_T", "flat"], ["x"]),
        node("MatMul", ["x", "basis_t"], ["xb"]),  # x̄ = Uᵀx
        node("Clip", ["LEVELS", "zero", "one"], ["levels"]),  # hidden (−1) reads as 0
        node("MatMul", ["levels", "one_hot"], ["a2"]),
        node("Unsqueeze", ["a2", "axis1"], ["a"]),  # [B, 1, H·W]
        node("Sub", ["one", "a"], ["b"]),  # 1 − α
        node("Mul", ["a", "var"], ["a_var"]),
        node("Sub", ["a_var", "b"], ["num"]),  # ασ² − (1 − α)
        node("Mul", ["a_var", "a"], ["aa_var"]),
        node("Mul", ["b", "b"], ["bb"]),
        node("Add", ["aa_var", "bb"], ["den"]),  # α²σ² + (1 − α)²
        node("Div", ["num", "den"], ["gain"]),
        node("Mul", ["a", "mean"], ["a_mean"]),
        node("Sub", ["xb", "a_mean"], ["centered"]),
        node("Mul", ["gain", "centered"], ["scaled"]),
        node("Add", ["mean", "scaled"], ["u"]),  # μ + gain · (x̄ − αμ)
        node("MatMul", ["u", "basis"], ["pixels"]),  # back to pixel space: U u
        node("Reshape", ["pixels", "image"], ["U"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gaussian_oracle",
        [
            helper.make_tensor_value_info("X_T", TensorProto.FLOAT, ["batch", c, h, w]),
            helper.make_tensor_value_info("LEVELS", TensorProto.FLOAT, ["batch", space.k]),
        ],
        [helper.make_tensor_value_info("U", TensorProto.FLOAT, ["batch", c, h, w])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # readable by every onnxruntime this project supports
    onnx.checker.check_model(model)
    return model


def oracle_info(oracle: GaussianOracle, train_schedule: Schedule, hide: bool = True) -> ModelInfo:
    """ModelInfo for an oracle engine; its fingerprint covers the statistics and the layout."""
    mean, std = oracle.mean.astype(np.float32), oracle.std.astype(np.float32)
    fingerprint = fingerprint_of("gaussian-oracle", oracle.space.describe(), mean.tobytes(), std.tobytes())
    return ModelInfo(fingerprint, oracle.space, train_schedule, hide, mean, std)
