"""layercache client: the library, the builder plugin and the `layercache` CLI.

Importing this package never loads the daemon (no lmdb, no cached.*), so
builders can depend on it alone.
"""

from client.client import Client, default_server
from client.errors import (
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    LayercacheError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
    UnauthenticatedError,
    UnavailableError,
)
from client.types import BlobInfo, CacheEntry, Descriptor, LookupResult, Stats, VerifyReport

__all__ = [
    "BlobInfo",
    "CacheEntry",
    "Client",
    "DataLossError",
    "Descriptor",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "LayercacheError",
    "LookupResult",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "ServerError",
    "Stats",
    "UnauthenticatedError",
    "UnavailableError",
    "VerifyReport",
    "default_server",
]
