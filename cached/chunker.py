"""Content-defined chunking behind one push-style class.

Blobs are cut with FastCDC (the 2020 variant, via pyfastcdc, whose C core
releases the GIL) so that an edit inside a layer tarball changes only the
chunks around the edit and the rest deduplicate against earlier versions.

Parameters (stored in the index when a store is created, so a store keeps
cutting the same way even if the defaults change):
    min 32 KiB, target 128 KiB, max 512 KiB.
pyfastcdc's effective average is target + min, about 160 KiB, which keeps the
per-chunk costs (an index entry, a hash, a compression call) small against
the data while an edit to one file still invalidates only ~1-2 chunks.

Data arrives as a stream of messages of arbitrary size, so the chunker is
push-based: bytes are buffered until at least one chunk boundary is certain.
A FastCDC cut point depends only on the bytes since the previous cut, so
re-cutting from the start of the last (possibly unfinished) chunk yields the
same boundaries as cutting the whole blob at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyfastcdc import FastCDC


@dataclass(frozen=True, slots=True)
class ChunkParams:
    min_size: int = 32 * 1024
    avg_size: int = 128 * 1024
    max_size: int = 512 * 1024

    def encode(self) -> bytes:
        return f"{self.min_size},{self.avg_size},{self.max_size}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> ChunkParams:
        low, avg, high = (int(v) for v in raw.decode().split(","))
        return cls(low, avg, high)


DEFAULT_PARAMS = ChunkParams()


class Chunker:
    """Feed bytes in, get finished chunks out; call finish() at the end."""

    def __init__(self, params: ChunkParams = DEFAULT_PARAMS) -> None:
        self._cdc = FastCDC(
            params.avg_size, min_size=params.min_size, max_size=params.max_size
        )
        self._buffer = bytearray()
        # Cutting is cheapest on large buffers; several max-size chunks also
        # guarantee that each cut yields finished chunks.
        self._cut_at = 8 * params.max_size

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        self._buffer += data
        if len(self._buffer) < self._cut_at:
            return []
        return self._cut(final=False)

    def finish(self) -> list[bytes]:
        if not self._buffer:
            return []
        return self._cut(final=True)

    def _cut(self, final: bool) -> list[bytes]:
        view = memoryview(self._buffer)
        try:
            lengths = [chunk.length for chunk in self._cdc.cut_buf(view)]
            if not final:
                lengths.pop()  # ends at the buffer's end, not at a cut point
            chunks = []
            start = 0
            for length in lengths:
                chunks.append(bytes(view[start : start + length]))
                start += length
        finally:
            view.release()
        del self._buffer[:start]
        return chunks
