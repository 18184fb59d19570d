"""Pixels ↔ model images: uint8 channels-last ↔ float32 channels-first in [-1, 1], and the
centre-crop-and-resize that every image source uses. numpy only; PIL is imported where needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def from_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] (0..255) → float32 [..., C, H, W] in [-1, 1].

    Args:
        pixels: one image [H, W, C] or a batch [B, H, W, C].

    Returns:
        The same images channels-first, scaled to [-1, 1].
    """
    return (np.moveaxis(np.asarray(pixels), -1, -3).astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [..., C, H, W] in [-1, 1] → uint8 [..., H, W, C] (rounded, clipped to 0..255).

    Args:
        images: one image [C, H, W] or a batch [B, C, H, W].

    Returns:
        The same images channels-last as uint8.
    """
    scaled = np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(scaled, -3, -1)


def crop_resize(image: Any, size: tuple[int, int]) -> Any:
    """A PIL image centre-cropped to the aspect ratio of `size` = (H, W) and resized to it (Lanczos).

    Args:
        image: a PIL image.
        size: the target (height, width).

    Returns:
        A new PIL image of exactly that size (the same image if it already has it).
    """
    from PIL import Image

    h, w = (int(s) for s in size)
    if (image.height, image.width) == (h, w):
        return image
    scale = min(image.width / w, image.height / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (image.width - cw) // 2, (image.height - ch) // 2
    return image.resize((w, h), Image.Resampling.LANCZOS, box=(left, top, left + cw, top + ch))
