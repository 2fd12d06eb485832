"""Instruction-cache keys, specification version lc1 (docs/keys.md).

A step's key is "lc1:" followed by the SHA-256 of a canonical JSON document
holding the spec version, the parent step's key and the step's inputs. Only
inputs that change the layer enter it, each in a form that is the same on
every machine: the base image by digest, COPY sources by the Merkle root of
the entries the layer will hold (``client.context``), RUN by its command,
environment, the ARGs it uses, working directory, user and shell.

Instructions that make no layer (ENV, ARG, WORKDIR, USER, SHELL, LABEL, CMD,
ENTRYPOINT, EXPOSE, ...) have no key of their own; what they change reaches
the keys of later steps through the inputs above (``client.dockerfile``
resolves it). Metadata-only instructions therefore never cost a cache miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.context import Context, Entry, summarize, tree_digests
from client.dockerfile import (
    BaseImage,
    BaseResolver,
    CopyStep,
    DockerfileError,
    FromStep,
    RunStep,
    Stage,
    Step,
    escape_of,
    evaluate,
    parse,
)

SPEC = "lc1"
# The file listing stored with a record stays under this many bytes of JSON,
# well inside the daemon's 64 KiB limit for one metadata value.
SUMMARY_BUDGET = 32 * 1024
_MACHINES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_platform() -> str:
    machine = host.machine().lower()
    return f"linux/{_MACHINES.get(machine, machine)}"


def resolve_pinned(ref: str, platform: str) -> BaseImage:
    """The resolver that needs no registry: ``scratch`` and ``NAME@sha256:...``.

    A tag alone never keys a layer, because what it names changes over time.
    A pinned reference gives a key but no image config, so the base image's
    environment is unknown to substitution; builders that need it pass a
    resolver that reads the image (``client.builder.LayoutResolver``).
    """
    if ref == "scratch":
        return BaseImage(ref, "", platform)
    _, at, digest = ref.rpartition("@")
    if at and digest.startswith("sha256:") and len(digest) == 71:
        return BaseImage(ref, digest, platform)
    raise DockerfileError(f"FROM {ref}: a tag alone cannot key a layer; pin a digest (NAME@sha256:...)")


@dataclass(frozen=True)
class KeyedStep:
    step: Step
    key: str
    parent: str  # "" for the FROM step
    inputs: Mapping[str, Any]  # what the key covers, besides spec and parent
    entries: tuple[Entry, ...] = ()  # COPY/ADD: what the layer holds

    @property
    def index(self) -> int:
        return self.step.index

    @property
    def op(self) -> str:
        return self.step.instruction.keyword

    @property
    def text(self) -> str:
        return self.step.instruction.text

    @property
    def identity(self) -> str:
        """Names the step across builds of the same Dockerfile, for explanations."""
        return f"{self.index}:{self.op}"

    def summary(self, depth: int | None = None) -> dict[str, Any]:
        """The key's inputs as stored with a record (files listed, deep trees folded)."""
        document: dict[str, Any] = {"spec": SPEC, "parent": self.parent, **self.inputs}
        if self.op in ("COPY", "ADD"):
            used, listing = summarize(list(self.entries), SUMMARY_BUDGET, depth)
            document["files"] = {"depth": used, "listing": listing}
        return document


@dataclass(frozen=True)
class KeyChain:
    """A Dockerfile's evaluated stage and the keys of its steps, in order."""

    stage: Stage
    steps: list[KeyedStep]
    context: Context

    @property
    def keys(self) -> list[str]:
        return [step.key for step in self.steps]


def key_of(parent: str, inputs: Mapping[str, Any]) -> str:
    document = {"spec": SPEC, "parent": parent, **inputs}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{SPEC}:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def compute(
    dockerfile_dir: str | os.PathLike[str],
    build_args: Mapping[str, str] | None = None,
    resolver: BaseResolver = resolve_pinned,
    *,
    dockerfile: str = "Dockerfile",
    context_dir: str | os.PathLike[str] | None = None,
    platform: str | None = None,
) -> KeyChain:
    """Reads ``dockerfile_dir/dockerfile`` and keys every step against the context.

    The context is ``dockerfile_dir`` unless ``context_dir`` is given.
    """
    text = Path(dockerfile_dir, dockerfile).read_text(encoding="utf-8")
    stage = evaluate(parse(text), build_args or {}, resolver, platform or host_platform(), escape_of(text))
    context = Context(context_dir if context_dir is not None else dockerfile_dir)
    steps: list[KeyedStep] = []
    parent = ""
    for step in stage.steps:
        inputs, entries = _inputs(step, context)
        key = key_of(parent, inputs)
        steps.append(KeyedStep(step, key, parent, inputs, entries))
        parent = key
    return KeyChain(stage, steps, context)


def _inputs(step: Step, context: Context) -> tuple[dict[str, Any], tuple[Entry, ...]]:
    if isinstance(step, FromStep):
        return {"op": "FROM", "base": step.base.digest or "scratch", "platform": step.base.platform}, ()
    if isinstance(step, CopyStep):
        entries = context.entries(step.sources, step.dest, step.chown, step.chmod, step.extracts_archives)
        inputs = {
            "op": step.instruction.keyword,
            "dest": step.dest,
            "chown": f"{step.chown[0]}:{step.chown[1]}" if step.chown else "",
            "chmod": f"{step.chmod:04o}" if step.chmod is not None else "",
            "sources": tree_digests(entries)[""] if entries else "",
        }
        return inputs, tuple(entries)
    assert isinstance(step, RunStep)
    args = dict(step.args)
    exec_form = step.instruction.exec_form
    inputs = {
        "op": "RUN",
        "command": list(exec_form) if exec_form is not None else step.instruction.args,
        "shell": list(step.shell) if step.shell is not None else None,
        "env": {name: value for name, value in step.env if name not in args},
        "args": args,
        "workdir": step.workdir,
        "user": step.user,
    }
    return inputs, ()
