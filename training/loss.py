"""The training loss: paper Eq. 7 with hidden groups (DESIGN §1).

    t ~ U(0, 1) under the training schedule,  z̄ ~ N(0, I),  x̄_t = α(t) ⊙ x̄ + (1 − α(t)) ⊙ z̄
    loss = w(t) ⊙ (x̄ − z̄ − Uᵀ f_θ(U(m ⊙ x̄_t), a(t)))²

`w` is α'(t)² (`paper`) or 1 on the active group (`uniform`); both are zero outside the active
group. With `hide`, `m` zeroes the groups that decode makes after the active one and `a(t)` marks
them −1. Every schedule quantity comes from the core's numpy `Schedule` (one source of truth);
the basis is the core's DCT matrix and order as torch constants.
"""

from __future__ import annotations

import numpy as np
import torch

from grouplat.basis import dct_matrix
from grouplat.oracle import GaussianOracle
from grouplat.schedule import Schedule
from grouplat.space import LatentSpace

WEIGHTINGS = ("paper", "uniform")
GAUSS_SAMPLES = 16  # samples per batch that also get the Gaussian-baseline error (diagnostics)


class TorchBasis:
    """The core's basis U on torch tensors: `to_latent` [B, C, H, W] → [B, C, H·W] and back."""

    def __init__(self, space: LatentSpace, device: torch.device | str = "cpu") -> None:
        self.space = space
        self.dct = space.basis.name == "dct"
        self.d_h = torch.tensor(dct_matrix(space.height), dtype=torch.float32, device=device)
        self.d_w = torch.tensor(dct_matrix(space.width), dtype=torch.float32, device=device)
        order = np.asarray(space.basis.order)
        self.order = torch.as_tensor(order, device=device)
        self.inverse = torch.as_tensor(np.argsort(order), device=device)

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        coefficients = self.d_h @ images @ self.d_w.T if self.dct else images
        return coefficients.reshape(b, c, h * w)[..., self.order]

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        b, c = latents.shape[:2]
        grid = latents[..., self.inverse].reshape(b, c, self.space.height, self.space.width)
        return self.d_h.T @ grid @ self.d_w if self.dct else grid


class GroupedFlowLoss:
    """Per-sample Eq. 7 loss; the caller draws t and z̄ (so DDP ranks and resumes stay exact)."""

    def __init__(
        self,
        space: LatentSpace,
        schedule: Schedule,  # the *training* schedule
        hide: bool = True,  # zero and mark hidden groups (DESIGN: hidden groups)
        weighting: str = "paper",  # "paper" (α'² of Eq. 7) or "uniform" (1 on the active group)
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
        self.basis = TorchBasis(space, device)
        self.group_of = torch.as_tensor(space.group_of, device=device)
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
