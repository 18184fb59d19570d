"""The exact Gaussian oracle (docs/design.md §1): the true velocity when coefficients are independent,
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

    Args:
        x: the state `x̄_t` (coefficients).
        alpha: the level α in [0, 1], broadcastable to x.
        mean: the data mean μ, broadcastable to x.
        var: the data variance σ², broadcastable to x.

    Returns:
        u, broadcast from the arguments (numpy arrays or torch tensors alike).

    Example:
        >>> gaussian_velocity(0.3, 1.0, 0.5, 4.0)  # α = 1: x̄_t is the data, so u = x̄_t
        0.3
        >>> gaussian_velocity(0.3, 0.0, 0.5, 4.0)  # α = 0: x̄_t is the noise, so u = μ − x̄_t
        0.2
    """
    gain = (alpha * var - (1 - alpha)) / (alpha**2 * var + (1 - alpha) ** 2)  # type: ignore[operator]
    return mean + gain * (x - alpha * mean)  # type: ignore[operator]


def gaussian_residual_scale(alpha: Array, var: Array) -> Array:
    """The std of `x̄ − z̄` given `x̄_t` under the same Gaussian: `σ / sqrt(α² σ² + (1 − α)²)`.

    It is 1 at α = 1 and σ at α = 0: the natural size of what a network adds to `u`.

    Args:
        alpha: the level α in [0, 1].
        var: the data variance σ², broadcastable to alpha.

    Returns:
        The scale, broadcast from the arguments (numpy arrays or torch tensors alike).
    """
    return (var / (alpha**2 * var + (1 - alpha) ** 2)) ** 0.5  # type: ignore[operator]


class GaussianOracle:
    """A velocity callable (`f(x_t, levels) → pixels`) with the exact `u = E[x̄ − z̄ | x̄_t]`.

    `mean` and `std` are per coefficient, broadcastable to [C, H·W]. It needs nothing from hidden
    groups, so it is unchanged by hiding.

    Args:
        space: the latent space (basis and groups).
        mean: μ, broadcastable to [C, H·W].
        std: σ, broadcastable to [C, H·W]; positive.

    Attributes:
        space: as given.
        mean, std: float64 [C, H·W] (read-only broadcast views).

    Raises:
        ValueError: a std that is not positive everywhere, or stats that do not broadcast.

    Example:
        >>> import grouplat
        >>> space = grouplat.LatentSpace((1, 8, 8), "dct", (4, 16))
        >>> oracle = grouplat.GaussianOracle(space, 0.0, 0.5)
        >>> images = oracle.sample(2).astype(np.float32)
        >>> schedule = grouplat.Schedule.from_cuts("0.5,0.8")
        >>> z = grouplat.encode(oracle, images, space, schedule, steps=3, solver="gei1",
        ...                     mean=oracle.mean, std=oracle.std)  # GEI is exact for Gaussian data
        >>> bool(np.abs(z - oracle.encode(images)).max() < 1e-4)
        True
    """

    def __init__(self, space: LatentSpace, mean: np.ndarray, std: np.ndarray) -> None:
        self.space = space
        self.mean = np.broadcast_to(np.asarray(mean, np.float64), space.latent_shape)
        self.std = np.broadcast_to(np.asarray(std, np.float64), space.latent_shape)
        if (self.std <= 0).any():
            raise ValueError("oracle std must be positive")

    def u(self, latents: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Exact u in coefficient space.

        Hidden levels (−1) are read as 0: a hidden group is pure noise, and its u is never used.

        Args:
            latents: the state `x̄_t`, [B, C, H·W].
            levels: [B, k], one level per group (`Schedule.conditioning`).

        Returns:
            float64 [B, C, H·W].
        """
        alpha = np.clip(np.asarray(levels, np.float64), 0.0, 1.0)[:, self.space.group_of][:, None]
        return gaussian_velocity(latents, alpha, self.mean, self.std**2)

    def __call__(self, x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """The velocity callable: `U u(Uᵀx_t, levels)`, computed in float64.

        Args:
            x_t: [B, C, H, W] pixels.
            levels: [B, k].

        Returns:
            float32 [B, C, H, W].
        """
        latents = self.space.to_latent(np.asarray(x_t, np.float64))
        return self.space.from_latent(self.u(latents, levels)).astype(np.float32)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """The exact encode: `z̄ = (x̄ − μ)/σ` (the 1-D flow is affine and order-preserving).

        Args:
            images: [B, C, H, W].

        Returns:
            float64 latents [B, C, H·W].
        """
        return (self.space.to_latent(np.asarray(images, np.float64)) - self.mean) / self.std

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """The exact decode: `x = U(μ + σ z̄)`.

        Args:
            latents: [B, C, H·W].

        Returns:
            float64 images [B, C, H, W].
        """
        return self.space.from_latent(self.mean + self.std * np.asarray(latents, np.float64))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """n images drawn from the Gaussian: `decode` of standard normal latents.

        Args:
            n: the number of images.
            seed: seeds the numpy generator; the same seed gives the same images.

        Returns:
            float64 [n, C, H, W] (not clipped to [-1, 1]).
        """
        noise = np.random.default_rng(seed).standard_normal((n, *self.space.latent_shape))
        return self.decode(noise)
