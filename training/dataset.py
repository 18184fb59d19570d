"""Training data (docs/design.md §5): procedural shapes, the 2-D Gaussian mixture, image folders and zips.

A data set maps integer indices to float32 images [B, C, H, W] in [-1, 1] (`images(indices)`),
deterministically: the same index always gives the same item, which makes runs, resumes and DDP
ranks reproducible without saving any loader state. `open_dataset(spec)` parses the CLI's
`--data` value.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grouplat.images import crop_resize, from_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm")
SPECS = "shapes[:RES], gmm2d, folder:PATH or zip:PATH"


class Dataset:
    """Deterministic, index-addressed data. Subclasses set `shape` (C, H, W) and `length`."""

    shape: tuple[int, int, int]
    length: int

    def __len__(self) -> int:
        return self.length

    def images(self, indices: np.ndarray) -> np.ndarray:
        """float32 [len(indices), C, H, W] in [-1, 1] (points: any real values)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the checkpoint; `open_dataset(**…)` rebuilds the data set."""
        raise NotImplementedError


# ----------------------------------------------------------------------------
# Procedural shapes with known generative factors.


SHAPE_KINDS = ("circle", "square", "triangle", "plus")
SYMMETRY = (0.0, math.pi / 2, 2 * math.pi / 3, math.pi / 2)  # rotation period of each kind (0: none)
FACTORS = ("shape", "size", "x", "y", "rotation", "fg_hue", "bg_hue")


class Shapes(Dataset):
    """One anti-aliased shape on a plain background; 7 independent factors, drawn from (seed, index).

    shape: kind (index into SHAPE_KINDS); size: radius in image units (the image spans [-1, 1]);
    x, y: centre (y points down); rotation: fraction of the kind's symmetry period;
    fg_hue, bg_hue: hues of a bright object on a dark background (contrast is always good).
    """

    def __init__(self, resolution: int = 32, seed: int = 0, length: int = 1 << 20) -> None:
        if resolution < 4:
            raise ValueError(f"shapes need a resolution of at least 4, got {resolution}")
        self.resolution, self.seed, self.length = int(resolution), int(seed), int(length)
        self.shape = (3, self.resolution, self.resolution)

    def factors(self, indices: np.ndarray) -> np.ndarray:
        """float64 [B, 7] factor values in FACTORS order (the kind as a float)."""
        rows = []
        for index in np.asarray(indices, dtype=np.int64).ravel():
            rng = np.random.default_rng([self.seed, int(index)])
            rows.append(
                [
                    rng.integers(len(SHAPE_KINDS)),
                    rng.uniform(0.3, 0.55),
                    rng.uniform(-0.4, 0.4),
                    rng.uniform(-0.4, 0.4),
                    rng.uniform(),
                    rng.uniform(),
                    rng.uniform(),
                ]
            )
        return np.array(rows, dtype=np.float64).reshape(-1, len(FACTORS))

    def images(self, indices: np.ndarray) -> np.ndarray:
        return render_shapes(self.factors(indices), self.resolution)

    def describe(self) -> dict[str, Any]:
        return {"spec": f"shapes:{self.resolution}", "seed": self.seed, "length": self.length}


HELD_OUT_SEED = 1_000_003  # added to a training seed: shapes that training never saw


def held_out_shapes(resolution: int, training_seed: int = 0) -> Shapes:
    """The procedural shapes with a seed that training (with `training_seed`) never used.

    The evaluation, the demo, the benchmarks and perf_analyzer all draw their held-out images here.
    """
    return Shapes(resolution, seed=training_seed + HELD_OUT_SEED)


def sample_photographs(size: tuple[int, int] | None, count: int | None = None) -> list[np.ndarray]:
    """Real photographs shipped inside scikit-learn and scikit-image (docs/design.md §5), as uint8
    [H, W, 3] arrays, centre-cropped and resized to `size` = (H, W) unless it is None; as many as
    are installed (up to `count`). None installed: an empty list."""
    pictures: list[np.ndarray] = []
    try:
        from sklearn.datasets import load_sample_images

        pictures += list(load_sample_images().images)  # china.jpg, flower.jpg
    except ImportError:
        pass
    try:
        from skimage import data

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            picture = np.asarray(getattr(data, name)())
            if picture.ndim == 3:
                pictures.append(picture[..., :3])
    except (ImportError, OSError, ValueError):  # not installed, or an image it would download
        pass
    pictures = pictures[:count]
    if size is None:
        return pictures
    return [np.asarray(crop_resize(Image.fromarray(p), size), np.uint8) for p in pictures]


def render_shapes(factors: np.ndarray, resolution: int) -> np.ndarray:
    """Factors [B, 7] → float32 images [B, 3, R, R] in [-1, 1]; coverage from a signed distance."""
    f = np.asarray(factors, dtype=np.float64)
    kind, size, cx, cy, rotation = (f[:, i, None, None] for i in range(5))
    coords = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    px, py = coords[None, None, :] - cx, coords[None, :, None] - cy
    angle = rotation * np.asarray(SYMMETRY)[f[:, 0].astype(int)][:, None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * px + sin * py, -sin * px + cos * py
    distance = np.select(
        [kind == 0, kind == 1, kind == 2],
        [np.hypot(u, v) - size, _box(u, v, 0.85 * size, 0.85 * size), _triangle(u, v, 0.95 * size)],
        np.minimum(_box(u, v, size, 0.35 * size), _box(u, v, 0.35 * size, size)),
    )
    coverage = np.clip(0.5 - distance * resolution / 2, 0, 1)[:, None]  # one pixel of smoothing
    fg = np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in f[:, 5]])[:, :, None, None]
    bg = np.array([colorsys.hsv_to_rgb(h, 0.45, 0.30) for h in f[:, 6]])[:, :, None, None]
    return (2 * (coverage * fg + (1 - coverage) * bg) - 1).astype(np.float32)


def _box(u: np.ndarray, v: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
    dx, dy = np.abs(u) - a, np.abs(v) - b
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _triangle(u: np.ndarray, v: np.ndarray, r: float | np.ndarray) -> np.ndarray:
    """Signed distance to an equilateral triangle of half-side r, pointing up (Quílez's formula)."""
    k = math.sqrt(3.0)
    x, y = np.abs(u) - r, -v + r / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0)
    return -np.hypot(x, y) * np.sign(y)


