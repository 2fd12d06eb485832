"""A blob over 4 GiB round-trips through the real daemon with bounded memory."""

from __future__ import annotations

import hashlib
import random

import grpc
import pytest

from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc

SIZE = (4 << 30) + (300 << 20) + 12345  # past the 32-bit boundary, not block aligned
BLOCK = 1 << 20
MEMORY_LIMIT_KIB = 600 * 1024


def generated_stream():
    """Deterministic, generated piece by piece; blocks repeat with a shifting phase."""
    base = random.Random(4).randbytes(BLOCK + 4099)
    sent = 0
    index = 0
    while sent < SIZE:
        phase = (index * 977) % 4099
        piece = base[phase : phase + min(BLOCK, SIZE - sent)]
        yield piece
        sent += len(piece)
        index += 1


@pytest.mark.slow
def test_blob_over_4_gib_round_trips_with_bounded_memory(daemon):
    hasher = hashlib.sha256()
    for piece in generated_stream():
        hasher.update(piece)
    digest = "sha256:" + hasher.hexdigest()

    def requests():
        yield pb.WriteRequest(header=pb.WriteHeader(digest=digest, size=SIZE))
        for piece in generated_stream():
            yield pb.WriteRequest(data=piece)

    channel = grpc.insecure_channel(daemon.address)
    blobs = pb_grpc.BlobsStub(channel)
    response = blobs.Write(requests())
    assert (response.descriptor.digest, response.descriptor.size) == (digest, SIZE)

    check = hashlib.sha256()
    received = 0
    for message in blobs.Read(pb.ReadRequest(digest=digest)):
        check.update(message.data)
        received += len(message.data)
    assert (received, "sha256:" + check.hexdigest()) == (SIZE, digest)

    # A range that starts past 4 GiB matches the generator at that offset.
    offset = (4 << 30) + 777
    tail = b"".join(m.data for m in blobs.Read(pb.ReadRequest(digest=digest, offset=offset, limit=3 << 20)))
    expected = bytearray()
    position = 0
    for piece in generated_stream():
        if position + len(piece) > offset:
            expected += piece[max(0, offset - position) :]
            if len(expected) >= 3 << 20:
                break
        position += len(piece)
    assert tail == bytes(expected[: 3 << 20])
    channel.close()
    assert daemon.rss_peak_kib < MEMORY_LIMIT_KIB, f"daemon peak RSS {daemon.rss_peak_kib} KiB"
