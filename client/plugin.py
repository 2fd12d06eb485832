"""The builder plugin: instruction-cache keys and the daemon, for any builder.

A builder uses it in four calls:

    plugin = BuilderPlugin(Client(), namespace="myteam/app", resolver=LayoutResolver(ctx))
    chain = plugin.keys("path/to/dir", {"VERSION": "1"})     # steps and keys, no daemon
    status = plugin.lookup_chain(chain)                       # ONE Lookup for the whole chain
    for entry in status.hits:
        plugin.fetch_layers(entry, "layout/blobs")            # layers of the steps that hit
    for step in chain.steps[len(status.hits):]:
        layers = ...build step...                             # each Descriptor already put()
        plugin.record_step(step, layers)
    print(plugin.explain(chain, step_number).render())        # why a step missed

A builder that runs RUN steps itself must give the process exactly the step's
``RunStep.env`` (the ARGs a command does not name are left out; see
docs/keys.md), or its keys would not cover what the process sees.

Every record carries, in its metadata, the step's identity and a compact
summary of its key inputs, so that ``explain`` works for records made on
other machines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from client.dockerfile import BaseResolver
from client.explain import INPUTS_META, STEP_META, Explanation, explain
from client.keys import KeyChain, KeyedStep, compute, resolve_pinned
from client.types import CacheEntry, Descriptor, LookupResult

DEFAULT_NAMESPACE = "builds"
# One metadata value must stay under the daemon's 64 KiB; leave room for the rest.
MAX_INPUTS_BYTES = 60 * 1024


class CacheClient(Protocol):
    """The part of ``client.Client`` the plugin uses (tests pass a plain fake)."""

    def lookup(self, namespace: str, keys: Iterable[str]) -> LookupResult: ...

    def record(
        self,
        namespace: str,
        key: str,
        layers: Iterable[Descriptor],
        metadata: dict[str, str] | None = None,
    ) -> CacheEntry: ...

    def list_entries(
        self, namespace: str, metadata_equals: dict[str, str] | None = None, limit: int = 100
    ) -> list[CacheEntry]: ...

    def get(self, digest: str, dest: str | os.PathLike[str] | BinaryIO | None = None) -> bytes | None: ...

    def put(self, source: str | os.PathLike[str], media_type: str = ..., namespace: str = "") -> Descriptor: ...


@dataclass(frozen=True)
class ChainStatus:
    """The result of one chain lookup: the entries of the steps that hit, in order."""

    hits: list[CacheEntry]
    miss_reason: str  # "none", "not_recorded" or "blob_missing"
    steps: int

    @property
    def first_miss(self) -> int | None:
        """The 1-based number of the first step that missed, or None."""
        return len(self.hits) + 1 if len(self.hits) < self.steps else None


class BuilderPlugin:
    def __init__(
        self,
        client: CacheClient,
        namespace: str = DEFAULT_NAMESPACE,
        resolver: BaseResolver = resolve_pinned,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.resolver = resolver

    def keys(
        self,
        dockerfile_dir: str | os.PathLike[str],
        build_args: Mapping[str, str] | None = None,
        *,
        dockerfile: str = "Dockerfile",
        context_dir: str | os.PathLike[str] | None = None,
        platform: str | None = None,
    ) -> KeyChain:
        """The steps of ``dockerfile_dir/dockerfile`` with their keys (no daemon call)."""
        return compute(
            dockerfile_dir,
            build_args,
            self.resolver,
            dockerfile=dockerfile,
            context_dir=context_dir,
            platform=platform,
        )

    def lookup_chain(self, chain: KeyChain) -> ChainStatus:
        """Which leading steps hit, asked in one Lookup RPC."""
        result = self.client.lookup(self.namespace, chain.keys)
        return ChainStatus(list(result.hits), result.miss_reason, len(chain.steps))

    def record_step(self, step: KeyedStep, layers: Iterable[Descriptor]) -> CacheEntry:
        """Records a step the builder just built; its layer blobs must be in the cache."""
        return self.client.record(self.namespace, step.key, list(layers), record_metadata(step))

    def fetch_layers(self, entry: CacheEntry, blobs_dir: str | os.PathLike[str]) -> list[Path]:
        """Writes the entry's layers as ``blobs_dir/ALGORITHM/HEX`` (OCI layout style).

        Blobs already there are not fetched again; every fetched blob is
        verified against its digest by the client.
        """
        paths = []
        for layer in entry.layers:
            algorithm, _, hexdigest = layer.digest.partition(":")
            path = Path(blobs_dir, algorithm, hexdigest)
            if not (path.is_file() and path.stat().st_size == layer.size):
                path.parent.mkdir(parents=True, exist_ok=True)
                self.client.get(layer.digest, path)
            paths.append(path)
        return paths

    def explain(self, chain: KeyChain, number: int) -> Explanation:
        """Why step ``number`` (1-based) hits or misses, against the nearest record."""
        status = self.lookup_chain(chain)
        return explain(self.client, self.namespace, chain, number, status.first_miss)


def record_metadata(step: KeyedStep) -> dict[str, str]:
    summary: dict[str, Any] = step.summary()
    text = _compact(summary)
    if len(text.encode()) > MAX_INPUTS_BYTES and "files" in summary:
        text = _compact(step.summary(depth=0))  # the root digest still tells a change apart
    return {STEP_META: step.identity, INPUTS_META: text}


def _compact(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))
