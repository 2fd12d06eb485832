"""gRPC servicers: translate between layercache.v1 messages and the store.

No logic lives here beyond parsing requests into value types (digests are
validated here, once) and building responses. Errors are mapped to status
codes by one decorator using the table in cached/status.py.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from cached.auth import OPEN_AUTH, READ, WRITE, Authorizer, Principal
from cached.digest import ALGORITHMS, Digest
from cached.errors import InvalidArgument, LayercacheError
from cached.model import BlobInfo, CacheEntry, Descriptor
from cached.records import InstructionCache
from cached.status import grpc_status
from cached.store import BlobStore, Visible
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc
from client.wire import WriteFrame, encode_read_response, parse_write_request

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_TOP_KEYS = 10


def _abort(context: grpc.ServicerContext, exc: LayercacheError) -> None:
    context.abort(grpc_status(exc), str(exc))


def rpc(method: F) -> F:
    """Maps our exceptions to gRPC status for unary and streaming handlers."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streaming(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except LayercacheError as exc:
                _abort(context, exc)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except LayercacheError as exc:
            _abort(context, exc)

    return unary  # type: ignore[return-value]


def descriptor_to_pb(descriptor: Descriptor) -> pb.Descriptor:
    return pb.Descriptor(digest=str(descriptor.digest), size=descriptor.size, media_type=descriptor.media_type)


def descriptor_from_pb(message: pb.Descriptor) -> Descriptor:
    if message.size < 0:
        raise InvalidArgument(f"descriptor {message.digest}: size must not be negative")
    return Descriptor(Digest.parse(message.digest), message.size, message.media_type or "application/octet-stream")


