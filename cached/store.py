"""BlobStore: deduplicated, verified blob storage over LMDB and pack files.

Write path (BlobWriter): bytes are hashed with the blob's digest algorithm,
cut into content-defined chunks, and each chunk is identified by its blake3
hash. Chunks the index already holds are skipped; new ones are compressed
(when that saves at least an eighth) and appended to a pack borrowed for the
upload. Hashing and compression of chunks run on a small thread pool while
the upload keeps receiving. At commit the size and digest are checked, the
pack is fsynced, and only then does one LMDB transaction make the blob
visible (blob record, chunk refcounts, counters). A failure at any point
truncates the pack back, so a rejected or interrupted upload leaves nothing.

Read path: chunks are read positionally from their packs, decompressed and
checked against their blake3 id before a single byte is returned. A chunk
that fails is marked damaged and the blob that needed it is dropped from the
index: it then reads as missing, and the next Write of it stores a fresh copy
of the damaged chunk, which also repairs every other blob sharing it.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import blake3
import lmdb
import zstandard

from cached.chunker import ChunkParams, Chunker, DEFAULT_PARAMS
from cached.config import StoreConfig
from cached.digest import ALGORITHMS, Digest, new_hasher
from cached.errors import (
    BlobNotFound,
    BlobTooLarge,
    ContentMismatch,
    DataLoss,
    InvalidArgument,
    OutOfRange,
    Unavailable,
)
from cached.index import FLAG_DAMAGED, BlobRecord, ChunkRecord, Index
from cached.model import BlobInfo, Descriptor, StoreStats, VerifyProblem, VerifyReport, WriteResult
from cached.packs import FLAG_ZSTD, HEADER, Location, Packs
from cached.traffic import Traffic

log = logging.getLogger(__name__)

# Chunks being hashed/compressed ahead of the pack writer, per upload; bounds
# memory at about this many max-size chunks per concurrent upload.
_IN_FLIGHT = 8
# Chunks read and checked ahead of the sender, per read.
_READ_AHEAD = 4
# After this many chunks in a row that did not compress, an upload only
# tries every _RETRY_EVERY-th chunk (gzip-compressed layers never compress).
_GIVE_UP_AFTER = 4
_RETRY_EVERY = 16
_FLUSH_SECONDS = 5.0


def now_ms() -> int:
    return int(time.time() * 1000)


class DataDirInUse(RuntimeError):
    """Another process has the data directory open."""


class BlobStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._lock_fd = _lock_data_dir(Path(config.data_dir))
        self.index = Index(Path(config.data_dir) / "index", config.index_map_size)
        self.packs = Packs(Path(config.data_dir) / "packs", config.max_pack_bytes)
        self.chunk_params = self._load_chunk_params()
        self.traffic = Traffic()
        with self.index.read() as txn:
            saved = self.index.get_setting(txn, "traffic")
        if saved:
            self.traffic.load(saved)
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="chunks")
        self._codecs = threading.local()
        self._touched: dict[bytes, int] = {}
        self._touch_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="store-flush", daemon=True)
        self._flusher.start()

    # ------------------------------------------------------------------ queries

    def find_missing(self, digests: Iterable[Digest]) -> list[Digest]:
        missing = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self.index.db["blobs"])
            for digest in digests:
                if not digest.is_empty_blob and not cursor.set_key(digest.key):
                    missing.append(digest)
        return missing

    def stat(self, digest: Digest) -> BlobInfo:
        if digest.is_empty_blob:
            return BlobInfo(Descriptor(digest, 0, "application/octet-stream"), 0, 0, 0)
        with self.index.read() as txn:
            raw = txn.get(digest.key, db=self.index.db["blobs"])
            if raw is None:
                raise BlobNotFound(digest)
            atime = txn.get(digest.key, db=self.index.db["atime"])
        size, created, media, count = BlobRecord.decode_head(raw)
        with self._touch_lock:
            last = self._touched.get(digest.key)
        if last is None:
            last = int.from_bytes(atime, "little") if atime else created
        return BlobInfo(Descriptor(digest, size, media), created, last, count)

    def stats(self) -> StoreStats:
        with self.index.read() as txn:
            counts = {n: self.index.counter(txn, n) for n in ("blobs", "chunks", "logical", "stored", "records", "evictions")}
            records = self._records_per_namespace(txn)
        traffic = self.traffic.totals()
        return StoreStats(
            blobs=counts["blobs"],
            chunks=counts["chunks"],
            logical_bytes=counts["logical"],
            stored_bytes=counts["stored"],
            pack_bytes=self.packs.disk_bytes(),
            records=counts["records"],
            lookups=traffic["lookups"],
            hits=traffic["hits"],
            misses=traffic["misses"],
            bytes_in=traffic["bytes_in"],
            bytes_out=traffic["bytes_out"],
            evictions=counts["evictions"],
            max_bytes=0,
            namespaces=self.traffic.namespaces(records),
        )

    def _records_per_namespace(self, txn: lmdb.Transaction) -> dict[str, int]:
        counts: dict[str, int] = collections.Counter()
        meta = txn.cursor(db=self.index.db["meta"])
        if meta.set_range(b"records:"):
            for key, value in meta:
                if not key.startswith(b"records:"):
                    break
                counts[key[len(b"records:") :].decode()] = int.from_bytes(value, "little", signed=True)
        return counts

    # ------------------------------------------------------------------ writes

    def open_write(
        self,
        expected: Digest | None,
        size: int | None,
        media_type: str = "application/octet-stream",
        namespace: str = "",
    ) -> BlobWriter:
        """Starts an upload. `expected` may be None when the digest is only
        known at the end (OCI chunked uploads); commit() then takes it."""
        if size is not None and size < 0:
            raise InvalidArgument(f"size must not be negative, got {size}")
        if expected is not None and expected.is_empty_blob and size not in (None, 0):
            raise ContentMismatch(f"{expected} is the digest of the empty blob, but size {size} was declared")
        if size is not None and size > self.config.max_blob_size:
            raise BlobTooLarge(f"blob size {size} exceeds the maximum of {self.config.max_blob_size} bytes")
        return BlobWriter(self, expected, size, media_type, namespace)

    def put(self, data: bytes, media_type: str = "application/octet-stream", namespace: str = "") -> WriteResult:
        """Stores an in-memory blob (manifests, small test blobs)."""
        digest = Digest.of(data)
        with self.open_write(digest, len(data), media_type, namespace) as writer:
            writer.write(data)
            return writer.commit()

    def _prepare_chunk(self, raw: bytes, try_compress: bool) -> tuple[bytes, int, bytes | None, int, bool]:
        """Runs on the pool: (id, raw length, payload or None if stored, flags, compression failed)."""
        chunk_id = blake3.blake3(raw).digest()
        with self.index.read() as txn:
            known = self.index.get_chunk(txn, chunk_id)
        if known is not None and not known.damaged:
            return chunk_id, len(raw), None, 0, False
        if try_compress and self.config.compression_level:
            packed = self._compressor().compress(raw)
            if len(packed) <= len(raw) - len(raw) // 8:
                return chunk_id, len(raw), packed, FLAG_ZSTD, False
            return chunk_id, len(raw), raw, 0, True
        return chunk_id, len(raw), raw, 0, False

    def _commit(
        self,
        digest: Digest,
        size: int,
        media_type: str,
        chunks: list[tuple[bytes, int]],
        written: dict[bytes, tuple[Location, int]],
        namespace: str,
    ) -> WriteResult:
        key = digest.key
        created = now_ms()
        with self.index.write() as txn:
            existing = txn.get(key, db=self.index.db["blobs"])
            if existing is not None:
                self._add_namespace(txn, key, namespace)
                _, created, media_type, count = BlobRecord.decode_head(existing)
                return WriteResult(BlobInfo(Descriptor(digest, size, media_type), created, created, count), True)
            stored_delta = 0
            live_delta = 0
            for chunk_id, raw_len in dict.fromkeys(chunks):
                record = self.index.get_chunk(txn, chunk_id)
                fresh = written.get(chunk_id)
                if record is not None and record.refcount:
                    stored_delta -= HEADER.size + record.stored_len
                    live_delta -= 1
                if record is not None and not record.damaged:
                    record.refcount += 1
                elif fresh is not None:
                    location, flags = fresh
                    refs = record.refcount if record is not None else 0
                    if record is not None:
                        log.info("repaired damaged chunk %s", chunk_id.hex())
                    record = ChunkRecord(location.pack, location.offset, location.stored_len, raw_len, flags, refs + 1)
                else:
                    # Only compaction removes chunk records; it must not run
                    # while uploads that skipped a chunk are in flight.
                    raise Unavailable(f"chunk {chunk_id.hex()} vanished during the upload; retry")
                stored_delta += HEADER.size + record.stored_len
                live_delta += 1
                self.index.put_chunk(txn, chunk_id, record)
            blob = BlobRecord(size, created, media_type, chunks)
            txn.put(key, blob.encode(), db=self.index.db["blobs"])
            txn.put(key, created.to_bytes(8, "little"), db=self.index.db["atime"])
            self._add_namespace(txn, key, namespace)
            self.index.add(txn, "blobs", 1)
            self.index.add(txn, "logical", size)
            self.index.add(txn, "chunks", live_delta)
            self.index.add(txn, "stored", stored_delta)
        return WriteResult(BlobInfo(Descriptor(digest, size, media_type), created, created, len(chunks)), False)

    def _add_namespace(self, txn: lmdb.Transaction, key: bytes, namespace: str) -> None:
        if namespace:
            txn.put(key, namespace.encode(), db=self.index.db["blob_ns"], dupdata=False)

    # ------------------------------------------------------------------ reads

    def read(self, digest: Digest, offset: int = 0, limit: int = 0) -> Iterator[bytes]:
        """Checks the request eagerly (NotFound, OutOfRange), then returns an
        iterator of verified byte strings covering [offset, offset+limit)."""
        if offset < 0 or limit < 0:
            raise InvalidArgument("offset and limit must not be negative")
        size = 0
        record = None
        if not digest.is_empty_blob:
            with self.index.read() as txn:
                record = self.index.get_blob(txn, digest.key)
            if record is None:
                raise BlobNotFound(digest)
            size = record.size
        if offset > size:
            raise OutOfRange(f"offset {offset} is beyond the end of {digest} ({size} bytes)")
        if record is None:
            return iter(())
        end = size if limit == 0 else min(size, offset + limit)
        self.touch([digest])
        return self._read_range(digest, record, offset, end)

    def _read_range(self, digest: Digest, record: BlobRecord, start: int, end: int) -> Iterator[bytes]:
        wanted = []  # (chunk id, raw length, slice start, slice end)
        position = 0
        for chunk_id, raw_len in record.chunks:
            chunk_end = position + raw_len
            if chunk_end > start and position < end:
                wanted.append((chunk_id, raw_len, max(start - position, 0), min(end, chunk_end) - position))
            position = chunk_end
            if position >= end:
                break
        pending: collections.deque[tuple[Future[bytes], int, int]] = collections.deque()
        sent = 0
        try:
            for chunk_id, raw_len, lo, hi in wanted:
                pending.append((self._pool.submit(self._load_chunk, digest, chunk_id, raw_len), lo, hi))
                if len(pending) > _READ_AHEAD:
                    sent += yield from self._emit(pending.popleft())
            while pending:
                sent += yield from self._emit(pending.popleft())
        finally:
            for future, _, _ in pending:
                future.cancel()
            self.traffic.add_bytes(outgoing=sent)

    @staticmethod
    def _emit(item: tuple[Future[bytes], int, int]) -> Iterator[bytes]:
        future, lo, hi = item
        data = future.result()
        piece = data if (lo, hi) == (0, len(data)) else data[lo:hi]
        yield piece
        return len(piece)

    def _load_chunk(self, digest: Digest, chunk_id: bytes, raw_len: int) -> bytes:
        try:
            with self.index.read() as txn:
                record = self.index.get_chunk(txn, chunk_id)
            if record is None or record.damaged:
                raise DataLoss(f"chunk {chunk_id.hex()} of {digest} is {'damaged' if record else 'missing'}")
            location = Location(record.pack, record.offset, record.stored_len)
            flags, payload = self.packs.read(location, chunk_id, raw_len)
            data = payload
            if flags & FLAG_ZSTD:
                try:
                    data = self._decompressor().decompress(payload, max_output_size=raw_len)
                except zstandard.ZstdError as exc:
                    raise DataLoss(f"chunk {chunk_id.hex()} of {digest} does not decompress: {exc}") from None
            if len(data) != raw_len or blake3.blake3(data).digest() != chunk_id:
                raise DataLoss(f"chunk {chunk_id.hex()} of {digest} failed its blake3 check")
            return data
        except DataLoss:
            self.quarantine(digest, chunk_id)
            raise

    def quarantine(self, digest: Digest, chunk_id: bytes | None) -> None:
        """Marks a chunk damaged and drops the blob, so it reads as missing
        until a fresh Write stores good bytes again."""
        log.error("damaged data in %s (chunk %s); dropping the blob", digest, chunk_id.hex() if chunk_id else "?")
        with self.index.write() as txn:
            if chunk_id is not None:
                record = self.index.get_chunk(txn, chunk_id)
                if record is not None:
                    record.flags |= FLAG_DAMAGED
                    self.index.put_chunk(txn, chunk_id, record)
            self._drop_blob(txn, digest.key)

    def _drop_blob(self, txn: lmdb.Transaction, key: bytes) -> BlobRecord | None:
        blob = self.index.get_blob(txn, key)
        if blob is None:
            return None
        stored_delta = 0
        live_delta = 0
        for chunk_id, _ in dict.fromkeys(blob.chunks):
            record = self.index.get_chunk(txn, chunk_id)
            if record is None or record.refcount == 0:
                continue
            record.refcount -= 1
            if record.refcount == 0:
                stored_delta -= HEADER.size + record.stored_len
                live_delta -= 1
            self.index.put_chunk(txn, chunk_id, record)
        txn.delete(key, db=self.index.db["blobs"])
        txn.delete(key, db=self.index.db["atime"])
        txn.delete(key, db=self.index.db["blob_ns"])
        self.index.add(txn, "blobs", -1)
        self.index.add(txn, "logical", -blob.size)
        self.index.add(txn, "chunks", live_delta)
        self.index.add(txn, "stored", stored_delta)
        return blob

    def touch(self, digests: Iterable[Digest]) -> None:
        stamp = now_ms()
        with self._touch_lock:
            for digest in digests:
                if not digest.is_empty_blob:
                    self._touched[digest.key] = stamp

    # ------------------------------------------------------------------ verify

    def verify(self, sample_fraction: float = 0.0) -> VerifyReport:
        if not 0.0 <= sample_fraction <= 1.0:
            raise InvalidArgument("sample_fraction must be within [0, 1]")
        with self.index.read() as txn:
            keys = [bytes(k) for k in txn.cursor(db=self.index.db["blobs"]).iternext(values=False)]
        if sample_fraction:
            keys = [k for k in keys if random.random() < sample_fraction]
        problems: list[VerifyProblem] = []
        chunks = nbytes = 0
        for key in keys:
            digest = Digest.parse(key.decode())
            try:
                hasher = new_hasher(digest.algorithm)
                pieces = self.read(digest)
                for piece in pieces:
                    hasher.update(piece)
                    nbytes += len(piece)
                chunks += self.stat(digest).chunks
                if hasher.hexdigest() != digest.hex:
                    self.quarantine(digest, None)
                    raise DataLoss(f"{digest}: content hashes to {digest.algorithm}:{hasher.hexdigest()}")
            except BlobNotFound:
                continue  # removed while we were verifying
            except DataLoss as exc:
                problems.append(VerifyProblem(str(digest), str(exc)))
        return VerifyReport(len(keys), chunks, nbytes, problems)

    # ------------------------------------------------------------------ housekeeping

    def _load_chunk_params(self) -> ChunkParams:
        with self.index.write() as txn:
            saved = self.index.get_setting(txn, "chunk_params")
            if saved is None:
                params = DEFAULT_PARAMS
                self.index.put_setting(txn, "chunk_params", f"{params.min_size},{params.avg_size},{params.max_size}".encode())
                return params
        low, avg, high = (int(v) for v in saved.decode().split(","))
        return ChunkParams(low, avg, high)

    def _compressor(self) -> zstandard.ZstdCompressor:
        codec = getattr(self._codecs, "compressor", None)
        if codec is None:
            codec = self._codecs.compressor = zstandard.ZstdCompressor(level=self.config.compression_level)
        return codec

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        codec = getattr(self._codecs, "decompressor", None)
        if codec is None:
            codec = self._codecs.decompressor = zstandard.ZstdDecompressor()
        return codec

    def flush(self) -> None:
        """Persists access times and traffic counters."""
        with self._touch_lock:
            touched, self._touched = self._touched, {}
        with self.index.write() as txn:
            atime = self.index.db["atime"]
            blobs = self.index.db["blobs"]
            cursor = txn.cursor(db=blobs)
            for key, stamp in touched.items():
                if cursor.set_key(key):
                    txn.put(key, stamp.to_bytes(8, "little"), db=atime)
            self.index.put_setting(txn, "traffic", self.traffic.dump())

    def _flush_loop(self) -> None:
        while not self._stop.wait(_FLUSH_SECONDS):
            try:
                self.flush()
            except Exception:  # keep flushing later; the next attempt may succeed
                log.exception("periodic flush failed")

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        self._pool.shutdown(wait=True)
        self.flush()
        self.packs.close()
        self.index.close()
        os.close(self._lock_fd)


def _lock_data_dir(data_dir: Path) -> int:
    # Pack writers assume they are the only appenders: two daemons on one
    # data directory would interleave records, so the second one must not start.
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(f"data directory {data_dir} is in use by another layercache process") from None
    return fd


class BlobWriter:
    """One upload. Use as a context manager: leaving it without commit()
    aborts, truncating the pack back to where the upload started."""

    def __init__(self, store: BlobStore, expected: Digest | None, size: int | None, media_type: str, namespace: str) -> None:
        self._store = store
        self._expected = expected
        self._size = size
        self.media_type = media_type
        self._namespace = namespace
        algorithms = (expected.algorithm,) if expected is not None else ALGORITHMS
        self._hashers = {name: new_hasher(name) for name in algorithms}
        self._chunker = Chunker(store.chunk_params)
        self._pending: collections.deque[Future[tuple[bytes, int, bytes | None, int, bool]]] = collections.deque()
        self._chunks: list[tuple[bytes, int]] = []
        self._written: dict[bytes, tuple[Location, int]] = {}
        self._pack = None
        self._pack_start = 0
        self.received = 0
        self._failed_compressions = 0
        self._finished = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | memoryview) -> None:
        if self._finished:
            raise InvalidArgument("write after the upload finished")
        try:
            self.received += len(data)
            if self._size is not None and self.received > self._size:
                raise ContentMismatch(f"received more than the declared size of {self._size} bytes")
            if self.received > self._store.config.max_blob_size:
                raise BlobTooLarge(f"blob exceeds the maximum of {self._store.config.max_blob_size} bytes")
            self._store.traffic.add_bytes(incoming=len(data))
            for hasher in self._hashers.values():
                hasher.update(data)
            for chunk in self._chunker.feed(data):
                self._submit(chunk)
        except BaseException:
            self.abort()
            raise

    def commit(self, digest: Digest | None = None) -> WriteResult:
        """Verifies size and digest and makes the blob visible. `digest`
        must match the one given at open, or supply it if none was."""
        try:
            for chunk in self._chunker.finish():
                self._submit(chunk)
            while self._pending:
                self._store_chunk(self._pending.popleft().result())
            final = self._final_digest(digest)
            if self._size is not None and self.received != self._size:
                raise ContentMismatch(f"received {self.received} bytes, but the declared size is {self._size}")
            actual = self._hashers[final.algorithm].hexdigest()
            if actual != final.hex:
                raise ContentMismatch(f"content hashes to {final.algorithm}:{actual}, not the declared {final}")
            if final.is_empty_blob:
                self.abort()
                return WriteResult(BlobInfo(Descriptor(final, 0, self.media_type), 0, 0, 0), True)
            if self._pack is not None:
                self._pack.sync()
            result = self._store._commit(final, self.received, self.media_type, self._chunks, self._written, self._namespace)
        except BaseException:
            self.abort()
            raise
        if result.already_existed:
            self.abort()  # nothing references what this upload appended
        else:
            self._finished = True
            self._release()
        return result

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled():
                future.exception()
        self._pending.clear()
        if self._pack is not None:
            try:
                self._pack.truncate(self._pack_start)
            except OSError:
                log.exception("could not truncate pack %d after an aborted upload", self._pack.pack_id)
        self._release()

    def _final_digest(self, digest: Digest | None) -> Digest:
        if digest is None and self._expected is None:
            raise InvalidArgument("the upload was finished without a digest")
        if digest is not None and self._expected is not None and digest != self._expected:
            raise ContentMismatch(f"digest {digest} differs from {self._expected} declared at the start")
        return digest or self._expected  # type: ignore[return-value]

    def _submit(self, chunk: bytes) -> None:
        attempts = len(self._chunks) + len(self._pending)
        try_compress = self._failed_compressions < _GIVE_UP_AFTER or attempts % _RETRY_EVERY == 0
        self._pending.append(self._store._pool.submit(self._store._prepare_chunk, chunk, try_compress))
        while len(self._pending) > _IN_FLIGHT:
            self._store_chunk(self._pending.popleft().result())

    def _store_chunk(self, prepared: tuple[bytes, int, bytes | None, int, bool]) -> None:
        chunk_id, raw_len, payload, flags, incompressible = prepared
        self._chunks.append((chunk_id, raw_len))
        self._failed_compressions = self._failed_compressions + 1 if incompressible else 0 if flags else self._failed_compressions
        if payload is None or chunk_id in self._written:
            return
        if self._pack is None:
            self._pack = self._store.packs.acquire()
            self._pack_start = self._pack.size
        self._written[chunk_id] = (self._pack.append(chunk_id, raw_len, payload, flags), flags)

    def _release(self) -> None:
        if self._pack is not None:
            self._store.packs.release(self._pack)
            self._pack = None
