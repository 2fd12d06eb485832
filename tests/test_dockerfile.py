"""The Dockerfile parser and evaluator read Dockerfiles the way BuildKit does."""

from __future__ import annotations

import pytest

from client.dockerfile import (
    BaseImage,
    CopyStep,
    DockerfileError,
    RunStep,
    evaluate,
    expand,
    parse,
    split_words,
)


def scratch(ref: str, platform: str) -> BaseImage:
    return BaseImage(ref, "", platform)


def base_with_config(ref: str, platform: str) -> BaseImage:
    config = {"Env": ["PATH=/usr/bin", "HOME=/root"], "Cmd": ["sh"], "WorkingDir": "/base"}
    return BaseImage(ref, "sha256:" + "1" * 64, platform, config)


def stage_of(text: str, build_args: dict[str, str] | None = None, resolver=scratch):
    return evaluate(parse(text), build_args or {}, resolver, "linux/amd64")


def test_continuations_join_lines_and_drop_comment_lines_inside():
    instructions = parse("FROM scratch\nRUN echo a \\\n# a comment\n\n    && echo b\n")
    assert [i.keyword for i in instructions] == ["FROM", "RUN"]
    assert instructions[1].args == "echo a     && echo b"
    assert instructions[1].line == 2


def test_escape_directive_switches_the_continuation_character():
    instructions = parse("# escape=`\nFROM scratch\nCOPY a `\n  b/\n")
    assert instructions[1].args == "a   b/"
    assert instructions[0].line == 2


def test_json_form_is_recognised_and_broken_json_falls_back_to_shell_form():
    run, broken = parse('RUN ["echo", "hi there"]\nRUN [echo, hi]\n')
    assert run.exec_form == ("echo", "hi there")
    assert broken.exec_form is None and broken.args == "[echo, hi]"


def test_flags_are_parsed_and_unknown_ones_rejected():
    (copy,) = parse("COPY --chown=1:2 --chmod=0755 a b\n")
    assert copy.flag("chown") == "1:2" and copy.flag("chmod") == "0755" and copy.args == "a b"
    with pytest.raises(DockerfileError, match="--from"):
        parse("COPY --from=build a b\n")


def test_substitution_modifiers_quotes_and_escapes():
    scope = {"SET": "v", "EMPTY": ""}
    assert expand("${SET:-d}${UNSET:-d}${EMPTY:-d}${EMPTY-d}", scope) == "vdd"
    assert expand("${SET:+w}${UNSET:+w}${EMPTY+w}${EMPTY:+w}", scope) == "ww"
    assert expand("'$SET'\"$SET\"\\$SET", scope) == "$SETv$SET"
    assert expand('"a \\"q\\" \\n"', scope) == 'a "q" \\n'
    assert expand("$SET-x ${SET}x $", scope) == "v-x vx $"
    with pytest.raises(DockerfileError, match="UNSET: needed"):
        expand("${UNSET:?needed}", scope)
    assert split_words("a 'b c' \"d e\"f g\\ h") == ["a", "'b c'", '"d e"f', "g\\ h"]


def test_env_wins_over_arg_and_arg_defaults_use_earlier_values():
    stage = stage_of(
        "FROM scratch\nARG A=1\nARG B=${A}2\nENV A=env\nCOPY $A$B /x/\n",
    )
    (_, copy) = stage.steps
    assert isinstance(copy, CopyStep)
    assert copy.sources == ("env12",)


def test_build_args_override_defaults_and_unknown_ones_are_reported():
    stage = stage_of("FROM scratch\nARG A=1\nCOPY $A /x/\n", {"A": "2", "NOPE": "3"})
    assert stage.steps[1].sources == ("2",)
    assert stage.unused_build_args == ["NOPE"]


def test_global_args_reach_from_but_not_the_stage_unless_redeclared():
    seen = []

    def resolver(ref: str, platform: str) -> BaseImage:
        seen.append(ref)
        return BaseImage(ref, "", platform)

    text = "ARG BASE=scratch\nARG V=g\nFROM $BASE\nCOPY a$V /x/\nARG V\nCOPY b$V /x/\n"
    stage = stage_of(text, resolver=resolver)
    assert seen == ["scratch"]
    assert [s.sources for s in stage.steps[1:]] == [("a",), ("bg",)]


def test_workdir_is_relative_to_the_previous_one_and_resolves_copy_destinations():
    stage = stage_of("FROM scratch\nWORKDIR /srv\nWORKDIR app\nCOPY a .\nCOPY b c\nCOPY d ../e/\n")
    assert [s.dest for s in stage.steps[1:]] == ["/srv/app/", "/srv/app/c", "/srv/e/"]
    assert stage.config.workdir == "/srv/app"


def test_several_sources_need_a_directory_destination():
    with pytest.raises(DockerfileError, match="must end with /"):
        stage_of("FROM scratch\nCOPY a b /dest\n")


def test_run_sees_env_and_only_the_args_it_names():
    text = "FROM scratch\nARG USED=u\nARG UNUSED=n\nENV E=$UNUSED\nUSER 1000\nRUN echo ${USED} $E\nRUN [\"env\"]\n"
    stage = stage_of(text)
    named, exec_form = stage.steps[1:]
    assert isinstance(named, RunStep) and isinstance(exec_form, RunStep)
    assert named.args == (("USED", "u"),)
    assert named.env == (("E", "n"), ("USED", "u"))
    assert named.argv == ("/bin/sh", "-c", "echo ${USED} $E")
    assert named.user == "1000" and named.workdir == "/"
    assert exec_form.args == () and exec_form.shell is None and exec_form.argv == ("env",)


def test_shell_changes_the_argv_of_shell_form_runs():
    stage = stage_of('FROM scratch\nSHELL ["/bin/bash", "-ec"]\nRUN true\n')
    assert stage.steps[1].argv == ("/bin/bash", "-ec", "true")


def test_base_config_is_inherited_and_entrypoint_drops_an_inherited_cmd():
    stage = stage_of("FROM base\nENV PATH=$PATH:/x\nENTRYPOINT [\"/app\"]\n", resolver=base_with_config)
    config = stage.config.as_oci()
    assert config["Env"] == ["PATH=/usr/bin:/x", "HOME=/root"]
    assert config["Entrypoint"] == ["/app"] and "Cmd" not in config
    assert config["WorkingDir"] == "/base"


def test_config_instructions_fill_the_image_config_and_history():
    text = 'FROM scratch\nLABEL a=1 "b c"="d e"\nEXPOSE 80 53/udp\nCMD echo hi\nCOPY x /x\n'
    stage = stage_of(text)
    config = stage.config.as_oci()
    assert config["Labels"] == {"a": "1", "b c": "d e"}
    assert config["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert config["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert [made for _, made in stage.config.history] == [None, None, None, 2]


@pytest.mark.parametrize(
    "text, message",
    [
        ("FROM scratch\nFROM scratch\n", "multi-stage"),
        ("COPY a b\n", "before FROM"),
        ("FROM scratch\nHEALTHCHECK NONE\n", "HEALTHCHECK is not supported"),
        ("FROM scratch\nCOPY --chown=app a /b\n", "numeric"),
        ("FROM scratch\nCOPY --chmod=u+x a /b\n", "octal"),
    ],
)
def test_unsupported_input_is_a_clear_error(text, message):
    with pytest.raises(DockerfileError, match=message):
        stage_of(text)
