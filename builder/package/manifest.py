"""agent.yaml text -> a frozen, validated ``Manifest``. No I/O here.

Every value that can reach the Dockerfile or an image reference is checked
against a strict pattern, so a version like ``1.0\\nRUN curl evil`` is
refused with the field named, never rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from builder.core.errors import PackageValidationError
from builder.core.labels import AGENT_NAME_LABEL, AGENT_VERSION_LABEL, ENV_REFS_LABEL
from builder.core.pythons import PREVIEW_ENV, PREVIEW_RUNTIMES
from builder.core.refs import CACHE_TAG, INPUT_TAG_PREFIX, REFERRER_TAG_PREFIX, builder_tag

# \Z, not $: '$' also matches before a trailing newline, so an environment key
# "A\n" passed ENV_KEY_RE and split its ENV instruction in two
NAME_RE = re.compile(r"^[a-z][a-z0-9-]*\Z")
# a Docker tag: what the version becomes in REGISTRY/NAME:VERSION
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
CALLABLE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# C1 controls and U+2028/U+2029 too: str.splitlines (parse_steps, editors, log
# readers) breaks lines at U+0085/U+2028/U+2029, so they would split an instruction
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ENV_REF = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_]")

# runtime -> Python version of the shared base it builds FROM: what pixell-kit allows
# (the next ones are core.pythons.PREVIEW_RUNTIMES, accepted only when asked for)
SUPPORTED_RUNTIMES = {"python3.11": "3.11", "python3.9": "3.9"}
KNOWN_UNSUPPORTED = ("node18", "node20", "go1.21")
REQUIRED = ("name", "display_name", "description", "author", "license")
MAX_YAML_BYTES = 256 * 1024
MAX_DEPTH = 64  # nested collections: composing is recursive, so deep nesting hit RecursionError
MAX_NAME_LEN = 63


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    display_name: str
    description: str
    author: str
    license: str
    runtime: str
    python: str
    entrypoint: str | None = None
    rest_entry: str | None = None
    a2a_service: str | None = None
    ui_path: str | None = None
    format_version: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    # environment values that are ${...} references: resolved at deploy time
    environment_refs: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        """OCI and io.pixell labels every agent image carries."""
        return {
            "org.opencontainers.image.title": self.name,
            "org.opencontainers.image.version": self.version,
            "org.opencontainers.image.description": self.description,
            "org.opencontainers.image.authors": self.author,
            "org.opencontainers.image.licenses": self.license,
            AGENT_NAME_LABEL: self.name,
            AGENT_VERSION_LABEL: self.version,
            "io.pixell.agent.entrypoint": self.entrypoint or "",
            "io.pixell.agent.runtime": self.runtime,
            "io.pixell.agent.rest-entry": self.rest_entry or "",
            # names only (the values are the deploy's secrets): what an ECS task definition must map
            ENV_REFS_LABEL: ",".join(self.environment_refs),
        }


# what the image itself sets so the agent's venv and the serving shim work
RESERVED_ENV = frozenset({"PATH", "VIRTUAL_ENV", "PYTHONHOME", "AGENT_NAME", "AGENT_VERSION", "AGENT_ENTRYPOINT",
                          "AGENT_REST_ENTRY"})


def _bad(message: str, field_name: str, hint: str | None = None) -> PackageValidationError:
    return PackageValidationError(f"agent.yaml: {message}", field=field_name, hint=hint)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors fail as YAML errors with a line number.

    SafeLoader's constructors raise bare Python errors for a tagged or
    resolved scalar they cannot convert: ValueError (an int past the
    4300-digit limit, the date 2024-13-45), AttributeError (`!!timestamp x`),
    KeyError (`!!bool x`), IndexError (`!!int ''`).
    """

    def construct_yaml_number_as_written(self, node):
        # every field we read is text: `version: 1.10` must stay "1.10", not
        # become the float 1.1 (and tag the image 1.1)
        return self.construct_scalar(node)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot load the value {str(node.value)[:40]!r}: {exc}", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_number_as_written)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_number_as_written)


def _load_yaml(text: str) -> Any:
    # Anchors and aliases are refused outright: an alias is cheap to write and
    # explodes when walked (billion laughs), and the runtime and `pixell`
    # re-read this file with loaders we do not control. No agent.yaml needs them.
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1
                what = f"alias '*{event.anchor}'" if isinstance(event, yaml.AliasEvent) else f"anchor '&{event.anchor}'"
                raise PackageValidationError(
                    f"agent.yaml: line {line} uses the YAML {what}; anchors and aliases are not allowed",
                    field="agent.yaml", line=line, hint="Write the value out in full where it is used.")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise _bad(f"nests collections deeper than {MAX_DEPTH} levels at line {mark.line + 1}",
                               "agent.yaml", "Flatten the structure.")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise PackageValidationError(
            f"agent.yaml is not valid YAML{where}: {getattr(exc, 'problem', exc)}",
            field="agent.yaml", line=(mark.line + 1) if mark else None,
            hint="Fix the YAML syntax and rebuild the package.") from None


