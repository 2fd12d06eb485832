"""Size bound: LRU eviction, compaction, pins, the hard limit and a full disk.

The store-level tests drive eviction and compaction by hand (no background
threads) so each step can be checked; the last test runs the real daemon with
a 100 MiB bound under a writer and concurrent readers.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import threading
import time

import pytest

from cached.compaction import Compactor
from cached.config import StoreConfig
from cached.digest import Digest
from cached.errors import BlobNotFound, StoreFull
from cached.eviction import Evictor
from cached.index import ChunkRecord
from cached.records import InstructionCache
from cached.store import BlobStore
from client import LayercacheError
from client.errors import NotFoundError, ResourceExhaustedError
from tests.oci_support import Registry, sha256
from tests.test_store_contract import assert_counters_consistent

MiB = 1 << 20


def blob(seed: int, size: int = 256 * 1024) -> bytes:
    """Incompressible and distinct per seed, so stored bytes track logical bytes."""
    return seed.to_bytes(8, "little") + os.urandom(size - 8)


@pytest.fixture
def bounded(tmp_path):
    stores: list[BlobStore] = []

    def make(max_bytes: int = 4 * MiB, **overrides) -> tuple[BlobStore, InstructionCache, Evictor, Compactor]:
        store = BlobStore(StoreConfig(data_dir=tmp_path / "data", max_bytes=max_bytes, **overrides))
        stores.append(store)
        cache = InstructionCache(store)
        return store, cache, Evictor(store, cache), Compactor(store)

    yield make
    for store in stores:
        if not store._stop.is_set():
            assert_counters_consistent(store)
            store.close()


def present(store: BlobStore, digest: Digest) -> bool:
    return not store.find_missing([digest])


def test_commits_never_take_stored_bytes_over_the_bound(bounded):
    store, _, _, _ = bounded(max_bytes=4 * MiB)
    kept = []
    for seed in range(40):  # 10 MiB through a 4 MiB cache
        kept.append(store.put(blob(seed)).info.descriptor.digest)
        assert store.stored_bytes() <= 4 * MiB
    stats = store.stats()
    assert stats.evictions > 0
    assert stats.max_bytes == 4 * MiB
    # Least recently used went first: the newest blobs are all still here.
    assert all(present(store, d) for d in kept[-8:])
    assert not present(store, kept[0])


def test_eviction_follows_recency_and_a_lookup_hit_refreshes_it(bounded):
    store, cache, evictor, _ = bounded(max_bytes=64 * MiB)
    digests = [store.put(blob(seed)).info.descriptor for seed in range(6)]
    cache.record("team/app", "step-0", [digests[0]], {})
    store.flush()
    assert cache.lookup("team/app", ["step-0"]).miss_reason == "none"  # touches blob 0
    store.read(digests[1].digest)  # so does a read
    evictor.evict_to(store.stored_bytes() - 1)  # the minimum: one blob
    assert not present(store, digests[2].digest)
    assert all(present(store, d.digest) for d in digests[:2] + digests[3:])


def test_evicting_a_blob_drops_every_record_naming_it(bounded):
    store, cache, evictor, _ = bounded(max_bytes=64 * MiB)
    old, new = (store.put(blob(seed)).info.descriptor for seed in (1, 2))
    cache.record("team/app", "uses-old", [new, old], {"k": "v"})
    cache.record("team/other", "uses-old-too", [old], {})
    cache.record("team/app", "uses-new", [new], {})
    store.touch([new.digest])
    evictor.evict_to(store.stored_bytes() - 1)
    assert not present(store, old.digest)
    assert cache.lookup("team/app", ["uses-old"]).miss_reason == "not_recorded"
    assert cache.lookup("team/other", ["uses-old-too"]).miss_reason == "not_recorded"
    assert cache.lookup("team/app", ["uses-new"]).miss_reason == "none"
    assert store.stats().records == 1


def test_a_blob_larger_than_the_bound_is_refused_and_nothing_is_lost(bounded):
    store, _, _, _ = bounded(max_bytes=2 * MiB)
    small = store.put(blob(1)).info.descriptor
    with pytest.raises(StoreFull, match="bound"):
        store.put(blob(2, size=3 * MiB))
    assert b"".join(store.read(small.digest))[:8] == (1).to_bytes(8, "little")
    assert store.stats().blobs == 1


def test_without_an_evictor_the_hard_limit_refuses_writes(tmp_path):
    store = BlobStore(StoreConfig(data_dir=tmp_path / "data", max_bytes=1 * MiB))
    try:
        first = store.put(blob(1, size=600 * 1024)).info.descriptor
        with pytest.raises(StoreFull):
            store.put(blob(2, size=600 * 1024))
        assert present(store, first.digest)
        assert_counters_consistent(store)
    finally:
        store.close()


def test_chunks_shared_with_live_blobs_survive_eviction_and_compaction(bounded):
    store, _, evictor, compactor = bounded(max_bytes=64 * MiB)
    shared = os.urandom(2 * MiB)
    doomed = store.put(shared + os.urandom(MiB)).info.descriptor
    filler = [store.put(blob(seed, MiB)).info.descriptor for seed in range(3)]  # closes packs
    keeper_data = shared + os.urandom(MiB)
    keeper = store.put(keeper_data).info.descriptor
    store.touch([keeper.digest, *(f.digest for f in filler)])
    evictor.evict_to(store.stored_bytes() - 1)
    assert not present(store, doomed.digest)
    compactor.run_once()
    assert b"".join(store.read(keeper.digest)) == keeper_data


def test_compaction_reclaims_the_space_of_evicted_blobs(bounded):
    store, _, evictor, compactor = bounded(max_bytes=32 * MiB)  # 2 MiB packs
    digests = [store.put(blob(seed, MiB)).info.descriptor for seed in range(24)]
    before = store.stats().pack_bytes
    evictor.evict_to(8 * MiB)
    assert store.stats().pack_bytes == before  # eviction alone frees no disk
    assert compactor.run_once() > 0
    stats = store.stats()
    assert stats.pack_bytes < before / 2
    survivors = [d for d in digests if present(store, d.digest)]
    assert survivors and len(survivors) < len(digests)
    for d in survivors:
        assert Digest.of(b"".join(store.read(d.digest))) == d.digest
    # Dead chunk records went with their packs; no record points into a deleted pack.
    with store.index.read() as txn:
        records = [ChunkRecord.decode(v) for _, v in txn.cursor(db=store.index.db["chunks"])]
    assert all(store.packs.path(r.pack).exists() for r in records)
    assert sum(1 for r in records if not r.refcount) < sum(1 for r in records if r.refcount)


def test_an_upload_that_skipped_a_dead_chunk_keeps_it_through_compaction(bounded):
    store, _, evictor, compactor = bounded(max_bytes=64 * MiB)  # 4 MiB packs
    data = blob(7, 8 * MiB)  # over the chunker's look-ahead, so write() cuts chunks
    first = store.put(data).info.descriptor  # and fills its pack, which closes
    with store.index.write() as txn:  # evict exactly `data`, leaving its chunks dead
        store._drop_blob(txn, first.digest.key)
    with store.open_write(first.digest, len(data)) as writer:
        writer.write(data)  # the chunks cut so far are known (refcount 0) and skipped
        for prepared in list(writer._pending):
            prepared.result()  # looked up in the index, so pinned
        assert compactor.run_once() == 0  # the pinned dead records stay
        writer.commit()
    assert b"".join(store.read(first.digest)) == data
    compactor.run_once()
    assert b"".join(store.read(first.digest)) == data


def test_a_read_under_way_finishes_while_its_blob_is_evicted_and_compacted(bounded):
    store, _, evictor, compactor = bounded(max_bytes=16 * MiB)
    data = blob(3, 4 * MiB)
    doomed = store.put(data).info.descriptor
    for seed in range(3):
        store.put(blob(200 + seed, MiB))
    pieces = store.read(doomed.digest)
    received = [next(pieces)]  # the read has started and pinned its chunks
    with store.index.write() as txn:
        store._drop_blob(txn, doomed.digest.key)
    compactor.run_once()
    received.extend(pieces)
    assert b"".join(received) == data
    with pytest.raises(BlobNotFound):
        store.read(doomed.digest)
    assert compactor.run_once() >= 1  # the pack goes once the read let go


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_gives_store_full_and_loses_nothing(tiny_disk):
    store = BlobStore(StoreConfig(data_dir=tiny_disk / "data", index_map_size=4 * MiB))
    try:
        kept: dict[Digest, bytes] = {}
        with pytest.raises(StoreFull, match="disk"):
            for seed in range(100):
                data = blob(seed, MiB)
                kept[store.put(data).info.descriptor.digest] = data
        assert kept
        for digest, data in kept.items():
            assert b"".join(store.read(digest)) == data
        assert_counters_consistent(store)
    finally:
        store.close()


# ---------------------------------------------------------------- the real daemon under load

BOUND = 100 * MiB
BLOB = MiB


def seeded(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOB)


@pytest.mark.slow
def test_a_bounded_daemon_under_a_writer_and_readers_of_evicted_blobs(daemon_factory, tmp_path):
    config = tmp_path / "bounded.toml"
    config.write_text(f"[store]\nmax_bytes = {BOUND}\n")
    daemon = daemon_factory(["--config", str(config)])
    written: list[str] = []  # digest of step i, in order
    problems: list[str] = []
    stored_peaks: list[int] = []
    outcomes = collections.Counter()
    done = threading.Event()

    def writer() -> None:
        try:
            with daemon.client(timeout=60) as client:
                for i in range(400):  # 400 MiB of distinct blobs through a 100 MiB bound
                    desc = client.put(seeded(i), namespace="ci/app")
                    client.record("ci/app", f"step-{i}", [desc])
                    written.append(desc.digest)
        except Exception as exc:
            problems.append(f"writer: {exc!r}")
        finally:
            done.set()

    def reader(worker: int) -> None:
        rng = random.Random(worker)
        with daemon.client(timeout=60) as client:
            while not done.is_set():
                if not written:
                    continue
                i = rng.randrange(len(written))
                try:
                    result = client.lookup("ci/app", [f"step-{i}"])
                    if result.hits:
                        # A hit's blob is there: the lookup made it the newest.
                        client.stat(written[i], "ci/app")
                        outcomes["hit"] += 1
                    data = client.get(written[i], namespace="ci/app")  # verified against its digest
                    if data != seeded(i):
                        problems.append(f"read of step {i} returned other bytes")
                    outcomes["read"] += 1
                except NotFoundError:
                    outcomes["absent"] += 1
                except LayercacheError as exc:
                    problems.append(f"reader {worker}, step {i}: {exc.code} {exc}")

    def monitor() -> None:
        with daemon.client(timeout=60) as client:
            while not done.is_set():
                try:
                    stored_peaks.append(client.stats().stored_bytes)
                except LayercacheError as exc:
                    problems.append(f"stats: {exc.code} {exc}")
                time.sleep(0.05)

    threads = [threading.Thread(target=writer), threading.Thread(target=monitor)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not problems, problems[:10]
    assert len(written) == 400
    assert max(stored_peaks) <= BOUND + BLOB + 4096
    assert outcomes["hit"] > 0 and outcomes["read"] > 0 and outcomes["absent"] > 0, outcomes
    with daemon.client(timeout=60) as client:
        stats = client.stats()
        assert stats.stored_bytes <= BOUND and stats.evictions >= 300
        # The background brings stored bytes under the low watermark; then
        # about that many blobs are left, the newest among them, and an entry
        # survives exactly as long as its blob.
        deadline = time.monotonic() + 30
        while client.stats().stored_bytes > 0.9 * BOUND and time.monotonic() < deadline:
            time.sleep(0.2)
        missing = set(client.find_missing(written, "ci/app"))
        assert 80 <= len(written) - len(missing) <= 100 and written[-1] not in missing
        for i, digest in enumerate(written):
            recorded = client.lookup("ci/app", [f"step-{i}"]).miss_reason == "none"
            assert recorded == (digest not in missing), i
        # Compaction gives the disk back: dead space stays below the configured share.
        deadline = time.monotonic() + 30
        while client.stats().pack_bytes > 2 * BOUND and time.monotonic() < deadline:
            time.sleep(0.5)
        assert client.stats().pack_bytes <= 2 * BOUND
    log = daemon.log()
    assert "Traceback" not in log and " ERROR " not in log


def test_over_the_bound_is_resource_exhausted_on_grpc_and_507_on_oci(daemon_factory, tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(f"[store]\nmax_bytes = {2 * MiB}\n")
    daemon = daemon_factory(["--config", str(config)])
    too_big = os.urandom(3 * MiB)
    with daemon.client(timeout=60) as client:
        with pytest.raises(ResourceExhaustedError, match="bound"):
            client.put(too_big)
        kept = client.put(os.urandom(MiB))
        assert client.find_missing([kept.digest]) == []
    refused = Registry(daemon.http_address).request("POST", f"/v2/ci/app/blobs/uploads/?digest={sha256(too_big)}", too_big)
    assert refused.status == 507
