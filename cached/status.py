"""The one table that maps our exceptions onto gRPC status codes and HTTP codes.

Front ends call `grpc_status(exc)` / `http_status(exc)`; the most specific
class listed wins (the table is walked along the exception's MRO), so a new
subclass inherits its parent's code unless it is listed here.
"""

from __future__ import annotations

import grpc

from cached import errors

_TABLE: dict[type[errors.LayercacheError], tuple[grpc.StatusCode, int]] = {
    errors.InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    errors.NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    errors.OutOfRange: (grpc.StatusCode.OUT_OF_RANGE, 416),
    errors.FailedPrecondition: (grpc.StatusCode.FAILED_PRECONDITION, 400),
    errors.DataLoss: (grpc.StatusCode.DATA_LOSS, 500),
    errors.ResourceExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, 507),
    errors.BlobTooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    errors.PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403),
    errors.Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    errors.Unsupported: (grpc.StatusCode.UNIMPLEMENTED, 405),
    errors.Unavailable: (grpc.StatusCode.UNAVAILABLE, 503),
}


def _lookup(exc: errors.LayercacheError) -> tuple[grpc.StatusCode, int]:
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            return _TABLE[cls]
    return grpc.StatusCode.INTERNAL, 500


def grpc_status(exc: errors.LayercacheError) -> grpc.StatusCode:
    return _lookup(exc)[0]


def http_status(exc: errors.LayercacheError) -> int:
    return _lookup(exc)[1]
