"""Tokens, roles and namespaces against a real daemon process.

One daemon serves the whole module with tokens for two teams, a read-only
token, a branch token that falls back to main, and an admin; public/* is
readable without a token.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import grpc
import pytest

from cached.auth import ADMIN, READ, WRITE, Authorizer
from cached.config import ConfigError, load
from cached.errors import PermissionDenied, Unauthenticated
from client import Client, Descriptor
from client.errors import (
    FailedPreconditionError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from client.proto import layercache_pb2 as pb
from client.proto import layercache_pb2_grpc as pb_grpc
from tests.conftest import REPO, DaemonProcess
from tests.oci_support import Registry, sha256

TOKENS = {
    "team-a": "token-team-a-0123456789",
    "team-b": "token-team-b-0123456789",
    "reader": "token-reader-0123456789",
    "branch": "token-branch-0123456789",
    "admin": "token-admin-01234567890",
}
CONFIG = f"""
[auth]
anonymous_read = ["public/*"]

[[auth.tokens]]
name = "team-a"
token = "{TOKENS['team-a']}"
roles = {{ "team-a/*" = "write", "public/*" = "read" }}

[[auth.tokens]]
name = "team-b"
sha256 = "{hashlib.sha256(TOKENS['team-b'].encode()).hexdigest()}"
roles = {{ "team-b/*" = "write" }}

[[auth.tokens]]
name = "reader"
token = "{TOKENS['reader']}"
roles = {{ "team-a/*" = "read" }}

[[auth.tokens]]
name = "branch"
token = "{TOKENS['branch']}"
roles = {{ "team-a/feature-*" = "write" }}

[[auth.tokens]]
name = "admin"
token = "{TOKENS['admin']}"
roles = {{ "*" = "admin" }}

[read_fallback]
"team-a/feature-*" = ["team-a/main"]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    config = base / "layercache.toml"
    config.write_text(CONFIG)
    proc = DaemonProcess(base / "data", base, ["--config", str(config)]).start()
    yield proc
    proc.stop()


def connect(daemon: DaemonProcess, who: str | None) -> Client:
    return Client(daemon.address, token=TOKENS[who] if who else None, timeout=30)


@pytest.fixture(scope="module")
def b_only(daemon) -> Descriptor:
    """A blob that only team B holds."""
    with connect(daemon, "team-b") as b:
        blob = b.put(b"team b's secret layer " + os.urandom(64), namespace="team-b/app")
        b.record("team-b/app", "step-1", [blob])
    return blob


def raw_stubs(daemon: DaemonProcess):
    channel = grpc.insecure_channel(daemon.address)
    return channel, pb_grpc.BlobsStub(channel), pb_grpc.InstructionCacheStub(channel), pb_grpc.AdminStub(channel)


def every_call(blobs, cache, admin, metadata, namespace="team-a/app"):
    """One call of each RPC; Write carries a real header and a little data."""
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()
    header = pb.WriteHeader(digest=digest, size=1, namespace=namespace)
    return {
        "FindMissing": lambda: blobs.FindMissing(pb.FindMissingRequest(digests=[digest], namespace=namespace), metadata=metadata),
        "Stat": lambda: blobs.Stat(pb.StatRequest(digest=digest, namespace=namespace), metadata=metadata),
        "Read": lambda: list(blobs.Read(pb.ReadRequest(digest=digest, namespace=namespace), metadata=metadata)),
        "Write": lambda: blobs.Write(iter([pb.WriteRequest(header=header, data=b"x")]), metadata=metadata),
        "Record": lambda: cache.Record(pb.RecordRequest(namespace=namespace, key="k"), metadata=metadata),
        "Lookup": lambda: cache.Lookup(pb.LookupRequest(namespace=namespace, keys=["k"]), metadata=metadata),
        "ListEntries": lambda: cache.ListEntries(pb.ListEntriesRequest(namespace=namespace), metadata=metadata),
        "Stats": lambda: admin.Stats(pb.StatsRequest(), metadata=metadata),
        "Verify": lambda: admin.Verify(pb.VerifyRequest(sample_fraction=0.01), metadata=metadata),
        "Capabilities": lambda: admin.Capabilities(pb.CapabilitiesRequest(), metadata=metadata),
    }


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def closed_daemon(tmp_path_factory):
    """Tokens configured and no anonymous access at all."""
    base = tmp_path_factory.mktemp("closed")
    config = base / "layercache.toml"
    config.write_text(CONFIG.replace('anonymous_read = ["public/*"]', ""))
    proc = DaemonProcess(base / "data", base, ["--config", str(config)]).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer not-a-token-we-know"),), (("authorization", "Basic abc"),)])
