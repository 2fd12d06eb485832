"""Chunk pins: the chunk records that in-flight uploads and reads rely on.

An upload skips every chunk the index already holds, even one no blob uses
any more (refcount 0), and only references it when it commits; a read streams
chunks one by one while the blob may be evicted under it. Compaction is the
only thing that deletes chunk records, and it deletes no pinned one.

Pins are per chunk rather than one readers/writer lock around compaction: an
exclusive lock would have to wait for every in-flight upload (a multi-GB layer
takes minutes) and, while waiting, would either starve or stall every new
upload behind it. With pins compaction waits for nobody; it gives up on a pack
that holds a pinned dead chunk and tries again later, and uploads and reads
wait at most for compaction's one short index transaction (`frozen`).

Protocol: pin a chunk id *before* looking it up in the index; compaction
checks pins and deletes records inside `frozen`, which holds the lock until
its transaction has committed. So either the pin came first and compaction
keeps the record, or the commit came first and the lookup sees no record.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


class Pins:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[bytes] = collections.Counter()

    def pin(self, chunk_ids: Iterable[bytes]) -> None:
        with self._lock:
            self._counts.update(chunk_ids)

    def unpin(self, chunk_ids: Iterable[bytes]) -> None:
        with self._lock:
            for chunk_id in chunk_ids:
                left = self._counts[chunk_id] - 1
                if left > 0:
                    self._counts[chunk_id] = left
                else:
                    del self._counts[chunk_id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    @contextmanager
    def frozen(self) -> Iterator[Callable[[bytes], bool]]:
        """Holds off new pins; yields `is_pinned`. Commit inside the block."""
        with self._lock:
            yield self._counts.__contains__
