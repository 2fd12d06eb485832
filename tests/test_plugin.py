"""The builder plugin: one Lookup per chain, records that carry their inputs, explanations.

The cache here is a plain in-memory fake with the client's methods; the same
flows run against the real daemon in tests/test_builder.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from client.explain import INPUTS_META, STEP_META
from client.keys import SUMMARY_BUDGET
from client.plugin import MAX_INPUTS_BYTES, BuilderPlugin, record_metadata
from client.types import CacheEntry, Descriptor, LookupResult

REAL_PACKAGE = Path(json.__file__).parent
DOCKERFILE = """\
FROM scratch
ARG X=a
ENV Y=$X
COPY app/ /srv/app/
RUN echo "$Y"
"""


class FakeCache:
    """Records, chain lookups and blobs in memory, counting the calls made."""

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}
        self.blobs: dict[str, bytes] = {}
        self.calls: list[str] = []
        self.clock = 0

    def lookup(self, namespace: str, keys: list[str]) -> LookupResult:
        self.calls.append("lookup")
        hits = []
        for key in keys:
            if key not in self.entries:
                return LookupResult(hits, "not_recorded")
            hits.append(self.entries[key])
        return LookupResult(hits, "none")

    def record(self, namespace: str, key: str, layers: list[Descriptor], metadata: dict[str, str] | None = None) -> CacheEntry:
        self.calls.append("record")
        self.clock += 1
        entry = CacheEntry(namespace, key, tuple(layers), dict(metadata or {}), self.clock)
        self.entries[key] = entry
        return entry

    def list_entries(self, namespace: str, metadata_equals: dict[str, str] | None = None, limit: int = 100) -> list[CacheEntry]:
        self.calls.append("list_entries")
        wanted = (metadata_equals or {}).items()
        found = [e for e in self.entries.values() if wanted <= e.metadata.items()]
        return sorted(found, key=lambda e: -e.created_unix_ms)[:limit]

    def put(self, source: bytes, media_type: str = "application/octet-stream", namespace: str = "") -> Descriptor:
        digest = "sha256:" + hashlib.sha256(source).hexdigest()
        self.blobs[digest] = source
        return Descriptor(digest, len(source), media_type)

    def get(self, digest: str, dest: str | os.PathLike[str] | None = None) -> bytes | None:
        self.calls.append("get")
        if dest is None:
            return self.blobs[digest]
        Path(dest).write_bytes(self.blobs[digest])
        return None


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    shutil.copytree(REAL_PACKAGE, root / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "Dockerfile").write_text(DOCKERFILE)
    return root


def record_all(plugin: BuilderPlugin, context: Path, **build_args: str) -> None:
    chain = plugin.keys(context, build_args)
    for step in chain.steps:
        plugin.record_step(step, [])


def test_lookup_chain_asks_about_the_whole_chain_in_one_call(context: Path):
    cache = FakeCache()
    plugin = BuilderPlugin(cache, "team/app")
    chain = plugin.keys(context)
    assert plugin.lookup_chain(chain).first_miss == 1
    for step in chain.steps[:2]:
        plugin.record_step(step, [])
    cache.calls.clear()
    status = plugin.lookup_chain(chain)
    assert cache.calls == ["lookup"]
    assert [e.key for e in status.hits] == chain.keys[:2] and status.first_miss == 3
    record_all(plugin, context)
    assert plugin.lookup_chain(chain).first_miss is None


def test_records_carry_the_step_identity_and_their_key_inputs(context: Path):
    cache = FakeCache()
    plugin = BuilderPlugin(cache, "team/app")
    chain = plugin.keys(context)
    copy = chain.steps[1]
    entry = plugin.record_step(copy, [cache.put(b"layer", "application/vnd.oci.image.layer.v1.tar")])
    assert entry.metadata[STEP_META] == "2:COPY"
    inputs = json.loads(entry.metadata[INPUTS_META])
    assert inputs["parent"] == chain.keys[0] and inputs["sources"] == copy.inputs["sources"]
    assert "srv/app/decoder.py" in inputs["files"]["listing"]


def test_metadata_of_a_huge_tree_stays_under_the_daemon_limit(tmp_path: Path):
    root = tmp_path / "ctx"
    for package in range(40):
        directory = root / "lib" / f"package_{package:03d}" / "module"
        directory.mkdir(parents=True)
        for index in range(30):
            (directory / f"file_with_a_longish_name_{index:03d}.py").write_text(f"# {package} {index}\n")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY lib/ /usr/lib/python3/site-packages/\n")
    step = BuilderPlugin(FakeCache()).keys(root).steps[1]
    metadata = record_metadata(step)
    inputs = json.loads(metadata[INPUTS_META])
    assert len(metadata[INPUTS_META].encode()) <= MAX_INPUTS_BYTES
    assert len(json.dumps(inputs["files"]["listing"])) <= SUMMARY_BUDGET
    assert inputs["files"]["depth"] < 7  # folded: 1200 files do not fit one by one


def test_fetch_layers_writes_verified_blobs_once(context: Path, tmp_path: Path):
    cache = FakeCache()
    plugin = BuilderPlugin(cache)
    layer = cache.put(b"tar bytes", "application/vnd.oci.image.layer.v1.tar")
    entry = plugin.record_step(plugin.keys(context).steps[0], [layer])
    (path,) = plugin.fetch_layers(entry, tmp_path / "blobs")
    assert path == tmp_path / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    assert path.read_bytes() == b"tar bytes"
    cache.calls.clear()
    plugin.fetch_layers(entry, tmp_path / "blobs")
    assert "get" not in cache.calls


def test_explain_names_an_edited_file(context: Path):
    plugin = BuilderPlugin(FakeCache())
    record_all(plugin, context)
    (context / "app" / "decoder.py").write_text("# edited\n")
    chain = plugin.keys(context)
    copy = plugin.explain(chain, 2)
    assert not copy.hit and copy.same_parent
    assert copy.differences == ["srv/app/decoder.py (context: app/decoder.py): content changed"]
    run = plugin.explain(chain, 3)
    assert run.differences == ["the parent step's key differs: an earlier step changed (first miss: step 2)"]
    assert plugin.explain(chain, 1).hit
    assert "decoder.py" in copy.render() and "miss" in copy.render()


def test_explain_names_modes_renames_and_symlinks(context: Path):
    plugin = BuilderPlugin(FakeCache())
    (context / "app" / "tool.py").chmod(0o644)
    (context / "app" / "link").symlink_to("decoder.py")
    record_all(plugin, context)
    (context / "app" / "tool.py").chmod(0o755)
    (context / "app" / "scanner.py").rename(context / "app" / "scanner2.py")
    (context / "app" / "link").unlink()
    (context / "app" / "link").symlink_to("encoder.py")
    found = plugin.explain(plugin.keys(context), 2).differences
    assert sorted(found) == sorted(
        [
            "srv/app/scanner.py renamed to srv/app/scanner2.py (context: app/scanner2.py)",
            "srv/app/tool.py (context: app/tool.py): mode 0644 -> 0755",
            "symlink srv/app/link (context: app/link) retargeted: decoder.py -> encoder.py",
        ]
    )


def test_explain_names_the_env_value_an_arg_changed(context: Path):
    plugin = BuilderPlugin(FakeCache())
    record_all(plugin, context, X="a")
    explanation = plugin.explain(plugin.keys(context, {"X": "b"}), 3)
    assert explanation.same_parent
    assert explanation.differences == ['ENV Y: "a" -> "b"']


def test_explain_prefers_the_record_with_the_same_parent(context: Path):
    plugin = BuilderPlugin(FakeCache())
    record_all(plugin, context, X="a")
    (context / "app" / "decoder.py").write_text("# edited\n")
    record_all(plugin, context, X="a")  # newer records, with another COPY parent for the RUN
    (context / "app" / "decoder.py").write_text("# edited again\n")
    (context / "Dockerfile").write_text(DOCKERFILE.replace('RUN echo "$Y"', 'RUN echo "$Y" twice'))
    explanation = plugin.explain(plugin.keys(context), 2)
    assert explanation.differences == ["srv/app/decoder.py (context: app/decoder.py): content changed"]


def test_explain_says_when_a_step_was_never_recorded(context: Path):
    plugin = BuilderPlugin(FakeCache())
    explanation = plugin.explain(plugin.keys(context), 2)
    assert explanation.nearest is None and not explanation.hit
    assert "never recorded" in explanation.render()
    with pytest.raises(ValueError, match="does not exist"):
        plugin.explain(plugin.keys(context), 9)
