"""`AsyncClient`: the same methods as `Client`, awaitable, over `tritonclient.grpc.aio`.

It runs the very plans `Client` runs (grouplat.client.plans), so the two cannot drift apart; only
the runner differs (grouplat.client.runners). Use one AsyncClient per event loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from grouplat.client.latents import Latents, Settings
from grouplat.client.plans import Groups, Images, LatentsOrImages, Plans
from grouplat.client.runners import AsyncTransport
from grouplat.client.served import Overrides, ServedModel, Wanted
from grouplat.client.transport import Preview

if TYPE_CHECKING:
    from typing import Unpack


class AsyncClient(AsyncTransport, Plans):
    """Awaitable twin of `Client`: the same arguments, methods, results and errors.

    Args:
        server, timeout, retry, ssl, root_certificates, private_key, certificate_chain, request_id,
            model_version: as `Client`.

    Example:
        async with AsyncClient("localhost:8001") as client:
            z = await client.encode(images)
            decoded, mixed = await asyncio.gather(client.decode(z), client.mix(a, b, groups=1))
            async for preview in client.decode_stream(z):  # not awaited: an async iterator
                show(preview.phase, preview.images)
    """

    async def info(self, timeout: float | None = None, request_id: str | None = None) -> ServedModel:
        """The served model (read once). Args, Returns, Raises: as `Client.info`."""
        return await self._run(self._plan_info(), timeout, request_id)

    async def versions(
        self, timeout: float | None = None, request_id: str | None = None
    ) -> dict[str, ServedModel]:
        """Every served model version (read once). Args, Returns, Raises: as `Client.versions`."""
        return await self._run(self._plan_versions(), timeout, request_id)

    async def encode(
        self,
        images: Images,
        *,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> Latents:
        """Images → `Latents`. Args, Returns, Raises: as `Client.encode`."""
        plan = self._plan_encode(images, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    async def decode(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> np.ndarray:
        """Latents → images [B, C, H, W]. Args, Returns, Raises: as `Client.decode`."""
        plan = self._plan_decode(latents, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    async def mix(
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
        """Groups of `b` into `a` (Fig. 6). Args, Returns, Raises: as `Client.mix`."""
        plan = self._plan_mix(a, b, groups, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    def decode_stream(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        settings: Settings | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        **overrides: Unpack[Overrides],
    ) -> AsyncGenerator[Preview, None]:
        """A `Preview` per phase, the last `decode`'s result: `async for p in client.decode_stream(z)`.

        Args, Returns, Raises: as `Client.decode_stream`. Leaving the loop early cancels the
        request once the iterator is closed: at once with `await previews.aclose()` or
        `async with contextlib.aclosing(client.decode_stream(z)) as previews:`, else when asyncio
        finalizes the dropped iterator.
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
    ) -> AsyncGenerator[Preview, None]:
        """A `Preview` per phase, the last `mix`'s result. Args, Returns, Raises: as `Client.mix_stream`."""
        plan = self._plan_mix(a, b, groups, force, Wanted.of(settings, overrides), stream=True)
        return self._stream(plan, timeout, request_id)

    async def interpolate(
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
        """One group from `a` to `b` (Fig. 4). Args, Returns, Raises: as `Client.interpolate`."""
        plan = self._plan_interpolate(a, b, group, weights, method, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    async def traverse(
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
        """One latent element swept (Fig. 7). Args, Returns, Raises: as `Client.traverse`."""
        plan = self._plan_traverse(latent, channel, index, values, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    async def reconstruct(
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
        """Keep the first coefficients (Fig. 5). Args, Returns, Raises: as `Client.reconstruct`."""
        plan = self._plan_reconstruct(latent, keep, fill, seed, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)

    async def variations(
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
        """`n` images, kept groups fixed (Fig. 9). Args, Returns, Raises: as `Client.variations`."""
        plan = self._plan_variations(latent, keep_groups, n, seed, force, Wanted.of(settings, overrides))
        return await self._run(plan, timeout, request_id)
