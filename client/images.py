"""Images in and out of the client: numpy / PIL / files ↔ the model's float32 [B, C, H, W] in [-1, 1].

Accepted inputs (one image, or a list/tuple of them, or a batch array):
- numpy uint8, channels last: [H, W], [H, W, C] or [B, H, W, C] (0..255);
- numpy float, channels first, already scaled: [C, H, W] or [B, C, H, W] in [-1, 1];
- PIL images; paths to image files.
Images are never resized silently: a size mismatch is an error (`load_image(path, size=…)` resizes).
PIL (pillow) is imported only where it is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from grouplat.images import crop_resize, from_uint8, to_uint8

__all__ = ["grid", "load_image", "save_image", "to_model_images", "to_pil", "to_uint8"]

RANGE_TOLERANCE = 1e-3  # float images may overshoot [-1, 1] by this much (rounding); it is clipped


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image files and PIL images need pillow: pip install 'grouplat[client]'") from None
    return Image


def load_image(
    path: str | os.PathLike[str] | IO[bytes], channels: int = 3, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image file as uint8 [H, W, C].

    Args:
        path: an image file, or a binary file object holding one (e.g. a zip member).
        channels: 1 (grey) or 3 (RGB); the image is converted to it.
        size: (H, W) to centre-crop to that aspect ratio and resize to (Lanczos); None keeps the size.

    Returns:
        uint8 [H, W, C], C = `channels`.

    Raises:
        ValueError: `channels` other than 1 or 3.
        OSError: the file cannot be read or is not an image (FileNotFoundError when missing).
    """
    return _from_pil(_pil().open(path), channels, size)


def _from_pil(image: Any, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    if channels not in (1, 3):
        raise ValueError(f"image files and PIL images can feed models with 1 or 3 channels, not {channels}")
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
        image = crop_resize(image, size)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _is_single(item: object) -> bool:
    return isinstance(item, str | os.PathLike) or hasattr(item, "convert") and hasattr(item, "size")


def to_model_images(images: Any, shape: Sequence[int]) -> np.ndarray:
    """Any accepted input (see the module docstring) → the model's images.

    Args:
        images: one image, a list or tuple of them, or a batch array.
        shape: the model's image shape (C, H, W).

    Returns:
        float32 [B, C, H, W] in [-1, 1].

    Raises:
        ValueError: the wrong size, channels, dtype or range (the message says what was expected).
        FileNotFoundError: a path that is not a file.

    Example:
        >>> to_model_images(np.full((16, 16, 3), 255, np.uint8), (3, 16, 16)).shape
        (1, 3, 16, 16)
    """
    c, h, w = (int(s) for s in shape)
    if isinstance(images, list | tuple):
        if not images:
            raise ValueError("no images given")
        return np.concatenate([to_model_images(item, shape) for item in images])
    if _is_single(images):
        if isinstance(images, str | os.PathLike):
            if not Path(images).is_file():
                raise FileNotFoundError(f"no image file {os.fspath(images)!r}")
            array = load_image(images, c)
        else:
            array = _from_pil(images, c)
        return _check_size(from_uint8(array[None]), shape, "image")
    array = np.asarray(images)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"uint8 images must be [H, W], [H, W, C] or [B, H, W, C], got {array.shape}")
        return _check_size(from_uint8(array), shape, "uint8 image (channels last)")
    if array.dtype.kind == "f":
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"float images must be [C, H, W] or [B, C, H, W], got {array.shape}")
        array = _check_size(array.astype(np.float32), shape, "float image (channels first, in [-1, 1])")
        if not np.isfinite(array).all():
            raise ValueError("float images contain NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"float images must be scaled to [-1, 1], got values in [{low:.3g}, {high:.3g}] "
                "(pass uint8 [H, W, C] arrays for 0..255 images)"
            )
        return np.clip(array, -1.0, 1.0)
    raise ValueError(
        f"images must be uint8 [.., H, W, C], float [.., C, H, W], PIL images or paths, not {array.dtype}"
    )


def _check_size(array: np.ndarray, shape: Sequence[int], kind: str) -> np.ndarray:
    if tuple(array.shape[1:]) != tuple(shape):
        c, h, w = shape
        got_c, got_h, got_w = array.shape[1:]
        raise ValueError(
            f"the model takes {c}-channel {h}×{w} images; got a {kind} with {got_c} channels, "
            f"{got_h}×{got_w}"
            + (" (resize it first, e.g. load_image(path, size=(H, W)))" if got_c == c else "")
        )
    return array


def to_pil(images: np.ndarray) -> list[Any]:
    """Model images → PIL images.

    Args:
        images: float [B, C, H, W] or one [C, H, W], in [-1, 1] (clipped), C = 1 or 3.

    Returns:
        B PIL images, mode "RGB" (C = 3) or "L" (C = 1).
    """
    pixels = to_uint8(np.asarray(images)[None] if np.ndim(images) == 3 else images)
    Image = _pil()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile model images into one picture, like the paper's figures.

    Args:
        images: float [N, C, H, W] (laid out in rows of `columns`) or [R, N, C, H, W] (R rows).
        columns: cells per row for [N, C, H, W] input; default all N in one row.
        pad: pixels between cells.
        background: the uint8 value of the padding (and of the empty cells after the last image).

    Returns:
        uint8 [rows·H + (rows−1)·pad, cols·W + (cols−1)·pad, C].

    Raises:
        ValueError: images of another rank.

    Example:
        >>> grid(np.zeros((5, 3, 16, 16), np.float32), columns=3).shape
        (34, 52, 3)
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        n = len(images)
        columns = columns or n
        rows = -(-n // columns)
        blank = np.full((rows * columns - n, *images.shape[1:]), 1.0 if background else -1.0, np.float32)
        images = np.concatenate([images, blank]).reshape(rows, columns, *images.shape[1:])
    if images.ndim != 5:
        raise ValueError(f"grid needs [N, C, H, W] or [R, N, C, H, W] images, got shape {images.shape}")
    rows, cols, c, h, w = images.shape
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, c), background, np.uint8)
    cells = to_uint8(images)
    for r in range(rows):
        for j in range(cols):
            out[r * (h + pad) : r * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = cells[r, j]
    return out


def save_image(image: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write one picture to an image file (the format follows the suffix).

    Args:
        image: uint8 [H, W, C] (e.g. from `grid`), or a model image float [C, H, W] (or [1, C, H, W])
            in [-1, 1].
        path: where to write it.

    Raises:
        ValueError: not one image.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.ndim == 4 and len(image) == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"save_image writes one image, got shape {image.shape}")
        image = to_uint8(image)
    _pil().fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
