"""`AsyncClient`: the same methods as `Client`, awaitable, over `tritonclient.grpc.aio`.

It runs the very plans `Client` runs (grouplat.client.client), so the two cannot drift apart; only
the transport differs. Use one AsyncClient per event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from grouplat.client.client import (
    Images,
    LatentsOrImages,
    Plan,
    ServedModel,
    T,
    _Base,
    _Config,
    _Deadline,
    _Infer,
    _retryable,
)
from grouplat.client.latents import Latents


class AsyncClient(_Base):
    """Awaitable twin of `Client` (same arguments, same methods, same errors).

    async with AsyncClient("localhost:8001") as client:
        latents = await client.encode(images)
    """

    # -- transport ----------------------------------------------------------------------------
    async def _run(self, plan: Plan[T], timeout: float | None) -> T:
        deadline = _Deadline(self.timeout if timeout is None else timeout)
        try:
            request = next(plan)
            while True:
                request = plan.send(await self._call(request, deadline))
        except StopIteration as done:
            return done.value
        finally:
            plan.close()

    async def _call(self, request: _Config | _Infer, deadline: _Deadline) -> Any:
        tries = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                return await self._attempt(endpoint, request, deadline)
            except InferenceServerException as e:
                if not _retryable(e):
                    raise self._translate(e, endpoint, request, deadline) from None
                await self._drop(endpoint)
                tries += 1
                await asyncio.sleep(self._after_unavailable(e, tries, deadline))

    async def _attempt(self, endpoint: str, request: _Config | _Infer, deadline: _Deadline) -> Any:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = aioclient.InferenceServerClient(endpoint, **self._connection_args())
            self._connections[endpoint] = connection
        if self._needs_check(endpoint, request):
            answer = await connection.get_model_config(
                "decode", as_json=True, client_timeout=deadline.remaining()
            )
            self._check_endpoint(endpoint, answer["config"])
        if isinstance(request, _Config):
            answer = await connection.get_model_config(
                request.model, as_json=True, client_timeout=deadline.remaining()
            )
            self._check_endpoint(endpoint, answer["config"])
            return answer["config"]
        inputs, outputs = self._infer_inputs(aioclient, request)
        result = await connection.infer(
            request.model,
            inputs,
            outputs=outputs,
            client_timeout=deadline.remaining(),
            parameters=request.parameters,
        )
        return self._output(result, request)

    async def _drop(self, endpoint: str) -> None:
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        for endpoint in list(self._connections):
            await self._drop(endpoint)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- API (see Client for the documentation of each method) ------------------------------------
    async def info(self, timeout: float | None = None) -> ServedModel:
        return await self._run(self._plan_info(), timeout)

    async def encode(
        self,
        images: Images,
        *,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> Latents:
        return await self._run(self._plan_encode(images, steps, solver, schedule), timeout)

    async def decode(
        self,
        latents: Latents | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        return await self._run(self._plan_decode(latents, force, steps, solver, schedule), timeout)

    async def mix(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        groups: int | Iterable[int] | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        return await self._run(self._plan_mix(a, b, groups, force, steps, solver, schedule), timeout)

    async def interpolate(
        self,
        a: LatentsOrImages,
        b: LatentsOrImages,
        group: int,
        weights: Sequence[float] | np.ndarray,
        *,
        method: str = "linear",
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        plan = self._plan_interpolate(a, b, group, weights, method, force, steps, solver, schedule)
        return await self._run(plan, timeout)

    async def traverse(
        self,
        latent: LatentsOrImages,
        channel: int,
        index: int,
        values: Sequence[float] | np.ndarray,
        *,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        plan = self._plan_traverse(latent, channel, index, values, force, steps, solver, schedule)
        return await self._run(plan, timeout)

    async def reconstruct(
        self,
        latent: LatentsOrImages,
        keep: int,
        *,
        fill: str = "zeros",
        seed: int = 0,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        plan = self._plan_reconstruct(latent, keep, fill, seed, force, steps, solver, schedule)
        return await self._run(plan, timeout)

    async def variations(
        self,
        latent: LatentsOrImages,
        keep_groups: int | Iterable[int] | np.ndarray,
        n: int,
        *,
        seed: int = 0,
        force: bool = False,
        steps: int | None = None,
        solver: str | None = None,
        schedule: str | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        plan = self._plan_variations(latent, keep_groups, n, seed, force, steps, solver, schedule)
        return await self._run(plan, timeout)
