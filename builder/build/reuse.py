"""Which earlier images a build may reuse, and how it finds them.

The exact image of the same inputs (the ``in-DIGEST`` tag) and the agent's own
previous image (its layer cache); the dependency layer shared by agents with
the same lines is the dependency image's (``depsimage.py``). The tool's moving tags are trusted
only when their labels name this agent: a repository can hold anything.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.core.errors import EngineError, PackageLoadError, RegistryError
from builder.core.labels import AGENT_NAME_LABEL
from builder.core.refs import CACHE_TAG

log = structlog.get_logger("agent_image")


def same_agent(image, manifest) -> bool:
    """Is IMAGE one of this agent's own images? The moving tags (:latest, :in-DIGEST)
    are only trusted when their labels say so: a repository can hold anything."""
    return image is not None and image.labels.get(AGENT_NAME_LABEL) == manifest.name


def own_previous(engine: Engine, repo: str, ref: str, manifest, cache_tag: str = CACHE_TAG) -> list[str]:
    """The agent's own last image as the layer cache. Without it the classic
    builder takes the newest local image matching each step, and the first
    steps are the same for every agent: one other agent's --no-cache build
    would then cost this agent a full dependency reinstall. Only an image
    whose labels name this agent is used."""
    for candidate in (ref, f"{repo}:{cache_tag}"):
        image = engine.image(candidate)
        if same_agent(image, manifest):
            return [image.id]
    return []


def remote(repo: str) -> bool:
    """Does REPO name a registry host (host.domain or host:port first)?"""
    first = repo.split("/", 1)[0]
    return "/" in repo and ("." in first or ":" in first or first == "localhost")


def from_registry(engine: Engine, repo: str, input_tag: str, auth: dict | None, manifest,
                  cache_tag: str = CACHE_TAG, platform: str | None = None):
    """An ephemeral runner starts empty: take the exact image from the registry if it
    was built before, else the agent's last pushed image as a layer cache (the tool's
    own moving tags: used only when their labels name this agent)."""
    try:
        hit = engine.pull(input_tag, auth=auth, platform=platform)
        if same_agent(hit, manifest):
            return hit, []
        drop_foreign(engine, input_tag, hit, manifest)
    except (RegistryError, EngineError) as exc:
        log.debug("no exact image in the registry", image=input_tag, reason=str(exc)[:200])
    try:
        last = f"{repo}:{cache_tag}"
        image = engine.pull(last, auth=auth, platform=platform)
        if not same_agent(image, manifest):
            drop_foreign(engine, last, image, manifest)
            return None, []
        log.info("Using the last pushed image as a layer cache", cache_from=last, image_id=image.id)
        return None, [image.id]
    except (RegistryError, EngineError) as exc:
        log.debug("no previous image in the registry", image=f"{repo}:{cache_tag}", reason=str(exc)[:200])
        return None, []


def drop_foreign(engine: Engine, ref: str, image, manifest) -> None:
    """Another agent's image under this agent's moving tag: not used, and not kept
    either, so no other route (the shared dependency layer's label) takes it as a cache."""
    log.warning("Not using the last pushed image as a layer cache: it is another agent's", image=ref,
                labelled=image.labels.get(AGENT_NAME_LABEL), agent=manifest.name)
    try:
        engine.remove_image(ref)
    except PackageLoadError as exc:  # in use: it stays, unused by this build
        log.debug("could not remove the foreign image", image=ref, reason=str(exc)[:200])


# -- code-only rebuilds: no sandbox, no network ------------------------------------------------
# what the template prints when the installs run after the code (not the "Step" lines that quote it)
LATE_INSTALL = ("agent-image: this package needs its code to install", "--- agent-image step:")


def fence(dockerfile: str, generated: dict[str, bytes]) -> str:
    """What every step before the code depends on: the Dockerfile up to the code's
    COPY (its FROM names the dependency image or the base by id) and the packaging
    and dependency files the build adds."""
    head = dockerfile.split("#> step source", 1)[0]
    h = hashlib.sha256(head.encode())
    for name in sorted(n for n in generated if n != "Dockerfile"):
        h.update(f"\0{name}\0{len(generated[name])}\0".encode() + hashlib.sha256(generated[name]).digest())
    return h.hexdigest()


def fence_file(cache_dir: Path, image_id: str) -> Path:
    return Path(cache_dir) / "fences" / image_id.split(":", 1)[-1]


def remember_fence(cache_dir: Path, image_id: str, value: str, lines: list[str]) -> None:
    """After a build: IMAGE_ID was built from FENCE, and installed nothing after its code
    (a package that needs its code to install needs the index after it, every time)."""
    if any(line.lstrip().startswith(LATE_INSTALL) for line in lines if not line.startswith("Step ")):
        return
    path = fence_file(cache_dir, image_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # two threads, one image: apart
        tmp.write_text(value)
        tmp.replace(path)
        entries = list(path.parent.iterdir())
        if len(entries) > 1000:  # one small file per image: keep the newest 1000 (stat them only then)
            for stale in sorted(entries, key=lambda p: p.stat().st_mtime)[:len(entries) - 1000]:
                stale.unlink(missing_ok=True)
    except OSError as exc:  # a cache: a build never fails for it
        log.debug("could not record the image's fence", reason=str(exc))


def only_code_changed(cache_dir: Path, previous_id: str, value: str) -> bool:
    """Is PREVIOUS_ID (the agent's last image, the layer cache) built from the same
    fence? Then every step before the code is cached and none after it needs the index."""
    try:
        return fence_file(cache_dir, previous_id).read_text() == value
    except OSError:
        return False


def drop_attempt(engine: Engine, outcome) -> None:
    """Remove what a failed offline attempt committed: a step it expected cached ran
    without a network (the packaging changed behind a stale fence) and may have left
    the package's 'install after the code' mark. The sandboxed build that follows
    passes the same cache_from and does not take those layers, but a later build
    with no cache_from (the agent's tags gone) could, and nothing else removes them.
    Newest first: a parent goes after its child."""
    for image_id in reversed(outcome.committed):
        try:
            engine.remove_image(image_id)
        except PackageLoadError as exc:  # in use, or gone: it stays, as before this attempt
            log.debug("could not remove an offline attempt's layer", image=image_id, reason=str(exc)[:200])
