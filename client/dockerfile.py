"""Dockerfile parsing and evaluation, following BuildKit's rules.

Keys are only as good as our reading of the Dockerfile: if we expanded a
variable differently from BuildKit, two builders would disagree about what a
step does. So this module does two things, each the way BuildKit's Dockerfile
frontend does them:

- ``parse`` turns text into ``Instruction`` objects: the ``escape`` parser
  directive, comment lines (dropped even inside a continuation), line
  continuations (the escape character at the end of a line; the next line is
  appended as is), ``--flag=value`` options and the JSON (exec) form.
- ``evaluate`` walks one stage and resolves what every instruction means for
  the steps after it: ARG scope (global ARGs only reach FROM unless redeclared
  in the stage; build args override defaults; ENV wins over an ARG of the same
  name), ENV, WORKDIR (relative to the previous one), USER, SHELL, and the
  image configuration (LABEL, CMD, ENTRYPOINT, EXPOSE, VOLUME, STOPSIGNAL).
  Variable substitution supports ``$name``, ``${name}`` and the ``:-``, ``-``,
  ``:+``, ``+``, ``:?`` and ``?`` modifiers, with single quotes, double quotes
  and the escape character treated as BuildKit's shell lexer treats them.

The steps that produce layers come out as ``FromStep``, ``CopyStep`` and
``RunStep``; the rest only change state. Decisions where BuildKit's behaviour
is not ours to copy (see docs/keys.md): one stage per Dockerfile (no
``COPY --from``), ``--chown`` takes numeric ids only (names would need the
image's /etc/passwd before the step runs), and a RUN sees only the ARGs its
command names, so that its key covers everything the process can observe.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_SHELL = ("/bin/sh", "-c")
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]")
_JSON_FORMS = {"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"}
_FLAGS = {
    "FROM": {"platform"},
    "COPY": {"chown", "chmod"},
    "ADD": {"chown", "chmod"},
    "RUN": set(),
}


class DockerfileError(ValueError):
    """The Dockerfile is malformed or uses something we do not support."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str  # text after the keyword and flags, continuations joined
    line: int  # first line of the instruction, 1-based
    text: str  # the whole instruction as one line, for display
    flags: tuple[tuple[str, str], ...] = ()
    exec_form: tuple[str, ...] | None = None  # the JSON array, when given

    def flag(self, name: str) -> str | None:
        return dict(self.flags).get(name)


# ---------------------------------------------------------------- parsing


def parse(text: str) -> list[Instruction]:
    lines = text.splitlines()
    escape, start = _directives(lines)
    instructions: list[Instruction] = []
    pending: list[str] = []
    first_line = 0
    for number, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # BuildKit drops these even in the middle of a continuation
        if not pending:
            first_line = number
        body = raw.rstrip()
        if body.endswith(escape):
            pending.append(body[: -len(escape)].lstrip() if not pending else body[: -len(escape)])
            continue
        pending.append(body.lstrip() if not pending else body)
        instructions.append(_instruction("".join(pending), first_line))
        pending = []
    if pending:
        instructions.append(_instruction("".join(pending), first_line))
    return instructions


def escape_of(text: str) -> str:
    """The escape character the Dockerfile declares (default backslash)."""
    return _directives(text.splitlines())[0]


def _directives(lines: list[str]) -> tuple[str, int]:
    escape = "\\"
    for index, line in enumerate(lines):
        match = _DIRECTIVE.fullmatch(line.strip())
        if match is None:
            return escape, index
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid escape directive {match.group(2)!r}", index + 1)
            escape = match.group(2)
    return escape, len(lines)


def _instruction(line: str, number: int) -> Instruction:
    keyword, _, rest = line.partition(" ")
    keyword = keyword.upper()
    rest = rest.strip()
    flags: list[tuple[str, str]] = []
    if keyword in _FLAGS:
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            rest = rest.lstrip()
            name, sep, value = word[2:].partition("=")
            if name not in _FLAGS[keyword]:
                raise DockerfileError(f"{keyword} --{name} is not supported", number)
            if not sep or not value:
                raise DockerfileError(f"{keyword} --{name} needs a value", number)
            flags.append((name, value))
    exec_form = None
    if keyword in _JSON_FORMS and rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            exec_form = tuple(value)
    return Instruction(keyword, rest, number, line.strip(), tuple(flags), exec_form)


# ---------------------------------------------------------------- substitution


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Splits on unquoted whitespace, keeping quotes and escapes for ``expand``."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    index = 0
    while index < len(text):
        char = text[index]
        if char == escape and quote != "'" and index + 1 < len(text):
            current.append(text[index : index + 2])
            index += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if quote:
        raise DockerfileError(f"unterminated {quote} quote in {text!r}")
    if current:
        words.append("".join(current))
    return words