def test_without_a_valid_token_every_call_is_unauthenticated(closed_daemon, metadata):
    channel, blobs, cache, admin = raw_stubs(closed_daemon)
    with channel:
        codes = {name: status_of(call) for name, call in every_call(blobs, cache, admin, metadata).items()}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.UNAUTHENTICATED)


def test_team_a_writing_into_team_b_is_denied_at_every_write_step(daemon, b_only):
    channel, blobs, cache, admin = raw_stubs(daemon)
    metadata = (("authorization", f"Bearer {TOKENS['team-a']}"),)
    with channel:
        calls = every_call(blobs, cache, admin, metadata, namespace="team-b/app")
        codes = {name: status_of(calls[name]) for name in ("Write", "Record", "FindMissing", "Stat", "Read", "Lookup", "ListEntries")}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.PERMISSION_DENIED)
    with connect(daemon, "team-a") as a:
        with pytest.raises(PermissionDeniedError, match="team-b/app"):
            a.put(b"into b", namespace="team-b/app")
        with pytest.raises(PermissionDeniedError, match="may not write"):
            a.record("team-b/app", "step-1", [b_only])
    with connect(daemon, "team-b") as b:  # nothing of A's attempts arrived
        assert b.lookup("team-b/app", ["step-1"]).hits[0].layers == (b_only,)


def test_a_read_token_is_refused_every_write_and_admin_call(daemon):
    channel, blobs, cache, admin = raw_stubs(daemon)
    metadata = (("authorization", f"Bearer {TOKENS['reader']}"),)
    with channel:
        calls = every_call(blobs, cache, admin, metadata)
        codes = {name: status_of(calls[name]) for name in ("Write", "Record", "Stats", "Verify")}
        reads = {name: status_of(calls[name]) for name in ("FindMissing", "Lookup", "ListEntries", "Capabilities")}
    assert codes == dict.fromkeys(codes, grpc.StatusCode.PERMISSION_DENIED)
    assert reads == dict.fromkeys(reads, grpc.StatusCode.OK)


def test_writes_must_name_a_namespace_when_tokens_are_on(daemon):
    with connect(daemon, "admin") as admin:
        with pytest.raises(PermissionDeniedError, match="must name a namespace"):
            admin.put(b"no owner")


def test_a_blob_held_only_in_b_is_absent_for_a(daemon, b_only):
    with connect(daemon, "team-a") as a:
        for namespace in ("team-a/app", ""):
            assert a.find_missing([b_only.digest], namespace) == [b_only.digest]
            with pytest.raises(NotFoundError):
                a.stat(b_only.digest, namespace)
            with pytest.raises(NotFoundError):
                a.get(b_only.digest, namespace=namespace)
        with pytest.raises(FailedPreconditionError) as refused:
            a.record("team-a/app", "uses-b", [b_only])
        assert refused.value.missing == [b_only.digest]
    # The answer for a hidden blob is exactly the answer for an unknown one.
    unknown = "sha256:" + hashlib.sha256(b"never stored").hexdigest()
    with connect(daemon, "team-a") as a:
        with pytest.raises(NotFoundError) as hidden:
            a.stat(b_only.digest, "team-a/app")
        with pytest.raises(NotFoundError) as absent:
            a.stat(unknown, "team-a/app")
    assert str(hidden.value).replace(b_only.digest, "D") == str(absent.value).replace(unknown, "D")


def test_uploading_a_hidden_blob_takes_the_full_upload_then_it_is_yours(daemon):
    data = b"both teams build this layer " + os.urandom(64)
    with connect(daemon, "team-b") as b:
        held = b.put(data, namespace="team-b/app")
    with connect(daemon, "admin") as admin:
        received = admin.stats().bytes_in
        with connect(daemon, "team-a") as a:
            assert a.find_missing([held.digest], "team-a/app") == [held.digest]
            desc = a.put(data, namespace="team-a/app")
        assert desc == held
        assert admin.stats().bytes_in - received == len(data)  # no short-cut: A sent every byte
    with connect(daemon, "team-a") as a:
        assert a.get(desc.digest, namespace="team-a/app") == data
        assert a.find_missing([desc.digest], "team-a/app") == []


