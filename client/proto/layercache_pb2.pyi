from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MissReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISS_REASON_UNSPECIFIED: _ClassVar[MissReason]
    MISS_REASON_NONE: _ClassVar[MissReason]
    MISS_REASON_NOT_RECORDED: _ClassVar[MissReason]
    MISS_REASON_BLOB_MISSING: _ClassVar[MissReason]
    MISS_REASON_TRUNCATED: _ClassVar[MissReason]
MISS_REASON_UNSPECIFIED: MissReason
MISS_REASON_NONE: MissReason
MISS_REASON_NOT_RECORDED: MissReason
MISS_REASON_BLOB_MISSING: MissReason
MISS_REASON_TRUNCATED: MissReason

class Descriptor(_message.Message):
    __slots__ = ("digest", "size", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class FindMissingRequest(_message.Message):
    __slots__ = ("digests", "namespace")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    namespace: str
    def __init__(self, digests: _Optional[_Iterable[str]] = ..., namespace: _Optional[str] = ...) -> None: ...

class FindMissingResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing: _Optional[_Iterable[str]] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("digest", "namespace")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    namespace: str
    def __init__(self, digest: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("descriptor", "created_unix_ms", "last_access_unix_ms", "chunks")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACCESS_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    descriptor: Descriptor
    created_unix_ms: int
    last_access_unix_ms: int
    chunks: int
    def __init__(self, descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., created_unix_ms: _Optional[int] = ..., last_access_unix_ms: _Optional[int] = ..., chunks: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("digest", "offset", "limit", "namespace")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    limit: int
    namespace: str
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class WriteHeader(_message.Message):
    __slots__ = ("digest", "size", "media_type", "namespace")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    media_type: str
    namespace: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., media_type: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class WriteRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: WriteHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[WriteHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("descriptor", "already_existed")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    ALREADY_EXISTED_FIELD_NUMBER: _ClassVar[int]
    descriptor: Descriptor
    already_existed: bool
    def __init__(self, descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., already_existed: _Optional[bool] = ...) -> None: ...

class CacheEntry(_message.Message):
    __slots__ = ("namespace", "key", "layers", "metadata", "created_unix_ms")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    layers: _containers.RepeatedCompositeFieldContainer[Descriptor]
    metadata: _containers.ScalarMap[str, str]
    created_unix_ms: int
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[Descriptor, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("namespace", "key", "layers", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    layers: _containers.RepeatedCompositeFieldContainer[Descriptor]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[Descriptor, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: CacheEntry
    def __init__(self, entry: _Optional[_Union[CacheEntry, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("hits", "miss_reason", "missing_digests")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISS_REASON_FIELD_NUMBER: _ClassVar[int]
    MISSING_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[CacheEntry]
    miss_reason: MissReason
    missing_digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, hits: _Optional[_Iterable[_Union[CacheEntry, _Mapping]]] = ..., miss_reason: _Optional[_Union[MissReason, str]] = ..., missing_digests: _Optional[_Iterable[str]] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("namespace", "metadata_equals", "limit")
    class MetadataEqualsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    METADATA_EQUALS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    metadata_equals: _containers.ScalarMap[str, str]
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., metadata_equals: _Optional[_Mapping[str, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[CacheEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[CacheEntry, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("top_keys",)
    TOP_KEYS_FIELD_NUMBER: _ClassVar[int]
    top_keys: int
    def __init__(self, top_keys: _Optional[int] = ...) -> None: ...

class KeyUsage(_message.Message):
    __slots__ = ("namespace", "key", "hits")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: str
    hits: int
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[str] = ..., hits: _Optional[int] = ...) -> None: ...

class NamespaceStats(_message.Message):
    __slots__ = ("namespace", "records", "lookups", "hits", "misses")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    records: int
    lookups: int
    hits: int
    misses: int
    def __init__(self, namespace: _Optional[str] = ..., records: _Optional[int] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("blobs", "chunks", "logical_bytes", "stored_bytes", "dedup_ratio", "records", "lookups", "hits", "misses", "bytes_in", "bytes_out", "uptime_seconds", "pack_bytes", "namespaces", "evictions", "max_bytes", "top_keys")
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PACK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOP_KEYS_FIELD_NUMBER: _ClassVar[int]
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
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceStats]
    evictions: int
    max_bytes: int
    top_keys: _containers.RepeatedCompositeFieldContainer[KeyUsage]
    def __init__(self, blobs: _Optional[int] = ..., chunks: _Optional[int] = ..., logical_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., dedup_ratio: _Optional[float] = ..., records: _Optional[int] = ..., lookups: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., pack_bytes: _Optional[int] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceStats, _Mapping]]] = ..., evictions: _Optional[int] = ..., max_bytes: _Optional[int] = ..., top_keys: _Optional[_Iterable[_Union[KeyUsage, _Mapping]]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("sample_fraction",)
    SAMPLE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    sample_fraction: float
    def __init__(self, sample_fraction: _Optional[float] = ...) -> None: ...

class VerifyProblem(_message.Message):
    __slots__ = ("digest", "description")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    description: str
    def __init__(self, digest: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("blobs_checked", "chunks_checked", "bytes_checked", "problems")
    BLOBS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    blobs_checked: int
    chunks_checked: int
    bytes_checked: int
    problems: _containers.RepeatedCompositeFieldContainer[VerifyProblem]
    def __init__(self, blobs_checked: _Optional[int] = ..., chunks_checked: _Optional[int] = ..., bytes_checked: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[VerifyProblem, _Mapping]]] = ...) -> None: ...

class CapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CapabilitiesResponse(_message.Message):
    __slots__ = ("digest_algorithms", "max_blob_size", "max_message_bytes", "chunk_min_size", "chunk_avg_size", "chunk_max_size")
    DIGEST_ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_AVG_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    digest_algorithms: _containers.RepeatedScalarFieldContainer[str]
    max_blob_size: int
    max_message_bytes: int
    chunk_min_size: int
    chunk_avg_size: int
    chunk_max_size: int
    def __init__(self, digest_algorithms: _Optional[_Iterable[str]] = ..., max_blob_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., chunk_min_size: _Optional[int] = ..., chunk_avg_size: _Optional[int] = ..., chunk_max_size: _Optional[int] = ...) -> None: ...
