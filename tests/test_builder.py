"""The reference builder against the real daemon, on real trees.

The app context is made at test time from real files: a small Python app plus
real packages (pytest's own dependencies, with their dist-info) copied from
this machine's site-packages, and a tar archive for ADD.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from importlib import metadata
from pathlib import Path

import pytest

from bench.oci_image import busybox_rootfs
from client.builder import LAYER_TAR, Layout, build
from client.cli import main
from tests.conftest import REPO

APP_DOCKERFILE = """\
FROM scratch
ARG VERSION=1
ENV APP_VERSION=$VERSION
WORKDIR /app
COPY site-packages/ /usr/lib/python3/site-packages/
COPY app/ ./
COPY --chmod=0755 bin/run.sh /usr/local/bin/run
ADD data.tar.gz /srv/
LABEL org.opencontainers.image.title=demo
CMD ["python3", "/app/main.py"]
EXPOSE 8000
"""
MAIN_PY = '''\
"""A tiny real app: prints its version and the packages it can see."""
import os

from util import describe

print(describe(os.environ.get("APP_VERSION", "?")))
'''
UTIL_PY = '''\
def describe(version):
    import pluggy
    return f"demo {version} with pluggy {pluggy.__version__}"
'''


def make_app(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text(MAIN_PY)
    (root / "app" / "util.py").write_text(UTIL_PY)
    site = root / "site-packages"
    for name in ("pluggy", "iniconfig"):
        dist = metadata.distribution(name)
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if "__pycache__" in file.parts or not source.is_file():
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_text("#!/bin/sh\nexec python3 /app/main.py\n")
    data = root / "data"
    data.mkdir()
    shutil.copy2(REPO / "docs" / "keys.md", data / "keys.md")
    with tarfile.open(root / "data.tar.gz", "w:gz") as archive:
        archive.add(data, arcname="data")
    shutil.rmtree(data)
    (root / "Dockerfile").write_text(APP_DOCKERFILE)
    (root / ".dockerignore").write_text("**/__pycache__\n")
    return root


def layer_names(layout: Path, digest: str) -> list[str]:
    with tarfile.open(Layout(layout).blob_path(digest)) as tar:
        return tar.getnames()


def test_build_rebuild_edit_and_why_on_a_real_tree(daemon, tmp_path: Path, capsys):
    context = make_app(tmp_path / "ctx")
    with daemon.client() as client:
        first = build(client, context, tmp_path / "out1", namespace="demo/app")
        assert first.built == [1, 2, 3, 4, 5]

        manifest = Layout(first.layout).read_json(first.image_digest)
        assert all(layer["mediaType"] == LAYER_TAR for layer in manifest["layers"])
        assert "usr/lib/python3/site-packages/pluggy/__init__.py" in layer_names(first.layout, manifest["layers"][0]["digest"])
        assert layer_names(first.layout, manifest["layers"][1]["digest"]) == ["app", "app/main.py", "app/util.py"]
        assert "srv/data/keys.md" in layer_names(first.layout, manifest["layers"][3]["digest"])
        config = Layout(first.layout).read_json(manifest["config"]["digest"])
        assert config["config"]["Env"] == ["APP_VERSION=1"] and config["config"]["WorkingDir"] == "/app"

        second = build(client, context, tmp_path / "out2", namespace="demo/app")
        assert second.built == [] and second.image_digest == first.image_digest

        (context / "app" / "util.py").write_text(UTIL_PY.replace("demo", "demo app"))
        third = build(client, context, tmp_path / "out3", namespace="demo/app")
        assert third.built == [3, 4, 5]
        assert third.image_digest != first.image_digest

    (context / "app" / "util.py").write_text(UTIL_PY.replace("demo", "demo v3"))
    capsys.readouterr()
    assert main(["why", "--server", daemon.address, "--namespace", "demo/app", str(context)]) == 0
    why = capsys.readouterr().out
    assert why.startswith("step 3 (COPY app/ ./): miss")
    assert "  - app/util.py: content changed" in why
    assert main(["plan", "--server", daemon.address, "--namespace", "demo/app", str(context)]) == 3
    plan = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in plan] == ["hit", "hit", "miss", "miss", "miss"]


def test_the_same_context_elsewhere_builds_byte_identical_images_without_a_shared_cache(daemon_factory, tmp_path: Path):
    here, there = make_app(tmp_path / "a" / "ctx"), tmp_path / "b" / "checkout"
    shutil.copytree(here, there)
    os.utime(there / "app" / "main.py", (0, 0))
    results = []
    for context in (here, there):
        with daemon_factory().client() as client:
            results.append(build(client, context, context.parent / "out"))
    assert results[0].image_digest == results[1].image_digest
    assert results[0].built == results[1].built == [1, 2, 3, 4, 5]
    for blob in (results[0].layout / "blobs" / "sha256").iterdir():
        assert blob.read_bytes() == (results[1].layout / "blobs" / "sha256" / blob.name).read_bytes()


def test_key_command_prints_every_step_without_a_daemon(tmp_path: Path, capsys):
    context = make_app(tmp_path / "ctx")
    assert main(["key", str(context), "--build-arg", "VERSION=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["FROM", "COPY", "COPY", "COPY", "ADD"]
    assert all(line.split()[1].startswith("lc1:") for line in lines)
    (context / "Dockerfile").write_text("FROM python:3.11\n")
    assert main(["key", str(context)]) == 2
    assert "tag alone" in capsys.readouterr().err


# ---------------------------------------------------------------- RUN, skopeo


def busybox_layout(tmp_path: Path) -> Path:
    """An OCI layout holding a busybox root filesystem, made with umoci."""
    busybox = shutil.which("busybox")
    if busybox is None or shutil.which("umoci") is None:
        pytest.skip("needs busybox-static and umoci (apt-get install busybox-static umoci)")
    layout, bundle = tmp_path / "base", tmp_path / "bundle"
    for command in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:latest"]):
        subprocess.run(["umoci", *command], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True, capture_output=True)
    shutil.rmtree(bundle / "rootfs")
    busybox_rootfs(bundle / "rootfs", busybox)
    (bundle / "rootfs" / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    subprocess.run(["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True, capture_output=True)
    return layout


RUN_DOCKERFILE = """\
FROM oci:base:latest
ARG X=a
ARG UNUSED=u
ENV Y=$X
WORKDIR /work
COPY hello.txt ./
RUN cat hello.txt > copied.txt && echo "$Y" > y.txt && rm /bin/vi && mkdir -p /tmp && chmod 1777 /tmp
USER app
RUN id -u > /tmp/uid.txt
"""


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("RUN chroots, which needs root")


def test_run_steps_execute_in_the_image_and_rebuild_from_a_changed_arg(daemon, tmp_path: Path):
    needs_root()
    busybox_layout(tmp_path)
    (tmp_path / "hello.txt").write_text("hello from the context\n")
    (tmp_path / "Dockerfile").write_text(RUN_DOCKERFILE)
    with daemon.client() as client:
        first = build(client, tmp_path, tmp_path / "out", build_args={"X": "b"})
        assert first.built == [1, 2, 3, 4]
        unused = build(client, tmp_path, tmp_path / "out", build_args={"X": "b", "UNUSED": "v"})
        assert unused.built == [] and unused.image_digest == first.image_digest
        changed = build(client, tmp_path, tmp_path / "out", build_args={"X": "c"})
        assert changed.built == [3, 4]

    layout = Layout(tmp_path / "out")
    manifest = layout.read_json(first.image_digest)
    run_layer, user_layer = manifest["layers"][-2:]
    with tarfile.open(layout.blob_path(run_layer["digest"])) as tar:
        names = tar.getnames()
        assert "bin/.wh.vi" in names
        assert tar.extractfile("work/copied.txt").read() == b"hello from the context\n"  # type: ignore[union-attr]
        assert tar.extractfile("work/y.txt").read() == b"b\n"  # type: ignore[union-attr]
    with tarfile.open(layout.blob_path(user_layer["digest"])) as tar:
        uid_file = tar.getmember("tmp/uid.txt")
        assert uid_file.uid == 1000 and tar.extractfile(uid_file).read() == b"1000\n"  # type: ignore[union-attr]


@pytest.mark.realclient
def test_skopeo_copies_the_built_layout(daemon, tmp_path: Path):
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (apt-get install skopeo)")
    context = make_app(tmp_path / "ctx")
    with daemon.client() as client:
        result = build(client, context, tmp_path / "out", tag="v1")
    copy = tmp_path / "copy"
    subprocess.run(["skopeo", "copy", f"oci:{result.layout}:v1", f"oci:{copy}:v1"], check=True, capture_output=True)
    original = Layout(result.layout).read_json(result.image_digest)
    original_config = Layout(result.layout).read_json(original["config"]["digest"])
    config = json.loads(
        subprocess.run(["skopeo", "inspect", "--config", f"oci:{copy}:v1"], check=True, capture_output=True, text=True).stdout
    )
    assert config["config"]["Cmd"] == ["python3", "/app/main.py"]
    assert config["config"]["Labels"] == {"org.opencontainers.image.title": "demo"}
    # skopeo may recompress the layers on the way; their uncompressed content must not change.
    assert config["rootfs"]["diff_ids"] == original_config["rootfs"]["diff_ids"]
    assert len(config["rootfs"]["diff_ids"]) == 4  # FROM scratch adds none
