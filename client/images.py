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
from typing import Any

import numpy as np

RANGE_TOLERANCE = 1e-3  # float images may overshoot [-1, 1] by this much (rounding); it is clipped


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("image files and PIL images need pillow: pip install 'grouplat[client]'") from None
    return Image


def load_image(
    path: str | os.PathLike[str], channels: int = 3, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read an image file as uint8 [H, W, C] (C = 1 or 3).

    With `size=(H, W)` the image is centre-cropped to that aspect ratio and resized (Lanczos).
    """
    image = _pil().open(path)
    return _from_pil(image, channels, size)


def _from_pil(image: Any, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    Image = _pil()
    if channels not in (1, 3):
        raise ValueError(f"image files and PIL images can feed models with 1 or 3 channels, not {channels}")
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and (image.height, image.width) != tuple(size):
        h, w = size
        scale = min(image.width / w, image.height / h)
        cw, ch = round(w * scale), round(h * scale)
        left, top = (image.width - cw) // 2, (image.height - ch) // 2
        image = image.resize((w, h), Image.Resampling.LANCZOS, box=(left, top, left + cw, top + ch))
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _is_single(item: object) -> bool:
    return isinstance(item, str | os.PathLike) or hasattr(item, "convert") and hasattr(item, "size")


def to_model_images(images: Any, shape: Sequence[int]) -> np.ndarray:
    """Any accepted input → float32 [B, C, H, W] in [-1, 1] for a model with image shape (C, H, W).

    Raises ValueError (shape, range, dtype) or FileNotFoundError with a message that says what
    was expected.
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
        return _check_size(_uint8_to_model(array[None]), shape, "image")
    array = np.asarray(images)
    if array.dtype == np.uint8:
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"uint8 images must be [H, W], [H, W, C] or [B, H, W, C], got {array.shape}")
        return _check_size(_uint8_to_model(array), shape, "uint8 image (channels last)")
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


def _uint8_to_model(array: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] → float32 [B, C, H, W] in [-1, 1]."""
    return (array.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0).astype(np.float32)


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


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Model images float [B, C, H, W] (or [C, H, W]) in [-1, 1] → uint8 [B, H, W, C] (or [H, W, C])."""
    images = np.asarray(images, dtype=np.float32)
    scaled = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.moveaxis(scaled, -3, -1)


def to_pil(images: np.ndarray) -> list[Any]:
    """Model images [B, C, H, W] (or one [C, H, W]) → a list of PIL images (RGB or L)."""
    pixels = to_uint8(np.asarray(images)[None] if np.ndim(images) == 3 else images)
    Image = _pil()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2, background: int = 255) -> np.ndarray:
    """Tile model images into one uint8 [H', W', C] picture, like the paper's figures.

    `images` is [N, C, H, W] (rows of `columns`, default one row) or [R, N, C, H, W] (R rows).
    Cells are `pad` pixels apart; the picture is `cols·W + (cols−1)·pad` wide.
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
    """Write one picture: uint8 [H, W, C] (e.g. from `grid`) or a model image float [C, H, W]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.ndim == 4 and len(image) == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"save_image writes one image, got shape {image.shape}")
        image = to_uint8(image)
    _pil().fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
