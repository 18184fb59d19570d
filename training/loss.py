"""The training loss: paper Eq. 7 with hidden groups (docs/design.md §1).

    t ~ U(0, 1) under the training schedule,  z̄ ~ N(0, I),  x̄_t = α(t) ⊙ x̄ + (1 − α(t)) ⊙ z̄
    loss = w(t) ⊙ (x̄ − z̄ − Uᵀ f_θ(U(m ⊙ x̄_t), a(t)))²

`w` is α'(t)² (`paper`), 1 on the active group (`uniform`), or 1/|S_j| on it (`group`: each
phase's loss is its group's mean, so small coarse groups weigh as much as large fine ones); all
are zero outside the active group. `draw_times` says how t is drawn: uniformly in [0, 1] under the
training schedule (`schedule`, the paper's), or the active group first, uniformly, then t inside
its interval (`phase`: every group's phase gets an equal share of the training signal, whatever
its interval's length). With `hide`, `m` zeroes the groups that decode makes after the active
one and `a(t)` marks them −1. Every schedule quantity comes from the core's numpy `Schedule`
(one source of truth); the basis is the core's DCT matrix and order as torch constants.
"""

from __future__ import annotations

import numpy as np
import torch

from grouplat.oracle import GaussianOracle
from grouplat.schedule import Schedule
from grouplat.space import LatentSpace
from grouplat.training.networks import TorchBasis

WEIGHTINGS = ("paper", "uniform", "group")
TIMES = ("schedule", "phase")
GAUSS_SAMPLES = 16  # samples per batch that also get the Gaussian-baseline error (diagnostics)


def draw_times(
    schedule: Schedule, how: str, rng: np.random.Generator, n: int, shares: np.ndarray | None = None
) -> np.ndarray:
    """n forward times in [0, 1) for the loss: `schedule` (t ~ U(0, 1)) or `phase` (see above);
    `shares` (one per group, S1 first; default equal) is how often `phase` picks each group."""
    if how == "schedule":
        return rng.random(n)
    if how == "phase":
        p = None if shares is None else np.asarray(shares, np.float64) / np.sum(shares)
        group, position = rng.choice(schedule.k, size=n, p=p), rng.random(n)
        return schedule.start[group] + position * (schedule.end[group] - schedule.start[group])
    raise ValueError(f"unknown time sampling {how!r}: expected one of {', '.join(TIMES)}")


class GroupedFlowLoss:
    """Per-sample Eq. 7 loss; the caller draws t and z̄ (so DDP ranks and resumes stay exact)."""

    def __init__(
        self,
        space: LatentSpace,
        schedule: Schedule,  # the *training* schedule
        hide: bool = True,  # zero and mark hidden groups (docs/design.md: hidden groups)
        weighting: str = "paper",  # "paper" (α'² of Eq. 7), "uniform" (1 on the active group), "group"
        data_mean: np.ndarray | None = None,  # per-coefficient stats [C, H·W], for the Gaussian baseline
        data_std: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}: expected one of {', '.join(WEIGHTINGS)}")
        if schedule.k != space.k:
            raise ValueError(f"the schedule has {schedule.k} groups, the latent space {space.k}")
        self.space, self.schedule, self.hide, self.weighting = space, schedule, hide, weighting
        self.device = torch.device(device)
        self.basis = TorchBasis(space).to(device)
        self.group_of = torch.as_tensor(space.group_of, device=device)
        self.group_sizes = np.bincount(space.group_of, minlength=space.k).astype(np.float64)
        self.oracle: GaussianOracle | None = None
        if data_mean is not None and data_std is not None:
            self.oracle = GaussianOracle(space, data_mean, data_std)

    def __call__(
        self,
        net: torch.nn.Module,
        images: torch.Tensor,  # [B, C, H, W] in [-1, 1]
        t: np.ndarray,  # [B] forward times in [0, 1)
        noise: torch.Tensor,  # [B, C, H·W] standard normal z̄
        stats: bool = False,  # also return per-group diagnostics (numpy)
    ) -> tuple[torch.Tensor, dict[str, np.ndarray] | None]:
        """Returns the loss per sample [B] (sum over elements / (C·H·W)) and optional stats."""
        schedule, device = self.schedule, self.device
        levels = schedule.levels(t)  # [B, k] float64
        active = schedule.active(t)  # [B]
        rates = schedule.rates(t)
        weight = rates**2 if self.weighting == "paper" else (rates != 0).astype(np.float64)
        if self.weighting == "group":  # every phase's loss is its group's mean squared error
            weight = weight * (self.space.size / self.group_sizes)
        visible = ~schedule.hidden[active] if self.hide else np.ones_like(levels, dtype=bool)
        conditioning = schedule.conditioning(t, hide=self.hide)

        def per_element(values: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(values, device=device).to(dtype)[:, None, self.group_of]  # [B, 1, H·W]

        alpha = per_element(levels)
        clean = self.basis.to_latent(images)
        x_t = alpha * clean + (1 - alpha) * noise
        net_input = self.basis.from_latent(x_t * per_element(visible))
        output = net(net_input, torch.as_tensor(conditioning, device=device))
        error = (clean - noise - self.basis.to_latent(output.float())) ** 2
        loss = (per_element(weight) * error).sum(dim=(1, 2)) / error[0].numel()
        return loss, (self._stats(loss, error, x_t, clean, noise, levels, active) if stats else None)

    @torch.no_grad()
    def _stats(
        self,
        loss: torch.Tensor,
        error: torch.Tensor,
        x_t: torch.Tensor,
        clean: torch.Tensor,
        noise: torch.Tensor,
        levels: np.ndarray,
        active: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Per sample: active group, weighted loss and the active group's mean squared error; for
        the first GAUSS_SAMPLES samples also the error of the per-coefficient Gaussian predictor
        (the baseline to beat; the core's oracle, in numpy, hence the subset)."""
        in_group = self.space.group_of[None, :] == active[:, None]  # [B, H·W]
        size = in_group.sum(axis=1) * error.shape[1]
        mse = (error * torch.as_tensor(in_group, device=self.device)[:, None]).sum(dim=(1, 2))
        result = {"group": active, "loss": loss.detach().cpu().numpy(), "mse": mse.cpu().numpy() / size}
        if self.oracle is not None:
            n = GAUSS_SAMPLES
            u = self.oracle.u(x_t[:n].cpu().numpy().astype(np.float64), levels[:n])
            gauss = ((clean[:n] - noise[:n]).cpu().numpy() - u) ** 2
            result["gauss"] = (gauss * in_group[:n, None]).sum(axis=(1, 2)) / size[:n]
        return result
