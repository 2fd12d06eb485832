"""The reference builder: Dockerfile + context -> OCI image layout, through the cache.

``build`` keys every step (``client.keys``), asks the daemon about the whole
chain in one Lookup, fetches the layers of the steps that hit, builds the
rest, puts their layers and records them. It supports one stage from
``scratch`` or from an OCI layout (``FROM oci:PATH[:TAG]``, PATH relative to
the Dockerfile's directory), COPY/ADD of local files (ADD extracts local tar
archives), RUN, and the metadata instructions ``client.dockerfile`` knows.

Reproducibility is the point: a layer is a plain (uncompressed) tar whose
entries are sorted by path, with mtime 0, no user or group names, and the
owners and modes the key covers; configs and manifests are canonical JSON with
no timestamps. The same context therefore gives byte-identical layers and the
same image digest on every machine.

RUN runs the command chrooted into a root filesystem assembled from the
layers before it, as the step's user, with exactly the step's environment
(plus a default PATH when the image sets none, as BuildKit does). That needs
root; without it a RUN that misses is a clear error. There is no /proc, /dev
or network isolation: this is a reference, not a sandbox. The layer is the
difference of the tree before and after (changed or new paths, whiteouts for
removed ones, an opaque marker for a replaced directory).

A directory a COPY or RUN needs but that the image lacks (WORKDIR, a
destination's parents) is created in that step's layer, 0755, owned by the
--chown owner (else root).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from client.context import Entry
from client.dockerfile import BaseImage, CopyStep, DockerfileError, FromStep, RunStep
from client.errors import NotFoundError
from client.keys import KeyChain, KeyedStep, resolve_pinned
from client.plugin import DEFAULT_NAMESPACE, BuilderPlugin, CacheClient
from client.types import CacheEntry, Descriptor

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40

# Runs in a fresh interpreter (no gRPC threads to fork from): enter the root,
# drop to the step's user, become the command.
_CHROOT_EXEC = """\
import json, os, sys
root, cwd, uid, gid, argv, env = sys.argv[1:7]
os.chroot(root)
os.chdir(cwd)
os.setgroups([])
os.setgid(int(gid))
os.setuid(int(uid))
argv = json.loads(argv)
os.execvpe(argv[0], argv, json.loads(env))
"""


class BuildError(RuntimeError):
    """A step could not be built."""


def canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- OCI layouts


class Layout:
    """An OCI image layout directory: oci-layout, index.json, blobs/ALG/HEX."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def create(cls, root: str | os.PathLike[str]) -> Layout:
        layout = cls(root)
        (layout.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (layout.root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        return layout

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def read_json(self, digest: str) -> dict[str, Any]:
        try:
            value = json.loads(self.blob_path(digest).read_bytes())
        except FileNotFoundError:
            raise BuildError(f"{self.root}: blob {digest} is missing") from None
        return value  # type: ignore[no-any-return]

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            _write_atomic(path, data)
        return Descriptor(digest, len(data), media_type)

    def add_file(self, source: Path, media_type: str) -> Descriptor:
        """Moves a finished file into the layout under its digest."""
        hasher = hashlib.sha256()
        with source.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
        digest = "sha256:" + hasher.hexdigest()
        size = source.stat().st_size
        source.replace(self.blob_path(digest))
        return Descriptor(digest, size, media_type)

    def image(self, tag: str | None, platform: str) -> tuple[Descriptor, dict[str, Any], dict[str, Any]]:
        """The manifest descriptor, manifest and config of an image in the layout."""
        try:
            index = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            raise BuildError(f"{self.root}: not an OCI image layout (no index.json)") from None
        manifests = index.get("manifests", [])
        if tag is not None:
            manifests = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) == tag]
        while True:
            chosen = _for_platform(manifests, platform)
            if chosen is None:
                raise BuildError(f"{self.root}: no image{f' tagged {tag}' if tag else ''} for {platform}")
            if chosen["mediaType"] != INDEX:
                break
            manifests = self.read_json(chosen["digest"]).get("manifests", [])
        manifest = self.read_json(chosen["digest"])
        config = self.read_json(manifest["config"]["digest"])
        return Descriptor(chosen["digest"], chosen["size"], chosen["mediaType"]), manifest, config

    def set_image(self, manifest: Descriptor, tag: str, platform: Mapping[str, str]) -> None:
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [
                {
                    "mediaType": manifest.media_type,
                    "digest": manifest.digest,
                    "size": manifest.size,
                    "annotations": {REF_NAME: tag},
                    "platform": dict(platform),
                }
            ],
        }
        _write_atomic(self.root / "index.json", canonical_json(index))