# ----------------------------------------------------------------------------
# The 2-D Gaussian mixture of the paper's Fig. 2a.


class GaussianMixture2D(Dataset):
    """Points (x, y) as images of shape (1, 1, 2): `modes` Gaussians evenly on a circle.

    With the pixel basis and one coordinate per group, decode makes x first, then y — and y's
    conditional is bimodal for most x, so sequential generation is visible (Fig. 2a).
    """

    def __init__(
        self, modes: int = 8, radius: float = 1.0, std: float = 0.08, seed: int = 0, length: int = 1 << 20
    ) -> None:
        self.modes, self.radius, self.std, self.seed, self.length = modes, radius, std, seed, length
        self.shape = (1, 1, 2)
        angles = 2 * np.pi * np.arange(modes) / modes
        self.centers = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def images(self, indices: np.ndarray) -> np.ndarray:
        points = []
        for index in np.asarray(indices, dtype=np.int64).ravel():
            rng = np.random.default_rng([self.seed, int(index)])
            points.append(self.centers[rng.integers(self.modes)] + self.std * rng.standard_normal(2))
        return np.asarray(points, dtype=np.float32).reshape(-1, 1, 1, 2)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": "gmm2d",
            "modes": self.modes,
            "radius": self.radius,
            "std": self.std,
            "seed": self.seed,
            "length": self.length,
        }


# ----------------------------------------------------------------------------
# Users' images: a folder or an EDM-style zip (PNG files + dataset.json; labels are ignored).


