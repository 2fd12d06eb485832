"""Prometheus metrics: per-call counts and latencies, and the store's figures.

`CallObserver` is a gRPC server interceptor around every layercache.v1 call:
it gives the call a request id (cached/logs.py), counts it by method and
status code, times it, and logs calls that failed. `StoreCollector` reads the
store's counters when Prometheus scrapes, so nothing is counted twice and the
figures match `layercache stats`. `MetricsServer` serves /metrics over HTTP
(HTTPS with the daemon's TLS files) on its own listener.

Each daemon has its own registry, so several daemons in one process (tests)
do not collide.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cached.logs import REQUEST_ID
from cached.store import BlobStore

log = logging.getLogger(__name__)

_OUR_SERVICES = "/layercache."
_EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
# Seconds; lookups take well under a millisecond, big reads and writes seconds.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class CallObserver(grpc.ServerInterceptor):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "layercache_requests", "gRPC calls by method and status code", ["method", "code"], registry=registry
        )
        self.latency = Histogram(
            "layercache_request_seconds", "gRPC call latency by method", ["method"], buckets=_BUCKETS, registry=registry
        )

    def intercept_service(self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(_OUR_SERVICES):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        given = [v for k, v in details.invocation_metadata if k == "x-request-id"]
        request_id = given[-1][:64] if given else uuid.uuid4().hex[:16]
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, request_id, handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, request_id, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, request_id, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler  # no bidirectional methods in layercache.v1

    def _unary(self, method: str, request_id: str, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            with self._observing(method, request_id, context):
                return behavior(request, context)

        return observed

    def _streaming(self, method: str, request_id: str, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def observed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._observing(method, request_id, context):
                yield from behavior(request, context)

        return observed

    @contextlib.contextmanager
    def _observing(self, method: str, request_id: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Request id in logs and reply headers, then the call's metrics."""
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        context.send_initial_metadata((("x-request-id", request_id),))
        crashed = False
        try:
            yield
        except Exception:
            crashed = True  # grpc answers UNKNOWN after we return
            raise
        finally:
            self._done(method, context, started, crashed)
            REQUEST_ID.reset(token)

    def _done(self, method: str, context: grpc.ServicerContext, started: float, crashed: bool) -> None:
        elapsed = time.perf_counter() - started
        code = context.code() or (grpc.StatusCode.UNKNOWN if crashed else grpc.StatusCode.OK)
        self.requests.labels(method, code.name).inc()
        self.latency.labels(method).observe(elapsed)
        if code not in _EXPECTED:
            level = logging.ERROR if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else logging.INFO
            details = context.details() or b""
            if isinstance(details, bytes):  # grpcio hands back what abort() encoded
                details = details.decode("utf-8", "replace")
            log.log(level, "%s failed: %s %s", method, code.name, details,
                    extra={"method": method, "code": code.name, "ms": round(elapsed * 1000, 3)})
        else:
            log.debug("%s %s", method, code.name, extra={"method": method, "code": code.name, "ms": round(elapsed * 1000, 3)})


class StoreCollector(Collector):
    """The store's counters, read at scrape time."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        stats = self.store.stats()
        gauges = {
            "blobs": ("blobs stored", stats.blobs),
            "chunks": ("live chunks stored", stats.chunks),
            "stored_bytes": ("bytes of live chunks as stored, after dedup and compression", stats.stored_bytes),
            "logical_bytes": ("sum of the sizes of stored blobs", stats.logical_bytes),
            "pack_bytes": ("size of the pack files on disk, garbage included", stats.pack_bytes),
            "max_bytes": ("bound on stored bytes (0: unbounded)", stats.max_bytes),
            "records": ("instruction-cache entries", stats.records),
            "dedup_ratio": ("logical bytes / stored bytes", stats.dedup_ratio),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(f"layercache_{name}", doc, value=value)
        counters = {
            "evictions": ("blobs evicted to stay within max_bytes", stats.evictions),
            "received_bytes": ("blob bytes received by uploads", stats.bytes_in),
            "sent_bytes": ("blob bytes sent by reads", stats.bytes_out),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"layercache_{name}", doc, value=value)
        per_namespace = {
            "lookups": "instruction-cache keys looked up",
            "lookup_hits": "instruction-cache keys that hit",
            "lookup_misses": "lookups that ended in a miss",
        }
        families = {name: CounterMetricFamily(f"layercache_{name}", doc, labels=["namespace"]) for name, doc in per_namespace.items()}
        for ns in stats.namespaces:
            families["lookups"].add_metric([ns.namespace], ns.lookups)
            families["lookup_hits"].add_metric([ns.namespace], ns.hits)
            families["lookup_misses"].add_metric([ns.namespace], ns.misses)
        yield from families.values()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """/metrics on its own HTTP(S) listener."""

    def __init__(self, listen: str, registry: CollectorRegistry, tls: ssl.SSLContext | None) -> None:
        host, _, port = listen.rpartition(":")
        self._httpd = make_server(host.strip("[]"), int(port), make_wsgi_app(registry), _ThreadingServer, _QuietHandler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()  # waits for serve_forever, so only once it runs
        self._httpd.server_close()