def test_a_branch_reads_main_through_its_fallback_scope(daemon):
    with connect(daemon, "team-a") as a:
        layer = a.put(b"main's layer " + os.urandom(32), namespace="team-a/main")
        a.record("team-a/main", "step-1", [layer])
    with connect(daemon, "branch") as branch:
        result = branch.lookup("team-a/feature-x", ["step-1", "step-2"])
        assert [e.namespace for e in result.hits] == ["team-a/main"]
        assert branch.get(layer.digest, namespace="team-a/feature-x").startswith(b"main's layer")
        # The fallback belongs to the namespace asked in, not to the token.
        with pytest.raises(NotFoundError):
            branch.stat(layer.digest)
        with pytest.raises(PermissionDeniedError):
            branch.lookup("team-a/main", ["step-1"])


def test_anonymous_callers_may_only_read_what_is_configured(daemon):
    with connect(daemon, "team-a") as a:
        assert a.find_missing([], "public/tools") == []
    with connect(daemon, None) as anonymous:
        assert anonymous.lookup("public/tools", ["k"]).miss_reason == "not_recorded"
        # Refusals tell an anonymous caller that a token would be needed.
        with pytest.raises(UnauthenticatedError, match="needs a bearer token"):
            anonymous.put(b"anonymous write", namespace="public/tools")
        with pytest.raises(UnauthenticatedError):
            anonymous.lookup("team-a/app", ["k"])


def test_stats_against_the_remote_daemon_with_an_admin_token(daemon, b_only):
    with connect(daemon, "team-b") as b:
        b.lookup("team-b/app", ["step-1"])
        b.lookup("team-b/app", ["step-1", "nope"])
    env = {**os.environ, "LAYERCACHE_TOKEN": TOKENS["admin"]}
    run = subprocess.run(
        [sys.executable, "-m", "client.cli", "stats", "--server", daemon.address],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "team-b/app" in run.stdout and "hit rate" in run.stdout
    refused = subprocess.run(
        [sys.executable, "-m", "client.cli", "stats", "--server", daemon.address, "--token", TOKENS["team-a"]],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert refused.returncode == 7 and "PERMISSION_DENIED" in refused.stderr
    with connect(daemon, None) as anonymous:
        with pytest.raises(UnauthenticatedError):
            anonymous.stats()


# ---------------------------------------------------------------- in-process rules


def authorizer(text: str, tmp_path) -> Authorizer:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return Authorizer(load(path).auth)


def test_roles_are_ordered_and_the_highest_matching_pattern_wins(tmp_path):
    auth = authorizer(
        '[[auth.tokens]]\nname = "t"\ntoken = "0123456789abcdefgh"\nroles = { "a/*" = "read", "a/own/*" = "admin" }\n',
        tmp_path,
    )
    principal = auth.authenticate("Bearer 0123456789abcdefgh")
    assert principal.level("a/x") == READ and principal.level("a/own/x") == ADMIN and principal.level("b/x") == 0
    principal.require(WRITE, "a/own/x")
    with pytest.raises(PermissionDenied):
        principal.require(WRITE, "a/x")
    with pytest.raises(PermissionDenied):
        principal.require_admin()  # admin of a/own/*, not of the cache
    with pytest.raises(Unauthenticated):
        auth.authenticate(None)


def test_tokens_file_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "tokens.toml").write_text('[[tokens]]\nname = "ci"\ntoken = "from-the-tokens-file"\nroles = { "*" = "write" }\n')
    auth = authorizer('[auth]\ntokens_file = "tokens.toml"\n', tmp_path)
    assert auth.authenticate("bearer from-the-tokens-file").name == "ci"


@pytest.mark.parametrize(
    "text, complaint",
    [
        ('[[auth.tokens]]\nname = "t"\ntoken = "short"\nroles = { "*" = "read" }\n', "at least 16"),
        ('[[auth.tokens]]\nname = "t"\ntoken = "0123456789abcdefgh"\nroles = { "*" = "owner" }\n', "not one of"),
        ('[[auth.tokens]]\nname = "t"\nsha256 = "abc"\nroles = { "*" = "read" }\n', "64 hex"),
        ('[[auth.tokens]]\nname = "t"\ntoken = "0123456789abcdefgh"\n', "needs roles"),
        ('[auth]\ntokens_file = "missing.toml"\n', "tokens_file"),
        ('[auth]\nanonymous_read = "public/*"\n', "list of namespace globs"),
        ('[read_fallback]\n"a/*" = "a/main"\n', "list of namespaces"),
        ('[auth]\nsecret = 1\n', "unknown keys"),
    ],
)
def test_bad_auth_config_is_refused_with_a_clear_error(tmp_path, text, complaint):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=complaint):
        load(path)


