"""Observability on a real daemon: Prometheus metrics, JSON logs with request ids, stats."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.errors import NotFoundError
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc

ABSENT = "sha256:" + "0" * 64


@pytest.fixture
def observed(daemon_factory):
    daemon = daemon_factory(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
    port = next(line for line in daemon.lines if "serving metrics" in line).rsplit(":", 1)[1].strip()
    return daemon, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_calls_bytes_lookups_and_store_figures(observed):
    daemon, url = observed
    with daemon.client(timeout=30) as client:
        layer = client.put(b"metrics layer " * 10_000, namespace="m/app")
        client.record("m/app", "step-1", [layer])
        client.lookup("m/app", ["step-1"])
        client.lookup("m/app", ["step-1", "step-2"])
        assert client.get(layer.digest) == b"metrics layer " * 10_000
        with pytest.raises(NotFoundError):
            client.stat(ABSENT)
    samples = scrape(url)

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("layercache_requests_total", method="Write", code="OK") == 1
    assert value("layercache_requests_total", method="Stat", code="NOT_FOUND") == 1
    assert value("layercache_requests_total", method="Lookup", code="OK") == 2
    assert value("layercache_request_seconds_count", method="Lookup") == 2
    assert value("layercache_request_seconds_bucket", method="Read", le="+Inf") == 1
    assert value("layercache_lookups_total", namespace="m/app") == 3
    assert value("layercache_lookup_hits_total", namespace="m/app") == 2
    assert value("layercache_lookup_misses_total", namespace="m/app") == 1
    assert value("layercache_received_bytes_total") == len(b"metrics layer ") * 10_000
    assert value("layercache_sent_bytes_total") == len(b"metrics layer ") * 10_000
    assert value("layercache_logical_bytes") == len(b"metrics layer ") * 10_000
    assert 0 < value("layercache_stored_bytes") < value("layercache_logical_bytes")  # compressed
    assert value("layercache_dedup_ratio") > 1
    assert value("layercache_evictions_total") == 0
    assert value("layercache_max_bytes") == 0


def test_json_logs_carry_the_request_id_the_client_sent_back_to_it(observed):
    daemon, _ = observed
    with grpc.insecure_channel(daemon.address) as channel:
        call = pb_grpc.BlobsStub(channel).Stat.with_call
        with pytest.raises(grpc.RpcError) as failure:
            call(pb.StatRequest(digest="sha256:not-hex"), metadata=(("x-request-id", "ci-job-42"),), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("x-request-id", "ci-job-42") in failure.value.initial_metadata()
    daemon.stop()
    entries = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    failed = [e for e in entries if e.get("request_id") == "ci-job-42"]
    assert failed and failed[0]["code"] == "INVALID_ARGUMENT" and failed[0]["method"] == "Stat"
    assert failed[0]["level"] == "info" and "not-hex" in failed[0]["message"]


def test_stats_show_per_namespace_hit_rates_and_the_most_used_keys(daemon):
    with daemon.client(timeout=30) as client:
        layer = client.put(b"popular", namespace="s/app")
        for key in ("hot", "warm"):
            client.record("s/app", key, [layer])
        for _ in range(3):
            client.lookup("s/app", ["hot"])
        client.lookup("s/app", ["warm", "cold"])
        stats = client.stats(top_keys=5)
    assert [(k.namespace, k.key, k.hits) for k in stats.top_keys] == [("s/app", "hot", 3), ("s/app", "warm", 1)]
    (ns,) = [n for n in stats.namespaces if n.namespace == "s/app"]
    assert (ns.lookups, ns.hits, ns.misses) == (5, 4, 1)

