"""In-memory traffic counters (bytes, lookups, hits, misses per namespace).

They change on every request, so they are not written to LMDB per request:
a synced LMDB commit costs milliseconds. The store persists a snapshot every
few seconds and on shutdown; a crash loses at most that window of counts,
never data.

Hits per instruction-cache key (the most used keys of `layercache stats`) are
counted since the daemon started and not persisted. The table is bounded:
when it is full, the less used half is forgotten, so keys that stay popular
stay in it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence

from cached.model import KeyUsage, NamespaceTraffic

_FIELDS = ("lookups", "hits", "misses")
MAX_TRACKED_KEYS = 100_000
# Namespaces are client-chosen: past this many, lookups in further ones are
# counted under OTHER, so neither memory nor the Stats answer grows without bound.
MAX_TRACKED_NAMESPACES = 1000
OTHER = "(other namespaces)"


class Traffic:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self._namespaces: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_FIELDS, 0))
        self._key_hits: Counter[tuple[str, str]] = Counter()

    def add_bytes(self, incoming: int = 0, outgoing: int = 0) -> None:
        with self._lock:
            self.bytes_in += incoming
            self.bytes_out += outgoing

    def add_lookup(self, namespace: str, hits: int, missed: bool, hit_keys: Sequence[tuple[str, str]] = ()) -> None:
        """Counts a lookup; `hit_keys` are the (namespace, key) of its hits."""
        with self._lock:
            if namespace not in self._namespaces and len(self._namespaces) >= MAX_TRACKED_NAMESPACES:
                namespace = OTHER
            counts = self._namespaces[namespace]
            counts["lookups"] += hits + int(missed)
            counts["hits"] += hits
            counts["misses"] += int(missed)
            self._key_hits.update(hit_keys)
            if len(self._key_hits) > MAX_TRACKED_KEYS:
                self._key_hits = Counter(dict(self._key_hits.most_common(MAX_TRACKED_KEYS // 2)))

    def top_keys(self, limit: int) -> list[KeyUsage]:
        with self._lock:
            return [KeyUsage(ns, key, hits) for (ns, key), hits in self._key_hits.most_common(limit)]

    def totals(self) -> dict[str, int]:
        with self._lock:
            result = {name: sum(c[name] for c in self._namespaces.values()) for name in _FIELDS}
            result.update(bytes_in=self.bytes_in, bytes_out=self.bytes_out)
            return result

    def namespaces(self, records: dict[str, int]) -> list[NamespaceTraffic]:
        """The busiest MAX_TRACKED_NAMESPACES namespaces (by lookups, then records), by name."""
        with self._lock:
            rows = [
                NamespaceTraffic(name, records.get(name, 0), **self._namespaces.get(name, dict.fromkeys(_FIELDS, 0)))
                for name in set(self._namespaces) | set(records)
            ]
        rows.sort(key=lambda row: (row.lookups, row.records), reverse=True)
        return sorted(rows[:MAX_TRACKED_NAMESPACES], key=lambda row: row.namespace)

    def dump(self) -> bytes:
        with self._lock:
            return json.dumps(
                {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "namespaces": self._namespaces},
                sort_keys=True,
            ).encode()

    def load(self, raw: bytes) -> None:
        state = json.loads(raw)
        with self._lock:
            self.bytes_in = int(state["bytes_in"])
            self.bytes_out = int(state["bytes_out"])
            for name, counts in state["namespaces"].items():
                self._namespaces[name].update({k: int(counts[k]) for k in _FIELDS})
