"""The instruction cache: namespace/key -> layer descriptors, looked up as a chain.

A builder asks about a whole chain of step keys at once and gets back the
longest prefix of hits. An entry is only a hit while every blob it names is
present, so a blob that was dropped (damaged, evicted) turns the entry into a
miss instead of handing out a descriptor nobody can read. Entries are stored
as JSON because their metadata is free-form text chosen by builders.

Every Record also indexes blob -> entry (blob_refs), so whoever removes a blob
can find and drop the entries that named it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import lmdb

from cached.digest import Digest
from cached.errors import ContentMismatch, InvalidArgument, MissingBlobs
from cached.model import CacheEntry, Descriptor, LookupResult
from cached.names import MAX_CHAIN, MAX_LAYERS, check_key, check_metadata, check_namespace
from cached.store import BlobStore, Visible, now_ms

DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 10_000
# One stored entry (layers and metadata as JSON) at most; keeps any one
# Lookup answer far below the gRPC message limit.
MAX_ENTRY_BYTES = 512 * 1024
# A Lookup stops adding hits past this many bytes of entries (so that the
# answer fits gRPC's default 4 MiB receive limit of any client) and answers
# "truncated": the caller asks again from the first key not answered.
MAX_LOOKUP_BYTES = 3 * 1024 * 1024


def entry_key(namespace: str, key: str) -> bytes:
    return namespace.encode() + b"\0" + key.encode()


class InstructionCache:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.index = store.index

    def record(
        self,
        namespace: str,
        key: str,
        layers: list[Descriptor],
        metadata: dict[str, str],
        visible: Visible | None = None,
    ) -> CacheEntry:
        """Stores an entry. Blobs the caller may not see (`visible`, from
        cached/auth.py) count as missing, like blobs the cache lacks."""
        check_namespace(namespace)
        check_key(key)
        metadata = check_metadata(metadata)
        if len(layers) > MAX_LAYERS:
            raise InvalidArgument(f"a record may name at most {MAX_LAYERS} layers")
        if visible is not None:
            hidden = self.store.find_missing([d.digest for d in layers], visible)
            if hidden:
                raise MissingBlobs(hidden)
        entry = CacheEntry(namespace, key, tuple(layers), metadata, now_ms())
        encoded = _encode(entry)
        if len(encoded) > MAX_ENTRY_BYTES:
            raise InvalidArgument(f"the entry is {len(encoded)} bytes encoded; the limit is {MAX_ENTRY_BYTES}")
        ekey = entry_key(namespace, key)
        with self.index.write() as txn:
            self._check_layers(txn, layers)
            previous = txn.get(ekey, db=self.index.db["records"])
            if previous is not None:
                self._unlink(txn, ekey, _decode(namespace, key, previous))
            else:
                self.index.add(txn, "records", 1)
                self.index.add(txn, "records:" + namespace, 1)
            txn.put(ekey, encoded, db=self.index.db["records"])
            for layer in dict.fromkeys(d.digest for d in layers):
                if not layer.is_empty_blob:
                    txn.put(layer.key, ekey, db=self.index.db["blob_refs"], dupdata=False)
        return entry

    def _check_layers(self, txn: lmdb.Transaction, layers: list[Descriptor]) -> None:
        blobs = self.index.db["blobs"]
        missing = []
        for layer in layers:
            if layer.digest.is_empty_blob:
                if layer.size != 0:
                    raise ContentMismatch(f"{layer.digest} is the empty blob, but size {layer.size} was given")
                continue
            raw = txn.get(layer.digest.key, db=blobs)
            if raw is None:
                missing.append(layer.digest)
                continue
            size = int.from_bytes(raw[:8], "little")
            if size != layer.size:
                raise ContentMismatch(f"{layer.digest} is {size} bytes, but the record says {layer.size}")
        if missing:
            raise MissingBlobs(missing)

    def _unlink(self, txn: lmdb.Transaction, ekey: bytes, entry: CacheEntry) -> None:
        for layer in entry.layers:
            txn.delete(layer.digest.key, ekey, db=self.index.db["blob_refs"])

    def drop_entries_of(self, txn: lmdb.Transaction, blob: Digest) -> int:
        """Deletes every entry naming `blob` (inside the caller's transaction)."""
        refs = self.index.db["blob_refs"]
        cursor = txn.cursor(db=refs)
        ekeys = list(cursor.iternext_dup(keys=False)) if cursor.set_key(blob.key) else []
        for ekey in ekeys:
            self._remove(txn, ekey)
        return len(ekeys)

    def delete(self, namespace: str, keys: list[str]) -> int:
        """Removes the entries of `keys` that exist; returns how many did."""
        check_namespace(namespace)
        for key in keys:
            check_key(key)
        with self.index.write() as txn:
            return sum(self._remove(txn, entry_key(namespace, key)) for key in keys)

    def _remove(self, txn: lmdb.Transaction, ekey: bytes) -> bool:
        raw = txn.get(ekey, db=self.index.db["records"])
        if raw is None:
            return False
        namespace, _, key = ekey.partition(b"\0")
        self._unlink(txn, ekey, _decode(namespace.decode(), key.decode(), raw))
        txn.delete(ekey, db=self.index.db["records"])
        self.index.add(txn, "records", -1)
        self.index.add(txn, "records:" + namespace.decode(), -1)
        return True

    def lookup(self, namespace: str, keys: list[str], fallback: Sequence[str] = ()) -> LookupResult:
        """Walks the chain in `namespace`, then in each `fallback` namespace
        (read scopes, see cached/auth.py) while the chain is not a full hit,
        and answers with the longest run of hits."""
        check_namespace(namespace)
        if not keys:
            raise InvalidArgument("a lookup needs at least one key")
        if len(keys) > MAX_CHAIN:
            raise InvalidArgument(f"a lookup chain may hold at most {MAX_CHAIN} keys")
        for key in keys:
            check_key(key)
        best: LookupResult | None = None
        with self.index.read() as txn:
            for scope in (namespace, *fallback):
                walked = self._walk(txn, scope, keys)
                if best is None or len(walked.hits) > len(best.hits):
                    best = walked
                if best.miss_reason == "none":
                    break
        assert best is not None
        hits, reason, missing = best.hits, best.miss_reason, best.missing
        # Touch, then check again: eviction either saw the touch and kept the
        # blobs or removed them first, and then the hit is cut here.
        gone = self.store.touch(d.digest for entry in hits for d in entry.layers)
        for position, entry in enumerate(hits if gone else ()):
            absent = [d.digest for d in entry.layers if d.digest in gone]
            if absent:
                hits, reason, missing = hits[:position], "blob_missing", absent
                break
        self.store.traffic.add_lookup(namespace, len(hits), reason != "none", [(e.namespace, e.key) for e in hits])
        return LookupResult(hits, reason, missing)

    def _walk(self, txn: lmdb.Transaction, namespace: str, keys: list[str]) -> LookupResult:
        hits: list[CacheEntry] = []
        reason, missing = "none", []
        answered = 0
        for key in keys:
            if answered > MAX_LOOKUP_BYTES:
                reason = "truncated"
                break
            entry, reason, missing = self._complete_entry(txn, namespace, key)
            if entry is None:
                break
            hits.append(entry)
            answered += len(key) + sum(len(d.media_type) + 80 for d in entry.layers) + sum(
                len(k) + len(v) for k, v in entry.metadata.items()
            )
        return LookupResult(hits, reason, missing)

    def peek(self, namespace: str, key: str) -> CacheEntry | None:
        """The entry if it is complete, like a hit, but not counted as a lookup
        (the OCI endpoint fetching a manifest by digest rather than by tag)."""
        check_namespace(namespace)
        check_key(key)
        with self.index.read() as txn:
            entry, _, _ = self._complete_entry(txn, namespace, key)
        # As in lookup: a blob evicted before the touch makes it a miss.
        if entry is not None and self.store.touch(d.digest for d in entry.layers):
            return None
        return entry

    def _complete_entry(self, txn: lmdb.Transaction, namespace: str, key: str) -> tuple[CacheEntry | None, str, list[Digest]]:
        """(entry, "none", []) when recorded and every blob is present, else (None, reason, missing)."""
        raw = txn.get(entry_key(namespace, key), db=self.index.db["records"])
        if raw is None:
            return None, "not_recorded", []
        entry = _decode(namespace, key, raw)
        blobs = txn.cursor(db=self.index.db["blobs"])
        missing = [d.digest for d in entry.layers if not d.digest.is_empty_blob and not blobs.set_key(d.digest.key)]
        if missing:
            return None, "blob_missing", missing
        return entry, "none", []

    def keys(self, namespace: str, after: str, limit: int) -> list[str]:
        """Up to `limit` keys of `namespace` sorted bytewise, starting after `after`."""
        check_namespace(namespace)
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be within [0, {MAX_LIST_LIMIT}]")
        prefix = namespace.encode() + b"\0"
        found: list[str] = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self.index.db["records"])
            if not cursor.set_range(prefix + after.encode()):
                return found
            for ekey in cursor.iternext(values=False):
                if len(found) >= limit or not ekey.startswith(prefix):
                    break
                key = ekey[len(prefix) :].decode()
                if key != after:
                    found.append(key)
        return found

    def list_entries(self, namespace: str, metadata_equals: dict[str, str], limit: int) -> list[CacheEntry]:
        check_namespace(namespace)
        if not 0 <= limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit must be within [0, {MAX_LIST_LIMIT}]")
        wanted = metadata_equals.items()
        with self.index.read() as txn:
            matches = [
                entry
                for entry in self._scan(txn, namespace)
                if all(entry.metadata.get(k) == v for k, v in wanted)
            ]
        matches.sort(key=lambda e: (e.created_ms, e.key), reverse=True)
        return matches[: limit or DEFAULT_LIST_LIMIT]

    def _scan(self, txn: lmdb.Transaction, namespace: str) -> Iterator[CacheEntry]:
        prefix = namespace.encode() + b"\0"
        cursor = txn.cursor(db=self.index.db["records"])
        if not cursor.set_range(prefix):
            return
        for ekey, raw in cursor:
            if not ekey.startswith(prefix):
                return
            yield _decode(namespace, ekey[len(prefix) :].decode(), raw)


def _encode(entry: CacheEntry) -> bytes:
    return json.dumps(
        {
            "layers": [[str(d.digest), d.size, d.media_type] for d in entry.layers],
            "metadata": entry.metadata,
            "created_ms": entry.created_ms,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _decode(namespace: str, key: str, raw: bytes) -> CacheEntry:
    value = json.loads(raw)
    layers = tuple(Descriptor(Digest.parse(d), size, media) for d, size, media in value["layers"])
    return CacheEntry(namespace, key, layers, value["metadata"], value["created_ms"])
