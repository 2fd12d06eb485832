"""Contract tests: the same cases over every storage configuration.

A new backend or configuration is covered by adding one entry to STORES.
Besides behaviour, every test ends by recounting the index from scratch and
comparing with the counters the store maintains incrementally.
"""

from __future__ import annotations

import os
import sysconfig
import threading
from pathlib import Path

import pytest

from cached.config import StoreConfig
from cached.digest import Digest
from cached.errors import BlobNotFound, BlobTooLarge, ContentMismatch, DataLoss, MissingBlobs, OutOfRange
from cached.index import BlobRecord, ChunkRecord
from cached.model import Descriptor
from cached.packs import HEADER
from cached.records import InstructionCache
from cached.store import BlobStore

STDLIB = Path(sysconfig.get_paths()["stdlib"])
STORES = {
    "zstd": {},
    "raw": {"compression_level": 0},
    "small-packs": {"max_pack_bytes": 256 * 1024},
}


def real_bytes(start: int, limit: int) -> bytes:
    parts, total = [], 0
    for path in sorted(STDLIB.glob("*.py"))[start:]:
        parts.append(path.read_bytes())
        total += len(parts[-1])
        if total >= limit:
            break
    return b"".join(parts)[:limit]


@pytest.fixture(params=sorted(STORES))
def make_store(request, tmp_path):
    opened: list[BlobStore] = []

    def make(**overrides) -> BlobStore:
        store = BlobStore(StoreConfig(data_dir=tmp_path / "data", **{**STORES[request.param], **overrides}))
        opened.append(store)
        return store

    yield make
    for store in opened:
        if not store._stop.is_set():
            assert_counters_consistent(store)
            store.close()


@pytest.fixture
def store(make_store) -> BlobStore:
    return make_store()


def assert_counters_consistent(store: BlobStore) -> None:
    with store.index.read() as txn:
        blobs = [BlobRecord.decode(v) for _, v in txn.cursor(db=store.index.db["blobs"])]
        chunks = {bytes(k): ChunkRecord.decode(v) for k, v in txn.cursor(db=store.index.db["chunks"])}
    refs: dict[bytes, int] = {}
    for blob in blobs:
        for chunk_id, _ in dict.fromkeys(blob.chunks):
            refs[chunk_id] = refs.get(chunk_id, 0) + 1
    assert {k: c.refcount for k, c in chunks.items() if c.refcount} == refs
    live = [c for c in chunks.values() if c.refcount]
    stats = store.stats()
    assert stats.blobs == len(blobs)
    assert stats.logical_bytes == sum(b.size for b in blobs)
    assert stats.chunks == len(live)
    assert stats.stored_bytes == sum(HEADER.size + c.stored_len for c in live)
    assert stats.pack_bytes >= stats.stored_bytes


def put_in_pieces(store: BlobStore, data: bytes, piece: int = 100_000, namespace: str = "") -> Descriptor:
    digest = Digest.of(data)
    with store.open_write(digest, len(data), "application/x-tar", namespace) as writer:
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
        return writer.commit().info.descriptor


def test_round_trip_and_ranges(store):
    data = real_bytes(0, 6 << 20)
    desc = put_in_pieces(store, data)
    assert desc == Descriptor(Digest.of(data), len(data), "application/x-tar")
    assert b"".join(store.read(desc.digest)) == data
    for offset, limit in [(0, 1), (123_456, 1_000_000), (len(data) - 1, 0), (len(data), 0), (5, 10 << 20)]:
        assert b"".join(store.read(desc.digest, offset, limit)) == data[offset : offset + limit if limit else None]
    with pytest.raises(OutOfRange):
        store.read(desc.digest, len(data) + 1)
    with pytest.raises(BlobNotFound):
        store.read(Digest.of(b"absent"))


def test_near_duplicates_store_only_the_difference(store):
    base = real_bytes(0, 8 << 20)
    put_in_pieces(store, base)
    before = store.stats().stored_bytes
    edited = base[: 4 << 20] + b"# edited\n" + base[4 << 20 :]
    put_in_pieces(store, edited)
    added = store.stats().stored_bytes - before
    assert 0 < added < len(edited) // 10


