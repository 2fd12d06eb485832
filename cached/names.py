"""Validation of namespaces, instruction-cache keys and record metadata.

Namespaces follow the OCI distribution grammar for repository names, because
the OCI endpoint maps a repository onto a namespace one to one. Keys are
opaque to the daemon (a builder's cache key, or an OCI tag) but are bounded
and printable so they are safe to log and to use in index keys.
"""

from __future__ import annotations

import re

from cached.errors import InvalidArgument, InvalidName

MAX_NAMESPACE = 255
# namespace + NUL + key is an LMDB key, and LMDB keys stop at 511 bytes.
MAX_KEY = 255
MAX_MEDIA_TYPE = 255
MAX_METADATA_BYTES = 256 * 1024
MAX_LAYERS = 1000
MAX_CHAIN = 10_000

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAMESPACE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_KEY = re.compile(r"[\x21-\x7e]+")
# RFC 6838 type/subtype with optional parameters, printable ASCII only.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*(?:\s*;[\x20-\x7e]*)?")


def check_namespace(namespace: str) -> str:
    if not namespace:
        raise InvalidName("namespace is empty")
    if len(namespace) > MAX_NAMESPACE:
        raise InvalidName(f"namespace is longer than {MAX_NAMESPACE} characters")
    if not _NAMESPACE.fullmatch(namespace):
        raise InvalidName(
            f"invalid namespace {namespace[:80]!r}: lowercase alphanumeric components "
            "separated by '.', '_', '__' or '-', joined by '/'"
        )
    return namespace


def check_key(key: str) -> str:
    if not key:
        raise InvalidName("key is empty")
    if len(key) > MAX_KEY:
        raise InvalidName(f"key is longer than {MAX_KEY} characters")
    if not _KEY.fullmatch(key):
        raise InvalidName(f"invalid key {key[:80]!r}: printable ASCII without spaces only")
    return key


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    total = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {total} bytes; the limit is {MAX_METADATA_BYTES}")
    return dict(metadata)


def check_media_type(media_type: str) -> str:
    if len(media_type) > MAX_MEDIA_TYPE:
        raise InvalidArgument(f"media type is longer than {MAX_MEDIA_TYPE} characters")
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument(f"invalid media type {media_type[:80]!r}: expected TYPE/SUBTYPE")
    return media_type
