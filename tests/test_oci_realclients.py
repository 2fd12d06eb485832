"""Real registry clients against the real daemon: skopeo, buildah, oras.

skopeo copies a busybox image built with umoci into the daemon and back;
buildah builds with --layers and --cache-to/--cache-from, so its cache
lookups are GETs of manifests by tag that the daemon counts; the oras SDK
pushes and pulls an artifact. Each skips, saying why, only when not run as
root or when its client is not installed (CI installs them:
apt-get install skopeo buildah umoci busybox-static; pip install oras).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.oci_image import BUSYBOX, busybox_image, manifest_digest
from tests.oci_support import Registry

pytestmark = pytest.mark.realclient
REPO = Path(__file__).resolve().parent.parent


def require(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (buildah with the vfs driver and chroot isolation, umoci ownership)")
    for binary in binaries:
        if shutil.which(binary) is None and not Path(binary).exists():
            pytest.skip(f"{binary} is not installed (apt-get install skopeo buildah umoci busybox-static)")


def run(*command: str, cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def busybox_layout(tmp_path_factory) -> tuple[Path, str]:
    require("umoci", BUSYBOX)
    work = tmp_path_factory.mktemp("busybox")
    layout = work / "layout"
    return layout, busybox_image(layout, "base", work)


def test_skopeo_copies_an_image_in_and_out_with_digests_preserved(daemon, busybox_layout, tmp_path):
    require("skopeo")
    layout, digest = busybox_layout
    host = daemon.http_address
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{host}/library/busybox:1")
    inspected = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{host}/library/busybox:1"))
    assert inspected["Digest"] == digest
    assert inspected["RepoTags"] == ["1"]
    original = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    assert inspected["Layers"] == [layer["digest"] for layer in original["layers"]]
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/library/busybox:1")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digest

    back = tmp_path / "back"
    run("skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/library/busybox:1", f"oci:{back}:copy")
    assert manifest_digest(back, "copy") == digest
    for blob in (back / "blobs" / "sha256").iterdir():
        assert (layout / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


DOCKERFILE = """\
FROM {host}/base:latest
COPY a.txt /app/a.txt
RUN echo built > /app/built.txt
COPY b.txt /app/b.txt
RUN cat /app/a.txt /app/b.txt > /app/both.txt
"""


def buildah_build(context: Path, root: Path, *options: str) -> tuple[str, list[str]]:
    """Builds in a fresh storage root; returns the image ID and, per step
    after FROM, "cache" or "built"."""
    iidfile = root / "iid"
    output = run(
        "buildah", "--root", str(root / "storage"), "--runroot", str(root / "run"), "--storage-driver", "vfs",
        "bud", "--isolation", "chroot", "--layers", "--tls-verify=false", "--iidfile", str(iidfile), *options, ".",
        cwd=context,
    )
    steps = re.split(r"^STEP \d+/\d+: ", output, flags=re.M)[2:]  # [0] precedes STEP 1, [1] is FROM
    return iidfile.read_text().strip(), ["cache" if "Using cache" in step else "built" for step in steps]


def namespace_counts(daemon, namespace: str) -> tuple[int, int, int]:
    """(lookups, hits, misses) as `layercache stats` prints them."""
    printed = subprocess.run(
        [sys.executable, "-m", "client.cli", "stats", "--server", daemon.address], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    match = re.search(rf"^  {re.escape(namespace)}: \d+ records, (\d+) lookups, (\d+) hits, (\d+) misses", printed, re.M)
    assert match, printed
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def test_buildah_layer_cache_to_and_from_the_daemon(daemon, busybox_layout, tmp_path):
    require("buildah", "skopeo")
    layout, _ = busybox_layout
    host = daemon.http_address
    run("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:base", f"docker://{host}/base:latest")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE.format(host=host))
    (context / "a.txt").write_text("first file\n")
    (context / "b.txt").write_text("second file\n")
    cache = f"{host}/cache/app"

    first_id, first = buildah_build(context, tmp_path / "root1", "--cache-to", cache)
    assert first == ["built"] * 4

    # An empty storage root: every step comes from the daemon.
    before = namespace_counts(daemon, "cache/app")
    second_id, second = buildah_build(context, tmp_path / "root2", "--cache-from", cache)
    assert second == ["cache"] * 4
    assert second_id == first_id
    after = namespace_counts(daemon, "cache/app")
    assert tuple(a - b for a, b in zip(after, before)) == (4, 4, 0)

    # Change the file of the second COPY: the steps before it still hit, it
    # and everything after are rebuilt (buildah stops asking after a miss).
    (context / "b.txt").write_text("second file, changed\n")
    third_id, third = buildah_build(context, tmp_path / "root3", "--cache-from", cache, "--cache-to", cache)
    assert third == ["cache", "cache", "built", "built"]
    assert third_id != first_id
    final = namespace_counts(daemon, "cache/app")
    assert tuple(f - a for f, a in zip(final, after)) == (3, 2, 1)

    # What the third build pushed serves a fourth one entirely.
    fourth_id, fourth = buildah_build(context, tmp_path / "root4", "--cache-from", cache)
    assert (fourth_id, fourth) == (third_id, ["cache"] * 4)


def test_oras_pushes_and_pulls_an_artifact(daemon, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root, like the other real-client scenarios")
    oras_client = pytest.importorskip("oras.client", reason="the oras SDK is not installed (pip install oras)")
    host = daemon.http_address
    artifact = tmp_path / "notes.txt"
    artifact.write_bytes(os.urandom(300_000))
    client = oras_client.OrasClient(hostname=host, insecure=True)
    pushed = client.push(files=[str(artifact)], target=f"{host}/artifacts/notes:v1", disable_path_validation=True)
    assert pushed.status_code == 201
    pulled_dir = tmp_path / "pulled"
    pulled = client.pull(target=f"{host}/artifacts/notes:v1", outdir=str(pulled_dir))
    assert [Path(p).read_bytes() for p in pulled] == [artifact.read_bytes()]
    assert client.get_tags(f"{host}/artifacts/notes") == ["v1"]
    manifest = Registry(host).request("GET", "/v2/artifacts/notes/manifests/v1")
    assert manifest.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
    # Its chunked mode: POST, a PATCH per 64 KiB, PUT.
    artifact.write_bytes(os.urandom(300_000))
    chunked = client.push(files=[str(artifact)], target=f"{host}/artifacts/notes:v2", disable_path_validation=True, do_chunked=True, chunk_size=65536)
    assert chunked.status_code == 201
    again = client.pull(target=f"{host}/artifacts/notes:v2", outdir=str(tmp_path / "again"))
    assert [Path(p).read_bytes() for p in again] == [artifact.read_bytes()]
