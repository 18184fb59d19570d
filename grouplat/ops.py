"""What users do with a latent (DESIGN §2, paper §4 and App. C): pure array operations, then decode.

Latents are [B, C, H·W] (a single [C, H·W] latent is accepted too where noted). Groups are given
by number (S1 is 1) or as a boolean mask of length k. Random operations take a seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from grouplat.space import LatentSpace

Groups = Iterable[int] | np.ndarray


def _batch(space: LatentSpace, latents: np.ndarray) -> np.ndarray:
    latents = np.asarray(latents, dtype=np.float32)
    if latents.ndim == 2:
        latents = latents[None]
    space.check_latents(latents)
    return latents


def mix(space: LatentSpace, latents: np.ndarray, reference: np.ndarray, groups: Groups) -> np.ndarray:
    """Take the chosen groups from `reference` (Fig. 6), the rest from `latents`.

    `reference` is one latent or one per latent; `groups` is one choice for all, or a boolean
    mask [B, k] per latent. S1 transfers identity / pose / class; finer groups finer detail.
    """
    base = _batch(space, latents)
    ref = np.broadcast_to(_batch(space, reference), base.shape)
    mask = space.coefficient_mask(groups)
    if mask.ndim == 2:  # one choice per latent: broadcast over channels
        if len(mask) != len(base):
            raise ValueError(f"{len(mask)} group masks for {len(base)} latents")
        mask = mask[:, None]
    return np.where(mask, ref, base)


def interpolate(
    space: LatentSpace,
    start: np.ndarray,
    end: np.ndarray,
    group: int,
    weights: Sequence[float] | np.ndarray,
    method: str = "linear",
) -> np.ndarray:
    """Move one group from `start` to `end` (both one latent [C, H·W]), all others fixed (Fig. 4).

    Returns [len(weights), C, H·W]. `slerp` interpolates each channel's group vector spherically,
    which keeps the norm of Gaussian latents typical.
    """
    a, b = _batch(space, start)[0], _batch(space, end)[0]
    w = np.asarray(weights, dtype=np.float64)[:, None]
    ix = space.indices(group)
    va, vb = a[:, ix].astype(np.float64), b[:, ix].astype(np.float64)
    if method == "linear":
        moved = (1 - w[..., None]) * va + w[..., None] * vb
    elif method == "slerp":
        cos = np.sum(va * vb, -1) / np.maximum(
            np.linalg.norm(va, axis=-1) * np.linalg.norm(vb, axis=-1), 1e-12
        )
        omega = np.arccos(np.clip(cos, -1.0, 1.0))  # [C]
        sin = np.sin(omega)
        safe = sin > 1e-6  # nearly parallel channels fall back to linear
        wa = np.where(safe, np.sin((1 - w) * omega) / np.where(safe, sin, 1), 1 - w)
        wb = np.where(safe, np.sin(w * omega) / np.where(safe, sin, 1), w)
        moved = wa[..., None] * va + wb[..., None] * vb
    else:
        raise ValueError(f"unknown interpolation {method!r}: expected 'linear' or 'slerp'")
    out = np.repeat(a[None], len(w), axis=0)
    out[:, :, ix] = moved
    return out


def traverse(
    space: LatentSpace, latent: np.ndarray, channel: int, index: int, values: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Set one element (channel, index) of one latent to each value (Fig. 7, 8): [len(values), C, H·W]."""
    base = _batch(space, latent)[0]
    if not 0 <= channel < space.channels:
        raise ValueError(f"channel {channel} does not exist: the model has {space.channels}")
    if not 0 <= index < space.size:
        raise ValueError(f"index {index} is outside 0..{space.size - 1}")
    out = np.repeat(base[None], len(values), axis=0)
    out[:, channel, index] = np.asarray(values, dtype=np.float32)
    return out


def keep_first(
    space: LatentSpace, latents: np.ndarray, m: int, fill: str = "zeros", seed: int = 0
) -> np.ndarray:
    """Keep the first m coefficients of each channel (in basis order), replace the rest (Fig. 5).

    `fill` is `zeros` (the latent mean) or `resample` (fresh N(0, 1) from `seed`).
    """
    x = _batch(space, latents).copy()
    if not 0 <= m <= space.size:
        raise ValueError(f"keep must be in 0..{space.size}, got {m}")
    if fill == "zeros":
        x[..., m:] = 0
    elif fill == "resample":
        x[..., m:] = np.random.default_rng(seed).standard_normal(x[..., m:].shape)
    else:
        raise ValueError(f"unknown fill {fill!r}: expected 'zeros' or 'resample'")
    return x


def variations(
    space: LatentSpace, latent: np.ndarray, keep_groups: Groups, n: int, seed: int = 0
) -> np.ndarray:
    """n copies of one latent with the kept groups fixed and all others resampled (Fig. 9)."""
    base = _batch(space, latent)[0]
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    keep = space.coefficient_mask(keep_groups)
    noise = np.random.default_rng(seed).standard_normal((n, *space.latent_shape)).astype(np.float32)
    return np.where(keep, base, noise)


def resample(space: LatentSpace, latents: np.ndarray, groups: Groups, seed: int = 0) -> np.ndarray:
    """Replace the chosen groups of every latent with fresh N(0, 1) noise."""
    x = _batch(space, latents)
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return np.where(space.coefficient_mask(groups), noise, x)
