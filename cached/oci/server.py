"""The HTTP server of the OCI endpoint: a threaded stdlib server and its lifecycle.

http.server.ThreadingHTTPServer: one thread per connection is plenty for a
cache in front of a handful of builders, keeps the daemon free of a web
framework, and lets a request stream its body straight into a BlobWriter
on the thread that reads it. Like the gRPC server, it binds in the
constructor (port 0 picks a free port) and serves only once started.

Stopping: stop accepting, give requests in flight `grace` seconds, then shut
down every connection still open (idle keep-alive ones sit in a blocking
read), and abort the open upload sessions so their pack space is freed
before the store closes.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

from cached.config import ConfigError, HttpConfig
from cached.oci.access import Authorize, allow_all
from cached.oci.manifests import Manifests
from cached.oci.routes import RegistryHandler
from cached.oci.uploads import Uploads
from cached.records import InstructionCache
from cached.store import BlobStore

log = logging.getLogger(__name__)


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        config: HttpConfig,
        store: BlobStore,
        cache: InstructionCache,
        authorize: Authorize = allow_all,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        host, _, port = config.listen.rpartition(":")
        if host.startswith("["):
            host = host[1:-1]
            self.address_family = socket.AF_INET6
        self.store = store
        self.manifests = Manifests(store, cache, config.max_manifest_bytes)
        self.authorize = authorize
        self._inflight = 0
        self._idle = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, int(port)), RegistryHandler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.listen} for HTTP: {exc}") from None
        if tls is not None:
            # The handshake then happens on the first read, in the request's
            # own thread, not in accept() where one slow client would stall all.
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.uploads = Uploads(store, config.upload_expiry_seconds)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip
        # the daemon does not need; bind like a plain TCP server instead.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="oci-http", daemon=True)
        self._thread.start()

    def stop(self, grace: float) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        deadline = time.monotonic() + grace
        with self._idle:
            while self._inflight and self._idle.wait(max(deadline - time.monotonic(), 0)):
                pass
            if self._inflight:
                log.warning("%d HTTP requests still running after %.0f s; cutting them off", self._inflight, grace)
        with self._idle:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self.uploads.close()

    @contextlib.contextmanager
    def tracking_request(self) -> Iterator[None]:
        with self._idle:
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._idle:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._idle:
            self._connections.discard(request)
        super().shutdown_request(request)
