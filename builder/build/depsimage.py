"""The dependency image: a base plus one set of dependency lines, installed.

Agents whose lines agree (same base, index and who reads it, installer, lines
and constraint files, same registry prefix) build FROM one image,
``PREFIX/agent-image.deps:deps-KEY``. Its layers are built once, stored once in
the registry and pulled once by an ECS host, whichever runner builds the next
agent. The classic builder's layer cache gave that only on the engine that
built the layer: elsewhere, or with --no-cache, the layer was rebuilt and its
digest differed (file mtimes).

It is built in the build sandbox from a context of the dependency files alone:
no file of any agent is in it, so no agent's code runs there (sdists from the
index still run their own build code, as in any install).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass, field

import structlog

from builder import __version__
from builder.build.engine import Engine
from builder.build.image import Image
from builder.core.errors import EngineError, PackageLoadError, RegistryError
from builder.core.labels import (AGENT_NAME_LABEL, DEPS_DELTA_LABEL, DEPS_DISTS_LABEL, DEPS_FAMILY_LABEL, DEPS_LABEL,
                                  DEPS_REQUESTED_LABEL, DEPS_WHEELS_LABEL, DEPS_HASHES_LABEL)
from builder.core.refs import split_ref
from builder.package.requirements import Split
from builder.plan.context import Context, build_context
from builder.plan.cross import CrossTarget, cross_dockerfile, needs_emulation
from builder.plan.dockerfile import (DISTS_PATH, LAYER_INSTRUCTIONS, REQUESTED_PATH, WHEELS_PATH, Rendered,
                                     deps_dockerfile, dq)

log = structlog.get_logger("agent_image")

# a dot: no agent name (^[a-z][a-z0-9-]*$) can take this repository, so no
# package can push an image under a dependency image's name by naming itself
REPOSITORY_NAME = "agent-image.deps"
MAX_DELTAS = 6  # near-twin layers one dependency image may stack (builder/build/delta.py); then it is built whole


@dataclass
class Plan:
    """One build's dependency image: what it is, and (once found or built) where it came from."""
    dockerfile: Rendered
    key: str
    repo: str
    ref: str
    layers: int                      # layers it adds over the base
    family: str = ""                 # the key without the lines (DEPS_FAMILY_LABEL)
    image: Image | None = None
    origin: str = ""                 # "local" | "pulled" | "built"
    cached: list[str] = field(default_factory=list)  # its steps the engine's layer cache served, when built


def plan(agent_dockerfile: Rendered, split: Split, base: Image, agent_repo: str, registry: str | None,
         auth_header: str | None, cross: CrossTarget | None = None) -> Plan | None:
    """The dependency image an agent with these lines builds FROM; None without lines.
    CROSS (a base for another CPU): its wheels are fetched on the host's (builder/plan/cross.py)."""
    if not split.deps:
        return None
    dockerfile = deps_dockerfile(agent_dockerfile.text)
    if cross is not None and not needs_emulation(split.deps_text):
        dockerfile = cross_dockerfile(dockerfile, cross) or dockerfile
    repo = repository(agent_repo, registry)
    reader = index_user(auth_header)
    deps_key = key(dockerfile, split, base.id, reader=reader, repo=repo)
    return Plan(dockerfile=dockerfile, key=deps_key, repo=repo, ref=ref(repo, deps_key),
                layers=layer_count(dockerfile), family=family(dockerfile, base.id, reader=reader, repo=repo))


def repository(agent_repo: str, registry: str | None) -> str:
    """Next to the agent's repository: the registry prefix is the tenant's scope."""
    if registry:
        return f"{registry.rstrip('/')}/{REPOSITORY_NAME}"
    parent = agent_repo.rsplit("/", 1)[0] if "/" in agent_repo else ""
    return f"{parent}/{REPOSITORY_NAME}" if parent else REPOSITORY_NAME