class ImageFiles(Dataset):
    """RGB images from a folder (recursive) or a zip, centre-cropped to a square and resized
    (Lanczos) to `resolution` (default: the first image's shorter side). Decoded images are kept
    in memory when they all fit in `cache_bytes`."""

    def __init__(
        self,
        kind: str,
        path: str,
        resolution: int | None = None,
        workers: int = 4,
        cache_bytes: int = 1 << 30,
    ) -> None:
        self.kind, self.path, self.workers = kind, str(path), workers
        root = Path(path)
        if kind == "folder":
            if not root.is_dir():
                raise ValueError(f"data folder {path!r} does not exist")
            self.names = sorted(
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            self._zip = None
        else:
            try:
                self._zip = zipfile.ZipFile(root)
            except (OSError, zipfile.BadZipFile) as error:
                raise ValueError(f"cannot open data zip {path!r}: {error}") from None
            self.names = sorted(n for n in self._zip.namelist() if Path(n).suffix.lower() in IMAGE_EXTENSIONS)
        if not self.names:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {kind} {path!r}")
        self.length = len(self.names)
        self.resolution = int(resolution or min(self._open(0).size))
        self.shape = (3, self.resolution, self.resolution)
        self._cache: dict[int, np.ndarray] | None = (
            {} if self.length * 3 * self.resolution**2 <= cache_bytes else None
        )

    def _open(self, index: int) -> Image.Image:
        name = self.names[index]
        try:
            if self._zip is not None:
                data = self._zip.read(name)
            else:
                data = (Path(self.path) / name).read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as error:  # noqa: BLE001 - any decode failure is a data error
            raise ValueError(f"cannot read image {name!r} in {self.kind} {self.path!r}: {error}") from None
        return image

    def _load(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = crop_resize(self._open(index).convert("RGB"), (self.resolution, self.resolution))
        array = np.asarray(image, dtype=np.uint8)
        if self._cache is not None:
            self._cache[index] = array
        return array

    def images(self, indices: np.ndarray) -> np.ndarray:
        items = [int(i) for i in np.asarray(indices).ravel()]
        if self.workers > 1 and len(items) > 1:
            with ThreadPoolExecutor(self.workers) as pool:  # PIL decoding releases the GIL
                arrays = list(pool.map(self._load, items))
        else:
            arrays = [self._load(i) for i in items]
        return from_uint8(np.stack(arrays))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "spec": f"{self.kind}:{self.path}",
            "resolution": self.resolution,
            "length": self.length,
        }
        if self._zip is not None and "dataset.json" in self._zip.namelist():
            labels = json.loads(self._zip.read("dataset.json")).get("labels")
            info["labels"] = 0 if labels is None else len(labels)  # recorded, not used
        return info


class Flipped(Dataset):
    """Horizontal flips as extra items (EDM's xflip): index N + i is item i mirrored."""

    def __init__(self, base: Dataset) -> None:
        self.base, self.shape, self.length = base, base.shape, 2 * len(base)

    def images(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        flip = indices >= len(self.base)
        images = self.base.images(np.where(flip, indices - len(self.base), indices))
        images[flip] = images[flip][..., ::-1]
        return images

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "xflip": True}


def open_dataset(
    spec: str, resolution: int | None = None, xflip: bool = False, workers: int = 4, **kwargs: Any
) -> Dataset:
    """`shapes[:RES]` | `gmm2d` | `folder:PATH` | `zip:PATH` → a Dataset.

    `resolution` applies to image folders and zips (and overrides shapes' RES); extra keyword
    arguments (seed, length, …) go to the data set, as `describe()` records them.
    """
    kind, _, arg = str(spec).partition(":")
    kwargs.pop("spec", None)
    kwargs.pop("labels", None)
    kwargs.pop("pool", None)  # scripts/gpu_train_demo.py's pre-rendered shapes: described as the shapes
    xflip = bool(kwargs.pop("xflip", xflip))
    try:
        if kind == "shapes":
            res = resolution or kwargs.pop("resolution", None) or (int(arg) if arg else 32)
            kwargs.pop("resolution", None)
            dataset: Dataset = Shapes(int(res), **kwargs)
        elif kind == "gmm2d" and not arg:
            dataset = GaussianMixture2D(**kwargs)
        elif kind in ("folder", "zip") and arg:
            res = resolution or kwargs.pop("resolution", None)
            kwargs.pop("length", None)
            dataset = ImageFiles(kind, arg, res, workers, **kwargs)
        else:
            raise ValueError(f"unknown data spec {spec!r}: expected {SPECS}")
    except (TypeError, ValueError) as error:
        if "data spec" in str(error) or kind in ("folder", "zip"):
            raise
        raise ValueError(f"bad data spec {spec!r} ({error}): expected {SPECS}") from None
    return Flipped(dataset) if xflip else dataset


def data_statistics(
    dataset: Dataset, to_latent: Any, items: int = 4096, seed: int = 0, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std of x̄ = Uᵀx over `items` seeded random items (float32 [C, H·W]).

    They go into the checkpoint: the solver's `tau` spacing and the Gaussian baseline need them.
    The std is floored at 1e-5 so that constant coefficients stay usable.
    """
    count = min(items, len(dataset))
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    total = total_sq = 0.0
    for start in range(0, count, batch):
        latents = np.asarray(to_latent(dataset.images(indices[start : start + batch])), dtype=np.float64)
        total = total + latents.sum(axis=0)
        total_sq = total_sq + (latents**2).sum(axis=0)
    mean = np.asarray(total) / count
    std = np.sqrt(np.maximum(np.asarray(total_sq) / count - mean**2, 0.0))
    return np.ascontiguousarray(mean, np.float32), np.ascontiguousarray(np.maximum(std, 1e-5), np.float32)
