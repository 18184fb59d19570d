"""Arrays wherever the state lives: the core computes on numpy arrays, or unchanged on the arrays of
another array-API library (torch tensors on a GPU), so that an ODE solve stays on the device that
holds its state (docs/design.md §4, the device-resident loop). Through `array_api_compat`, which
imports a library only when it is handed one of its arrays: the core itself imports only numpy.

The method's constants (bases, group indices, data statistics, level tables) are numpy; `beside`
puts one next to a state, once per solve, never once per step.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat
import array_api_compat.numpy as numpy_namespace
import numpy as np

# a numpy array, or an array of another array-API library (a torch tensor, on any device)
Array = Any


def namespace(array: Any) -> ModuleType:
    """The array-API namespace of `array`'s library (numpy for numpy arrays, lists and scalars)."""
    if array_api_compat.is_array_api_obj(array) and not array_api_compat.is_numpy_array(array):
        return array_api_compat.array_namespace(array)
    return numpy_namespace


def is_host(array: Any) -> bool:
    """True for numpy arrays (and anything numpy reads directly): no device copies needed."""
    return namespace(array) is numpy_namespace


def beside(constant: Any, array: Any) -> Any:
    """A numpy constant as an array of `array`'s library on `array`'s device (numpy stays numpy)."""
    if is_host(array):
        return np.asarray(constant)
    return namespace(array).asarray(np.asarray(constant), device=array_api_compat.device(array))


def to_numpy(array: Any) -> np.ndarray:
    """`array` copied to the host as a numpy array (a numpy array is returned as it is)."""
    if is_host(array):
        return np.asarray(array)
    return np.asarray(array_api_compat.to_device(array, "cpu"))
