"""Losing nothing: kill -9 during concurrent writes, and clients that vanish mid-upload."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from pathlib import Path

import pytest

from client import Client, LayercacheError

REPO = Path(__file__).resolve().parent.parent
STDLIB_FILES = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def blob_for(seed: int) -> bytes:
    """Deterministic blob of real stdlib bytes, unique per seed, 50 KB - 2.5 MB."""
    rng = random.Random(seed)
    parts = [f"blob {seed}\n".encode()]
    target = rng.randint(50_000, 2_500_000)
    size = 0
    while size < target:
        data = rng.choice(STDLIB_FILES).read_bytes()
        parts.append(data)
        size += len(data)
    return b"".join(parts)


@pytest.mark.slow
def test_kill_9_during_concurrent_writes_loses_no_acknowledged_blob(daemon_factory):
    daemon = daemon_factory()
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        with Client(daemon.address, timeout=30) as client:
            seed = worker * 100_000
            while not stop.is_set():
                seed += 1
                try:
                    desc = client.put(blob_for(seed))
                except LayercacheError:
                    return  # the daemon died under us
                with lock:
                    acknowledged[desc.digest] = seed

    for round_ in range(3):
        threads = [threading.Thread(target=writer, args=(round_ * 10 + w,)) for w in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.0 + round_ * 0.7)
        daemon.kill()
        stop.set()
        for t in threads:
            t.join()
        stop.clear()
        daemon.start()

    assert len(acknowledged) > 20, "the burst should have acknowledged many blobs"
    with daemon.client() as client:
        assert client.find_missing(acknowledged) == []
        for digest, seed in acknowledged.items():
            assert client.get(digest) == blob_for(seed)
        report = client.verify()
        assert report.problems == []
        assert report.blobs_checked >= len(acknowledged)
        stats = client.stats()
        assert stats.blobs == report.blobs_checked


UPLOAD_THEN_HANG = textwrap.dedent(
    """
    import os, sys, time, grpc
    from client.proto import layercache_pb2 as pb, layercache_pb2_grpc as pb_grpc
    def requests():
        yield pb.WriteRequest(header=pb.WriteHeader(digest="sha256:" + "1" * 64, size=100 << 20))
        for _ in range(50):
            yield pb.WriteRequest(data=os.urandom(1 << 20))
        print("sent", flush=True)
        time.sleep(3600)
    pb_grpc.BlobsStub(grpc.insecure_channel(sys.argv[1])).Write(requests())
    """
)


def test_client_killed_after_50_mib_leaves_nothing_behind(daemon):
    with daemon.client() as client:
        kept = client.put(blob_for(1))
        baseline = client.stats()
        uploader = subprocess.Popen(
            [sys.executable, "-c", UPLOAD_THEN_HANG, daemon.address], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        assert uploader.stdout.readline().strip() == "sent"
        deadline = time.monotonic() + 10
        while client.stats().pack_bytes < baseline.pack_bytes + (40 << 20):
            assert time.monotonic() < deadline, "the upload never reached the pack"
            time.sleep(0.05)
        uploader.kill()
        uploader.wait()
        uploader.stdout.close()
        deadline = time.monotonic() + 10
        while (after := client.stats()).pack_bytes != baseline.pack_bytes:
            assert time.monotonic() < deadline, f"temporary space not reclaimed: {after.pack_bytes} vs {baseline.pack_bytes}"
            time.sleep(0.05)
        assert (after.blobs, after.stored_bytes, after.logical_bytes) == (
            baseline.blobs,
            baseline.stored_bytes,
            baseline.logical_bytes,
        )
        assert client.find_missing(["sha256:" + "1" * 64]) == ["sha256:" + "1" * 64]
        assert hashlib.sha256(client.get(kept.digest)).hexdigest() == kept.digest.split(":")[1]