def expand(word: str, lookup: Mapping[str, str], escape: str = "\\") -> str:
    """Removes quotes and escapes and substitutes variables, as BuildKit does."""
    return _Lexer(word, lookup, escape).run()


class _Lexer:
    def __init__(self, text: str, lookup: Mapping[str, str], escape: str) -> None:
        self.text = text
        self.lookup = lookup
        self.escape = escape
        self.pos = 0

    def run(self, stop: str = "") -> str:
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if stop and char == stop:
                break
            self.pos += 1
            if char == self.escape:
                if self.pos < len(self.text):
                    out.append(self.text[self.pos])
                    self.pos += 1
            elif char == "'":
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise DockerfileError(f"unterminated ' quote in {self.text!r}")
                out.append(self.text[self.pos : end])
                self.pos = end + 1
            elif char == '"':
                out.append(self._double_quoted())
            elif char == "$":
                out.append(self._variable())
            else:
                out.append(char)
        return "".join(out)

    def _double_quoted(self) -> str:
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == self.escape and self.pos < len(self.text):
                following = self.text[self.pos]
                if following in ('"', "$", self.escape):
                    out.append(following)
                    self.pos += 1
                    continue
                out.append(char)
            elif char == "$":
                out.append(self._variable())
            else:
                out.append(char)
        raise DockerfileError(f'unterminated " quote in {self.text!r}')

    def _name(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _NAME_CHARS.match(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    def _variable(self) -> str:
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            self.pos += 1
            return self._braced()
        name = self._name()
        return self.lookup.get(name, "") if name else "$"

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise DockerfileError(f"bad substitution in {self.text!r}")
        rest = self.text[self.pos :]
        modifier = next((m for m in (":-", ":+", ":?", "-", "+", "?") if rest.startswith(m)), "")
        if not modifier and not rest.startswith("}"):
            raise DockerfileError(f"unsupported substitution in {self.text!r}")
        self.pos += len(modifier)
        word = self.run(stop="}") if modifier else ""
        if self.pos >= len(self.text):
            raise DockerfileError(f"missing '}}' in {self.text!r}")
        self.pos += 1
        value = self.lookup.get(name)
        empty_counts = modifier.startswith(":")
        is_set = value is not None and (bool(value) or not empty_counts)
        if modifier.endswith("-"):
            return value if is_set and value is not None else word
        if modifier.endswith("+"):
            return word if is_set else ""
        if modifier.endswith("?"):
            if not is_set:
                raise DockerfileError(f"{name}: {word or 'is not set'}")
        return value or ""


def referenced_names(text: str) -> set[str]:
    """Variable names a shell command refers to (``$NAME`` or ``${NAME...}``)."""
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text))


# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class BaseImage:
    """What a FROM resolves to: a pinned digest and the image's config."""

    ref: str
    digest: str  # the manifest digest; "" for scratch
    platform: str
    config: Mapping[str, Any] = field(default_factory=dict)  # the OCI config's "config" object


class BaseResolver(Protocol):
    def __call__(self, ref: str, platform: str) -> BaseImage: ...


@dataclass(frozen=True)
class FromStep:
    index: int
    instruction: Instruction
    base: BaseImage


@dataclass(frozen=True)
class CopyStep:
    index: int
    instruction: Instruction
    sources: tuple[str, ...]  # context-relative, possibly with wildcards
    dest: str  # absolute; a trailing "/" means "into this directory"
    chown: tuple[int, int] | None
    chmod: int | None

    @property
    def extracts_archives(self) -> bool:
        return self.instruction.keyword == "ADD"


@dataclass(frozen=True)
class RunStep:
    index: int
    instruction: Instruction
    argv: tuple[str, ...]
    shell: tuple[str, ...] | None  # None for the exec form
    env: tuple[tuple[str, str], ...]  # the whole environment of the process
    args: tuple[tuple[str, str], ...]  # the ARGs the command uses (also in env)
    workdir: str
    user: str


Step = FromStep | CopyStep | RunStep


