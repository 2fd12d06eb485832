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

Size bound: with `max_bytes` set, a commit that would take the live stored
bytes over it first asks the reclaimer (cached/eviction.py) to evict
least-recently-used blobs, and fails with StoreFull when nothing more can go.
The LRU order is an index database kept in step with access times. Uploads and
reads pin the chunks they rely on (cached/pins.py), so compaction
(cached/compaction.py) never deletes a record under them; a full disk while
writing gives StoreFull and rolls the upload back.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    StoreFull,
    Unavailable,
)
from cached.index import FLAG_DAMAGED, BlobRecord, ChunkRecord, Index, pack_live, split_lru_key
from cached.names import check_media_type, check_namespace
from cached.model import BlobInfo, Descriptor, StoreStats, VerifyProblem, VerifyReport, WriteResult
from cached.packs import FLAG_ZSTD, HEADER, Location, PackGone, Packs
from cached.pins import Pins
from cached.traffic import Traffic

log = logging.getLogger(__name__)

# A predicate over the namespaces holding a blob: may the caller see it?
# Built by cached/auth.py; None shows everything.
Visible = Callable[[Sequence[str]], bool]

# Chunks being hashed/compressed ahead of the pack writer, per upload; bounds
# memory at about this many max-size chunks per concurrent upload.
_IN_FLIGHT = 8
# A read hands out verified data in pieces of about this size (the size at
# which grpcio moves messages fastest), and keeps a few pieces in preparation.
READ_GROUP_BYTES = 1 << 20
_READ_AHEAD = 3
# After this many chunks in a row that did not compress, an upload only
# tries every _RETRY_EVERY-th chunk (gzip-compressed layers never compress).
_GIVE_UP_AFTER = 4
_RETRY_EVERY = 16
_FLUSH_SECONDS = 5.0
# With a size bound, packs are closed at this fraction of it, so that
# compaction (which only takes closed packs) can reclaim space in small steps.
_PACKS_PER_BOUND = 16
# A commit over the bound asks for room this many times before StoreFull
# (concurrent commits may take the room one eviction made).
_ROOM_ATTEMPTS = 4
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def now_ms() -> int:
    return int(time.time() * 1000)


class DataDirError(RuntimeError):
    """The data directory cannot be served; the daemon must not start."""


class DataDirInUse(DataDirError):
    """Another process has the data directory open."""


class DataDirDamaged(DataDirError):
    """The index cannot be opened, or is missing while packs hold data."""


class NeedRoom(StoreFull):
    """A commit of `incoming` more stored bytes would exceed max_bytes."""

    def __init__(self, incoming: int, limit: int) -> None:
        super().__init__(f"the cache is full: {incoming} more stored bytes do not fit in the bound of {limit}")
        self.incoming = incoming


class BlobStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._lock_fd = _lock_data_dir(Path(config.data_dir))
        pack_bytes = config.max_pack_bytes
        if config.max_bytes:
            pack_bytes = max(1 << 20, min(pack_bytes, config.max_bytes // _PACKS_PER_BOUND))
        self.packs = Packs(Path(config.data_dir) / "packs", pack_bytes)
        try:
            self.index = Index(Path(config.data_dir) / "index", config.index_map_size)
            self.chunk_params = self._load_chunk_params()
        except (lmdb.Error, DataDirDamaged) as exc:
            os.close(self._lock_fd)
            if isinstance(exc, DataDirDamaged):
                raise
            raise DataDirDamaged(f"the index in {Path(config.data_dir) / 'index'} cannot be opened: {exc}") from None
        self.pins = Pins()
        self._reclaim: Callable[[int], None] | None = None
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

    def find_missing(self, digests: Iterable[Digest], visible: Visible | None = None) -> list[Digest]:
        """The digests not held, or held only where `visible` says the caller
        may not look (see cached/auth.py): those are reported missing too."""
        missing = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self.index.db["blobs"])
            holders = txn.cursor(db=self.index.db["blob_ns"])
            for digest in dict.fromkeys(digests):
                if digest.is_empty_blob:
                    continue
                if not cursor.set_key(digest.key) or not _shown(holders, digest.key, visible):
                    missing.append(digest)
        return missing

    def stat(self, digest: Digest, visible: Visible | None = None) -> BlobInfo:
        if digest.is_empty_blob:
            return BlobInfo(Descriptor(digest, 0, "application/octet-stream"), 0, 0, 0)
        with self.index.read() as txn:
            raw = txn.get(digest.key, db=self.index.db["blobs"])
            if raw is None or not _shown(txn.cursor(db=self.index.db["blob_ns"]), digest.key, visible):
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
            max_bytes=self.config.max_bytes,
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
        check_media_type(media_type)
        if namespace:
            check_namespace(namespace)
        return BlobWriter(self, expected, size, media_type, namespace)

    def put(self, data: bytes, media_type: str = "application/octet-stream", namespace: str = "") -> WriteResult:
        """Stores an in-memory blob (manifests, small test blobs)."""
        digest = Digest.of(data)
        with self.open_write(digest, len(data), media_type, namespace) as writer:
            writer.write(data)
            return writer.commit()

    def _prepare_chunk(self, raw: bytes, try_compress: bool) -> tuple[bytes, int, bytes | None, int, bool]:
        """Runs on the pool: (id, raw length, payload or None if stored, flags, compression failed).
        Pins the chunk; the upload unpins it when it ends."""
        chunk_id = blake3.blake3(raw).digest()
        self.pins.pin([chunk_id])
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
            existing = self.index.get_blob(txn, key)
            if existing is not None and any(self._is_damaged(txn, c) for c, _ in dict.fromkeys(existing.chunks)):
                self._drop_blob(txn, key)  # this upload brings good copies of its damaged chunks
            elif existing is not None:
                self._add_namespace(txn, key, namespace)
                info = BlobInfo(Descriptor(digest, size, existing.media_type), existing.created_ms, existing.created_ms, len(existing.chunks))
                return WriteResult(info, True)
            live = _LiveBytes()
            for chunk_id, raw_len in dict.fromkeys(chunks):
                record = self.index.get_chunk(txn, chunk_id)
                fresh = written.get(chunk_id)
                if record is not None and record.refcount:
                    live.remove(record)
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
                live.add(record)
                self.index.put_chunk(txn, chunk_id, record)
            limit = self.config.max_bytes
            if limit and live.stored > 0 and self.index.counter(txn, "stored") + live.stored > limit:
                raise NeedRoom(live.stored, limit)  # aborts this transaction
            blob = BlobRecord(size, created, media_type, chunks)
            txn.put(key, blob.encode(), db=self.index.db["blobs"])
            self.index.set_atime(txn, key, created)
            self._add_namespace(txn, key, namespace)
            self.index.add(txn, "blobs", 1)
            self.index.add(txn, "logical", size)
            live.apply(self.index, txn)
        return WriteResult(BlobInfo(Descriptor(digest, size, media_type), created, created, len(chunks)), False)

    def _make_room(self, shortage: NeedRoom) -> None:
        if self._reclaim is None:
            raise shortage
        self._reclaim(shortage.incoming)

    def set_reclaimer(self, reclaim: Callable[[int], None]) -> None:
        """`reclaim(n)` is called when a commit of n more stored bytes would
        exceed max_bytes; it frees space or raises StoreFull."""
        self._reclaim = reclaim

    def stored_bytes(self) -> int:
        with self.index.read() as txn:
            return self.index.counter(txn, "stored")

    def evict_oldest(
        self, target: int, batch: int, drop_references: Callable[[lmdb.Transaction, Digest], object]
    ) -> tuple[int, int, bool]:
        """Evicts least-recently-used blobs while stored bytes exceed `target`,
        at most `batch` steps in one short transaction. `drop_references`
        removes what names a blob (instruction-cache entries) in the same
        transaction. Returns (blobs evicted, stored bytes, whether blobs remain).

        Touches wait until this commits: a reader that touches a blob and then
        checks it is present (see `touch`) either got its touch in first, and
        the blob stays, or sees it gone."""
        evicted = steps = 0
        with self._touch_lock, self.index.write() as txn:
            stored = self.index.counter(txn, "stored")
            cursor = txn.cursor(db=self.index.db["lru"])
            remaining = cursor.first()
            while remaining and stored > target and steps < batch:
                steps += 1
                _, key = split_lru_key(cursor.key())
                stamp = self._touched.pop(key, None)
                if stamp is not None:
                    self.index.set_atime(txn, key, stamp)  # used since the last flush: not old
                elif self._drop_blob(txn, key) is None:
                    txn.delete(cursor.key(), db=self.index.db["lru"])  # stale entry
                else:
                    drop_references(txn, Digest.parse(key.decode()))
                    evicted += 1
                    stored = self.index.counter(txn, "stored")
                remaining = cursor.first()
            self.index.add(txn, "evictions", evicted)
        return evicted, stored, remaining

    def add_holder(self, digest: Digest, namespace: str) -> None:
        """Records that `namespace` holds a blob already stored (a Write cut
        short because the caller could already see it)."""
        if not namespace or digest.is_empty_blob:
            return
        key, value = digest.key, namespace.encode()
        with self.index.read() as txn:
            if txn.cursor(db=self.index.db["blob_ns"]).set_key_dup(key, value):
                return
        with self.index.write() as txn:
            if txn.get(key, db=self.index.db["blobs"]) is not None:
                self._add_namespace(txn, key, namespace)

    def _add_namespace(self, txn: lmdb.Transaction, key: bytes, namespace: str) -> None:
        if namespace:
            txn.put(key, namespace.encode(), db=self.index.db["blob_ns"], dupdata=False)

    # ------------------------------------------------------------------ reads

    def read(self, digest: Digest, offset: int = 0, limit: int = 0, visible: Visible | None = None) -> Iterator[bytes]:
        """Checks the request eagerly (NotFound, OutOfRange), then returns an
        iterator of verified byte strings covering [offset, offset+limit)."""
        if offset < 0 or limit < 0:
            raise InvalidArgument("offset and limit must not be negative")
        size = 0
        record = None
        if not digest.is_empty_blob:
            with self.index.read() as txn:
                record = self.index.get_blob(txn, digest.key)
                if record is not None and not _shown(txn.cursor(db=self.index.db["blob_ns"]), digest.key, visible):
                    record = None
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
        # Consecutive chunks are loaded in groups of about READ_GROUP_BYTES on
        # the pool, a few groups ahead of the consumer, so reading, inflating
        # and checking overlap with sending.
        groups: list[list[tuple[bytes, int, int, int]]] = [[]]
        grouped = 0
        position = 0
        for chunk_id, raw_len in record.chunks:
            chunk_end = position + raw_len
            if chunk_end > start and position < end:
                if grouped >= READ_GROUP_BYTES:
                    groups.append([])
                    grouped = 0
                lo, hi = max(start - position, 0), min(end, chunk_end) - position
                groups[-1].append((chunk_id, raw_len, lo, hi))
                grouped += hi - lo
            position = chunk_end
            if position >= end:
                break
        pending: collections.deque[Future[bytes]] = collections.deque()
        sent = 0
        # Pinned here, inside the generator, so that the finally below always
        # unpins: a generator that never starts never runs its finally.
        pinned = [chunk_id for group in groups for chunk_id, _, _, _ in group]
        self.pins.pin(pinned)
        try:
            for group in groups:
                pending.append(self._pool.submit(self._load_group, digest, group))
                if len(pending) > _READ_AHEAD:
                    data = pending.popleft().result()
                    sent += len(data)
                    yield data
            while pending:
                data = pending.popleft().result()
                sent += len(data)
                yield data
        finally:
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()  # wait: the loader must finish before the unpin
            self.pins.unpin(pinned)
            self.traffic.add_bytes(outgoing=sent)

    def _load_group(self, digest: Digest, group: list[tuple[bytes, int, int, int]]) -> bytes:
        parts = []
        for chunk_id, raw_len, lo, hi in group:
            data = self._load_chunk(digest, chunk_id, raw_len)
            parts.append(data if (lo, hi) == (0, raw_len) else data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _load_chunk(self, digest: Digest, chunk_id: bytes, raw_len: int) -> bytes:
        try:
            return self._checked_chunk(digest, chunk_id, raw_len)
        except DataLoss:
            self.quarantine(digest, chunk_id)
            raise

    def _checked_chunk(self, digest: Digest, chunk_id: bytes, raw_len: int) -> bytes:
        """The chunk's bytes, inflated and checked against its id; DataLoss otherwise."""
        try:
            try:
                flags, payload = self._read_chunk(digest, chunk_id, raw_len)
            except PackGone:
                # Compaction moved the chunk after we looked it up; it
                # deletes a pack only once the index points elsewhere.
                flags, payload = self._read_chunk(digest, chunk_id, raw_len)
        except PackGone as exc:
            raise DataLoss(f"chunk {chunk_id.hex()} of {digest}: pack {exc} is missing") from None
        except OSError as exc:
            raise DataLoss(f"chunk {chunk_id.hex()} of {digest}: cannot read its pack: {exc}") from None
        data = payload
        if flags & FLAG_ZSTD:
            try:
                data = self._decompressor().decompress(payload, max_output_size=raw_len)
            except zstandard.ZstdError as exc:
                raise DataLoss(f"chunk {chunk_id.hex()} of {digest} does not decompress: {exc}") from None
        if len(data) != raw_len or blake3.blake3(data).digest() != chunk_id:
            raise DataLoss(f"chunk {chunk_id.hex()} of {digest} failed its blake3 check")
        return data

    def _read_chunk(self, digest: Digest, chunk_id: bytes, raw_len: int) -> tuple[int, bytes]:
        with self.index.read() as txn:
            record = self.index.get_chunk(txn, chunk_id)
            blob_present = txn.get(digest.key, db=self.index.db["blobs"]) is not None
        if record is None and not blob_present:
            # Evicted while being read, before this read pinned its chunks.
            raise BlobNotFound(digest)
        if record is None or record.damaged:
            raise DataLoss(f"chunk {chunk_id.hex()} of {digest} is {'damaged' if record else 'missing'}")
        return self.packs.read(Location(record.pack, record.offset, record.stored_len), chunk_id, raw_len)

    def quarantine(self, digest: Digest, chunk_id: bytes | None) -> None:
        """Handles damage found in `digest`: every damaged chunk of the blob is
        marked (the rest of it is checked now, so that one fresh Write
        repairs it all), the blob is dropped so it reads as missing, and a
        background sweep drops the other blobs sharing a damaged chunk."""
        with self.index.read() as txn:
            blob = self.index.get_blob(txn, digest.key)
        damaged = {chunk_id} if chunk_id is not None else set()
        for other, raw_len in dict.fromkeys(blob.chunks if blob else ()):
            if other not in damaged:
                try:
                    self._checked_chunk(digest, other, raw_len)
                except (DataLoss, BlobNotFound):
                    damaged.add(other)
        log.error("damaged data in %s (%d damaged chunks); dropping the blob", digest, len(damaged))
        with self.index.write() as txn:
            for damaged_id in damaged:
                record = self.index.get_chunk(txn, damaged_id)
                if record is not None:
                    record.flags |= FLAG_DAMAGED
                    self.index.put_chunk(txn, damaged_id, record)
            self._drop_blob(txn, digest.key)
        if damaged:
            threading.Thread(target=self._drop_sharers, args=(damaged,), name="damage-sweep", daemon=True).start()

    def _drop_sharers(self, damaged: set[bytes]) -> None:
        """Drops every blob that references a damaged chunk (records stay and
        read as blob_missing); a Write of any of them repairs the chunk."""
        sharers = []
        with self.index.read() as txn:
            for key, raw in txn.cursor(db=self.index.db["blobs"]):
                if any(chunk_id in damaged for chunk_id, _ in BlobRecord.decode(raw).chunks):
                    sharers.append(bytes(key))
        for key in sharers:
            with self.index.write() as txn:
                blob = self.index.get_blob(txn, key)
                # A Write may have repaired the chunks since the scan.
                if blob and any(self._is_damaged(txn, chunk_id) for chunk_id, _ in blob.chunks):
                    log.error("dropping %s: it shares a damaged chunk", key.decode())
                    self._drop_blob(txn, key)

    def _is_damaged(self, txn: lmdb.Transaction, chunk_id: bytes) -> bool:
        record = self.index.get_chunk(txn, chunk_id)
        return record is None or record.damaged

    def holds_intact(self, digest: Digest, visible: Visible | None = None) -> bool:
        """Whether the blob is held, visible, and none of its chunks is known
        damaged: only then may an upload of it be cut short."""
        if self.find_missing([digest], visible):
            return False
        with self.index.read() as txn:
            blob = self.index.get_blob(txn, digest.key)
            return blob is not None and not any(self._is_damaged(txn, c) for c, _ in dict.fromkeys(blob.chunks))

    def _drop_blob(self, txn: lmdb.Transaction, key: bytes) -> BlobRecord | None:
        """Removes a blob inside the caller's transaction. Its chunk records
        stay (refcount 0 when unused) until compaction reclaims their space."""
        blob = self.index.get_blob(txn, key)
        if blob is None:
            return None
        live = _LiveBytes()
        for chunk_id, _ in dict.fromkeys(blob.chunks):
            record = self.index.get_chunk(txn, chunk_id)
            if record is None or record.refcount == 0:
                continue
            record.refcount -= 1
            if record.refcount == 0:
                live.remove(record)
            self.index.put_chunk(txn, chunk_id, record)
        txn.delete(key, db=self.index.db["blobs"])
        self.index.clear_atime(txn, key)
        txn.delete(key, db=self.index.db["blob_ns"])
        self.index.add(txn, "blobs", -1)
        self.index.add(txn, "logical", -blob.size)
        live.apply(self.index, txn)
        return blob

    def touch(self, digests: Iterable[Digest]) -> set[Digest]:
        """Marks blobs used now; returns those of them that are absent after
        the touch (evicted meanwhile), so a caller about to hand them out can
        tell. Once a touch is in, eviction passes the blob over."""
        stamp = now_ms()
        keys = {d for d in digests if not d.is_empty_blob}
        with self._touch_lock:
            for digest in keys:
                self._touched[digest.key] = stamp
        with self.index.read() as txn:
            cursor = txn.cursor(db=self.index.db["blobs"])
            return {d for d in keys if not cursor.set_key(d.key)}

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
                with self.index.read() as txn:
                    record = self.index.get_blob(txn, key)
                if record is None:
                    continue  # removed while we were verifying
                # Not through read(): checking a blob is not a use of it.
                for piece in self._read_range(digest, record, 0, record.size):
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
        with self.index.read() as txn:
            saved = self.index.get_setting(txn, "chunk_params")
        if saved is None and self.packs.closed_packs():
            # A new index over old packs: the index was lost or replaced.
            # Serving would hide every stored blob and append to packs nobody
            # can account for, so refuse and say so.
            self.index.close()
            raise DataDirDamaged(
                f"{self.packs.directory} holds pack files but the index is empty: it was lost or replaced. "
                "Restore the index, or move the packs directory away to start an empty cache."
            )
        if saved is None:
            params = DEFAULT_PARAMS
            with self.index.write() as txn:
                self.index.put_setting(txn, "chunk_params", params.encode())
            return params
        return ChunkParams.decode(saved)

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
            cursor = txn.cursor(db=self.index.db["blobs"])
            for key, stamp in touched.items():
                if cursor.set_key(key):
                    self.index.set_atime(txn, key, stamp)
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


class _LiveBytes:
    """Changes to the live chunk counters ("chunks", "stored" and each pack's
    live bytes) gathered over one transaction, written once at its end."""

    def __init__(self) -> None:
        self.chunks = 0
        self.stored = 0
        self.per_pack: dict[int, int] = collections.defaultdict(int)

    def add(self, record: ChunkRecord, sign: int = 1) -> None:
        size = HEADER.size + record.stored_len
        self.chunks += sign
        self.stored += sign * size
        self.per_pack[record.pack] += sign * size

    def remove(self, record: ChunkRecord) -> None:
        self.add(record, -1)

    def apply(self, index: Index, txn: lmdb.Transaction) -> None:
        index.add(txn, "chunks", self.chunks)
        index.add(txn, "stored", self.stored)
        for pack_id, delta in self.per_pack.items():
            index.add(txn, pack_live(pack_id), delta)


def _shown(holders: lmdb.Cursor, key: bytes, visible: Visible | None) -> bool:
    """Whether a present blob is visible: `holders` is a blob_ns cursor."""
    if visible is None:
        return True
    names = [bytes(v).decode() for v in holders.iternext_dup(keys=False)] if holders.set_key(key) else []
    return visible(names)


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
        with self._aborting():
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

    def commit(self, digest: Digest | None = None) -> WriteResult:
        """Verifies size and digest and makes the blob visible. `digest`
        must match the one given at open, or supply it if none was."""
        with self._aborting():
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
            for attempt in range(_ROOM_ATTEMPTS + 1):
                try:
                    result = self._store._commit(final, self.received, self.media_type, self._chunks, self._written, self._namespace)
                    break
                except NeedRoom as shortage:
                    if attempt == _ROOM_ATTEMPTS:
                        raise
                    self._store._make_room(shortage)
        if result.already_existed:
            self.abort()  # nothing references what this upload appended
        else:
            self._finished = True
            self._release()
        return result

    @contextlib.contextmanager
    def _aborting(self) -> Iterator[None]:
        """Any failure aborts the upload; a full disk becomes StoreFull."""
        try:
            yield
        except OSError as exc:
            self.abort()
            _raise_if_disk_full(exc)
            raise
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        for future in self._pending:
            future.cancel()
        for future in self._pending:
            if not future.cancelled() and future.exception() is None:
                self._store.pins.unpin([future.result()[0]])
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
        self._store.pins.unpin(chunk_id for chunk_id, _ in self._chunks)
        self._chunks = []
        if self._pack is not None:
            self._store.packs.release(self._pack)
            self._pack = None


def _raise_if_disk_full(exc: OSError) -> None:
    """A full disk is the client's StoreFull; other OSErrors stay as they are."""
    if exc.errno in _DISK_FULL:
        raise StoreFull("the disk holding the cache is full; nothing stored was lost") from exc
