"""`layercache`: run the daemon and talk to it.

    layercache serve [--listen HOST:PORT] [--http-listen HOST:PORT|off] [--data-dir DIR] [--config FILE.toml]
    layercache put FILE [--media-type T] [--namespace NS]     prints the digest
    layercache get DIGEST -o FILE
    layercache stat DIGEST
    layercache record NAMESPACE KEY DIGEST... [--meta K=V ...]
    layercache lookup NAMESPACE KEY...
    layercache stats [--json]
    layercache verify [--sample FRACTION]

Client commands take --server HOST:PORT (default: $LAYERCACHE_SERVER, else
127.0.0.1:50051), --token (default: $LAYERCACHE_TOKEN) and, for a daemon
serving TLS, --tls-ca FILE (and --tls-cert/--tls-key for client certificates). Exit codes tell failures apart for scripts:
    0 ok   2 invalid input   3 not found (lookup: some key missed)
    4 failed precondition (blobs missing)   5 daemon unreachable or unavailable
    6 data loss   7 permission denied or unauthenticated   8 cache full
    1 any other error
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from client import builder_cli, errors
from client.connection import add_connection_options, connect
from client.types import Descriptor

EXIT_CODES: dict[type[errors.LayercacheError], int] = {
    errors.InvalidArgumentError: 2,
    errors.NotFoundError: 3,
    errors.OutOfRangeError: 2,
    errors.FailedPreconditionError: 4,
    errors.UnavailableError: 5,
    errors.DataLossError: 6,
    errors.PermissionDeniedError: 7,
    errors.UnauthenticatedError: 7,
    errors.ResourceExhaustedError: 8,
}
EXIT_MISS = 3
PROGRESS_MIN_BYTES = 8 << 20


class ProgressBar:
    """A one-line progress bar on stderr, shown only on a terminal."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or total < PROGRESS_MIN_BYTES or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        width = 30
        filled = width * done // total if total else width
        rate = done / max(now - self._started, 1e-6) / 1e6
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done / 1e6:,.0f}/{total / 1e6:,.0f} MB {rate:,.0f} MB/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _cmd_serve(args: argparse.Namespace) -> int:
    # Imported here so that the client commands never load the daemon.
    from cached.config import ConfigError, load
    from cached.server import serve
    from cached.store import DataDirError

    try:
        config = load(
            args.config,
            listen=args.listen,
            data_dir=args.data_dir,
            http_listen=args.http_listen,
            server_flags={"metrics_listen": args.metrics_listen, "log_format": args.log_format},
        )
        return serve(config)
    except (ConfigError, DataDirError) as exc:
        print(f"layercache serve: {exc}", file=sys.stderr)
        return 2


def _cmd_put(args: argparse.Namespace) -> int:
    source = sys.stdin.buffer if str(args.file) == "-" else args.file
    with connect(args) as client:
        descriptor = client.put(source, args.media_type, args.namespace, progress=ProgressBar("put"))
    print(descriptor.digest)
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.output == "-":
            client.get(args.digest, sys.stdout.buffer)
        else:
            client.get(args.digest, args.output, progress=ProgressBar("get"))
    return 0


