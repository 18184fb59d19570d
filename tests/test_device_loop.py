"""The device-resident ODE loop (issue 14): with the torch engine, a solve keeps its state on the
engine's device from the request's inputs to its output, so no step copies to the host.

On this CPU host the device is torch's CPU, and "a copy to the host" is any way a tensor leaves
torch (numpy conversion, `.item()`, `.tolist()`, a Python number or bool): every one of them is
recorded, and a step may make none. On a GPU each would be a device-to-host copy and a stall.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_export import write_checkpoint

import grouplat
from grouplat.export.engine import model_info
from grouplat.export.torch_engine import TorchVelocity
from grouplat.serving import contract as c
from grouplat.serving.orchestration import Orchestrator
from grouplat.serving.scheduler import Job, Plan, Scheduler
from grouplat.settings import GenerationSettings
from grouplat.solvers import SOLVERS
from grouplat.space import quadrant_groups
from grouplat.training.checkpoint import load_checkpoint

LEAVING = ("__array__", "numpy", "item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@contextmanager
def host_copies() -> Iterator[list[str]]:
    """Every way a torch tensor leaves torch while inside, by name, in order."""
    seen: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in LEAVING}

    def recording(name: str, original: Any) -> Any:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return original(self, *args, **kwargs)

        return call

    for name, original in saved.items():
        setattr(torch.Tensor, name, recording(name, original))
    try:
        yield seen
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class Watched:
    """The torch engine, noting at each call how many host copies had happened before it."""

    def __init__(self, engine: TorchVelocity, seen: list[str]) -> None:
        self.engine, self.seen, self.marks = engine, seen, []  # type: ignore[var-annotated]

    def __call__(self, x_t: Any, levels: Any) -> Any:
        assert isinstance(x_t, torch.Tensor) and isinstance(levels, torch.Tensor), "a step went to the host"
        self.marks.append(len(self.seen))
        return self.engine(x_t, levels)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return self.engine.to_device(array)


SPACES = {  # a small network over DCT groups and over pixel quadrants (gathered, not sliced)
    "dct": (grouplat.LatentSpace((3, 16, 16), "dct", (10, 40)), "0.6,0.8"),
    "pixel": (grouplat.LatentSpace((3, 16, 16), "pixel", quadrant_groups(16, 16)), "0.4,0.6,0.8"),
}


def loaded(tmp_path: Path, basis: str) -> tuple[Any, TorchVelocity]:
    checkpoint = load_checkpoint(write_checkpoint(tmp_path / "checkpoint-0000001", 0, *SPACES[basis]))
    return checkpoint, TorchVelocity(checkpoint.network, "cpu", graphs=False)


@pytest.mark.parametrize("basis", SPACES)
def test_a_solve_on_device_arrays_stays_there_and_equals_the_numpy_solve(tmp_path: Path, basis: str) -> None:
    checkpoint, engine = loaded(tmp_path, basis)
    info = model_info(checkpoint)
    z = np.random.default_rng(3).standard_normal((2, *info.space.latent_shape)).astype(np.float32)
    for solver in SOLVERS:
        args = info.solve_args(info.train_schedule, 3 * info.space.k, solver)
        images = grouplat.decode(engine, z, **args)  # numpy in: every step through the host
        latents = grouplat.encode(engine, images, **args)
        with host_copies() as seen:
            watched = Watched(engine, seen)
            on_device = grouplat.decode(watched, torch.from_numpy(z), **args)
            back = grouplat.encode(watched, on_device, **args)
        assert seen == [], f"{solver}: {seen}"
        assert isinstance(back, torch.Tensor) and watched.marks
        # float32 rounding (torch and numpy add matmul terms in other orders), grown by the steps
        np.testing.assert_allclose(on_device.numpy(), images, atol=1e-3, err_msg=solver)
        np.testing.assert_allclose(back.numpy(), latents, atol=2e-3, err_msg=solver)


def requests(info: Any) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (4, *info.space.shape)).astype(np.float32)
    return {
        c.ENCODE: {c.IMAGE: images[:2]},
        c.DECODE: {c.LATENT: rng.standard_normal((2, *info.space.latent_shape)).astype(np.float32)},
        c.MIX: {c.IMAGE_A: images[:2], c.IMAGE_B: images[2:], c.GROUPS: np.eye(2, info.space.k, dtype=bool)},
    }


@pytest.mark.parametrize("path", ["request", "step"])
def test_the_orchestrator_copies_to_the_host_once_per_request_whatever_the_steps(
    tmp_path: Path, path: str
) -> None:
    """The request path (`Orchestrator.run`) and the step scheduler (`Plan` programs) over the
    torch engine: the velocity only ever sees device tensors, the host copies of a request do not
    grow with its steps (none inside a decode's loop; a step-scheduled decode reads its latents'
    bytes for the phase cache once), and the outputs equal the host path's."""
    checkpoint, engine = loaded(tmp_path, "dct")
    info = model_info(checkpoint)
    host = Orchestrator(info, lambda x, a: engine(x, a), GenerationSettings())  # no to_device: numpy
    copies: dict[tuple[str, int], int] = {}
    for steps in (8, 16):
        settings = GenerationSettings("gei2ab", steps).check(info.space.k)
        for operation, inputs in requests(info).items():
            expected = host.run(operation, inputs, settings)
            with host_copies() as seen:
                watched = Watched(engine, seen)
                orchestrator = Orchestrator(info, watched, settings)
                if path == "request":
                    output = orchestrator.run(operation, inputs, settings)
                else:
                    output = run_program(
                        watched, Plan(info, settings).program(operation, orchestrator.place(inputs))
                    )
                during = watched.marks[-1]  # copies before the last network evaluation
            assert watched.marks and watched.marks[0] == during or operation == c.MIX, (
                operation,
                watched.marks,
            )
            copies[operation, steps] = during
            np.testing.assert_allclose(np.asarray(output), expected, atol=2e-3, err_msg=f"{path} {operation}")
    for operation in requests(info):
        assert copies[operation, 8] == copies[operation, 16] <= 2, copies  # one conversion: ≤ 2 calls
    if path == "request":
        assert all(count == 0 for count in copies.values()), copies


def run_program(engine: Any, program: Any) -> np.ndarray:
    scheduler = Scheduler(engine, max_batch=8)
    outcome: list[Any] = []
    scheduler.submit(Job(program, outcome.append))
    try:
        for _ in range(600):
            if outcome:
                break
            time.sleep(0.05)
    finally:
        scheduler.close()
    assert outcome and not isinstance(outcome[0], BaseException), outcome
    return grouplat.arrays.to_numpy(outcome[0])
