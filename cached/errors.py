"""The daemon's exception tree.

Storage and request logic raise these; nothing here knows about gRPC or HTTP.
``cached/status.py`` maps each class to a status code in one table at the edge.

    LayercacheError
    ├── InvalidArgument          malformed request values
    │   ├── InvalidDigest        not a canonical "algo:hex" digest
    │   ├── InvalidName          namespace or key outside its grammar
    │   └── ContentMismatch      uploaded bytes disagree with declared digest/size
    ├── NotFound
    │   └── BlobNotFound
    ├── OutOfRange               read offset past the end of a blob
    ├── FailedPrecondition
    │   └── MissingBlobs         a record names blobs the cache lacks
    ├── DataLoss                 stored bytes failed their check (never served)
    ├── ResourceExhausted
    │   ├── StoreFull            the hard size limit or the disk is full
    │   └── BlobTooLarge         over the per-blob maximum
    ├── PermissionDenied
    ├── Unauthenticated
    ├── Unsupported              the operation is not offered (e.g. an HTTP method on an endpoint)
    └── Unavailable              the daemon is shutting down
"""

from __future__ import annotations

from collections.abc import Iterable


class LayercacheError(Exception):
    """Base of every error the daemon reports to a client."""


class InvalidArgument(LayercacheError):
    pass


class InvalidDigest(InvalidArgument):
    pass


class InvalidName(InvalidArgument):
    pass


class ContentMismatch(InvalidArgument):
    pass


class NotFound(LayercacheError):
    pass


class BlobNotFound(NotFound):
    def __init__(self, digest: object) -> None:
        super().__init__(f"blob {digest} not found")
        self.digest = str(digest)


class OutOfRange(LayercacheError):
    pass


class FailedPrecondition(LayercacheError):
    pass


class MissingBlobs(FailedPrecondition):
    def __init__(self, digests: Iterable[object]) -> None:
        self.digests = sorted(str(d) for d in digests)
        super().__init__("the cache lacks referenced blobs: " + ", ".join(self.digests))


class DataLoss(LayercacheError):
    pass


class ResourceExhausted(LayercacheError):
    pass


class StoreFull(ResourceExhausted):
    pass


class BlobTooLarge(ResourceExhausted):
    pass


class PermissionDenied(LayercacheError):
    pass


class Unauthenticated(LayercacheError):
    pass


class Unsupported(LayercacheError):
    pass


class Unavailable(LayercacheError):
    pass
