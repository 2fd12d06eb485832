"""Shared fixtures: a real daemon process on a free port, real layers.

`daemon` starts `layercache serve` (through `python -m client.cli`) as a
subprocess on port 0 with a fresh data directory and waits for the line that
announces its address. `daemon_factory` makes more, with extra flags, and
their data directories survive restarts so tests can kill and restart them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client

REPO = Path(__file__).resolve().parent.parent
_ANNOUNCE = re.compile(r"serving gRPC on (\S+)")
_ANNOUNCE_HTTP = re.compile(r"serving OCI distribution on (\S+)")
START_TIMEOUT = 30.0


class DaemonProcess:
    def __init__(self, data_dir: Path, log_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self.http_address = ""  # empty when started with --http-listen off
        self.lines: list[str] = []
        self._starts = 0

    def start(self) -> DaemonProcess:
        self._starts += 1
        self.address = self.http_address = ""
        stderr = open(self.log_dir / f"daemon-{self._starts}.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "client.cli", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                "--data-dir", str(self.data_dir), *self.extra_args,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        stderr.close()
        deadline = time.monotonic() + START_TIMEOUT
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = _ANNOUNCE.search(line)
            if match:
                self.address = match.group(1)
            match = _ANNOUNCE_HTTP.search(line)
            if match:
                self.http_address = match.group(1)
            # The OCI endpoint is announced after gRPC, unless it is off.
            if self.address and (self.http_address or not self.http_enabled):
                return self
        self.process.kill()
        raise RuntimeError(f"daemon did not start: {self.lines} {self.log().strip()[-2000:]}")

    @property
    def http_enabled(self) -> bool:
        # Flags win over the config file, and the last --http-listen wins.
        values = [v for flag, v in zip(self.extra_args, self.extra_args[1:]) if flag == "--http-listen"]
        return not values or values[-1] != "off"

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.log_dir.glob("daemon-*.log")))

    def client(self, **kwargs: object) -> Client:
        return Client(self.address, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        if self.process.stdout:
            self.process.stdout.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> DaemonProcess:
        self.stop()
        return self.start()

    @property
    def rss_peak_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM")


@pytest.fixture
def daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    started: list[DaemonProcess] = []

    def make(extra_args: list[str] | None = None, data_dir: Path | None = None) -> DaemonProcess:
        base = tmp_path_factory.mktemp("daemon")
        proc = DaemonProcess(data_dir or base / "data", base, extra_args)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        if proc.process is not None and proc.process.poll() is None:
            proc.kill()


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with daemon.client() as c:
        yield c


@pytest.fixture(scope="session")
def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
