"""Request bodies as streams of pieces: Content-Length or chunked transfer coding.

Go's net/http (skopeo, buildah) sends a PATCH body of unknown length with
chunked transfer coding, which http.server leaves to the handler. Bodies are
handed on in pieces of at most PIECE bytes, so an upload of any size flows
into the chunk store with bounded memory. A handler that answers without
reading the body leaves `finished` false, and the connection is then closed
rather than reused with unread bytes in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import Message
from typing import BinaryIO

from cached.errors import Unsupported
from cached.oci.errors import SizeInvalid, UploadInvalid

PIECE = 1 << 20
_MAX_LINE = 4096


class Body:
    def __init__(self, rfile: BinaryIO, headers: Message) -> None:
        self._rfile = rfile
        coding = (headers.get("Transfer-Encoding") or "").strip().lower()
        if coding not in ("", "chunked"):
            raise Unsupported(f"transfer coding {coding[:40]!r} is not supported; use chunked or Content-Length")
        self.chunked = coding == "chunked"
        self.length = None if self.chunked else _content_length(headers.get("Content-Length"))
        self.received = 0
        self.finished = self.length == 0

    def pieces(self) -> Iterator[bytes]:
        """Yields the body; raises UploadInvalid if it ends early or is malformed."""
        if self.finished:
            return
        yield from (self._chunked() if self.chunked else self._sized())
        self.finished = True

    def read_all(self, limit: int, too_large: type[Exception]) -> bytes:
        """The whole body, refused with `too_large` past `limit` bytes (unread
        if Content-Length already says so)."""
        if self.length is not None and self.length > limit:
            raise too_large(f"the body is {self.length} bytes; the limit is {limit}")
        parts = []
        for piece in self.pieces():
            parts.append(piece)
            if self.received > limit:
                raise too_large(f"the body is over the limit of {limit} bytes")
        return b"".join(parts)

    def _sized(self) -> Iterator[bytes]:
        assert self.length is not None
        while self.received < self.length:
            piece = self._rfile.read(min(PIECE, self.length - self.received))
            if not piece:
                raise UploadInvalid(f"the request body ended after {self.received} of {self.length} bytes")
            self.received += len(piece)
            yield piece

    def _chunked(self) -> Iterator[bytes]:
        while True:
            line = self._line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise UploadInvalid(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise UploadInvalid(f"bad chunk size line {line[:40]!r}")
            if size == 0:
                while self._line():  # trailer fields, ignored
                    pass
                return
            left = size
            while left:
                piece = self._rfile.read(min(PIECE, left))
                if not piece:
                    raise UploadInvalid(f"the request body ended inside a chunk after {self.received} bytes")
                left -= len(piece)
                self.received += len(piece)
                yield piece
            if self._line():
                raise UploadInvalid("a chunk is longer than its size line says")

    def _line(self) -> bytes:
        line = self._rfile.readline(_MAX_LINE + 1)
        if not line.endswith(b"\n"):
            raise UploadInvalid("the chunked request body ended early or has an over-long line")
        return line.rstrip(b"\r\n")


def _content_length(text: str | None) -> int:
    if text is None:
        return 0
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise SizeInvalid(f"Content-Length {text[:40]!r} is not a non-negative integer")
    return int(text)
