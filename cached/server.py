"""Builds and runs the daemon: gRPC services, health, reflection, signals.

`create_server` binds and returns the server and its port without starting
it, so in-process tests can use port 0; `serve` is the `layercache serve`
entry point, which also handles SIGTERM/SIGINT by draining in-flight calls.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cached.config import Config, ConfigError
from cached.records import InstructionCache
from cached.service import AdminService, BlobsService, InstructionCacheService
from cached.store import BlobStore
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Blobs", "InstructionCache", "Admin"))
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass
class Daemon:
    store: BlobStore
    cache: InstructionCache
    server: grpc.Server
    health: health.HealthServicer
    port: int

    def start(self) -> None:
        self.server.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        # Readiness first, so load balancers stop routing here while calls drain.
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.store.close()


def create_daemon(config: Config, store: BlobStore | None = None) -> Daemon:
    store = store or BlobStore(config.store)
    cache = InstructionCache(store)
    limit = config.server.max_message_bytes
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.server.workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    pb_grpc.add_BlobsServicer_to_server(BlobsService(store), server)
    pb_grpc.add_InstructionCacheServicer_to_server(InstructionCacheService(cache), server)
    pb_grpc.add_AdminServicer_to_server(AdminService(store, limit), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_insecure_port(config.server.listen)
    except RuntimeError as exc:
        store.close()
        raise ConfigError(f"cannot listen on {config.server.listen}: {exc}") from None
    return Daemon(store, cache, server, health_servicer, port)


def serve(config: Config) -> int:
    daemon = create_daemon(config)
    daemon.start()
    host = config.server.listen.rpartition(":")[0]
    print(f"layercache: serving gRPC on {host}:{daemon.port} (data in {config.store.data_dir})", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    stopping.wait()
    print("layercache: shutting down", file=sys.stderr, flush=True)
    daemon.stop()
    return 0
