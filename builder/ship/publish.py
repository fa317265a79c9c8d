"""The end of a build call, whichever way the image was made (builder/api.py's stages): the
runtime facts and warning, the version-tag guard, and the push of the agent and its dependency
image. ``result`` is the api's BuildResult (read and filled by its field names)."""

from __future__ import annotations

import contextlib

import structlog

from builder.build import depsimage
from builder.build.engine import Engine
from builder.build.reuse import remote
from builder.core.errors import EngineError, RegistryError
from builder.core.platforms import platform_tag
from builder.core.refs import CACHE_TAG, split_ref
from builder.package.manifest import Manifest
from builder.package.runtime import runtime_facts
from builder.plan.options import BuildOptions

log = structlog.get_logger("agent_image")


def add_runtime(result, manifest: Manifest) -> None:
    """The agent's runtime facts, and its end-of-life warning first among the warnings."""
    result.runtime, warning = runtime_facts(manifest)
    if warning and warning not in result.warnings:
        result.warnings.insert(0, warning)


def guard_tag(ref: str, image_id: str, content: str, options: BuildOptions,
              held: contextlib.ExitStack | None = None) -> str | None:
    """Version tags are immutable (builder/ship/pushpull.py guard_tag), checked before any tag moves.
    With HELD, the check and the push are one step on this machine: the tag's lock is held until
    HELD closes (the build's end)."""
    if not options.push or not remote(ref.rsplit(":", 1)[0]):
        return None
    from builder.ship.pushpull import guard_tag as guard
    from builder.ship.pushpull import tag_lock
    if held is not None:
        held.enter_context(tag_lock(ref))
    if options.overwrite:
        return None
    return guard(ref, image_id=image_id, content=content, auth=options.registry_auth)


def push(result, kept: str | None, engine: Engine, options: BuildOptions) -> None:
    """With --push: the agent (unless KEPT, the registry's tag already holding this content), then
    its dependency image (a manifest by then: its layers went with the agent's)."""
    if not options.push:
        return
    from builder.ship.pushpull import push_or_keep
    if kept:
        result.digest_ref, result.tag_kept = kept, True
    else:  # (an immutable registry may refuse: the tag holds this content, kept, or another, refused)
        result.digest_ref, result.tag_kept = push_or_keep(
            engine, result.image, image_id=result.image_id, input_digest=result.input_digest,
            auth=options.registry_auth, overwrite=options.overwrite,
            cache_tag=platform_tag(CACHE_TAG, options.platform, options.platform_tags))
    # after the agent: its layers are there now, so this is a manifest, for the next runner to find
    if result.deps_image and result.deps_origin != "pulled" and remote(split_ref(result.deps_image)[0]):
        try:
            depsimage.push(engine, result.deps_image, auth=options.registry_auth)
        except (RegistryError, EngineError) as exc:  # the agent is pushed: sharing is an optimisation
            why = (f"the dependency image {result.deps_image} was not pushed ({str(exc)[:160]}); other runners "
                   f"will build it again. Create the repository {result.deps_image.rsplit(':', 1)[0]} (ECR: "
                   "repositories must exist before a push) or grant push to it.")
            log.warning("Dependency image not pushed", image=result.deps_image, reason=str(exc)[:300])
            result.warnings.append(why)
