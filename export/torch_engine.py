"""A PyTorch velocity engine for Triton's Python backend on GPUs (`grouplat export --engine torch`).

The EMA network runs on CUDA, in fp32 or under bf16 / fp16 autocast, with one CUDA graph captured
per batch-size bucket (a request's batch is padded up to the next bucket, so the graph of a
bucket serves every batch up to it). On a CPU it runs eagerly: that is what the tests check.
The orchestrators reach it through BLS (they stay torch-free).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)
BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes with a CUDA graph of their own
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchVelocity:
    """`f(x_t [B, C, H, W], levels [B, k]) → [B, C, H, W]` (numpy float32 in and out)."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: str = "cuda",
        precision: str = "fp32",
        graphs: bool = True,  # CUDA graphs per bucket (CUDA only)
        buckets: Sequence[int] = BUCKETS,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} was asked for, but torch sees no CUDA GPU here")
        self.device = torch.device(device)
        self.network = network.eval().requires_grad_(False).to(self.device)
        self.dtype = PRECISIONS[precision]
        self.buckets = sorted(buckets)
        self.graphs: dict[int, tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.use_graphs = graphs and self.device.type == "cuda"

    def _forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.network(x, levels).float()

    def _graph(
        self, bucket: int, shape: tuple[int, ...], k: int
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Capture (once) the forward at batch `bucket`: static inputs and output."""
        if bucket not in self.graphs:
            x = torch.zeros((bucket, *shape), device=self.device)
            a = torch.zeros((bucket, k), device=self.device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):  # warm-up on a side stream, as CUDA graphs require
                    self._forward(x, a)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self._forward(x, a)
            self.graphs[bucket] = (graph, x, a, out)
            logger.info("velocity engine: CUDA graph captured for batch %d", bucket)
        return self.graphs[bucket]

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        n = len(x_t)
        if self.use_graphs and n <= self.buckets[-1]:
            bucket = next(b for b in self.buckets if b >= n)
            graph, x, a, out = self._graph(bucket, tuple(x_t.shape[1:]), levels.shape[1])
            x[:n].copy_(torch.from_numpy(np.ascontiguousarray(x_t)), non_blocking=True)
            a[:n].copy_(torch.from_numpy(np.ascontiguousarray(levels)), non_blocking=True)
            graph.replay()
            return out[:n].cpu().numpy()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(x_t, np.float32)).to(self.device)
            a = torch.from_numpy(np.ascontiguousarray(levels, np.float32)).to(self.device)
            return self._forward(x, a).cpu().numpy()


def load_torch_velocity(directory: str | Path, device: str, precision: str = "fp32") -> TorchVelocity:
    """The engine of a released checkpoint (model.safetensors + metadata.json) in `directory`."""
    from grouplat.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(directory)
    return TorchVelocity(checkpoint.network, device=device, precision=precision)