def _for_platform(manifests: list[dict[str, Any]], platform: str) -> dict[str, Any] | None:
    if len(manifests) == 1:
        return manifests[0]
    os_name, _, arch = platform.partition("/")
    for manifest in manifests:
        wanted = manifest.get("platform", {})
        if wanted.get("os") == os_name and wanted.get("architecture") == arch.partition("/")[0]:
            return manifest
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    temp.replace(path)


@dataclass(frozen=True)
class LoadedBase:
    layout: Layout
    manifest: dict[str, Any]
    config: dict[str, Any]


class LayoutResolver:
    """Resolves ``scratch``, ``oci:PATH[:TAG]`` and pinned ``NAME@sha256:...`` refs.

    PATH is relative to ``base_dir`` (the Dockerfile's directory). Loaded
    images are kept so the builder can reach their layers.
    """

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = Path(base_dir)
        self.loaded: dict[str, LoadedBase] = {}

    def __call__(self, ref: str, platform: str) -> BaseImage:
        if not ref.startswith("oci:"):
            return resolve_pinned(ref, platform)
        path, tag = ref[4:], None
        head, sep, tail = path.rpartition(":")
        if sep and head and "/" not in tail:
            path, tag = head, tail
        layout = Layout(self.base_dir / path)
        descriptor, manifest, config = layout.image(tag, platform)
        self.loaded[descriptor.digest] = LoadedBase(layout, manifest, config)
        image_platform = f"{config.get('os', 'linux')}/{config.get('architecture', 'unknown')}"
        return BaseImage(ref, descriptor.digest, image_platform, config.get("config") or {})


# ---------------------------------------------------------------- layers


