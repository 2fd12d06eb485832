"""Manifests and tags over the blob store and the instruction cache.

A manifest (OCI or Docker v2; image manifest or index) is validated, then
stored as a blob exactly as received, under its media type. A tag is the
instruction-cache entry (repository, tag): its layers are the manifest's own
descriptor followed by every blob the manifest references (config and
layers; for an index, the child manifests and what those reference), so a
GET by tag is an instruction-cache lookup, counted as a hit or a miss, and
it turns into a miss as soon as any of those blobs is gone.

Each manifest is also recorded under its digest string as the key, a key no
tag can be (tags have no ':'). That scopes GET and DELETE by digest to the
repository the manifest was pushed to, and those fetches use `peek`, which
does not count as a lookup. Every entry made here carries the metadata
{"oci.manifest": digest}: it tells manifest entries from those a builder
recorded through the gRPC API in the same namespace, and lets a DELETE by
digest find the tags that point at it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cached.digest import Digest
from cached.errors import BlobNotFound, ContentMismatch, InvalidArgument, InvalidDigest, MissingBlobs, NotFound
from cached.model import Descriptor
from cached.oci.errors import ManifestInvalid, ManifestUnknown
from cached.oci.reference import is_tag
from cached.records import MAX_LIST_LIMIT, InstructionCache
from cached.store import BlobStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES
# Content-Type values that say nothing about the manifest kind: the body's
# mediaType field (or its shape) decides.
_GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream"})
# Layers a registry never holds (their bytes come from elsewhere, e.g. the
# Windows base layers): not checked for presence and not recorded.
_FOREIGN_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
META_KEY = "oci.manifest"


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    # config then layers for an image manifest; the child manifests for an index
    references: tuple[Descriptor, ...]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestInvalid(f"the manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("the manifest is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid(f"schemaVersion {doc.get('schemaVersion')!r} is not supported; only 2 is")
    media_type = _media_type(doc, (content_type or "").split(";", 1)[0].strip().lower())
    if media_type in INDEX_TYPES:
        references = _descriptors(doc, "manifests", required=True)
    else:
        references = (_descriptor(doc.get("config"), "config"), *_descriptors(doc, "layers", required=False))
    if "subject" in doc:
        _descriptor(doc["subject"], "subject")  # shape only: a subject need not be present
    return ParsedManifest(media_type, references)


def _media_type(doc: dict[str, Any], header: str) -> str:
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("the manifest's mediaType is not a string")
    if header not in _GENERIC_TYPES:
        if header not in MANIFEST_TYPES:
            raise ManifestInvalid(f"manifest media type {header[:100]!r} is not supported (supported: {', '.join(sorted(MANIFEST_TYPES))})")
        if declared is not None and declared != header:
            raise ManifestInvalid(f"the manifest's mediaType {declared[:100]!r} differs from its Content-Type {header!r}")
        media_type = header
    elif declared is not None:
        media_type = declared
    else:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid(f"manifest media type {media_type[:100]!r} is not supported")
    if (media_type in INDEX_TYPES) != ("manifests" in doc) or (media_type in IMAGE_TYPES) != ("config" in doc):
        raise ManifestInvalid(f"the manifest's fields do not fit its media type {media_type}")
    return media_type


def _descriptors(doc: dict[str, Any], field: str, required: bool) -> tuple[Descriptor, ...]:
    items = doc.get(field)
    if items is None and not required:
        return ()
    if not isinstance(items, list):
        raise ManifestInvalid(f"the manifest's {field} is not a list")
    return tuple(_descriptor(item, f"{field}[{i}]") for i, item in enumerate(items))


def _descriptor(item: object, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise ManifestInvalid(f"{where} is not a descriptor object")
    size = item.get("size")
    media_type = item.get("mediaType", "application/octet-stream")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    if not isinstance(media_type, str):
        raise ManifestInvalid(f"{where}.mediaType must be a string")
    try:
        digest = Digest.parse(item.get("digest"))  # type: ignore[arg-type]
    except InvalidDigest as exc:
        raise ManifestInvalid(f"{where}: {exc}") from None
    return Descriptor(digest, size, media_type)


class Manifests:
    def __init__(self, store: BlobStore, cache: InstructionCache, max_bytes: int) -> None:
        self.store = store
        self.cache = cache
        self.max_bytes = max_bytes

    def put(self, repository: str, reference: str | Digest, body: bytes, content_type: str | None) -> Descriptor:
        parsed = parse_manifest(body, content_type)
        if isinstance(reference, Digest):
            actual = Digest.of(body, reference.algorithm)
            if actual != reference:
                raise ContentMismatch(f"the manifest hashes to {actual}, not to the reference {reference}")
            digest = reference
        else:
            digest = Digest.of(body)
        blobs = self._closure(parsed)
        self._check_present(blobs)
        manifest = Descriptor(digest, len(body), parsed.media_type)
        with self.store.open_write(digest, len(body), parsed.media_type, repository) as writer:
            writer.write(body)
            writer.commit()
        # The repository now holds what its manifest names, pushed or not.
        for blob in blobs:
            self.store.add_holder(blob.digest, repository)
        layers = [manifest, *blobs]
        metadata = {META_KEY: str(digest)}
        for key in (str(digest), *([reference] if isinstance(reference, str) else [])):
            try:
                self.cache.record(repository, key, layers, metadata)
            except MissingBlobs:
                raise  # one went away since _check_present
            except InvalidArgument as exc:
                raise ManifestInvalid(str(exc)) from exc
        return manifest

    def _closure(self, parsed: ParsedManifest) -> list[Descriptor]:
        """The blobs an entry for this manifest must name: its references and,
        for an index, what each child manifest present here references."""
        found: dict[Digest, Descriptor] = {}
        for ref in parsed.references:
            if ref.media_type not in _FOREIGN_TYPES:
                found.setdefault(ref.digest, ref)
        if parsed.is_index:
            for child in parsed.references:
                for ref in self._child_references(child):
                    found.setdefault(ref.digest, ref)
        return list(found.values())

    def _child_references(self, child: Descriptor) -> tuple[Descriptor, ...]:
        if child.media_type not in MANIFEST_TYPES or child.size > self.max_bytes:
            return ()
        try:
            body = b"".join(self.store.read(child.digest))
            parsed = parse_manifest(body, child.media_type)
        except (NotFound, ManifestInvalid):
            # A missing child is reported by _check_present; a child that is
            # not a manifest (pushed as a plain blob) references nothing we know.
            return ()
        return tuple(ref for ref in parsed.references if ref.media_type not in _FOREIGN_TYPES)

    def _check_present(self, blobs: list[Descriptor]) -> None:
        missing = []
        for blob in blobs:
            try:
                size = self.store.stat(blob.digest).descriptor.size
            except BlobNotFound:
                missing.append(blob.digest)
                continue
            if size != blob.size:
                raise ManifestInvalid(f"the manifest says {blob.digest} is {blob.size} bytes, but it is {size}")
        if missing:
            raise MissingBlobs(missing)

    def get(self, repository: str, reference: str | Digest, count: bool) -> tuple[Descriptor, bytes]:
        """The manifest's descriptor and bytes. A tag fetched with `count` is
        an instruction-cache lookup; digests are never counted."""
        key = str(reference)
        if count and isinstance(reference, str):
            hits = self.cache.lookup(repository, [key]).hits
            entry = hits[0] if hits else None
        else:
            entry = self.cache.peek(repository, key)
        if entry is None or not entry.layers or entry.metadata.get(META_KEY) != str(entry.layers[0].digest):
            raise ManifestUnknown(f"manifest {key} is unknown in repository {repository}")
        descriptor = entry.layers[0]
        try:
            return descriptor, b"".join(self.store.read(descriptor.digest))
        except BlobNotFound:
            raise ManifestUnknown(f"manifest {key} in repository {repository} has just been removed") from None

    def delete(self, repository: str, reference: str | Digest) -> None:
        """A tag: that tag only. A digest: the manifest and every tag naming it."""
        if isinstance(reference, str):
            if not self.cache.delete(repository, [reference]):
                raise ManifestUnknown(f"tag {reference} is unknown in repository {repository}")
            return
        deleted = 0
        while entries := self.cache.list_entries(repository, {META_KEY: str(reference)}, MAX_LIST_LIMIT):
            deleted += self.cache.delete(repository, [e.key for e in entries])
        if not deleted:
            raise ManifestUnknown(f"manifest {reference} is unknown in repository {repository}")

    def tags(self, repository: str, n: int | None, last: str) -> tuple[list[str], bool]:
        """Up to n tags after `last`, sorted, and whether more follow."""
        if not self.cache.keys(repository, "", 1):
            raise NotFound(f"repository {repository} is unknown")
        page = MAX_LIST_LIMIT if n is None else min(n, MAX_LIST_LIMIT)
        found: list[str] = []
        after = last
        # One more than a page, to know whether to point at a next one.
        while page and len(found) <= page:
            keys = self.cache.keys(repository, after, MAX_LIST_LIMIT)
            if not keys:
                break
            found.extend(k for k in keys if is_tag(k))
            after = keys[-1]
        return found[:page], len(found) > page
