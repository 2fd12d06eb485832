"""The hand-rolled wire format agrees with protobuf's, both ways."""

import os

import pytest

from client.proto import layercache_pb2 as pb
from client.wire import (
    WireError,
    encode_read_response,
    encode_write_data,
    parse_read_response,
    parse_write_request,
)

SIZES = [0, 1, 127, 128, 16383, 16384, 1 << 20, (1 << 20) + 3]


@pytest.mark.parametrize("size", SIZES)
def test_encodings_match_protobuf(size):
    data = os.urandom(size)
    assert encode_read_response(data) == pb.ReadResponse(data=data).SerializeToString()
    assert encode_write_data(data) == pb.WriteRequest(data=data).SerializeToString()


@pytest.mark.parametrize("size", SIZES)
def test_parsing_what_protobuf_wrote(size):
    data = os.urandom(size)
    assert bytes(parse_read_response(pb.ReadResponse(data=data).SerializeToString())) == data
    header = pb.WriteHeader(digest="sha256:" + "a" * 64, size=size, media_type="x/y", namespace="ns")
    frame = parse_write_request(pb.WriteRequest(header=header, data=data).SerializeToString())
    assert frame.header == header and bytes(frame.data) == data
    frame = parse_write_request(pb.WriteRequest(data=data).SerializeToString())
    assert frame.header is None and bytes(frame.data) == data


def test_unknown_fields_are_skipped_and_the_last_payload_wins():
    unknown = b"\x18\x96\x01" + b"\x21" + b"\0" * 8 + b"\x2d" + b"\0" * 4 + b"\x52\x03abc"
    raw = encode_write_data(b"first") + unknown + encode_write_data(b"second")
    assert bytes(parse_write_request(raw).data) == b"second"
    assert bytes(parse_read_response(unknown)) == b""


@pytest.mark.parametrize("raw", [b"\x0a", b"\x0a\x05ab", b"\x0a\xff", b"\x0b", b"\x0a" + b"\xff" * 11])
def test_malformed_messages_are_refused(raw):
    with pytest.raises(WireError):
        parse_read_response(raw)
