"""Property tests: no agent.yaml value can change the shape of the rendered Dockerfile.

For every value that reaches the Dockerfile (name, metadata.version,
description, author, license, runtime, entrypoint, rest.entry, environment
keys and values -> ENV, LABEL and the header comment) and for hostile text
(newlines, \\r, backslashes, quotes, $, {{, U+2028/U+2029/U+0085, NUL, ...)
the manifest loader either refuses it with PackageValidationError, or the
Dockerfile has the same instruction sequence as for a plain value, and what
Docker's parser would read back out of each ENV/LABEL is exactly the value.
Nothing may raise any other exception. Pure: no engine.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from builder import __version__
from builder.core.errors import PackageValidationError
from builder.package.manifest import Manifest, parse_manifest
from builder.plan.dockerfile import drain_seconds, parse_steps, render

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {
    "version": "1.0",
    "name": "plain",
    "display_name": "Plain",
    "description": "plain",
    "author": "plain",
    "license": "MIT",
    "entrypoint": "plain.mod:fn",
    "runtime": "python3.11",
    "metadata": {"version": "1.0"},
}
# every field whose value reaches the Dockerfile, and the few that are only validated
FIELDS = ["name", "metadata.version", "description", "author", "license", "runtime", "entrypoint",
          "rest.entry", "a2a.service", "ui.path", "display_name", "version", "env-key", "env-value"]

HOSTILE = ["\n", "\r", "\r\n", "\\", "\\\n", '"', "'", "`", "$", "${X}", "$X", "$$", "{{", "}}", "{%", "%}",
           "{#", "#", "#> step evil", "\u2028", "\u2029", "\x85", "\x00", "\t", "\x0b", "\x0c", "\x1c", "\x1b",
           "\x7f", "\ufeff", "\u200b", "é", "漢", " ", "=", ":", ".", "-", "_", ";", "&&", "RUN curl evil",
           "\nRUN curl evil", "a", "Z", "0", "9", "src", "x.y:z", "python3.11", "LABEL a=b", "\\$", '\\"']
hostile_text = st.lists(st.sampled_from(HOSTILE) | st.text(max_size=3), max_size=8).map("".join)
values = hostile_text | st.text(max_size=40)

BASE = dict(base_image="agent-image/base:py3.11", index_identity="https://pypi.org/simple/", deps=True,
            editable=True, requirements=True)


def with_value(field: str, value) -> dict:
    data = json.loads(json.dumps(GOOD))
    if field == "env-key":
        data["environment"] = {value: "plain"}
    elif field == "env-value":
        data["environment"] = {"FUZZ": value}
    elif "." in field:
        section, key = field.split(".")
        data.setdefault(section, {})[key] = value
    else:
        data[field] = value
    return data


# --- what Docker's parser makes of the Dockerfile -------------------------------------------

_CONTINUATION = re.compile(r"\\[ \t]*$")


def docker_instructions(text: str) -> list[str]:
    """Instructions as Docker's parser splits them: lines end at \\n only (a trailing \\r is dropped),
    '#' lines and blank lines are skipped, a trailing backslash continues the instruction."""
    out: list[str] = []
    buf: str | None = None
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        stripped = line.lstrip(" \t")
        if stripped.startswith("#") or not stripped.strip():
            continue
        if buf is None:
            buf = ""
        if _CONTINUATION.search(line):
            buf += _CONTINUATION.sub("", line)
            continue
        out.append((buf + line).strip(" \t"))
        buf = None
    assert buf is None, "dangling continuation"
    return out


def docker_words(rest: str) -> list[str]:
    """Split ENV/LABEL arguments into words as Docker does (quotes and backslashes keep a word whole)."""
    words, word, quote, i = [], "", None, 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest) and quote != "'":
            word += rest[i:i + 2]
            i += 2
            continue
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in " \t":
            if word:
                words.append(word)
            word = ""
            i += 1
            continue
        word += ch
        i += 1
    assert quote is None, f"unterminated quote in {rest!r}"
    if word:
        words.append(word)
    return words


def docker_value(raw: str) -> str:
    """The value Docker's shell lexer reads from one key=VALUE word; fails on an unescaped $ (expansion)."""
    out, i, quote = [], 0, None
    while i < len(raw):
        ch = raw[i]
        if quote == "'":
            if ch == "'":
                quote = None
            else:
                out.append(ch)
        elif ch == "$":
            raise AssertionError(f"unescaped $ in {raw!r}: Docker would expand it")
        elif quote == '"':
            if ch == '"':
                quote = None
            elif ch == "\\" and i + 1 < len(raw) and raw[i + 1] in '"$\\':
                i += 1
                out.append(raw[i])
            else:  # in double quotes any other backslash is literal
                out.append(ch)
        elif ch in "\"'":
            quote = ch
        elif ch == "\\" and i + 1 < len(raw):
            i += 1
            out.append(raw[i])
        else:
            out.append(ch)
        i += 1
    assert quote is None, f"unterminated quote in {raw!r}"
    return "".join(out)


