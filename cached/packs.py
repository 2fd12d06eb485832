"""Append-only pack files holding chunk bytes.

Chunks are not stored one file per chunk: a store of millions of 160 KiB
chunks would be millions of inodes and a directory scan on every start.
Instead each upload borrows a *pack writer* from a pool for its whole
duration and appends its new chunks to that pack with no lock held, so
concurrent uploads never contend on data. An upload that fails truncates its
pack back to where it started, so an aborted upload leaves no bytes behind.

Record layout, little-endian:
    magic "LCK1" | flags u8 | 3 pad | chunk id (blake3, 32 bytes)
    | raw length u32 | stored length u32 | stored bytes
The header repeats what the index knows so that a reader can check that the
index points at the record it expects, and an offline tool could rebuild the
index from packs alone.

Durability order (the index relies on it): a writer's records are fsynced
(`sync`) before the index transaction that references them commits, and a new
pack file's directory entry is fsynced when the file is created.

Compaction (cached/compaction.py) deletes whole packs. A pack is only ever
compacted while no writer holds it (`closed_packs`). Readers hold a pack's file
descriptor only for the length of one `read` (counted), so deleting a pack
unlinks the file first (new opens fail with PackGone, and the reader looks the
chunk up again) and closes the cached descriptor once its last reader is done.
"""

from __future__ import annotations

import os
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cached.errors import DataLoss

HEADER = struct.Struct("<4sB3x32sII")
MAGIC = b"LCK1"
FLAG_ZSTD = 1
_PACK_NAME = re.compile(r"(\d{8})\.pack")


# Read descriptors kept open between reads; past this many, a pack's
# descriptor is closed as soon as its last reader is done with it.
MAX_IDLE_READERS = 64


class PackGone(Exception):
    """The pack was deleted by compaction; the chunk has moved, look it up again."""


class _Reader:
    __slots__ = ("fd", "users", "retired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.retired = False


@dataclass(frozen=True, slots=True)
class Location:
    pack: int
    offset: int
    stored_len: int  # payload bytes after the header


class PackWriter:
    """Exclusive appender to one pack file while an upload holds it."""

    def __init__(self, pack_id: int, path: Path) -> None:
        self.pack_id = pack_id
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def append(self, chunk_id: bytes, raw_len: int, payload: bytes, flags: int) -> Location:
        offset = self.size
        header = HEADER.pack(MAGIC, flags, chunk_id, raw_len, len(payload))
        written = os.pwritev(self._fd, [header, payload], offset)
        if written != len(header) + len(payload):
            # A short write only happens when the disk fills; the caller rolls back.
            raise OSError(28, "short write to pack file")
        self.size = offset + written
        return Location(self.pack_id, offset, len(payload))

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self.size = size

    def close(self) -> None:
        os.close(self._fd)


class Packs:
    """The pack directory: a pool of writers and positional readers."""

    def __init__(self, directory: Path, max_pack_bytes: int = 1 << 30) -> None:
        self.directory = directory
        self.max_pack_bytes = max_pack_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = [int(m.group(1)) for m in map(_PACK_NAME.fullmatch, os.listdir(directory)) if m]
        self._next_id = max(existing, default=0) + 1
        self._idle: list[PackWriter] = []
        self._busy: set[int] = set()  # packs held by a writer or idle in the pool
        self._lock = threading.Lock()
        self._readers: dict[int, _Reader] = {}

    def path(self, pack_id: int) -> Path:
        return self.directory / f"{pack_id:08d}.pack"

    def acquire(self) -> PackWriter:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            pack_id = self._next_id
            self._next_id += 1
            self._busy.add(pack_id)
        try:
            writer = PackWriter(pack_id, self.path(pack_id))
            _fsync_dir(self.directory)
        except BaseException:
            with self._lock:
                self._busy.discard(pack_id)
            raise
        return writer

    def release(self, writer: PackWriter) -> None:
        if writer.size >= self.max_pack_bytes:
            writer.close()
            with self._lock:
                self._busy.discard(writer.pack_id)
            return
        with self._lock:
            self._idle.append(writer)

    def closed_packs(self) -> dict[int, int]:
        """Pack id -> file size of every pack no writer holds (compaction candidates)."""
        with self._lock:
            busy = set(self._busy)
        sizes = {}
        for name in os.listdir(self.directory):
            match = _PACK_NAME.fullmatch(name)
            if match and int(match.group(1)) not in busy:
                try:
                    sizes[int(match.group(1))] = os.stat(self.directory / name).st_size
                except FileNotFoundError:
                    continue
        return sizes

    def delete(self, pack_id: int) -> None:
        """Removes a pack that no index record points into any more."""
        os.unlink(self.path(pack_id))
        _fsync_dir(self.directory)
        with self._lock:
            reader = self._readers.pop(pack_id, None)
            if reader is not None:
                reader.retired = True
                if reader.users == 0:
                    os.close(reader.fd)

    def read(self, location: Location, chunk_id: bytes, raw_len: int) -> tuple[int, bytes]:
        """Returns (flags, payload) after checking the record header.
        Raises PackGone when compaction deleted the pack meanwhile."""
        reader = self._open_reader(location.pack)
        want = HEADER.size + location.stored_len
        try:
            record = os.pread(reader.fd, want, location.offset)
        finally:
            self._close_reader(reader)
        if len(record) != want:
            raise DataLoss(f"pack {location.pack} is truncated at offset {location.offset}")
        magic, flags, stored_id, stored_raw, stored_len = HEADER.unpack_from(record)
        if (magic, stored_id, stored_raw, stored_len) != (MAGIC, chunk_id, raw_len, location.stored_len):
            raise DataLoss(f"pack {location.pack} offset {location.offset}: record header does not match the index")
        return flags, record[HEADER.size :]

    def scan(self, pack_id: int) -> Iterator[tuple[Location, bytes, int, int]]:
        """(location, chunk id, raw length, flags) of each record in file
        order; stops at a torn or foreign tail (bytes no record describes)."""
        with open(self.path(pack_id), "rb", buffering=0) as file:
            size = os.fstat(file.fileno()).st_size
            offset = 0
            while offset + HEADER.size <= size:
                magic, flags, chunk_id, raw_len, stored_len = HEADER.unpack(os.pread(file.fileno(), HEADER.size, offset))
                if magic != MAGIC or offset + HEADER.size + stored_len > size:
                    return
                yield Location(pack_id, offset, stored_len), chunk_id, raw_len, flags
                offset += HEADER.size + stored_len

    def disk_bytes(self) -> int:
        total = 0
        for name in os.listdir(self.directory):
            if _PACK_NAME.fullmatch(name):
                try:
                    total += os.stat(self.directory / name).st_size
                except FileNotFoundError:
                    continue  # compacted away since the listing
        return total

    def _open_reader(self, pack_id: int) -> _Reader:
        with self._lock:
            reader = self._readers.get(pack_id)
            if reader is None:
                try:
                    fd = os.open(self.path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise PackGone(pack_id) from None
                reader = self._readers[pack_id] = _Reader(fd)
            reader.users += 1
            return reader

    def _close_reader(self, reader: _Reader) -> None:
        with self._lock:
            reader.users -= 1
            if reader.users or not (reader.retired or len(self._readers) > MAX_IDLE_READERS):
                return
            if not reader.retired:
                reader.retired = True
                del self._readers[next(k for k, v in self._readers.items() if v is reader)]
            os.close(reader.fd)

    def close(self) -> None:
        with self._lock:
            for writer in self._idle:
                writer.close()
            self._idle.clear()
            for reader in self._readers.values():
                os.close(reader.fd)
            self._readers.clear()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
