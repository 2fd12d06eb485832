"""Digest: the validated value type for blob digests, plus hashing helpers.

Every digest that enters the daemon is parsed here exactly once, at the edge.
Only canonical OCI-style strings are accepted ("sha256:" or "blake3:" followed
by 64 lowercase hex digits), so a Digest can be used as an index key or logged
without further checks, and no path or key is ever built from raw input.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Protocol

import blake3

from cached.errors import InvalidDigest


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


_HASHERS: dict[str, Callable[[], Hasher]] = {
    "sha256": hashlib.sha256,
    # max_threads stays 1: the daemon already hashes many uploads in parallel.
    "blake3": blake3.blake3,
}
ALGORITHMS = tuple(_HASHERS)
_CANONICAL = re.compile(r"(sha256|blake3):([0-9a-f]{64})")
_MAX_SHOWN = 100


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str):
            raise InvalidDigest(f"digest must be a string, got {type(text).__name__}")
        match = _CANONICAL.fullmatch(text)
        if match is None:
            raise InvalidDigest(f"invalid digest {_shown(text)}: {_why_invalid(text)}")
        return cls(match.group(1), match.group(2))

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Digest:
        hasher = new_hasher(algorithm)
        hasher.update(data)
        return cls(algorithm, hasher.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def key(self) -> bytes:
        """The index key: the canonical string as ASCII."""
        return str(self).encode("ascii")

    @property
    def is_empty_blob(self) -> bool:
        return self == EMPTY_DIGESTS[self.algorithm]

    def new_hasher(self) -> Hasher:
        return new_hasher(self.algorithm)


def new_hasher(algorithm: str) -> Hasher:
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise InvalidDigest(f"unknown digest algorithm {algorithm!r}") from None


def _shown(text: str) -> str:
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...")


def _why_invalid(text: str) -> str:
    if not text:
        return "empty"
    algorithm, sep, hexpart = text.partition(":")
    if not sep:
        return "expected ALGORITHM:HEX"
    if algorithm not in _HASHERS:
        return f"unknown algorithm {algorithm[:_MAX_SHOWN]!r} (supported: {', '.join(ALGORITHMS)})"
    if len(hexpart) != 64:
        return f"expected 64 hex digits, got {len(hexpart)}"
    if hexpart.lower() != hexpart:
        return "hex digits must be lowercase"
    return "hex part contains non-hex characters"


EMPTY_DIGESTS = {name: Digest(name, new_hasher(name).hexdigest()) for name in ALGORITHMS}
