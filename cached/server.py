"""Builds and runs the daemon: gRPC services, health, reflection, the OCI endpoint, signals.

`create_server` binds and returns the server and its port without starting
it, so in-process tests can use port 0; `serve` is the `layercache serve`
entry point, which also handles SIGTERM/SIGINT by draining in-flight calls.

Around the services: access control (cached/auth.py), TLS (cached/tls.py),
per-call metrics and request ids (cached/metrics.py, cached/logs.py), and the
background workers that keep the store within its bound (cached/eviction.py,
cached/compaction.py).

Shutdown order: readiness goes NOT_SERVING, the listeners stop taking calls,
in-flight calls get `shutdown_grace_seconds` to finish, then the background
workers and the store close.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from prometheus_client import CollectorRegistry

from cached import logs
from cached.auth import Authorizer
from cached.compaction import Compactor
from cached.config import DEFAULT_HTTP_LISTEN, Config, ConfigError
from cached.eviction import Evictor
from cached.metrics import CallObserver, MetricsServer, StoreCollector
from cached.oci import RegistryServer
from cached.records import InstructionCache
from cached.service import AdminService, BlobsService, InstructionCacheService, add_blobs_service
from cached.store import BlobStore
from cached.tls import grpc_credentials, ssl_context
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("Blobs", "InstructionCache", "Admin"))
SHUTDOWN_GRACE_SECONDS = 10.0
Worker = Evictor | Compactor | MetricsServer


@dataclass
class Daemon:
    store: BlobStore
    cache: InstructionCache
    server: grpc.Server
    health: health.HealthServicer
    port: int
    registry: RegistryServer | None = None
    workers: list[Worker] = field(default_factory=list)
    metrics_port: int = 0

    def start(self) -> None:
        self.server.start()
        if self.registry is not None:
            self.registry.start()
        for worker in self.workers:
            worker.start()
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        # Readiness first, so load balancers stop routing here while calls drain.
        self.health.enter_graceful_shutdown()
        grpc_stopped = self.server.stop(grace)
        if self.registry is not None:
            self.registry.stop(grace)
        grpc_stopped.wait()
        for worker in self.workers:
            worker.close()
        self.store.close()


def create_daemon(config: Config, store: BlobStore | None = None) -> Daemon:
    store = store or BlobStore(config.store)
    cache = InstructionCache(store)
    auth = Authorizer(config.auth)
    metrics = CollectorRegistry()
    metrics.register(StoreCollector(store))
    limit = config.server.max_message_bytes
    server = grpc.server(
        ThreadPoolExecutor(max_workers=config.server.workers, thread_name_prefix="grpc"),
        interceptors=[CallObserver(metrics)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # grpcio binds with SO_REUSEPORT by default: a second daemon on a
            # busy port would start and silently take half the connections.
            ("grpc.so_reuseport", 0),
        ],
    )
    add_blobs_service(BlobsService(store, auth), server)
    pb_grpc.add_InstructionCacheServicer_to_server(InstructionCacheService(cache, auth), server)
    pb_grpc.add_AdminServicer_to_server(AdminService(store, limit, auth), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    workers: list[Worker] = [Compactor(store)]
    if config.store.max_bytes:
        workers.append(Evictor(store, cache))
    try:
        credentials = grpc_credentials(config.server)
        try:
            if credentials is None:
                port = server.add_insecure_port(config.server.listen)
            else:
                port = server.add_secure_port(config.server.listen, credentials)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {config.server.listen}: {exc}") from None
        metrics_port = 0
        if config.server.metrics_listen:
            try:
                endpoint = MetricsServer(config.server.metrics_listen, metrics, ssl_context(config.server))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {config.server.metrics_listen} for metrics: {exc}") from None
            workers.append(endpoint)
            metrics_port = endpoint.port
        registry = _registry(config, store, cache, auth)
    except ConfigError:
        store.close()
        raise
    return Daemon(store, cache, server, health_servicer, port, registry, workers, metrics_port)


def _registry(config: Config, store: BlobStore, cache: InstructionCache, auth: Authorizer) -> RegistryServer | None:
    if not config.http.enabled:
        return None
    try:
        return RegistryServer(config.http, store, cache, auth.authorize_oci, ssl_context(config.server))
    except ConfigError as exc:
        # The endpoint is on by default for convenience: its default port
        # held by someone else (a registry, another daemon) must not stop the
        # gRPC service. An address chosen on purpose has to work.
        if config.http.listen != DEFAULT_HTTP_LISTEN:
            raise
        print(f"layercache: OCI endpoint not started: {exc} (choose one with --http-listen HOST:PORT, or off)", file=sys.stderr, flush=True)
        return None


def serve(config: Config) -> int:
    logs.configure(config.server.log_format)
    daemon = create_daemon(config)
    daemon.start()
    host = config.server.listen.rpartition(":")[0]
    if daemon.metrics_port:
        metrics_host = config.server.metrics_listen.rpartition(":")[0]
        print(f"layercache: serving metrics on {metrics_host}:{daemon.metrics_port}", flush=True)
    print(f"layercache: serving gRPC on {host}:{daemon.port} (data in {config.store.data_dir})", flush=True)
    if daemon.registry is not None:
        http_host = config.http.listen.rpartition(":")[0]
        print(f"layercache: serving OCI distribution on {http_host}:{daemon.registry.port}", flush=True)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    # Wait with a timeout: when the kernel delivers the signal to one of
    # grpcio's threads, a main thread blocked without one is never woken to
    # run the Python handler, and the daemon would ignore SIGTERM.
    while not stopping.wait(0.25):
        pass
    print("layercache: shutting down", file=sys.stderr, flush=True)
    daemon.stop(config.server.shutdown_grace_seconds)
    sys.stdout.flush()
    sys.stderr.flush()
    # The store is closed and synced. A handler thread that grpcio has not
    # yet woken from a cancelled call must not keep the process alive past
    # the grace period (the interpreter would wait for it at exit).
    os._exit(0)