def _cmd_stat(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.stat(args.digest)
    _print_json(dataclasses.asdict(info))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    metadata = dict(args.meta)
    with connect(args) as client:
        missing = client.find_missing(args.digests, args.namespace)
        if missing:
            print("layercache: the cache lacks these blobs: " + " ".join(missing), file=sys.stderr)
            return EXIT_CODES[errors.FailedPreconditionError]
        layers = [client.stat(d, args.namespace).descriptor for d in args.digests]
        entry = client.record(args.namespace, args.key, layers, metadata)
    print(f"recorded {entry.namespace} {entry.key} -> {len(entry.layers)} layer(s)")
    return 0


def _cmd_lookup(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.lookup(args.namespace, args.keys)
    for entry in result.hits:
        print(f"HIT  {entry.key} " + " ".join(d.digest for d in entry.layers))
    if len(result.hits) < len(args.keys):
        missed = args.keys[len(result.hits)]
        detail = f" ({result.miss_reason}" + (": " + " ".join(result.missing_digests) if result.missing_digests else "") + ")"
        print(f"MISS {missed}{detail}")
        for key in args.keys[len(result.hits) + 1 :]:
            print(f"---  {key} (after a miss)")
        return EXIT_MISS
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        stats = client.stats(args.top)
    if args.json:
        _print_json(dataclasses.asdict(stats))
        return 0
    rate = f"{100 * stats.hits / stats.lookups:.1f}%" if stats.lookups else "n/a"
    rows = [
        ("blobs", f"{stats.blobs:,}"),
        ("chunks", f"{stats.chunks:,}"),
        ("logical bytes", _size(stats.logical_bytes)),
        ("stored bytes", _size(stats.stored_bytes) + (f" (bound {_size(stats.max_bytes)})" if stats.max_bytes else "")),
        ("dedup ratio", f"{stats.dedup_ratio:.2f}x"),
        ("pack files", _size(stats.pack_bytes)),
        ("records", f"{stats.records:,}"),
        ("lookups", f"{stats.lookups:,} (hits {stats.hits:,}, misses {stats.misses:,}, hit rate {rate})"),
        ("bytes in / out", f"{_size(stats.bytes_in)} / {_size(stats.bytes_out)}"),
        ("evictions", f"{stats.evictions:,}"),
        ("uptime", f"{stats.uptime_seconds:,.0f} s"),
    ]
    for name, value in rows:
        print(f"{name:<16}{value}")
    for ns in stats.namespaces:
        ns_rate = f"{100 * ns.hits / ns.lookups:.1f}%" if ns.lookups else "n/a"
        print(f"  {ns.namespace}: {ns.records} records, {ns.lookups} lookups, {ns.hits} hits, {ns.misses} misses ({ns_rate})")
    if stats.top_keys:
        print("most used keys")
        for usage in stats.top_keys:
            print(f"  {usage.hits:>8,} hits  {usage.namespace} {usage.key}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with connect(args) as client:
        report = client.verify(args.sample)
    print(f"checked {report.blobs_checked} blobs, {report.chunks_checked} chunks, {_size(report.bytes_checked)}")
    for problem in report.problems:
        print(f"PROBLEM {problem.digest}: {problem.description}")
    return EXIT_CODES[errors.DataLossError] if report.problems else 0


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layercache", description="Content-addressable layer cache.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        if name != "serve":
            add_connection_options(sub)
        return sub

    serve = command("serve", _cmd_serve, "run the daemon")
    serve.add_argument("--listen", help="gRPC address HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument("--http-listen", help="OCI distribution (registry) address HOST:PORT, or off (default 127.0.0.1:5000)")
    serve.add_argument("--data-dir", type=Path, help="store directory (default: per-user data dir)")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--metrics-listen", help="serve Prometheus /metrics on HOST:PORT (default: off)")
    serve.add_argument("--log-format", choices=("text", "json"), help="daemon log format (default: text)")

    put = command("put", _cmd_put, "upload a file (- for stdin); prints its digest")
    put.add_argument("file", type=Path)
    put.add_argument("--media-type", default="application/octet-stream")
    put.add_argument("--namespace", default="", help="namespace the blob belongs to")

    get = command("get", _cmd_get, "download a blob")
    get.add_argument("digest")
    get.add_argument("-o", "--output", required=True, help="file to write, or - for stdout")

    stat = command("stat", _cmd_stat, "show a blob's metadata")
    stat.add_argument("digest")

    record = command("record", _cmd_record, "record NAMESPACE KEY -> layer blobs")
    record.add_argument("namespace")
    record.add_argument("key")
    record.add_argument("digests", nargs="+", metavar="DIGEST")
    record.add_argument("--meta", action="append", default=[], type=_key_value, metavar="KEY=VALUE", help="free-form metadata")

    lookup = command("lookup", _cmd_lookup, "look up a chain of keys; exit 3 if any key misses")
    lookup.add_argument("namespace")
    lookup.add_argument("keys", nargs="+", metavar="KEY")

    stats = command("stats", _cmd_stats, "show cache statistics")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--top", type=int, default=10, metavar="N", help="show the N most used keys (default: %(default)s)")

    verify = command("verify", _cmd_verify, "re-hash stored blobs and report problems")
    verify.add_argument("--sample", type=float, default=0.0, help="fraction of blobs to check (default: all)")

    builder_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except errors.LayercacheError as exc:
        print(f"layercache: {exc.code}: {exc}", file=sys.stderr)
        for cls in type(exc).__mro__:
            if cls in EXIT_CODES:
                return EXIT_CODES[cls]
        return 1
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"layercache: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"layercache: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