def index_user(auth_header: str | None) -> str:
    """Who reads the index: the user of its credentials, not the token, so a
    rotated token keeps the key and another account never shares it."""
    if not auth_header or not auth_header.startswith("Basic "):
        return ""
    try:
        return base64.b64decode(auth_header[6:]).decode("utf-8", "replace").split(":", 1)[0]
    except (binascii.Error, ValueError):
        return "?"


def key(dockerfile: Rendered, split: Split, base_id: str, *, reader: str, repo: str) -> str:
    """Everything that shapes the dependency layer, and who may read it: the base
    image, the Dockerfile up to the layer (index URL, installer, its flags), the
    lines and their constraint files, the index user, the repository (tenant) and
    this builder's version."""
    return hashlib.sha256(json.dumps([base_id, dockerfile.text, split.deps_text, split.constraints, reader, repo,
                                      __version__], sort_keys=True).encode()).hexdigest()


def family(dockerfile: Rendered, base_id: str, *, reader: str, repo: str) -> str:
    """The key without the lines: dependency images that differ only in their lines (builder/build/delta.py)."""
    return hashlib.sha256(json.dumps([base_id, dockerfile.text, reader, repo, __version__],
                                     sort_keys=True).encode()).hexdigest()


def deltas(image_labels: dict[str, str]) -> int:
    """How many near-twin layers a dependency image stacks (DEPS_DELTA_LABEL); 0 when built whole."""
    value = image_labels.get(DEPS_DELTA_LABEL, "0")
    return int(value) if value.isdigit() and int(value) <= MAX_DELTAS else -1


def ref(repo: str, deps_key: str) -> str:
    return f"{repo}:deps-{deps_key[:48]}"


def layer_count(dockerfile: Rendered) -> int:
    """Layers the Dockerfile's last stage adds over its FROM (classic builder: every RUN, COPY, ADD)."""
    words = [i.split(None, 1)[0].upper() for i in dockerfile.instructions]
    last = max((n for n, w in enumerate(words) if w == "FROM"), default=0)
    return sum(1 for w in words[last:] if w in LAYER_INSTRUCTIONS)


def refusal(image: Image, deps_key: str, base: Image, added: int) -> str | None:
    """Why IMAGE may not serve as this dependency image, or None. A repository can
    hold anything: it must carry the key, sit on exactly this base and add exactly
    the dependency layers, and belong to no agent."""
    if image.labels.get(DEPS_LABEL) != deps_key:
        return "its deps-key label differs"
    if AGENT_NAME_LABEL in image.labels:
        return f"it is an agent's image ({image.labels['io.pixell.agent.name']!r})"
    if image.layers[:len(base.layers)] != base.layers:
        return "it is not built on this base"
    stacked = deltas(image.labels)
    if stacked < 0:
        return f"its {DEPS_DELTA_LABEL} label is not a count up to {MAX_DELTAS}"
    # a near twin's image (builder/build/delta.py) keeps its sibling's install, not its COPY of the lines
    added += max(0, stacked - 1)
    if len(image.layers) != len(base.layers) + added:
        return f"it adds {len(image.layers) - len(base.layers)} layers over the base, not {added}"
    return None


def context(dockerfile: Rendered, generated: dict[str, bytes]) -> Context:
    """The Dockerfile and the dependency files (requirements lines, constraints): nothing of the package."""
    files = {name: data for name, data in generated.items() if name.startswith(".agent-image/deps/")}
    return build_context(None, {"Dockerfile": dockerfile.text.encode(), **files})


