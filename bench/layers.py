"""Deterministic layer tarballs from real file trees, and near-duplicate versions of them.

Why: a layer cache is judged on real layers (source, bytecode, shared libraries, data files)
and above all on near-duplicates of them, the case it exists for. Random bytes neither chunk,
deduplicate nor compress like layers do. This module turns trees found on any machine that
runs the daemon (the Python stdlib, a site-packages, /usr/share, /usr/lib) into tar layers that
are byte-identical from one build to the next, so tests can pin digests and benchmarks can be
repeated, and derives variants from them without touching the real files.

API
---
    Root(path, prefix=None)          a tree and its path inside the archive; by default its own
                                     absolute path without the leading "/", so every member
                                     sits at the path it has on this machine
    named_root(name)                 "stdlib", "purelib", "usr-share" or "usr-lib" (NAMED_ROOTS)
    plan_layer(roots, max_bytes)     walk the trees once and choose the members: a Plan
    apply_variant(plan, variant)     a Plan with one Variant's edit applied
    write_layer(plan, dest)          stream a Plan as tar to a path or binary stream: a Layer
    build_layer(roots, dest, max_bytes=None, variant=None)
                                     the three above in one call
    near_duplicate_series(dest_dir, roots, max_bytes=None)
                                     base.tar plus one tar per Variant, all from one plan: a
                                     list of Layer (name, description, path, size, sha256, ...)

    python -m bench.layers --root stdlib --max-mb 50 -o out.tar [--variant edit-one-file]
    python -m bench.layers --root usr-lib --root stdlib --root usr-share --max-mb 1024 --series DIR

Determinism
-----------
PAX format; each directory is listed sorted by name and walked depth first (the order of
``tar --sort=name``); mtime 0, uid/gid 0, empty uname/gname; permission bits kept. Symlinks
are stored as symlinks with their target as written and are never followed, so the walk cannot
leave a tree. Hard links are stored as separate regular files. Sockets, devices and fifos are
skipped, as are files and directories that cannot be read; Plan.skipped and Layer.skipped
count them by reason ("special", "unreadable").
Roots must not overlap in the archive: a name found twice raises LayerError.

Size control
------------
With ``max_bytes`` the archive stays under that many bytes and ends close to it. Files are
taken in walk order; a file that does not fit in what is left is passed over (so one large
library does not end the walk early), and the walk of a root stops once less than 1% of its
budget is left. Each root's budget is an equal share of what earlier roots left unused, so a
small root first in the list hands its unused share on, and a combined layer mixes all roots.
A variant is applied to the chosen members, so it may exceed ``max_bytes`` by its additions.

Variants
--------
Each one changes the base plan in exactly these members and nothing else:
    edit-one-file     one line appended to the non-empty .py file nearest the middle of the
                      archive (by bytes)
    upgrade-package   in the top-level package (a directory with __init__.py whose parent has
                      none) nearest the middle of the archive, a line appended to every second
                      .py file, in walk order, and one new module added
    remove-package    that same package removed with everything below it
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import enum
import hashlib
import itertools
import math
import os
import stat
import struct
import sys
import sysconfig
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

__all__ = [
    "MIB",
    "MTIME",
    "NAMED_ROOTS",
    "Layer",
    "LayerError",
    "Member",
    "Plan",
    "Root",
    "Variant",
    "apply_variant",
    "build_layer",
    "main",
    "named_root",
    "near_duplicate_series",
    "plan_layer",
    "write_layer",
]

MTIME = 0
MIB = 1 << 20

NAMED_ROOTS: Mapping[str, str] = {
    "stdlib": sysconfig.get_paths()["stdlib"],
    "purelib": sysconfig.get_paths()["purelib"],
    "usr-share": "/usr/share",
    "usr-lib": "/usr/lib",
}

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(_RECORD)
# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic and version, uname,
# gname, devmajor, devminor, prefix; then padding to one block. struct's "s" truncates and
# NUL-pads as the format wants.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_USTAR_MAGIC = b"ustar\x0000"
_USTAR_NAME = 100
_USTAR_SIZE_LIMIT = 8**11  # eleven octal digits
_ZERO_ID = b"0000000\0"  # uid and gid 0
# The end of an archive: two zero blocks, then zeros up to a whole record, as tar writes it.
_TRAILER_MAX = 2 * _BLOCK + _RECORD - _BLOCK
# Hashing and writing run once per 8 MiB, not once per file; two such buffers are all the
# memory a build holds, whatever the size of the layer.
_BUFFER_SIZE = 8 * MIB
# Past this share of a root's budget only files smaller than the remainder could still be
# added; hunting for them would walk the rest of the tree to gather scraps from all over it.
_SLACK = 0.01

_EDIT_LINE = b"# edited by bench.layers (edit-one-file)\n"
_UPGRADE_LINE = b"# upgraded by bench.layers (upgrade-package)\n"
_UPGRADE_MODULE = "_bench_layers_upgrade.py"
_UPGRADE_MODULE_TEXT = b'"""Added by the upgrade-package variant of bench.layers."""\n'


class LayerError(Exception):
    """A layer cannot be built as asked: roots overlap, a tree changed, a variant finds nothing."""


@dataclass(frozen=True)
class Root:
    """A tree to archive and the path it gets inside the archive."""

    path: str
    prefix: str | None = None

    @property
    def archive_prefix(self) -> str:
        if self.prefix is None:
            return os.path.abspath(self.path).lstrip("/")
        return self.prefix.strip("/")


def named_root(name: str) -> Root:
    """One of NAMED_ROOTS, stored under its absolute path."""
    return Root(NAMED_ROOTS[name])


@dataclass(frozen=True, slots=True)
class Member:
    """One archive entry. A regular file's content is the bytes of ``source`` then ``extra``."""

    name: str
    type: bytes  # tarfile.REGTYPE, DIRTYPE or SYMTYPE
    mode: int
    source: str | None = None
    size: int = 0  # of source, when planned; checked again when written
    extra: bytes = b""  # a variant's appended bytes, or all of a new file
    linkname: str = ""

    @property
    def data_size(self) -> int:
        return self.size + len(self.extra)


