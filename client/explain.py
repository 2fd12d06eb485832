"""Miss explanations: why a step's key differs from what the cache holds.

A key is a hash, so on its own it cannot say what changed. Each record keeps a
summary of its key inputs (``KeyedStep.summary``, stored by the plugin in the
record's metadata), and an explanation compares the current step's summary
with the nearest record of the same step: the one with the same parent if
there is one (only this step's own inputs changed), else the one that differs
least, newest first. The comparison names what a person would change: a file's
content, mode, owner or symlink target, a file added, removed or renamed, an
ENV or ARG value, the command, working directory, user or shell, the base
image, or the parent (an earlier step changed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from client.keys import KeyChain, KeyedStep
from client.types import CacheEntry

if TYPE_CHECKING:
    from client.plugin import CacheClient

STEP_META = "layercache.step"
INPUTS_META = "layercache.inputs"
_CANDIDATES = 100
_NOT_COMPARED = {"spec", "files", "parent", "sources"}


@dataclass(frozen=True)
class Explanation:
    step: KeyedStep
    hit: bool
    nearest: CacheEntry | None
    same_parent: bool
    differences: list[str]
    first_miss: int | None

    def render(self) -> str:
        head = f"step {self.step.index} ({self.step.text})"
        if self.hit:
            return f"{head}: hit\n"
        if self.nearest is None:
            return f"{head}: miss; this step was never recorded in this namespace\n"
        when = datetime.fromtimestamp(self.nearest.created_unix_ms / 1000, timezone.utc)
        relation = "same parent" if self.same_parent else "different parent"
        lines = [
            f"{head}: miss",
            f"  nearest record: {self.nearest.key} ({when:%Y-%m-%d %H:%M:%S} UTC, {relation})",
        ]
        lines += [f"  - {difference}" for difference in self.differences or ["no recorded input differs"]]
        return "\n".join(lines) + "\n"


def explain(
    client: CacheClient, namespace: str, chain: KeyChain, number: int, first_miss: int | None
) -> Explanation:
    if not 1 <= number <= len(chain.steps):
        raise ValueError(f"step {number} does not exist; the Dockerfile has {len(chain.steps)} steps")
    step = chain.steps[number - 1]
    candidates = client.list_entries(namespace, {STEP_META: step.identity}, _CANDIDATES)
    if any(entry.key == step.key for entry in candidates):
        return Explanation(step, True, None, True, [], first_miss)
    ranked = []
    summaries: dict[int | None, dict[str, Any]] = {}  # folding a big tree is not free; once per depth
    for entry in candidates:
        recorded = _recorded_inputs(entry)
        if recorded is None:
            continue
        depth = recorded.get("files", {}).get("depth")
        current = summaries.get(depth) or summaries.setdefault(depth, step.summary(depth))
        found = differences(recorded, current, step, first_miss)
        same_parent = recorded.get("parent") == step.parent
        ranked.append(((not same_parent, len(found), -entry.created_unix_ms), entry, same_parent, found))
    if not ranked:
        return Explanation(step, False, None, False, [], first_miss)
    _, entry, same_parent, found = min(ranked, key=lambda item: item[0])
    return Explanation(step, False, entry, same_parent, found, first_miss)


def _recorded_inputs(entry: CacheEntry) -> dict[str, Any] | None:
    try:
        value = json.loads(entry.metadata.get(INPUTS_META, ""))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def differences(
    recorded: Mapping[str, Any], current: Mapping[str, Any], step: KeyedStep, first_miss: int | None
) -> list[str]:
    found: list[str] = []
    if recorded.get("spec") != current.get("spec"):
        found.append(f"key spec {recorded.get('spec')} -> {current.get('spec')}")
    if recorded.get("parent") != current.get("parent"):
        earlier = f" (first miss: step {first_miss})" if first_miss and first_miss < step.index else ""
        found.append(f"the parent step's key differs: an earlier step changed{earlier}")
    for name in sorted((set(recorded) | set(current)) - _NOT_COMPARED):
        before, after = recorded.get(name), current.get(name)
        if before == after:
            continue
        if name in ("env", "args") and isinstance(before, dict) and isinstance(after, dict):
            found += _variables("ENV" if name == "env" else "ARG", before, after)
        else:
            found.append(f"{_LABELS.get(name, name)}: {_shown(before)} -> {_shown(after)}")
    files_before = recorded.get("files", {}).get("listing", {})
    files_after = current.get("files", {}).get("listing", {})
    origins = {entry.path: entry.origin for entry in step.entries}
    file_changes = _files(files_before, files_after, origins)
    found += file_changes
    if not file_changes and recorded.get("sources") != current.get("sources"):
        found.append("the sources' checksum differs")
    return found


_LABELS = {
    "base": "base image",
    "command": "command",
    "dest": "destination",
    "chown": "--chown",
    "chmod": "--chmod",
    "workdir": "WORKDIR",
    "user": "USER",
    "shell": "SHELL",
}


def _shown(value: object) -> str:
    return "(none)" if value is None or value == "" else json.dumps(value)


def _variables(kind: str, before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    found = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            found.append(f"{kind} {name} no longer set (was {_shown(before[name])})")
        elif name not in before:
            found.append(f"{kind} {name} newly set to {_shown(after[name])}")
        elif before[name] != after[name]:
            found.append(f"{kind} {name}: {_shown(before[name])} -> {_shown(after[name])}")
    return found


def _files(before: Mapping[str, str], after: Mapping[str, str], origins: Mapping[str, str]) -> list[str]:
    def named(path: str) -> str:
        origin = origins.get(path, "")
        return f"{path} (context: {origin})" if origin and origin != path else path or "/"

    found = []
    removed = {path: before[path] for path in before.keys() - after.keys()}
    added = {path: after[path] for path in after.keys() - before.keys()}
    for path in sorted(added):
        twin = next((old for old, record in sorted(removed.items()) if record == added[path]), None)
        if twin is not None:
            found.append(f"{twin} renamed to {named(path)}")
            del removed[twin]
        else:
            found.append(f"{named(path)} added")
    found += [f"{path} removed" for path in sorted(removed)]
    for path in sorted(before.keys() & after.keys()):
        if before[path] != after[path]:
            found.append(_file_change(named(path), before[path].split(" "), after[path].split(" ")))
    return found


def _file_change(name: str, before: list[str], after: list[str]) -> str:
    kind = before[0]
    if kind != after[0]:
        return f"{name} changed from {kind} to {after[0]}"
    if kind == "tree":
        return f"something under {name} changed ({before[2]} -> {after[2]} entries)"
    if kind == "symlink":
        if before[1] != after[1]:
            return f"owner of {name}: {before[1]} -> {after[1]}"
        return f"symlink {name} retargeted: {' '.join(before[2:])} -> {' '.join(after[2:])}"
    changes = []
    if before[1] != after[1]:
        changes.append(f"mode {before[1]} -> {after[1]}")
    if before[2] != after[2]:
        changes.append(f"owner {before[2]} -> {after[2]}")
    if kind == "file" and before[3:] != after[3:]:
        changes.append("content changed")
    return f"{name}: {', '.join(changes)}"
