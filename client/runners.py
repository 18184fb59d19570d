"""The two runners: plans executed over tritonclient's blocking gRPC client (`BlockingTransport`,
under `Client`) and over its asyncio one (`AsyncTransport`, under `AsyncClient`).

A runner sends each request a plan yields to the endpoint in use, within the call's deadline; an
endpoint met for the first time after a fail-over is first asked for the versions it serves, and
every infer goes to the version there that serves the model the plan asked for. A retryable
failure (grouplat.client.transport.retryable) drops the connection, moves to the next endpoint and
backs off; any other failure is raised as a ClientError at once. Every request of one method call
carries the call's request id (`Transport._call_id`), and so does every ClientError it raises.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from grouplat.client.errors import ClientError
from grouplat.client.transport import (
    ConfigRequest,
    Deadline,
    Plan,
    Request,
    T,
    Transport,
    retryable,
    with_request_id,
)
from grouplat.serving.contract import DECODE

if TYPE_CHECKING:
    from typing import Self


class BlockingTransport(Transport):
    """The runner of `Client`: plans executed with tritonclient's blocking gRPC client."""

    def _run(self, plan: Plan[T], timeout: float | None, request_id: str | None = None) -> T:
        rid = self._call_id(request_id)
        deadline = Deadline(self.timeout if timeout is None else timeout)
        try:
            request = next(plan)
            while True:
                request = plan.send(self._call(self._stamp(request, rid), deadline))
        except StopIteration as done:
            return done.value
        except ClientError as error:
            with_request_id(error, rid)
            raise
        finally:
            plan.close()

    def _call(self, request: Request, deadline: Deadline) -> Any:
        tries = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                return self._attempt(endpoint, request, deadline)
            except InferenceServerException as e:
                if not retryable(e):
                    raise self._translate(e, endpoint, request, deadline) from None
                self._drop(endpoint)  # a fresh channel reconnects without gRPC's own backoff
                tries += 1
                time.sleep(self._after_unavailable(e, tries, deadline, request))

    def _attempt(self, endpoint: str, request: Request, deadline: Deadline) -> Any:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = grpcclient.InferenceServerClient(endpoint, **self._connection_args())
            self._connections[endpoint] = connection
        if self._needs_check(endpoint, request):
            answer = connection.get_model_config(DECODE, as_json=True, client_timeout=deadline.remaining())
            self._check_endpoint(endpoint, answer["config"])
        if isinstance(request, ConfigRequest):
            answer = connection.get_model_config(
                request.model, as_json=True, client_timeout=deadline.remaining()
            )
            self._check_endpoint(endpoint, answer["config"])
            return answer["config"]
        inputs, outputs = self._infer_inputs(grpcclient, request)
        result = connection.infer(
            request.model,
            inputs,
            outputs=outputs,
            model_version=self._version_for(endpoint, request),
            request_id=request.request_id,
            client_timeout=deadline.remaining(),
            parameters=request.parameters,
        )
        return self._output(result, request)

    def _drop(self, endpoint: str) -> None:
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close every connection (a later call opens new ones)."""
        for endpoint in list(self._connections):
            self._drop(endpoint)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTransport(Transport):
    """The runner of `AsyncClient`: plans executed with tritonclient's asyncio gRPC client."""

    async def _run(self, plan: Plan[T], timeout: float | None, request_id: str | None = None) -> T:
        rid = self._call_id(request_id)
        deadline = Deadline(self.timeout if timeout is None else timeout)
        try:
            request = next(plan)
            while True:
                request = plan.send(await self._call(self._stamp(request, rid), deadline))
        except StopIteration as done:
            return done.value
        except ClientError as error:
            with_request_id(error, rid)
            raise
        finally:
            plan.close()

    async def _call(self, request: Request, deadline: Deadline) -> Any:
        tries = 0
        while True:
            endpoint = self.endpoints[self._current]
            try:
                return await self._attempt(endpoint, request, deadline)
            except InferenceServerException as e:
                if not retryable(e):
                    raise self._translate(e, endpoint, request, deadline) from None
                await self._drop(endpoint)
                tries += 1
                await asyncio.sleep(self._after_unavailable(e, tries, deadline, request))

    async def _attempt(self, endpoint: str, request: Request, deadline: Deadline) -> Any:
        connection = self._connections.get(endpoint)
        if connection is None:
            connection = aioclient.InferenceServerClient(endpoint, **self._connection_args())
            self._connections[endpoint] = connection
        if self._needs_check(endpoint, request):
            answer = await connection.get_model_config(
                DECODE, as_json=True, client_timeout=deadline.remaining()
            )
            self._check_endpoint(endpoint, answer["config"])
        if isinstance(request, ConfigRequest):
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
            model_version=self._version_for(endpoint, request),
            request_id=request.request_id,
            client_timeout=deadline.remaining(),
            parameters=request.parameters,
        )
        return self._output(result, request)

    async def _drop(self, endpoint: str) -> None:
        connection = self._connections.pop(endpoint, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        """Close every connection (a later call opens new ones)."""
        for endpoint in list(self._connections):
            await self._drop(endpoint)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
