"""The OCI Distribution endpoint: registry clients and builders over the same store.

buildah, skopeo, oras (and kaniko, BuildKit) speak the OCI Distribution API;
serving it from the daemon lets them use layercache with no plugin. Blobs
are the store's blobs (pushed over HTTP or gRPC alike, deduplicated across
both); a tag is an instruction-cache entry, so a builder's cache lookup by
tag is counted like any other. Modules, one concept each:

    server.py      RegistryServer: threaded stdlib HTTP server and its lifecycle
    routes.py      the request handler: routes, parsing, responses
    access.py      what a request needs allowed: the authorization seam
    bodies.py      request bodies as streams (Content-Length or chunked)
    uploads.py     upload sessions holding a BlobWriter across requests
    manifests.py   manifest validation, manifests as blobs, tags as cache entries
    reference.py   tag grammar; tag-or-digest references
    errors.py      the endpoint's exceptions and the table of OCI error codes
"""

from cached.oci.server import RegistryServer

__all__ = ["RegistryServer"]