def write_layer(entries: Iterable[Entry], open_entry: Callable[[Entry], BinaryIO], dest: Path) -> None:
    """Writes a reproducible tar: entries sorted by path, mtime 0, no names."""
    with dest.open("wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path.encode("utf-8", "surrogateescape")):
            info = tarfile.TarInfo(entry.path)
            info.mtime = 0
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                tar.addfile(info)
            else:
                info.size = entry.size
                if entry.size == 0:
                    tar.addfile(info)
                    continue
                with open_entry(entry) as content:
                    tar.addfile(info, content)


class ImagePaths:
    """Which paths exist after a sequence of layers (from tar headers only)."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.layers_seen = 0

    def add_layer(self, path: Path) -> None:
        with tarfile.open(path, "r:*") as tar:
            names = [posixpath.normpath(m.name.lstrip("/")) for m in tar]
        for name in names:
            parent, base = posixpath.split(name)
            if base == _OPAQUE:
                self._remove_below(parent)
            elif base.startswith(_WHITEOUT):
                gone = posixpath.join(parent, base[len(_WHITEOUT) :])
                self.paths.discard(gone)
                self._remove_below(gone)
        for name in names:
            if not posixpath.basename(name).startswith(_WHITEOUT):
                while name and name != ".":
                    self.paths.add(name)
                    name = posixpath.dirname(name)
        self.layers_seen += 1

    def _remove_below(self, directory: str) -> None:
        prefix = f"{directory}/" if directory else ""
        self.paths = {p for p in self.paths if not p.startswith(prefix)}


def copy_entries(step: KeyedStep, existing: set[str]) -> list[Entry]:
    """The COPY's entries plus the directories it needs that the image lacks."""
    assert isinstance(step.step, CopyStep)
    uid, gid = step.step.chown or (0, 0)
    entries = list(step.entries)
    have = existing | {e.path for e in entries}
    needed = set()
    wanted = [e.path for e in entries]
    if step.step.dest.endswith("/"):
        wanted.append(step.step.dest.strip("/") + "/.")
    for path in wanted:
        parent = posixpath.dirname(path)
        while parent and parent not in have:
            needed.add(parent)
            parent = posixpath.dirname(parent)
    return entries + [Entry(path, "dir", 0o755, uid, gid) for path in needed]


# ---------------------------------------------------------------- root filesystem


class RootFS:
    """A directory that layers are applied to and RUN commands run in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.layers_applied = 0

    def resolve(self, rel: str, follow_last: bool = True) -> Path:
        """``rel`` inside the root, following symlinks as if the root were "/"."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = self.path.joinpath(*resolved, part)
            if (parts or follow_last) and candidate.is_symlink():
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise BuildError(f"too many symlinks resolving {rel}")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            resolved.append(part)
        return self.path.joinpath(*resolved)

    def apply(self, layer: Path) -> None:
        with tarfile.open(layer, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parent, base = posixpath.split(posixpath.normpath(member.name.lstrip("/")))
                if base == _OPAQUE:
                    directory = self.resolve(parent)
                    for child in list(directory.iterdir()) if directory.is_dir() else []:
                        _remove(child)
                elif base.startswith(_WHITEOUT):
                    _remove(self.resolve(parent) / base[len(_WHITEOUT) :])
            for member in members:
                name = posixpath.normpath(member.name.lstrip("/"))
                if name in (".", "") or posixpath.basename(name).startswith(_WHITEOUT):
                    continue
                self._extract(tar, member, name)
        self.layers_applied += 1

    def _extract(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        parent, base = posixpath.split(name)
        directory = self.resolve(parent)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / base
        if member.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                _remove(target)
            target.mkdir(exist_ok=True)
        else:
            _remove(target)
            if member.issym():
                target.symlink_to(member.linkname)
            elif member.islnk():
                os.link(self.resolve(member.linkname, follow_last=False), target)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out)
            elif member.ischr() or member.isblk():
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
                os.mknod(target, kind | member.mode, os.makedev(member.devmajor, member.devminor))
            elif member.isfifo():
                os.mkfifo(target, member.mode)
        os.lchown(target, member.uid, member.gid)
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)
            os.utime(target, (member.mtime, member.mtime))

    def snapshot(self) -> dict[str, os.stat_result]:
        found = {}
        for directory, dirs, files in os.walk(self.path):
            for name in dirs + files:
                full = os.path.join(directory, name)
                found[os.path.relpath(full, self.path).replace(os.sep, "/")] = os.lstat(full)
        return found

    def changes(self, before: Mapping[str, os.stat_result]) -> list[Entry]:
        """The entries of a layer that turns the ``before`` tree into the current one."""
        after = self.snapshot()
        entries = []
        replaced = set()
        for path, now in after.items():
            old = before.get(path)
            if old is not None and _fingerprint(old) == _fingerprint(now):
                continue
            if old is not None and stat.S_ISDIR(old.st_mode) and stat.S_ISDIR(now.st_mode) and old.st_ino != now.st_ino:
                replaced.add(path)
                entries.append(Entry(f"{path}/{_OPAQUE}", "file", 0o644, 0, 0))
            entries.append(self._entry(path, now))
        for path in before.keys() - after.keys():
            ancestors = _ancestors(path)
            if any(a in replaced or (a in before and a not in after) for a in ancestors):
                continue  # covered by the whiteout or opaque marker of an ancestor
            parent, base = posixpath.split(path)
            entries.append(Entry(posixpath.join(parent, _WHITEOUT + base), "file", 0o644, 0, 0))
        return entries

    def _entry(self, path: str, info: os.stat_result) -> Entry:
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            return Entry(path, "dir", mode, info.st_uid, info.st_gid)
        if stat.S_ISLNK(info.st_mode):
            return Entry(path, "symlink", 0o777, info.st_uid, info.st_gid, link=os.readlink(self.path / path))
        if stat.S_ISREG(info.st_mode):
            return Entry(path, "file", mode, info.st_uid, info.st_gid, info.st_size)
        raise BuildError(f"RUN created /{path}, which is not a file, directory or symlink")

    @staticmethod
    def check_can_run(step: RunStep) -> None:
        if os.geteuid() != 0:
            raise BuildError(f"step {step.index} ({step.instruction.text}): RUN needs root (it chroots); run the build as root")

    def run(self, step: RunStep) -> None:
        uid, gid = self._user(step.user)
        workdir = self.resolve(step.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(step.env)
        env.setdefault("PATH", DEFAULT_PATH)
        command = [sys.executable, "-c", _CHROOT_EXEC, str(self.path), step.workdir, str(uid), str(gid)]
        command += [json.dumps(list(step.argv)), json.dumps(env)]
        code = subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode
        if code != 0:
            raise BuildError(f"step {step.index} ({step.instruction.text}) failed with exit code {code}")

    def _user(self, user: str) -> tuple[int, int]:
        """USER as numeric ids, names looked up in the image's /etc/passwd and /etc/group."""
        if not user:
            return 0, 0
        name, _, group = user.partition(":")
        passwd = self._table("etc/passwd")
        if name.isdigit():
            uid = int(name)
            gid = next((int(row[3]) for row in passwd.values() if row[2] == name), 0)
        elif name in passwd:
            uid, gid = int(passwd[name][2]), int(passwd[name][3])
        else:
            raise BuildError(f"USER {user}: no user {name!r} in the image's /etc/passwd")
        if group:
            groups = self._table("etc/group")
            if group.isdigit():
                gid = int(group)
            elif group in groups:
                gid = int(groups[group][2])
            else:
                raise BuildError(f"USER {user}: no group {group!r} in the image's /etc/group")
        return uid, gid

    def _table(self, rel: str) -> dict[str, list[str]]:
        path = self.resolve(rel)
        if not path.is_file():
            return {}
        rows = [line.split(":") for line in path.read_text(errors="replace").splitlines() if line.count(":") >= 3]
        return {row[0]: row for row in rows}


def _fingerprint(info: os.stat_result) -> tuple[int, ...]:
    # ctime cannot be set from user space, so any change to content or
    # metadata shows up even when a command restores the mtime.
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def _ancestors(path: str) -> list[str]:
    found = []
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        found.append(path)
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


# ---------------------------------------------------------------- the build


@dataclass(frozen=True)
class StepResult:
    step: KeyedStep
    cached: bool
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class BuildResult:
    image_digest: str  # the manifest digest
    layout: Path
    steps: list[StepResult]

    @property
    def built(self) -> list[int]:
        return [r.step.index for r in self.steps if not r.cached]


def build(
    client: CacheClient,
    dockerfile_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    build_args: Mapping[str, str] | None = None,
    tag: str = "latest",
    dockerfile: str = "Dockerfile",
    log: Callable[[str], None] = lambda line: None,
) -> BuildResult:
    resolver = LayoutResolver(dockerfile_dir)
    plugin = BuilderPlugin(client, namespace, resolver)
    chain = plugin.keys(dockerfile_dir, build_args, dockerfile=dockerfile)
    for name in chain.stage.unused_build_args:
        log(f"warning: build arg {name} is not used by the Dockerfile")
    return _Build(plugin, resolver, chain, Layout.create(output), log).run(tag)


class _Build:
    def __init__(
        self, plugin: BuilderPlugin, resolver: LayoutResolver, chain: KeyChain, layout: Layout, log: Callable[[str], None]
    ) -> None:
        self.plugin = plugin
        self.client = plugin.client
        self.resolver = resolver
        self.chain = chain
        self.layout = layout
        self.log = log
        self.results: list[StepResult] = []
        self.paths = ImagePaths()

    def run(self, tag: str) -> BuildResult:
        status = self.plugin.lookup_chain(self.chain)
        for step, entry in zip(self.chain.steps, status.hits):
            if not self._fetch(step, entry):
                break
        with tempfile.TemporaryDirectory(prefix="layercache-build-") as work:
            rootfs = RootFS(Path(work, "rootfs"))
            for step in self.chain.steps[len(self.results) :]:
                layers = self._build_step(step, rootfs, Path(work))
                for layer in layers:
                    self.client.put(self.layout.blob_path(layer.digest), layer.media_type, self.plugin.namespace)
                self.plugin.record_step(step, layers)
                self.results.append(StepResult(step, False, tuple(layers)))
                self.log(f"step {step.index}/{len(self.chain.steps)} built  {step.text}")
        digest = self._write_image(tag)
        return BuildResult(digest, self.layout.root, self.results)

    def _fetch(self, step: KeyedStep, entry: CacheEntry) -> bool:
        try:
            self.plugin.fetch_layers(entry, self.layout.root / "blobs")
        except NotFoundError:
            self.log(f"step {step.index}: a cached layer vanished; building from here")
            return False
        self.results.append(StepResult(step, True, entry.layers))
        self.log(f"step {step.index}/{len(self.chain.steps)} cached {step.text}")
        return True

    def _layer_files(self) -> list[Path]:
        return [self.layout.blob_path(d.digest) for r in self.results for d in r.layers]

    def _build_step(self, step: KeyedStep, rootfs: RootFS, work: Path) -> list[Descriptor]:
        if isinstance(step.step, FromStep):
            return self._base_layers(step.step)
        if isinstance(step.step, CopyStep):
            files = self._layer_files()
            for layer in files[self.paths.layers_seen :]:
                self.paths.add_layer(layer)
            entries = copy_entries(step, self.paths.paths)
            return self._layer(entries, lambda e: e.open(self.chain.context.root), work)
        assert isinstance(step.step, RunStep)
        rootfs.check_can_run(step.step)
        rootfs.path.mkdir(exist_ok=True)
        for layer in self._layer_files()[rootfs.layers_applied :]:
            rootfs.apply(layer)
        before = rootfs.snapshot()
        rootfs.run(step.step)
        entries = rootfs.changes(before)
        layers = self._layer(entries, lambda e: (rootfs.path / e.path).open("rb"), work)
        rootfs.layers_applied += len(layers)  # the tree already holds this step's changes
        return layers

    def _layer(self, entries: list[Entry], open_entry: Callable[[Entry], BinaryIO], work: Path) -> list[Descriptor]:
        if not entries:
            return []
        temp = work / "layer.tar"
        write_layer(entries, open_entry, temp)
        return [self.layout.add_file(temp, LAYER_TAR)]

    def _base_layers(self, step: FromStep) -> list[Descriptor]:
        if not step.base.digest:
            return []
        base = self.resolver.loaded.get(step.base.digest)
        if base is None:
            raise DockerfileError(f"FROM {step.base.ref}: the builder can only build from scratch or oci: layouts")
        layers = []
        for layer in base.manifest["layers"]:
            target = self.layout.blob_path(layer["digest"])
            if not target.exists():
                shutil.copyfile(base.layout.blob_path(layer["digest"]), target)
            layers.append(Descriptor(layer["digest"], layer["size"], layer["mediaType"]))
        return layers

    def _write_image(self, tag: str) -> str:
        base_step = self.chain.steps[0].step
        assert isinstance(base_step, FromStep)
        loaded = self.resolver.loaded.get(base_step.base.digest)
        base_config = loaded.config if loaded else {}
        layers = [d for r in self.results for d in r.layers]
        os_name, _, arch = base_step.base.platform.partition("/")
        arch, _, variant = arch.partition("/")
        history = list(base_config.get("history", []))
        made = {r.step.index: bool(r.layers) for r in self.results}
        for created_by, step_index in self.chain.stage.config.history:
            item: dict[str, Any] = {"created_by": created_by, "comment": "layercache"}
            if step_index is None or not made.get(step_index):
                item["empty_layer"] = True
            history.append(item)
        platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
        config = {
            **platform,
            "config": self.chain.stage.config.as_oci(),
            "rootfs": {"type": "layers", "diff_ids": [self._diff_id(d, loaded) for d in layers]},
            "history": history,
        }
        config_descriptor = self.layout.add_bytes(canonical_json(config), CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": _descriptor_json(config_descriptor),
            "layers": [_descriptor_json(d) for d in layers],
        }
        manifest_descriptor = self.layout.add_bytes(canonical_json(manifest), MANIFEST)
        self.layout.set_image(manifest_descriptor, tag, platform)
        return manifest_descriptor.digest

    def _diff_id(self, layer: Descriptor, base: LoadedBase | None) -> str:
        if layer.media_type == LAYER_TAR:
            return layer.digest
        if base is not None:
            digests = [d["digest"] for d in base.manifest["layers"]]
            if layer.digest in digests:
                return str(base.config["rootfs"]["diff_ids"][digests.index(layer.digest)])
        with gzip.open(self.layout.blob_path(layer.digest)) as stream:
            hasher = hashlib.sha256()
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()


def _descriptor_json(descriptor: Descriptor) -> dict[str, Any]:
    return {"mediaType": descriptor.media_type, "digest": descriptor.digest, "size": descriptor.size}