def _str_field(data: dict, key: str, *, required: bool, path: str | None = None,
               max_len: int = 1024) -> str | None:
    name = path or key
    value = data.get(key)
    if value is None:
        if required:
            raise _bad(f"required field '{name}' is missing", name, f"Add '{name}' to agent.yaml.")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(f"field '{name}' must be a string, got {type(value).__name__}", name)
    value = str(value)
    if _CONTROL.search(value):
        raise _bad(f"field '{name}' contains a newline or control character", name,
                   "Use a single line of printable text.")
    if _SURROGATE.search(value):  # YAML's "\ud800" escape: no UTF-8 for it, so no Dockerfile or label
        raise _bad(f"field '{name}' contains a lone surrogate ({_SURROGATE.search(value).group(0)!r})", name,
                   "Write the character itself, or a \\U escape of a real one.")
    if len(value) > max_len:
        raise _bad(f"field '{name}' is longer than {max_len} characters", name)
    if required and not value.strip():
        raise _bad(f"field '{name}' is empty", name)
    return value


def _callable(data: dict, key: str, path: str) -> str | None:
    value = _str_field(data, key, required=False, path=path, max_len=256)
    if value is not None and not CALLABLE_RE.match(value):
        raise _bad(f"'{path}' must look like 'package.module:function', got {value!r}", path,
                   "Use dotted Python identifiers, a colon, then the function name.")
    return value


def _section(data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"field '{key}' must be a mapping, got {type(value).__name__}", key)
    return value


def parse_manifest(text: str, preview: Mapping[str, str] | None = None) -> Manifest:
    """Validate agent.yaml text and return the Manifest, or raise PackageValidationError.

    PREVIEW: runtimes pixell-kit does not allow yet that this run accepts (core.pythons.preview_runtimes)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise _bad(f"is larger than {MAX_YAML_BYTES // 1024} KiB", "agent.yaml")
    data = _load_yaml(text)
    if not isinstance(data, dict):
        raise _bad(f"must be a mapping of fields, got {type(data).__name__}", "agent.yaml",
                   "Start agent.yaml with 'name: my-agent' and the other fields.")

    values = {k: _str_field(data, k, required=True) for k in REQUIRED}
    name = values["name"]
    if not NAME_RE.match(name) or len(name) > MAX_NAME_LEN:
        raise _bad(f"'name' must match ^[a-z][a-z0-9-]*$ (at most {MAX_NAME_LEN} chars), got {name!r}",
                   "name", "Use lowercase letters, digits and dashes, starting with a letter.")

    metadata = _section(data, "metadata")
    version = _str_field(metadata, "version", required=True, path="metadata.version", max_len=128)
    if not VERSION_RE.match(version):
        raise _bad(f"'metadata.version' {version!r} cannot be an image tag", "metadata.version",
                   "Use letters, digits, '.', '_' and '-' only (e.g. 1.2.0).")
    if builder_tag(version):  # it would move the builder's own tag: the layer cache, a skip marker, a signature
        raise _bad(f"'metadata.version' {version!r} is a tag agent-image writes itself ({CACHE_TAG!r}, "
                   f"'{INPUT_TAG_PREFIX}...' or '{REFERRER_TAG_PREFIX}...')", "metadata.version",
                   "Use a release version such as 1.2.0.")

    runtime = _str_field(data, "runtime", required=False) or "python3.11"
    runtimes = {**SUPPORTED_RUNTIMES, **(preview or {})}  # a preview runtime only when asked for by name
    if runtime not in runtimes:
        known = " (a valid pixell runtime, but not one agent-image builds yet)" if runtime in KNOWN_UNSUPPORTED else ""
        if runtime in PREVIEW_RUNTIMES:
            known = (f" (pixell-kit does not allow it yet; {PREVIEW_ENV}={runtime} builds it anyway, "
                     "for trying the next Python before the kit allows it)")
        raise _bad(f"runtime {runtime!r} is not supported{known}", "runtime",
                   f"Use one of: {', '.join(SUPPORTED_RUNTIMES)}.")

    entrypoint = _callable(data, "entrypoint", "entrypoint")
    rest_entry = _callable(_section(data, "rest"), "entry", "rest.entry")
    a2a_service = _callable(_section(data, "a2a"), "service", "a2a.service")
    ui_path = _str_field(_section(data, "ui"), "path", required=False, path="ui.path")
    if not entrypoint and not (rest_entry or a2a_service or ui_path):
        raise _bad("'entrypoint' is required when no surface (rest, a2a, ui) is set", "entrypoint",
                   "Add 'entrypoint: src.main:handler' or a rest/a2a/ui section.")

    env_raw = _section(data, "environment")
    environment: dict[str, str] = {}
    refs: list[str] = []
    for key, value in env_raw.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise _bad(f"environment key {key!r} is not a valid variable name", f"environment.{key}")
        if key in RESERVED_ENV:
            raise _bad(f"environment key {key!r} is set by the image and cannot be overridden",
                       f"environment.{key}", "Remove it: the image points it at the agent's venv and serving code.")
        sval = _str_field(env_raw, key, required=False, path=f"environment.{key}", max_len=4096)
        if sval is None:
            continue
        if _ENV_REF.search(sval):
            refs.append(key)  # a ${...} reference: the runtime fills it at deploy time
        else:
            environment[key] = sval

    caps = data.get("capabilities") or []
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise _bad("'capabilities' must be a list of strings", "capabilities")
    deps = data.get("dependencies") or []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise _bad("'dependencies' must be a list of strings", "dependencies")

    fmt = data.get("version")
    return Manifest(
        name=name, version=version, display_name=values["display_name"],
        description=values["description"], author=values["author"], license=values["license"],
        runtime=runtime, python=runtimes[runtime], entrypoint=entrypoint,
        rest_entry=rest_entry, a2a_service=a2a_service, ui_path=ui_path,
        format_version=str(fmt) if fmt is not None else None,
        environment=environment, environment_refs=tuple(refs), capabilities=tuple(caps),
    )
