"""The two runners: plans executed over tritonclient's blocking gRPC client (`BlockingTransport`,
under `Client`) and over its asyncio one (`AsyncTransport`, under `AsyncClient`).

A runner sends each request a plan yields to the endpoint in use, within the call's deadline; an
endpoint met for the first time after a fail-over is first asked for the versions it serves, and
every infer goes to the version there that serves the model the plan asked for. A retryable
failure (grouplat.client.transport.retryable) drops the connection, moves to the next endpoint and
backs off; any other failure is raised as a ClientError at once. Every request of one method call
carries the call's request id (`Transport._call_id`), and so does every ClientError it raises.

Stream calls (`_stream`) run a plan lazily, as an iterator of the `Preview`s it yields (a
generator under `Client`, an async generator under `AsyncClient`); the deadline counts from the
call. Leaving the iterator early (break, close, an error) cancels every stream the call opened.
Under `Client` each stream request gets its own connection (tritonclient's blocking client holds
one stream at a time); under `AsyncClient` they share the endpoint's.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from grouplat.client.errors import ClientError, ServerError
from grouplat.client.transport import (
    STREAM_HEADERS,
    ConfigRequest,
    Deadline,
    Plan,
    Preview,
    Request,
    Stream,
    StreamRead,
    StreamRequest,
    T,
    Transport,
    retryable,
    stream_deadline,
    stream_error,
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

    def _stream(
        self, plan: Plan[Any], timeout: float | None, request_id: str | None = None
    ) -> Generator[Preview, None, None]:
        """The previews of a stream plan, as an iterator (the deadline counts from now)."""
        rid = self._call_id(request_id)
        deadline = Deadline(self.timeout if timeout is None else timeout)
        return self._previews(plan, rid, deadline)

    def _previews(self, plan: Plan[Any], rid: str, deadline: Deadline) -> Generator[Preview, None, None]:
        streams: list[Stream] = []
        try:
            request = next(plan)
            while True:
                if isinstance(request, Preview):
                    yield request
                    request = plan.send(None)
                    continue
                answer = self._call(self._stamp(request, rid), deadline)
                if isinstance(answer, Stream):
                    streams.append(answer)
                request = plan.send(answer)
        except StopIteration:
            return
        except ClientError as error:
            with_request_id(error, rid)
            raise
        finally:
            plan.close()
            for stream in streams:  # cancels those not done: left early, failed or timed out
                self._close_stream(stream)

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
        if isinstance(request, StreamRequest):
            stream = Stream(request)
            self._open_stream(endpoint, stream, deadline)
            return stream
        if isinstance(request, StreamRead):
            return self._read_stream(endpoint, request.stream, deadline)
        if isinstance(request, Preview):
            raise TypeError("a unary plan yielded a Preview")
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

    def _open_stream(self, endpoint: str, stream: Stream, deadline: Deadline) -> None:
        """Send the stream's request on a connection of its own, its responses into a queue."""
        request = stream.request
        version = self._version_for(endpoint, request)
        inputs, outputs = self._infer_inputs(grpcclient, request)
        connection = grpcclient.InferenceServerClient(endpoint, **self._connection_args())
        answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        stream.handle, stream.endpoint = (connection, answers), endpoint
        try:
            connection.start_stream(
                callback=lambda result, error: answers.put((result, error)),
                stream_timeout=max(deadline.remaining(), 1e-3),
                headers=STREAM_HEADERS,
            )
            try:
                connection.async_stream_infer(
                    request.model,
                    inputs,
                    model_version=version,
                    outputs=outputs,
                    request_id=request.request_id,
                    parameters=request.parameters,
                )
            except InferenceServerException as refused:
                # The stream failed before the request went out (an endpoint that is down, …): the
                # reason, with its status, comes through the callback.
                try:
                    _, error = answers.get(timeout=max(deadline.remaining(), 0.0))
                except queue.Empty:
                    raise refused from None
                raise (refused if error is None else stream_error(error)) from None
        except BaseException:
            self._close_stream(stream)
            raise

    def _read_stream(self, endpoint: str, stream: Stream, deadline: Deadline) -> tuple[int, Any]:
        """The stream's next new phase; reopened first after a failure or a move to `endpoint`."""
        if stream.endpoint != endpoint:
            self._close_stream(stream)
            self._open_stream(endpoint, stream, deadline)
        _, answers = stream.handle
        while True:
            try:
                result, error = answers.get(timeout=max(deadline.remaining(), 0.0))
            except queue.Empty:
                self._close_stream(stream)
                raise stream_deadline(deadline.seconds) from None
            if error is not None:
                self._close_stream(stream)
                raise stream_error(error)
            answer = self._stream_answer(result, stream)
            if answer is not None:
                return answer

    @staticmethod
    def _close_stream(stream: Stream) -> None:
        """End the stream: cancelled (Triton cancels its request) unless its final answer came."""
        if stream.handle is None:
            return
        connection, _ = stream.handle
        stream.handle, stream.endpoint = None, ""
        try:
            connection.stop_stream(cancel_requests=not stream.final)
        finally:
            connection.close()

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

    def _stream(
        self, plan: Plan[Any], timeout: float | None, request_id: str | None = None
    ) -> AsyncGenerator[Preview, None]:
        """The previews of a stream plan, as an async iterator (the deadline counts from now)."""
        rid = self._call_id(request_id)
        deadline = Deadline(self.timeout if timeout is None else timeout)
        return self._previews(plan, rid, deadline)

    async def _previews(self, plan: Plan[Any], rid: str, deadline: Deadline) -> AsyncGenerator[Preview, None]:
        streams: list[Stream] = []
        try:
            request = next(plan)
            while True:
                if isinstance(request, Preview):
                    yield request
                    request = plan.send(None)
                    continue
                answer = await self._call(self._stamp(request, rid), deadline)
                if isinstance(answer, Stream):
                    streams.append(answer)
                request = plan.send(answer)
        except StopIteration:
            return
        except ClientError as error:
            with_request_id(error, rid)
            raise
        finally:
            plan.close()
            for stream in streams:  # cancels those not done: left early, failed or timed out
                self._close_stream(stream)

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
        if isinstance(request, StreamRequest):
            stream = Stream(request)
            self._open_stream(connection, endpoint, stream, deadline)
            return stream
        if isinstance(request, StreamRead):
            return await self._read_stream(connection, endpoint, request.stream, deadline)
        if isinstance(request, Preview):
            raise TypeError("a unary plan yielded a Preview")
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

    def _open_stream(self, connection: Any, endpoint: str, stream: Stream, deadline: Deadline) -> None:
        """Start the stream's gRPC call: one request, then the responses (read by `_read_stream`)."""
        request = stream.request
        version = self._version_for(endpoint, request)
        inputs, outputs = self._infer_inputs(aioclient, request)
        message = {
            "model_name": request.model,
            "inputs": inputs,
            "outputs": outputs,
            "model_version": version,
            "request_id": request.request_id,
            "parameters": request.parameters,
        }

        async def one() -> AsyncGenerator[dict[str, Any], None]:
            yield message

        stream.handle = connection.stream_infer(
            one(), stream_timeout=max(deadline.remaining(), 1e-3), headers=STREAM_HEADERS
        )
        stream.endpoint = endpoint

    async def _read_stream(
        self, connection: Any, endpoint: str, stream: Stream, deadline: Deadline
    ) -> tuple[int, Any]:
        """The stream's next new phase; reopened first after a failure or a move to `endpoint`."""
        if stream.endpoint != endpoint:
            self._close_stream(stream)
            self._open_stream(connection, endpoint, stream, deadline)
        while True:
            try:
                left = max(deadline.remaining(), 0.0)
                result, error = await asyncio.wait_for(stream.handle.__anext__(), left)
            except asyncio.TimeoutError:
                self._close_stream(stream)
                raise stream_deadline(deadline.seconds) from None
            except grpc.aio.AioRpcError as e:
                self._close_stream(stream)
                raise InferenceServerException(str(e.details()), status=str(e.code())) from None
            except StopAsyncIteration:
                self._close_stream(stream)
                model = stream.request.model
                raise ServerError(f"the {model} stream ended before its final response") from None
            if error is not None:
                self._close_stream(stream)
                raise stream_error(error)
            answer = self._stream_answer(result, stream)
            if answer is not None:
                return answer

    @staticmethod
    def _close_stream(stream: Stream) -> None:
        """End the stream: cancelled (Triton cancels its request) unless its final answer came."""
        call, stream.handle, stream.endpoint = stream.handle, None, ""
        if call is not None and not stream.final:
            call.cancel()

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
