"""The exact Gaussian oracle (DESIGN §1): the true velocity when coefficients are independent,
`x̄_i ~ N(μ_i, σ_i²)`. Solver, schedule, basis and serving must reproduce it to solver accuracy.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

from grouplat.space import LatentSpace

Array = TypeVar("Array")  # numpy arrays and torch tensors alike: only arithmetic is used


def gaussian_velocity(x: Array, alpha: Array, mean: Array, var: Array) -> Array:
    """The exact `u = E[x̄ − z̄ | x̄_t]` for `x̄ ~ N(mean, var)` at level α, elementwise:

        u = μ + (α σ² − (1 − α)) / (α² σ² + (1 − α)²) · (x̄_t − α μ)

    Plain arithmetic, so training (torch) and the solvers (numpy) share this one formula.
    """
    gain = (alpha * var - (1 - alpha)) / (alpha**2 * var + (1 - alpha) ** 2)  # type: ignore[operator]
    return mean + gain * (x - alpha * mean)  # type: ignore[operator]


def gaussian_residual_scale(alpha: Array, var: Array) -> Array:
    """The std of `x̄ − z̄` given `x̄_t` under the same Gaussian: `σ / sqrt(α² σ² + (1 − α)²)`.

    It is 1 at α = 1 and σ at α = 0: the natural size of what a network adds to `u`.
    """
    return (var / (alpha**2 * var + (1 - alpha) ** 2)) ** 0.5  # type: ignore[operator]


class GaussianOracle:
    """A velocity callable (`f(x_t, levels) → pixels`) with the exact `u = E[x̄ − z̄ | x̄_t]`.

    `mean` and `std` are per coefficient, broadcastable to [C, H·W]. It needs nothing from hidden
    groups, so it is unchanged by hiding.
    """

    def __init__(self, space: LatentSpace, mean: np.ndarray, std: np.ndarray) -> None:
        self.space = space
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), space.latent_shape)
        self.std = np.broadcast_to(np.asarray(std, np.float64), space.latent_shape)
        if (self.std <= 0).any():
            raise ValueError("oracle std must be positive")

    def u(self, latents: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Exact u in coefficient space: latents [B, C, H·W], levels [B, k] → [B, C, H·W].

        Hidden levels (−1) are read as 0: a hidden group is pure noise, and its u is never used.
        """
        alpha = np.clip(np.asarray(levels, np.float64), 0.0, 1.0)[:, self.space.group_of][:, None]
        return gaussian_velocity(latents, alpha, self.mean, self.std**2)

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        latents = self.space.to_latent(np.asarray(x_t, np.float64))
        return self.space.from_latent(self.u(latents, levels)).astype(np.float32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """The exact encode: `z̄ = (x̄ − μ)/σ` (the 1-D flow is affine and order-preserving)."""
        return (self.space.to_latent(np.asarray(images, np.float64)) - self.mean) / self.std

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """The exact decode: `x = U(μ + σ z̄)`."""
        return self.space.from_latent(self.mean + self.std * np.asarray(latents, np.float64))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n images [n, C, H, W] drawn from the Gaussian (float64)."""
        noise = np.random.default_rng(seed).standard_normal((n, *self.space.latent_shape))
        return self.decode(noise)
