"""The build context: what a COPY or ADD puts into a layer, and its checksum.

A COPY's key must change exactly when the layer it makes would change. So we
describe the layer first, as ``Entry`` values (path in the layer, type, mode
bits, owner, content digest or symlink target), and the checksum is taken over
that description, never over the host's view of the files:

- owners are the ones the layer will carry (``--chown`` or 0:0), so the host
  user who checked the tree out does not matter, and ``--chown`` does;
- mode bits are the source's (or ``--chmod``); mtime and atime never enter;
- files and symlinks are hashed by content and target; directories hash their
  entries sorted by name (a Merkle tree), so a rename, a new file or a new
  symlink changes the root and only its own branch;
- ``.dockerignore`` is applied before anything is read: an ignored file never
  reaches an Entry, so it cannot affect a key.

Matching follows Docker's .dockerignore rules: ``*`` and ``?`` stay within one
path component, ``**`` spans any number, ``!`` re-includes, the last matching
pattern wins, and a pattern that matches a directory excludes what is under it.

``summarize`` turns the entries into a compact listing that fits in a cache
record's metadata, folding deep directories into their subtree digest when the
full listing would be too large; ``layercache why`` compares two listings.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20
_WILDCARD = re.compile(r"[*?\[]")


class ContextError(ValueError):
    """A source is missing, escapes the context, or cannot be put in a layer."""


@dataclass(frozen=True)
class Entry:
    """One path of a layer as a COPY or ADD will write it."""

    path: str  # in the layer, relative to "/"
    kind: str  # "file", "dir" or "symlink"
    mode: int  # permission bits, including setuid/setgid/sticky
    uid: int
    gid: int
    size: int = 0
    digest: str = ""  # sha256 of the content, for files
    link: str = ""  # target, for symlinks
    origin: str = ""  # context-relative source path (the archive, for archive members)
    member: str = ""  # the member name, for files taken from an archive

    def record(self) -> str:
        """The canonical text the checksum covers (see docs/keys.md)."""
        if self.kind == "symlink":
            return f"symlink {self.uid}:{self.gid} {self.link}"
        if self.kind == "dir":
            return f"dir {self.mode:04o} {self.uid}:{self.gid}"
        return f"file {self.mode:04o} {self.uid}:{self.gid} {self.digest}"

    def short_record(self) -> str:
        if self.kind == "file":
            return self.record()[: -len(self.digest)] + self.digest.removeprefix("sha256:")[:16]
        return self.record()

    def open(self, context_dir: str | os.PathLike[str]) -> BinaryIO:
        source = Path(context_dir, self.origin)
        if not self.member:
            return source.open("rb")
        archive = tarfile.open(source, "r:*")
        extracted = archive.extractfile(self.member)
        if extracted is None:
            raise ContextError(f"{self.origin}: member {self.member} has no content")
        return _ClosingMember(extracted, archive)


class _ClosingMember:
    """A member's file object that closes its archive with it."""

    def __init__(self, member: BinaryIO, archive: tarfile.TarFile) -> None:
        self._member = member
        self._archive = archive

    def read(self, size: int = -1) -> bytes:
        return self._member.read(size)

    def close(self) -> None:
        self._member.close()
        self._archive.close()

    def __enter__(self) -> _ClosingMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- .dockerignore


class DockerIgnore:
    def __init__(self, patterns: Iterable[str]) -> None:
        self._rules: list[tuple[re.Pattern[str], bool]] = []
        for line in patterns:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = posixpath.normpath(line[1:].strip() if include else line).lstrip("/")
            self._rules.append((_pattern_regex(pattern), include))
        self.has_exceptions = any(include for _, include in self._rules)

    @classmethod
    def load(cls, context_dir: str | os.PathLike[str]) -> DockerIgnore:
        path = Path(context_dir, ".dockerignore")
        return cls(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [])

    def excludes(self, path: str) -> bool:
        """Whether a context-relative POSIX path is left out of the context."""
        candidates = [path]
        while "/" in candidates[-1]:
            candidates.append(candidates[-1].rsplit("/", 1)[0])
        excluded = False
        for regex, include in self._rules:
            if include == excluded and any(regex.fullmatch(c) for c in candidates):
                excluded = not include
        return excluded


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(re.escape(pattern[index]))
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out))


