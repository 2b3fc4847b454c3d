"""Domain errors shared by every edgecloud part.

Each error carries a transport-neutral :class:`ErrorKind`; the gRPC layers
map kinds to status codes in one place (``core.grpc_errors``). The message is
written for the caller and never contains exception text from a lower layer.

Exception tree::

    EdgecloudError
    ├── InvalidInput          (INVALID_ARGUMENT: bad tensor, bad parameter)
    ├── NotFound              (NOT_FOUND: unknown model or version)
    ├── Overloaded            (RESOURCE_EXHAUSTED: queue full)
    ├── DeadlineExceeded      (DEADLINE_EXCEEDED: no time left)
    ├── Unavailable           (UNAVAILABLE: not ready, draining, peer down)
    ├── FailedPrecondition    (FAILED_PRECONDITION: incompatible model/policy)
    ├── AlreadyExists         (ALREADY_EXISTS: a version another publisher took first)
    ├── PermissionDenied      (PERMISSION_DENIED: role does not allow it)
    ├── Unauthenticated       (UNAUTHENTICATED: missing or bad credentials)
    └── ModelFailure          (INTERNAL: the model itself failed to run)
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, independent of any transport."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    FAILED_PRECONDITION = "failed_precondition"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


class EdgecloudError(Exception):
    """Base of every error edgecloud raises on purpose."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EdgecloudError):
    """The request is malformed: a tensor, a parameter or a document."""

    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(EdgecloudError):
    """The named model, version or object does not exist."""

    kind = ErrorKind.NOT_FOUND


class Overloaded(EdgecloudError):
    """The server is at capacity and sheds this request."""

    kind = ErrorKind.RESOURCE_EXHAUSTED


class DeadlineExceeded(EdgecloudError):
    """The request's deadline passed before it could be answered."""

    kind = ErrorKind.DEADLINE_EXCEEDED


class Unavailable(EdgecloudError):
    """The server or a peer it needs cannot serve right now."""

    kind = ErrorKind.UNAVAILABLE


class FailedPrecondition(EdgecloudError):
    """The request cannot apply to the current state (incompatible signature)."""

    kind = ErrorKind.FAILED_PRECONDITION


class AlreadyExists(EdgecloudError):
    """What the request would create exists already (an immutable version)."""

    kind = ErrorKind.ALREADY_EXISTS


class PermissionDenied(EdgecloudError):
    """The caller is known but its role does not allow the action."""

    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(EdgecloudError):
    """The caller presented no or invalid credentials."""

    kind = ErrorKind.UNAUTHENTICATED


class ModelFailure(EdgecloudError):
    """The model failed while running; details go to the log, not the caller."""

    kind = ErrorKind.INTERNAL
