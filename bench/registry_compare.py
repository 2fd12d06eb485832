"""skopeo push and pull through layercache's OCI endpoint against Debian's docker-registry.

Steps, in one run on one machine:
 1. build (or reuse) a deterministic real-tree layer of about --mb MiB and its
    near-duplicate variants (bench/layers.py), and write two OCI layouts by
    hand (bench/oci_image.py): image A with the base layer, image B, the
    near duplicate, with the upgrade-package variant of it;
 2. start the real daemon and docker-registry (distribution 2.8, filesystem
    storage in a temp dir), each on a free loopback port, on fresh storage;
 3. `skopeo copy` image A into each and back out to a fresh OCI layout,
    timed: the registry's times are the limit, layercache/registry the
    ratio (target <= 1.0);
 4. push image B into each and compare what each then stores: du of the
    registry's directory against layercache's stored bytes (and its data
    directory's du, index included).

skopeo runs with --preserve-digests, so the uncompressed layers travel as
they are: without it skopeo gzips every layer on the way to a registry, and
that (identical for both servers) would be most of what is timed.

    python -m bench.registry_compare [--mb 300] [--rounds 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.layers import Layer, Variant, named_root, near_duplicate_series
from bench.oci_image import write_layout
from client import Client

ROOTS = ("usr-lib", "stdlib", "usr-share")
REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.0
START_TIMEOUT = 30.0
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {address}
"""


def free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_ready(address: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on {address} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
                return
        time.sleep(0.1)
    raise SystemExit(f"server on {address} did not come up")


@contextlib.contextmanager
def layercache(data_dir: Path) -> Iterator[tuple[str, str]]:
    """The daemon on fresh storage: (HTTP address, gRPC address)."""
    command = [
        sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--data-dir", str(data_dir),
    ]
    with open(data_dir.parent / "layercache.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        grpc_line, http_line = process.stdout.readline(), process.stdout.readline()
        grpc = re.search(r"serving gRPC on (\S+)", grpc_line)
        http = re.search(r"serving OCI distribution on (\S+)", http_line)
        if not grpc or not http:
            raise SystemExit(f"daemon did not start: {grpc_line!r} {http_line!r}")
        wait_ready(http.group(1), process)
        yield http.group(1), grpc.group(1)
    finally:
        process.terminate()
        process.wait(60)


@contextlib.contextmanager
def docker_registry(root: Path) -> Iterator[str]:
    address = free_address()
    config = root.parent / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(root=root, address=address))
    with open(root.parent / "registry.log", "w") as log:
        process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(address, process)
        yield address
    finally:
        process.terminate()
        process.wait(60)


def skopeo_copy(source: str, dest: str) -> float:
    command = ["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", source, dest]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr}")
    return seconds


def du(path: Path) -> int:
    """Bytes of disk in use under `path` (allocated blocks, as `du` counts)."""
    return int(subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def build_images(work: Path, megabytes: int) -> tuple[Path, list[Layer]]:
    folder = work / f"series-{megabytes}"
    layers = near_duplicate_series(folder, [named_root(n) for n in ROOTS], max_bytes=megabytes << 20)
    by_name = {layer.name: layer for layer in layers}
    layout = work / f"layout-{megabytes}"
    shutil.rmtree(layout, ignore_errors=True)
    chosen = [by_name["base"], by_name[Variant.UPGRADE_PACKAGE.value]]
    for tag, layer in zip(("a", "b"), chosen):
        assert layer.path is not None
        write_layout(layout, tag, [Path(layer.path)])
    return layout, chosen


def one_round(layout: Path, scratch: Path) -> dict[str, dict[str, float]]:
    """Push A, pull A, push B into both servers on fresh storage; times and bytes."""
    results: dict[str, dict[str, float]] = {}
    with layercache(scratch / "layercache") as (http, grpc), docker_registry(scratch / "registry") as registry:
        for name, address in (("layercache", http), ("registry", registry)):
            image = f"docker://{address}/bench/app"
            figures = results[name] = {}
            figures["push"] = skopeo_copy(f"oci:{layout}:a", f"{image}:a")
            figures["pull"] = skopeo_copy(f"{image}:a", f"oci:{scratch / ('pulled-' + name)}:a")
            figures["push_b"] = skopeo_copy(f"oci:{layout}:b", f"{image}:b")
        with Client(grpc) as client:
            stats = client.stats()
        results["layercache"]["stored"] = stats.stored_bytes
        results["layercache"]["logical"] = stats.logical_bytes
        results["layercache"]["disk"] = du(scratch / "layercache")
        results["registry"]["stored"] = results["registry"]["disk"] = du(scratch / "registry")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the image's layer in MiB")
    parser.add_argument("--rounds", type=int, default=1, help="repeat on fresh storage; best times are reported")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "layercache-bench")
    args = parser.parse_args()
    for binary in ("skopeo", "docker-registry", "du"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} is not installed (apt-get install skopeo docker-registry)")

    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    layout, (base, variant) = build_images(args.work, args.mb)
    print(f"image A: one {base.size / 1e6:,.0f} MB layer ({base.members:,} files from {', '.join(ROOTS)}); "
          f"image B: its {variant.name} variant ({time.perf_counter() - start:.1f} s to build)")

    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.work) as scratch:
            rounds.append(one_round(layout, Path(scratch)))
    best = {name: {key: min(r[name][key] for r in rounds) for key in rounds[0][name]} for name in rounds[0]}
    ours, theirs = best["layercache"], best["registry"]

    mb = base.size / 1e6
    print(f"{'':<8}{'layercache':>12}{'registry':>12}{'ratio':>8}")
    for key, label in (("push", "push A"), ("pull", "pull A"), ("push_b", "push B")):
        ratio = ours[key] / theirs[key]
        line = f"{label:<8}{ours[key]:>10.2f} s{theirs[key]:>10.2f} s{ratio:>8.2f}"
        if key != "push_b":  # B is mostly known to layercache already: no like-for-like time
            verdict = "ok" if ratio <= TARGET_RATIO else f"OVER the {TARGET_RATIO} target"
            line += f"   {mb / ours[key]:,.0f} vs {mb / theirs[key]:,.0f} MB/s, {verdict}"
        print(line)
    print(f"stored after A and B: layercache {ours['stored'] / 1e6:,.1f} MB (data dir {ours['disk'] / 1e6:,.1f} MB on disk, "
          f"{ours['logical'] / 1e6:,.1f} MB logical) vs registry {theirs['stored'] / 1e6:,.1f} MB on disk: "
          f"{ours['stored'] / theirs['stored']:.3f}x")
    print(json.dumps({"mb": args.mb, "rounds": args.rounds, "best": best}, sort_keys=True))


if __name__ == "__main__":
    main()
