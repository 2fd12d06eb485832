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
"""

from __future__ import annotations

import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from cached.errors import DataLoss

HEADER = struct.Struct("<4sB3x32sII")
MAGIC = b"LCK1"
FLAG_ZSTD = 1
_PACK_NAME = re.compile(r"(\d{8})\.pack")


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
        self._lock = threading.Lock()
        self._read_fds: dict[int, int] = {}

    def path(self, pack_id: int) -> Path:
        return self.directory / f"{pack_id:08d}.pack"

    def acquire(self) -> PackWriter:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            pack_id = self._next_id
            self._next_id += 1
        writer = PackWriter(pack_id, self.path(pack_id))
        _fsync_dir(self.directory)
        return writer

    def release(self, writer: PackWriter) -> None:
        if writer.size >= self.max_pack_bytes:
            writer.close()
            return
        with self._lock:
            self._idle.append(writer)

    def read(self, location: Location, chunk_id: bytes, raw_len: int) -> tuple[int, bytes]:
        """Returns (flags, payload) after checking the record header."""
        fd = self._reader(location.pack)
        want = HEADER.size + location.stored_len
        record = os.pread(fd, want, location.offset)
        if len(record) != want:
            raise DataLoss(f"pack {location.pack} is truncated at offset {location.offset}")
        magic, flags, stored_id, stored_raw, stored_len = HEADER.unpack_from(record)
        if (magic, stored_id, stored_raw, stored_len) != (MAGIC, chunk_id, raw_len, location.stored_len):
            raise DataLoss(f"pack {location.pack} offset {location.offset}: record header does not match the index")
        return flags, record[HEADER.size :]

    def disk_bytes(self) -> int:
        total = 0
        for name in os.listdir(self.directory):
            if _PACK_NAME.fullmatch(name):
                total += os.stat(self.directory / name).st_size
        return total

    def _reader(self, pack_id: int) -> int:
        fd = self._read_fds.get(pack_id)
        if fd is not None:
            return fd
        with self._lock:
            fd = self._read_fds.get(pack_id)
            if fd is None:
                try:
                    fd = os.open(self.path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise DataLoss(f"pack {pack_id} is missing") from None
                self._read_fds[pack_id] = fd
            return fd

    def close(self) -> None:
        with self._lock:
            for writer in self._idle:
                writer.close()
            self._idle.clear()
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
