"""TLS for the daemon's listeners, from the certificate and key files in [server].

One set of files serves gRPC, the OCI endpoint and the metrics endpoint. With
`tls_client_ca` set, clients must present a certificate signed by that CA
(mutual TLS): a transport gate in front of, not instead of, bearer tokens.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from cached.config import ConfigError, ServerConfig


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc}") from None


def grpc_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """Server credentials for gRPC, or None for plaintext."""
    if not config.tls:
        return None
    key, cert = _read(config.tls_key, "key"), _read(config.tls_cert, "certificate")
    client_ca = _read(config.tls_client_ca, "client CA")
    assert key is not None and cert is not None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """A server-side context for the HTTP listeners, or None for plaintext."""
    if not config.tls:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
        if config.tls_client_ca is not None:
            context.load_verify_locations(str(config.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate and key: {exc}") from None
    return context