def pairs(instruction: str) -> dict[str, str]:
    keyword, _, rest = instruction.partition(" ")
    result = {}
    for word in docker_words(rest):
        key, eq, raw = word.partition("=")
        assert eq, f"{keyword} word without '=': {word!r}"
        assert key not in result, f"{keyword} sets {key} twice"
        result[key] = docker_value(raw)
    return result


# --- the property -----------------------------------------------------------------------

_BASELINES: dict[tuple[int, str], tuple[list[str], tuple]] = {}


def baseline(env_count: int, installer: str):
    """The Dockerfile of a plain manifest with ENV_COUNT environment entries."""
    key = (env_count, installer)
    if key not in _BASELINES:
        data = json.loads(json.dumps(GOOD))
        if env_count:
            data["environment"] = {f"PLAIN{i}": "plain" for i in range(env_count)}
        text = render(parse_manifest(yaml.safe_dump(data)), installer=installer, **BASE).text
        _BASELINES[key] = (docker_instructions(text), parse_steps(text))
    return _BASELINES[key]


def check_rendering(m: Manifest, installer: str) -> None:
    try:
        rendered = render(m, installer=installer, **BASE)
    except PackageValidationError:
        # dq's own guard: acceptable, but the manifest loader should have said so first
        raise AssertionError(f"the manifest accepted a value the renderer refuses: {m!r}") from None
    text = rendered.text
    got = docker_instructions(text)
    want, (want_steps, want_instr) = baseline(len(m.environment), installer)

    # the same instruction sequence, whichever parser reads it
    assert [i.split(" ", 1)[0] for i in got] == [i.split(" ", 1)[0] for i in want], text
    steps, instructions = parse_steps(text)
    assert steps == want_steps, text
    assert [i.split(" ", 1)[0] for i in instructions] == [i.split(" ", 1)[0] for i in want_instr]
    assert len(instructions) == len(got)

    # instructions that carry no manifest value are byte-for-byte the plain ones
    value_env = [i for i in got if i.startswith("ENV ") and not i.startswith("ENV VIRTUAL_ENV=")
                 and not i.startswith("ENV AGENT_NAME=")]
    for g, w in zip(got, want):
        if not (g.startswith("LABEL ") or g.startswith("ENV AGENT_NAME=") or g in value_env):
            assert g == w, (g, w)

    # and Docker reads back exactly the manifest's values: no expansion, no extra key
    config = pairs(next(i for i in got if i.startswith("ENV AGENT_NAME=")))
    assert config == {"AGENT_NAME": m.name, "AGENT_VERSION": m.version, "AGENT_ENTRYPOINT": m.entrypoint or "",
                      "AGENT_REST_ENTRY": m.rest_entry or "", "REST_PORT": "8080", "BASE_PATH": "/"}
    assert pairs(next(i for i in got if i.startswith("LABEL "))) == {
        **m.labels, "io.pixell.agent-image.builder": __version__,
        "io.pixell.agent.drain-seconds": str(drain_seconds(m.environment))}
    env = {}
    for instr in value_env:
        env.update(pairs(instr))
    assert env == m.environment

    # the header comment holds name and version; it must stay one comment line
    first = text.split("\n", 1)[0]
    assert first.startswith("# agent-image ") and m.name in first and m.version in first


