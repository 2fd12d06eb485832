"""Errors of the OCI endpoint and the one table naming their OCI error codes.

The HTTP status of every error comes from cached/status.py, like for every
front end. What the OCI Distribution spec adds is an error *code name* in the
JSON body ({"errors": [{"code", "message", "detail"}]}); `oci_code` finds it
by walking the exception's MRO through `_CODES`, so the most specific class
listed wins. The classes below only name situations the generic tree cannot
tell apart (a missing manifest versus a missing blob):

    LayercacheError (cached/errors.py)
    ├── InvalidArgument
    │   ├── InvalidName
    │   │   └── TagInvalid         a manifest reference that is neither tag nor digest
    │   ├── ManifestInvalid        manifest JSON that is not an image manifest or index
    │   ├── UploadInvalid          a malformed upload request (Content-Range, chunk framing)
    │   └── SizeInvalid            a declared length that disagrees with the content
    ├── NotFound
    │   ├── ManifestUnknown
    │   ├── UploadUnknown          no such upload session (never started, finished, expired)
    │   └── EndpointUnknown        a path that is not part of the API
    ├── OutOfRange
    │   ├── UploadOutOfOrder       a chunk that does not start where the upload stands (416)
    │   └── RangeNotSatisfiable    a Range GET outside the blob (416)
    └── ResourceExhausted
        └── BlobTooLarge
            └── ManifestTooLarge   over http.max_manifest_bytes (413)
"""

from __future__ import annotations

from cached import errors


class TagInvalid(errors.InvalidName):
    pass


class ManifestInvalid(errors.InvalidArgument):
    pass


class UploadInvalid(errors.InvalidArgument):
    pass


class SizeInvalid(errors.InvalidArgument):
    pass


class ManifestUnknown(errors.NotFound):
    pass


class UploadUnknown(errors.NotFound):
    def __init__(self, upload_id: str) -> None:
        super().__init__(f"upload {upload_id[:80]!r} is unknown: never started, finished, cancelled or expired")


class EndpointUnknown(errors.NotFound):
    pass


class UploadOutOfOrder(errors.OutOfRange):
    """Carries where the upload stands, so the 416 response can say it."""

    def __init__(self, message: str, location: str, offset: int) -> None:
        super().__init__(message)
        self.headers = {"Location": location, "Range": upload_range(offset), "Docker-Upload-UUID": location.rsplit("/", 1)[-1]}


class RangeNotSatisfiable(errors.OutOfRange):
    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.headers = {"Content-Range": f"bytes */{size}"}


class ManifestTooLarge(errors.BlobTooLarge):
    pass


def upload_range(offset: int) -> str:
    """The Range header of an upload holding `offset` bytes. Like the reference
    registry it says 0-0 for an empty upload, since the inclusive form has no
    way to express nothing."""
    return f"0-{max(offset - 1, 0)}"


_CODES: dict[type[errors.LayercacheError], str] = {
    # A request value we cannot act on; the specific classes below say more.
    errors.InvalidArgument: "UNSUPPORTED",
    errors.InvalidDigest: "DIGEST_INVALID",
    errors.ContentMismatch: "DIGEST_INVALID",
    errors.InvalidName: "NAME_INVALID",
    TagInvalid: "MANIFEST_INVALID",
    ManifestInvalid: "MANIFEST_INVALID",
    UploadInvalid: "BLOB_UPLOAD_INVALID",
    SizeInvalid: "SIZE_INVALID",
    errors.NotFound: "NAME_UNKNOWN",
    errors.BlobNotFound: "BLOB_UNKNOWN",
    ManifestUnknown: "MANIFEST_UNKNOWN",
    UploadUnknown: "BLOB_UPLOAD_UNKNOWN",
    EndpointUnknown: "UNSUPPORTED",
    errors.OutOfRange: "SIZE_INVALID",
    UploadOutOfOrder: "BLOB_UPLOAD_INVALID",
    errors.FailedPrecondition: "UNSUPPORTED",
    # The instruction cache raises this when a record names absent blobs:
    # here, always a manifest naming blobs nobody pushed.
    errors.MissingBlobs: "MANIFEST_BLOB_UNKNOWN",
    errors.BlobTooLarge: "SIZE_INVALID",
    errors.PermissionDenied: "DENIED",
    errors.Unauthenticated: "UNAUTHORIZED",
    errors.Unsupported: "UNSUPPORTED",
}
# 5xx conditions (data loss, a full store, shutting down) have no code in the
# spec, whose list is binding only for 4xx answers; this is the reference
# registry's name for them.
UNKNOWN = "UNKNOWN"


def oci_code(exc: errors.LayercacheError) -> str:
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return UNKNOWN


def extra_headers(exc: errors.LayercacheError) -> dict[str, str]:
    return dict(getattr(exc, "headers", {}))
