"""The gRPC API through a real channel to an in-process daemon, good and bad input."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cached.config import Config, HttpConfig, ServerConfig, StoreConfig
from cached.server import create_daemon
from cached.store import BlobStore
from client import Client, DataLossError, Descriptor
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
BAD_DIGESTS = [
    "sha256:" + "AB" * 32,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "md5:" + "a" * 64,
    "sha256:../../x",
    "",
]


class RecordingStore(BlobStore):
    """The real store, noting which storage entry points a request reached."""

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.calls: list[str] = []

    def find_missing(self, digests, visible=None):
        self.calls.append("find_missing")
        return super().find_missing(digests, visible)

    def stat(self, digest, visible=None):
        self.calls.append("stat")
        return super().stat(digest, visible)

    def read(self, digest, offset=0, limit=0, visible=None):
        self.calls.append("read")
        return super().read(digest, offset, limit, visible)

    def open_write(self, *args, **kwargs):
        self.calls.append("open_write")
        return super().open_write(*args, **kwargs)


@pytest.fixture
def running(tmp_path):
    config = Config(StoreConfig(data_dir=tmp_path / "data"), ServerConfig(listen="127.0.0.1:0"), HttpConfig(listen="off"))
    store = RecordingStore(config.store)
    daemon = create_daemon(config, store)
    daemon.start()
    address = f"127.0.0.1:{daemon.port}"
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    with Client(address) as client:
        yield daemon, store, client, channel
    channel.close()
    daemon.stop(grace=1)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def write_requests(digest: str, size: int, data: bytes, piece: int = 1 << 20):
    yield pb.WriteRequest(header=pb.WriteHeader(digest=digest, size=size))
    for start in range(0, len(data), piece):
        yield pb.WriteRequest(data=data[start : start + piece])


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("bad", BAD_DIGESTS)
def test_malformed_digests_are_invalid_argument_before_any_storage_call(running, bad):
    daemon, store, _, channel = running
    blobs = pb_grpc.BlobsStub(channel)
    cache = pb_grpc.InstructionCacheStub(channel)
    calls = [
        lambda: blobs.FindMissing(pb.FindMissingRequest(digests=[EMPTY, bad])),
        lambda: blobs.Stat(pb.StatRequest(digest=bad)),
        lambda: list(blobs.Read(pb.ReadRequest(digest=bad))),
        lambda: blobs.Write(write_requests(bad, 3, b"abc")),
        lambda: cache.Record(
            pb.RecordRequest(namespace="ns", key="k", layers=[pb.Descriptor(digest=bad, size=1)])
        ),
    ]
    for call in calls:
        code, details = code_of(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "digest" in details
    assert store.calls == []
    assert store.stats().pack_bytes == 0


def test_write_then_read_back_with_ranges(running):
    _, _, client, channel = running
    data = os.urandom(3 << 20) + Path(os.__file__).read_bytes() * 20
    desc = client.put(data, media_type="application/vnd.oci.image.layer.v1.tar")
    assert desc == Descriptor(sha(data), len(data), "application/vnd.oci.image.layer.v1.tar")
    assert client.get(desc.digest) == data
    assert b"".join(client.read(desc.digest, 1000, 70000)) == data[1000:71000]
    assert b"".join(client.read(desc.digest, len(data) - 5)) == data[-5:]
    assert b"".join(client.read(desc.digest, len(data))) == b""
    info = client.stat(desc.digest)
    assert info.descriptor == desc and info.chunks >= 2


@pytest.mark.parametrize(
    "declared_data, sent, why",
    [
        (b"A" * 100_000, b"B" * 100_000, "hashes to"),  # same length, different bytes
        (b"A" * 100_000, b"A" * 99_999, "received 99999 bytes"),
        (b"A" * 100_000, b"A" * 100_001, "more than the declared size"),
    ],
)
def test_mismatched_uploads_are_rejected_and_leave_nothing(running, declared_data, sent, why):
    _, store, client, channel = running
    blobs = pb_grpc.BlobsStub(channel)
    digest = sha(declared_data)
    code, details = code_of(lambda: blobs.Write(write_requests(digest, len(declared_data), sent)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details
    assert client.find_missing([digest]) == [digest]
    stats = client.stats()
    assert (stats.blobs, stats.stored_bytes, stats.pack_bytes) == (0, 0, 0)


def test_a_rejected_upload_does_not_disturb_stored_blobs(running):
    _, _, client, channel = running
    kept = client.put(Path(threading.__file__).read_bytes() * 50)
    before = client.stats()
    digest = sha(b"x" * 5000)
    code, _ = code_of(lambda: pb_grpc.BlobsStub(channel).Write(write_requests(digest, 5000, b"y" * 5000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    after = client.stats()
    assert (after.blobs, after.stored_bytes, after.pack_bytes) == (before.blobs, before.stored_bytes, before.pack_bytes)
    assert client.get(kept.digest) == Path(threading.__file__).read_bytes() * 50


def test_header_rules(running):
    _, _, _, channel = running
    blobs = pb_grpc.BlobsStub(channel)
    code, details = code_of(lambda: blobs.Write(iter([pb.WriteRequest(data=b"abc")])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "header" in details
    code, details = code_of(lambda: blobs.Write(iter([])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    twice = iter([pb.WriteRequest(header=pb.WriteHeader(digest=sha(b"ab"), size=2)), pb.WriteRequest(header=pb.WriteHeader(digest=sha(b"ab"), size=2))])
    code, details = code_of(lambda: blobs.Write(twice))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "only the first" in details
    code, details = code_of(lambda: blobs.Write(write_requests(sha(b"ab"), -1, b"ab")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "negative" in details


def test_the_empty_blob_always_exists(running):
    _, _, client, channel = running
    blobs = pb_grpc.BlobsStub(channel)
    assert client.find_missing([EMPTY, "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"]) == []
    assert client.stat(EMPTY).descriptor.size == 0
    assert client.get(EMPTY) == b""
    assert client.put(b"").digest == EMPTY
    code, details = code_of(lambda: blobs.Write(write_requests(EMPTY, 5, b"hello")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty blob" in details
    code, _ = code_of(lambda: list(blobs.Read(pb.ReadRequest(digest=EMPTY, offset=1))))
    assert code == grpc.StatusCode.OUT_OF_RANGE


def test_read_errors(running):
    _, _, client, channel = running
    blobs = pb_grpc.BlobsStub(channel)
    desc = client.put(b"0123456789")
    code, details = code_of(lambda: list(blobs.Read(pb.ReadRequest(digest=desc.digest, offset=11))))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "beyond the end" in details
    code, _ = code_of(lambda: list(blobs.Read(pb.ReadRequest(digest=sha(b"absent")))))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: list(blobs.Read(pb.ReadRequest(digest=desc.digest, offset=-1))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: blobs.Stat(pb.StatRequest(digest=sha(b"absent"))))
    assert code == grpc.StatusCode.NOT_FOUND


def test_record_of_missing_blobs_names_them(running):
    _, _, client, channel = running
    present = client.put(b"present")
    absent = [sha(b"absent-1"), sha(b"absent-2")]
    request = pb.RecordRequest(
        namespace="team/app",
        key="k1",
        layers=[pb.Descriptor(digest=present.digest, size=present.size)] + [pb.Descriptor(digest=d, size=8) for d in absent],
    )
    code, details = code_of(lambda: pb_grpc.InstructionCacheStub(channel).Record(request))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert all(d in details for d in absent) and present.digest not in details
    assert client.lookup("team/app", ["k1"]).miss_reason == "not_recorded"


def test_record_with_a_wrong_size_is_invalid(running):
    _, _, client, channel = running
    present = client.put(b"present")
    request = pb.RecordRequest(namespace="ns", key="k", layers=[pb.Descriptor(digest=present.digest, size=99)])
    code, details = code_of(lambda: pb_grpc.InstructionCacheStub(channel).Record(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "7 bytes" in details


@pytest.mark.parametrize("namespace", ["", "UPPER", "a/../b", "a//b", "-lead", "x" * 256])
def test_invalid_namespaces(running, namespace):
    _, _, _, channel = running
    code, details = code_of(lambda: pb_grpc.InstructionCacheStub(channel).Lookup(pb.LookupRequest(namespace=namespace, keys=["k"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "namespace" in details


@pytest.mark.parametrize("key", ["", "has space", "tab\tkey", "k" * 513, "caf\u00e9"])
def test_invalid_keys(running, key):
    _, _, _, channel = running
    code, details = code_of(lambda: pb_grpc.InstructionCacheStub(channel).Lookup(pb.LookupRequest(namespace="ns", keys=["ok", key])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "key" in details


def test_lookup_returns_the_longest_prefix_of_hits(running):
    _, _, client, _ = running
    layers = [client.put(f"layer {i}".encode() * 1000) for i in range(5)]
    keys = [f"step-{i}" for i in range(5)]
    for i in (0, 1, 2, 4):
        client.record("ns", keys[i], [layers[i]], {"instruction": f"RUN {i}"})
    result = client.lookup("ns", keys)
    assert [e.key for e in result.hits] == keys[:3]
    assert result.hits[1].layers == (layers[1],)
    assert result.hits[2].metadata == {"instruction": "RUN 2"}
    assert result.miss_reason == "not_recorded"
    assert client.lookup("other", keys).hits == []
    stats = client.stats()
    assert (stats.lookups, stats.hits, stats.misses) == (5, 3, 2)


def test_record_replaces_and_lists_newest_first(running):
    _, _, client, _ = running
    a, b = client.put(b"a" * 10), client.put(b"b" * 10)
    client.record("ns", "k", [a], {"step": "1", "v": "old"})
    client.record("ns", "k", [b], {"step": "1", "v": "new"})
    client.record("ns", "k2", [a], {"step": "2"})
    assert client.lookup("ns", ["k"]).hits[0].layers == (b,)
    assert [e.key for e in client.list_entries("ns", {"step": "1"})] == ["k"]
    assert [e.key for e in client.list_entries("ns")] == ["k2", "k"]
    assert client.stats().records == 2


def test_flipped_byte_in_a_pack_is_never_served_and_a_rewrite_repairs(running):
    daemon, store, client, channel = running
    data = Path(os.__file__).read_bytes() * 40
    sibling = data + b"sibling tail"  # shares all but the last chunk
    desc = client.put(data)
    sib = client.put(sibling)
    client.record("ns", "sibling", [sib])
    pack = next((Path(store.config.data_dir) / "packs").glob("*.pack"))
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    pack.write_bytes(raw)
    blobs = pb_grpc.BlobsStub(channel)
    received = bytearray()
    with pytest.raises(grpc.RpcError) as info:
        for response in blobs.Read(pb.ReadRequest(digest=desc.digest)):
            received += response.data
    assert info.value.code() == grpc.StatusCode.DATA_LOSS
    assert data.startswith(bytes(received)), "only verified bytes may be sent"
    assert client.find_missing([desc.digest]) == [desc.digest]
    # The sibling shares the damaged chunk: it is dropped too (its entry turns
    # into a miss) rather than answering "present" and then failing to read.
    deadline = time.monotonic() + 10
    while client.find_missing([sib.digest]) != [sib.digest]:
        assert time.monotonic() < deadline, "a blob sharing a damaged chunk stayed present"
        time.sleep(0.05)
    assert client.lookup("ns", ["sibling"]).miss_reason == "blob_missing"
    assert client.put(data).digest == desc.digest  # one Write repairs
    assert client.get(desc.digest) == data
    assert client.put(sibling).digest == sib.digest
    assert client.get(sib.digest) == sibling
    assert client.lookup("ns", ["sibling"]).miss_reason == "none"
    assert client.verify().problems == []


def test_one_write_repairs_a_blob_whose_pack_was_cut_in_half(running):
    _, store, client, _ = running
    data = os.urandom(4 << 20) + Path(os.__file__).read_bytes() * 40
    desc = client.put(data)
    pack = next((Path(store.config.data_dir) / "packs").glob("*.pack"))
    os.truncate(pack, pack.stat().st_size // 2)
    with pytest.raises(DataLossError):
        client.get(desc.digest)
    assert client.put(data).digest == desc.digest
    assert client.get(desc.digest) == data
    assert client.verify().problems == []


def test_find_missing_with_100000_digests(running):
    _, _, client, _ = running
    present = client.put(b"here")
    digests = [sha(i.to_bytes(4, "little")) for i in range(100_000)] + [present.digest]
    missing = client.find_missing(digests)
    assert len(missing) == 100_000 and present.digest not in missing


def test_health_and_reflection(running):
    _, _, _, channel = running
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "layercache.v1.Blobs", "layercache.v1.InstructionCache", "layercache.v1.Admin"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"layercache.v1.Blobs", "layercache.v1.InstructionCache", "layercache.v1.Admin", "grpc.health.v1.Health"} <= names


def test_capabilities_advertise_limits(running):
    _, _, client, _ = running
    caps = client.capabilities()
    assert list(caps.digest_algorithms) == ["sha256", "blake3"]
    assert caps.max_message_bytes == 16 << 20 and caps.max_blob_size > 0
    assert caps.chunk_min_size < caps.chunk_avg_size < caps.chunk_max_size


def test_blake3_blobs(running):
    _, _, client, channel = running
    import blake3

    data = b"blake3 content" * 1000
    digest = "blake3:" + blake3.blake3(data).hexdigest()
    response = pb_grpc.BlobsStub(channel).Write(write_requests(digest, len(data), data))
    assert response.descriptor.digest == digest
    assert client.get(digest) == data


def test_concurrent_writers_of_the_same_digest(running):
    _, _, client, _ = running
    data = Path(os.__file__).read_bytes() * 30
    results, errors = [], []

    def put():
        try:
            results.append(client.put(data))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len({r.digest for r in results}) == 1
    assert client.get(results[0].digest) == data
    stats = client.stats()
    assert stats.blobs == 1
    assert client.verify().problems == []


def test_a_huge_lookup_answer_is_truncated_and_the_client_continues(running):
    daemon, _, client, channel = running
    layers = [client.put(f"blob {i}".encode()) for i in range(1000)]
    client.record("ns", "wide", layers, {"note": "x" * 100_000})
    keys = ["wide"] * 300
    response = pb_grpc.InstructionCacheStub(channel).Lookup(pb.LookupRequest(namespace="ns", keys=keys))
    assert 0 < len(response.hits) < 300 and response.miss_reason == pb.MISS_REASON_TRUNCATED
    result = client.lookup("ns", keys + ["absent"])
    assert len(result.hits) == 300 and result.miss_reason == "not_recorded"


def test_entry_and_name_limits(running):
    _, _, client, channel = running
    blob = client.put(b"limits")
    client.record("n" * 255, "k" * 255, [blob])  # the longest namespace with the longest key fits the index
    cache = pb_grpc.InstructionCacheStub(channel)
    code, details = code_of(lambda: cache.Lookup(pb.LookupRequest(namespace="ns", keys=["k" * 256])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "longer than 255" in details
    big = pb.RecordRequest(
        namespace="ns",
        key="k",
        layers=[pb.Descriptor(digest=blob.digest, size=blob.size, media_type="application/x-" + "y" * 200)] * 1000,
        metadata={"note": "z" * 250_000},  # within the metadata limit; with the layers, over the entry limit
    )
    code, details = code_of(lambda: cache.Record(big))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "encoded" in details


@pytest.mark.parametrize(
    "header, why",
    [
        (pb.WriteHeader(size=3, namespace="Bad Namespace"), "namespace"),
        (pb.WriteHeader(size=3, namespace="n" * 600), "namespace"),
        (pb.WriteHeader(size=3, media_type="x" * 70_000), "media type"),
        (pb.WriteHeader(size=3, media_type="not a media type"), "media type"),
    ],
)
def test_write_headers_are_validated_before_any_data(running, header, why):
    _, store, _, channel = running
    header.digest = sha(b"abc")
    requests = iter([pb.WriteRequest(header=header), pb.WriteRequest(data=b"abc")])
    code, details = code_of(lambda: pb_grpc.BlobsStub(channel).Write(requests))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details
    assert store.stats().pack_bytes == 0


def test_find_missing_answers_each_digest_once(running):
    _, _, client, _ = running
    present = client.put(b"p")
    absent = sha(b"a")
    assert client.find_missing([absent, present.digest, absent, EMPTY, absent]) == [absent]


def test_a_second_daemon_cannot_take_a_busy_port(running, tmp_path):
    daemon, _, _, _ = running
    config = Config(StoreConfig(data_dir=tmp_path / "other"), ServerConfig(listen=f"127.0.0.1:{daemon.port}"))
    from cached.config import ConfigError

    with pytest.raises(ConfigError, match="cannot listen"):
        create_daemon(config)


def test_a_hundred_stalled_uploads_do_not_starve_other_calls(running):
    _, _, client, channel = running
    release = threading.Event()

    def stalled():
        yield pb.WriteRequest(header=pb.WriteHeader(digest=sha(b"never"), size=5))
        release.wait(60)

    blobs = pb_grpc.BlobsStub(channel)
    calls = [blobs.Write.future(stalled()) for _ in range(100)]
    try:
        time.sleep(0.5)
        with Client(f"127.0.0.1:{running[0].port}", timeout=10) as other:
            assert other.stats().blobs == 0
            assert other.find_missing([sha(b"never")]) == [sha(b"never")]
    finally:
        release.set()
        for call in calls:
            call.cancel()
