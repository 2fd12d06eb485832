"""Manifest references: a tag or a digest, told apart and validated once.

Repository names already follow the OCI grammar (cached/names.py) because a
repository is an instruction-cache namespace. Tags are instruction-cache keys,
which the cache only requires to be printable; here they must also match the
spec's tag grammar, so a tag can never be mistaken for a digest (tags have no
':'), and the keys this endpoint records for manifests by digest (the digest
string itself) never show up as tags.
"""

from __future__ import annotations

import re

from cached.digest import Digest
from cached.oci.errors import TagInvalid

_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def is_tag(text: str) -> bool:
    return _TAG.fullmatch(text) is not None


def check_tag(text: str) -> str:
    if not is_tag(text):
        raise TagInvalid(
            f"invalid tag {text[:140]!r}: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return text


def parse_reference(text: str) -> str | Digest:
    """A digest if the reference has the digest form ALGORITHM:HEX, else a tag."""
    if ":" in text:
        return Digest.parse(text)
    return check_tag(text)
