"""Bad input to the OCI endpoint: the right status and OCI error code, a message
naming what was wrong, and nothing stored or lost.

Against the real daemon process, except the last test, which runs the HTTP
server in-process over a store that records which of its entry points a
request reached, to show malformed digests and names stop before any I/O.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from cached.config import HttpConfig, StoreConfig
from cached.oci import RegistryServer
from cached.records import InstructionCache
from tests.oci_support import OCI_MANIFEST, Registry, exchange, sha256
from tests.test_service import RecordingStore

BAD_DIGESTS = [
    "sha256:" + "AB" * 32,  # uppercase hex
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "md5:" + "a" * 64,
    "sha256:..%2F..%2Fetc%2Fpasswd",
    "sha256:%2E%2E",
    "sha256:",
]
BAD_NAMES = ["..", "a/../b", "Upper", "a" * 256, "a//b", "-lead", "trail-", "sp%20ace", "a/.", "%2E%2E"]


@pytest.fixture
def registry(daemon) -> Registry:
    return Registry(daemon.http_address)


def stored(client) -> tuple[int, int, int]:
    stats = client.stats()
    return stats.blobs, stats.logical_bytes, stats.records


def test_upload_finished_with_a_digest_that_does_not_match(registry, client):
    data = os.urandom(2 << 20)
    wrong = sha256(b"something else")
    before = stored(client)
    location = registry.request("POST", "/v2/bad/blobs/uploads/").headers["Location"]
    assert registry.request("PATCH", location, data).status == 202
    done = registry.request("PUT", f"{location}?digest={wrong}")
    assert done.status == 400 and done.error_codes == ["DIGEST_INVALID"]
    assert wrong in done.json["errors"][0]["message"]
    assert stored(client) == before
    assert client.find_missing([wrong, sha256(data)]) == [wrong, sha256(data)]
    assert registry.request("GET", location).error_codes == ["BLOB_UPLOAD_UNKNOWN"]
    # Monolithic: the same.
    mono = registry.request("POST", f"/v2/bad/blobs/uploads/?digest={wrong}", data)
    assert mono.status == 400 and mono.error_codes == ["DIGEST_INVALID"]
    assert stored(client) == before


def test_a_closing_put_without_digest_is_refused(registry):
    location = registry.request("POST", "/v2/bad/blobs/uploads/").headers["Location"]
    refused = registry.request("PUT", location, b"abc")
    assert refused.status == 400 and refused.error_codes == ["DIGEST_INVALID"]
    assert "digest" in refused.json["errors"][0]["message"]


def test_patch_out_of_order_is_416_and_the_upload_survives(registry):
    data = os.urandom(300_000)
    location = registry.request("POST", "/v2/order/blobs/uploads/").headers["Location"]
    registry.request("PATCH", location, data[:100_000], {"Content-Range": "0-99999"})
    for first in (0, 99_999, 100_001, 200_000):
        skipped = registry.request("PATCH", location, data[first:first + 10], {"Content-Range": f"{first}-{first + 9}"})
        assert skipped.status == 416, first
        assert skipped.headers["Range"] == "0-99999"
        assert skipped.headers["Location"] == location
    resumed = registry.request("PATCH", location, data[100_000:], {"Content-Range": f"100000-{len(data) - 1}"})
    assert resumed.status == 202
    assert registry.request("PUT", f"{location}?digest={sha256(data)}").status == 201


def test_content_range_that_disagrees_with_the_body_or_is_malformed(registry):
    location = registry.request("POST", "/v2/order/blobs/uploads/").headers["Location"]
    longer = registry.request("PATCH", location, b"12345", {"Content-Range": "0-9"})
    assert longer.status == 400 and longer.error_codes == ["SIZE_INVALID"]
    for text in ("5-2", "a-b", "0-", "-5"):
        malformed = registry.request("PATCH", location, b"12345", {"Content-Range": text})
        assert malformed.status == 400 and malformed.error_codes == ["BLOB_UPLOAD_INVALID"], text
    assert registry.request("GET", location).headers["Range"] == "0-0"


def test_unknown_upload_ids(registry):
    started = registry.request("POST", "/v2/mine/blobs/uploads/").headers["Docker-Upload-UUID"]
    for path in (
        "/v2/mine/blobs/uploads/" + "0" * 32,
        "/v2/mine/blobs/uploads/not-an-id",
        "/v2/mine/blobs/uploads/..%2F..%2Fpacks",
        f"/v2/theirs/blobs/uploads/{started}",  # an id is valid only in its repository
    ):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            query = f"?digest={sha256(b'')}" if method == "PUT" else ""
            response = registry.request(method, path + query, b"")
            assert response.status == 404, (method, path)
            assert response.error_codes == ["BLOB_UPLOAD_UNKNOWN"]
    assert registry.request("GET", f"/v2/mine/blobs/uploads/{started}").status == 204


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_malformed_digests_are_400_digest_invalid(registry, client, digest):
    before = client.stats()
    payload = os.urandom(200_000)
    started = registry.request("POST", "/v2/d/blobs/uploads/").headers["Location"]
    for method, path, body in (
        ("GET", f"/v2/d/blobs/{digest}", None),
        ("HEAD", f"/v2/d/blobs/{digest}", None),
        ("POST", f"/v2/d/blobs/uploads/?digest={digest}", payload),
        ("POST", f"/v2/d/blobs/uploads/?mount={digest}&from=other", None),
        ("PUT", f"{started}?digest={digest}", payload),
        ("GET", f"/v2/d/manifests/{digest}", None),
        ("PUT", f"/v2/d/manifests/{digest}", b"{}"),
    ):
        response = registry.request(method, path, body)
        assert response.status == 400, (method, path)
        if method != "HEAD":
            assert response.error_codes == ["DIGEST_INVALID"], (method, path)
            assert "digest" in response.json["errors"][0]["message"]
    after = client.stats()
    # Refused before a byte of the bodies was taken in.
    assert (after.blobs, after.bytes_in, after.logical_bytes) == (before.blobs, before.bytes_in, before.logical_bytes)
    assert registry.request("GET", started).headers["Range"] == "0-0"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_repository_names_outside_the_grammar(registry, name):
    for method, path in (
        ("GET", f"/v2/{name}/blobs/{sha256(b'x')}"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("GET", f"/v2/{name}/tags/list"),
        ("POST", f"/v2/ok/blobs/uploads/?mount={sha256(b'x')}&from={name}"),
    ):
        response = registry.request(method, path, b"{}" if method == "PUT" else None)
        assert response.status == 400, (method, path)
        assert response.error_codes == ["NAME_INVALID"], (method, path)


def test_manifest_referencing_a_missing_blob(registry, client):
    present = registry.push_blob("m", b"present layer")
    config = registry.push_blob("m", b"{}")
    missing = {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(b"never pushed"), "size": 12}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [present, missing]}).encode()
    before = stored(client)
    refused = registry.put_manifest("m", "v1", manifest)
    assert refused.status == 400 and refused.error_codes == ["MANIFEST_BLOB_UNKNOWN"]
    assert sha256(b"never pushed") in refused.json["errors"][0]["message"]
    assert stored(client) == before  # neither the manifest blob nor a record
    assert registry.request("GET", "/v2/m/manifests/v1").status == 404
    # An index naming a child manifest nobody pushed: the same.
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}]}
    ).encode()
    child_missing = registry.put_manifest("m", "v1", index, "application/vnd.oci.image.index.v1+json")
    assert child_missing.status == 400 and child_missing.error_codes == ["MANIFEST_BLOB_UNKNOWN"]


def test_manifest_over_the_size_limit_is_413(registry, client):
    before = stored(client)
    huge = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "padding": "x" * (4 << 20)}).encode()
    declared = registry.put_manifest("big", "v1", huge)
    assert declared.status == 413
    # Without Content-Length (chunked), the limit holds while reading.
    conn = registry.connection()
    pieces = (huge[i : i + 65536] for i in range(0, len(huge), 65536))
    streamed = exchange(conn, "PUT", "/v2/big/manifests/v1", pieces, {"Content-Type": OCI_MANIFEST})
    conn.close()
    assert streamed.status == 413
    assert stored(client) == before


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"{not json", OCI_MANIFEST, "JSON"),
        (b"[1, 2]", OCI_MANIFEST, "object"),
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', "application/vnd.docker.distribution.manifest.v1+json", "schemaVersion"),
        (b'{"schemaVersion": 1}', OCI_MANIFEST, "schemaVersion"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}', OCI_MANIFEST, "differs"),
        (b'{"schemaVersion": 2, "config": {"digest": "sha256:x", "size": 1}, "layers": []}', OCI_MANIFEST, "config"),
        (b'{"schemaVersion": 2, "config": {"digest": "' + sha256(b"").encode() + b'", "size": -1}, "layers": []}', OCI_MANIFEST, "size"),
        (b'{"schemaVersion": 2, "config": {"digest": "' + sha256(b"").encode() + b'", "size": 0}, "layers": {}}', OCI_MANIFEST, "layers"),
        (b'{"schemaVersion": 2, "manifests": []}', OCI_MANIFEST, "fit"),
        (b'{"schemaVersion": 2}', "text/plain", "media type"),
    ],
)
def test_malformed_manifests_are_manifest_invalid(registry, client, body, content_type, says):
    before = stored(client)
    refused = registry.put_manifest("bad", "v1", body, content_type)
    assert refused.status == 400, refused.body
    assert refused.error_codes == ["MANIFEST_INVALID"]
    assert says in refused.json["errors"][0]["message"]
    assert stored(client) == before


def test_manifest_whose_descriptor_size_is_wrong(registry):
    config = registry.push_blob("sizes", b"{}")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config | {"size": 3}, "layers": []}).encode()
    refused = registry.put_manifest("sizes", "v1", manifest)
    assert refused.status == 400 and refused.error_codes == ["MANIFEST_INVALID"]
    assert "3 bytes" in refused.json["errors"][0]["message"]


def test_manifest_pushed_by_a_digest_it_does_not_have(registry):
    manifest = registry.image_manifest("bydigest", [b"l"])
    refused = registry.put_manifest("bydigest", sha256(manifest + b" "), manifest)
    assert refused.status == 400 and refused.error_codes == ["DIGEST_INVALID"]


def test_invalid_tags(registry):
    manifest = registry.image_manifest("tags", [b"l"])
    for tag in ("-lead", ".dot", "t" * 129, "sp%20ace", "a%2Fb"):
        refused = registry.put_manifest("tags", tag, manifest)
        assert refused.status == 400 and refused.error_codes == ["MANIFEST_INVALID"], tag
        assert "tag" in refused.json["errors"][0]["message"]
        assert registry.request("GET", f"/v2/tags/manifests/{tag}").status == 400


def test_tags_list_with_a_bad_n_or_last(registry):
    registry.put_manifest("n", "v1", registry.image_manifest("n", [b"l"]))
    for n in ("-1", "abc", "1.5"):
        assert registry.request("GET", f"/v2/n/tags/list?n={n}").status == 400
    for last in ("x" * 1000, "%C3%A9t%C3%A9", "-lead"):
        refused = registry.request("GET", f"/v2/n/tags/list?last={last}")
        assert refused.status == 400 and "last" in refused.json["errors"][0]["message"]


def test_unknown_endpoints_and_unsupported_methods(registry):
    digest = registry.push_blob("ep", b"blob")["digest"]
    assert registry.request("GET", "/v3/").status == 404
    assert registry.request("GET", "/v2/ep/referrers/" + digest).status == 404  # no referrers API: clients fall back
    assert registry.request("GET", "/v2/ep/whatever").status == 404
    refused = registry.request("DELETE", f"/v2/ep/blobs/{digest}")
    assert refused.status == 405 and refused.error_codes == ["UNSUPPORTED"]
    assert registry.request("PATCH", "/v2/ep/manifests/v1", b"x").status == 405
    assert registry.request("GET", f"/v2/ep/blobs/{digest}").body == b"blob"


def test_unknown_blob_and_manifest(registry):
    assert registry.request("GET", f"/v2/x/blobs/{sha256(b'nope')}").error_codes == ["BLOB_UNKNOWN"]
    assert registry.request("HEAD", f"/v2/x/blobs/{sha256(b'nope')}").status == 404
    assert registry.request("GET", "/v2/x/manifests/latest").error_codes == ["MANIFEST_UNKNOWN"]


def test_a_body_that_breaks_off_leaves_nothing(registry, client):
    before = stored(client)
    data = os.urandom(1 << 20)
    with socket.create_connection((registry.host, registry.port)) as sock:
        head = f"POST /v2/cut/blobs/uploads/?digest={sha256(data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        sock.sendall(head.encode() + data[:300_000])
    assert registry.request("GET", "/v2/").status == 200  # still serving
    assert stored(client) == before
    assert client.find_missing([sha256(data)]) == [sha256(data)]


def test_malformed_input_never_reaches_the_store(tmp_path):
    store = RecordingStore(StoreConfig(data_dir=tmp_path / "data"))
    server = RegistryServer(HttpConfig(listen="127.0.0.1:0"), store, InstructionCache(store))
    server.start()
    try:
        registry = Registry(f"127.0.0.1:{server.port}")
        started = registry.request("POST", "/v2/d/blobs/uploads/").headers["Location"]
        store.calls.clear()
        for digest in BAD_DIGESTS:
            registry.request("GET", f"/v2/d/blobs/{digest}")
            registry.request("POST", f"/v2/d/blobs/uploads/?digest={digest}", b"data")
            registry.request("PUT", f"{started}?digest={digest}", b"data")
        for name in BAD_NAMES:
            registry.request("GET", f"/v2/{name}/blobs/{sha256(b'x')}")
            registry.request("POST", f"/v2/{name}/blobs/uploads/?digest={sha256(b'x')}", b"x")
        assert store.calls == []
    finally:
        server.stop(grace=1)
        store.close()
