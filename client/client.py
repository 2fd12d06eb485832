"""The layercache client library: blobs, the instruction cache and admin calls.

    with Client("127.0.0.1:50051") as cache:
        layer = cache.put("layer.tar", media_type="application/vnd.oci.image.layer.v1.tar")
        cache.record("myorg/app", step_key, [layer], {"instruction": "COPY . /app"})
        result = cache.lookup("myorg/app", [key1, key2, key3])

Uploads stream from files or streams in 1 MiB messages (the size at which
grpcio moves data fastest); a stream whose digest is unknown is spooled to a
temporary file first, because the daemon needs the digest up front. Downloads
are hashed as they arrive and a mismatch raises DataLossError; a download to a
path goes to a temporary file that is renamed only when complete and correct.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from client.errors import DataLossError, InvalidArgumentError, translate
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc
from client.wire import encode_write_data, parse_read_response
from client.types import (
    DEFAULT_MEDIA_TYPE,
    BlobInfo,
    CacheEntry,
    Descriptor,
    KeyUsage,
    LookupResult,
    NamespaceStats,
    Stats,
    VerifyProblem,
    VerifyReport,
)

DEFAULT_SERVER = "127.0.0.1:50051"
MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# About 7 MB of digests: well inside the daemon's default 16 MiB message limit.
FIND_MISSING_BATCH = 100_000
Progress = Callable[[int, int], None]  # (bytes done, total bytes)
Source = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO
_BLOBS_METHOD = f"/{pb.DESCRIPTOR.services_by_name['Blobs'].full_name}/"
_MISS_REASONS = {
    pb.MISS_REASON_NONE: "none",
    pb.MISS_REASON_NOT_RECORDED: "not_recorded",
    pb.MISS_REASON_BLOB_MISSING: "blob_missing",
    pb.MISS_REASON_TRUNCATED: "truncated",
}


def default_server() -> str:
    return os.environ.get("LAYERCACHE_SERVER") or DEFAULT_SERVER


def default_token() -> str | None:
    return os.environ.get("LAYERCACHE_TOKEN") or None


class Client:
    """A connection to a daemon.

    `token` (default: $LAYERCACHE_TOKEN) is sent as `authorization: Bearer`
    metadata on every call. TLS is used when `tls` is true or any TLS file is
    given: `tls_ca` is the PEM file of the CA to trust (default: the system's),
    `tls_cert`/`tls_key` a client certificate for daemons that require one.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout: float | None = None,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.server = server or default_server()
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls or tls_ca or tls_cert or tls_key:
            if (tls_cert is None) != (tls_key is None):
                raise InvalidArgumentError("a client certificate needs both tls_cert and tls_key")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(tls_ca),
                private_key=_read_file(tls_key),
                certificate_chain=_read_file(tls_cert),
            )
            self._channel = grpc.secure_channel(self.server, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.server, options=options)
        token = token or default_token()
        if token:
            self._channel = grpc.intercept_channel(self._channel, _BearerToken(token))
        self._blobs = pb_grpc.BlobsStub(self._channel)
        # Read and Write move blob bytes without protobuf objects (client/wire.py).
        self._read = self._channel.unary_stream(
            _BLOBS_METHOD + "Read", request_serializer=pb.ReadRequest.SerializeToString, response_deserializer=parse_read_response
        )
        self._write = self._channel.stream_unary(
            _BLOBS_METHOD + "Write", request_serializer=None, response_deserializer=pb.WriteResponse.FromString
        )
        self._cache = pb_grpc.InstructionCacheStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------------ blobs

    def put(
        self,
        source: Source,
        media_type: str = DEFAULT_MEDIA_TYPE,
        namespace: str = "",
        *,
        progress: Progress | None = None,
    ) -> Descriptor:
        """Uploads bytes, a file (by path) or a binary stream; returns its descriptor."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            return self._upload(digest, len(data), media_type, namespace, _slices(data), progress)
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as stream:
                return self.put(stream, media_type, namespace, progress=progress)
        if _seekable(source):
            return self._put_seekable(source, media_type, namespace, progress)
        with tempfile.TemporaryFile() as spool:
            _copy(source, spool)
            spool.seek(0)
            return self._put_seekable(spool, media_type, namespace, progress)

    def _put_seekable(self, stream: BinaryIO, media_type: str, namespace: str, progress: Progress | None) -> Descriptor:
        start = stream.tell()
        hasher = hashlib.sha256()
        size = 0
        for block in _blocks(stream):
            hasher.update(block)
            size += len(block)
        stream.seek(start)
        return self._upload("sha256:" + hasher.hexdigest(), size, media_type, namespace, _blocks(stream), progress)

    def _upload(
        self,
        digest: str,
        size: int,
        media_type: str,
        namespace: str,
        blocks: Iterator[bytes],
        progress: Progress | None,
    ) -> Descriptor:
        header = pb.WriteHeader(digest=digest, size=size, media_type=media_type, namespace=namespace)

        def requests() -> Iterator[bytes]:
            yield pb.WriteRequest(header=header).SerializeToString()
            done = 0
            for block in blocks:
                yield encode_write_data(block)
                done += len(block)
                if progress:
                    progress(done, size)

        with translate():
            response = self._write(requests(), timeout=self.timeout)
        if progress:
            progress(size, size)
        return _descriptor(response.descriptor)

    def get(
        self,
        digest: str,
        dest: str | os.PathLike[str] | BinaryIO | None = None,
        *,
        progress: Progress | None = None,
        namespace: str = "",
    ) -> bytes | None:
        """Downloads a whole blob, verifying its digest. Returns the bytes when
        no destination is given; otherwise writes to the path or stream."""
        total = self.stat(digest, namespace).descriptor.size if progress else 0
        if dest is None:
            parts = list(self._verified(digest, total, progress, namespace))
            return b"".join(parts)
        if isinstance(dest, (str, os.PathLike)):
            # Through symlinks to what they name; into anything that is not a
            # regular file (a device, a FIFO) directly, since it cannot be
            # replaced; regular files via a temporary file renamed only once
            # the bytes are complete and verified.
            target = Path(os.path.realpath(dest))
            if target.exists() and not target.is_file():
                with open(target, "wb") as out:
                    for part in self._verified(digest, total, progress, namespace):
                        out.write(part)
                return None
            temp = target.parent / f".{target.name}.{secrets.token_hex(8)}.part"
            # 0o666 like any new file: the kernel applies the user's umask.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                with os.fdopen(fd, "wb") as out:
                    for part in self._verified(digest, total, progress, namespace):
                        out.write(part)
                os.replace(temp, target)
            except BaseException:
                os.unlink(temp)
                raise
            return None
        for part in self._verified(digest, total, progress, namespace):
            dest.write(part)
        return None

    def read(self, digest: str, offset: int = 0, limit: int = 0, namespace: str = "") -> Iterator[bytes]:
        """Streams a byte range of a blob (no whole-blob digest check)."""
        for data in self._frames(digest, offset, limit, namespace):
            yield bytes(data)

    def _frames(self, digest: str, offset: int = 0, limit: int = 0, namespace: str = "") -> Iterator[memoryview]:
        request = pb.ReadRequest(digest=digest, offset=offset, limit=limit, namespace=namespace)
        with translate():
            yield from self._read(request, timeout=self.timeout)

    def _verified(self, digest: str, total: int, progress: Progress | None, namespace: str) -> Iterator[memoryview]:
        algorithm, _, expected = digest.partition(":")
        hasher = _BackgroundHasher(algorithm)
        done = 0
        try:
            for data in self._frames(digest, namespace=namespace):
                hasher.update(data)
                done += len(data)
                if progress:
                    progress(done, total)
                yield data
        finally:
            actual = hasher.hexdigest()
        if actual != expected:
            raise DataLossError(f"downloaded bytes of {digest} hash to {algorithm}:{actual}")

    def find_missing(self, digests: Iterable[str], namespace: str = "") -> list[str]:
        """Digests the daemon lacks, or holds only where this caller may not
        read; asked in batches that fit the daemon's message limit."""
        digests = list(digests)
        missing: list[str] = []
        for start in range(0, max(len(digests), 1), FIND_MISSING_BATCH):
            request = pb.FindMissingRequest(digests=digests[start : start + FIND_MISSING_BATCH], namespace=namespace)
            with translate():
                missing += self._blobs.FindMissing(request, timeout=self.timeout).missing
        return missing

    def stat(self, digest: str, namespace: str = "") -> BlobInfo:
        with translate():
            info = self._blobs.Stat(pb.StatRequest(digest=digest, namespace=namespace), timeout=self.timeout)
        return BlobInfo(_descriptor(info.descriptor), info.created_unix_ms, info.last_access_unix_ms, info.chunks)

    # ------------------------------------------------------------------ instruction cache

    def record(
        self,
        namespace: str,
        key: str,
        layers: Iterable[Descriptor],
        metadata: dict[str, str] | None = None,
    ) -> CacheEntry:
        request = pb.RecordRequest(
            namespace=namespace,
            key=key,
            layers=[pb.Descriptor(digest=d.digest, size=d.size, media_type=d.media_type) for d in layers],
            metadata=metadata or {},
        )
        with translate():
            response = self._cache.Record(request, timeout=self.timeout)
        return _entry(response.entry)

    def lookup(self, namespace: str, keys: Iterable[str]) -> LookupResult:
        """The longest prefix of hits of the chain, in one round trip unless
        the daemon cuts a very large answer short ("truncated"): then the
        rest of the chain is asked for again from the first key not answered."""
        keys = list(keys)
        hits: list[CacheEntry] = []
        while True:
            request = pb.LookupRequest(namespace=namespace, keys=keys[len(hits) :])
            with translate():
                response = self._cache.Lookup(request, timeout=self.timeout)
            hits += [_entry(e) for e in response.hits]
            reason = _MISS_REASONS.get(response.miss_reason, "unknown")
            if reason != "truncated" or not response.hits:
                return LookupResult(hits, reason, list(response.missing_digests))

    def list_entries(
        self, namespace: str, metadata_equals: dict[str, str] | None = None, limit: int = 100
    ) -> list[CacheEntry]:
        request = pb.ListEntriesRequest(namespace=namespace, metadata_equals=metadata_equals or {}, limit=limit)
        with translate():
            response = self._cache.ListEntries(request, timeout=self.timeout)
        return [_entry(e) for e in response.entries]

    # ------------------------------------------------------------------ admin

    def stats(self, top_keys: int = 10) -> Stats:
        """Daemon statistics, with the `top_keys` most hit instruction-cache keys."""
        with translate():
            r = self._admin.Stats(pb.StatsRequest(top_keys=top_keys), timeout=self.timeout)
        return Stats(
            blobs=r.blobs,
            chunks=r.chunks,
            logical_bytes=r.logical_bytes,
            stored_bytes=r.stored_bytes,
            dedup_ratio=r.dedup_ratio,
            records=r.records,
            lookups=r.lookups,
            hits=r.hits,
            misses=r.misses,
            bytes_in=r.bytes_in,
            bytes_out=r.bytes_out,
            uptime_seconds=r.uptime_seconds,
            pack_bytes=r.pack_bytes,
            evictions=r.evictions,
            max_bytes=r.max_bytes,
            namespaces=[NamespaceStats(n.namespace, n.records, n.lookups, n.hits, n.misses) for n in r.namespaces],
            top_keys=[KeyUsage(k.namespace, k.key, k.hits) for k in r.top_keys],
        )

    def verify(self, sample_fraction: float = 0.0) -> VerifyReport:
        with translate():
            r = self._admin.Verify(pb.VerifyRequest(sample_fraction=sample_fraction), timeout=self.timeout)
        return VerifyReport(
            r.blobs_checked,
            r.chunks_checked,
            r.bytes_checked,
            [VerifyProblem(p.digest, p.description) for p in r.problems],
        )

    def capabilities(self) -> pb.CapabilitiesResponse:
        with translate():
            return self._admin.Capabilities(pb.CapabilitiesRequest(), timeout=self.timeout)


