"""Render the per-agent Dockerfile. Pure: text in, text out, no engine.

Rendering goes through one Jinja ``Environment`` with ``StrictUndefined``
so a missing value is an error, not an empty string in a RUN line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

import jinja2

from builder import __version__
from builder.core import depsenv
from builder.core.errors import PackageValidationError
from builder.core.labels import ABI_LABEL, parse_abi
from builder.core.resources import resource
from builder.package.manifest import ENV_KEY_RE, Manifest

TEMPLATES = resource("templates")

# what pip inside the build sees; the proxy behind http_proxy serves it
PIP_INDEX_HOST = "agent-image-index.invalid"
PIP_INDEX_URL = f"http://{PIP_INDEX_HOST}/simple/"
INSTALLERS = ("pip", "uv")
# the serving shim's SIGTERM drain window (serve_core.DRAIN_SECONDS), under
# ECS's 30 s stopTimeout; recorded in a label for the task definition
DRAIN_SECONDS = 25
UV_VERSION = "0.13.9"  # installed from the index into /opt/agent-image/tools with --installer uv
# A current pip for the dependency layer, in the base under /opt/agent-image/tools/pip (the venv's own
# pip, which the agent's editable install and the runtime use, stays as `python -m venv` made it):
# pip 26 resolves and fetches a real agent's tree in 4.3 s where Debian 12's pip 23.0.1 takes 7.4
# (bench/proxy_stream.py --sandbox). pip 26 needs Python 3.10+; 25.3 is the last for 3.9.
TOOL_PIP_DIR = "/opt/agent-image/tools/pip"
# The venv's distributions, written by every install step into the image (the last one's
# listing is the image's): name, version, licence, direct_url.json, where it is (/app: the agent). The SBOM reads it back
# (builder/ship/sbom.py) without running anything of the image. -I: not the cwd (/app). A name
# found twice (an editable install's dist-info, and the egg-info its build left in /app) is the
# one with direct_url.json: the installed one.
DISTS_PATH = "/opt/agent-image/dists.json"
_LIST_CODE = ("import json, os, re, importlib.metadata as m; d = {}; "
              "[d.setdefault(re.sub(r\"[-_.]+\", \"-\", x.metadata[\"Name\"]).lower(), [x.metadata[\"Name\"], "
              "x.version, (x.metadata.get(\"License-Expression\") or x.metadata.get(\"License\") or \"\")[:200], "
              "[c for c in x.metadata.get_all(\"Classifier\") or [] if c.startswith(\"License ::\")], "
              "x.read_text(\"direct_url.json\"), str(x.locate_file(\"\"))]) for x in sorted(m.distributions(), key=lambda x: "
              "x.read_text(\"direct_url.json\") is None) if x.metadata[\"Name\"]]; ")
LIST_DISTS = ("python -I -c '" + _LIST_CODE + "os.makedirs(os.path.dirname(\"" + DISTS_PATH + "\"), exist_ok=True); "
              "json.dump(sorted(d.values()), open(\"" + DISTS_PATH + "\", \"w\"))'")
# the same listing on stdout, for an image no install step wrote one into (python -I -c LIST_DISTS_STDOUT)
LIST_DISTS_STDOUT = _LIST_CODE + "import sys; json.dump(sorted(d.values()), sys.stdout)"
# After the dependency step's install no interpreter processes the venv's site (-S, the venv named):
# a wheel's .pth would run then, and that step must run no code of what it installs when the proxy
# served it wheels alone (DEPS_WHEELS_LABEL: a near twin may build on that image, builder/build/delta.py).
_VENV_SITE = "glob.glob(\"/opt/venv/lib/python*/site-packages\")"
# and nothing is looked up in the venv's bin, which a wheel writes: $py (core/depsenv.py BASE_PYTHON)
SYSTEM_PATH = depsenv.BASE_PYTHON
DEPS_LIST_DISTS = LIST_DISTS.replace("python -I -c 'import ", "\"$py\" -I -S -c 'import glob, ").replace(
    "m.distributions()", f"m.distributions(path={_VENV_SITE})")
# The names pip marked REQUESTED (the lines' own, not what they pulled in), canonical: the dependency
# step writes them next to the listing, and a near twin must mark the same (builder/build/delta.py).
REQUESTED_PATH = "/opt/agent-image/deps-requested.json"
_REQUESTED_CODE = ("import glob, json, re, importlib.metadata as m; r = sorted({re.sub(r\"[-_.]+\", \"-\", "
                   "x.metadata[\"Name\"]).lower() for x in m.distributions(path=glob.glob(\"/opt/venv/lib/python*/"
                   "site-packages\")) if x.metadata[\"Name\"] and x.read_text(\"REQUESTED\") is not None}); ")
LIST_REQUESTED = "\"$py\" -I -S -c '" + _REQUESTED_CODE + "json.dump(r, open(\"" + REQUESTED_PATH + "\", \"w\"))'"
REQUESTED_STDOUT = _REQUESTED_CODE + "import sys; json.dump(r, sys.stdout)"
# The sha256 of the wheel each distribution of the dependency step came from (pip's --report), sorted by
# name: a near twin shares a distribution's files only when its own resolve chose the same file.
WHEELS_PATH = "/opt/agent-image/deps-wheels.json"
DEPS_REPORT = "/tmp/.agent-image-deps-report.json"
WHEELS_CODE = ("import json, re; h = {re.sub(r\"[-_.]+\", \"-\", i[\"metadata\"][\"name\"]).lower(): "
               "((i.get(\"download_info\") or {}).get(\"archive_info\") or {}).get(\"hashes\", {}).get(\"sha256\", \"\") "
               "for i in json.load(open(\"" + DEPS_REPORT + "\")).get(\"install\") or []}; ")
LIST_WHEELS = ("\"$py\" -I -S -c 'import os; " + WHEELS_CODE + "json.dump(dict(sorted(h.items())), open(\""
               + WHEELS_PATH + "\", \"w\")); os.remove(\"" + DEPS_REPORT + "\")'")
# Bytecode while the dependency step's installer still unpacks (templates/agent.Dockerfile.j2):
# started in the background before it, this compiles each distribution whose dist-info/RECORD
# appears (pip writes it last, atomically, once the wheel's files are in place) on the core the
# installer leaves idle, and stops between two files once the step touches COMPILE_DONE. The
# step's own pass after the install then compiles what is left or changed since (compileall
# checks each .pyc's source mtime and size), so this one only saves time, whatever the
# installer: it prints nothing and its status is ignored. force: a file a later distribution
# overwrote within the same second and at the same size (what that check cannot see) is compiled
# again with that distribution's RECORD, as pip's own per-wheel compile does. -I, and
# started before the install: nothing the lines install runs in it.
STAMP = "/tmp/.agent-image-stamp"  # each install step compiles the .py files newer than this
COMPILE_DONE = STAMP + ".done"
COMPILE_WATCH = (
    "python -I -c 'import compileall as c, csv, glob, os, sys, time; sys.stderr = open(os.devnull, \"w\"); "
    "t = os.stat(\"" + STAMP + "\").st_mtime; seen = set(); "
    "done = lambda: os.path.exists(\"" + COMPILE_DONE + "\"); "
    "new = lambda: [r for r in sorted(glob.glob(\"/opt/venv/lib/python*/site-packages/*.dist-info/RECORD\")) "
    "if r not in seen and os.stat(r).st_mtime >= t]; "
    "py = lambda r: [p for p in (os.path.normpath(os.path.join(os.path.dirname(os.path.dirname(r)), w[0])) "
    "for w in csv.reader(open(r)) if w) if p.endswith(\".py\") and p.startswith(\"/opt/venv/lib/\")]; "
    "go = lambda r: seen.add(r) or [c.compile_file(p, quiet=2, force=True) for p in py(r) if not done()]; "
    "[go(r) for _ in iter(lambda: done() or time.sleep(0.05), True) for r in new()]'"
)
# how the dependency step starts it, before the install (which the step's log and progress line show without it)
COMPILE_START = "{ " + COMPILE_WATCH + " & } && w=$! && { "


def tool_pip_version(python: str) -> str:
    """The pip the base carries for PYTHON ("major.minor"); "" for one older than 3.9."""
    major, minor = (int(x) for x in python.split(".")[:2])
    return "26.3" if (major, minor) >= (3, 10) else "25.3" if (major, minor) == (3, 9) else ""

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def dq(value: object) -> str:
    """Quote a value for a Dockerfile ENV/ARG; refuse anything that ends a line."""
    text = "" if value is None else str(value)
    if _UNSAFE.search(text):
        raise PackageValidationError(
            f"value {text[:40]!r} contains a newline or control character and cannot go into the Dockerfile",
            hint="Use single-line printable values in agent.yaml.")
    # JSON escaping covers \ and "; $ would expand in ENV, so escape it too
    return json.dumps(text, ensure_ascii=False).replace("$", "\\$")


def envkey(value: str) -> str:
    if not ENV_KEY_RE.match(value):
        raise PackageValidationError(f"environment key {value!r} is not a valid variable name",
                                     field=f"environment.{value}")
    return value


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["dq"] = dq
    env.filters["envkey"] = envkey
    return env


_ENV = _environment()


# the instructions that add a layer in the classic builder (the others change the config only)
LAYER_INSTRUCTIONS = ("RUN", "COPY", "ADD")


@dataclass(frozen=True)
class Rendered:
    text: str
    steps: tuple[str, ...]  # step name of each instruction, in order (Step N -> steps[N-1])
    instructions: tuple[str, ...]

    def step_name(self, number: int) -> str:
        """Name of 'Step N/M' in the engine's log (labels the engine adds come last)."""
        return self.steps[number - 1] if 1 <= number <= len(self.steps) else "labels"


