"""Load: 32 concurrent clients mixing Lookup, FindMissing, Read and Write.

Steps, all in one run on one machine:
 1. start the real daemon on a fresh data directory (or use --server) and
    preload blobs and instruction-cache chains;
 2. the limit: each call alone, one client, sequentially (idle latency);
 3. --clients clients (threads spread over --processes processes, so the
    clients' own Python does not serialize on one GIL) run the mix for
    --seconds over loopback;
 4. print per call: count, throughput, p50 and p99 latency, errors, and p99
    under load as a ratio of the idle p50.

    python -m bench.load [--seconds 60] [--clients 32] [--processes 4] [--server HOST:PORT]

The mix per call: Lookup of a 10-key chain (40%), FindMissing of 100 digests,
half of them absent (30%), Read of a whole 256 KiB blob (20%), Write of a new
64 KiB blob (10%). Target (issue 5): zero errors.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.daemon import running_daemon
from client import Client, LayercacheError

NAMESPACE = "bench/load"
BLOBS = 64
BLOB_BYTES = 256 * 1024
WRITE_BYTES = 64 * 1024
CHAINS = 32
CHAIN = 10
MIX = (("Lookup", 40), ("FindMissing", 30), ("Read", 20), ("Write", 10))


def preload(address: str) -> list[str]:
    """Blobs and chains for the readers; returns the blob digests."""
    rng = random.Random(5)
    with Client(address, timeout=60) as client:
        blobs = [client.put(rng.randbytes(BLOB_BYTES), namespace=NAMESPACE) for _ in range(BLOBS)]
        for chain in range(CHAINS):
            for step in range(CHAIN):
                client.record(NAMESPACE, f"chain-{chain}-step-{step}", [blobs[(chain + step) % BLOBS]])
    return [b.digest for b in blobs]


class Caller:
    """One client's calls; `call(name)` runs one and returns its latency."""

    def __init__(self, client: Client, digests: list[str], seed: int) -> None:
        self.client = client
        self.digests = digests
        self.rng = random.Random(seed)
        absent = [f"sha256:{self.rng.getrandbits(256):064x}" for _ in range(50)]
        self.query = digests[:50] + absent

    def call(self, name: str) -> float:
        rng = self.rng
        started = time.perf_counter()
        if name == "Lookup":
            chain = rng.randrange(CHAINS)
            self.client.lookup(NAMESPACE, [f"chain-{chain}-step-{s}" for s in range(CHAIN)])
        elif name == "FindMissing":
            self.client.find_missing(self.query, NAMESPACE)
        elif name == "Read":
            for _ in self.client.read(rng.choice(self.digests), namespace=NAMESPACE):
                pass
        else:
            self.client.put(os.urandom(WRITE_BYTES), namespace=NAMESPACE)
        return time.perf_counter() - started


def idle_latencies(address: str, digests: list[str], calls: int = 100) -> dict[str, float]:
    """The limit: median latency of each call alone."""
    with Client(address, timeout=60) as client:
        caller = Caller(client, digests, seed=0)
        return {name: statistics.median(caller.call(name) for _ in range(calls)) for name, _ in MIX}


def _worker(address: str, digests: list[str], threads: int, seconds: float, seed: int, results: multiprocessing.Queue) -> None:
    deadline = time.monotonic() + seconds
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]

    def run(n: int, out: dict[str, list]) -> None:
        with Client(address, timeout=60) as client:
            caller = Caller(client, digests, seed * 1000 + n)
            while time.monotonic() < deadline:
                name = caller.rng.choices(names, weights)[0]
                try:
                    out.setdefault(name, []).append(caller.call(name))
                except LayercacheError as exc:
                    out.setdefault("errors", []).append(f"{name}: {exc.code} {exc}")

    outs: list[dict[str, list]] = [{} for _ in range(threads)]
    pool = [threading.Thread(target=run, args=(n, outs[n])) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    merged: dict[str, list] = {}
    for out in outs:
        for name, values in out.items():
            merged.setdefault(name, []).extend(values)
    results.put(merged)


def under_load(address: str, digests: list[str], clients: int, processes: int, seconds: float) -> dict[str, list]:
    """Latencies per call (and "errors"); each process runs `seconds` from its own start."""
    context = multiprocessing.get_context("spawn")  # gRPC and fork do not mix
    results: multiprocessing.Queue = context.Queue()
    shares = [clients // processes + (1 if n < clients % processes else 0) for n in range(processes)]
    workers = [
        context.Process(target=_worker, args=(address, digests, share, seconds, n, results))
        for n, share in enumerate(shares)
        if share
    ]
    for worker in workers:
        worker.start()
    merged: dict[str, list] = {}
    for _ in workers:
        for name, values in results.get().items():
            merged.setdefault(name, []).extend(values)
    for worker in workers:
        worker.join()
    return merged


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--server", help="an already running daemon (default: start one)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        address = args.server
        if address is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="layercache-load-")))
            address = stack.enter_context(running_daemon(work / "data", http=False)).grpc
        digests = preload(address)
        idle = idle_latencies(address, digests)
        results = under_load(address, digests, args.clients, args.processes, args.seconds)
    errors = results.pop("errors", [])
    total = sum(len(v) for v in results.values())
    elapsed = args.seconds
    print(f"{args.clients} clients in {args.processes} processes, {elapsed:.1f} s, {os.cpu_count()} cores shared with the daemon")
    print(f"{'call':<12}{'count':>8}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'idle p50':>10}{'p99/idle':>10}")
    for name, _ in MIX:
        values = results.get(name, [])
        if not values:
            print(f"{name:<12}{0:>8}")
            continue
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        print(
            f"{name:<12}{len(values):>8}{len(values) / elapsed:>10.1f}{p50 * 1e3:>9.2f}{p99 * 1e3:>9.2f}"
            f"{idle[name] * 1e3:>10.2f}{p99 / idle[name]:>9.1f}x"
        )
    print(f"{'all':<12}{total:>8}{total / elapsed:>10.1f}")
    print(f"errors: {len(errors)} (target 0)")
    for line in errors[:10]:
        print(f"  {line}")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
