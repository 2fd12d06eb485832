"""Instruction-cache keys change exactly when a layer would change (docs/keys.md).

Every test builds a real context from real files (a package of this Python's
standard library) and compares the keys of two states of it.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from client.context import Context, DockerIgnore, summarize
from client.dockerfile import BaseImage, DockerfileError
from client.keys import SPEC, compute, key_of, resolve_pinned

REAL_PACKAGE = Path(json.__file__).parent  # a small real tree: json/*.py
DOCKERFILE = """\
FROM scratch
ARG X=a
ARG UNUSED=u
WORKDIR /srv
COPY app/ ./app/
COPY --chown=1000:1000 tools /opt/tools/
ENV Y=$X
RUN echo "$Y"
RUN echo done
"""


def make_context(root: Path, dockerfile: str = DOCKERFILE) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(REAL_PACKAGE, root / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "app" / "cache").mkdir()
    (root / "app" / "cache" / "scratch.txt").write_text("build output\n")
    (root / "tools").mkdir()
    shutil.copy2(REAL_PACKAGE / "tool.py", root / "tools" / "tool.py")
    (root / "Dockerfile").write_text(dockerfile)
    (root / ".dockerignore").write_text("app/cache\n**/*.pyc\n")
    return root


def keys(root: Path, **build_args: str) -> list[str]:
    return compute(root, build_args).keys


@pytest.fixture
def context(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx")


def changed_from(before: list[str], after: list[str]) -> int | None:
    """The 1-based step from which keys differ (None when all are equal)."""
    for index, (a, b) in enumerate(zip(before, after, strict=True), 1):
        if a != b:
            return index
    return None


def test_keys_are_versioned_and_chain_their_parent(context: Path):
    chain = compute(context)
    assert [s.op for s in chain.steps] == ["FROM", "COPY", "COPY", "RUN", "RUN"]
    assert all(k.startswith(f"{SPEC}:") and len(k) == len(SPEC) + 65 for k in chain.keys)
    for previous, step in zip(chain.steps, chain.steps[1:]):
        assert step.parent == previous.key
        assert step.key == key_of(previous.key, step.inputs)
    assert key_of("lc1:other", chain.steps[1].inputs) != chain.steps[1].key


def test_touching_every_file_keeps_the_keys(context: Path):
    before = keys(context)
    for path in context.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    assert keys(context) == before


def test_the_same_context_in_another_directory_gives_the_same_keys(context: Path, tmp_path: Path):
    copy = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(context, copy, symlinks=True)
    assert keys(copy) == keys(context)


def test_renaming_a_file_keeping_its_bytes_changes_the_key_from_its_copy(context: Path):
    before = keys(context)
    (context / "app" / "decoder.py").rename(context / "app" / "decoder2.py")
    assert changed_from(before, keys(context)) == 2


def test_a_mode_change_changes_the_key(context: Path):
    target = context / "app" / "encoder.py"
    target.chmod(0o644)
    before = keys(context)
    target.chmod(0o755)
    assert changed_from(before, keys(context)) == 2


def test_chmod_flag_decides_the_mode_so_host_modes_stop_mattering(tmp_path: Path):
    root = make_context(tmp_path / "ctx", "FROM scratch\nCOPY --chmod=0640 app/ /app/\n")
    before = keys(root)
    (root / "app" / "encoder.py").chmod(0o700)
    assert keys(root) == before
    (root / "Dockerfile").write_text("FROM scratch\nCOPY --chmod=0600 app/ /app/\n")
    assert changed_from(before, keys(root)) == 2


@pytest.mark.parametrize("chown", ["1001:1000", "1000:1001"])
def test_a_uid_or_gid_change_in_the_layer_changes_the_key(context: Path, chown: str):
    before = keys(context)
    (context / "Dockerfile").write_text(DOCKERFILE.replace("--chown=1000:1000", f"--chown={chown}"))
    assert changed_from(before, keys(context)) == 3


def test_the_host_owner_does_not_enter_the_key_because_the_layer_does_not_carry_it(context: Path):
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    before = keys(context)
    for path in (context / "app").rglob("*"):
        os.chown(path, 4242, 4343)
    assert keys(context) == before


@pytest.mark.parametrize("change", ["add", "remove", "retarget"])
def test_symlink_changes_change_the_key(context: Path, change: str):
    link = context / "app" / "current"
    if change != "add":
        link.symlink_to("decoder.py")
    before = keys(context)
    if change == "add":
        link.symlink_to("decoder.py")
    elif change == "remove":
        link.unlink()
    else:
        link.unlink()
        link.symlink_to("encoder.py")
    assert changed_from(before, keys(context)) == 2


def test_changes_under_a_dockerignored_path_keep_the_keys(context: Path):
    before = keys(context)
    (context / "app" / "cache" / "scratch.txt").write_text("different output\n")
    (context / "app" / "cache" / "new.bin").write_bytes(os.urandom(64))
    (context / "app" / "scanner.cpython-311.pyc").write_bytes(b"compiled")
    assert keys(context) == before
    (context / "app" / "scanner.py").write_text("# edited\n")
    assert changed_from(before, keys(context)) == 2


def test_an_arg_used_through_env_changes_keys_from_the_run_on(context: Path):
    with_a, with_b = keys(context, X="a"), keys(context, X="b")
    assert changed_from(with_a, with_b) == 4
    assert with_a[:3] == with_b[:3]


def test_an_unused_arg_keeps_the_keys(context: Path):
    assert keys(context, UNUSED="one") == keys(context, UNUSED="two") == keys(context)
    assert keys(context, NOT_DECLARED="x") == keys(context)


def test_an_arg_named_by_the_command_changes_that_run(tmp_path: Path):
    root = make_context(tmp_path / "ctx", "FROM scratch\nARG V\nRUN echo ${V}\nRUN echo $VERSION\n")
    base = keys(root)
    assert changed_from(base, keys(root, V="1")) == 2
    assert keys(root, VERSION="1") == base  # declared? no: never in scope, so never seen


def test_the_run_key_covers_command_workdir_user_and_shell(context: Path):
    base = keys(context)
    for old, new in [
        ('RUN echo "$Y"', 'RUN echo  "$Y"'),
        ("WORKDIR /srv", "WORKDIR /srv2"),
        ("ENV Y=$X", "ENV Y=$X\nUSER 1000"),
        ("ENV Y=$X", 'ENV Y=$X\nSHELL ["/bin/bash", "-c"]'),
    ]:
        (context / "Dockerfile").write_text(DOCKERFILE.replace(old, new))
        assert changed_from(base, keys(context)) is not None, new
    (context / "Dockerfile").write_text(DOCKERFILE + 'LABEL a=b\nCMD ["x"]\nEXPOSE 80\n')
    assert keys(context) == base


def test_add_extracts_local_archives_and_keys_their_members(tmp_path: Path):
    root = make_context(tmp_path / "ctx", "FROM scratch\nADD bundle.tar.gz /opt/\n")
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "a.txt").write_text("one\n")
    make_archive(root / "bundle.tar.gz", payload)
    chain = compute(root)
    assert [e.path for e in chain.steps[1].entries] == ["opt/payload", "opt/payload/a.txt"]
    before = chain.keys
    (payload / "a.txt").write_text("two\n")
    make_archive(root / "bundle.tar.gz", payload)
    assert changed_from(before, keys(root)) == 2


@pytest.mark.parametrize("owner", [(1001, 1000), (1000, 1001)])
def test_owners_inside_an_added_archive_enter_the_key(tmp_path: Path, owner: tuple[int, int]):
    root = make_context(tmp_path / "ctx", "FROM scratch\nADD bundle.tar /opt/\n")

    def archive_owned_by(uid: int, gid: int) -> list[str]:
        def owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
            member.uid, member.gid = uid, gid
            return member

        with tarfile.open(root / "bundle.tar", "w") as archive:
            archive.add(REAL_PACKAGE / "tool.py", arcname="tool.py", filter=owned)
        return keys(root)

    assert changed_from(archive_owned_by(1000, 1000), archive_owned_by(*owner)) == 2


def make_archive(path: Path, directory: Path) -> None:
    with tarfile.open(path, "w:gz") as archive:
        archive.add(directory, arcname=directory.name)


def test_from_needs_a_digest_not_a_tag():
    with pytest.raises(DockerfileError, match="tag alone"):
        resolve_pinned("python:3.11", "linux/amd64")
    pinned = resolve_pinned("python@sha256:" + "a" * 64, "linux/amd64")
    assert pinned == BaseImage("python@sha256:" + "a" * 64, "sha256:" + "a" * 64, "linux/amd64")


def test_from_keys_on_the_digest_and_platform(tmp_path: Path):
    def make(ref: str, platform: str) -> str:
        root = tmp_path / ref.replace("@", "_").replace(":", "_") / platform.replace("/", "_")
        root.mkdir(parents=True, exist_ok=True)
        (root / "Dockerfile").write_text(f"FROM --platform={platform} {ref}\n")
        return compute(root).keys[0]

    digest_a, digest_b = "img@sha256:" + "a" * 64, "img@sha256:" + "b" * 64
    assert make(digest_a, "linux/amd64") != make(digest_b, "linux/amd64")
    assert make(digest_a, "linux/amd64") != make(digest_a, "linux/arm64")
    assert make(digest_a, "linux/amd64") == make("other@sha256:" + "a" * 64, "linux/amd64")


def test_missing_and_escaping_sources_are_errors(context: Path):
    ctx = Context(context)
    with pytest.raises(ValueError, match="not found"):
        ctx.entries(["nope"], "/x/", None, None, False)
    with pytest.raises(ValueError, match="not found"):
        ctx.entries(["app/cache/scratch.txt"], "/x/", None, None, False)
    with pytest.raises(ValueError, match="outside"):
        ctx.entries(["../etc"], "/x/", None, None, False)
    (context / "escape").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="outside"):
        ctx.entries(["escape"], "/x/", None, None, False)


def test_wildcards_match_within_one_component(context: Path):
    entries = Context(context).entries(["app/*coder.py"], "/x/", None, None, False)
    assert [e.path for e in entries] == ["x/decoder.py", "x/encoder.py"]


@pytest.mark.parametrize(
    "patterns, path, excluded",
    [
        (["*.md"], "README.md", True),
        (["*.md"], "docs/README.md", False),
        (["**/*.md"], "docs/deep/README.md", True),
        (["docs"], "docs/a/b.txt", True),
        (["docs", "!docs/keep.txt"], "docs/keep.txt", False),
        (["docs", "!docs/keep.txt"], "docs/drop.txt", True),
        (["!a", "a"], "a", True),
        (["/build/"], "build/x", True),
        (["f?le[0-9]"], "file7", True),
        (["# comment", ""], "# comment", False),
    ],
)
def test_dockerignore_rules(patterns: list[str], path: str, excluded: bool):
    assert DockerIgnore(patterns).excludes(path) is excluded


def test_a_reincluded_file_keeps_its_excluded_parent_directory(context: Path):
    (context / ".dockerignore").write_text("app\n!app/tool.py\n")
    entries = Context(context).entries(["."], "/", None, None, False)
    paths = [e.path for e in entries]
    assert "app" in paths and "app/tool.py" in paths and "app/decoder.py" not in paths


def test_the_summary_folds_deep_trees_to_fit_its_budget(context: Path):
    entries = Context(context).entries(["app"], "/srv/lib/app/", None, None, False)
    depth, listing = summarize(entries, 1 << 20)
    assert depth == 4 and "srv/lib/app/decoder.py" in listing
    small_depth, small = summarize(entries, 200)
    assert small_depth < depth and len(json.dumps(small)) <= 200
    assert list(small.values())[0].startswith("tree ")
