"""Access control: bearer tokens, roles per namespace glob, and what a caller may see.

Transport-neutral: front ends hand over the value of the `authorization`
header (gRPC metadata or HTTP) and get a Principal, then ask it for the right
a step needs (`require`). Roles are ordered, read < write < admin, and a
token's role for a namespace is the highest of the patterns that match it.

Blob existence is no oracle across namespaces: the store keeps which
namespaces hold each blob, and `visibility` gives the store a predicate over
those holders. A caller sees a blob if it may read one of its holders, or if
a holder is a read-fallback scope of the namespace it asked in (a branch reads
main). Anything else is answered as absent, exactly like a missing blob.

Without tokens configured everything is allowed and every blob visible, as
before access control existed. With tokens, a call without one is
UNAUTHENTICATED unless `anonymous_read` names what such calls may read.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cached.config import ROLES, AuthConfig
from cached.errors import PermissionDenied, Unauthenticated
from cached.names import check_namespace
from cached.store import Visible

LEVELS = {name: level for level, name in enumerate(ROLES, start=1)}
READ, WRITE, ADMIN = LEVELS["read"], LEVELS["write"], LEVELS["admin"]
_VERBS = {READ: "read", WRITE: "write to", ADMIN: "administer"}
EVERYTHING = "*"
OCI_ACTIONS = {"pull": READ, "push": WRITE, "delete": WRITE}


class HeaderLookup(Protocol):
    def get(self, name: str) -> str | None: ...


class RepositoryAccess(Protocol):
    """What an OCI request needs: an action (pull, push, delete) on a repository."""

    repository: str
    action: str


@dataclass(frozen=True)
class Principal:
    """Who is calling and what they may do."""

    name: str
    roles: tuple[tuple[str, int], ...]  # (namespace glob, level)
    unrestricted: bool = False  # access control is off
    anonymous: bool = False  # no token: a refusal says a token is needed

    def level(self, namespace: str) -> int:
        if self.unrestricted:
            return ADMIN
        return max((level for pattern, level in self.roles if fnmatch.fnmatchcase(namespace, pattern)), default=0)

    def may(self, level: int, namespace: str) -> bool:
        return self.level(namespace) >= level

    def require(self, level: int, namespace: str) -> None:
        """Checks the right for a step; an empty namespace is refused for
        writes when access control is on, since it would name no owner."""
        if namespace:
            check_namespace(namespace)
        if self.unrestricted:
            return
        if not namespace and level > READ:
            raise self._refusal(f"{self.name} must name a namespace to {_VERBS[level]}")
        if namespace and not self.may(level, namespace):
            raise self._refusal(f"{self.name} may not {_VERBS[level]} namespace {namespace!r}")

    def require_admin(self) -> None:
        """Daemon-wide operations (Stats, Verify) need admin on every namespace."""
        if not self.unrestricted and not any(p == EVERYTHING and lvl >= ADMIN for p, lvl in self.roles):
            raise self._refusal(f"{self.name} is not an administrator of this cache (admin role on {EVERYTHING!r})")

    def _refusal(self, message: str) -> Exception:
        if self.anonymous:
            return Unauthenticated(f"{message}; this needs a bearer token")
        return PermissionDenied(message)


OPEN = Principal("anyone", (), unrestricted=True)


class Authorizer:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._by_hash = {
            bytes.fromhex(token.sha256): Principal(token.name, tuple((p, LEVELS[r]) for p, r in token.roles))
            for token in config.tokens
        }
        self._anonymous = (
            Principal("an anonymous caller", tuple((pattern, READ) for pattern in config.anonymous_read), anonymous=True)
            if config.anonymous_read
            else None
        )
        self._fallback = config.read_fallback

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an `authorization` header value (None if absent)."""
        if not self.enabled:
            return OPEN
        if not authorization:
            if self._anonymous is not None:
                return self._anonymous
            raise Unauthenticated("this cache needs a bearer token (authorization: Bearer <token>)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the authorization header must be 'Bearer <token>'")
        # Looked up by hash: the dictionary probe reveals nothing about a secret.
        principal = self._by_hash.get(hashlib.sha256(token.strip().encode()).digest())
        if principal is None:
            raise Unauthenticated("the bearer token is not one this cache knows")
        return principal

    def authorize_oci(self, headers: HeaderLookup, accesses: Sequence[RepositoryAccess]) -> Visible | None:
        """The one check of the OCI endpoint, per request and so per upload
        step (start, each chunk, finish, mount): every access must be allowed.
        pull needs read, push and delete need write. Returns what the caller
        may see of the blobs when asking in the request's repository (the
        first access). A refusal for lack of a token carries the
        WWW-Authenticate header clients expect with a 401."""
        try:
            principal = self.authenticate(headers.get("Authorization"))
            for access in accesses:
                principal.require(OCI_ACTIONS[access.action], access.repository)
        except Unauthenticated as exc:
            exc.headers = {"WWW-Authenticate": 'Bearer realm="layercache"'}  # type: ignore[attr-defined]
            raise
        return self.visibility(principal, accesses[0].repository if accesses else "")

    def read_scope(self, namespace: str) -> tuple[str, ...]:
        """`namespace` followed by the namespaces it falls back to for reads."""
        extra = [ns for pattern, targets in self._fallback if fnmatch.fnmatchcase(namespace, pattern) for ns in targets]
        return tuple(dict.fromkeys([namespace, *extra]))

    def visibility(self, principal: Principal, namespace: str) -> Visible | None:
        """A predicate over a blob's holder namespaces for a caller asking in
        `namespace`; None when everything is visible."""
        if principal.unrestricted:
            return None
        scope = frozenset(self.read_scope(namespace)[1:]) if namespace else frozenset()
        reads_everything = principal.may(READ, EVERYTHING)
        decided: dict[str, bool] = {}

        def visible(holders: Sequence[str]) -> bool:
            if not holders:  # stored before namespaces were given: only for readers of everything
                return reads_everything
            for holder in holders:
                seen = decided.get(holder)
                if seen is None:
                    seen = decided[holder] = holder in scope or principal.may(READ, holder)
                if seen:
                    return True
            return False

        return visible


OPEN_AUTH = Authorizer(AuthConfig())  # access control off: the default of servicers and tests
