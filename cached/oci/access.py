"""What a request needs to be allowed: the one seam for authorization.

Every request is reduced to the accesses it needs (pull, push or delete on a
repository; none for the base endpoint, which still has to be allowed, as
token schemes answer 401 there) and handed once, before any work, to the
registry's `authorize` callable. It returns to allow and raises
Unauthenticated or PermissionDenied to refuse; an exception may carry a
`headers` dict (e.g. WWW-Authenticate) that the error response then sends.
The daemon allows everything until an authorizer is configured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message

from cached.store import Visible

PULL = "pull"
PUSH = "push"
DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Access:
    repository: str
    action: str


# Returns what the caller may see of the blobs (a predicate over the
# namespaces holding a blob, see cached/auth.py), or None for everything.
Authorize = Callable[[Message, Sequence[Access]], Visible | None]


def allow_all(headers: Message, accesses: Sequence[Access]) -> None:
    """The authorizer of a daemon without access control."""
