"""Starts the real daemon for the demo and the benchmarks, and stops it.

    with running_daemon(data_dir) as daemon:
        Client(daemon.grpc) ...; urllib against daemon.http

It runs `layercache serve` (as `python -m client.cli serve`) on free ports,
waits for the lines that announce its addresses, and on exit stops it with
SIGTERM, as an operator would.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_GRPC = re.compile(r"serving gRPC on (\S+)")
_HTTP = re.compile(r"serving OCI distribution on (\S+)")


@dataclass(frozen=True)
class RunningDaemon:
    process: subprocess.Popen[str]
    grpc: str
    http: str | None  # None when the OCI endpoint is off
    announcement: list[str]


@contextlib.contextmanager
def running_daemon(data_dir: Path, *extra_args: str, http: bool = True, log: Path | None = None) -> Iterator[RunningDaemon]:
    command = [
        sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0" if http else "off", "--data-dir", str(data_dir), *extra_args,
    ]
    stderr = open(log, "w") if log else None
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        grpc = http_address = None
        while grpc is None or (http and http_address is None):
            line = process.stdout.readline()
            if not line:
                raise SystemExit(f"the daemon did not start: {''.join(lines)!r}")
            lines.append(line.strip())
            grpc = grpc or _match(_GRPC, line)
            http_address = http_address or _match(_HTTP, line)
        yield RunningDaemon(process, grpc, http_address, lines)
    finally:
        process.terminate()
        process.wait(60)
        if process.stdout:
            process.stdout.close()
        if stderr:
            stderr.close()


def _match(pattern: re.Pattern[str], line: str) -> str | None:
    found = pattern.search(line)
    return found.group(1) if found else None
