"""A handful of utilities instead of a framework (as in EDM): distributed setup, `info0`, and a
module summary with parameter and FLOP counts."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


def init_distributed(device: str = "auto") -> torch.device:
    """Join the torchrun process group when there is one (NCCL on GPU, gloo on CPU); pick the device."""
    cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        index = (
            int(os.environ.get("LOCAL_RANK", "0"))
            if device in ("auto", "cuda")
            else torch.device(device).index
        )
        torch.cuda.set_device(index or 0)
        return torch.device("cuda", index or 0)
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def info0(message: str, *args: object) -> None:
    """Log at INFO on rank 0 only (every rank would repeat it)."""
    if rank() == 0:
        logger.info(message, *args)


def count_flops(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """FLOPs of one forward (2 × multiply-adds of convolutions and matrix products; norms and
    pointwise ops are not counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def print_module_summary(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor], max_depth: int = 2
) -> dict[str, int]:
    """Print a table of submodules (parameters, output shape) and the totals; return the totals.

    `inputs` should have batch 1, so the FLOPs are per image.
    """
    rows: list[tuple[str, int, str]] = []
    hooks = []
    for name, sub in module.named_modules():
        depth = name.count(".") + 1 if name else 0
        if 0 < depth <= max_depth and (depth == max_depth or not list(sub.children())):

            def hook(mod: torch.nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                shape = list(out.shape) if isinstance(out, torch.Tensor) else "-"
                rows.append((name, sum(p.numel() for p in mod.parameters()), str(shape)))

            hooks.append(sub.register_forward_hook(hook))
    was_training = module.training
    module.eval()
    try:
        flops = count_flops(module, inputs)
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in module.parameters())
    width = max([len(r[0]) for r in rows] + [10])
    info0("%s %s   Output shape", f"{type(module).__name__} summary".ljust(width), "Parameters".rjust(12))
    for name, count, shape in rows:
        if count or "block" in name or "in0" in name:
            info0("%s %12s   %s", name.ljust(width), f"{count:,d}", shape)
    info0("%s %12s   %.3f GFLOPs per forward at batch 1", "Total".ljust(width), f"{params:,d}", flops / 1e9)
    return {"params": params, "flops": flops}
