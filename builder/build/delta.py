"""A near twin's dependency image: a pushed sibling's install, plus what it lacks.

One line added to a pushed agent's requirements is a new dependency key, and built whole it
reinstalls and recompiles every distribution, then uploads it all again (issue 24's near
twin). Here, in the build sandbox behind the index proxy as any dependency step, pip resolves
the lines (--dry-run --report: pip's own reading of them), and builder/build/deltarun.py picks
the pushed dependency image of the same family (base, index, installer, reader, repository,
builder) whose every distribution is in that set at the same version and requested the same
way, installs only the rest, and writes their files as one layer. builder/ship/deltaimage.py
then writes the new dependency image in the registry: the sibling's install layers, this
layer, the sibling's environment record; and the agent is appended there as for a twin.

Taken only where that image equals what the dependency step would install, as far as pip
reads the lines: wheels from the index (no sdist, no URL), nothing of the base replaced,
nothing that changes what the package step sees (builder/core/depsenv.py), pip as installer,
no --require-hashes, the build's own CPU. Anything else builds the dependency image whole.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.core import depsenv
from builder.core.errors import PackageLoadError
from builder.plan.context import build_context
from builder.plan.dockerfile import (COMPILE_START, DISTS_PATH, LIST_DISTS_STDOUT, REQUESTED_PATH,
                                     REQUESTED_STDOUT, TOOL_PIP_DIR, WHEELS_PATH, Rendered, parse_steps)

log = structlog.get_logger("agent_image")

SCRIPT = Path(__file__).with_name("deltarun.py")
OUT = "/opt/agent-image/delta-out"            # deltarun.OUT
_REQS = " -r /opt/agent-image/deps/requirements-deps.txt"
_PIP = "pip install --no-compile"
LAYER_MAX_BYTES = 512 << 20                   # the new distributions' files: a near twin adds a few
# what the layer may hold: the venv, the lines' files, the two listings (deltarun.py writes no other)
_UNDER = ("opt/venv/", "opt/agent-image/deps/")
_EXACT = (DISTS_PATH.lstrip("/"), REQUESTED_PATH.lstrip("/"), WHEELS_PATH.lstrip("/"))
_ALLOWED = (*_UNDER, *_EXACT)
_OPAQUE = "opt/agent-image/deps/.wh..wh..opq"  # deltarun.py's: the sibling's lines' folder goes
_MAX_MEMBERS = 200_000


@dataclass(frozen=True)
class Sibling:
    """A pushed dependency image of the family (builder/ship/deltaimage.py), as deltarun.py reads it."""
    ref: str                    # REPO@DIGEST
    dists: dict[str, str]       # name -> version (the listing label)
    requested: list[str]
    listing: list
    hashes: dict[str, str]      # name -> sha256 of its wheel (DEPS_HASHES_LABEL)

    def spec(self) -> dict:
        return {"ref": self.ref, "dists": self.dists, "requested": self.requested, "listing": self.listing,
                "hashes": self.hashes}


@dataclass(frozen=True)
class Delta:
    """What the delta step made: the sibling it builds on, what it added, the layer (uncompressed tar)."""
    sibling: str
    new: list[str]
    layer: bytes
    listing: str                # the merged listing (DISTS_PATH's JSON): the new image's label
    requested: str
    hashes: str                 # WHEELS_PATH's JSON


def install_command(deps: Rendered) -> str | None:
    """The dependency step's installer command (pip and its flags), or None when the step is not the one
    deltarun.py knows (COMPILE_START, then the command, then the lines' file)."""
    run = next((i for s, i in zip(deps.steps, deps.instructions) if s == "deps" and i.startswith("RUN ")), "")
    if COMPILE_START not in run or _REQS not in run:
        return None
    command = run.split(COMPILE_START, 1)[1].split(_REQS, 1)[0]
    # pip's two forms in the template (the base's pip, or the current one the base carries), and no other
    return command if command in (_PIP, f"PYTHONPATH={TOOL_PIP_DIR} python -m {_PIP}") else None


def dockerfile(deps: Rendered) -> Rendered:
    """The dependency Dockerfile with its install steps replaced by deltarun.py."""
    head = deps.text.split("#> step deps", 1)[0]
    # one COPY for the lines' files and the step's own (the context holds nothing else)
    text = (head + "#> step deps\nCOPY .agent-image/ /opt/agent-image/\n"
            "RUN python -I /opt/agent-image/delta/deltarun.py\n")
    steps, instructions = parse_steps(text)
    return Rendered(text=text, steps=steps, instructions=instructions)


def context(rendered: Rendered, generated: dict[str, bytes], install: str, siblings: list[Sibling]):
    spec = {"install": install, "args": _REQS.strip(), "fingerprint": depsenv.FINGERPRINT_SCRIPT,
            "list_code": LIST_DISTS_STDOUT, "requested_code": REQUESTED_STDOUT, "dists_path": DISTS_PATH,
            "requested_path": REQUESTED_PATH, "wheels_path": WHEELS_PATH, "siblings": [s.spec() for s in siblings]}
    files = {name: data for name, data in generated.items() if name.startswith(".agent-image/deps/")}
    return build_context(None, {"Dockerfile": rendered.text.encode(), **files,
                                ".agent-image/delta/spec.json": json.dumps(spec).encode(),
                                ".agent-image/delta/deltarun.py": SCRIPT.read_bytes()})


def checked(layer: bytes) -> str | None:
    """Why LAYER may not be pushed as the near twin's layer, or None. The sandbox wrote it: every
    member must be a file or directory under the paths deltarun.py writes, named plainly."""
    try:
        with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
            for n, m in enumerate(tar):
                name = m.name.rstrip("/")
                if n >= _MAX_MEMBERS:
                    return f"the layer holds more than {_MAX_MEMBERS} files"
                if name.startswith("/") or ".." in name.split("/") or "\\" in name or not name:
                    return f"the layer names {name!r}"
                if not (m.isfile() or m.isdir()):  # (pip makes no link from a wheel)
                    return f"the layer holds {name!r}, not a file or directory"
                if m.mode & 0o7022 or m.uid or m.gid:  # (what pip writes: root's, 0644/0755)
                    return f"the layer's {name!r} has mode {m.mode:o}, owner {m.uid}:{m.gid}"
                # a file a wheel named .wh.* would delete a lower layer's in the image: only the lines' folder's own
                if name.rsplit("/", 1)[-1].startswith(".wh.") and name != _OPAQUE:
                    return f"the layer would delete files below it ({name!r})"
                parent = m.isdir() and any(a.startswith(name + "/") for a in _ALLOWED)
                if not (name in _EXACT or name.startswith(_UNDER) or parent):
                    return f"the layer writes {name!r}, outside what the dependency step writes"
    except (tarfile.TarError, OSError, EOFError) as exc:
        return f"the layer is not a tar ({exc})"
    return None


def read(engine: Engine, image_id: str) -> Delta | None:
    """The delta step's result from its image; None (logged) when it did not make one."""
    files = engine.read_files(image_id, {f"{OUT}/result.json": 1 << 20, f"{OUT}/layer.tar": LAYER_MAX_BYTES})
    raw = files[f"{OUT}/result.json"]
    try:
        result = json.loads(raw) if raw is not None else {"why": "the step left no result"}
    except ValueError:
        result = {"why": "the step's result is not JSON"}
    if result.get("why") or not isinstance(result.get("sibling"), str):
        log.info("Not a near twin of a pushed dependency image: building it whole",
                 reason=str(result.get("why") or "no sibling")[:300])
        return None
    layer = files[f"{OUT}/layer.tar"]
    why = checked(layer) if layer is not None else "the step left no layer"
    found = _members(layer, (DISTS_PATH, REQUESTED_PATH, WHEELS_PATH)) if why is None else {}
    listing, requested, hashes = (found.get(p) for p in (DISTS_PATH, REQUESTED_PATH, WHEELS_PATH))
    if why is None and (listing is None or requested is None or hashes is None):
        why = "the layer has no listing"
    if why is not None:
        log.warning("The near twin's layer is refused: building the dependency image whole", reason=why)
        return None
    return Delta(sibling=result["sibling"], new=[str(n) for n in result.get("new") or []], layer=layer,
                 listing=listing, requested=requested, hashes=hashes)


def _members(layer: bytes, paths: tuple[str, ...]) -> dict[str, str]:
    """The files at PATHS in LAYER (text), in one pass over it: {path: text} for those it holds."""
    names = {p.lstrip("/"): p for p in paths}
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {names[m.name]: tar.extractfile(m).read().decode("utf-8") for m in tar
                if m.name in names and m.isfile()}


def drop(engine: Engine, image_id: str | None) -> None:
    """The step's image is a vehicle: its layer travels as the tar, the image is not kept."""
    if image_id:
        try:
            engine.remove_image(image_id)
        except PackageLoadError as exc:
            log.debug("could not remove the delta step's image", image_id=image_id, reason=str(exc)[:200])
