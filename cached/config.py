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
    max_message_bytes = 67108864   # gRPC send/receive limit (FindMissing of 100k digests fits)
    workers = 64                   # gRPC handler threads

    [http]                         # the OCI Distribution endpoint
    listen = "127.0.0.1:5000"      # HOST:PORT, or "off"
    upload_expiry_seconds = 900    # an upload session idle this long is aborted, its space freed
    max_manifest_bytes = 4194304   # larger manifests are refused with 413
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
DEFAULT_HTTP_LISTEN = "127.0.0.1:5000"
HTTP_OFF = "off"


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
    workers: int = 64

    def __post_init__(self) -> None:
        _check_address(self.listen)
        if self.max_message_bytes < 1024 * 1024:
            raise ConfigError("server.max_message_bytes must be at least 1 MiB")
        if self.workers < 2:
            raise ConfigError("server.workers must be at least 2")


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


def load(
    path: Path | None = None, *, listen: str | None = None, data_dir: Path | None = None, http_listen: str | None = None
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
    unknown = set(raw) - {"store", "server", "http"}
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    store = _build(StoreConfig, store_raw, "store")
    server = _build(ServerConfig, server_raw, "server")
    http = _build(HttpConfig, http_raw, "http")
    if data_dir is not None:
        store = replace(store, data_dir=Path(data_dir))
    if listen is not None:
        server = replace(server, listen=listen)
    if http_listen is not None:
        http = replace(http, listen=http_listen)
    return Config(store=store, server=server, http=http)


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
        if expected == "Path":
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
