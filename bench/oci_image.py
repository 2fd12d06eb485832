"""OCI image layouts from real files, for the registry tests and benchmarks.

Two ways to make one:
    busybox_image(layout, tag, workdir)   a runnable busybox image built with umoci from
                                          Debian's busybox-static: a base image buildah
                                          can RUN in (gzip layers, as umoci writes them)
    write_layout(layout, tag, layers)     an image of existing layer tarballs (e.g. from
                                          bench.layers), written as an OCI layout by hand:
                                          uncompressed tar layers, blobs hard-linked in

`skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:TAG` pushes either to a registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
BUSYBOX = "/bin/busybox"
_REF_NAME = "org.opencontainers.image.ref.name"


def busybox_rootfs(rootfs: Path, busybox: str = BUSYBOX) -> Path:
    """A root filesystem of busybox and a relative symlink per applet, so
    /bin/sh works inside a container (`busybox --install -s` would link to
    the absolute path of the copy on this machine)."""
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    for directory in ("tmp", "etc", "root"):
        (rootfs / directory).mkdir()
    return rootfs


def busybox_image(layout: Path, tag: str, workdir: Path) -> str:
    """Builds the busybox image into `layout` with umoci; returns its manifest digest."""
    rootfs = busybox_rootfs(workdir / "rootfs")
    image = f"{layout}:{tag}"
    if not (layout / "index.json").exists():
        _run("umoci", "init", "--layout", str(layout))
    _run("umoci", "new", "--image", image)
    _run("umoci", "insert", "--image", image, str(rootfs), "/")
    _run("umoci", "config", "--image", image, "--config.cmd", "/bin/sh", "--config.env", "PATH=/bin")
    return manifest_digest(layout, tag)


def write_layout(layout: Path, tag: str, layers: Sequence[Path]) -> str:
    """An image of uncompressed tar `layers`, bottom first; returns its manifest digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    descriptors = []
    for path in layers:
        digest, size = _add_blob_file(blobs, path)
        descriptors.append({"mediaType": OCI_LAYER, "digest": digest, "size": size})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        # Uncompressed layers: each diff ID is the layer's own digest.
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _add_blob_bytes(blobs, json.dumps(config).encode(), OCI_CONFIG),
        "layers": descriptors,
    }
    descriptor = _add_blob_bytes(blobs, json.dumps(manifest).encode(), OCI_MANIFEST)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(_REF_NAME) != tag]
    index["manifests"].append(descriptor | {"annotations": {_REF_NAME: tag}})
    index_path.write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return str(descriptor["digest"])


def manifest_digest(layout: Path, tag: str) -> str:
    index = json.loads((layout / "index.json").read_text())
    for manifest in index["manifests"]:
        if manifest.get("annotations", {}).get(_REF_NAME) == tag:
            return str(manifest["digest"])
    raise KeyError(f"no tag {tag} in {layout}")


def _add_blob_file(blobs: Path, path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    target = blobs / hasher.hexdigest()
    if not target.exists():
        try:
            os.link(path, target)
        except OSError:  # another file system
            shutil.copyfile(path, target)
    return "sha256:" + hasher.hexdigest(), path.stat().st_size


def _add_blob_bytes(blobs: Path, data: bytes, media_type: str) -> dict[str, object]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return {"mediaType": media_type, "digest": "sha256:" + hexdigest, "size": len(data)}


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)
