"""What users do with a latent (docs/design.md §2, paper §4 and App. C): pure array operations, then decode.

Latents are [B, C, H·W] (a single [C, H·W] latent is accepted too where noted). Groups are given
by number (S1 is 1) or as a boolean mask of length k. Random operations take a seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from grouplat import arrays
from grouplat.space import LatentSpace

Groups = Iterable[int] | np.ndarray  # group numbers (S1 is 1) or a boolean mask [k] / [B, k]


def _batch(space: LatentSpace, latents: np.ndarray) -> np.ndarray:
    xp = arrays.namespace(latents)
    latents = xp.asarray(latents, dtype=xp.float32)
    if latents.ndim == 2:
        latents = latents[None]
    space.check_latents(latents)
    return latents


def mix(space: LatentSpace, latents: np.ndarray, reference: np.ndarray, groups: Groups) -> np.ndarray:
    """Take the chosen groups from `reference` (Fig. 6), the rest from `latents`.

    `reference` is one latent or one per latent; `groups` is one choice for all, or a boolean
    mask [B, k] per latent. S1 transfers identity / pose / class; finer groups finer detail.
    Device arrays (torch tensors) stay on their device.

    Args:
        space: the latent space.
        latents: [B, C, H·W] or one latent [C, H·W].
        reference: one latent ([C, H·W] or [1, C, H·W]) or one per latent [B, C, H·W].
        groups: group numbers or a boolean mask [k] for all latents, or a mask [B, k].

    Returns:
        float32 [B, C, H·W] (B = 1 for one latent).

    Raises:
        ValueError: latents of another shape, a group that does not exist, a mask without k
            entries, masks [n, k] with n ≠ B, or a number of references that is neither 1 nor B.

    Example:
        >>> space = LatentSpace((1, 8, 8), "dct", (4, 16, 40))
        >>> out = mix(space, np.zeros((2, 1, 64)), np.ones((1, 64)), [1])
        >>> out.shape, out[:, 0, 3:5].tolist()  # coefficients 0..3 are S1
        ((2, 1, 64), [[1.0, 0.0], [1.0, 0.0]])
    """
    base = _batch(space, latents)
    xp = arrays.namespace(base)
    ref = xp.broadcast_to(_batch(space, reference), base.shape)
    mask = space.coefficient_mask(groups)
    if mask.ndim == 2:  # one choice per latent: broadcast over channels
        if len(mask) != len(base):
            raise ValueError(f"{len(mask)} group masks for {len(base)} latents")
        mask = mask[:, None]
    return xp.where(arrays.beside(mask, base), ref, base)


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

    Args:
        space: the latent space.
        start: the latent at weight 0, [C, H·W] (or [1, C, H·W]).
        end: the latent at weight 1, same shape.
        group: the number of the group that moves (S1 is 1).
        weights: positions along the path; 0 is `start`, 1 is `end`'s group.
        method: `linear` or `slerp` (channels whose group vectors are nearly parallel fall back
            to linear).

    Returns:
        float32 [len(weights), C, H·W]: `start` with its group replaced by the path's points.

    Raises:
        ValueError: latents of another shape, a group that does not exist, or an unknown method.

    Example:
        >>> space = LatentSpace((1, 8, 8), "dct", (4, 16, 40))
        >>> path = interpolate(space, np.zeros((1, 64)), np.ones((1, 64)), 1, [0, 0.5, 1])
        >>> path[:, 0, 3:5].tolist()  # S1 moves, S2 stays at start's 0
        [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]
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
    """Set one element (channel, index) of one latent to each value (Fig. 7, 8).

    Args:
        space: the latent space.
        latent: [C, H·W] (or [1, C, H·W]).
        channel: 0-based channel.
        index: 0-based coefficient index in basis order (0 is the DC term for `dct`).
        values: the values to set, e.g. `np.linspace(-3, 3, 7)`.

    Returns:
        float32 [len(values), C, H·W]: copies of the latent that differ in that one element.

    Raises:
        ValueError: a latent of another shape, or a channel or index out of range.
    """
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

    Args:
        space: the latent space.
        latents: [B, C, H·W] or one latent [C, H·W].
        m: how many coefficients per channel to keep, 0..H·W.
        fill: `zeros` or `resample`.
        seed: seeds the resampled coefficients.

    Returns:
        float32 [B, C, H·W] (a copy).

    Raises:
        ValueError: latents of another shape, m out of range, or an unknown fill.
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
    """n copies of one latent with the kept groups fixed and all others resampled (Fig. 9).

    Args:
        space: the latent space.
        latent: [C, H·W] (or [1, C, H·W]).
        keep_groups: group numbers or a boolean mask [k] of the groups to keep.
        n: how many variations, at least 1.
        seed: seeds the resampled groups (fresh N(0, 1)); the same seed gives the same variations.

    Returns:
        float32 [n, C, H·W].

    Raises:
        ValueError: a latent of another shape, a group that does not exist, or n < 1.

    Example:
        >>> space = LatentSpace((1, 8, 8), "dct", (4, 16, 40))
        >>> out = variations(space, np.zeros((1, 64)), [1, 2], n=3, seed=1)
        >>> out.shape, bool((out[:, :, :16] == 0).all()), bool((out[:, :, 16:] != 0).all())
        ((3, 1, 64), True, True)
    """
    base = _batch(space, latent)[0]
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    keep = space.coefficient_mask(keep_groups)
    noise = np.random.default_rng(seed).standard_normal((n, *space.latent_shape)).astype(np.float32)
    return np.where(keep, base, noise)


def resample(space: LatentSpace, latents: np.ndarray, groups: Groups, seed: int = 0) -> np.ndarray:
    """Replace the chosen groups of every latent with fresh N(0, 1) noise.

    Args:
        space: the latent space.
        latents: [B, C, H·W] or one latent [C, H·W].
        groups: group numbers or a boolean mask [k] of the groups to replace.
        seed: seeds the noise; the same seed gives the same result.

    Returns:
        float32 [B, C, H·W].

    Raises:
        ValueError: latents of another shape, or a group that does not exist.
    """
    x = _batch(space, latents)
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    return np.where(space.coefficient_mask(groups), noise, x)
