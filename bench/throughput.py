"""Put/get throughput of a ~1 GiB real-tree layer, against raw grpcio, plus dedup.

Steps, all in one run on one machine:
 1. build (or reuse) a deterministic layer tar of about --mb MiB from real trees
    (/usr/lib, the Python stdlib, /usr/share) and its near-duplicate variants;
 2. measure raw grpcio streaming throughput (bench/rawgrpc.py) with the same
    total size: the limit;
 3. start the real daemon on a fresh data directory, `Client.put` the layer
    from its file and `Client.get` it back to a file, timed;
 4. put the near-duplicate series and report stored/logical bytes.

    python -m bench.throughput [--mb 1024] [--work DIR] [--compression-level N]

Client and daemon share the machine's cores, as they do for a builder using
a local cache. Target (issue 2): put and get both at least 0.6x raw.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

from bench.daemon import running_daemon
from bench.layers import Layer, named_root, near_duplicate_series
from bench.rawgrpc import measure
from client import Client

ROOTS = ("usr-lib", "stdlib", "usr-share")


class _Discard(io.RawIOBase):
    """A sink: what `get` writes after verifying it is dropped."""

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return len(data)


def series(work: Path, megabytes: int) -> list[Layer]:
    folder = work / f"series-{megabytes}"
    folder.mkdir(parents=True, exist_ok=True)
    return near_duplicate_series(folder, [named_root(n) for n in ROOTS], max_bytes=megabytes << 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="layer size in MiB")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "layercache-bench")
    parser.add_argument("--compression-level", type=int, default=None, help="daemon zstd level (0: off)")
    args = parser.parse_args()

    start = time.perf_counter()
    layers = series(args.work, args.mb)
    base = layers[0]
    print(f"layers: {len(layers)} x ~{base.size / 1e6:,.0f} MB from {', '.join(ROOTS)} ({time.perf_counter() - start:.1f} s)")

    raw_up, raw_down = measure(base.size)
    print(f"raw grpc (1 MiB messages): upload {raw_up / 1e6:,.0f} MB/s, download {raw_down / 1e6:,.0f} MB/s")

    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        flags = []
        if args.compression_level is not None:
            config = Path(scratch) / "config.toml"
            config.write_text(f"[store]\ncompression_level = {args.compression_level}\n")
            flags = ["--config", str(config)]
        with running_daemon(Path(scratch) / "data", *flags, http=False) as daemon, Client(daemon.grpc) as client:
            start = time.perf_counter()
            desc = client.put(base.path, "application/vnd.oci.image.layer.v1.tar")
            put_rate = base.size / (time.perf_counter() - start)
            start = time.perf_counter()
            client.get(desc.digest, _Discard())
            get_rate = base.size / (time.perf_counter() - start)
            out = Path(scratch) / "out.tar"
            start = time.perf_counter()
            client.get(desc.digest, out)
            file_rate = base.size / (time.perf_counter() - start)
            os.unlink(out)
            print(f"put {put_rate / 1e6:,.0f} MB/s = {put_rate / raw_up:.2f}x raw upload (target >= 0.6)")
            print(f"get {get_rate / 1e6:,.0f} MB/s = {get_rate / raw_down:.2f}x raw download (target >= 0.6), digest verified")
            # Writing a file is dominated by this VM's cost of fresh page-cache pages.
            print(f"get to a file {file_rate / 1e6:,.0f} MB/s = {file_rate / raw_down:.2f}x raw download")

            stats = client.stats()
            print(f"{base.name}: logical {base.size / 1e6:,.1f} MB, stored {stats.stored_bytes / 1e6:,.1f} MB")
            for layer in layers[1:]:
                before = stats.stored_bytes
                client.put(layer.path, "application/vnd.oci.image.layer.v1.tar")
                stats = client.stats()
                added = stats.stored_bytes - before
                print(f"{layer.name}: logical {layer.size / 1e6:,.1f} MB, added {added / 1e6:,.2f} MB stored ({added / layer.size:.2%}) - {layer.description}")
            print(
                f"series: logical {stats.logical_bytes / 1e6:,.1f} MB, stored {stats.stored_bytes / 1e6:,.1f} MB, "
                f"stored/logical {stats.stored_bytes / stats.logical_bytes:.3f} (dedup ratio {stats.dedup_ratio:.2f}x)"
            )


if __name__ == "__main__":
    main()
