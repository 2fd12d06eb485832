"""The quick-start demo: the daemon on its embedded defaults, exercised on real layers.

It starts `layercache serve` (local LMDB + pack store), builds a layer tarball
from this machine's Python standard library plus a near-duplicate of it (one
source file edited), and walks through what a builder does, printing each
`layercache` command and its output:
    lookup (miss) -> put the layer -> record -> lookup (hit)
    -> put the near-duplicate (watch stored bytes barely move) -> stats

    python -m bench.demo [--data-dir DIR] [--mb 64]

Without --data-dir the store lives in a fresh temporary directory, so every
run tells the same story; pass the per-user default (~/.local/share/layercache)
or any directory to keep what it stored.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.daemon import REPO, running_daemon
from bench.layers import named_root, near_duplicate_series

NAMESPACE = "demo/app"


def layercache(address: str, *args: str, expect: tuple[int, ...] = (0,)) -> str:
    print(f"$ layercache {shlex.join(args)}")
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", *args, "--server", address], cwd=REPO, capture_output=True, text=True
    )
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print("  " + output.replace("\n", "\n  "))
    if result.returncode not in expect:
        raise SystemExit(f"demo failed: exit {result.returncode}")
    return result.stdout.strip()


def stored_bytes(address: str) -> int:
    out = subprocess.run(
        [sys.executable, "-m", "client.cli", "stats", "--json", "--server", address],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(re.search(r'"stored_bytes": (\d+)', out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="store directory (default: a fresh temporary one)")
    parser.add_argument("--mb", type=int, default=64, help="size of the demo layer in MiB")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="layercache-demo-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "store"
        print(f"== building real layers from the Python standard library (~{args.mb} MiB)")
        base, edited, *_ = near_duplicate_series(Path(scratch) / "layers", [named_root("stdlib")], max_bytes=args.mb << 20)
        print(f"   {Path(base.path).name}: {base.size / 1e6:.1f} MB; {Path(edited.path).name}: {edited.description}")

        print(f"== starting the daemon: layercache serve --data-dir {data_dir}")
        with running_daemon(data_dir) as daemon:
            for line in daemon.announcement:
                print("   " + line)
            address = daemon.grpc
            key = f"step-{base.sha256[:12]}"

            print("== a builder asks for its step's key: a miss, nothing cached yet")
            layercache(address, "lookup", NAMESPACE, key, expect=(0, 3))
            print("== it builds the layer, uploads it and records the step")
            digest = layercache(address, "put", str(base.path), "--media-type", "application/vnd.oci.image.layer.v1.tar")
            layercache(address, "record", NAMESPACE, key, digest, "--meta", "instruction=COPY stdlib /usr/lib/python3")
            print("== the next build asks again: a hit, the layer is reused")
            layercache(address, "lookup", NAMESPACE, key)

            print("== one source file changes: the new layer deduplicates against the old one")
            before = stored_bytes(address)
            layercache(address, "put", str(edited.path), "--media-type", "application/vnd.oci.image.layer.v1.tar")
            added = stored_bytes(address) - before
            print(f"   the {edited.size / 1e6:.1f} MB near-duplicate added {added / 1e3:.1f} kB of stored data")
            layercache(address, "stats")
            layercache(address, "verify")
    print("== done: the daemon stopped cleanly")


if __name__ == "__main__":
    main()