class _BackgroundHasher:
    """Hashes on its own thread, so verifying a download overlaps receiving it
    (hashlib and blake3 release the GIL on large buffers)."""

    def __init__(self, algorithm: str) -> None:
        if algorithm == "sha256":
            self._hasher = hashlib.sha256()
        elif algorithm == "blake3":
            import blake3  # only needed for blake3 blobs

            self._hasher = blake3.blake3()
        else:
            raise InvalidArgumentError(f"unsupported digest algorithm {algorithm!r}")
        self._queue: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="layercache-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hasher.update(data)

    def update(self, data: bytes | memoryview) -> None:
        self._queue.put(data)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hasher.hexdigest()


def _descriptor(message: pb.Descriptor) -> Descriptor:
    return Descriptor(message.digest, message.size, message.media_type)


def _entry(message: pb.CacheEntry) -> CacheEntry:
    return CacheEntry(
        message.namespace,
        message.key,
        tuple(_descriptor(d) for d in message.layers),
        dict(message.metadata),
        message.created_unix_ms,
    )


def _slices(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), MESSAGE_BYTES):
        yield bytes(view[start : start + MESSAGE_BYTES])


def _blocks(stream: BinaryIO) -> Iterator[bytes]:
    while block := stream.read(MESSAGE_BYTES):
        yield block


def _copy(source: BinaryIO, dest: BinaryIO) -> None:
    for block in _blocks(source):
        dest.write(block)


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError):
        return False


def _read_file(path: str | os.PathLike[str] | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor
):
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method, details.timeout, [*(details.metadata or ()), self._header],
            details.credentials, details.wait_for_ready, details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request_iterator)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass
