"""The client's exceptions; each chains the tritonclient error it came from.

Callers catch ``ClientError`` for everything, or one subclass to react to one cause: retry later on
``ServerUnavailableError``, raise the deadline on ``DeadlineExceededError``, deploy the head on
``ModelNotReadyError``, fix the crops on ``BadInputError``.
"""

from __future__ import annotations

import re

from headserve.errors import ConfigError, HeadserveError


class ClientError(HeadserveError):
    """Base of every error the client raises."""


class ServerUnavailableError(ClientError):
    """No server answered at the URL (connection refused, TLS failure, server shutting down)."""


class DeadlineExceededError(ClientError):
    """The server did not answer within the per-call deadline."""


class ModelNotReadyError(ClientError):
    """The server has no ready model of that name (unknown head, still loading, or unloaded)."""


HeadNotFoundError = ModelNotReadyError  # the skeleton's name, kept for callers that catch it


class BadInputError(ClientError):
    """The request was refused for its content: no crops, an undecodable image, a box outside its image."""


class MessageTooLargeError(BadInputError):
    """A request or answer over this client's own gRPC message size limit (a channel option).

    gRPC reports it as RESOURCE_EXHAUSTED, as it would a server's limit; the client's own limit is fixed
    on the client side (raise it, or send fewer crops per call), so it is not a server error.
    """


class ServerSideError(ClientError):
    """The server failed while answering (model error, bad configuration published by the repository)."""


class HeadChangedError(ClientError):
    """The head's served version changed under the client twice in one call; its answers cannot be labelled.

    Raised only after the client re-read the head once: a version swap in progress, or a repository that
    keeps changing. Retrying the call later reads the new version.
    """


class ClientConfigError(BadInputError, ConfigError):
    """A client config field set to a value it cannot take (``ConnectionOptions``, ``Thresholds``,
    ``MetricsConfig``); a ``BadInputError`` too, as the client raised for these before."""


class MetricsPortError(ClientError):
    """The exporter endpoint could not listen on the port it was given (taken, or not allowed)."""


UNKNOWN_MODEL = "Request for unknown model"  # how Triton starts the message for a name or version it does not serve
# gRPC status code (as tritonclient spells it) -> the error it means for a caller.
STATUS_ERRORS: dict[str, type[ClientError]] = {
    "StatusCode.UNAVAILABLE": ServerUnavailableError,
    "StatusCode.DEADLINE_EXCEEDED": DeadlineExceededError,
    "StatusCode.NOT_FOUND": ModelNotReadyError,
    "StatusCode.INVALID_ARGUMENT": BadInputError,
}
ADVICE: dict[type[ClientError], str] = {
    ServerUnavailableError: "check the address, that the server runs (`headserve serve REPO`), and that the "
                            "TLS settings match the server's (root certificate, client certificate and key)",
    DeadlineExceededError: "raise the deadline (timeout_s) or send smaller batches",
    ModelNotReadyError: "check the head name; the server's repository index lists what it serves",
    BadInputError: "check the crops sent",
    ServerSideError: "see the server log",
    HeadChangedError: "retry the call once the head's new version is loaded",
}


# gRPC core's text when the client's own channel refused a message: "CLIENT: Sent message larger than max
# (24631 vs. 64)"; a server's limit reaches the client without the CLIENT prefix.
CLIENT_LIMIT = re.compile(r"CLIENT: (Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")
# direction in gRPC's text -> (the channel option that sets the limit, what to do besides raising it)
CLIENT_LIMIT_OPTIONS: dict[str, tuple[str, str]] = {
    "Sent": ("grpc.max_send_message_length", "send fewer crops per call"),
    "Received": ("grpc.max_receive_message_length", "ask for fewer crops per call"),
}


def client_limit_error(message: str, what: str) -> MessageTooLargeError | None:
    """The error for a message over this client's own size limit, or None when ``message`` is not one."""
    found = CLIENT_LIMIT.search(message)
    if found is None:
        return None
    direction, size, limit = found.group(1), int(found.group(2)), int(found.group(3))
    option, smaller = CLIENT_LIMIT_OPTIONS[direction]
    kind = "request" if direction == "Sent" else "answer"
    return MessageTooLargeError(
        f"{what} failed: the {kind} is {size} bytes, over this client's own limit of {limit} bytes "
        f"(gRPC channel option {option!r}; RESOURCE_EXHAUSTED raised by the client, not the server). Raise it "
        f"with ConnectionOptions(channel_options=(({option!r}, N),)), or {smaller}")


def from_triton(exc: Exception, what: str) -> ClientError:
    """Translate a tritonclient error into the client's hierarchy; ``what`` says which call failed.

    The caller raises the result ``from exc`` so the original stays chained.
    """
    status = str(getattr(exc, "status", lambda: None)() or "")
    message = exc.message() if hasattr(exc, "message") else str(exc)
    if status == "StatusCode.RESOURCE_EXHAUSTED":
        limited = client_limit_error(message or "", what)
        if limited is not None:
            return limited
    cls = STATUS_ERRORS.get(status, ServerSideError)
    if cls is ServerSideError and "failed to connect" in (message or "").lower():
        cls = ServerUnavailableError
    if (message or "").startswith(UNKNOWN_MODEL):  # Triton answers UNAVAILABLE for a model (version) it does not
        cls = ModelNotReadyError                    # serve; retrying cannot help, re-reading the head can
    return cls(f"{what} failed ({status or 'no status'}: {message}); {ADVICE[cls]}")
