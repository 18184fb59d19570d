"""The latent space: image shape, basis and the partition of coefficients into groups.

Groups are numbered as in the paper, S1 … Sk with S1 the coarsest (decoded first). Every public
function that takes a group takes its *number* (1-based) or a boolean mask of length k.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from grouplat.basis import Basis

PAPER_BOUNDARIES = (30, 100, 500)  # §4: S1=[0,30), S2=[30,100), S3=[100,500), S4=[500, H·W)

GroupSpec = Sequence[int] | Sequence[Sequence[int]]  # boundaries, or one index set per group


class LatentSpace:
    """Shape + basis + groups. Latents are float32 [B, C, H·W]; groups partition the last axis.

    `groups` is either contiguous boundaries (`[30, 100, 500]` → 4 groups; `[]` → one group) or
    explicit index sets that partition `range(H·W)` (e.g. image quadrants for the pixel basis).

    Args:
        shape: (C, H, W) of the images.
        basis: `dct` (the paper's frequency domain) or `pixel` (the identity).
        groups: boundaries strictly inside (0, H·W), or index sets S1 … Sk covering every
            coefficient once. Default: the paper's `PAPER_BOUNDARIES`.

    Attributes:
        channels, height, width: C, H, W.
        size: H·W, the coefficients per channel.
        basis: the `Basis`.
        k: the number of groups.
        group_of: int [H·W], the 0-based group of each coefficient.
        group_sizes: int [k], the coefficients per channel in each group.
        boundaries: the boundaries as a tuple, or None for index-set groups.

    Raises:
        ValueError: a shape that is not three positive sizes, an unknown basis, or groups that do
            not partition the coefficients (boundaries not strictly increasing inside (0, H·W);
            index sets that are empty, out of range, overlap, repeat or leave out an index).

    Example:
        >>> space = LatentSpace((3, 32, 32), "dct", (30, 100, 500))
        >>> space.k, space.group_sizes.tolist(), space.latent_shape
        (4, [30, 70, 400, 524], (3, 1024))
        >>> latents = space.to_latent(np.zeros((2, 3, 32, 32), np.float32))
        >>> latents.shape, latents[..., space.mask(1)].shape
        ((2, 3, 1024), (2, 3, 30))
    """

    def __init__(
        self,
        shape: Sequence[int],
        basis: str = "dct",
        groups: GroupSpec = PAPER_BOUNDARIES,
    ) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
        self.channels, self.height, self.width = (int(s) for s in shape)
        self.size = self.height * self.width
        self.basis = Basis(basis, self.height, self.width)
        self.group_of, self.boundaries = _partition(groups, self.size)
        self.k = int(self.group_of.max()) + 1
        self.group_sizes = np.bincount(self.group_of, minlength=self.k)
        self._indices = [np.flatnonzero(self.group_of == j) for j in range(self.k)]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W): one image without the batch axis."""
        return (self.channels, self.height, self.width)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(C, H·W): one latent without the batch axis."""
        return (self.channels, self.size)

    def to_latent(self, images: np.ndarray) -> np.ndarray:
        """Images to latents in this basis (`x̄ = Uᵀx`, per channel).

        Args:
            images: [B, C, H, W]; float64 stays float64, float32 stays float32.

        Returns:
            [B, C, H·W] coefficients in basis order.

        Raises:
            ValueError: images of another shape (see `check_images`).
        """
        self.check_images(images)
        return self.basis.to_latent(images)

    def from_latent(self, latents: np.ndarray) -> np.ndarray:
        """Latents to images (`x = U x̄`, per channel); the inverse of `to_latent`.

        Args:
            latents: [B, C, H·W] coefficients in basis order.

        Returns:
            [B, C, H, W] images, in the latents' float dtype.

        Raises:
            ValueError: latents of another shape (see `check_latents`).
        """
        self.check_latents(latents)
        return self.basis.from_latent(latents)

    def indices(self, group: int) -> np.ndarray:
        """Coefficient indices (last axis) of one group.

        Args:
            group: the group's number, 1-based (S1 is 1).

        Returns:
            int [|S_group|], ascending.

        Raises:
            ValueError: no group has that number.
        """
        return self._indices[self._zero_based(group)]

    def mask(self, group: int) -> np.ndarray:
        """Which coefficients belong to one group.

        Args:
            group: the group's number, 1-based (S1 is 1).

        Returns:
            bool [H·W].

        Raises:
            ValueError: no group has that number.
        """
        return self.group_of == self._zero_based(group)

    def selection(self, groups: Iterable[int] | np.ndarray) -> np.ndarray:
        """A choice of groups as a boolean mask over the groups.

        Args:
            groups: group numbers (1-based, any order, repeats allowed), or a boolean mask
                [..., k] (one row per sample), returned as a copy.

        Returns:
            bool [k] for group numbers; bool [..., k] for a mask.

        Raises:
            ValueError: a group number that does not exist, or a mask whose last axis is not k.

        Example:
            >>> LatentSpace((1, 8, 8), "dct", (4, 16, 40)).selection([1, 3]).tolist()
            [True, False, True, False]
        """
        groups = np.asarray(list(groups) if not isinstance(groups, np.ndarray) else groups)
        if groups.dtype == bool:
            if groups.ndim == 0 or groups.shape[-1] != self.k:
                raise ValueError(f"a group mask needs {self.k} entries, got shape {groups.shape}")
            return groups.copy()
        chosen = np.zeros(self.k, dtype=bool)
        for g in groups.ravel():
            chosen[self._zero_based(int(g))] = True
        return chosen

    def coefficient_mask(self, groups: Iterable[int] | np.ndarray) -> np.ndarray:
        """Which coefficients belong to any of the chosen groups.

        Args:
            groups: group numbers or a boolean mask [..., k], as for `selection`.

        Returns:
            bool [H·W] for group numbers; bool [..., H·W] for a mask [..., k].

        Raises:
            ValueError: as `selection`.
        """
        return self.selection(groups)[..., self.group_of]

    def check_images(self, images: np.ndarray) -> None:
        """Raise unless `images` has shape [B, C, H, W] for this space (any B, any dtype).

        Raises:
            ValueError: naming the expected and the given shape.
        """
        if np.ndim(images) != 4 or tuple(np.shape(images)[1:]) != self.shape:
            raise ValueError(
                f"expected images [B, {', '.join(map(str, self.shape))}], got shape {tuple(np.shape(images))}"
            )

    def check_latents(self, latents: np.ndarray) -> None:
        """Raise unless `latents` has shape [B, C, H·W] for this space (any B, any dtype).

        Raises:
            ValueError: naming the expected and the given shape.
        """
        if np.ndim(latents) != 3 or tuple(np.shape(latents)[1:]) != self.latent_shape:
            raise ValueError(
                f"expected latents [B, {self.channels}, {self.size}], got shape {tuple(np.shape(latents))}"
            )

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (checkpoint and model metadata); `from_description` inverts it.

        Returns:
            `{"shape": [C, H, W], "basis": name, "groups": boundaries or index lists}`.

        Example:
            >>> LatentSpace((3, 16, 16), "dct", (30, 100)).describe()
            {'shape': [3, 16, 16], 'basis': 'dct', 'groups': [30, 100]}
        """
        groups: list[int] | list[list[int]]
        if self.boundaries is not None:
            groups = list(self.boundaries)
        else:
            groups = [ix.tolist() for ix in self._indices]
        return {"shape": list(self.shape), "basis": self.basis.name, "groups": groups}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> LatentSpace:
        """The space that `describe` described (equal to the original).

        Raises:
            KeyError: a missing `shape`, `basis` or `groups`.
            ValueError: as the constructor.
        """
        return cls(description["shape"], description["basis"], description["groups"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatentSpace) and self.describe() == other.describe()

    def __repr__(self) -> str:
        sizes = ", ".join(str(s) for s in self.group_sizes)
        return f"LatentSpace(shape={self.shape}, basis={self.basis.name!r}, group sizes [{sizes}])"

    def _zero_based(self, group: int) -> int:
        if not 1 <= group <= self.k:
            raise ValueError(f"group {group} does not exist: groups are numbered 1..{self.k}")
        return group - 1


def _partition(groups: GroupSpec, size: int) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """`group_of` (int [size]) and the boundaries when the groups are contiguous."""
    items: list = list(groups)
    if all(np.ndim(g) == 0 for g in items):
        bounds = tuple(int(b) for b in items)
        edges = (0, *bounds, size)
        if any(a >= b for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"group boundaries must increase strictly inside (0, {size}), got {list(bounds)}"
            )
        return np.repeat(np.arange(len(edges) - 1), np.diff(edges)), bounds
    group_of = np.full(size, -1)
    for j, members in enumerate(items):
        members = np.asarray(members, dtype=int).ravel()
        if members.size == 0:
            raise ValueError(f"group {j + 1} is empty")
        if members.min() < 0 or members.max() >= size:
            raise ValueError(f"group {j + 1} has indices outside 0..{size - 1}")
        if (group_of[members] != -1).any() or len(np.unique(members)) != members.size:
            raise ValueError(f"group {j + 1} overlaps another group (or repeats an index)")
        group_of[members] = j
    if (group_of == -1).any():
        raise ValueError(
            f"groups must cover every coefficient: {int((group_of == -1).sum())} are in no group"
        )
    return group_of, None


def quadrant_groups(height: int, width: int) -> list[list[int]]:
    """Pixel-basis groups of the paper's Fig. 2b: top-left, top-right, bottom-left, bottom-right.

    Args:
        height: H; rows below H // 2 are the top half.
        width: W; columns below W // 2 are the left half.

    Returns:
        Four lists of row-major pixel indices, for `LatentSpace(..., "pixel", groups)`.

    Example:
        >>> quadrant_groups(2, 2)
        [[0], [1], [2], [3]]
    """
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    quadrant = 2 * (rows >= height // 2) + (cols >= width // 2)
    return [np.flatnonzero(quadrant.ravel() == q).tolist() for q in range(4)]