@dataclass
class ImageConfig:
    """The image configuration the Dockerfile ends with (OCI field names)."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: set[str] = field(default_factory=set)
    volumes: set[str] = field(default_factory=set)
    stop_signal: str = ""
    # (created_by, index of the step it made or None): the builder decides which made a layer.
    history: list[tuple[str, int | None]] = field(default_factory=list)

    def as_oci(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.env:
            config["Env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.entrypoint is not None:
            config["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            config["Cmd"] = self.cmd
        if self.workdir:
            config["WorkingDir"] = self.workdir
        if self.user:
            config["User"] = self.user
        if self.labels:
            config["Labels"] = dict(sorted(self.labels.items()))
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in sorted(self.exposed_ports)}
        if self.volumes:
            config["Volumes"] = {volume: {} for volume in sorted(self.volumes)}
        if self.stop_signal:
            config["StopSignal"] = self.stop_signal
        return config


@dataclass
class Stage:
    steps: list[Step]
    config: ImageConfig
    base: BaseImage
    unused_build_args: list[str]


def evaluate(
    instructions: list[Instruction],
    build_args: Mapping[str, str],
    resolve_base: BaseResolver,
    platform: str,
    escape: str = "\\",
) -> Stage:
    return _Evaluator(build_args, resolve_base, platform, escape).run(instructions)


class _Evaluator:
    def __init__(
        self, build_args: Mapping[str, str], resolve_base: BaseResolver, platform: str, escape: str
    ) -> None:
        self.build_args = dict(build_args)
        self.resolve_base = resolve_base
        self.platform = platform
        self.escape = escape
        self.global_args: dict[str, str | None] = {}
        self.args: dict[str, str | None] = {}
        self.config = ImageConfig()
        self.shell: tuple[str, ...] = DEFAULT_SHELL
        self.cmd_set = False
        self.steps: list[Step] = []
        self.base: BaseImage | None = None
        self.used_build_args: set[str] = set()

    def run(self, instructions: list[Instruction]) -> Stage:
        handlers: dict[str, Callable[[Instruction], None]] = {
            "FROM": self._from,
            "ARG": self._arg,
            "ENV": self._env,
            "WORKDIR": self._workdir,
            "USER": self._user,
            "SHELL": self._shell,
            "COPY": self._copy,
            "ADD": self._copy,
            "RUN": self._run,
            "LABEL": self._label,
            "CMD": self._cmd,
            "ENTRYPOINT": self._entrypoint,
            "EXPOSE": self._expose,
            "VOLUME": self._volume,
            "STOPSIGNAL": self._stop_signal,
        }
        for instruction in instructions:
            handler = handlers.get(instruction.keyword)
            if handler is None:
                raise DockerfileError(f"{instruction.keyword} is not supported", instruction.line)
            if self.base is None and instruction.keyword not in ("FROM", "ARG"):
                raise DockerfileError(f"{instruction.keyword} before FROM", instruction.line)
            steps_before = len(self.steps)
            handler(instruction)
            if instruction.keyword != "FROM" and self.base is not None:
                made = len(self.steps) if len(self.steps) > steps_before else None
                self.config.history.append((instruction.text, made))
        if self.base is None:
            raise DockerfileError("no FROM instruction")
        unused = sorted(set(self.build_args) - self.used_build_args)
        return Stage(self.steps, self.config, self.base, unused)

    # -- state helpers

    def _scope(self) -> dict[str, str]:
        """Variables visible to substitution: set ARGs, overridden by ENV."""
        if self.base is None:
            return {k: v for k, v in self.global_args.items() if v is not None}
        scope = {k: v for k, v in self.args.items() if v is not None}
        scope.update(self.config.env)
        return scope

    def _words(self, instruction: Instruction) -> list[str]:
        if instruction.exec_form is not None:
            return [expand(w, self._scope(), self.escape) for w in instruction.exec_form]
        scope = self._scope()
        return [expand(w, scope, self.escape) for w in split_words(instruction.args, self.escape)]

    def _pairs(self, instruction: Instruction) -> list[tuple[str, str]]:
        words = split_words(instruction.args, self.escape)
        if not words:
            raise DockerfileError(f"{instruction.keyword} needs arguments", instruction.line)
        scope = self._scope()
        if "=" not in words[0]:  # the legacy "ENV name value with spaces" form
            name, _, value = instruction.args.partition(" ")
            return [(name, expand(value.strip(), scope, self.escape))]
        pairs = []
        for word in words:
            name, sep, value = word.partition("=")
            if not sep:
                raise DockerfileError(f"expected NAME=VALUE, got {word!r}", instruction.line)
            pairs.append((expand(name, scope, self.escape), expand(value, scope, self.escape)))
        return pairs

    def _command(self, instruction: Instruction) -> list[str]:
        if instruction.exec_form is not None:
            return list(instruction.exec_form)
        return [*self.shell, instruction.args]

    def _next_index(self) -> int:
        return len(self.steps) + 1

    # -- instructions

    def _from(self, instruction: Instruction) -> None:
        if self.base is not None:
            raise DockerfileError("multi-stage builds are not supported", instruction.line)
        words = self._words(instruction)
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]
        if len(words) != 1:
            raise DockerfileError("expected FROM IMAGE [AS NAME]", instruction.line)
        platform = instruction.flag("platform")
        platform = expand(platform, self._scope(), self.escape) if platform else self.platform
        base = self.resolve_base(words[0], platform)
        self.base = base
        env = base.config.get("Env") or []
        self.config.env = dict(item.partition("=")[::2] for item in env)
        self.config.workdir = base.config.get("WorkingDir", "")
        self.config.user = base.config.get("User", "")
        self.config.cmd = base.config.get("Cmd")
        self.config.entrypoint = base.config.get("Entrypoint")
        self.config.labels = dict(base.config.get("Labels") or {})
        self.config.exposed_ports = set(base.config.get("ExposedPorts") or {})
        self.config.volumes = set(base.config.get("Volumes") or {})
        self.config.stop_signal = base.config.get("StopSignal", "")
        self.steps.append(FromStep(self._next_index(), instruction, base))

    def _arg(self, instruction: Instruction) -> None:
        table = self.args if self.base is not None else self.global_args
        for word in split_words(instruction.args, self.escape):
            name, sep, default = word.partition("=")
            if name in self.build_args:
                self.used_build_args.add(name)
                value: str | None = self.build_args[name]
            elif sep:
                value = expand(default, self._scope(), self.escape)
            elif self.base is not None:
                value = self.global_args.get(name)  # redeclaring a global ARG brings it in
            else:
                value = None
            table[name] = value

    def _env(self, instruction: Instruction) -> None:
        for name, value in self._pairs(instruction):
            self.config.env[name] = value

    def _workdir(self, instruction: Instruction) -> None:
        words = self._words(instruction)
        if len(words) != 1:
            raise DockerfileError("WORKDIR takes one path", instruction.line)
        self.config.workdir = posixpath.normpath(posixpath.join(self._cwd(), words[0]))

    def _cwd(self) -> str:
        return self.config.workdir or "/"

    def _user(self, instruction: Instruction) -> None:
        words = self._words(instruction)
        if len(words) != 1:
            raise DockerfileError("USER takes one USER[:GROUP]", instruction.line)
        self.config.user = words[0]

    def _shell(self, instruction: Instruction) -> None:
        if not instruction.exec_form:
            raise DockerfileError("SHELL needs the JSON form", instruction.line)
        self.shell = instruction.exec_form

    def _copy(self, instruction: Instruction) -> None:
        words = self._words(instruction)
        if len(words) < 2:
            raise DockerfileError(f"{instruction.keyword} needs a source and a destination", instruction.line)
        *sources, dest = words
        if len(sources) > 1 and not dest.endswith("/"):
            raise DockerfileError("with several sources the destination must end with /", instruction.line)
        into_dir = dest.endswith("/") or dest in (".", "..") or dest.endswith("/.")
        dest = posixpath.normpath(posixpath.join(self._cwd(), dest))
        if into_dir and dest != "/":
            dest += "/"
        chown = instruction.flag("chown")
        chmod = instruction.flag("chmod")
        self.steps.append(
            CopyStep(
                self._next_index(),
                instruction,
                tuple(sources),
                dest,
                _parse_chown(expand(chown, self._scope()), instruction) if chown else None,
                _parse_chmod(chmod, instruction) if chmod else None,
            )
        )

    def _run(self, instruction: Instruction) -> None:
        argv = self._command(instruction)
        text = " ".join(instruction.exec_form or [instruction.args])
        used = referenced_names(text)
        args = {
            name: value
            for name, value in self.args.items()
            if value is not None and name in used and name not in self.config.env
        }
        env = {**self.config.env, **args}
        self.steps.append(
            RunStep(
                self._next_index(),
                instruction,
                tuple(argv),
                None if instruction.exec_form is not None else self.shell,
                tuple(sorted(env.items())),
                tuple(sorted(args.items())),
                self._cwd(),
                self.config.user,
            )
        )

    def _label(self, instruction: Instruction) -> None:
        self.config.labels.update(self._pairs(instruction))

    def _cmd(self, instruction: Instruction) -> None:
        self.config.cmd = self._command(instruction)
        self.cmd_set = True

    def _entrypoint(self, instruction: Instruction) -> None:
        self.config.entrypoint = self._command(instruction)
        if not self.cmd_set:
            self.config.cmd = None  # BuildKit drops a CMD inherited from the base image

    def _expose(self, instruction: Instruction) -> None:
        for port in self._words(instruction):
            self.config.exposed_ports.add(port if "/" in port else f"{port}/tcp")

    def _volume(self, instruction: Instruction) -> None:
        self.config.volumes.update(self._words(instruction))

    def _stop_signal(self, instruction: Instruction) -> None:
        self.config.stop_signal = self._words(instruction)[0]


def _parse_chown(value: str, instruction: Instruction) -> tuple[int, int]:
    user, _, group = value.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise DockerfileError(f"--chown={value}: only numeric UID[:GID] is supported", instruction.line)
    return int(user), int(group or user)


def _parse_chmod(value: str, instruction: Instruction) -> int:
    if not re.fullmatch(r"[0-7]{3,4}", value):
        raise DockerfileError(f"--chmod={value}: only octal modes are supported", instruction.line)
    return int(value, 8)
