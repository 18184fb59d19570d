"""A PyTorch velocity engine for Triton's Python backend on GPUs (`grouplat export --engine torch`).

The EMA network runs on CUDA, in fp32 or under bf16 / fp16 autocast, with one CUDA graph captured
per batch-size bucket (a request's batch is padded up to the next bucket, so the graph of a
bucket serves every batch up to it). On a CPU it runs eagerly: that is what the tests check.
It takes numpy (through the host) or torch tensors (kept on its device): the orchestrators of a
torch repository (torch_orchestrator.py) run it in-process or reach the `velocity` model
(torch_model.py) through BLS, their ODE state on its device either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grouplat.serving import contract
from grouplat.serving.orchestration import config_parameters

logger = logging.getLogger(__name__)
BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes with a CUDA graph of their own
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Placement:
    """Where an ODE state lives on one torch device: host arrays are put there (`to_device`) and
    tensors handed over by DLPack (a Triton tensor in GPU memory) are taken without a copy
    (`from_dlpack`). The orchestrators of a torch repository keep their state here."""

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    @staticmethod
    def from_dlpack(capsule: Any) -> torch.Tensor:
        return torch.from_dlpack(capsule)


class TorchVelocity(Placement):
    """`f(x_t [B, C, H, W], levels [B, k]) → [B, C, H, W]` (float32; numpy, or torch tensors that
    stay on the engine's device)."""

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
        super().__init__(device)
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

    def __call__(self, x_t: Any, levels: Any) -> Any:
        """numpy in, numpy out (through the host); a torch tensor in, a tensor out on this
        engine's device with no host copy: the orchestrator's device-resident ODE loop."""
        if isinstance(x_t, torch.Tensor):
            return self.forward(x_t.to(self.device), levels.to(self.device))
        x = torch.from_numpy(np.ascontiguousarray(x_t, np.float32)).to(self.device)
        a = torch.from_numpy(np.ascontiguousarray(levels, np.float32)).to(self.device)
        return self.forward(x, a).cpu().numpy()

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """The velocity of device tensors, as a new tensor (a CUDA graph's output is copied out:
        the next replay overwrites it)."""
        n = len(x)
        if self.use_graphs and n <= self.buckets[-1]:
            bucket = next(b for b in self.buckets if b >= n)
            graph, static_x, static_a, out = self._graph(bucket, tuple(x.shape[1:]), levels.shape[1])
            static_x[:n].copy_(x)
            static_a[:n].copy_(levels)
            graph.replay()
            return out[:n].clone()
        with torch.no_grad():
            return self._forward(x.float(), levels.float())


def load_torch_velocity(directory: str | Path, device: str, precision: str = "fp32") -> TorchVelocity:
    """The engine of a released checkpoint (model.safetensors + metadata.json) in `directory`."""
    from grouplat.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(directory)
    return TorchVelocity(checkpoint.network, device=device, precision=precision)


def triton_device(args: dict[str, str]) -> str:
    """The torch device of one Triton model instance: config parameter `device` gpu means the
    instance's GPU (`cuda:<model_instance_device_id>`), else the CPU."""
    params = config_parameters(json.loads(args["model_config"]))
    gpu = params.get(contract.DEVICE_PARAM, "cpu") == "gpu"
    return f"cuda:{args.get('model_instance_device_id') or 0}" if gpu else "cpu"


def triton_engine(args: dict[str, str], directory: str | Path) -> TorchVelocity:
    """The engine of one Triton model instance (the `velocity` model, or an orchestrator that runs
    it in-process) on `triton_device(args)`, weights from `directory`, config parameter
    `precision` picking the autocast."""
    params = config_parameters(json.loads(args["model_config"]))
    return load_torch_velocity(directory, triton_device(args), params.get(contract.PRECISION_PARAM, "fp32"))