def test_rewriting_a_blob_stores_nothing_new(store):
    data = real_bytes(3, 2 << 20)
    first = store.put(data)
    stats = store.stats()
    again = store.put(data)
    assert again.already_existed and not first.already_existed
    after = store.stats()
    assert (after.blobs, after.stored_bytes, after.pack_bytes) == (stats.blobs, stats.stored_bytes, stats.pack_bytes)


def test_mismatches_abort_without_a_trace(store):
    kept = store.put(real_bytes(1, 1 << 20)).info.descriptor
    stats = store.stats()
    data = real_bytes(10, 3 << 20)
    for declared, sent in [(data, data[:-1] + b"!"), (data, data[:-1]), (data, data + b"x")]:
        with pytest.raises(ContentMismatch):
            put_declared(store, Digest.of(declared), len(declared), sent)
    with pytest.raises(ContentMismatch):
        store.open_write(Digest.of(b""), 3)
    assert store.find_missing([Digest.of(data)]) == [Digest.of(data)]
    after = store.stats()
    assert (after.blobs, after.stored_bytes, after.pack_bytes) == (stats.blobs, stats.stored_bytes, stats.pack_bytes)
    assert b"".join(store.read(kept.digest)) == real_bytes(1, 1 << 20)


def put_declared(store: BlobStore, digest: Digest, size: int, sent: bytes) -> None:
    with store.open_write(digest, size) as writer:
        for start in range(0, len(sent), 1 << 20):
            writer.write(sent[start : start + (1 << 20)])
        writer.commit()


def test_digest_given_at_commit(store):
    data = real_bytes(5, 1 << 20)
    with store.open_write(None, None) as writer:
        writer.write(data)
        result = writer.commit(Digest.of(data, "blake3"))
    assert result.info.descriptor.digest == Digest.of(data, "blake3")
    assert b"".join(store.read(Digest.of(data, "blake3"))) == data


def test_blob_size_limit(make_store):
    store = make_store(max_blob_size=1000)
    with pytest.raises(BlobTooLarge):
        store.open_write(Digest.of(b"x" * 1001), 1001)
    with pytest.raises(BlobTooLarge):
        with store.open_write(None, None) as writer:
            writer.write(b"x" * 1001)
    assert store.stats().pack_bytes == 0


def test_reopen_keeps_everything(make_store):
    store = make_store()
    data = real_bytes(2, 3 << 20)
    desc = put_in_pieces(store, data)
    InstructionCache(store).record("ns", "k", [desc], {"a": "b"})
    stats = store.stats()
    store.close()
    reopened = make_store()
    assert b"".join(reopened.read(desc.digest)) == data
    assert InstructionCache(reopened).lookup("ns", ["k"]).hits[0].metadata == {"a": "b"}
    again = reopened.stats()
    assert (again.blobs, again.stored_bytes, again.records) == (stats.blobs, stats.stored_bytes, stats.records)


def test_damaged_chunk_turns_hits_into_misses_until_repaired(store):
    cache = InstructionCache(store)
    data = real_bytes(0, 2 << 20)
    desc = put_in_pieces(store, data)
    cache.record("ns", "k", [desc], {})
    pack = next((Path(store.config.data_dir) / "packs").glob("*.pack"))
    with open(pack, "r+b") as f:
        f.seek(HEADER.size + 10)
        byte = f.read(1)
        f.seek(HEADER.size + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataLoss):
        b"".join(store.read(desc.digest))
    result = cache.lookup("ns", ["k"])
    assert (result.hits, result.miss_reason, result.missing) == ([], "blob_missing", [desc.digest])
    put_in_pieces(store, data)
    assert cache.lookup("ns", ["k"]).miss_reason == "none"
    assert b"".join(store.read(desc.digest)) == data
    assert store.verify().problems == []


