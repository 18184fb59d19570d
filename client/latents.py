"""`Latents`: latent coefficients together with the model and settings that made them.

A latent is only meaningful with the model that made it (docs/design.md §2), so `Latents` carries the
model's fingerprint, the latent layout (image shape, basis, groups), the generation settings and the
served version number that made it (a hint: the fingerprint is the identity), and serializes all of
it to the `grouplat.v1.LatentCode` protobuf (proto/latent.proto).

A code read from bytes is checked field by field before anything is built from it: a code whose
header claims more than its bytes hold, or a layout beyond the bounds below, is a ValueError naming
the problem, raised before the latent space (its basis matrices, O(H² + W²)) is made.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from grouplat.basis import BASES
from grouplat.proto import FORMAT_VERSION, latent_pb2
from grouplat.settings import GenerationSettings
from grouplat.space import LatentSpace

Settings = GenerationSettings  # the client's name for the one settings type

DTYPES = {"float32": latent_pb2.DTYPE_FLOAT32, "float16": latent_pb2.DTYPE_FLOAT16}

# What a latent code read from bytes may claim (checked before its latent space is built):
MAX_SIDE = 8192  # H and W
MAX_CHANNELS = 64  # C
MAX_VALUES = 2**26  # C·H·W of one image (e.g. 1×8192×8192, 4×4096×4096, 64×1024×1024)
MAX_FILE_BYTES = 2**30  # `Latents.load`: a larger file is refused before it is read (1 GiB)
MAX_VERSION_DIGITS = 19  # a model version number (Triton's are int64)


@dataclass(frozen=True, eq=False)
class Latents:
    """B latents of one model, with the model's fingerprint, the latent layout and the settings.

    A value: `values` are read-only, and edits make new Latents (`replace`). Compare two codes by
    their bytes (`to_bytes`).

    Attributes:
        values: float32 [B, C, H·W] (a [C, H·W] array is taken as a batch of one).
        fingerprint: the sha256 hex of the model that made them.
        space: the latent layout (image shape, basis, groups).
        settings: the generation settings of the encode that made them (decode uses them by default).
        dtype: how `to_bytes` stores the coefficients: `float32`, or `float16` (half the size,
            rounded when written).
        model_version: the served version number of the model that made them ("2"), "" when
            unknown. A hint for people and logs: the client finds the version to decode them with
            by `fingerprint`, which a version number at another server may not match.

    Raises:
        ValueError: values that do not fit `space`, an unknown dtype, or a model_version that is
            not a version number.

    Example:
        >>> from grouplat.space import LatentSpace
        >>> z = Latents(np.zeros((2, 3, 256)), "ab" * 32, LatentSpace((3, 16, 16), "dct", (30, 100, 200)),
        ...             Settings(steps=30))
        >>> len(z), Latents.from_bytes(z.to_bytes()).to_bytes() == z.to_bytes()
        (2, True)
    """

    values: np.ndarray
    fingerprint: str
    space: LatentSpace
    settings: Settings
    dtype: str = "float32"
    model_version: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim == 2:
            values = values[None]
        self.space.check_latents(values)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown latent dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        _check_version(self.model_version)
        values = values.copy()
        values.flags.writeable = False  # a code is a value: edits make new Latents (`replace`)
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Latents:
        """A subset, still a batch: `z[0]` is [1, C, H·W] (an int, slice, index list or mask)."""
        if isinstance(index, int | np.integer):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return self.replace(self.values[index])

    def replace(self, values: np.ndarray) -> Latents:
        """The same model, layout, settings, dtype and model version with new values.

        Args:
            values: float [B', C, H·W], e.g. from `grouplat.mix(z.space, z.values, …)`.

        Returns:
            New Latents.
        """
        return Latents(values, self.fingerprint, self.space, self.settings, self.dtype, self.model_version)

    @classmethod
    def concat(cls, parts: Sequence[Latents]) -> Latents:
        """Join latents of one model along the batch axis.

        Args:
            parts: Latents of one fingerprint and layout (the first's settings, dtype and model
                version are kept).

        Returns:
            Latents of sum(len(p) for p in parts).

        Raises:
            ValueError: no parts, or parts of different models.
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for part in parts[1:]:
            if part.fingerprint != first.fingerprint or part.space != first.space:
                raise ValueError("cannot concatenate latents of different models")
        return first.replace(np.concatenate([p.values for p in parts]))

    # -- wire format -------------------------------------------------------------------------
    def to_proto(self) -> latent_pb2.LatentCode:
        """The `grouplat.v1.LatentCode` message (proto/latent.proto)."""
        layout = self.space.describe()
        boundaries = self.space.boundaries
        return latent_pb2.LatentCode(
            format_version=FORMAT_VERSION,
            fingerprint=self.fingerprint,
            image_shape=list(self.space.shape),
            basis=layout["basis"],
            group_boundaries=list(boundaries) if boundaries is not None else [],
            group_of=[] if boundaries is not None else self.space.group_of.tolist(),
            settings=latent_pb2.GenerationSettings(
                solver=self.settings.solver,
                steps=self.settings.steps,
                schedule=self.settings.schedule,
                encode_schedule=self.settings.encode_schedule or "",
                encode_steps=self.settings.encode_steps or 0,
            ),
            dtype=DTYPES[self.dtype],
            count=len(self.values),
            coefficients=self.values.astype("<" + ("f4" if self.dtype == "float32" else "f2")).tobytes(),
            model_version=self.model_version,
        )

    @classmethod
    def from_proto(cls, code: latent_pb2.LatentCode) -> Latents:
        """Latents from a `grouplat.v1.LatentCode` message.

        Everything the header says is checked first (the bounds MAX_SIDE, MAX_CHANNELS, MAX_VALUES;
        the coefficient bytes against count × C × H × W × itemsize; the groups), then the latent
        space is built: a bad code fails fast, without a large allocation.

        Raises:
            ValueError: a format version this grouplat does not read, or an inconsistent code.
        """
        if code.format_version == 0 or code.format_version > FORMAT_VERSION:
            raise ValueError(
                f"latent code format version {code.format_version} is not one this grouplat reads "
                f"(1..{FORMAT_VERSION}); a newer grouplat may read it"
            )
        dtype, shape, groups = _check_header(code)
        _check_version(code.model_version, "latent code ")
        space = LatentSpace(shape, code.basis, groups)  # only now: its basis is O(H² + W²)
        item = np.dtype("<" + ("f4" if dtype == "float32" else "f2"))
        values = np.frombuffer(code.coefficients, dtype=item).reshape(code.count, *space.latent_shape)
        s = code.settings
        settings = Settings(
            s.solver, int(s.steps), s.schedule, encode_schedule=s.encode_schedule or None,
            encode_steps=int(s.encode_steps) or None,
        )  # fmt: skip
        return cls(values.astype(np.float32), code.fingerprint, space, settings, dtype, code.model_version)

    def to_bytes(self) -> bytes:
        """The serialized `grouplat.v1.LatentCode` (deterministic: same latents, same bytes)."""
        return self.to_proto().SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Latents:
        """Latents from serialized `grouplat.v1.LatentCode` bytes.

        Raises:
            ValueError: not a latent code, or one `from_proto` refuses.
        """
        code = latent_pb2.LatentCode()
        try:
            code.ParseFromString(data)
        except Exception as e:  # google.protobuf.message.DecodeError
            raise ValueError(f"not a grouplat latent code: {e}") from None
        return cls.from_proto(code)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `to_bytes()` to `path` (by convention `*.latent`)."""
        with open(path, "wb") as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> Latents:
        """Read a `*.latent` file (see `from_bytes`).

        Args:
            path: the file.
            max_bytes: a larger file is refused before it is read (default MAX_FILE_BYTES, 1 GiB).

        Raises:
            ValueError: a file larger than `max_bytes`, or not a latent code `from_bytes` reads.
            OSError: the file cannot be read.
        """
        return cls.from_bytes(read_code(path, max_bytes))

    def __repr__(self) -> str:
        fp = self.fingerprint[:12] + ("…" if len(self.fingerprint) > 12 else "")
        version = f" version {self.model_version}" if self.model_version else ""
        return (
            f"Latents({len(self)} × {self.space.latent_shape}, model {fp!r}{version}, {self.space!r}, "
            f"{self.settings})"
        )


def read_code(path: str | os.PathLike[str], max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a `*.latent` file, refused when there are more than `max_bytes`.

    A regular file is refused by its size before it is read; anything else (a pipe) is read up to
    `max_bytes` + 1 bytes.

    Raises:
        ValueError: more than `max_bytes` bytes.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes + 1) if size <= max_bytes else b""
    if size > max_bytes or len(data) > max_bytes:
        raise ValueError(
            f"{os.fspath(path)} is {max(size, len(data))}{'+' * (size <= max_bytes)} bytes: more than a "
            f"latent file may hold ({max_bytes} bytes; Latents.load takes max_bytes)"
        )
    return data


def _check_version(version: object, what: str = "") -> None:
    """A model version number as Triton names it ("2"), or "" for none.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(version, str) or (
        version and not (version.isascii() and version.isdigit() and len(version) <= MAX_VERSION_DIGITS)
    ):
        shown = version[:24] if isinstance(version, str) else version
        raise ValueError(f"{what}model_version must be a version number such as '2' or empty, got {shown!r}")


def _check_header(code: latent_pb2.LatentCode) -> tuple[str, list[int], Any]:
    """(dtype, [C, H, W], groups) of a code whose header is consistent with its bytes and in bounds.

    Only what the code itself holds is read (its bytes bound every loop here), nothing is allocated
    from a size the code merely claims.

    Raises:
        ValueError: naming the first problem.
    """
    names = {v: k for k, v in DTYPES.items()}
    if code.dtype not in names:
        raise ValueError(f"latent code has an unknown dtype ({code.dtype})")
    dtype = names[code.dtype]
    if len(code.image_shape) != 3:
        raise ValueError(f"latent code image shape must be [C, H, W], got {list(code.image_shape)}")
    c, h, w = shape = [int(s) for s in code.image_shape]
    if not 1 <= c <= MAX_CHANNELS or not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
        raise ValueError(
            f"latent code image shape {shape} is out of bounds: C must be in 1..{MAX_CHANNELS}, "
            f"H and W in 1..{MAX_SIDE}"
        )
    if c * h * w > MAX_VALUES:
        raise ValueError(f"latent code image shape {shape} has {c * h * w} values: more than {MAX_VALUES}")
    if code.basis not in BASES:
        raise ValueError(
            f"latent code has an unknown basis {code.basis!r}: expected one of {', '.join(BASES)}"
        )
    if code.count < 1:
        raise ValueError("latent code holds no latents (count 0)")
    itemsize = 4 if dtype == "float32" else 2
    expected = code.count * c * h * w * itemsize  # Python ints: no overflow
    if len(code.coefficients) != expected:
        raise ValueError(
            f"latent code holds {len(code.coefficients)} bytes of coefficients; "
            f"{code.count} latents of {(c, h * w)} in {dtype} need {expected}"
        )
    size = h * w
    groups: Any
    if code.group_of:
        if len(code.group_of) != size:
            raise ValueError(f"latent code names groups for {len(code.group_of)} coefficients, not H·W")
        group_of = np.asarray(code.group_of, dtype=np.int64)
        if int(group_of.min()) < 0 or int(group_of.max()) >= size:
            raise ValueError(
                f"latent code group numbers must be in 0..{size - 1} (one group per coefficient)"
            )
        sizes = np.bincount(group_of)  # at most H·W entries: bounded by the code's own bytes
        if not sizes.all():
            raise ValueError(f"latent code group {int(np.argmin(sizes)) + 1} is empty")
        order = np.argsort(group_of, kind="stable")
        groups = [part.tolist() for part in np.split(order, np.cumsum(sizes)[:-1])]
    else:
        groups = [int(b) for b in code.group_boundaries]
        edges = [0, *groups, size]
        if any(a >= b for a, b in zip(edges, edges[1:])):
            raise ValueError(
                f"latent code group boundaries must increase strictly inside (0, {size}), got {groups}"
            )
    return dtype, shape, groups