def parse_steps(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Instruction list of a Dockerfile with the '#> step NAME' marker that precedes each."""
    steps: list[str] = []
    instructions: list[str] = []
    current = "base"
    continued = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#> step "):
            current = line[len("#> step "):].strip()
            continue
        if continued:
            continued = line.endswith("\\")
            instructions[-1] += " " + line.rstrip("\\").strip()
            continue
        if not line or line.startswith("#"):
            continue
        steps.append(current)
        instructions.append(line.rstrip("\\").strip())
        continued = line.endswith("\\")
    return tuple(steps), tuple(instructions)


def drain_seconds(environment: dict[str, str]) -> int:
    """The drain window the image will use: agent.yaml's AGENT_DRAIN_SECONDS when
    it is a whole number the shim accepts, else the shim's default."""
    value = str(environment.get("AGENT_DRAIN_SECONDS", "")).strip()
    return int(value) if value.isdigit() and int(value) <= 3600 else DRAIN_SECONDS


def check_installer(installer: str) -> None:
    if installer not in INSTALLERS:
        raise PackageValidationError(f"unknown installer {installer!r}", field="--installer",
                                     hint=f"Use one of: {', '.join(INSTALLERS)}.")


def render(
    manifest: Manifest,
    *,
    base_image: str,
    index_identity: str,
    deps: bool,
    editable: bool,
    requirements: bool,
    installer: str = "pip",
    ca_bundle: bool = False,
    base_has_venv: bool = True,
    base_has_uv: bool = False,
    base_has_runtime: bool = False,
    require_hashes: bool = False,
    source_requirements: bool = False,
    base_labels: dict[str, str] | None = None,
    deps_image: str = "",
    pip_report: bool = False,
    tool_pip: bool = False,
    template: str = "agent.Dockerfile.j2",
    provenance: Mapping[str, str] | None = None,
) -> Rendered:
    """Render the agent Dockerfile. ``index_identity`` must carry no credentials.
    With ``deps_image`` the Dockerfile starts FROM it and leaves out what it holds
    (the venv, uv and the dependency layer). ``pip_report``: the base's pip has
    ``--report``, so the seed's second pass can be skipped when it would change nothing."""
    check_installer(installer)
    text = _ENV.get_template(template).render(
        builder_version=__version__,
        name=manifest.name,
        version=manifest.version,
        base_image=base_image,
        index_identity=index_identity,
        pip_index_url=PIP_INDEX_URL,
        pip_trusted_host=PIP_INDEX_HOST,
        deps=deps,
        editable=editable,
        requirements=requirements,
        installer=installer,
        ca_bundle=ca_bundle,
        base_has_venv=base_has_venv,
        base_has_uv=base_has_uv,
        base_has_runtime=base_has_runtime,
        require_hashes=require_hashes,
        source_requirements=source_requirements,
        uv_version=UV_VERSION,
        entrypoint=manifest.entrypoint or "",
        rest_entry=manifest.rest_entry or "",
        environment=manifest.environment,
        labels=manifest.labels,  # one LABEL instruction, not one engine step per label
        base_labels=base_labels or {},  # what the image records of its base (for rebase)
        provenance=provenance or {},  # OCI source/revision/created (builder/plan/provenance.py)
        drain_seconds=drain_seconds(manifest.environment),
        deps_image=deps_image,
        pip_report=pip_report,  # the base's pip writes --report (22.2+)
        tool_pip=tool_pip and installer == "pip",  # the base carries a current pip for the dependency layer
        tool_pip_dir=TOOL_PIP_DIR,
        list_dists=LIST_DISTS,
        list_requested=LIST_REQUESTED,
        deps_list_dists=DEPS_LIST_DISTS,
        system_path=SYSTEM_PATH,
        deps_report=DEPS_REPORT,
        list_wheels=LIST_WHEELS,
        stamp=STAMP,
        compile_start=COMPILE_START,
        compile_done=COMPILE_DONE,
        deps_env_cmd=depsenv.COMMAND,  # the dependency image's last, tiny layer (builder/core/depsenv.py)
    )
    steps, instructions = parse_steps(text)
    return Rendered(text=text, steps=steps, instructions=instructions)


def deps_dockerfile(agent_dockerfile: str) -> Rendered:
    """The dependency image's Dockerfile: the agent Dockerfile (rendered without
    ``deps_image``) from its FROM up to the agent's own steps. Nothing in it names
    the agent, so every agent with the same lines renders the same text."""
    head = agent_dockerfile.split("#> step config", 1)[0]
    head = head[head.find("#> step base"):]
    steps, instructions = parse_steps(head)
    if "deps" not in steps:
        raise ValueError("the Dockerfile has no dependency step")
    return Rendered(text=head, steps=steps, instructions=instructions)


def pip_reports(base_labels: dict[str, str]) -> bool:
    """Does the base's pip (its ABI label) write ``--report`` (pip 22.2+)?"""
    abi = parse_abi(base_labels.get(ABI_LABEL))
    try:
        return tuple(int(x) for x in abi.get("pip", "0").split(".")[:2]) >= (22, 2)
    except ValueError:
        return False