@dataclass(frozen=True)
class Plan:
    """The members of a layer, in archive order, and what the walk skipped."""

    members: tuple[Member, ...]
    skipped: Mapping[str, int]
    name: str = "base"
    description: str = "the trees as they are"


@dataclass(frozen=True)
class Layer:
    """A written layer. ``path`` is None when it was written to a stream."""

    name: str
    description: str
    path: str | None
    size: int
    sha256: str
    members: int
    skipped: Mapping[str, int]


class Variant(enum.StrEnum):
    EDIT_ONE_FILE = "edit-one-file"
    UPGRADE_PACKAGE = "upgrade-package"
    REMOVE_PACKAGE = "remove-package"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _ustar(name: bytes, typeflag: bytes, mode: int, size: int, linkname: bytes = b"") -> bytes:
    """One ustar header block with our fixed owner and mtime, its checksum filled in."""
    numbers = (b"%07o\0" % mode, _ZERO_ID, _ZERO_ID, b"%011o\0" % size, b"%011o\0" % MTIME)
    no_owner_or_device = (b"", b"", b"", b"")
    block = _USTAR.pack(
        name, *numbers, b" " * 8, typeflag, linkname, _USTAR_MAGIC, *no_owner_or_device, b""
    )
    # The checksum is the byte sum taken with its own field as spaces: six octal digits, NUL,
    # and the last space kept.
    return b"%s%06o\0%s" % (block[:148], sum(block), block[155:])


def _pax_record(keyword: str, value: bytes) -> bytes:
    body = b" %s=%s\n" % (keyword.encode("ascii"), value)
    length = len(body)
    # The leading length counts its own digits.
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return b"%d%s" % (length, body)


def _pax_header(fields: Mapping[str, str]) -> bytes:
    """A PAX extended header. Values that are not valid UTF-8 (names with undecodable bytes,
    kept as surrogate escapes) are stored as their raw bytes under hdrcharset=BINARY."""
    try:
        values = [value.encode("utf-8") for value in fields.values()]
        records = b""
    except UnicodeEncodeError:
        values = [value.encode("utf-8", "surrogateescape") for value in fields.values()]
        records = _pax_record("hdrcharset", b"BINARY")
    records += b"".join(map(_pax_record, fields, values))
    padding = _ZEROS[: -len(records) % _BLOCK]
    return _ustar(b"././@PaxHeader", tarfile.XHDTYPE, 0, len(records)) + records + padding


def _header(member: Member) -> bytes:
    """The member's header, byte for byte what ``tarfile`` writes in PAX format: a ustar
    block, after an extended header when a name is too long or not ASCII, or the size too
    large for the ustar field. Written here because tarfile takes ten times as long."""
    name = member.name + "/" if member.type == tarfile.DIRTYPE else member.name
    size = member.data_size if member.type == tarfile.REGTYPE else 0
    fields: dict[str, str] = {}
    if not name.isascii() or len(name) > _USTAR_NAME:
        fields["path"] = name
    if not member.linkname.isascii() or len(member.linkname) > _USTAR_NAME:
        fields["linkpath"] = member.linkname
    if size >= _USTAR_SIZE_LIMIT:
        fields["size"] = str(size)
        size = 0
    ustar = _ustar(
        name.encode("ascii", "replace"),
        member.type,
        member.mode,
        size,
        member.linkname.encode("ascii", "replace"),
    )
    return _pax_header(fields) + ustar if fields else ustar


