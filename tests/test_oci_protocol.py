"""The OCI Distribution endpoint of a real daemon process, good paths, with plain http.client.

Each test sends the literal requests a registry client sends and checks the
status, the headers the spec requires and the bytes that come back; the
last ones check that HTTP and gRPC share one store and one set of counters.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse

import pytest

from tests.oci_support import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, Registry, exchange, sha256


@pytest.fixture
def registry(daemon) -> Registry:
    return Registry(daemon.http_address)


def test_base_endpoint_says_registry_v2(registry):
    response = registry.request("GET", "/v2/")
    assert response.status == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_chunked_upload_with_status_then_put_with_the_last_chunk(registry):
    data = os.urandom(3 * 1024 * 1024 + 17)
    parts = [data[: 1 << 20], data[1 << 20 : 3 << 20], data[3 << 20 :]]
    started = registry.request("POST", "/v2/team/app/blobs/uploads/", b"")
    assert started.status == 202
    location = started.headers["Location"]
    upload_id = started.headers["Docker-Upload-UUID"]
    assert location == f"/v2/team/app/blobs/uploads/{upload_id}"
    assert started.headers["Range"] == "0-0"

    first = registry.request("PATCH", location, parts[0], {"Content-Range": f"0-{len(parts[0]) - 1}", "Content-Type": "application/octet-stream"})
    assert first.status == 202
    assert first.headers["Range"] == f"0-{len(parts[0]) - 1}"
    status = registry.request("GET", first.headers["Location"])
    assert status.status == 204
    assert status.headers["Range"] == f"0-{len(parts[0]) - 1}"
    assert status.headers["Docker-Upload-UUID"] == upload_id
    end = len(parts[0]) + len(parts[1])
    second = registry.request("PATCH", location, parts[1], {"Content-Range": f"{len(parts[0])}-{end - 1}"})
    assert second.status == 202 and second.headers["Range"] == f"0-{end - 1}"

    digest = sha256(data)
    done = registry.request("PUT", f"{location}?digest={urllib.parse.quote(digest)}", parts[2], {"Content-Range": f"{end}-{len(data) - 1}"})
    assert done.status == 201, done.body
    assert done.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert done.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", done.headers["Location"]).body == data
    head = registry.request("HEAD", f"/v2/team/app/blobs/{digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(data) and head.body == b""
    assert head.headers["Docker-Content-Digest"] == digest
    # Finished: the session is gone.
    assert registry.request("GET", location).status == 404


def test_streamed_patch_with_chunked_transfer_coding_like_go_clients(registry):
    data = os.urandom(2 * 1024 * 1024 + 5)
    location = registry.request("POST", "/v2/stream/blobs/uploads/").headers["Location"]
    conn = registry.connection()
    pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
    response = exchange(conn, "PATCH", location, pieces)
    assert response.status == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    # The connection stays usable: the chunked body was read to its end.
    done = exchange(conn, "PUT", f"{location}?digest={sha256(data)}", b"")
    conn.close()
    assert done.status == 201
    assert registry.request("GET", f"/v2/stream/blobs/{sha256(data)}").body == data


def test_an_upload_resumes_after_a_patch_broke_off(registry):
    data = os.urandom(1_500_000)
    location = registry.request("POST", "/v2/resume/blobs/uploads/").headers["Location"]
    # Announce the whole blob, send 600 kB, hang up.
    with socket.create_connection((registry.host, registry.port)) as sock:
        head = f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        sock.sendall(head + data[:600_000])
    # The daemon may still be taking in the tail when the status is asked.
    deadline = time.monotonic() + 10
    status = registry.request("GET", location)
    while status.headers["Range"] != "0-599999" and time.monotonic() < deadline:
        status = registry.request("GET", location)
    assert status.status == 204
    assert status.headers["Range"] == "0-599999"
    rest = registry.request("PATCH", location, data[600_000:], {"Content-Range": f"600000-{len(data) - 1}"})
    assert rest.status == 202
    assert registry.request("PUT", f"{location}?digest={sha256(data)}").status == 201
    assert registry.request("GET", f"/v2/resume/blobs/{sha256(data)}").body == data


def test_range_requests_on_blobs(registry):
    data = bytes(range(256)) * 40
    digest = registry.push_blob("ranges", data)["digest"]
    path = f"/v2/ranges/blobs/{digest}"
    middle = registry.request("GET", path, headers={"Range": "bytes=100-199"})
    assert middle.status == 206 and middle.body == data[100:200]
    assert middle.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert registry.request("GET", path, headers={"Range": "bytes=10000-"}).body == data[10000:]
    assert registry.request("GET", path, headers={"Range": "bytes=-7"}).body == data[-7:]
    # An end past the blob is cut to it.
    assert registry.request("GET", path, headers={"Range": "bytes=10230-99999"}).body == data[10230:]
    outside = registry.request("GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert outside.status == 416 and outside.headers["Content-Range"] == f"bytes */{len(data)}"
    # Several ranges are not served as multipart: the whole blob comes back.
    whole = registry.request("GET", path, headers={"Range": "bytes=0-1,5-6"})
    assert whole.status == 200 and whole.body == data


def test_cross_repository_mount(registry):
    digest = registry.push_blob("origin", b"shared layer bytes")["digest"]
    mounted = registry.request("POST", f"/v2/elsewhere/blobs/uploads/?mount={digest}&from=origin")
    assert mounted.status == 201
    assert mounted.headers["Location"] == f"/v2/elsewhere/blobs/{digest}"
    assert mounted.headers["Docker-Content-Digest"] == digest
    # Not here to mount: the answer is an upload session instead.
    absent = sha256(b"never pushed")
    fallback = registry.request("POST", f"/v2/elsewhere/blobs/uploads/?mount={absent}&from=origin")
    assert fallback.status == 202
    assert fallback.headers["Location"].startswith("/v2/elsewhere/blobs/uploads/")
    assert registry.request("GET", fallback.headers["Location"]).status == 204


def test_manifest_by_tag_and_by_digest(registry):
    manifest = registry.image_manifest("shop/web", [b"layer one", b"layer two"])
    digest = sha256(manifest)
    put = registry.put_manifest("shop/web", "v1", manifest)
    assert put.status == 201, put.body
    assert put.headers["Docker-Content-Digest"] == digest
    assert put.headers["Location"] == f"/v2/shop/web/manifests/{digest}"
    for reference in ("v1", digest):
        got = registry.request("GET", f"/v2/shop/web/manifests/{reference}")
        assert got.status == 200
        assert got.body == manifest  # byte for byte as pushed
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = registry.request("HEAD", f"/v2/shop/web/manifests/{reference}")
        assert head.status == 200 and int(head.headers["Content-Length"]) == len(manifest) and head.body == b""
    # Manifests belong to the repository they were pushed to.
    assert registry.request("GET", f"/v2/shop/other/manifests/{digest}").error_codes == ["MANIFEST_UNKNOWN"]
    # Pushed by digest: no tag, fetchable by digest.
    untagged = registry.image_manifest("shop/web", [b"layer three"])
    assert registry.put_manifest("shop/web", sha256(untagged), untagged).status == 201
    assert registry.request("GET", f"/v2/shop/web/manifests/{sha256(untagged)}").body == untagged
    assert registry.request("GET", "/v2/shop/web/tags/list").json["tags"] == ["v1"]


def test_docker_manifest_and_an_index_keep_their_media_types(registry):
    layer = registry.push_blob("multi", b"docker layer")
    config = registry.push_blob("multi", b'{"architecture":"amd64"}')
    docker = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config | {"mediaType": "application/vnd.docker.container.image.v1+json"},
            "layers": [layer | {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}],
        }
    ).encode()
    assert registry.put_manifest("multi", sha256(docker), docker, DOCKER_MANIFEST).status == 201
    oci = registry.image_manifest("multi", [b"oci layer"])
    assert registry.put_manifest("multi", sha256(oci), oci).status == 201
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": sha256(docker), "size": len(docker), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": sha256(oci), "size": len(oci), "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }
    ).encode()
    assert registry.put_manifest("multi", "latest", index, OCI_INDEX).status == 201
    got = registry.request("GET", "/v2/multi/manifests/latest")
    assert got.headers["Content-Type"] == OCI_INDEX and got.body == index
    child = registry.request("GET", f"/v2/multi/manifests/{sha256(docker)}")
    assert child.headers["Content-Type"] == DOCKER_MANIFEST and child.body == docker


def test_tags_list_pages_with_n_last_and_link(registry):
    manifest = registry.image_manifest("paged", [b"x"])
    tags = ["a", "B", "c1", "c10", "c2", "latest"]
    for tag in tags:
        assert registry.put_manifest("paged", tag, manifest).status == 201
    everything = registry.request("GET", "/v2/paged/tags/list")
    assert everything.json == {"name": "paged", "tags": sorted(tags)}  # ASCII order, as Go's sort.Strings
    assert "Link" not in everything.headers
    seen = []
    path = "/v2/paged/tags/list?n=4"
    while True:
        page = registry.request("GET", path)
        assert page.status == 200 and len(page.json["tags"]) <= 4
        seen += page.json["tags"]
        if "Link" not in page.headers:
            break
        link = page.headers["Link"]
        assert link.endswith('>; rel="next"')
        path = link[1 : link.index(">")]
    assert seen == sorted(tags)
    assert registry.request("GET", "/v2/paged/tags/list?n=2&last=c1").json["tags"] == ["c10", "c2"]
    assert registry.request("GET", "/v2/paged/tags/list?last=c2").json["tags"] == ["latest"]
    empty = registry.request("GET", "/v2/paged/tags/list?n=0")
    assert empty.json["tags"] == [] and "Link" not in empty.headers
    unknown = registry.request("GET", "/v2/never/pushed/tags/list")
    assert unknown.status == 404 and unknown.error_codes == ["NAME_UNKNOWN"]


def test_delete_a_tag_then_the_manifest(registry):
    manifest = registry.image_manifest("gone", [b"bytes"])
    digest = sha256(manifest)
    for tag in ("one", "two"):
        registry.put_manifest("gone", tag, manifest)
    assert registry.request("DELETE", "/v2/gone/manifests/one").status == 202
    assert registry.request("GET", "/v2/gone/manifests/one").error_codes == ["MANIFEST_UNKNOWN"]
    assert registry.request("GET", "/v2/gone/manifests/two").status == 200
    assert registry.request("DELETE", f"/v2/gone/manifests/{digest}").status == 202
    for reference in ("two", digest):
        assert registry.request("GET", f"/v2/gone/manifests/{reference}").status == 404
    assert registry.request("DELETE", f"/v2/gone/manifests/{digest}").error_codes == ["MANIFEST_UNKNOWN"]
    assert registry.request("DELETE", "/v2/gone/manifests/one").error_codes == ["MANIFEST_UNKNOWN"]


def test_cancel_an_upload(registry, client):
    location = registry.request("POST", "/v2/cancel/blobs/uploads/").headers["Location"]
    data = os.urandom(100_000)
    registry.request("PATCH", location, data)
    assert registry.request("DELETE", location).status == 204
    assert registry.request("GET", location).error_codes == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.find_missing([sha256(data)]) == [sha256(data)]


def test_http_and_grpc_share_blobs_and_counters(daemon, registry, client):
    over_grpc = client.put(b"pushed over gRPC", namespace="shared")
    head = registry.request("HEAD", f"/v2/shared/blobs/{over_grpc.digest}")
    assert head.status == 200
    over_http = registry.push_blob("shared", b"pushed over HTTP")["digest"]
    assert client.stat(over_http).descriptor.size == len(b"pushed over HTTP")
    before = client.stats()
    # The same bytes again over HTTP are the same blob.
    registry.push_blob("shared", b"pushed over gRPC")
    assert client.stats().blobs == before.blobs

    manifest = registry.image_manifest("shared", [b"pushed over gRPC", b"pushed over HTTP"])
    registry.put_manifest("shared", "step-1", manifest)
    before = client.stats()
    assert registry.request("GET", "/v2/shared/manifests/step-1").status == 200
    assert registry.request("GET", "/v2/shared/manifests/step-2").status == 404
    registry.request("HEAD", "/v2/shared/manifests/step-1")  # not a lookup
    registry.request("GET", f"/v2/shared/manifests/{sha256(manifest)}")  # nor is a digest
    after = client.stats()
    assert (after.lookups - before.lookups, after.hits - before.hits, after.misses - before.misses) == (2, 1, 1)
    # The tag is an instruction-cache entry like any other.
    result = client.lookup("shared", ["step-1"])
    assert [d.digest for d in result.hits[0].layers][:1] == [sha256(manifest)]
    assert sha256(b"pushed over HTTP") in [d.digest for d in result.hits[0].layers]


def test_tags_and_manifests_survive_a_restart(daemon):
    registry = Registry(daemon.http_address)
    manifest = registry.image_manifest("durable", [b"kept"])
    registry.put_manifest("durable", "v1", manifest)
    daemon.restart()
    registry = Registry(daemon.http_address)
    assert registry.request("GET", "/v2/durable/manifests/v1").body == manifest
    assert registry.request("GET", "/v2/durable/tags/list").json["tags"] == ["v1"]
    assert registry.request("GET", f"/v2/durable/blobs/{sha256(b'kept')}").body == b"kept"


def test_the_endpoint_can_be_turned_off(daemon_factory):
    off = daemon_factory(["--http-listen", "off"])
    assert off.http_address == ""
    assert not any("OCI distribution" in line for line in off.lines)
