"""Graceful shutdown on SIGTERM: in-flight calls finish, new ones are turned away."""

from __future__ import annotations

import hashlib
import signal
import threading
import time

import grpc
import pytest

from cached.config import load
from client.errors import UnavailableError
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc
from tests.conftest import REPO

PIECE = b"slow upload " * 10_000


def slow_upload(pieces: int, started: threading.Event, pause: float):
    data = PIECE * pieces
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def requests():
        yield pb.WriteRequest(header=pb.WriteHeader(digest=digest, size=len(data), namespace="life/app"))
        for n in range(pieces):
            yield pb.WriteRequest(data=PIECE)
            if n == 0:
                started.set()
            time.sleep(pause)

    return digest, requests()


def wait_until_receiving(daemon) -> None:
    """Until the daemon's handler has taken upload bytes: a call that the
    server has not started yet when it stops is refused, not drained."""
    deadline = time.monotonic() + 30
    with daemon.client(timeout=5) as probe:
        while probe.stats().bytes_in == 0:
            assert time.monotonic() < deadline, "the upload never reached the daemon"
            time.sleep(0.02)


def with_grace(daemon_factory, tmp_path, seconds: float):
    config = tmp_path / "grace.toml"
    config.write_text(f'[server]\nshutdown_grace_seconds = {seconds}\n')
    return daemon_factory(["--config", str(config)])


def test_sigterm_lets_an_upload_in_flight_finish_and_refuses_new_calls(daemon_factory, tmp_path):
    daemon = with_grace(daemon_factory, tmp_path, 30)
    started = threading.Event()
    digest, requests = slow_upload(pieces=10, started=started, pause=0.2)
    outcome: dict[str, object] = {}

    def upload() -> None:
        with grpc.insecure_channel(daemon.address) as channel:
            try:
                outcome["response"] = pb_grpc.BlobsStub(channel).Write(requests, timeout=60)
            except grpc.RpcError as exc:
                outcome["error"] = exc.code()

    uploader = threading.Thread(target=upload)
    uploader.start()
    assert started.wait(30)
    wait_until_receiving(daemon)
    daemon.process.send_signal(signal.SIGTERM)
    refused_by = time.monotonic() + 10  # once the daemon has handled the signal
    with daemon.client(timeout=5) as late:
        while True:
            try:
                late.capabilities()
            except UnavailableError:
                break
            assert time.monotonic() < refused_by, "new calls were still accepted 10 s after SIGTERM"
            time.sleep(0.05)
    uploader.join(60)
    assert "error" not in outcome, outcome
    assert outcome["response"].descriptor.digest == digest
    assert daemon.stop() == 0  # already signalled: this waits and closes its pipes
    daemon.start()  # the finished upload was committed
    with daemon.client(timeout=30) as client:
        assert client.find_missing([digest]) == []


def test_calls_still_running_at_the_deadline_are_cut_off_and_leave_nothing(daemon_factory, tmp_path):
    daemon = with_grace(daemon_factory, tmp_path, 1)
    started = threading.Event()
    digest, requests = slow_upload(pieces=100, started=started, pause=0.5)
    errors: list[grpc.StatusCode] = []

    def upload() -> None:
        with grpc.insecure_channel(daemon.address) as channel:
            try:
                pb_grpc.BlobsStub(channel).Write(requests, timeout=120)
            except grpc.RpcError as exc:
                errors.append(exc.code())

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    assert started.wait(30)
    stopping = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.stop() == 0  # already signalled: this waits and closes its pipes
    assert time.monotonic() - stopping < 10  # one second of grace, then out
    uploader.join(60)
    assert errors and errors[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    daemon.start()
    with daemon.client(timeout=30) as client:
        assert client.find_missing([digest]) == [digest]
        assert client.stats().pack_bytes == 0  # the aborted upload was rolled back


def test_the_deployment_example_config_is_valid(tmp_path):
    shipped = (REPO / "deploy" / "layercache.toml").read_text()
    config = load(REPO / "deploy" / "layercache.toml")  # starts as shipped, tokens off
    assert config.store.max_bytes and config.server.metrics_listen and not config.auth.enabled
    example = tmp_path / "layercache.toml"
    example.write_text(shipped.replace("# tokens_file = ", "tokens_file = "))
    (tmp_path / "tokens.toml").write_text('[[tokens]]\nname = "ci"\ntoken = "0123456789abcdefghij"\nroles = { "*" = "write" }\n')
    assert load(example).auth.enabled  # and its one commented line turns them on
    unit = (REPO / "deploy" / "layercache.service").read_text()
    assert "--config /etc/layercache/layercache.toml" in unit
    grace = config.server.shutdown_grace_seconds
    assert int(unit.split("TimeoutStopSec=")[1].split()[0]) > grace