# ---------------------------------------------------------------- selecting sources


class Context:
    """A context directory with its .dockerignore applied."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.ignore = DockerIgnore.load(self.root)

    def entries(
        self,
        sources: Iterable[str],
        dest: str,
        owner: tuple[int, int] | None,
        chmod: int | None,
        extract_archives: bool,
    ) -> list[Entry]:
        """The entries a COPY (or ADD) of ``sources`` to ``dest`` writes, sorted by path.

        ``dest`` is absolute; a trailing "/" means "into this directory". Later
        sources overwrite earlier ones at the same path, as in Docker.
        """
        found: dict[str, Entry] = {}
        sources = list(sources)
        for source in sources:
            matches = self._match(source)
            if not matches:
                raise ContextError(f"{source}: not found in the build context or excluded by .dockerignore")
            if len(matches) > 1 and not dest.endswith("/"):
                raise ContextError(f"{source} matches several paths; the destination must end with /")
            for rel in matches:
                for entry in self._copy_one(rel, dest, owner, chmod, extract_archives):
                    found[entry.path] = entry
        return [found[path] for path in sorted(found, key=_sort_key)]

    def _match(self, source: str) -> list[str]:
        rel = posixpath.normpath(source.lstrip("/"))
        if rel == ".." or rel.startswith("../"):
            raise ContextError(f"{source}: outside the build context")
        rel = "" if rel == "." else rel
        if not _WILDCARD.search(rel):
            exists = os.path.lexists(self.root / rel)
            return [rel] if exists and (not rel or not self.ignore.excludes(rel)) else []
        depth = rel.count("/") + 1
        return [path for path, _ in self._walk("", max_depth=depth) if path.count("/") + 1 == depth and fnmatch.fnmatchcase(path, rel)]

    def _walk(self, start: str, max_depth: int | None = None) -> Iterator[tuple[str, os.stat_result]]:
        """Context-relative paths under ``start`` (not itself), sorted, ignored ones left out.

        An excluded directory is still entered when a "!" pattern could bring
        something under it back; it is yielded only if something is.
        """
        directory = self.root / start
        with os.scandir(directory) as scan:
            names = sorted((e.name for e in scan), key=os.fsencode)
        for name in names:
            rel = f"{start}/{name}" if start else name
            info = os.lstat(self.root / rel)
            excluded = self.ignore.excludes(rel)
            is_dir = stat.S_ISDIR(info.st_mode)
            if excluded and not (is_dir and self.ignore.has_exceptions):
                continue
            below: list[tuple[str, os.stat_result]] = []
            if is_dir and (max_depth is None or rel.count("/") + 1 < max_depth):
                below = list(self._walk(rel, max_depth))
            if not excluded or below:
                yield rel, info
            yield from below

    def _copy_one(
        self, rel: str, dest: str, owner: tuple[int, int] | None, chmod: int | None, extract: bool
    ) -> Iterator[Entry]:
        path = self._inside(rel)  # a symlink named as a source is followed, within the context
        info = path.stat()
        target = dest.lstrip("/")
        uid, gid = owner or (0, 0)
        if stat.S_ISDIR(info.st_mode):
            start = path.relative_to(self.root).as_posix()
            start = "" if start == "." else start
            prefix = target.rstrip("/")
            for child, child_info in self._walk(start):
                inner = child[len(start) :].lstrip("/")
                yield self._entry(child, child_info, f"{prefix}/{inner}" if prefix else inner, uid, gid, chmod)
            return
        if extract and _is_archive(path):
            yield from _archive_entries(path, rel, target.rstrip("/"), owner, chmod)
            return
        if dest.endswith("/"):
            target += posixpath.basename(rel)
        yield self._entry(path.relative_to(self.root).as_posix(), info, target, uid, gid, chmod)

    def _inside(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if path != self.root and self.root not in path.parents:
            raise ContextError(f"{rel}: points outside the build context")
        return path

    def _entry(self, rel: str, info: os.stat_result, target: str, uid: int, gid: int, chmod: int | None) -> Entry:
        mode = chmod if chmod is not None else stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            return Entry(target, "symlink", 0o777, uid, gid, link=os.readlink(self.root / rel), origin=rel)
        if stat.S_ISDIR(info.st_mode):
            return Entry(target, "dir", mode, uid, gid, origin=rel)
        if not stat.S_ISREG(info.st_mode):
            raise ContextError(f"{rel}: not a regular file, directory or symlink; add it to .dockerignore")
        with open(self.root / rel, "rb") as source:
            digest, size = _sha256(source)
        return Entry(target, "file", mode, uid, gid, size, digest, origin=rel)


def _is_archive(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as archive:
            return archive.next() is not None
    except (tarfile.TarError, EOFError, OSError):
        return False


def _archive_entries(
    path: Path, rel: str, dest: str, owner: tuple[int, int] | None, chmod: int | None
) -> Iterator[Entry]:
    """The archive's members under ``dest``; their own owners stay unless --chown was given."""
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            name = posixpath.normpath(member.name.lstrip("/"))
            if name == "." or name == ".." or name.startswith("../"):
                continue
            target = f"{dest}/{name}" if dest else name
            uid, gid = owner or (member.uid, member.gid)
            mode = chmod if chmod is not None else member.mode & 0o7777
            if member.isdir():
                yield Entry(target, "dir", mode, uid, gid, origin=rel)
            elif member.issym():
                yield Entry(target, "symlink", 0o777, uid, gid, link=member.linkname, origin=rel)
            elif member.isfile() or member.islnk():
                content = archive.extractfile(member)
                if content is None:
                    raise ContextError(f"{rel}: member {member.name} has no content")
                digest, size = _sha256(content)
                yield Entry(target, "file", mode, uid, gid, size, digest, origin=rel, member=member.name)
            else:
                raise ContextError(f"{rel}: member {member.name} is a device or fifo; not supported")


def _sha256(source: BinaryIO) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    while chunk := source.read(_CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


def _sort_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- checksums and summaries


def tree_digests(entries: Iterable[Entry]) -> dict[str, str]:
    """Merkle digests of every path and of every implied parent; "" is the root.

    A file's digest covers its record; a directory's covers its own record (or
    "implied" when the layer does not carry it) and its children's names and
    digests, sorted by name.
    """
    by_path = {entry.path: entry for entry in entries}
    nodes = {""}
    for path in by_path:
        while path not in nodes:
            nodes.add(path)
            path = posixpath.dirname(path)
    children: dict[str, list[str]] = {}
    for node in nodes - {""}:
        children.setdefault(posixpath.dirname(node), []).append(node)
    digests: dict[str, str] = {}
    for path in sorted(nodes, key=lambda p: -(p.count("/") + 1 if p else 0)):
        entry = by_path.get(path)
        lines = [entry.record() if entry else "implied"]
        for child in sorted(children.get(path, ()), key=_sort_key):
            lines.append(f"{posixpath.basename(child)}\0{digests[child]}")
        digests[path] = _hash_text("\n".join(lines))
    return digests


def _hash_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def summarize(entries: list[Entry], budget: int, depth: int | None = None) -> tuple[int, dict[str, str]]:
    """A listing of the entries that fits in ``budget`` bytes of JSON.

    Entries more than ``depth`` components deep are folded into their ancestor
    at that depth, shown as "tree DIGEST N" (its subtree digest and how many
    entries it holds). Without ``depth`` the deepest one that fits is chosen.
    Returns the depth used and the listing.
    """
    deepest = max((e.path.count("/") + 1 for e in entries), default=0)
    digests = tree_digests(entries) if entries else {}
    for limit in ([depth] if depth is not None else range(deepest, -1, -1)):
        listing = _fold(entries, digests, limit)
        if depth is not None or len(json.dumps(listing)) <= budget or limit == 0:
            return limit, listing
    raise AssertionError("unreachable: limit 0 always returns")


def _fold(entries: list[Entry], digests: Mapping[str, str], limit: int) -> dict[str, str]:
    listing: dict[str, str] = {}
    folded: dict[str, int] = {}
    for entry in entries:
        parts = entry.path.split("/")
        if len(parts) <= limit:
            listing[entry.path] = entry.short_record()
            continue
        ancestor = "/".join(parts[:limit])
        folded[ancestor] = folded.get(ancestor, 0) + 1
    for ancestor, count in folded.items():
        listing[ancestor] = f"tree {digests[ancestor].removeprefix('sha256:')[:16]} {count}"
    return dict(sorted(listing.items(), key=lambda item: _sort_key(item[0])))
