"""The nets `grouplat bench` measures: the demo model (or its network with random weights) and
the ffhq64-sized network; and P4, the NFE a solver needs for a 40 dB round trip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import grouplat
from grouplat.modelinfo import ModelInfo
from grouplat.solvers import NFE_PER_STEP
from grouplat.tools.evaluation.metrics import psnr

NETS = {"demo": "shapes32", "ffhq64": "ffhq64"}  # net → network preset (grouplat.training.presets)
RESOLUTION = {"shapes32": 32, "ffhq64": 64}
P4_SOLVERS = ("euler", "heun")
P4_TARGET_DB = 40.0
P4_STEPS = tuple(2**i for i in range(2, 12))  # 4 … 2048 steps, tried until the round trip reaches the target
P4_REFERENCE_STEPS = 256  # Heun (64 dB round trip on the demo model), for the one-way decode PSNR beside it
P4_IMAGES = 8


@dataclass
class Net:
    name: str
    preset: str  # the preset, or the checkpoint's path
    network: Any  # torch.nn.Module, eval mode
    info: ModelInfo
    onnx: bytes
    trained: bool


def random_network(preset: str, seed: int = 0, scale: float = 0.02) -> tuple[Any, ModelInfo]:
    """A preset's U-Net at its resolution with random weights (perturbed so that no layer is exactly
    zero), the paper's groups, unit data statistics."""
    import torch

    from grouplat.training.networks import build_network
    from grouplat.training.presets import PRESETS

    size = RESOLUTION[preset]
    space = grouplat.LatentSpace((3, size, size), "dct", grouplat.PAPER_BOUNDARIES)
    config = {**PRESETS[preset]["network"], "channels": 3, "resolution": [size, size], "levels": space.k}
    torch.manual_seed(seed)
    network = build_network({**config, "dropout": 0.0}).eval()
    with torch.no_grad():
        for p in network.parameters():
            p.add_(scale * torch.randn_like(p))
    ones = np.ones(space.latent_shape, np.float32)
    schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN)
    return network, ModelInfo(f"random-{preset}", space, schedule, True, 0 * ones, ones)


def load_net(name: str, checkpoint: str | None = None) -> Net:
    from grouplat.export.engine import export_onnx, model_info
    from grouplat.training.checkpoint import load_checkpoint

    if name == "demo" and checkpoint:
        loaded = load_checkpoint(checkpoint)
        network, info, label, trained = loaded.network, model_info(loaded), str(loaded.path), True
    else:
        network, info = random_network(NETS[name])
        label, trained = NETS[name], False
    return Net(name, label, network, info, export_onnx(network, info), trained)


def round_trip_nfe(
    velocity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    images: np.ndarray,
    info: ModelInfo,
    schedule: grouplat.Schedule,
    solvers: Sequence[str] = P4_SOLVERS,
    target_db: float = P4_TARGET_DB,
    ladder: Sequence[int] = P4_STEPS,
    reference_steps: int = P4_REFERENCE_STEPS,
) -> dict[str, Any]:
    """P4: per solver, the least NFE on `ladder` whose encode → decode round trip reaches `target_db`,
    the round-trip PSNR at each NFE tried, and the one-way decode PSNR at the NFE found (against a
    `reference_steps` Heun decode of the reference latents): the round trip flatters the solver."""
    reference = info.solve_args(schedule, reference_steps, "heun")
    z = grouplat.encode(velocity, images, **reference)
    decoded = grouplat.decode(velocity, z, **reference)
    out: dict[str, Any] = {"target_db": target_db, "images": len(images), "reference_steps": reference_steps}
    for solver in solvers:
        curve: dict[int, float] = {}
        found: int | None = None
        one_way: float | None = None
        for steps in (s for s in ladder if s >= info.space.k):
            kw = info.solve_args(schedule, steps, solver)
            back = grouplat.decode(velocity, grouplat.encode(velocity, images, **kw), **kw)
            nfe = steps * NFE_PER_STEP[solver]
            curve[nfe] = round(psnr(back, images), 2)
            if curve[nfe] >= target_db:
                found = nfe
                one_way = round(psnr(grouplat.decode(velocity, z, **kw), decoded), 2)
                break
        out[solver] = {"nfe": found, "round_trip_psnr_db": curve, "one_way_psnr_db": one_way}
    return out
