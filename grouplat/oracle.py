"""The exact Gaussian oracle (docs/design.md §1): the true velocity when coefficients are independent,
`x̄_i ~ N(μ_i, σ_i²)`. Solver, schedule, basis and serving must reproduce it to solver accuracy.
Also the Gaussian's exact flow, which the GEI solvers take as the part they need not integrate
(`GaussianPart`, and `FullCovarianceGaussianPart` for a group with a full covariance).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from grouplat import arrays
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


class GaussianPart:
    """The exactly solvable Gaussian part of one group's flow (docs/design.md §1, GEI).

    For coefficients with data mean μ and std σ, `u_g = μ + g(α)(x − αμ)` is the oracle velocity;
    with `w = (x − αμ)/s(α)` and `τ = ∫dα/s(α)` the full flow is `dw/dτ = u − u_g`, so only the
    network's residual is integrated numerically and the stiff Gaussian part is exact.

    Args:
        mean: μ of the group's coefficients (any shape), as float64 numpy or device arrays.
        std: σ of the same coefficients, broadcastable to mean, in mean's library; positive.

    Attributes:
        mean: float64 μ.
        var: float64 σ².
    """

    def __init__(self, mean: Any, std: Any) -> None:
        self.xp = arrays.namespace(mean)
        self.mean = self.xp.astype(self.xp.asarray(mean), self.xp.float64)
        self.var = self.xp.astype(self.xp.asarray(std), self.xp.float64) ** 2
        self._std = self.xp.sqrt(self.var)
        self._root = self.xp.sqrt(1 + self.var)

    def scale(self, alpha: float) -> Any:
        """`s(α) = sqrt(α²σ² + (1 − α)²)`, the std of x̄_t at level α (float64)."""
        return self.xp.sqrt(alpha**2 * self.var + (1 - alpha) ** 2)

    def tau(self, alpha: float) -> Any:
        """`τ(α) = asinh(((1 + σ²)α − 1)/σ) / sqrt(1 + σ²)`, an antiderivative of 1/s(α) (float64)."""
        return self.xp.asinh(((1 + self.var) * alpha - 1) / self._std) / self._root

    def residual(self, x: Any, u: Any, alpha: float) -> Any:
        """`u − u_g`: the velocity u at state x and level α less the Gaussian's own velocity u_g."""
        return u - gaussian_velocity(x, alpha, self.mean, self.var)

    def advance(self, x: Any, residual: Any, alpha: float, to: float) -> Any:
        """Exact Gaussian transport from α to `to`, with the residual held constant in τ."""
        w = (x - alpha * self.mean) / self.scale(alpha) + residual * (self.tau(to) - self.tau(alpha))
        return to * self.mean + self.scale(to) * w


class FullCovarianceGaussianPart(GaussianPart):
    """`GaussianPart` of a group whose coefficients are jointly Gaussian, covariance Σ = R diag(λ) Rᵀ.

    All of a group's coefficients share one level α and the noise is isotropic, so the exact flow
    of N(μ, Σ) is the per-coefficient one in the eigen-coordinates `y = flat(x) R` (flattened
    channel-major, as `networks.S1Head` does): residuals and τ live there, states are rotated there
    and back. A model with an S1 head has such an S1 (`ModelInfo.s1_covariance`); with the
    per-coefficient part its thin directions were left to the numerical integration.

    Args:
        mean: μ of the group's coefficients [C, n], float64 numpy or device array.
        covariance: Σ over the flattened coefficients [C·n, C·n] (numpy; symmetric).
    """

    def __init__(self, mean: Any, covariance: np.ndarray) -> None:
        variance, rotation = np.linalg.eigh(np.asarray(covariance, np.float64))
        self.shape = tuple(mean.shape)
        self.rotation = arrays.beside(rotation, mean)
        xp = arrays.namespace(mean)
        flat = xp.reshape(xp.astype(xp.asarray(mean), xp.float64), (-1,)) @ self.rotation
        super().__init__(flat, arrays.beside(np.sqrt(np.maximum(variance, 1e-20)), mean))

    def _eigen(self, x: Any) -> Any:
        return self.xp.reshape(self.xp.astype(x, self.xp.float64), (*x.shape[:-2], -1)) @ self.rotation

    def residual(self, x: Any, u: Any, alpha: float) -> Any:
        return super().residual(self._eigen(x), self._eigen(u), alpha)

    def advance(self, x: Any, residual: Any, alpha: float, to: float) -> Any:
        y = super().advance(self._eigen(x), residual, alpha, to)
        return self.xp.reshape(y @ self.xp.permute_dims(self.rotation, (1, 0)), (*x.shape[:-2], *self.shape))