def blob_info_to_pb(info: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(
        descriptor=descriptor_to_pb(info.descriptor),
        created_unix_ms=info.created_ms,
        last_access_unix_ms=info.last_access_ms,
        chunks=info.chunks,
    )


def entry_to_pb(entry: CacheEntry) -> pb.CacheEntry:
    return pb.CacheEntry(
        namespace=entry.namespace,
        key=entry.key,
        layers=[descriptor_to_pb(d) for d in entry.layers],
        metadata=entry.metadata,
        created_unix_ms=entry.created_ms,
    )


def caller(auth: Authorizer, context: grpc.ServicerContext) -> Principal:
    """The principal behind a call, from its `authorization` metadata."""
    values = [value for key, value in context.invocation_metadata() if key == "authorization"]
    return auth.authenticate(values[-1] if values else None)


def readable(auth: Authorizer, context: grpc.ServicerContext, namespace: str) -> Visible | None:
    """Authorizes a blob query in `namespace`; returns what the caller may see."""
    principal = caller(auth, context)
    principal.require(READ, namespace)
    return auth.visibility(principal, namespace)


class BlobsService(pb_grpc.BlobsServicer):
    def __init__(self, store: BlobStore, auth: Authorizer = OPEN_AUTH) -> None:
        self.store = store
        self.auth = auth

    @rpc
    def FindMissing(self, request: pb.FindMissingRequest, context: grpc.ServicerContext) -> pb.FindMissingResponse:
        visible = readable(self.auth, context, request.namespace)
        digests = [Digest.parse(text) for text in request.digests]
        return pb.FindMissingResponse(missing=[str(d) for d in self.store.find_missing(digests, visible)])

    @rpc
    def Stat(self, request: pb.StatRequest, context: grpc.ServicerContext) -> pb.BlobInfo:
        visible = readable(self.auth, context, request.namespace)
        return blob_info_to_pb(self.store.stat(Digest.parse(request.digest), visible))

    @rpc
    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Yields ReadResponse messages already encoded (see client/wire.py)."""
        visible = readable(self.auth, context, request.namespace)
        for piece in self.store.read(Digest.parse(request.digest), request.offset, request.limit, visible):
            yield encode_read_response(piece)

    @rpc
    def Write(self, request_iterator: Iterator[WriteFrame], context: grpc.ServicerContext) -> pb.WriteResponse:
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None or first.header is None:
            raise InvalidArgument("the first Write message must carry a header")
        header = first.header
        principal = caller(self.auth, context)
        principal.require(WRITE, header.namespace)
        visible = self.auth.visibility(principal, header.namespace)
        digest = Digest.parse(header.digest)
        media_type = header.media_type or "application/octet-stream"
        with self.store.open_write(digest, header.size, media_type, header.namespace) as writer:
            # Cut the upload short only if the caller could read the blob
            # anyway (otherwise it proves it has the bytes by sending them)
            # and the stored copy is not known to be damaged.
            if self.store.holds_intact(digest, visible):
                info = self.store.stat(digest)
                if info.descriptor.size != header.size:
                    raise InvalidArgument(f"{digest} is {info.descriptor.size} bytes, not {header.size}")
                self.store.add_holder(digest, header.namespace)
                return pb.WriteResponse(descriptor=descriptor_to_pb(info.descriptor), already_existed=True)
            if first.data:
                writer.write(first.data)
            for request in requests:
                if request.header is not None:
                    raise InvalidArgument("only the first Write message may carry a header")
                writer.write(request.data)
            if not context.is_active():
                raise InvalidArgument("the client went away before finishing the upload")
            result = writer.commit()
        return pb.WriteResponse(descriptor=descriptor_to_pb(result.info.descriptor), already_existed=result.already_existed)


class InstructionCacheService(pb_grpc.InstructionCacheServicer):
    def __init__(self, cache: InstructionCache, auth: Authorizer = OPEN_AUTH) -> None:
        self.cache = cache
        self.auth = auth

    @rpc
    def Record(self, request: pb.RecordRequest, context: grpc.ServicerContext) -> pb.RecordResponse:
        principal = caller(self.auth, context)
        principal.require(WRITE, request.namespace)
        layers = [descriptor_from_pb(d) for d in request.layers]
        visible = self.auth.visibility(principal, request.namespace)
        entry = self.cache.record(request.namespace, request.key, layers, dict(request.metadata), visible)
        return pb.RecordResponse(entry=entry_to_pb(entry))

    @rpc
    def Lookup(self, request: pb.LookupRequest, context: grpc.ServicerContext) -> pb.LookupResponse:
        caller(self.auth, context).require(READ, request.namespace)
        result = self.cache.lookup(request.namespace, list(request.keys), self.auth.read_scope(request.namespace)[1:])
        return pb.LookupResponse(
            hits=[entry_to_pb(e) for e in result.hits],
            miss_reason=_MISS_REASONS[result.miss_reason],
            missing_digests=[str(d) for d in result.missing],
        )

    @rpc
    def ListEntries(self, request: pb.ListEntriesRequest, context: grpc.ServicerContext) -> pb.ListEntriesResponse:
        caller(self.auth, context).require(READ, request.namespace)
        entries = self.cache.list_entries(request.namespace, dict(request.metadata_equals), request.limit)
        return pb.ListEntriesResponse(entries=[entry_to_pb(e) for e in entries])


_MISS_REASONS = {
    "none": pb.MISS_REASON_NONE,
    "not_recorded": pb.MISS_REASON_NOT_RECORDED,
    "blob_missing": pb.MISS_REASON_BLOB_MISSING,
    "truncated": pb.MISS_REASON_TRUNCATED,
}


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, store: BlobStore, max_message_bytes: int, auth: Authorizer = OPEN_AUTH) -> None:
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.auth = auth
        self.started = time.monotonic()

    @rpc
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> pb.StatsResponse:
        caller(self.auth, context).require_admin()
        stats = self.store.stats()
        return pb.StatsResponse(
            blobs=stats.blobs,
            chunks=stats.chunks,
            logical_bytes=stats.logical_bytes,
            stored_bytes=stats.stored_bytes,
            dedup_ratio=stats.dedup_ratio,
            records=stats.records,
            lookups=stats.lookups,
            hits=stats.hits,
            misses=stats.misses,
            bytes_in=stats.bytes_in,
            bytes_out=stats.bytes_out,
            uptime_seconds=time.monotonic() - self.started,
            pack_bytes=stats.pack_bytes,
            namespaces=[
                pb.NamespaceStats(namespace=n.namespace, records=n.records, lookups=n.lookups, hits=n.hits, misses=n.misses)
                for n in stats.namespaces
            ],
            evictions=stats.evictions,
            max_bytes=stats.max_bytes,
            top_keys=[
                pb.KeyUsage(namespace=k.namespace, key=k.key, hits=k.hits)
                for k in self.store.traffic.top_keys(request.top_keys or DEFAULT_TOP_KEYS)
            ],
        )

    @rpc
    def Verify(self, request: pb.VerifyRequest, context: grpc.ServicerContext) -> pb.VerifyResponse:
        caller(self.auth, context).require_admin()
        report = self.store.verify(request.sample_fraction)
        return pb.VerifyResponse(
            blobs_checked=report.blobs_checked,
            chunks_checked=report.chunks_checked,
            bytes_checked=report.bytes_checked,
            problems=[pb.VerifyProblem(digest=p.digest, description=p.description) for p in report.problems],
        )

    @rpc
    def Capabilities(self, request: pb.CapabilitiesRequest, context: grpc.ServicerContext) -> pb.CapabilitiesResponse:
        caller(self.auth, context)  # any known caller may ask
        params = self.store.chunk_params
        return pb.CapabilitiesResponse(
            digest_algorithms=list(ALGORITHMS),
            max_blob_size=self.store.config.max_blob_size,
            max_message_bytes=self.max_message_bytes,
            chunk_min_size=params.min_size,
            chunk_avg_size=params.avg_size,
            chunk_max_size=params.max_size,
        )


def add_blobs_service(servicer: BlobsService, server: grpc.Server) -> None:
    """Registers Blobs as the generated add_BlobsServicer_to_server does,
    except that Read answers and Write requests skip protobuf objects and
    go through client/wire.py (same wire format, fewer copies)."""
    handlers = {
        "FindMissing": grpc.unary_unary_rpc_method_handler(
            servicer.FindMissing,
            request_deserializer=pb.FindMissingRequest.FromString,
            response_serializer=pb.FindMissingResponse.SerializeToString,
        ),
        "Stat": grpc.unary_unary_rpc_method_handler(
            servicer.Stat,
            request_deserializer=pb.StatRequest.FromString,
            response_serializer=pb.BlobInfo.SerializeToString,
        ),
        "Read": grpc.unary_stream_rpc_method_handler(
            servicer.Read, request_deserializer=pb.ReadRequest.FromString, response_serializer=None
        ),
        "Write": grpc.stream_unary_rpc_method_handler(
            servicer.Write,
            request_deserializer=parse_write_request,
            response_serializer=pb.WriteResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["Blobs"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)
