"""Tests for bench.layers, the real input of tests, the demo and the benchmarks.

Real trees (a slice of this machine's stdlib) show that layers are deterministic, hold the
bytes on disk and stay within their size; small trees made here cover what the stdlib lacks
(symlinks, fifos, sockets, odd names). Every archive is read back with ``tarfile``, an
implementation independent of the one under test.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import layers
from bench.layers import LayerError, Root, Variant

REPO = Path(__file__).resolve().parent.parent
STDLIB = layers.named_root("stdlib")
# On this machine that reaches past libpython3.11.a (45 MB, about 21 MB into the walk), so the
# budget has to pass over a file too large for it; still quick to build four times.
SLICE = 32 * layers.MIB


@dataclass(frozen=True)
class Entry:
    type: bytes
    mode: int
    linkname: str
    content: bytes


Entries = dict[str, Entry]


def read_tar(archive: bytes) -> Entries:
    """Every member of a tar, in archive order; checks the fixed owner and mtime on the way."""
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for info in tar:
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
            file = tar.extractfile(info) if info.isreg() else None
            content = file.read() if file else b""
            entries[info.name] = Entry(info.type, info.mode, info.linkname, content)
    return entries


def inside(name: str, directory: str) -> bool:
    return name == directory or name.startswith(directory + "/")


def sha256_of(path: Path | str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def diff(base: Entries, variant: Entries) -> tuple[set[str], set[str], set[str]]:
    """Members removed, added and changed from base to variant."""
    changed = {name for name in base.keys() & variant.keys() if base[name] != variant[name]}
    return base.keys() - variant.keys(), variant.keys() - base.keys(), changed


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, layers.Layer]:
    built = layers.near_duplicate_series(tmp_path_factory.mktemp("series"), [STDLIB], SLICE)
    return {layer.name: layer for layer in built}


def read_layer(layer: layers.Layer) -> Entries:
    assert layer.path is not None
    return read_tar(Path(layer.path).read_bytes())


@pytest.fixture(scope="module")
def base(series: dict[str, layers.Layer]) -> Entries:
    return read_layer(series["base"])


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """A small tree with what the stdlib lacks: symlinks (one leading out), a fifo, a socket."""
    root = tmp_path / "tree"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text('"""A package."""\n')
    (root / "pkg" / "mod.py").write_text("print('hello')\n")
    (root / "pkg" / "mod.py").chmod(0o755)
    (root / "pkg" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 400)
    (root / "private.txt").write_text("secret-ish\n")
    (root / "private.txt").chmod(0o600)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "not-in-the-layer.txt").write_text("outside\n")
    (root / "link-to-file").symlink_to("pkg/mod.py")
    (root / "link-out").symlink_to(outside)
    os.mkfifo(root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    yield root
    listener.close()


def build(roots: list[Root], max_bytes: int | None = None) -> tuple[layers.Layer, Entries]:
    stream = io.BytesIO()
    layer = layers.build_layer(roots, stream, max_bytes)
    return layer, read_tar(stream.getvalue())


# Real trees


def test_same_tree_gives_byte_identical_tars(tmp_path: Path) -> None:
    first = layers.build_layer([STDLIB], tmp_path / "first.tar", 8 * layers.MIB)
    second = layers.build_layer([STDLIB], tmp_path / "second.tar", 8 * layers.MIB)
    assert sha256_of(tmp_path / "first.tar") == sha256_of(tmp_path / "second.tar")
    assert first.sha256 == second.sha256 == sha256_of(tmp_path / "first.tar")
    assert first.size == os.path.getsize(tmp_path / "first.tar")


def test_members_hold_the_files_on_disk(base: Entries) -> None:
    prefix = STDLIB.archive_prefix
    assert f"{prefix}/argparse.py" in base
    regular = 0
    for name, entry in base.items():
        on_disk = "/" + name
        info = os.lstat(on_disk)
        assert entry.mode == stat.S_IMODE(info.st_mode), name
        if entry.type == tarfile.REGTYPE:
            assert entry.content == Path(on_disk).read_bytes(), name
            regular += 1
        else:
            assert entry.type == tarfile.DIRTYPE and stat.S_ISDIR(info.st_mode), name
    assert regular > 1000


@pytest.mark.parametrize("name", ["base", *Variant])
def test_members_follow_the_sorted_walk(name: str, series: dict[str, layers.Layer]) -> None:
    names = list(read_layer(series[name]))
    assert names == sorted(names, key=lambda name: name.split("/"))


@pytest.mark.parametrize("mib", [4, 32])
def test_max_bytes_is_honoured(mib: int, series: dict[str, layers.Layer], tmp_path: Path) -> None:
    max_bytes = mib * layers.MIB
    if max_bytes == SLICE:
        layer = series["base"]
    else:
        layer = layers.build_layer([STDLIB], tmp_path / "layer.tar", max_bytes)
    assert 0.97 * max_bytes <= layer.size <= max_bytes


# Small trees made here


def test_symlinks_stay_links_and_are_not_followed(tree: Path) -> None:
    layer, entries = build([Root(str(tree), "t")])
    assert entries["t/link-to-file"] == Entry(tarfile.SYMTYPE, 0o777, "pkg/mod.py", b"")
    assert entries["t/link-out"].type == tarfile.SYMTYPE
    assert entries["t/link-out"].linkname == str(tree.parent / "outside")
    assert not any("not-in-the-layer" in name for name in entries)
    assert dict(layer.skipped) == {"special": 2}
    assert "t/fifo" not in entries and "t/sock" not in entries


def test_modes_and_contents_are_kept(tree: Path) -> None:
    _, entries = build([Root(str(tree), "t")])
    assert entries["t/pkg/mod.py"] == Entry(tarfile.REGTYPE, 0o755, "", b"print('hello')\n")
    assert entries["t/private.txt"].mode == 0o600
    assert entries["t/pkg/sub/data.bin"].content == bytes(range(256)) * 400
    assert entries["t"].type == tarfile.DIRTYPE


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_files_are_skipped(tree: Path) -> None:
    (tree / "private.txt").chmod(0)
    layer, entries = build([Root(str(tree), "t")])
    assert "t/private.txt" not in entries
    assert layer.skipped["unreadable"] == 1


def test_headers_are_what_tarfile_writes(tmp_path: Path) -> None:
    """Names too long for ustar, not ASCII, or not even UTF-8 get PAX headers like tarfile's."""
    root = tmp_path / "odd"
    deep = root / ("d" * 99) / ("long-" * 30)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_bytes(b"x" * 1000)
    (root / "caf\u00e9.txt").write_text("\u00e9\n")
    (root / os.fsdecode(b"raw-\xff.bin")).write_bytes(b"raw")  # not UTF-8
    (root / "long-link").symlink_to("../" * 60 + "target")
    ours = io.BytesIO()
    layers.write_layer(layers.plan_layer([Root(str(root), "odd")]), ours)

    ours.seek(0)
    theirs = io.BytesIO()
    with tarfile.open(fileobj=ours) as source, tarfile.open(
        fileobj=theirs, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as copy:
        for read in source:
            fresh = tarfile.TarInfo(read.name)
            fresh.type, fresh.mode, fresh.size = read.type, read.mode, read.size
            fresh.linkname = read.linkname
            copy.addfile(fresh, source.extractfile(read) if read.isreg() else None)
    assert len(read_tar(ours.getvalue())) == 7
    assert ours.getvalue() == theirs.getvalue()


def test_size_beyond_ustar_gets_a_pax_header() -> None:
    # Header only: a 9 GiB member is too much to write in a test.
    member = layers.Member("big", tarfile.REGTYPE, 0o644, size=9 << 30)
    info = tarfile.TarInfo("big")
    info.size = 9 << 30
    assert layers._header(member) == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_roots_take_their_prefixes_and_share_the_budget(tmp_path: Path) -> None:
    roots = []
    for name, count in (("first", 100), ("small", 3), ("last", 100)):
        directory = tmp_path / name
        directory.mkdir()
        for index in range(count):
            (directory / f"{index:03}.bin").write_bytes(bytes([index]) * 16384)
        roots.append(Root(str(directory), f"{name}/prefix"))
    max_bytes = 1536 * 1024
    layer, entries = build(roots, max_bytes)

    def files(name: str) -> list[str]:
        return [member for member in entries if member.startswith(f"{name}/prefix/")]

    assert list(entries)[0] == "first/prefix"
    # A third each; the small root hands its unused share on to the last.
    file_cost = 512 + 16384
    assert 0.3 * max_bytes < len(files("first")) * file_cost < max_bytes / 3
    assert files("small") == [f"small/prefix/{index:03}.bin" for index in range(3)]
    assert 0.97 * max_bytes <= layer.size <= max_bytes


def test_overlapping_roots_are_refused(tree: Path) -> None:
    with pytest.raises(LayerError, match="overlap"):
        layers.plan_layer([Root(str(tree)), Root(str(tree / "pkg"))])


def test_a_file_changed_after_planning_fails_and_leaves_nothing(
    tree: Path, tmp_path: Path
) -> None:
    plan = layers.plan_layer([Root(str(tree), "t")])
    with open(tree / "pkg" / "mod.py", "a") as file:
        file.write("# changed\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LayerError, match="changed size"):
        layers.write_layer(plan, out / "layer.tar")
    assert list(out.iterdir()) == []


def test_stream_and_file_get_the_same_bytes(tree: Path, tmp_path: Path) -> None:
    plan = layers.plan_layer([Root(str(tree), "t")])
    stream = io.BytesIO()
    to_stream = layers.write_layer(plan, stream)
    to_file = layers.write_layer(plan, tmp_path / "layer.tar")
    assert to_stream.path is None and to_file.path == str(tmp_path / "layer.tar")
    assert stream.getvalue() == (tmp_path / "layer.tar").read_bytes()
    assert to_stream.sha256 == to_file.sha256 == hashlib.sha256(stream.getvalue()).hexdigest()
    assert len(stream.getvalue()) % tarfile.RECORDSIZE == 0


# Near-duplicates of a real tree


def test_series_has_base_and_every_variant(series: dict[str, layers.Layer]) -> None:
    assert list(series) == ["base", *Variant]
    for layer in series.values():
        assert layer.path is not None
        assert sha256_of(layer.path) == layer.sha256
        assert os.path.getsize(layer.path) == layer.size
    assert len({layer.sha256 for layer in series.values()}) == 4


def test_edit_one_file_appends_one_line_to_one_file(
    series: dict[str, layers.Layer], base: Entries
) -> None:
    variant = read_layer(series[Variant.EDIT_ONE_FILE])
    removed, added, changed = diff(base, variant)
    assert not removed and not added and len(changed) == 1
    (name,) = changed
    edited = variant[name].content
    assert name.endswith(".py") and base[name].content and edited.startswith(base[name].content)
    appended = edited[len(base[name].content) :]
    assert appended.endswith(b"\n") and appended.count(b"\n") == 1
    assert name in series[Variant.EDIT_ONE_FILE].description


def test_upgrade_package_edits_and_adds_inside_one_package(
    series: dict[str, layers.Layer], base: Entries
) -> None:
    removed, added, changed = diff(base, read_layer(series[Variant.UPGRADE_PACKAGE]))
    assert not removed and len(added) == 1 and changed
    (new,) = added
    package = os.path.dirname(new)
    assert f"{package}/__init__.py" in base
    assert f"{os.path.dirname(package)}/__init__.py" not in base
    sources = [name for name, entry in base.items() if entry.type == tarfile.REGTYPE]
    package_sources = [name for name in sources if inside(name, package) and name.endswith(".py")]
    # Every second one, as a release touches some files and not others.
    assert changed == set(package_sources[::2])
    upgraded = read_layer(series[Variant.UPGRADE_PACKAGE])
    assert all(upgraded[name].content.startswith(base[name].content) for name in changed)
    assert new.endswith(".py") and upgraded[new].type == tarfile.REGTYPE
    assert package in series[Variant.UPGRADE_PACKAGE].description


def test_remove_package_removes_exactly_one_package(
    series: dict[str, layers.Layer], base: Entries
) -> None:
    removed, added, changed = diff(base, read_layer(series[Variant.REMOVE_PACKAGE]))
    assert not added and not changed
    package = min(removed, key=len)
    assert f"{package}/__init__.py" in removed
    assert removed == {name for name in base if inside(name, package)}


def test_package_variants_need_a_package(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("no package here\n")
    plan = layers.plan_layer([Root(str(tmp_path), "p")])
    with pytest.raises(LayerError, match="Python package"):
        layers.apply_variant(plan, Variant.REMOVE_PACKAGE)


def test_cli_prints_path_size_and_digest(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.tar"
    argv = ["--root", str(tree), "--max-mb", "1", "-o", str(out), "--variant", "edit-one-file"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.layers", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    first_line = result.stdout.splitlines()[0]
    assert first_line == f"{out}\t{out.stat().st_size} bytes\tsha256:{sha256_of(out)}"
    assert "appended one line to" in result.stdout
