"""Daemon configuration: frozen dataclasses loaded from TOML plus CLI flags.

Validated once when loaded; everything downstream trusts it. The TOML file
has optional tables mirroring the dataclasses:

    listen = "127.0.0.1:50051"
    data_dir = "/var/lib/layercache"

    [store]
    compression_level = 1          # zstd level; 0 stores chunks raw
    max_blob_size = 1099511627776  # bytes; advertised through Capabilities
    index_map_size = 68719476736   # LMDB map size (virtual; grows the file lazily)
    max_pack_bytes = 1073741824    # a pack file is closed once it reaches this
    max_bytes = 0                  # bound on stored (live, compressed) bytes; 0 = unbounded
    low_watermark = 0.9            # background eviction keeps stored bytes below this fraction
    compact_dead_fraction = 0.5    # a closed pack this dead is rewritten; bounds disk use to
                                   # about max_bytes / (1 - compact_dead_fraction)

    [server]
    max_message_bytes = 16777216   # gRPC send/receive limit (FindMissing of 100k digests, ~8 MB, fits)
    workers = 256                  # gRPC handler threads: one per call in flight, idle streams included
    tls_cert = "/etc/layercache/server.pem"   # PEM certificate chain; with tls_key: TLS on
    tls_key = "/etc/layercache/server.key"    # gRPC, the OCI endpoint and the metrics endpoint
    tls_client_ca = "/etc/layercache/ca.pem"  # optional: require client certificates from this CA
    metrics_listen = "127.0.0.1:9464"         # Prometheus /metrics over HTTP; "" = off
    log_format = "text"                       # or "json": one object per line, with request_id
    shutdown_grace_seconds = 10.0             # SIGTERM: in-flight calls get this long to finish

    [http]                         # the OCI Distribution endpoint
    listen = "127.0.0.1:5000"      # HOST:PORT, or "off"
    upload_expiry_seconds = 900    # an upload session idle this long is aborted, its space freed
    max_manifest_bytes = 4194304   # larger manifests are refused with 413

    [auth]                         # off (everything allowed) until a token is configured
    tokens_file = "tokens.toml"    # optional; [[tokens]] tables, relative to this file
    anonymous_read = ["public/*"]  # namespaces callers without a token may read; default none
    [[auth.tokens]]
    name = "team-a-ci"             # shown in logs and errors, never the token itself
    sha256 = "<hex>"               # sha256 of the token (or token = "<at least 16 chars>")
    roles = { "team-a/*" = "write", "shared/*" = "read" }   # glob -> read | write | admin

    [read_fallback]                # a namespace also reads the instruction cache
    "team-a/*" = ["team-a/main"]   # and blobs of these (a branch reads main)

Globs are fnmatch patterns; "*" also matches "/". Admin RPCs (Stats, Verify)
need the admin role on the pattern "*".
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
DEFAULT_HTTP_LISTEN = "127.0.0.1:5000"
HTTP_OFF = "off"
ROLES = ("read", "write", "admin")  # each includes the ones before it
MIN_TOKEN_CHARS = 16
LOG_FORMATS = ("text", "json")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "layercache"


class ConfigError(ValueError):
    """The configuration file or a flag holds an unusable value."""


@dataclass(frozen=True)
class StoreConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    compression_level: int = 1
    max_blob_size: int = 1 << 40
    index_map_size: int = 64 << 30
    max_pack_bytes: int = 1 << 30
    max_bytes: int = 0
    low_watermark: float = 0.9
    compact_dead_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not -5 <= self.compression_level <= 19:
            raise ConfigError("store.compression_level must be between -5 and 19")
        for name in ("max_blob_size", "index_map_size", "max_pack_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"store.{name} must be positive")
        if self.max_bytes < 0:
            raise ConfigError("store.max_bytes must not be negative (0 means unbounded)")
        if not 0.0 < self.low_watermark <= 1.0:
            raise ConfigError("store.low_watermark must be within (0, 1]")
        if not 0.0 < self.compact_dead_fraction < 1.0:
            raise ConfigError("store.compact_dead_fraction must be within (0, 1)")


@dataclass(frozen=True)
class ServerConfig:
    listen: str = DEFAULT_LISTEN
    max_message_bytes: int = DEFAULT_MAX_MESSAGE
    # grpcio's sync server runs each call, streams included, on a thread of
    # its own until it ends: a fleet's slow uploaders must not exhaust them.
    workers: int = 256
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_listen: str = ""
    log_format: str = "text"
    shutdown_grace_seconds: float = 10.0

    def __post_init__(self) -> None:
        _check_address(self.listen)
        if self.max_message_bytes < 1024 * 1024:
            raise ConfigError("server.max_message_bytes must be at least 1 MiB")
        if self.workers < 2:
            raise ConfigError("server.workers must be at least 2")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("server.tls_cert and server.tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("server.tls_client_ca needs server.tls_cert and server.tls_key")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"server.{name}: {path} is not a readable file")
        if self.metrics_listen:
            _check_address(self.metrics_listen)
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"server.log_format must be one of {', '.join(LOG_FORMATS)}")
        if self.shutdown_grace_seconds < 0:
            raise ConfigError("server.shutdown_grace_seconds must not be negative")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass(frozen=True)
class TokenConfig:
    name: str
    sha256: str  # hex digest of the bearer token; the token itself is not kept
    roles: tuple[tuple[str, str], ...]  # (namespace glob, role)


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[TokenConfig, ...] = ()
    anonymous_read: tuple[str, ...] = ()
    read_fallback: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (namespace glob, namespaces)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = DEFAULT_HTTP_LISTEN
    upload_expiry_seconds: int = 15 * 60
    max_manifest_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if self.listen != HTTP_OFF:
            _check_address(self.listen)
        if self.upload_expiry_seconds < 1:
            raise ConfigError("http.upload_expiry_seconds must be at least 1")
        if self.max_manifest_bytes < 4096:
            raise ConfigError("http.max_manifest_bytes must be at least 4096")

    @property
    def enabled(self) -> bool:
        return self.listen != HTTP_OFF


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address {address!r} is not HOST:PORT")


@dataclass(frozen=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


def load(
    path: Path | None = None,
    *,
    listen: str | None = None,
    data_dir: Path | None = None,
    http_listen: str | None = None,
    server_flags: dict[str, Any] | None = None,
) -> Config:
    """Reads the TOML file (if any), then applies flags, which win."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    store_raw = dict(_table(raw, "store"))
    server_raw = dict(_table(raw, "server"))
    http_raw = dict(_table(raw, "http"))
    if "data_dir" in raw:
        store_raw["data_dir"] = raw.pop("data_dir")
    if "listen" in raw:
        server_raw["listen"] = raw.pop("listen")
    auth_raw = _table(raw, "auth")
    fallback_raw = _table(raw, "read_fallback")
    unknown = set(raw) - {"store", "server", "http", "auth", "read_fallback"}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    store = _build(StoreConfig, store_raw, "store")
    server_raw.update({k: v for k, v in (server_flags or {}).items() if v is not None})
    server = _build(ServerConfig, server_raw, "server")
    auth = _auth(auth_raw, fallback_raw, Path(path).parent if path is not None else Path.cwd())
    http = _build(HttpConfig, http_raw, "http")
    if data_dir is not None:
        store = replace(store, data_dir=Path(data_dir))
    if listen is not None:
        server = replace(server, listen=listen)
    if http_listen is not None:
        http = replace(http, listen=http_listen)
    return Config(store=store, server=server, http=http, auth=auth)


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown keys in [{section}]: {', '.join(sorted(unknown))}")
    converted = {}
    for name, value in values.items():
        expected = known[name].type
        if expected in ("Path", "Path | None"):
            value = Path(os.path.expanduser(str(value)))
        elif expected == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{section}.{name} must be an integer")
        elif expected == "float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{section}.{name} must be a number")
            value = float(value)
        elif expected == "str" and not isinstance(value, str):
            raise ConfigError(f"{section}.{name} must be a string")
        converted[name] = value
    return cls(**converted)


