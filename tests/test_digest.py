"""Digest parsing: canonical OCI-style strings only."""

import hashlib

import pytest

from cached.digest import EMPTY_DIGESTS, Digest
from cached.errors import InvalidDigest

HEX = "ab" * 32


@pytest.mark.parametrize("algorithm", ["sha256", "blake3"])
def test_canonical_digest_round_trips(algorithm):
    digest = Digest.parse(f"{algorithm}:{HEX}")
    assert (digest.algorithm, digest.hex) == (algorithm, HEX)
    assert str(digest) == f"{algorithm}:{HEX}"
    assert digest.key == f"{algorithm}:{HEX}".encode()


@pytest.mark.parametrize(
    "text, reason",
    [
        ("sha256:" + HEX.upper(), "lowercase"),
        ("sha256:" + "a" * 63, "got 63"),
        ("sha256:" + "a" * 65, "got 65"),
        ("md5:" + HEX, "unknown algorithm"),
        ("SHA256:" + HEX, "unknown algorithm"),
        ("sha256:../../x", "got 7"),
        ("sha256:" + "g" * 64, "non-hex"),
        ("", "empty"),
        (HEX, "ALGORITHM:HEX"),
        ("sha256:" + HEX + "\n", "got 65"),
        (" sha256:" + HEX, "unknown algorithm"),
    ],
)
def test_malformed_digests_are_rejected_with_the_reason(text, reason):
    with pytest.raises(InvalidDigest, match=reason):
        Digest.parse(text)


def test_non_string_is_rejected():
    with pytest.raises(InvalidDigest, match="must be a string"):
        Digest.parse(b"sha256:" + HEX.encode())  # type: ignore[arg-type]


def test_of_hashes_content_and_knows_the_empty_blob():
    assert str(Digest.of(b"abc")) == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert Digest.of(b"").is_empty_blob
    assert Digest.of(b"", "blake3") == EMPTY_DIGESTS["blake3"]
    assert not Digest.of(b"x").is_empty_blob
    assert str(EMPTY_DIGESTS["sha256"]) == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
