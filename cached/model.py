"""Plain value types shared by the store, the instruction cache and the front ends."""

from __future__ import annotations

from dataclasses import dataclass, field

from cached.digest import Digest


@dataclass(frozen=True, slots=True)
class Descriptor:
    digest: Digest
    size: int
    media_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class BlobInfo:
    descriptor: Descriptor
    created_ms: int
    last_access_ms: int
    chunks: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    info: BlobInfo
    already_existed: bool


@dataclass(frozen=True, slots=True)
class CacheEntry:
    namespace: str
    key: str
    layers: tuple[Descriptor, ...]
    metadata: dict[str, str]
    created_ms: int


@dataclass(frozen=True, slots=True)
class LookupResult:
    hits: list[CacheEntry]
    # "none" (whole chain hit), "not_recorded" or "blob_missing"
    miss_reason: str
    missing: list[Digest] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NamespaceTraffic:
    namespace: str
    records: int = 0
    lookups: int = 0
    hits: int = 0
    misses: int = 0


@dataclass(frozen=True, slots=True)
class KeyUsage:
    namespace: str
    key: str
    hits: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    blobs: int
    chunks: int
    logical_bytes: int
    stored_bytes: int
    pack_bytes: int
    records: int
    lookups: int
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    evictions: int
    max_bytes: int
    namespaces: list[NamespaceTraffic]

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0


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