def _auth(raw: dict[str, Any], fallback: dict[str, Any], base: Path) -> AuthConfig:
    unknown = set(raw) - {"tokens", "tokens_file", "anonymous_read"}
    if unknown:
        raise ConfigError(f"unknown keys in [auth]: {', '.join(sorted(unknown))}")
    entries = list(raw.get("tokens", []))
    if "tokens_file" in raw:
        tokens_file = base / os.path.expanduser(str(raw["tokens_file"]))
        try:
            entries += tomllib.loads(tokens_file.read_text()).get("tokens", [])
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read auth.tokens_file {tokens_file}: {exc}") from exc
    tokens = tuple(_token(entry, n) for n, entry in enumerate(entries))
    if len({t.sha256 for t in tokens}) != len(tokens):
        raise ConfigError("two auth tokens are the same")
    anonymous = raw.get("anonymous_read", [])
    if not isinstance(anonymous, list) or not all(isinstance(p, str) and p for p in anonymous):
        raise ConfigError("auth.anonymous_read must be a list of namespace globs")
    scopes = []
    for pattern, namespaces in fallback.items():
        if not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces):
            raise ConfigError(f"read_fallback.{pattern!r} must be a list of namespaces")
        scopes.append((pattern, tuple(namespaces)))
    return AuthConfig(tokens, tuple(anonymous), tuple(scopes))


def _token(entry: Any, position: int) -> TokenConfig:
    where = f"auth token #{position + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(entry) - {"name", "token", "sha256", "roles"}
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {', '.join(sorted(unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a name")
    if ("token" in entry) == ("sha256" in entry):
        raise ConfigError(f"auth token {name!r} needs exactly one of token and sha256")
    if "token" in entry:
        secret = entry["token"]
        if not isinstance(secret, str) or len(secret) < MIN_TOKEN_CHARS:
            raise ConfigError(f"auth token {name!r} must be a string of at least {MIN_TOKEN_CHARS} characters")
        digest = hashlib.sha256(secret.encode()).hexdigest()
    else:
        digest = str(entry["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"auth token {name!r}: sha256 must be 64 hex digits")
    roles = entry.get("roles")
    if not isinstance(roles, dict) or not roles:
        raise ConfigError(f"auth token {name!r} needs roles, a table of namespace glob = role")
    for pattern, role in roles.items():
        if role not in ROLES:
            raise ConfigError(f"auth token {name!r}: role {role!r} for {pattern!r} is not one of {', '.join(ROLES)}")
    return TokenConfig(name, digest, tuple(roles.items()))
