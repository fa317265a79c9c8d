"""`agent-image build --platform linux/amd64,linux/arm64`: one build per platform, then
(with --push) one OCI image index per tag holding each platform's manifest.

Each platform's image is an ordinary agent-image build (builder/api.py) of its own
base (agent-image/base:pyX.Y for the host's CPU, pyX.Y-ARCH for another, whose
steps run under QEMU), tagged REPOSITORY:VERSION-ARCH and pushed with its
input-digest tag and latest-ARCH (its layer cache). The index then goes to
REPOSITORY:VERSION and REPOSITORY:latest (builder/ship/index.py): deploy its
digest, and each host pulls its own platform's image.
"""

from __future__ import annotations

import dataclasses
import time

import structlog

from builder.api import BuildOptions, BuildResult, build_image
from builder.build.engine import Engine
from builder.core.platforms import is_host
from builder.core.refs import CACHE_TAG, split_ref

log = structlog.get_logger("agent_image")


@dataclasses.dataclass
class MultiResult:
    """Every platform's BuildResult, and the index that holds them once pushed."""
    image: str                       # REPOSITORY:VERSION (the index's tag)
    results: dict[str, BuildResult]  # platform -> its build
    digest_ref: str | None = None    # REPOSITORY@sha256:<index digest>
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        first = next(iter(self.results.values()))
        return {"ok": True, "image": self.image, "digest_ref": self.digest_ref, "duration_s": self.duration_s,
                "agent": first.agent, "platforms": {p: r.to_dict() for p, r in self.results.items()},
                "phases": {f"{p} {k}": v for p, r in self.results.items() for k, v in r.phases.items()}}


def build_platforms(source, options: BuildOptions, platforms: tuple[str, ...], engine: Engine) -> MultiResult:
    """Build SOURCE for each of PLATFORMS (in order), then push the index when OPTIONS.push."""
    started = time.monotonic()
    built: dict[str, BuildResult] = {}
    host = ""  # the host CPU's dependency image: another CPU's editable install runs FROM it (plan/cross.py)
    for platform in sorted(platforms, key=lambda p: not is_host(p)):  # the host's first
        log.info("Building for a platform", platform=platform)
        built[platform] = build_image(source, dataclasses.replace(
            options, platform=platform, platform_tags=True, host_deps_image="" if is_host(platform) else host),
            engine=engine)
        if is_host(platform):
            host = built[platform].deps_image
    results = {p: built[p] for p in platforms}
    first = next(iter(results.values()))
    repo = split_ref(first.image)[0]
    out = MultiResult(image=f"{repo}:{first.agent['version']}", results=results)
    if options.push:
        from builder.ship.index import push_index
        pinned = [r.digest_ref for r in results.values() if r.digest_ref]
        out.digest_ref = push_index(pinned, [first.agent["version"], CACHE_TAG], auth=options.registry_auth,
                                    overwrite=options.overwrite)
    out.duration_s = round(time.monotonic() - started, 3)
    return out


def base_platforms(args, platforms: tuple[str, ...], engine: Engine, auth: dict | None) -> dict:
    """`agent-image base --platform A,B`: each platform's base (agent-image/base:pyX.Y[-ARCH]); with
    --push each as REGISTRY/agent-image.base:pyX.Y-ARCH and one index over them at pyX.Y, which
    `rebase` of a multi-platform agent takes as --base."""
    from builder.build.base import build_base, push_base
    from builder.core.defaults import base_image_for
    from builder.core.errors import PackageValidationError
    if args.tag or args.from_image:
        raise PackageValidationError("--tag and --from name one image: with them, build one platform at a time",
                                     field="--platform", hint="Drop --tag/--from, or pass one --platform.")
    built: dict[str, dict] = {}
    for platform in platforms:
        image_id = build_base(engine, python=args.python, index_url=args.index_url, ca_bundle=args.ca_bundle,
                              platform=platform)
        built[platform] = {"image": base_image_for(args.python, platform), "image_id": image_id}
        if args.push:
            built[platform]["digest_ref"] = push_base(engine, image_id, registry=args.registry, python=args.python,
                                                      auth=auth, platform=platform, per_platform=True)
    pinned = None
    if args.push:
        from builder.ship.index import push_index
        pinned = push_index([b["digest_ref"] for b in built.values()], [f"py{args.python}"], auth=auth)
    if not args.json:
        for platform, b in built.items():
            print(f"{platform} {b['image']} {b['image_id']}")
        if pinned:
            print(pinned)
    return {"ok": True, "platforms": built, "digest_ref": pinned}