def _padded(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


def _cost(member: Member) -> int:
    """Bytes the member takes in the archive."""
    return len(_header(member)) + _padded(member.data_size)


def _walk_key(member: Member) -> list[str]:
    # Comparing names component by component gives the sorted depth-first walk order.
    return member.name.split("/")


def _inside(name: str, directory: str) -> bool:
    return name == directory or name.startswith(directory + "/")


class _Planner:
    """Walks roots in order, choosing members until each root's budget is spent."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.skipped: Counter[str] = Counter()
        self.used = 0
        self._limit = math.inf
        self._stop_below = 0.0

    def add_root(self, root: Root, limit: float) -> None:
        self._limit = limit
        self._stop_below = (limit - self.used) * _SLACK if math.isfinite(limit) else 0.0
        info = os.stat(root.path)  # the root itself may be reached through a symlink
        if not stat.S_ISDIR(info.st_mode):
            raise LayerError(f"root {root.path} is not a directory")
        prefix = root.archive_prefix
        if not prefix or self._take(Member(prefix, tarfile.DIRTYPE, stat.S_IMODE(info.st_mode))):
            self._add_directory(root.path, prefix)

    def _full(self) -> bool:
        return self._limit - self.used < self._stop_below

    def _take(self, member: Member) -> bool:
        cost = _cost(member)
        if self.used + cost > self._limit:
            return False
        self.members.append(member)
        self.used += cost
        return True

    def _add_directory(self, path: str, name: str) -> None:
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            self.skipped["unreadable"] += 1
            return
        for entry in entries:
            if self._full():
                return
            member = self._member(entry, _join(name, entry.name))
            if member is not None and self._take(member) and member.type == tarfile.DIRTYPE:
                self._add_directory(entry.path, member.name)

    def _member(self, entry: os.DirEntry[str], name: str) -> Member | None:
        """The member for one directory entry, or None, counted, for what a layer skips."""
        try:
            info = entry.stat(follow_symlinks=False)
            perms = stat.S_IMODE(info.st_mode)
            if stat.S_ISDIR(info.st_mode):
                return Member(name, tarfile.DIRTYPE, perms)
            if stat.S_ISLNK(info.st_mode):
                return Member(name, tarfile.SYMTYPE, perms, linkname=os.readlink(entry.path))
            if stat.S_ISREG(info.st_mode) and os.access(entry.path, os.R_OK):
                return Member(name, tarfile.REGTYPE, perms, entry.path, info.st_size)
            reason = "unreadable" if stat.S_ISREG(info.st_mode) else "special"
        except OSError:  # vanished since the listing
            reason = "unreadable"
        self.skipped[reason] += 1
        return None


def plan_layer(roots: Iterable[Root], max_bytes: int | None = None) -> Plan:
    """Choose the members of a layer of ``roots``, in order, within about ``max_bytes``."""
    roots = list(roots)
    planner = _Planner()
    for index, root in enumerate(roots):
        if max_bytes is None:
            limit = math.inf
        else:
            unused = max_bytes - _TRAILER_MAX - planner.used
            limit = planner.used + unused / (len(roots) - index)
        planner.add_root(root, limit)
    names = [member.name for member in planner.members]
    if len(set(names)) != len(names):
        twice = next(name for name, count in Counter(names).items() if count > 1)
        raise LayerError(f"roots overlap in the archive: {twice!r} would be stored twice")
    return Plan(tuple(planner.members), dict(planner.skipped))


def _nearest_middle(plan: Plan, indices: list[int], what: str) -> Member:
    """Of the members at ``indices``, the one that starts nearest the middle of the archive."""
    if not indices:
        raise LayerError(f"the layer has no {what} for this variant")
    starts = [0, *itertools.accumulate(map(_cost, plan.members))]
    middle = starts[-1] // 2
    return plan.members[min(indices, key=lambda index: abs(starts[index] - middle))]


def _middle_package(plan: Plan) -> str:
    names = {member.name for member in plan.members if member.type == tarfile.REGTYPE}
    packages = [
        index
        for index, member in enumerate(plan.members)
        if member.type == tarfile.DIRTYPE
        and f"{member.name}/__init__.py" in names
        and f"{os.path.dirname(member.name)}/__init__.py" not in names
    ]
    return _nearest_middle(plan, packages, "Python package").name


def _is_python(member: Member) -> bool:
    return member.type == tarfile.REGTYPE and member.name.endswith(".py")


def _edit_one_file(plan: Plan) -> Plan:
    # Not an empty file: appending to one would change no bytes that were there before.
    sources = [i for i, member in enumerate(plan.members) if _is_python(member) and member.size]
    edited = _nearest_middle(plan, sources, "non-empty .py file")
    members = [
        replace(member, extra=member.extra + _EDIT_LINE) if member.name == edited.name else member
        for member in plan.members
    ]
    return replace(plan, members=tuple(members), description=f"appended one line to {edited.name}")


def _upgrade_package(plan: Plan) -> Plan:
    package = _middle_package(plan)
    members: list[Member] = []
    python_files = edited = 0
    for member in plan.members:
        if _inside(member.name, package) and _is_python(member):
            if python_files % 2 == 0:
                member = replace(member, extra=member.extra + _UPGRADE_LINE)
                edited += 1
            python_files += 1
        members.append(member)
    added = Member(
        f"{package}/{_UPGRADE_MODULE}", tarfile.REGTYPE, 0o644, extra=_UPGRADE_MODULE_TEXT
    )
    if any(member.name == added.name for member in members):
        raise LayerError(f"{added.name} is already in the layer")
    start = next(i for i, member in enumerate(members) if member.name == package)
    end = start + sum(1 for member in members if _inside(member.name, package))
    members.insert(bisect.bisect(members, _walk_key(added), start, end, key=_walk_key), added)
    description = (
        f"upgraded {package}/: appended a line to {edited} of its {python_files} .py files"
        f" and added {_UPGRADE_MODULE}"
    )
    return replace(plan, members=tuple(members), description=description)


def _remove_package(plan: Plan) -> Plan:
    package = _middle_package(plan)
    members = tuple(member for member in plan.members if not _inside(member.name, package))
    removed = len(plan.members) - len(members)
    return replace(plan, members=members, description=f"removed {package}/ ({removed} members)")


_VARIANTS: Mapping[Variant, Callable[[Plan], Plan]] = {
    Variant.EDIT_ONE_FILE: _edit_one_file,
    Variant.UPGRADE_PACKAGE: _upgrade_package,
    Variant.REMOVE_PACKAGE: _remove_package,
}


def apply_variant(plan: Plan, variant: Variant | str) -> Plan:
    """``plan`` with one variant's edit applied, named after the variant."""
    variant = Variant(variant)
    return replace(_VARIANTS[variant](plan), name=variant.value)


class _Sink:
    """The archive on its way out, through two large buffers.

    File contents are read straight into the current buffer, so each byte is copied once in
    user space. A full buffer is hashed and written by one writer thread while the caller
    fills the other: hashing, writing and reading release the GIL, so on two cores the
    per-member work (headers, opens) overlaps the bulk work instead of adding to it.
    """

    def __init__(self, stream: BinaryIO, writer: ThreadPoolExecutor) -> None:
        self._stream = stream
        self._writer = writer
        self._buffer = memoryview(bytearray(_BUFFER_SIZE))
        self._spare = memoryview(bytearray(_BUFFER_SIZE))
        self._spare_job: Future[None] | None = None  # still reading the spare buffer
        self._used = 0
        self._flushed = 0
        self._sha256 = hashlib.sha256()

    @property
    def size(self) -> int:
        return self._flushed + self._used

    def _room(self, wanted: int) -> memoryview:
        """Up to ``wanted`` bytes of free buffer, flushing first if none is free."""
        if self._used == len(self._buffer):
            self.flush()
        return self._buffer[self._used : self._used + wanted]

    def put(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self._room(len(view))
            room[:] = view[: len(room)]
            self._used += len(room)
            view = view[len(room) :]

    def put_file(self, fd: int, size: int, name: str) -> None:
        left = size
        while left:
            count = os.readv(fd, [self._room(left)])
            if not count:
                raise LayerError(f"{name} shrank while it was being archived")
            self._used += count
            left -= count

    def pad(self, unit: int = _BLOCK) -> None:
        self.put(_ZEROS[: -self.size % unit])

    def _drain(self, data: memoryview) -> None:
        self._sha256.update(data)
        self._stream.write(data)

    def flush(self) -> None:
        """Hand the current buffer to the writer and continue in the spare one."""
        job = self._writer.submit(self._drain, self._buffer[: self._used])
        self.wait()
        self._spare_job = job
        self._buffer, self._spare = self._spare, self._buffer
        self._flushed += self._used
        self._used = 0

    def wait(self) -> None:
        """Wait until the writer is done with the spare buffer; raise what it raised."""
        if self._spare_job is not None:
            self._spare_job.result()

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


@contextlib.contextmanager
def _opened(member: Member) -> Iterator[int | None]:
    """The member's source file, open and checked against the plan; None for no source."""
    if member.source is None:
        yield None
        return
    # O_NOFOLLOW: a symlink put in the file's place since planning is not followed.
    fd = os.open(member.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != member.size:
            raise LayerError(f"{member.source} changed size since the layer was planned")
        yield fd
    finally:
        os.close(fd)


def _write_tar(members: Iterable[Member], stream: BinaryIO) -> tuple[int, str]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="layer-writer") as writer:
        sink = _Sink(stream, writer)
        _put_members(sink, members)
        sink.flush()
        sink.wait()
    return sink.size, sink.hexdigest()


def _put_members(sink: _Sink, members: Iterable[Member]) -> None:
    for member in members:
        with _opened(member) as fd:
            sink.put(_header(member))
            if fd is not None:
                sink.put_file(fd, member.size, member.name)
        sink.put(member.extra)
        sink.pad()
    sink.put(_ZEROS[: 2 * _BLOCK])
    sink.pad(_RECORD)


def write_layer(plan: Plan, dest: str | os.PathLike[str] | BinaryIO) -> Layer:
    """Write ``plan`` as a tar to a path (complete or not at all) or to a binary stream."""
    if isinstance(dest, (str, os.PathLike)):
        path: str | None = os.fspath(dest)
        partial = f"{path}.{os.getpid()}.partial"
        try:
            with open(partial, "wb") as stream:
                size, sha256 = _write_tar(plan.members, stream)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
    else:
        path = None
        size, sha256 = _write_tar(plan.members, dest)
    return Layer(plan.name, plan.description, path, size, sha256, len(plan.members), plan.skipped)


def build_layer(
    roots: Iterable[Root],
    dest: str | os.PathLike[str] | BinaryIO,
    max_bytes: int | None = None,
    variant: Variant | str | None = None,
) -> Layer:
    """Plan a layer of ``roots``, apply ``variant`` if given, and write it to ``dest``."""
    plan = plan_layer(roots, max_bytes)
    if variant is not None:
        plan = apply_variant(plan, variant)
    return write_layer(plan, dest)


def near_duplicate_series(
    dest_dir: str | os.PathLike[str], roots: Iterable[Root], max_bytes: int | None = None
) -> list[Layer]:
    """Write ``base.tar`` and ``<variant>.tar`` for every Variant into ``dest_dir``.

    All come from one walk, so the variants differ from the base only by their edits.
    """
    os.makedirs(dest_dir, exist_ok=True)
    base = plan_layer(roots, max_bytes)
    plans = [base, *(apply_variant(base, variant) for variant in Variant)]
    return [write_layer(plan, os.path.join(dest_dir, f"{plan.name}.tar")) for plan in plans]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.layers",
        description="Build deterministic layer tarballs from real file trees.",
    )
    parser.add_argument(
        "--root",
        action="append",
        required=True,
        help=f"one of {', '.join(NAMED_ROOTS)}, or a directory; repeat to combine",
    )
    parser.add_argument("--max-mb", type=float, help="stop at about this many MiB")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("-o", "--output", help="the tar to write")
    output.add_argument("--series", metavar="DIR", help="write base.tar and one tar per variant")
    parser.add_argument("--variant", choices=[variant.value for variant in Variant])
    args = parser.parse_args(argv)
    if args.series and args.variant:
        parser.error("--variant goes with -o; --series writes every variant")

    roots = [named_root(root) if root in NAMED_ROOTS else Root(root) for root in args.root]
    max_bytes = None if args.max_mb is None else int(args.max_mb * MIB)
    started = time.perf_counter()
    try:
        if args.series:
            layers = near_duplicate_series(args.series, roots, max_bytes)
        else:
            layers = [build_layer(roots, args.output, max_bytes, args.variant)]
    except LayerError as error:
        parser.exit(1, f"error: {error}\n")
    seconds = time.perf_counter() - started

    for layer in layers:
        print(f"{layer.path}\t{layer.size} bytes\tsha256:{layer.sha256}")
        print(f"\t{layer.name}: {layer.description}; {layer.members} members")
    skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(layers[0].skipped.items()))
    total = sum(layer.size for layer in layers) / MIB
    print(f"skipped: {skipped or 'nothing'}")
    print(f"{total:.1f} MiB in {seconds:.2f} s: {total / seconds:.0f} MiB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
