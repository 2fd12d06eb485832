"""The OCI Distribution API over HTTP: routing, parsing, responses.

A thin adapter, like the gRPC servicers: it parses paths, queries and
headers into value types (repository names, digests, references, ranges)
before any I/O, asks the store, the upload sessions or the manifests, and
writes the answer. Every request passes through `_handle`, which matches the
route, checks the repository name, asks the authorizer once, runs the route
and turns our exceptions into the spec's JSON errors with the HTTP status
from cached/status.py.

Endpoints (the spec's numbering):
    GET  /v2/                                     end-1   base
    GET  HEAD  /v2/<name>/blobs/<digest>          end-2   blob, with Range
    GET  HEAD  PUT  DELETE /v2/<name>/manifests/<reference>   end-3 end-7 end-9
    POST /v2/<name>/blobs/uploads/                end-4a session, end-4b ?digest= monolithic,
                                                  end-11 ?mount=&from= cross-repository mount
    PATCH GET PUT DELETE /v2/<name>/blobs/uploads/<id>   end-5 end-13 end-6 end-14
    GET  /v2/<name>/tags/list?n=&last=            end-8
The referrers API (end-12) is not offered: its 404 is the spec's signal for
clients to fall back to the referrers tag schema. Deleting blobs (end-10)
answers 405; space is reclaimed by eviction, not by clients.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlsplit

from cached.digest import Digest
from cached.errors import InvalidArgument, InvalidDigest, LayercacheError, Unsupported
from cached.names import check_namespace
from cached.oci.access import DELETE, PULL, PUSH, Access
from cached.oci.bodies import PIECE, Body
from cached.oci.errors import (
    EndpointUnknown,
    ManifestTooLarge,
    RangeNotSatisfiable,
    UploadInvalid,
    UploadOutOfOrder,
    SizeInvalid,
    extra_headers,
    oci_code,
    upload_range,
)
from cached.oci.reference import is_tag, parse_reference
from cached.status import http_status

if TYPE_CHECKING:
    from cached.oci.server import RegistryServer

log = logging.getLogger(__name__)

API_VERSION = "registry/2.0"
# An idle keep-alive connection is closed after this long.
IDLE_TIMEOUT_SECONDS = 300
# A refused request's unread body is drained this far before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/v2/?"), "base"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<upload_id>[^/]*)"), "uploads"),
    (re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)"), "blobs"),
    (re.compile(r"/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)"), "manifests"),
    (re.compile(r"/v2/(?P<name>.+)/tags/list"), "tags"),
]
_ACTIONS = {"GET": PULL, "HEAD": PULL, "POST": PUSH, "PUT": PUSH, "PATCH": PUSH, "DELETE": DELETE}
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RegistryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "layercache"
    timeout = IDLE_TIMEOUT_SECONDS
    server: RegistryServer

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    # ------------------------------------------------------------ dispatch

    def _handle(self) -> None:
        self._body: Body | None = None
        self._responded = False
        with self.server.tracking_request():
            try:
                url = urlsplit(self.path)
                self._query = parse_qs(url.query, keep_blank_values=True)
                route, params = self._route(url.path)
                self._body = Body(self.rfile, self.headers)
                # Blobs held only where this caller may not read answer as absent.
                self._visible = self.server.authorize(self.headers, self._accesses(params.get("name", "")))
                route(**params)
            except LayercacheError as exc:
                self._fail(exc)
            except OSError as exc:  # the client went away; nobody to answer
                log.debug("%s %s: connection lost: %s", self.command, self.path[:200], exc)
                self.close_connection = True
            except Exception:
                log.exception("%s %s failed", self.command, self.path[:200])
                self._fail(LayercacheError("internal error; see the daemon log"))
            finally:
                # Unread request bytes would be taken for the next request.
                if self._body is None or not self._body.finished:
                    self.close_connection = True
                    self._linger()

    def _route(self, path: str) -> tuple[Callable[..., None], dict[str, str]]:
        for pattern, kind in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            params = match.groupdict()
            if "name" in params:
                check_namespace(params["name"])
            if kind == "uploads" and not params["upload_id"]:
                kind = "upload_start"
            method = getattr(self, f"_{self.command.lower()}_{kind}", None)
            if method is None:
                raise Unsupported(f"{self.command} is not supported on {kind} endpoints")
            return method, params
        raise EndpointUnknown(f"{path[:200]!r} is not an endpoint of this registry")

    def _accesses(self, name: str) -> list[Access]:
        """What this request needs allowed: the seam for authorization."""
        if not name:
            return []
        accesses = [Access(name, _ACTIONS[self.command])]
        source = self._param("from")
        if self._param("mount") is not None and source is not None:
            accesses.append(Access(check_namespace(source), PULL))
        return accesses

    def _param(self, name: str) -> str | None:
        values = self._query.get(name)
        return values[-1] if values else None

    # ------------------------------------------------------------ base

    def _get_base(self) -> None:
        self._respond(200, {"Content-Type": "application/json"}, b"{}")

    _head_base = _get_base

    # ------------------------------------------------------------ blobs

    def _get_blobs(self, name: str, digest: str) -> None:
        blob = Digest.parse(digest)
        size = self.server.store.stat(blob, self._visible).descriptor.size
        headers = {"Docker-Content-Digest": str(blob), "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        wanted = None if self.command == "HEAD" else _byte_range(self.headers.get("Range"), size)
        if wanted is None:
            pieces = () if self.command == "HEAD" else self.server.store.read(blob, visible=self._visible)
            self._respond(200, headers, pieces, size)
            return
        start, end = wanted
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self._respond(206, headers, self.server.store.read(blob, start, end - start, self._visible), end - start)

    _head_blobs = _get_blobs

    # ------------------------------------------------------------ uploads

    def _post_upload_start(self, name: str, upload_id: str) -> None:
        mount = self._param("mount")
        if mount is not None:
            blob = Digest.parse(mount)
            if self.server.store.holds_intact(blob, self._visible):
                self.server.store.add_holder(blob, name)
                self._respond(201, {"Location": _blob_url(name, blob), "Docker-Content-Digest": str(blob)})
                return
            # Not here: the spec's answer is an ordinary upload session.
        digest = self._param("digest")
        if digest is not None:
            self._monolithic(name, Digest.parse(digest))
            return
        session = self.server.uploads.start(name)
        if self._body_present():
            with self.server.uploads.use(name, session.id) as held:
                held.append(self._pieces())
        self._respond(202, self._session_headers(name, session.id, session.offset))

    def _monolithic(self, name: str, blob: Digest) -> None:
        assert self._body is not None
        with self.server.store.open_write(blob, self._body.length, "application/octet-stream", name) as writer:
            for piece in self._pieces():
                writer.write(piece)
            writer.commit()
        self._respond(201, {"Location": _blob_url(name, blob), "Docker-Content-Digest": str(blob)})

    def _get_uploads(self, name: str, upload_id: str) -> None:
        with self.server.uploads.use(name, upload_id) as session:
            offset = session.offset
        self._respond(204, self._session_headers(name, upload_id, offset))

    def _patch_uploads(self, name: str, upload_id: str) -> None:
        with self.server.uploads.use(name, upload_id) as session:
            self._check_chunk(name, upload_id, session.offset)
            session.append(self._pieces())
            offset = session.offset
        self._respond(202, self._session_headers(name, upload_id, offset))

    def _put_uploads(self, name: str, upload_id: str) -> None:
        text = self._param("digest")
        if text is None:
            raise InvalidDigest("the PUT that finishes an upload needs ?digest=")
        blob = Digest.parse(text)
        with self.server.uploads.use(name, upload_id) as session:
            self._check_chunk(name, upload_id, session.offset)
            session.append(self._pieces())
            session.finish(blob)
        self._respond(201, {"Location": _blob_url(name, blob), "Docker-Content-Digest": str(blob)})

    def _delete_uploads(self, name: str, upload_id: str) -> None:
        self.server.uploads.cancel(name, upload_id)
        self._respond(204, {})

    def _check_chunk(self, name: str, upload_id: str, offset: int) -> None:
        """A chunk sent with Content-Range must start where the upload stands."""
        text = self.headers.get("Content-Range")
        if text is None:
            return
        match = _CONTENT_RANGE.fullmatch(text.strip())
        if match is None or int(match.group(2)) < int(match.group(1)):
            raise UploadInvalid(f"Content-Range {text[:80]!r} is not START-END")
        first, last = int(match.group(1)), int(match.group(2))
        if first != offset:
            raise UploadOutOfOrder(
                f"the chunk starts at {first}, but the upload holds {offset} bytes", _upload_url(name, upload_id), offset
            )
        assert self._body is not None
        if self._body.length is not None and self._body.length != last - first + 1:
            raise SizeInvalid(f"Content-Range {text[:80]!r} spans {last - first + 1} bytes, Content-Length says {self._body.length}")

    def _session_headers(self, name: str, upload_id: str, offset: int) -> dict[str, str]:
        return {"Location": _upload_url(name, upload_id), "Range": upload_range(offset), "Docker-Upload-UUID": upload_id}

    # ------------------------------------------------------------ manifests

    def _get_manifests(self, name: str, reference: str) -> None:
        # Builders look a cache key up with GET, or with HEAD before a GET:
        # only GET counts, so one lookup is counted once.
        descriptor, body = self.server.manifests.get(name, parse_reference(reference), count=self.command == "GET")
        headers = {"Content-Type": descriptor.media_type, "Docker-Content-Digest": str(descriptor.digest)}
        self._respond(200, headers, () if self.command == "HEAD" else (body,), len(body))

    _head_manifests = _get_manifests

    def _put_manifests(self, name: str, reference: str) -> None:
        parsed = parse_reference(reference)
        assert self._body is not None
        body = self._body.read_all(self.server.manifests.max_bytes, ManifestTooLarge)
        descriptor = self.server.manifests.put(name, parsed, body, self.headers.get("Content-Type"))
        headers = {"Location": f"/v2/{name}/manifests/{descriptor.digest}", "Docker-Content-Digest": str(descriptor.digest)}
        self._respond(201, headers)

    def _delete_manifests(self, name: str, reference: str) -> None:
        self.server.manifests.delete(name, parse_reference(reference))
        self._respond(202, {})

    # ------------------------------------------------------------ tags

    def _get_tags(self, name: str) -> None:
        n_text = self._param("n")
        if n_text is not None and not (n_text.isascii() and n_text.isdigit()):
            raise InvalidArgument(f"n={n_text[:40]!r} is not a non-negative integer")
        n = None if n_text is None else int(n_text)
        last = self._param("last") or ""
        if last and not is_tag(last):
            raise InvalidArgument(f"last={last[:140]!r} is not a tag")
        tags, more = self.server.manifests.tags(name, n, last)
        headers = {"Content-Type": "application/json"}
        if more:
            page = len(tags) if n is None else n
            headers["Link"] = f'</v2/{name}/tags/list?n={page}&last={quote(tags[-1])}>; rel="next"'
        self._respond(200, headers, json.dumps({"name": name, "tags": tags}).encode())

    # ------------------------------------------------------------ responses

    def _body_present(self) -> bool:
        assert self._body is not None
        return not self._body.finished

    def _pieces(self) -> Iterable[bytes]:
        assert self._body is not None
        return self._body.pieces()

    def _respond(self, status: int, headers: dict[str, str], body: bytes | Iterable[bytes] = b"", length: int | None = None) -> None:
        if isinstance(body, bytes):
            length, body = len(body), (body,)
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", API_VERSION)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length or 0))
        self.end_headers()
        self._responded = True
        if self.command != "HEAD":
            for piece in body:
                self.wfile.write(piece)

    def _fail(self, exc: LayercacheError) -> None:
        status = http_status(exc)
        if status >= 500:
            log.error("%s %s: %s", self.command, self.path[:200], exc)
        if self._responded:
            # The status line is gone already (a read failed mid-body): all
            # the client can still learn is that the body is short.
            self.close_connection = True
            return
        body = json.dumps({"errors": [{"code": oci_code(exc), "message": str(exc), "detail": {}}]}).encode()
        self._respond(status, {"Content-Type": "application/json", **extra_headers(exc)}, body)

    def _linger(self) -> None:
        """Reads and drops what the client is still sending, for a while, before
        the connection closes: closing on unread bytes resets the connection,
        and a client still writing its body would lose the answer explaining
        why it was refused."""
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            while dropped < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                piece = self.rfile.read1(PIECE)
                if not piece:
                    break
                dropped += len(piece)
        except OSError:
            pass  # gone or timed out: either way, done

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _blob_url(name: str, blob: Digest) -> str:
    return f"/v2/{name}/blobs/{blob}"


def _upload_url(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, or None to send everything
    (no header, or a form we do not serve, which RFC 9110 lets us ignore)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        raise RangeNotSatisfiable(f"range {header[:80]!r} is outside the blob of {size} bytes", size)
    return start, end