def test_verify_finds_damage_and_drops_the_blob(store):
    good = put_in_pieces(store, real_bytes(0, 1 << 20))
    bad = put_in_pieces(store, real_bytes(40, 1 << 20))
    with store.index.read() as txn:
        first_chunk = store.index.get_blob(txn, bad.digest.key).chunks[0][0]
        record = store.index.get_chunk(txn, first_chunk)
    with open(store.packs.path(record.pack), "r+b") as f:
        f.seek(record.offset + HEADER.size + record.stored_len // 2)
        f.write(b"\0\1\2\3")
    report = store.verify()
    assert [p.digest for p in report.problems] == [str(bad.digest)]
    assert store.find_missing([good.digest, bad.digest]) == [bad.digest]


def test_records_require_present_blobs(store):
    cache = InstructionCache(store)
    present = store.put(b"present").info.descriptor
    absent = Descriptor(Digest.of(b"absent"), 6)
    with pytest.raises(MissingBlobs) as info:
        cache.record("ns", "k", [present, absent], {})
    assert info.value.digests == [str(absent.digest)]
    assert cache.lookup("ns", ["k"]).miss_reason == "not_recorded"


def test_dropping_a_blob_drops_its_records(store):
    cache = InstructionCache(store)
    a = store.put(b"a" * 100).info.descriptor
    b = store.put(b"b" * 100).info.descriptor
    cache.record("ns", "uses-a", [a], {})
    cache.record("ns", "uses-b", [b], {})
    cache.record("other", "uses-a-too", [b, a], {})
    with store.index.write() as txn:
        assert cache.drop_entries_of(txn, a.digest) == 2
        store._drop_blob(txn, a.digest.key)
    assert cache.lookup("ns", ["uses-a"]).miss_reason == "not_recorded"
    assert cache.lookup("other", ["uses-a-too"]).miss_reason == "not_recorded"
    assert cache.lookup("ns", ["uses-b"]).miss_reason == "none"
    assert store.stats().records == 1


def test_concurrent_uploads_of_overlapping_content(store):
    shared = real_bytes(0, 4 << 20)
    blobs = [shared + f"tail {i}".encode() * 1000 for i in range(8)]
    errors: list[Exception] = []

    def put(data: bytes) -> None:
        try:
            put_in_pieces(store, data, piece=256 * 1024)
        except Exception as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(b,)) for b in blobs + blobs[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for data in blobs:
        assert b"".join(store.read(Digest.of(data))) == data
    assert store.stats().blobs == len(blobs)
    assert store.verify().problems == []


def test_empty_blob(store):
    empty = Digest.of(b"")
    assert store.find_missing([empty]) == []
    assert store.stat(empty).descriptor.size == 0
    assert list(store.read(empty)) == []
    assert store.put(b"").info.descriptor.digest == empty
    assert store.stats().blobs == 0


def test_random_content_is_stored_raw(store):
    data = os.urandom(2 << 20)
    put_in_pieces(store, data)
    assert store.stats().stored_bytes >= len(data)
    assert b"".join(store.read(Digest.of(data))) == data


def test_a_blob_sharing_a_damaged_chunk_is_never_taken_as_intact(store):
    shared = real_bytes(0, 2 << 20)
    a = put_in_pieces(store, shared + b"tail a")
    b = put_in_pieces(store, shared + b"tail b")
    with store.index.read() as txn:
        first_chunk = store.index.get_blob(txn, a.digest.key).chunks[0][0]
    store.quarantine(a.digest, first_chunk)
    # Whether or not the background sweep has dropped b yet, an upload of b
    # must not be cut short, and its commit replaces the damaged chunk.
    assert not store.holds_intact(b.digest)
    result = store.put(shared + b"tail b")
    assert not result.already_existed
    assert b"".join(store.read(b.digest)) == shared + b"tail b"
    assert store.holds_intact(b.digest)


def test_open_pack_descriptors_stay_bounded(make_store):
    from cached.packs import MAX_IDLE_READERS

    store = make_store(max_pack_bytes=64 * 1024)
    # Incompressible, so that each blob fills a pack of its own.
    blobs = [put_in_pieces(store, os.urandom(100_000)) for _ in range(MAX_IDLE_READERS + 40)]
    assert len(list((Path(store.config.data_dir) / "packs").glob("*.pack"))) > MAX_IDLE_READERS
    for desc in blobs:
        assert len(b"".join(store.read(desc.digest))) == desc.size
    assert open_pack_files() <= MAX_IDLE_READERS + 8  # plus idle writers


def open_pack_files() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(".pack")
        except FileNotFoundError:
            continue  # the listing's own descriptor, closed meanwhile
    return count
