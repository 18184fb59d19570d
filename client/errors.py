"""The errors the client raises for server-side problems; each is also a standard exception type.

ClientError
├── ServerUnavailableError  (ConnectionError)  no endpoint answered before the deadline
├── DeadlineExceededError   (TimeoutError)     the call did not finish in time
├── InvalidRequestError     (ValueError)       the server refused the request
├── ModelMismatchError      (ValueError)       latents or endpoints of another model
└── ServerError             (RuntimeError)     anything else

Each carries `request_id`: the id the client sent with the call's requests (the caller's, or a
generated one), which the server's error message and its log lines also name (`[request <id>]`).
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of the errors the client raises for server-side problems.

    Attributes:
        request_id: the request id of the call that failed (quote it to find the server's log
            lines); None for an error raised outside a call.
    """

    request_id: str | None = None


class ServerUnavailableError(ClientError, ConnectionError):
    """No endpoint answered (gRPC UNAVAILABLE) before the call's deadline."""


class DeadlineExceededError(ClientError, TimeoutError):
    """The call did not finish within its deadline."""


class InvalidRequestError(ClientError, ValueError):
    """The server refused the request (gRPC INVALID_ARGUMENT); the message is the server's."""


class ModelMismatchError(ClientError, ValueError):
    """Latents of one model given to another (or endpoints serving different models)."""


class ServerError(ClientError, RuntimeError):
    """Any other server-side failure (unknown model, internal error, …)."""