def with_listing(engine: Engine, image_id: str, *, timeout: float, family: str = "", wheels: bool = False) -> str:
    """IMAGE_ID with its distribution listing in DEPS_DISTS_LABEL: a one-step LABEL build FROM it
    (no layer: the layers, the key and the refusal checks stay as they were). The registry path
    reads it from the config (ship/assemble.py); without it that path is not taken. What a near
    twin needs of a sibling (builder/build/delta.py) comes in the same step: its FAMILY, REQUESTED
    names, wheel hashes, and whether its install ran no code of what it installed (WHEELS). On
    failure IMAGE_ID as it was: the engine path never needs the labels."""
    files = engine.read_files(image_id, dict.fromkeys((DISTS_PATH, REQUESTED_PATH, WHEELS_PATH), 1 << 20))
    raw = files[DISTS_PATH]
    try:
        text = raw.decode("utf-8").strip() if raw is not None else ""
        if not isinstance(json.loads(text), list):
            raise ValueError("not a list")
    except ValueError as exc:
        log.warning("The dependency image has no readable listing; it is kept without its label",
                    image_id=image_id, reason=str(exc)[:200])
        return image_id
    requested, hashes = _requested(files[REQUESTED_PATH]), wheel_hashes(files[WHEELS_PATH])
    extra = (f" {DEPS_REQUESTED_LABEL}={dq(requested)}" if requested is not None else "") + \
        (f" {DEPS_HASHES_LABEL}={dq(hashes)}" if hashes is not None else "") + \
        (f' {DEPS_WHEELS_LABEL}="1"' if wheels else "") + (f" {DEPS_FAMILY_LABEL}={dq(family)}" if family else "")
    dockerfile = f"FROM {image_id}\nLABEL {DEPS_DISTS_LABEL}={dq(text)}{extra}\n".encode()
    again = engine.build(context=build_context(None, {"Dockerfile": dockerfile}).data, network_mode="none",
                         timeout=timeout)
    if again.error is not None or again.image_id is None:
        log.warning("Could not label the dependency image with its listing; it is kept without it",
                    image_id=image_id, error=(again.error or "")[:200])
        return image_id
    return again.image_id


def _requested(raw: bytes | None) -> str | None:
    """The image's REQUESTED_PATH (RAW: a JSON list of names), or None: a near twin cannot build on it then."""
    try:
        names = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return json.dumps(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def wheel_hashes(raw: bytes | str | None) -> str | None:
    """WHEELS_PATH's JSON when it is {name: sha256} (the text a near twin's label carries), else None."""
    try:
        found = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    ok = isinstance(found, dict) and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64
                                         and all(c in "0123456789abcdef" for c in v) for k, v in found.items())
    return json.dumps(found) if ok else None


def find(engine: Engine, image_ref: str, deps_key: str, base: Image, added: int, *,
         auth: dict | None, remote: bool) -> tuple[Image | None, str]:
    """The dependency image from the engine, else (REMOTE) from the registry:
    (image, "local" | "pulled"), or (None, "") when it must be built."""
    image = engine.image(image_ref)
    if image is not None:
        why = refusal(image, deps_key, base, added)
        if why is None:
            return image, "local"
        log.warning("Not using the local dependency image", image=image_ref, reason=why)
        return None, ""
    if not remote:
        return None, ""
    started = time.monotonic()
    try:
        image = engine.pull(image_ref, auth=auth)
    except (RegistryError, EngineError) as exc:
        log.debug("no dependency image in the registry", image=image_ref, reason=str(exc)[:200])
        return None, ""
    why = refusal(image, deps_key, base, added)
    if why is None:
        log.info("Using the dependency image from the registry", image=image_ref, image_id=image.id,
                 pull_s=round(time.monotonic() - started, 2))
        return image, "pulled"
    log.warning("Not using the dependency image from the registry", image=image_ref, reason=why)
    try:  # not kept either: nothing else may take it for this key
        engine.remove_image(image_ref)
    except PackageLoadError as exc:
        log.debug("could not remove the refused dependency image", image=image_ref, reason=str(exc)[:200])
    return None, ""


def push(engine: Engine, image_ref: str, *, auth: dict | None) -> str:
    """Push the dependency image: its layers are the agent's too, so after the agent's
    push this sends only a manifest (and the next runner finds it by name)."""
    digest = engine.push(image_ref, auth=auth)
    log.info("Pushed dependency image", image=image_ref, digest_ref=f"{split_ref(image_ref)[0]}@{digest}")
    return digest
