"""Keeps the store within `max_bytes` by evicting least-recently-used blobs.

Two paths, one mechanism (`BlobStore.evict_oldest`, small write transactions
that also drop the instruction-cache entries naming each evicted blob, so a
Lookup never hits an entry whose blobs are gone):

- in the background, a thread keeps stored bytes under the low watermark, so
  that commits normally find room and never wait;
- when a commit would still take stored bytes over `max_bytes` (a burst
  faster than the background), the committing upload evicts in its own
  thread (`make_room`) before it becomes visible, down to the low watermark
  again so that one burst does not make every following commit evict. Only a
  blob that cannot fit even in an empty cache is refused (StoreFull).

Evicting never blocks serving for long: each transaction removes at most
`_BATCH` blobs, and reads of an evicted blob already under way finish (their
chunks are pinned; compaction reclaims the space afterwards).
"""

from __future__ import annotations

import logging
import threading

from cached.background import Periodic
from cached.errors import StoreFull
from cached.records import InstructionCache
from cached.store import BlobStore

log = logging.getLogger(__name__)

_BATCH = 16
_POLL_SECONDS = 0.5


class Evictor:
    def __init__(self, store: BlobStore, cache: InstructionCache) -> None:
        self.store = store
        self.cache = cache
        self.max_bytes = store.config.max_bytes
        self.low_bytes = int(self.max_bytes * store.config.low_watermark)
        self._lock = threading.Lock()  # one eviction at a time; the others wait and re-check
        self._background = Periodic("evictor", _POLL_SECONDS, self._keep_under_watermark)
        store.set_reclaimer(self.make_room)

    def start(self) -> None:
        self._background.start()

    def close(self) -> None:
        self._background.close()

    def make_room(self, incoming: int) -> None:
        """Frees space for `incoming` more stored bytes, or raises StoreFull."""
        if incoming > self.max_bytes:
            raise StoreFull(f"the blob needs {incoming} stored bytes, more than the whole cache bound of {self.max_bytes}")
        stored = self.evict_to(min(self.low_bytes, self.max_bytes - incoming))
        if stored + incoming > self.max_bytes:
            raise StoreFull(f"the cache is full: {stored} of {self.max_bytes} bytes are in use and nothing more can be evicted")

    def evict_to(self, target: int) -> int:
        """Evicts until stored bytes are at most `target` (or nothing is left);
        returns the stored bytes then."""
        evicted = 0
        with self._lock:
            while True:
                count, stored, remaining = self.store.evict_oldest(target, _BATCH, self.cache.drop_entries_of)
                evicted += count
                if stored <= target or not remaining:
                    break
        if evicted:
            log.info("evicted %d blobs; %d bytes stored (bound %d)", evicted, stored, self.max_bytes)
        return stored

    def _keep_under_watermark(self) -> None:
        if self.store.stored_bytes() > self.low_bytes:
            self.evict_to(self.low_bytes)
