"""Orthonormal bases U of the latent space (docs/design.md §1): `x̄ = Uᵀx`, `x = U x̄`.

A latent is float32 [B, C, H·W]: per channel, the coefficients in the basis order.
Both bases act per channel and identically on every channel, on numpy arrays or on device arrays
(`grouplat.arrays`: the matrices are placed beside the input once per dtype and device).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grouplat import arrays

BASES = ("dct", "pixel")  # the names `Basis` and `LatentSpace` accept


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix, float64: `D[k, m] = sqrt((2 − δ_k0)/n) · cos(π(2m+1)k / 2n)`.

    Args:
        n: the signal length.

    Returns:
        float64 [n, n]; row k is frequency k, so `D @ x` transforms and `D.T @ X̄` inverts.

    Example:
        >>> d = dct_matrix(4)
        >>> bool(np.allclose(d @ d.T, np.eye(4))), bool(np.allclose(d[0], 0.5))
        (True, True)
    """
    k = np.arange(n)[:, None]
    m = np.arange(n)[None, :]
    scale = np.where(k == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))
    return scale * np.cos(np.pi * (2 * m + 1) * k / (2 * n))


def dct_order(height: int, width: int) -> np.ndarray:
    """Row-major (ky, kx) indices sorted by ascending `(ky/H)² + (kx/W)²`, ties in row-major order.

    This is the order of descending Gaussian-blur (heat equation, Neumann boundary) eigenvalue,
    so index 0 is the DC term and low frequencies come first.

    Args:
        height: H, the number of rows.
        width: W, the number of columns.

    Returns:
        int [H·W]: entry i is the row-major index `ky·W + kx` of the i-th coefficient of a latent.

    Example:
        >>> dct_order(2, 3).tolist()  # (0,0) (0,1) (1,0) (1,1) (0,2) (1,2)
        [0, 1, 3, 4, 2, 5]
    """
    ky, kx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frequency = (ky / height) ** 2 + (kx / width) ** 2
    return np.argsort(frequency.ravel(), kind="stable")


class Basis:
    """Forward (`to_latent`) and inverse (`from_latent`) transform for one image shape.

    `dct` is separable, `X̄ = D_H X D_Wᵀ`, then permuted into `dct_order`; `pixel` is the identity
    (coefficients are pixels in row-major order). Both keep the input's float dtype (float64 is
    transformed in float64, anything else in float32), library and device (a torch tensor on a
    GPU is transformed there).

    Args:
        name: `dct` or `pixel` (BASES).
        height: H, the image height in pixels.
        width: W, the image width in pixels.

    Attributes:
        name, height, width: as given.
        order: int [H·W], the coefficient order (`dct_order` for `dct`, `arange(H·W)` for `pixel`).

    Raises:
        ValueError: an unknown basis name, or a size below 1.

    Example:
        >>> basis = Basis("dct", 4, 4)
        >>> images = np.ones((2, 4, 4), np.float32)
        >>> basis.to_latent(images)[:, :2].tolist()  # a flat image is all DC: 4 · mean
        [[4.0, 0.0], [4.0, 0.0]]
        >>> bool(np.allclose(basis.from_latent(basis.to_latent(images)), images))
        True
    """

    def __init__(self, name: str, height: int, width: int) -> None:
        if name not in BASES:
            raise ValueError(f"unknown basis {name!r}: expected one of {', '.join(BASES)}")
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {height}×{width}")
        self.name = name
        self.height = height
        self.width = width
        self.order = dct_order(height, width) if name == "dct" else np.arange(height * width)
        # per (library, dtype, device): D_H, D_W and the coefficient order, placed there once
        self._placed: dict[tuple[str, bool, str], tuple[Any, Any, Any]] = {}

    def _constants(self, array: Any) -> tuple[Any, Any, Any]:
        """D_H, D_W (in the array's float dtype) and the coefficient order, beside `array`."""
        xp = arrays.namespace(array)
        float64 = array.dtype == xp.float64
        key = (xp.__name__, float64, str(getattr(array, "device", "cpu")))  # numpy 1.x: no device
        if key not in self._placed:
            dtype = np.float64 if float64 else np.float32  # built in float64, then cast
            d_h, d_w = (dct_matrix(n).astype(dtype) for n in (self.height, self.width))
            self._placed[key] = tuple(arrays.beside(c, array) for c in (d_h, d_w, self.order))  # type: ignore[assignment]
        return self._placed[key]

    def to_latent(self, images: np.ndarray) -> np.ndarray:
        """Pixels to coefficients: `x̄ = Uᵀx`.

        Args:
            images: [..., H, W] pixels; any leading axes.

        Returns:
            [..., H·W] coefficients in basis order (a new array).

        Raises:
            ValueError: the last two axes are not (H, W).
        """
        xp = arrays.namespace(images)
        images = xp.asarray(images)
        *lead, h, w = images.shape
        if (h, w) != (self.height, self.width):
            raise ValueError(f"expected images of size {self.height}×{self.width}, got {h}×{w}")
        if self.name == "pixel":
            return xp.asarray(xp.reshape(images, (*lead, h * w)), copy=True)
        d_h, d_w, order = self._constants(images)
        coefficients = d_h @ xp.astype(images, d_h.dtype, copy=False) @ d_w.T
        return xp.reshape(coefficients, (*lead, h * w))[..., order]

    def from_latent(self, latents: np.ndarray) -> np.ndarray:
        """Coefficients to pixels: `x = U x̄` (the inverse of `to_latent`).

        Args:
            latents: [..., H·W] coefficients in basis order; any leading axes.

        Returns:
            [..., H, W] pixels (a new array).

        Raises:
            ValueError: the last axis does not have H·W entries.
        """
        xp = arrays.namespace(latents)
        latents = xp.asarray(latents)
        *lead, n = latents.shape
        if n != self.height * self.width:
            raise ValueError(f"expected {self.height * self.width} coefficients per channel, got {n}")
        if self.name == "pixel":
            return xp.asarray(xp.reshape(latents, (*lead, self.height, self.width)), copy=True)
        d_h, d_w, order = self._constants(latents)
        row_major = xp.empty_like(latents, dtype=d_h.dtype)  # a scatter keeps the C layout: a
        row_major[..., order] = latents  # gather's would change how matmul adds (last-bit changes)
        return d_h.T @ xp.reshape(row_major, (*lead, self.height, self.width)) @ d_w