def load(text: str) -> Manifest | None:
    try:
        return parse_manifest(text)
    except PackageValidationError:
        return None  # refused: fine


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=values, installer=st.sampled_from(["pip", "uv"]))
@example(field="env-key", value="A\n", installer="pip")            # '$' matched before a trailing newline
@example(field="env-value", value="a\u2028RUN curl evil", installer="pip")
@example(field="description", value="a\x85b", installer="pip")
@example(field="metadata.version", value="1.0\nRUN curl evil", installer="pip")
@example(field="description", value='say "hi" \\ for $5 {{ name }} ${X}', installer="uv")
def test_any_value_is_refused_or_rendered_inert(field, value, installer):
    # ASCII-only YAML: every hostile character travels as a double-quoted escape and arrives intact
    # (written raw, PyYAML itself folds U+0085/U+2028 into line breaks)
    text = yaml.safe_dump(with_value(field, value))
    assert yaml.safe_load(text) == with_value(field, value)
    m = load(text)
    if m is None:
        return
    # accepted: the loader kept the value as written ...
    if field == "env-key":
        assert m.environment == {value: "plain"}
    elif field == "env-value":
        assert m.environment == ({"FUZZ": value} if "FUZZ" not in m.environment_refs else {})
    elif field == "runtime":
        assert m.runtime == (value or "python3.11")  # an empty runtime means the default
    elif field in ("name", "description", "author", "license", "entrypoint"):
        assert getattr(m, field) == value
    elif field == "metadata.version":
        assert m.version == value
    elif field == "rest.entry":
        assert m.rest_entry == value
    # ... and it changes nothing but the quoted value
    check_rendering(m, installer)


@SETTINGS
@given(field=st.sampled_from([f for f in FIELDS if f not in ("env-key", "env-value")] + ["environment"]),
       raw=values)
def test_raw_yaml_text_is_refused_or_rendered_inert(field, raw):
    """The value pasted into agent.yaml as written (plain scalars, broken quoting, stray colons...)."""
    data = with_value(field, "PLACEHOLDER") if field != "environment" else {**GOOD, "environment": "PLACEHOLDER"}
    text = yaml.safe_dump(data).replace("PLACEHOLDER", raw)
    m = load(text)
    if m is not None:
        check_rendering(m, "pip")


scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
           | st.dates().map(str) | st.binary(max_size=8))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5) | st.integers() | st.none(), inner, max_size=3),
                      max_leaves=8)


@SETTINGS
@given(field=st.sampled_from(FIELDS + ["environment", "metadata", "rest", "capabilities", "dependencies"]),
       value=nested)
def test_any_type_is_refused_or_rendered_inert(field, value):
    """Wrong types anywhere (lists, mappings, null, bools, floats, bytes): PackageValidationError, no crash."""
    if field == "env-key" and not isinstance(value, (str, int, bool, type(None), float, bytes)):
        return  # a YAML mapping key must be hashable: not an agent.yaml one can write
    data = with_value(field, value) if field not in ("environment", "metadata", "rest", "capabilities",
                                                     "dependencies") else {**GOOD, field: value}
    m = load(yaml.safe_dump(data, allow_unicode=True))
    if m is not None:
        check_rendering(m, "pip")


@SETTINGS
@given(text=st.text(max_size=300) | st.lists(st.sampled_from(
    ["name: a\n", "metadata:\n", "  version: 1\n", "- x\n", "&a [1]\n", "*a\n", "[", "]", "{", "}", ": ", "? ",
     "!!binary ", "!!python/name:os.system ", "!!timestamp ", "2024-13-45", "9" * 5000, "\t", "\x00", "\ufeff",
     "%YAML 1.1\n", "---\n", "...\n", "'", '"', "|\n", ">\n", "<<: *a\n"]), max_size=20).map("".join))
def test_any_agent_yaml_text_fails_only_as_validation(text):
    m = load(text)
    if m is not None:
        check_rendering(m, "pip")


def test_baseline_parsers_agree():
    """The two parsers this file relies on agree on the plain Dockerfile, continuations included."""
    for installer in ("pip", "uv"):
        docker, (steps, instructions) = baseline(1, installer)
        assert len(docker) == len(instructions) == len(steps)
        assert [d.split()[0] for d in docker] == [i.split()[0] for i in instructions]
    assert docker_instructions("FROM x\nRUN a \\\n  b\n# c\nRUN d\\\r\ne\n") == ["FROM x", "RUN a   b", "RUN de"]
    assert docker_value('"a\\"b\\\\c\\$d\\n"') == 'a"b\\c$d\\n'
    with pytest.raises(AssertionError):
        docker_value('"$HOME"')