class OciAccess:
    """What the OCI endpoint asks for: a plain stand-in for its Access."""

    def __init__(self, repository: str, action: str) -> None:
        self.repository = repository
        self.action = action


def test_the_oci_seam_checks_every_access_of_a_request(tmp_path):
    auth = authorizer(CONFIG, tmp_path)
    team_a = {"Authorization": f"Bearer {TOKENS['team-a']}"}
    sees = auth.authorize_oci(team_a, [OciAccess("team-a/app", "push")])
    assert sees is not None and sees(["team-a/app"]) and not sees(["team-b/app"])
    # A cross-repository mount needs push on the target and pull on the source.
    auth.authorize_oci(team_a, [OciAccess("team-a/app", "push"), OciAccess("public/base", "pull")])
    with pytest.raises(PermissionDenied, match="team-b/app"):
        auth.authorize_oci(team_a, [OciAccess("team-a/app", "push"), OciAccess("team-b/app", "pull")])
    with pytest.raises(PermissionDenied):
        auth.authorize_oci({"Authorization": f"Bearer {TOKENS['reader']}"}, [OciAccess("team-a/app", "push")])
    with pytest.raises(Unauthenticated) as refused:
        auth.authorize_oci({}, [OciAccess("team-a/app", "pull")])
    assert refused.value.headers == {"WWW-Authenticate": 'Bearer realm="layercache"'}


# ---------------------------------------------------------------- the OCI endpoint


def bearer(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who]}"}


def test_oci_team_a_into_team_b_is_denied_at_every_upload_step(daemon, b_only):
    registry = Registry(daemon.http_address)
    started = registry.request("POST", "/v2/team-b/app/blobs/uploads/", headers=bearer("team-b"))
    assert started.status == 202
    session = started.headers["Location"]
    data = b"a chunk from team a"
    steps = {
        "start": registry.request("POST", "/v2/team-b/app/blobs/uploads/", headers=bearer("team-a")),
        "monolithic": registry.request("POST", f"/v2/team-b/app/blobs/uploads/?digest={sha256(data)}", data, bearer("team-a")),
        "chunk": registry.request(
            "PATCH", session, data, {**bearer("team-a"), "Content-Range": f"0-{len(data) - 1}", "Content-Type": "application/octet-stream"}
        ),
        "finish": registry.request("PUT", f"{session}{'&' if '?' in session else '?'}digest={sha256(data)}", data, bearer("team-a")),
        "mount into b": registry.request(
            "POST", f"/v2/team-b/app/blobs/uploads/?mount={b_only.digest}&from=team-a/app", headers=bearer("team-a")
        ),
        "mount from b": registry.request(
            "POST", f"/v2/team-a/app/blobs/uploads/?mount={b_only.digest}&from=team-b/app", headers=bearer("team-a")
        ),
    }
    assert {step: r.status for step, r in steps.items()} == dict.fromkeys(steps, 403)
    assert all(r.error_codes == ["DENIED"] for r in steps.values())
    # Team B's session is untouched by all that and still finishes.
    finished = registry.request("PUT", f"{session}{'&' if '?' in session else '?'}digest={sha256(b'b data')}", b"b data", bearer("team-b"))
    assert finished.status == 201


def test_oci_read_token_and_no_token(daemon):
    registry = Registry(daemon.http_address)
    refused = registry.request("POST", "/v2/team-a/app/blobs/uploads/", headers=bearer("reader"))
    assert refused.status == 403
    anonymous = registry.request("HEAD", f"/v2/team-a/app/blobs/{sha256(b'x')}")
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def test_oci_a_blob_held_only_in_b_is_absent_for_a(daemon, b_only):
    registry = Registry(daemon.http_address)
    head = registry.request("HEAD", f"/v2/team-a/app/blobs/{b_only.digest}", headers=bearer("team-a"))
    get = registry.request("GET", f"/v2/team-a/app/blobs/{b_only.digest}", headers=bearer("team-a"))
    assert (head.status, get.status) == (404, 404)
    # A mount from a repository A may read falls back to an upload session:
    # the blob is not there as far as A can tell.
    mount = registry.request(
        "POST", f"/v2/team-a/app/blobs/uploads/?mount={b_only.digest}&from=public/base", headers=bearer("team-a")
    )
    assert mount.status == 202
    assert registry.request("HEAD", f"/v2/team-b/app/blobs/{b_only.digest}", headers=bearer("team-b")).status == 200
