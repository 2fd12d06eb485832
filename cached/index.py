"""The LMDB index: named databases, fixed struct layouts, short transactions.

Databases (keys are raw bytes; values are struct layouts or, for free-form
records, JSON):
    blobs      digest string  -> BlobRecord (size, created, media type, chunk list)
    chunks     blake3 id (32) -> ChunkRecord (pack location, lengths, flags, refcount)
    atime      digest string  -> last access, ms (u64); kept apart from blobs so
                                 touching a blob never rewrites its chunk list
    lru        access ms (u64 big-endian) + digest string -> empty: the blobs in
                                 least-recently-used order, kept in step with atime
    blob_ns    digest string  -> namespace (dupsort): namespaces that hold a blob
    records    namespace \\0 key -> instruction-cache entry (JSON)
    blob_refs  digest string  -> namespace \\0 key (dupsort): records naming a blob
    meta       name           -> counter (i64) or setting; "pack_live:<id>"
                                 counts the bytes of live chunk records in a pack

Opening takes constant time: nothing is scanned at start-up, the counters are
maintained inside the same transactions that change what they count.
LMDB allows one writer at a time; callers keep write transactions to a single
blob's worth of work and never do I/O on pack files inside one.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lmdb

from cached.errors import StoreFull

_BLOB_HEAD = struct.Struct("<QqIH")
_CHUNK_REF = struct.Struct("<32sI")
_CHUNK = struct.Struct("<IQIIBxxxI")
_I64 = struct.Struct("<q")

FLAG_DAMAGED = 0x80  # index-only: the stored copy failed its check
_STAMP = struct.Struct(">Q")
DB_NAMES = ("blobs", "chunks", "atime", "lru", "blob_ns", "records", "blob_refs", "meta")
_DUPSORT = {"blob_ns", "blob_refs"}


def lru_key(stamp_ms: int, key: bytes) -> bytes:
    # Big-endian so that LMDB's bytewise order is oldest first.
    return _STAMP.pack(stamp_ms) + key


def split_lru_key(raw: bytes) -> tuple[int, bytes]:
    return _STAMP.unpack_from(raw)[0], bytes(raw[_STAMP.size :])


def pack_live(pack_id: int) -> str:
    """Name of the counter of live chunk bytes in a pack."""
    return f"pack_live:{pack_id}"


@dataclass(slots=True)
class BlobRecord:
    size: int
    created_ms: int
    media_type: str
    chunks: list[tuple[bytes, int]]  # (chunk id, raw length) in blob order

    def encode(self) -> bytes:
        media = self.media_type.encode()
        head = _BLOB_HEAD.pack(self.size, self.created_ms, len(self.chunks), len(media))
        return b"".join([head, media, *(_CHUNK_REF.pack(cid, n) for cid, n in self.chunks)])

    @classmethod
    def decode(cls, raw: bytes) -> BlobRecord:
        size, created, count, media_len = _BLOB_HEAD.unpack_from(raw)
        start = _BLOB_HEAD.size + media_len
        media = raw[_BLOB_HEAD.size : start].decode()
        chunks = list(_CHUNK_REF.iter_unpack(raw[start : start + count * _CHUNK_REF.size]))
        return cls(size, created, media, chunks)

    @staticmethod
    def decode_head(raw: bytes) -> tuple[int, int, str, int]:
        """(size, created_ms, media_type, chunk count) without the chunk list."""
        size, created, count, media_len = _BLOB_HEAD.unpack_from(raw)
        media = raw[_BLOB_HEAD.size : _BLOB_HEAD.size + media_len].decode()
        return size, created, media, count


@dataclass(slots=True)
class ChunkRecord:
    pack: int
    offset: int
    stored_len: int
    raw_len: int
    flags: int
    refcount: int

    def encode(self) -> bytes:
        return _CHUNK.pack(self.pack, self.offset, self.stored_len, self.raw_len, self.flags, self.refcount)

    @classmethod
    def decode(cls, raw: bytes) -> ChunkRecord:
        return cls(*_CHUNK.unpack(raw))

    @property
    def damaged(self) -> bool:
        return bool(self.flags & FLAG_DAMAGED)


class Index:
    def __init__(self, path: Path, map_size: int, max_readers: int = 1024) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(DB_NAMES) + 2,
            max_readers=max_readers,
            subdir=True,
            lock=True,
            readahead=False,
        )
        self.db = {
            name: self.env.open_db(name.encode(), dupsort=name in _DUPSORT) for name in DB_NAMES
        }

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        with self.env.begin() as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except lmdb.MapFullError:
            raise StoreFull("the index is full (raise index_map_size in the config)") from None
        except lmdb.Error as exc:
            # LMDB reports a full disk as a plain error carrying strerror(ENOSPC).
            if os.strerror(errno.ENOSPC) in str(exc):
                raise StoreFull("the disk holding the index is full") from None
            raise

    # -- records of each database

    def get_blob(self, txn: lmdb.Transaction, key: bytes) -> BlobRecord | None:
        raw = txn.get(key, db=self.db["blobs"])
        return None if raw is None else BlobRecord.decode(raw)

    def get_chunk(self, txn: lmdb.Transaction, chunk_id: bytes) -> ChunkRecord | None:
        raw = txn.get(chunk_id, db=self.db["chunks"])
        return None if raw is None else ChunkRecord.decode(raw)

    def put_chunk(self, txn: lmdb.Transaction, chunk_id: bytes, record: ChunkRecord) -> None:
        txn.put(chunk_id, record.encode(), db=self.db["chunks"])

    # -- recency

    def set_atime(self, txn: lmdb.Transaction, key: bytes, stamp_ms: int) -> None:
        """Records a blob's last access, moving it in the LRU order."""
        old = txn.get(key, db=self.db["atime"])
        if old is not None:
            txn.delete(lru_key(int.from_bytes(old, "little"), key), db=self.db["lru"])
        txn.put(key, stamp_ms.to_bytes(8, "little"), db=self.db["atime"])
        txn.put(lru_key(stamp_ms, key), b"", db=self.db["lru"])

    def clear_atime(self, txn: lmdb.Transaction, key: bytes) -> None:
        old = txn.get(key, db=self.db["atime"])
        if old is not None:
            txn.delete(lru_key(int.from_bytes(old, "little"), key), db=self.db["lru"])
            txn.delete(key, db=self.db["atime"])

    # -- counters

    def add(self, txn: lmdb.Transaction, name: str, delta: int) -> None:
        if delta:
            key = name.encode()
            raw = txn.get(key, db=self.db["meta"])
            value = _I64.unpack(raw)[0] if raw else 0
            txn.put(key, _I64.pack(value + delta), db=self.db["meta"])

    def drop_counter(self, txn: lmdb.Transaction, name: str) -> None:
        txn.delete(name.encode(), db=self.db["meta"])

    def counter(self, txn: lmdb.Transaction, name: str) -> int:
        raw = txn.get(name.encode(), db=self.db["meta"])
        return _I64.unpack(raw)[0] if raw else 0

    def get_setting(self, txn: lmdb.Transaction, name: str) -> bytes | None:
        return txn.get(b"setting:" + name.encode(), db=self.db["meta"])

    def put_setting(self, txn: lmdb.Transaction, name: str, value: bytes) -> None:
        txn.put(b"setting:" + name.encode(), value, db=self.db["meta"])

    def close(self) -> None:
        self.env.close()
