"""Content-defined chunking: stream cutting equals whole-buffer cutting, and edits stay local."""

import hashlib
import random
from pathlib import Path
import sysconfig

from cached.chunker import ChunkParams, Chunker

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def real_bytes(limit: int) -> bytes:
    """Concatenated real stdlib sources, in a fixed order."""
    parts, total = [], 0
    for path in sorted(STDLIB.glob("*.py")):
        data = path.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= limit:
            break
    return b"".join(parts)[:limit]


def cut(data: bytes, feeds: list[int] | None = None) -> list[bytes]:
    chunker = Chunker()
    out, pos = [], 0
    for n in feeds or [len(data)]:
        out += chunker.feed(data[pos : pos + n])
        pos += n
    out += chunker.feed(data[pos:])
    return out + chunker.finish()


def test_feeding_in_any_pieces_gives_the_same_chunks():
    data = real_bytes(12 << 20)
    whole = cut(data)
    assert b"".join(whole) == data
    rng = random.Random(7)
    for _ in range(3):
        feeds = [rng.choice([1, 17, 4096, 65536, 1 << 20, 3 << 20]) for _ in range(40)]
        assert cut(data, feeds) == whole


def test_chunk_sizes_respect_the_parameters():
    params = ChunkParams()
    chunks = cut(real_bytes(16 << 20))
    assert all(len(c) <= params.max_size for c in chunks)
    assert all(len(c) >= params.min_size for c in chunks[:-1])
    average = sum(map(len, chunks)) / len(chunks)
    assert params.min_size < average < params.max_size


def test_an_edit_changes_only_nearby_chunks():
    data = real_bytes(16 << 20)
    edited = data[: 8 << 20] + b"# one edited line\n" + data[8 << 20 :]
    before = {hashlib.sha256(c).digest() for c in cut(data)}
    after = [hashlib.sha256(c).digest() for c in cut(edited)]
    new = [h for h in after if h not in before]
    assert 1 <= len(new) <= 3


def test_empty_and_tiny_inputs():
    assert cut(b"") == []
    assert cut(b"x") == [b"x"]
