"""The client's exceptions; each chains the tritonclient error it came from."""

from __future__ import annotations

from headserve.errors import HeadserveError


class ClientError(HeadserveError):
    """Base of every error the client raises."""


class ServerUnavailableError(ClientError):
    """No server answered at the URL within the deadline."""


class HeadNotFoundError(ClientError):
    """The server has no ready model of that name."""


class BadInputError(ClientError):
    """The request was refused for its content (shape, dtype, size)."""


class ServerSideError(ClientError):
    """The server failed while answering."""
