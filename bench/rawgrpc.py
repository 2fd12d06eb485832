"""The raw grpcio streaming limit on this machine, for benchmarks to compare against.

A separate process serves two methods with no protobuf and no storage behind
them: one swallows a client stream of byte messages, one sends a server stream
of pre-made messages. What a client achieves against it is the ceiling for any
gRPC service in Python here, measured in the same run as the thing compared.

    python -m bench.rawgrpc --mb 1024
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

MESSAGE = 1 << 20
_SERVICE = "rawgrpc.Sink"
_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def _swallow(requests, context):
    total = 0
    for message in requests:
        total += len(message)
    return total.to_bytes(8, "little")


def _emit(request, context):
    total = int.from_bytes(request, "little")
    payload = bytes(MESSAGE)
    sent = 0
    while sent < total:
        yield payload
        sent += MESSAGE


def _serve() -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
    handlers = {
        "Swallow": grpc.stream_unary_rpc_method_handler(_swallow),
        "Emit": grpc.unary_stream_rpc_method_handler(_emit),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(_SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.stop(0)


def measure(total_bytes: int) -> tuple[float, float]:
    """(upload, download) bytes per second against a fresh server process."""
    server = subprocess.Popen(
        [sys.executable, "-c", "from bench.rawgrpc import _serve; _serve()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=_OPTIONS) as channel:
            swallow = channel.stream_unary(f"/{_SERVICE}/Swallow")
            emit = channel.unary_stream(f"/{_SERVICE}/Emit")
            payload = bytes(MESSAGE)
            count = total_bytes // MESSAGE
            swallow(iter([payload] * 8))  # warm up the connection
            start = time.perf_counter()
            swallow(payload for _ in range(count))
            upload = count * MESSAGE / (time.perf_counter() - start)
            start = time.perf_counter()
            received = sum(len(m) for m in emit((count * MESSAGE).to_bytes(8, "little")))
            download = received / (time.perf_counter() - start)
        return upload, download
    finally:
        server.stdin.close()
        server.wait()
        server.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024)
    args = parser.parse_args()
    up, down = measure(args.mb << 20)
    print(f"raw grpc: upload {up / 1e6:,.0f} MB/s, download {down / 1e6:,.0f} MB/s")


if __name__ == "__main__":
    main()
