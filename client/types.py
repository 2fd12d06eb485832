"""Plain value types returned by the client (no protobuf in the public API)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MEDIA_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Descriptor:
    digest: str
    size: int
    media_type: str = DEFAULT_MEDIA_TYPE


@dataclass(frozen=True, slots=True)
class BlobInfo:
    descriptor: Descriptor
    created_unix_ms: int
    last_access_unix_ms: int
    chunks: int


@dataclass(frozen=True, slots=True)
class CacheEntry:
    namespace: str
    key: str
    layers: tuple[Descriptor, ...]
    metadata: dict[str, str]
    created_unix_ms: int


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The longest prefix of hits of a chain lookup."""

    hits: list[CacheEntry]
    # "none" when the whole chain hit, else "not_recorded" or "blob_missing"
    miss_reason: str
    missing_digests: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    namespace: str
    records: int
    lookups: int
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """An instruction-cache key and its hits since the daemon started."""

    namespace: str
    key: str
    hits: int


@dataclass(frozen=True, slots=True)
class Stats:
    blobs: int
    chunks: int
    logical_bytes: int
    stored_bytes: int
    dedup_ratio: float
    records: int
    lookups: int
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    uptime_seconds: float
    pack_bytes: int
    evictions: int
    max_bytes: int
    namespaces: list[NamespaceStats]
    top_keys: list[KeyUsage] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    digest: str
    description: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    blobs_checked: int
    chunks_checked: int
    bytes_checked: int
    problems: list[VerifyProblem]
