"""The client's methods, each written once as a *plan*, shared by `Client` and `AsyncClient`.

A plan is a generator that yields the server requests it needs (grouplat.client.transport:
`ConfigRequest`, `InferRequest`) and receives their answers; the runner of `Client` or of
`AsyncClient` executes them, so the two clients cannot drift apart. The server contract (model and
tensor names, shapes, parameters) is grouplat.serving.contract, documented in proto/README.md.

Streams: `decode` and `mix` also run as streams (`stream=True`) on the decoupled `decode_stream` /
`mix_stream` models: the same plan up to its last request, which becomes a `StreamRequest` per
chunk of the batch; the plan then reads the chunks phase by phase and yields one `Preview` per phase
with the whole batch (chunks concatenated), the last (phase k, final) equal to the unary result.

Versions: the client's model is its pinned version (`model_version=`), else the newest one served.
Images are encoded by it. `Latents` go to the version that made them, found by their fingerprint,
whichever the client's model is: a latent is only meaningful with its model. Latents of a model no
version serves are refused (`ModelMismatchError`), or with `force=True` decoded by the client's model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

import grouplat
from grouplat.client.errors import ModelMismatchError, ServerError
from grouplat.client.images import to_model_images
from grouplat.client.latents import Latents, Settings
from grouplat.client.served import ServedModel, Wanted, newest, served_versions
from grouplat.client.transport import (
    ConfigRequest,
    InferRequest,
    Plan,
    Preview,
    StreamRead,
    StreamRequest,
    Transport,
)
from grouplat.serving.contract import (
    DECODE,
    ENCODE,
    FINGERPRINT,
    GROUPS,
    IMAGE,
    IMAGE_A,
    IMAGE_B,
    LATENT,
    MIX,
    STREAMS,
)
from grouplat.space import LatentSpace

Images = Any  # see grouplat.client.images: uint8 HWC / float CHW arrays, PIL images, paths, lists
LatentsOrImages = Latents | Images
Groups = int | Iterable[int] | np.ndarray
STREAM_OF = {operation: stream for stream, operation in STREAMS.items()}  # decode → decode_stream


class Plans(Transport):
    """The plans of every method and the model state they keep; the subclasses add a runner."""

    _info: ServedModel | None = None  # the client's model (pinned or newest version), read once
    _models: dict[str, ServedModel] | None = None  # every served version by number, read once

    def _plan_config(self, model: str) -> Plan[dict[str, Any]]:
        if model not in self._configs:
            self._configs[model] = yield ConfigRequest(model)
        return self._configs[model]

    def _plan_versions(self) -> Plan[dict[str, ServedModel]]:
        """Every version the server serves, by version number (ascending)."""
        if self._models is None:
            config = yield from self._plan_config(DECODE)
            self._models = served_versions(config, self.model_version)
        return self._models

    def _plan_info(self) -> Plan[ServedModel]:
        """The client's model: the pinned version, else the newest."""
        if self._info is None:
            models = yield from self._plan_versions()
            number = self.model_version or newest(models)
            if number not in models:
                raise ServerError(
                    f"the server at {self.endpoints[self._current]} serves no version {number} of the "
                    f"model (it serves version{'s' * (len(models) > 1)} {', '.join(models)})"
                )
            self._info = models[number]
        return self._info

    def _plan_maker(self, latents: Latents, force: bool) -> Plan[ServedModel]:
        """The version that made `latents` (by their fingerprint), else the client's model, checked.

        Raises:
            ModelMismatchError: no served version made them (unless `force`), or another shape.
        """
        info = yield from self._plan_info()
        if latents.fingerprint != info.fingerprint:
            models = yield from self._plan_versions()
            makers = [m for m in models.values() if m.fingerprint == latents.fingerprint]
            info = makers[-1] if makers else info  # the newest, should one model be served twice
        self._check_latents(latents, info, force)
        return info

    def _plan_model(self, *items: LatentsOrImages, force: bool) -> Plan[ServedModel]:
        """The model an edit runs on: the maker of the first `Latents` among `items` (images are
        encoded by it too), else the client's model."""
        first = next((item for item in items if isinstance(item, Latents)), None)
        if first is None:
            return (yield from self._plan_info())
        return (yield from self._plan_maker(first, force))

    def _plan_infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        output: str,
        settings: Settings,
        served: ServedModel | None = None,
        stream: bool = False,
    ) -> Plan[Any]:
        """Run one model on a batch, split into requests of at most the model's max_batch_size.

        `served` is the version to run (default: the client's model). `stream`: run its stream
        model instead, yielding a `Preview` per phase (see `_plan_stream`).
        """
        if served is None:
            served = yield from self._plan_info()
        if stream:
            model = STREAM_OF[model]
        config = yield from self._plan_config(model)
        size = len(next(iter(inputs.values())))
        step = int(config.get("max_batch_size") or size) or 1
        chunks = [
            {name: array[start : start + step] for name, array in inputs.items()}
            for start in range(0, size, step)
        ]
        if stream:
            return (yield from self._plan_stream(model, chunks, output, settings, served))
        parameters = request_parameters(model, settings)
        parts = []
        for chunk in chunks:
            request = InferRequest(model, chunk, output, parameters, fingerprint=served.fingerprint)
            parts.append((yield request))
        return np.concatenate(parts).astype(np.float32)

    def _plan_stream(
        self,
        model: str,
        chunks: list[dict[str, np.ndarray]],
        output: str,
        settings: Settings,
        served: ServedModel,
    ) -> Plan[np.ndarray]:
        """Stream every chunk at once (each its own stream request), then read them phase by phase
        and yield a `Preview` of the whole batch per phase: 1 … k, the last final.

        Raises:
            ServerError: a stream that skips, repeats or reorders a phase, or whose chunks disagree.
        """
        k = served.space.k
        parameters = request_parameters(model, settings)
        streams = []
        for chunk in chunks:
            request = StreamRequest(
                model, chunk, output, parameters, fingerprint=served.fingerprint, phases=k
            )
            streams.append((yield request))
        phase = 0
        while phase < k:
            answers = []
            for open_stream in streams:
                answers.append((yield StreamRead(open_stream)))
            phases = sorted({number for number, _ in answers})
            if phases != [phase + 1]:
                raise ServerError(
                    f"the {model} model answered phase {', '.join(map(str, phases))} after phase {phase} "
                    f"(expected each of 1 … {k} in order)"
                )
            phase += 1
            images = np.concatenate([part for _, part in answers]).astype(np.float32)
            yield Preview(phase, images, final=phase == k)
        return images

    @staticmethod
    def _groups(space: LatentSpace, groups: Groups) -> np.ndarray:
        """bool [k] from a group number, numbers (S1 is 1) or a mask, with a clear error."""
        if isinstance(groups, int | np.integer) and not isinstance(groups, bool):
            groups = [int(groups)]
        try:
            return space.selection(groups)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            hint = "" if "1.." in str(e) else f" (groups are numbered 1..{space.k}, S1 is 1)"
            raise ValueError(f"bad groups {groups!r}: {e}{hint}") from None

    def _check_latents(self, latents: Latents, info: ServedModel, force: bool) -> None:
        """Refuse latents of another model (unless forced) and latents of another shape (always)."""
        where = self.endpoints[self._current]
        if latents.space.latent_shape != info.space.latent_shape:
            raise ModelMismatchError(
                f"these latents are {latents.space.latent_shape} (images {latents.space.shape}), but the "
                f"model at {where} uses {info.space.latent_shape} (images {info.space.shape})"
            )
        if force:
            return
        if latents.fingerprint != info.fingerprint:
            made = f" (served as version {latents.model_version})" if latents.model_version else ""
            served = f" as version {info.version}" if info.version else ""
            others = " and no other version made them" if self._models and len(self._models) > 1 else ""
            raise ModelMismatchError(
                f"these latents were made by model {latents.fingerprint!r}{made}, but the server at "
                f"{where} serves model {info.fingerprint!r}{served}{others}: decode them with the model "
                "that made them (or pass force=True to decode them anyway)"
            )
        if latents.space != info.space:
            raise ModelMismatchError(
                f"these latents use {latents.space!r}, the model uses {info.space!r} (pass force=True to "
                "decode them anyway)"
            )

    def _plan_encode(self, images: Images, wanted: Wanted, info: ServedModel | None = None) -> Plan[Latents]:
        """Images → Latents of `info` (default: the client's model)."""
        if info is None:
            info = yield from self._plan_info()
        x = to_model_images(images, info.space.shape)
        settings = wanted.resolve(info)
        z = yield from self._plan_infer(ENCODE, {IMAGE: x}, LATENT, settings, info)
        return Latents(z, info.fingerprint, info.space, settings, model_version=info.version)

    def _plan_latents(
        self, item: LatentsOrImages, force: bool, wanted: Wanted, info: ServedModel, single: str = ""
    ) -> Plan[Latents]:
        """`Latents` as given (checked against the version that made them), anything else encoded
        as images by `info`."""
        if isinstance(item, Latents):
            yield from self._plan_maker(item, force)
            latents = item
        else:
            latents = yield from self._plan_encode(item, wanted, info)
        if single and len(latents) != 1:
            raise ValueError(f"{single} takes one latent or image, got {len(latents)}")
        return latents

    def _plan_decode(
        self, latents: Latents | np.ndarray, force: bool, wanted: Wanted, stream: bool = False
    ) -> Plan[np.ndarray]:
        inputs: dict[str, np.ndarray] = {}
        base = None
        if isinstance(latents, Latents):
            info = yield from self._plan_maker(latents, force)  # the version that made them
            values = latents.values
            if latents.space == info.space:
                base = latents.settings  # decode with the settings that made the latents
            if latents.fingerprint == info.fingerprint:  # the server checks it too
                inputs[FINGERPRINT] = np.full((len(values), 1), info.fingerprint.encode(), dtype=object)
        else:  # a bare array claims no model: only its shape is checked
            info = yield from self._plan_info()
            values = np.asarray(latents, dtype=np.float32)
            values = values[None] if values.ndim == 2 else values
            info.space.check_latents(values)
            if not np.isfinite(values).all():
                raise ValueError("latents contain NaN or infinity")
        settings = wanted.resolve(info, base)
        inputs = {LATENT: np.ascontiguousarray(values, dtype=np.float32), **inputs}
        return (yield from self._plan_infer(DECODE, inputs, IMAGE, settings, info, stream))

    def _plan_mix(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: Groups,
        force: bool,
        wanted: Wanted,
        stream: bool = False,
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_model(a, b, force=force)
        chosen = self._groups(info.space, groups)
        if not chosen.any():
            raise ValueError("mix needs at least one group to take from b")
        if not isinstance(a, Latents) and not isinstance(b, Latents):  # the server's mix model
            xa, xb = _pair(to_model_images(a, info.space.shape), to_model_images(b, info.space.shape))
            inputs = {IMAGE_A: xa, IMAGE_B: xb, GROUPS: np.repeat(chosen[None], len(xa), axis=0)}
            return (yield from self._plan_infer(MIX, inputs, IMAGE, wanted.resolve(info), info, stream))
        za = yield from self._plan_latents(a, force, wanted, info)
        zb = yield from self._plan_latents(b, force, wanted, info)
        if za.fingerprint != zb.fingerprint and not force:
            raise ModelMismatchError(
                f"cannot mix latents of model {za.fingerprint!r} with latents of model {zb.fingerprint!r}"
            )
        va, vb = _pair(za.values, zb.values)
        mixed = za.replace(grouplat.mix(za.space, va, vb, chosen))
        return (yield from self._plan_decode(mixed, force, wanted, stream))

    def _plan_interpolate(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        group: int,
        weights: Sequence[float] | np.ndarray,
        method: str,
        force: bool,
        wanted: Wanted,
    ) -> Plan[np.ndarray]:
        w = _finite(weights, "weights")
        info = yield from self._plan_model(a, b, force=force)
        za = yield from self._plan_latents(a, force, wanted, info, single="interpolate")
        zb = yield from self._plan_latents(b, force, wanted, info, single="interpolate")
        moved = za.replace(grouplat.interpolate(za.space, za.values[0], zb.values[0], group, w, method))
        return (yield from self._plan_decode(moved, force, wanted))

    def _plan_traverse(
        self,
        latent: LatentsOrImages,
        channel: int,
        index: int,
        values: Sequence[float] | np.ndarray,
        force: bool,
        wanted: Wanted,
    ) -> Plan[np.ndarray]:
        v = _finite(values, "values")
        info = yield from self._plan_model(latent, force=force)
        z = yield from self._plan_latents(latent, force, wanted, info, single="traverse")
        moved = z.replace(grouplat.traverse(z.space, z.values[0], channel, index, v))
        return (yield from self._plan_decode(moved, force, wanted))

    def _plan_reconstruct(
        self, latent: LatentsOrImages, keep: int, fill: str, seed: int, force: bool, wanted: Wanted
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_model(latent, force=force)
        z = yield from self._plan_latents(latent, force, wanted, info)
        kept = z.replace(grouplat.keep_first(z.space, z.values, keep, fill, seed))
        return (yield from self._plan_decode(kept, force, wanted))

    def _plan_variations(
        self, latent: LatentsOrImages, keep_groups: Groups, n: int, seed: int, force: bool, wanted: Wanted
    ) -> Plan[np.ndarray]:
        info = yield from self._plan_model(latent, force=force)
        keep = self._groups(info.space, keep_groups)
        z = yield from self._plan_latents(latent, force, wanted, info, single="variations")
        varied = z.replace(grouplat.variations(z.space, z.values[0], keep, n, seed))
        return (yield from self._plan_decode(varied, force, wanted))


def request_parameters(model: str, settings: Settings) -> dict[str, str | int]:
    """The request parameters of `settings` for one model: only the schedule of the direction it
    runs (an encode sends the encode's as `schedule`, a decode the decode's; mix sends both)."""
    if STREAMS.get(model, model) == ENCODE:
        return settings.encoding().parameters()
    if STREAMS.get(model, model) == DECODE:
        return settings.decoding().parameters()
    return settings.parameters()


def _finite(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """float64 [N], N ≥ 1, all finite (interpolation weights, traversal values)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a non-empty list of finite numbers, got {values!r}")
    return array


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Broadcast one of two batches of one against the other (mix: one reference for many)."""
    if len(a) == len(b):
        return a, b
    if len(b) == 1:
        return a, np.repeat(b, len(a), axis=0)
    if len(a) == 1:
        return np.repeat(a, len(b), axis=0), b
    raise ValueError(f"mix needs as many b as a, or one of either; got {len(a)} and {len(b)}")
