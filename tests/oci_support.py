"""Helpers for the OCI endpoint tests: a plain http.client registry client.

Deliberately small and literal, so each test shows the exact requests it
sends; it follows redirects and auth flows not at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterable
from dataclasses import dataclass

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def error_codes(self) -> list[str]:
        return [e["code"] for e in json.loads(self.body)["errors"]]

    @property
    def json(self) -> object:
        return json.loads(self.body)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A request on `conn`, left open for the next; an iterable body is sent
    with chunked transfer coding, as Go clients send streamed bodies."""
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=not isinstance(body, (bytes, type(None))))
    response = conn.getresponse()
    return Response(response.status, response.headers, response.read())


class Registry:
    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        """One request on a connection of its own."""
        conn = self.connection()
        try:
            return exchange(conn, method, path, body, headers)
        finally:
            conn.close()

    def push_blob(self, repo: str, data: bytes) -> dict[str, object]:
        """Monolithic POST; returns the blob's descriptor."""
        digest = sha256(data)
        response = self.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data, {"Content-Type": "application/octet-stream"})
        assert response.status == 201, response.body
        return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}

    def image_manifest(self, repo: str, layers: list[bytes], config: bytes = b"{}") -> bytes:
        """Pushes a config and layers; returns the manifest naming them."""
        config_descriptor = self.push_blob(repo, config) | {"mediaType": OCI_CONFIG}
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [self.push_blob(repo, layer) for layer in layers],
        }
        return json.dumps(manifest).encode()

    def put_manifest(self, repo: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> Response:
        return self.request("PUT", f"/v2/{repo}/manifests/{reference}", manifest, {"Content-Type": media_type})
