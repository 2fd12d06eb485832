"""Exceptions raised by the layercache client, one per failure kind.

    LayercacheError                 base; .code is the gRPC status name
    ├── InvalidArgumentError        the request was malformed (bad digest, name, size)
    ├── NotFoundError               the blob or entry does not exist
    ├── OutOfRangeError             read offset past the end of the blob
    ├── FailedPreconditionError     a record names blobs the cache lacks (.missing)
    ├── DataLossError               stored or received bytes failed their check
    ├── ResourceExhaustedError      the cache is full or the blob too large
    ├── PermissionDeniedError       the token may not do this in this namespace
    ├── UnauthenticatedError        no or unknown token
    ├── UnavailableError            the daemon cannot be reached or is shutting down
    └── ServerError                 anything else the daemon reported (INTERNAL, ...)

`translate()` turns a grpc.RpcError into the most specific of these.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import grpc


class LayercacheError(Exception):
    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgumentError(LayercacheError):
    code = "INVALID_ARGUMENT"


class NotFoundError(LayercacheError):
    code = "NOT_FOUND"


class OutOfRangeError(LayercacheError):
    code = "OUT_OF_RANGE"


class FailedPreconditionError(LayercacheError):
    code = "FAILED_PRECONDITION"

    @property
    def missing(self) -> list[str]:
        """Digests the daemon named as missing, if it named any."""
        return re.findall(r"(?:sha256|blake3):[0-9a-f]{64}", str(self))


class DataLossError(LayercacheError):
    code = "DATA_LOSS"


class ResourceExhaustedError(LayercacheError):
    code = "RESOURCE_EXHAUSTED"


class PermissionDeniedError(LayercacheError):
    code = "PERMISSION_DENIED"


class UnauthenticatedError(LayercacheError):
    code = "UNAUTHENTICATED"


class UnavailableError(LayercacheError):
    code = "UNAVAILABLE"


class ServerError(LayercacheError):
    code = "INTERNAL"


_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
    # What a call gets from a daemon that is shutting down: retry elsewhere or later.
    grpc.StatusCode.CANCELLED: UnavailableError,
}


@contextmanager
def translate() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as exc:
        status = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        cls = _BY_STATUS.get(status, ServerError)
        raise cls(details, status.name) from exc
