"""Fig. 2a: the 2-D Gaussian mixture preset generates x first, then y, and lands on the modes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from grouplat import Schedule, decode  # noqa: E402
from grouplat.training.checkpoint import load_checkpoint  # noqa: E402
from grouplat.training.dataset import GaussianMixture2D  # noqa: E402
from grouplat.training.presets import PRESETS  # noqa: E402
from grouplat.training.training_loop import TrainConfig, train  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine, OpenMP's spinning made these tests 10–30× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gmm2d_preset_generates_sequentially_onto_the_modes(tmp_path: Path) -> None:
    cfg = TrainConfig(**PRESETS["gmm2d"]).replace(  # the preset, shortened to ~10 s on 2 cores
        steps=800,
        lr=2e-3,
        network=dict(arch="mlp", hidden=128, layers=3),
        out=str(tmp_path),
        progress=False,
        sample_every=0,
        checkpoint_every=10**6,
        stats_items=1024,
    )
    model = load_checkpoint(train(cfg))
    assert model.space.k == 2 and model.space.basis.name == "pixel"

    states: list[np.ndarray] = []
    latents = np.random.default_rng(1).standard_normal((2000, 1, 2)).astype(np.float32)
    points = decode(
        model.velocity(),
        latents,
        model.space,
        Schedule.from_cuts("0.5"),
        steps=40,
        std=model.data_std,
        callback=lambda i, t, x: states.append(x.copy()),
    )
    path = np.stack([latents, *states])[:, :, 0, :]  # [steps + 1, N, 2]
    moves = np.abs(np.diff(path, axis=0)).max(axis=1)  # [steps, 2]: how far x and y moved per step
    x_steps, y_steps = np.flatnonzero(moves[:, 0] > 0), np.flatnonzero(moves[:, 1] > 0)
    assert len(x_steps) and len(y_steps) and x_steps.max() < y_steps.min()  # x settles before y moves

    centers = GaussianMixture2D().centers
    distance = np.linalg.norm(points.reshape(-1, 2)[:, None] - centers[None], axis=-1)
    on_mode = distance.min(axis=1) < 0.3  # 3.75 σ; the exact velocity reaches 99.6 % here
    shares = np.bincount(distance.argmin(axis=1)[on_mode], minlength=len(centers)) / on_mode.sum()
    assert on_mode.mean() > 0.65, on_mode.mean()  # a per-coordinate Gaussian gets ~0.25
    assert shares.min() > 0.05, shares  # every mode is covered (1/8 = 0.125 each)
