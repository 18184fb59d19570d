"""`Client`: the blocking gRPC client of a grouplat Triton server. Each method runs one plan
(grouplat.client.plans) on the blocking runner; `AsyncClient` runs the same plans on asyncio."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from grouplat.client.latents import Latents, Settings
from grouplat.client.plans import Groups, Images, LatentsOrImages, Plans
from grouplat.client.runners import BlockingTransport
from grouplat.client.served import Overrides, ServedModel, Wanted
from grouplat.client.transport import Preview

if TYPE_CHECKING:
    from typing import Unpack


class Client(BlockingTransport, Plans):
    """Blocking client of one grouplat model, served by one or several equivalent endpoints.

    Images go in as uint8 [.., H, W, C] / float [.., C, H, W] in [-1, 1] arrays, PIL images or
    file paths; every edit method takes them or `Latents`, and returns float32 [B, C, H, W] in
    [-1, 1] (`to_uint8`, `to_pil`, `save_image` convert).

    Generation settings: by default encoding uses the model's and decoding the latents' own (which
    invert their encode). A method's `settings` (a `Settings`, i.e. grouplat's
    GenerationSettings) replaces them; keyword overrides `steps=`, `solver=`, `schedule=` replace
    single fields over either. Not thread-safe: use one client per thread (or `AsyncClient`).

    Args:
        server: "host:port", "host1:port1,host2:port2" or a list; default $GROUPLAT_SERVER, else
            127.0.0.1:8001. Tries that find an endpoint UNAVAILABLE (or restarting) move on to the next.
        timeout: the deadline in seconds of each method call, retries included.
        retry: the backoff between rounds of tries (default `RetryPolicy()`).
        ssl: use TLS; `root_certificates`, and `private_key` + `certificate_chain` for client
            authentication, are PEM file paths.
        request_id: the request id sent with every call (default: a new uuid4 hex per method call).
            The server names it in its errors and log lines (`[request <id>]`), and every ClientError
            carries it as `error.request_id`; a method's own `request_id=` wins over this.
        model_version: the model version to use ("2"), when the server serves several side by side;
            default: the newest (the one read first, kept for the client's life). Images are
            encoded by it; `Latents` always go to the version that made them (by their fingerprint),
            whatever is pinned. Every endpoint must serve this version's model (its fingerprint).

    Raises:
        ValueError: a malformed server address or model version.

    Every method raises ServerUnavailableError (no endpoint answered within the deadline),
    DeadlineExceededError, InvalidRequestError (a ValueError: the server's refusal), ServerError
    (other server failures); and, before sending, ValueError or FileNotFoundError for bad arguments.

    Example:
        with Client("localhost:8001") as client:
            z = client.encode(["a.png", "b.png"])          # Latents
            images = client.decode(z, steps=40)            # float32 [2, C, H, W]
            fast = client.decode(z, settings=Settings("gei2m", 8))
            for preview in client.decode_stream(z):      # one per phase: S1 first, then finer
                show(preview.images)                       # the last (preview.final) is decode's
    """

    def info(self, timeout: float | None = None, request_id: str | None = None) -> ServedModel:
        """The client's model (the pinned version, else the newest): fingerprint, version number,
        latent layout, default settings (read once, then cached).

        Args:
            timeout: seconds for the call, retries included (default: the client's).
            request_id: the id sent with the call's requests (default: the client's, else a new one).

        Raises:
            ServerError: the served `decode` model is not a grouplat model, or has no such version.
        """
        return self._run(self._plan_info(), timeout, request_id)

    def versions(self, timeout: float | None = None, request_id: str | None = None) -> dict[str, ServedModel]:
        """Every model version the server serves, by version number (ascending; read once).

        A repository written before versions could coexist lists none: its one model appears
        under the pinned version number, or "".

        Args, Raises: as `info`.
        """
        return self._run(self._plan_versions(), timeout, request_id)

    def encode(
        self,
        images: Images,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> Latents:
        """Images → `Latents`, carrying the model's fingerprint and the settings used.

        Args:
            images: one image or a batch (see the class docstring); never resized.
            settings: generation settings (default: the model's).
            timeout: seconds for the call, retries included (default: the client's).
            request_id: the id sent with the call's requests (default: the client's, else a new one).
            **overrides: `steps`, `solver`, `schedule` over `settings`.

        Returns:
            B latents of the served model.

        Raises:
            ValueError: images of the wrong size, range or dtype; bad settings.
        """
        plan = self._plan_encode(images, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def decode(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """`Latents` (or a bare float32 [B, C, H·W] array, which claims no model) → images.

        `Latents` are decoded by the served version that made them (found by their fingerprint),
        with its layout and defaults, whichever version the client pins; so are the latents of every
        edit below. A bare array is decoded by the client's model.

        Args:
            latents: the latents to decode.
            force: decode latents of a model no served version has anyway, with the client's model
                (their latent shape must match).
            settings: generation settings (default: the latents' own, else the model's).
            timeout: seconds for the call, retries included (default: the client's).
            request_id: the id sent with the call's requests (default: the client's, else a new one).
            **overrides: `steps`, `solver`, `schedule` over `settings`.

        Returns:
            float32 [B, C, H, W] in [-1, 1].

        Raises:
            ModelMismatchError: latents of a model no served version has (unless `force`), or of
                another shape; or an endpoint (after fail-over) that does not serve their model.
        """
        plan = self._plan_decode(latents, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def mix(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: Groups,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """Images of `a` with the chosen groups taken from `b` (Fig. 6).

        Two sets of images go to the server's `mix` model in one call; `Latents` are mixed here.

        Args:
            a, b: latents or images; `b` may be one reference for all of `a` (or `a` one for all b).
            groups: a group number (S1 is 1), several, or a bool mask [k].
            force, settings, timeout, request_id, **overrides: as in `decode`.

        Returns:
            float32 [max(len(a), len(b)), C, H, W].

        Raises:
            ValueError: no group chosen, an unknown group, or batches of different lengths.
            ModelMismatchError: latents of different models (unless `force`).
        """
        plan = self._plan_mix(a, b, groups, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def decode_stream(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> Generator[Preview, None, None]:
        """`decode` with progressive previews: the image as it stands after each group's phase.

        Runs on the server's `decode_stream` model, with the arguments, routing and settings of
        `decode`. Yields `Preview(phase, images, final)` for phases 1 … k in order: phase j shows
        S1 … Sj decoded and the finer groups at the data mean; the last (phase k, `final`) is
        exactly what `decode` returns. A batch above the model's max_batch_size runs as several
        streams at once, and each preview holds the whole batch.

        The call's `timeout` covers the whole stream, counted from this call (the time between
        iterations too). Leaving the loop early (`break`, `.close()`, an exception) cancels the
        request: the server stops its work. A `break` closes the iterator at once where nothing
        else holds it; otherwise use `with contextlib.closing(client.decode_stream(z)) as previews:`.

        Args, Raises: as `decode`; the errors are raised from the iteration, and arguments are
        checked when it starts.

        Returns:
            An iterator of k `Preview`s, each float32 [B, C, H, W] in [-1, 1].
        """
        plan = self._plan_decode(latents, force, Wanted.of(settings, overrides), stream=True)
        return self._stream(plan, timeout, request_id)

    def mix_stream(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: Groups,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> Generator[Preview, None, None]:
        """`mix` with progressive previews: two sets of images go to the server's `mix_stream` model
        (`Latents` are mixed here and decoded on `decode_stream`); the last preview is `mix`'s result.

        Args, Raises: as `mix`. Returns, the deadline and leaving early: as `decode_stream`.
        """
        plan = self._plan_mix(a, b, groups, force, Wanted.of(settings, overrides), stream=True)
        return self._stream(plan, timeout, request_id)

    def interpolate(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        group: int,
        weights: Sequence[float] | np.ndarray,
        *,
        method: str = "linear",
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """One group moved from `a` to `b` by each weight, the other groups kept (Fig. 4).

        Args:
            a, b: one latent or image each.
            group: the group that moves (S1 is 1).
            weights: the positions, 0 at `a` and 1 at `b`.
            method: `linear` or `slerp`.
            force, settings, timeout, request_id, **overrides: as in `decode`.

        Returns:
            float32 [len(weights), C, H, W].

        Raises:
            ValueError: more than one latent in `a` or `b`, or weights that are not finite numbers.
        """
        plan = self._plan_interpolate(a, b, group, weights, method, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def traverse(
        self,
        latent: LatentsOrImages,
        channel: int,
        index: int,
        values: Sequence[float] | np.ndarray,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """Latent element (`channel`, `index`) set to each of `values` (Fig. 7).

        Args:
            latent: one latent or image.
            channel, index: the element; `index` counts coefficients in basis order.
            values: the values it takes.
            force, settings, timeout, request_id, **overrides: as in `decode`.

        Returns:
            float32 [len(values), C, H, W].

        Raises:
            ValueError: more than one latent, an element outside the latent, or non-finite values.
        """
        plan = self._plan_traverse(latent, channel, index, values, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def reconstruct(
        self,
        latent: LatentsOrImages,
        keep: int,
        *,
        fill: str = "zeros",
        seed: int = 0,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """Decode from the first `keep` coefficients of each channel (Fig. 5).

        Args:
            latent: latents or images.
            keep: how many coefficients to keep, in basis order.
            fill: the rest set to `zeros` (the latent mean) or `resample`d: fresh N(0, 1) from `seed`.
            seed: the seed of `resample`.
            force, settings, timeout, request_id, **overrides: as in `decode`.

        Returns:
            float32 [B, C, H, W].

        Raises:
            ValueError: `keep` outside 0..H·W, or an unknown `fill`.
        """
        plan = self._plan_reconstruct(latent, keep, fill, seed, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)

    def variations(
        self,
        latent: LatentsOrImages,
        keep_groups: Groups,
        n: int,
        *,
        seed: int = 0,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """`n` images with the kept groups fixed and the others resampled from `seed` (Fig. 9).

        Args:
            latent: one latent or image.
            keep_groups: the groups kept (S1 is 1), as in `mix`.
            n: how many variations.
            seed: the seed of the resampled groups (same seed, same images).
            force, settings, timeout, request_id, **overrides: as in `decode`.

        Returns:
            float32 [n, C, H, W].

        Raises:
            ValueError: more than one latent, an unknown group, or n < 1.
        """
        plan = self._plan_variations(latent, keep_groups, n, seed, force, Wanted.of(settings, overrides))
        return self._run(plan, timeout, request_id)
