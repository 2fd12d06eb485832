"""A daemon restarted on an index of 1,000,000 blobs and records serves within 2 s.

Opening must not scan anything: counters live in the index, the LRU order is
an index database, and compaction and eviction start from counters. The index
is generated straight into LMDB (sorted keys, appended in bulk), with every
blob made of the same one real chunk, so that reads work too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import blake3
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cached.digest import Digest
from cached.index import BlobRecord, ChunkRecord, Index, lru_key, pack_live
from cached.model import CacheEntry, Descriptor
from cached.chunker import DEFAULT_PARAMS
from cached.packs import HEADER, Packs
from cached.records import _encode, entry_key
import pytest

from client import Client
from tests.conftest import REPO

COUNT = 1_000_000
NAMESPACE = "scale/app"
CHUNK = b"one chunk shared by every generated blob\n" * 100
START_LIMIT_SECONDS = 2.0


def digest_of(i: int) -> Digest:
    return Digest.parse(f"sha256:{i:064x}")


def generate(data_dir: Path, count: int = COUNT) -> None:
    """Writes `count` blobs, each with one instruction-cache record, into a fresh data dir."""
    packs = Packs(data_dir / "packs")
    writer = packs.acquire()
    chunk_id = blake3.blake3(CHUNK).digest()
    location = writer.append(chunk_id, len(CHUNK), CHUNK, 0)
    writer.sync()
    writer.close()
    index = Index(data_dir / "index", 8 << 30)
    created = int(time.time() * 1000) - count
    blob = BlobRecord(len(CHUNK), created, "application/octet-stream", [(chunk_id, len(CHUNK))]).encode()
    keys = [digest_of(i).key for i in range(count)]  # zero-padded hex: already in LMDB order
    ekeys = [entry_key(NAMESPACE, f"step-{i:07d}") for i in range(count)]
    db = index.db
    with index.write() as txn:
        txn.cursor(db=db["blobs"]).putmulti(((k, blob) for k in keys), append=True)
        txn.cursor(db=db["atime"]).putmulti(((k, (created + i).to_bytes(8, "little")) for i, k in enumerate(keys)), append=True)
        txn.cursor(db=db["lru"]).putmulti(((lru_key(created + i, k), b"") for i, k in enumerate(keys)), append=True)
        txn.cursor(db=db["blob_ns"]).putmulti(((k, NAMESPACE.encode()) for k in keys), append=True)
        txn.cursor(db=db["blob_refs"]).putmulti(zip(keys, ekeys), append=True)
        records = (
            _encode(CacheEntry(NAMESPACE, "", (Descriptor(digest_of(i), len(CHUNK)),), {}, created)) for i in range(count)
        )
        txn.cursor(db=db["records"]).putmulti(zip(ekeys, records), append=True)
        stored = HEADER.size + location.stored_len
        index.put_setting(txn, "chunk_params", DEFAULT_PARAMS.encode())
        index.put_chunk(txn, chunk_id, ChunkRecord(location.pack, location.offset, location.stored_len, len(CHUNK), 0, count))
        for name, value in {
            "blobs": count, "logical": count * len(CHUNK), "chunks": 1, "stored": stored,
            "records": count, "records:" + NAMESPACE: count, pack_live(location.pack): stored,
        }.items():
            index.add(txn, name, value)
    index.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_restart_on_a_million_blobs_and_records_serves_within_two_seconds(tmp_path):
    data_dir = tmp_path / "data"
    generate(data_dir)
    config = tmp_path / "layercache.toml"
    config.write_text('[http]\nlisten = "off"\n')
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "daemon.log", "w")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "serve", "--listen", address, "--data-dir", str(data_dir), "--config", str(config)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
    )
    try:
        while not serving(address):
            assert process.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() - started < 30, "never became ready"
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        with Client(address, timeout=30) as client:
            stats = client.stats()
            assert (stats.blobs, stats.records) == (COUNT, COUNT)
            hit = client.lookup(NAMESPACE, [f"step-{COUNT - 1:07d}"]).hits[0]
            assert b"".join(client.read(hit.layers[0].digest)) == CHUNK
        print(f"ready after {elapsed:.2f} s")
        assert elapsed < START_LIMIT_SECONDS, f"ready after {elapsed:.2f} s"
    finally:
        process.terminate()
        process.wait(30)
        log.close()
