"""Protobuf wire encoding by hand for the two messages that carry blob bytes.

ReadResponse and WriteRequest are nearly all payload. Building a protobuf
object and serializing it copies every MiB twice while holding the GIL, and
parsing one copies it again; on a 2-core machine that was about half of the
daemon's time serving a read. These functions produce and read the same
proto3 wire format (so peers using the generated classes interoperate):

    ReadResponse { bytes data = 1; }
    WriteRequest { WriteHeader header = 1; bytes data = 2; }

Payloads are returned as memoryviews into the received message: no copy.
"""

from __future__ import annotations

from typing import NamedTuple

from client.proto import layercache_pb2 as pb

_LENGTH_DELIMITED = 2


class WriteFrame(NamedTuple):
    header: pb.WriteHeader | None
    data: memoryview


class WireError(ValueError):
    """The bytes are not a well-formed message of the expected type."""


def encode_read_response(data: bytes) -> bytes:
    return _field(1, data)


def encode_write_data(data: bytes) -> bytes:
    return _field(2, data)


def parse_read_response(raw: bytes) -> memoryview:
    data = memoryview(b"")
    for number, value in _fields(raw):
        if number == 1:
            data = value
    return data


def parse_write_request(raw: bytes) -> WriteFrame:
    header: pb.WriteHeader | None = None
    data = memoryview(b"")
    for number, value in _fields(raw):
        if number == 1:
            # Repeated occurrences of a message field merge, as protobuf does.
            header = header or pb.WriteHeader()
            header.MergeFromString(bytes(value))
        elif number == 2:
            data = value
    return WriteFrame(header, data)


def _field(number: int, payload: bytes) -> bytes:
    if not payload:
        return b""  # proto3 leaves a field at its default value out
    return b"".join((_varint(number << 3 | _LENGTH_DELIMITED), _varint(len(payload)), payload))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(raw: bytes):  # type: ignore[no-untyped-def]
    """(field number, memoryview) of each length-delimited field; other wire
    types are skipped, as unknown fields must be."""
    view = memoryview(raw)
    pos = 0
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(view, pos)
            if pos + length > len(view):
                raise WireError("field runs past the end of the message")
            yield number, view[pos : pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        if pos > len(view):
            raise WireError("field runs past the end of the message")
