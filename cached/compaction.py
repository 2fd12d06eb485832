"""Reclaims pack space held by dead chunks (refcount 0) by rewriting packs.

A closed pack whose dead share reaches `compact_dead_fraction` is compacted:

1. scan its records and, in a read transaction, pick those whose index record
   still points at them with a refcount above zero (the live ones);
2. copy the live ones to a pack borrowed from the pool and fsync it, with no
   lock held (this is the slow part);
3. in one short write transaction, holding off new pins: repoint the copied
   records, delete the dead ones, move the pack's live-bytes counter;
4. delete the old pack file (readers that looked a chunk up before step 3
   finish on their open descriptor or, failing to open the file, look the
   chunk up again; see cached/packs.py).

Step 3 gives up on the pack (and compaction tries it again later) if a dead
chunk is pinned by an upload that skipped it or a read still streaming it, or
if a dead chunk came back to life after the scan; the copy is truncated away.
So no upload ever commits a reference to a deleted record, and no read loses a
chunk it was promised. A crash before step 3 leaves garbage in the borrowed
pack; a crash after it leaves the old pack file, which then has no live bytes
and is deleted by the next pass.
"""

from __future__ import annotations

import logging

from cached.background import Periodic
from cached.index import pack_live
from cached.packs import HEADER, Location
from cached.store import BlobStore

log = logging.getLogger(__name__)

_POLL_SECONDS = 1.0


class _Busy(Exception):
    """A dead chunk of the pack is pinned or came back; try the pack later."""


class Compactor:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.dead_fraction = store.config.compact_dead_fraction
        self._failed: set[int] = set()  # packs that could not be read; left for `verify`
        self._background = Periodic("compaction", _POLL_SECONDS, self.run_once)

    def start(self) -> None:
        self._background.start()

    def close(self) -> None:
        self._background.close()

    def candidates(self) -> list[int]:
        """Closed packs dead enough to rewrite, the most dead bytes first."""
        sizes = self.store.packs.closed_packs()
        index = self.store.index
        with index.read() as txn:
            dead = {pack_id: size - index.counter(txn, pack_live(pack_id)) for pack_id, size in sizes.items()}
        chosen = [
            pack_id
            for pack_id, size in sizes.items()
            if pack_id not in self._failed and (size == 0 or dead[pack_id] >= size * self.dead_fraction)
        ]
        return sorted(chosen, key=lambda pack_id: -dead[pack_id])

    def run_once(self) -> int:
        """Compacts every candidate pack it can; returns how many it removed."""
        done = 0
        for pack_id in self.candidates():
            if self._background.stopping:
                break
            try:
                done += self.compact(pack_id)
            except Exception:
                self._failed.add(pack_id)
                log.exception("compacting pack %d failed; leaving it alone", pack_id)
        return done

    def compact(self, pack_id: int) -> bool:
        store, index, packs = self.store, self.store.index, self.store.packs
        records = list(packs.scan(pack_id))
        with index.read() as txn:
            live = []
            for location, chunk_id, raw_len, flags in records:
                record = index.get_chunk(txn, chunk_id)
                if record is not None and (record.pack, record.offset) == (pack_id, location.offset) and record.refcount:
                    live.append((location, chunk_id, raw_len, flags))
        writer = packs.acquire() if live else None
        start = writer.size if writer else 0
        moved: dict[bytes, Location] = {}
        try:
            if writer is not None:
                for location, chunk_id, raw_len, flags in live:
                    _, payload = packs.read(location, chunk_id, raw_len)
                    moved[chunk_id] = writer.append(chunk_id, raw_len, payload, flags)
                writer.sync()
            chunks = index.db["chunks"]
            with store.pins.frozen() as pinned, index.write() as txn:
                now_live = 0
                for location, chunk_id, _, _ in records:
                    record = index.get_chunk(txn, chunk_id)
                    if record is None or (record.pack, record.offset) != (pack_id, location.offset):
                        continue  # a copy nobody points at (a lost race, a repaired chunk)
                    new = moved.get(chunk_id)
                    if new is not None:
                        record.pack, record.offset = new.pack, new.offset
                        index.put_chunk(txn, chunk_id, record)
                        if record.refcount:
                            now_live += HEADER.size + record.stored_len
                    elif record.refcount == 0 and not pinned(chunk_id):
                        txn.delete(chunk_id, db=chunks)
                    else:
                        raise _Busy(pack_id)
                index.drop_counter(txn, pack_live(pack_id))
                if writer is not None:
                    index.add(txn, pack_live(writer.pack_id), now_live)
        except BaseException as exc:
            if writer is not None:
                writer.truncate(start)  # the copies are referenced by nothing
            if isinstance(exc, _Busy):
                return False
            raise
        finally:
            if writer is not None:
                packs.release(writer)
        packs.delete(pack_id)
        log.info("compacted pack %d: %d live chunks moved", pack_id, len(moved))
        return True

