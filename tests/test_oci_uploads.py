"""Upload sessions: abandoned ones expire and give their pack space back; busy ones do not.

The first tests drive a real daemon with a one-second expiry; the last ones
drive `Uploads` in-process with a clock the test moves.
"""

from __future__ import annotations

import os
import time

import pytest

from cached.config import StoreConfig
from cached.digest import Digest
from cached.oci.errors import UploadUnknown
from cached.oci.uploads import Uploads
from cached.store import BlobStore
from tests.oci_support import Registry, exchange, sha256


@pytest.fixture
def short_expiry(daemon_factory, tmp_path):
    config = tmp_path / "expiry.toml"
    config.write_text("[http]\nupload_expiry_seconds = 1\n")
    return daemon_factory(["--config", str(config)])


def wait_for_pack_bytes(client, expected: int, seconds: float = 15.0) -> None:
    """Polls the stats, not the upload: asking an upload's status is a use of it."""
    deadline = time.monotonic() + seconds
    while client.stats().pack_bytes != expected:
        assert time.monotonic() < deadline, "the upload did not expire"
        time.sleep(0.2)


def test_an_abandoned_upload_expires_and_frees_its_space(short_expiry):
    registry = Registry(short_expiry.http_address)
    with short_expiry.client() as client:
        before = client.stats().pack_bytes
        location = registry.request("POST", "/v2/left/blobs/uploads/").headers["Location"]
        # Random bytes neither dedupe nor compress: they land in a pack as they come.
        assert registry.request("PATCH", location, os.urandom(8 << 20)).status == 202
        assert client.stats().pack_bytes > before + (4 << 20)
        wait_for_pack_bytes(client, before)
        assert client.stats().blobs == 0
    assert registry.request("GET", location).error_codes == ["BLOB_UPLOAD_UNKNOWN"]
    assert registry.request("PUT", f"{location}?digest={sha256(b'')}").error_codes == ["BLOB_UPLOAD_UNKNOWN"]


def test_an_upload_in_use_outlives_the_expiry(short_expiry):
    registry = Registry(short_expiry.http_address)
    data = os.urandom(3 << 20)
    location = registry.request("POST", "/v2/slow/blobs/uploads/").headers["Location"]
    # One PATCH that takes three expiry periods to arrive.
    conn = registry.connection()

    def slowly():
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]
            time.sleep(1.0)

    assert exchange(conn, "PATCH", location, slowly()).status == 202
    # Kept alive by use: a status request every half period for three periods.
    for _ in range(6):
        time.sleep(0.5)
        assert registry.request("GET", location).status == 204
    done = exchange(conn, "PUT", f"{location}?digest={sha256(data)}", b"")
    conn.close()
    assert done.status == 201
    assert registry.request("GET", f"/v2/slow/blobs/{sha256(data)}").body == data


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path):
    store = BlobStore(StoreConfig(data_dir=tmp_path / "data"))
    yield store
    store.close()


@pytest.fixture
def clocked(store):
    """Uploads with a one-minute expiry on a clock the test moves."""
    clock = Clock()
    uploads = Uploads(store, expiry_seconds=60, clock=clock)
    yield uploads, clock
    uploads.close()


def test_expiry_counts_from_the_last_use(clocked):
    uploads, clock = clocked
    session = uploads.start("ns")
    clock.now += 50
    with uploads.use("ns", session.id) as held:
        held.append([b"abc"])
    clock.now += 50  # 100 s since the start, 50 since the last use
    assert uploads.expire() == 0
    clock.now += 11
    assert uploads.expire() == 1
    with pytest.raises(UploadUnknown):
        with uploads.use("ns", session.id):
            pass


def test_a_session_held_by_a_request_is_not_expired(clocked):
    uploads, clock = clocked
    session = uploads.start("ns")
    clock.now += 3600
    with session.lock:  # as a PATCH in progress holds it
        assert uploads.expire() == 0
    assert uploads.expire() == 1


def test_a_failed_commit_ends_the_session_and_a_good_one_stores(store):
    uploads = Uploads(store, expiry_seconds=60)
    try:
        bad = uploads.start("ns")
        with pytest.raises(Exception, match="hashes to"):
            with uploads.use("ns", bad.id) as held:
                held.append([b"payload"])
                held.finish(Digest.parse(sha256(b"other")))
        with pytest.raises(UploadUnknown):
            with uploads.use("ns", bad.id):
                pass
        good = uploads.start("ns")
        with uploads.use("ns", good.id) as held:
            held.append([b"pay", b"load"])
            held.finish(Digest.parse(sha256(b"payload")))
        assert b"".join(store.read(Digest.parse(sha256(b"payload")))) == b"payload"
    finally:
        uploads.close()


def test_close_aborts_open_sessions(store):
    uploads = Uploads(store, expiry_seconds=60)
    before = store.packs.disk_bytes()
    session = uploads.start("ns")
    with uploads.use("ns", session.id) as held:
        held.append([os.urandom(4 << 20)])
    assert store.packs.disk_bytes() > before
    uploads.close()
    assert store.packs.disk_bytes() == before
