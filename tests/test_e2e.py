"""End to end with the real daemon process and layers built from real trees."""

from __future__ import annotations

import hashlib

import pytest

from bench.layers import named_root, near_duplicate_series

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A ~40 MB stdlib layer plus its near-duplicate variants."""
    return near_duplicate_series(tmp_path_factory.mktemp("layers"), [named_root("stdlib")], max_bytes=40 << 20)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def test_real_layers_round_trip_dedup_chain_and_survive_restart(daemon, series, tmp_path):
    base, *variants = series
    assert base.size > 30 << 20 and len(variants) >= 3
    with daemon.client() as client:
        descriptors = {}
        added = {}
        for layer in series:
            before = client.stats().stored_bytes
            descriptors[layer.name] = client.put(layer.path, LAYER_MEDIA_TYPE, "team/app")
            added[layer.name] = client.stats().stored_bytes - before
            assert descriptors[layer.name].digest == "sha256:" + layer.sha256

        for layer in series:
            out = tmp_path / f"{layer.name}.out"
            client.get(descriptors[layer.name].digest, out)
            assert file_sha256(out) == "sha256:" + layer.sha256

        # The base is compressed; each near-duplicate adds a small fraction of its size.
        assert added[base.name] < base.size
        for layer in variants:
            assert added[layer.name] < layer.size // 20, (layer.name, added[layer.name], layer.size)
        stats = client.stats()
        assert stats.dedup_ratio > 3 and stats.logical_bytes == sum(l.size for l in series)

        # A 20-step chain: steps 0-19 of "main", and a branch that diverges at step 13.
        layers = list(descriptors.values())
        main = [f"main-step-{i:02d}" for i in range(20)]
        for i, key in enumerate(main):
            client.record("team/app", key, [layers[i % len(layers)]], {"instruction": f"RUN step {i}"})
        assert [e.key for e in client.lookup("team/app", main).hits] == main
        branch = main[:13] + [f"branch-step-{i:02d}" for i in range(13, 20)]
        result = client.lookup("team/app", branch)
        assert [e.key for e in result.hits] == main[:13]
        assert result.miss_reason == "not_recorded"
        assert result.hits[7].metadata == {"instruction": "RUN step 7"}
        assert result.hits[7].layers == (layers[7 % len(layers)],)
        before_restart = client.stats()

    daemon.restart()
    with daemon.client() as client:
        after = client.stats()
        for field in ("blobs", "chunks", "logical_bytes", "stored_bytes", "records", "lookups", "hits", "misses"):
            assert getattr(after, field) == getattr(before_restart, field), field
        assert [e.key for e in client.lookup("team/app", main).hits] == main
        out = tmp_path / "after-restart"
        client.get(descriptors[variants[0].name].digest, out)
        assert file_sha256(out) == "sha256:" + variants[0].sha256
        assert client.verify().problems == []
