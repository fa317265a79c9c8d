"""A build for another CPU than the host's: which images it runs where.

Found here (Debian's dockerd 20.10, classic builder, QEMU user emulation through
binfmt_misc with the fix-binary flag): the classic builder takes the platform
from the FROM image. FROM a local image whose config says arm64, every RUN
executes the arm64 binaries through the binfmt handler and the image made is
arm64; passing ``platform`` to the build changes nothing there, but makes a
multi-stage build refuse a stage FROM an image of another platform ("does not
match the specified platform"). So the build is never given a platform: the
base it starts FROM decides, and a dependency image can fetch its wheels in a
stage FROM the host's base (builder/plan/cross.py).
"""

from __future__ import annotations

import re

import structlog

from builder.build.engine import Engine
from builder.build.image import Image
from builder.core.defaults import base_image_for
from builder.core.errors import BaseImageMissingError
from builder.core.labels import ABI_LABEL, parse_abi
from builder.core.platforms import GLIBC, MACHINES, arch, is_host
from builder.plan.cross import CrossTarget

log = structlog.get_logger("agent_image")


def check_base(base: Image, ref: str, platform: str | None, python: str) -> None:
    """The base must be of the platform asked for (a wrong one would build a wrong image)."""
    if platform and base.architecture and base.architecture != arch(platform):
        raise BaseImageMissingError(
            f"the base {ref} is {base.os or 'linux'}/{base.architecture}, not {platform}", field="--platform",
            hint=f"Run `agent-image base --python {python} --platform {platform}` (its base is "
                 f"{base_image_for(python, platform)}), or pass a --base-image for {platform}.")


def sandbox_image(engine: Engine, base_image: str, platform: str | None, python: str) -> str:
    """The image the build sandbox's forwarder runs from: the host's base when the build is for
    another CPU (the one door must not run emulated), else the build's own base."""
    if is_host(platform):
        return base_image
    host = base_image_for(python)
    return host if engine.image(host) is not None else base_image


def cross_target(engine: Engine, base: Image, platform: str | None, python: str) -> CrossTarget | None:
    """Where the dependency image's wheels can be fetched without emulation: the host's base,
    when it has the same distro release and Python as the target's. None: emulate it all."""
    if is_host(platform):
        return None
    host_ref = base_image_for(python)
    host = engine.image(host_ref)
    mine, theirs = parse_abi(base.labels.get(ABI_LABEL)), parse_abi(host.labels.get(ABI_LABEL) if host else None)
    glibc = GLIBC.get(mine.get("distro", ""))
    same = all(mine.get(k) and mine.get(k) == theirs.get(k) for k in ("distro", "python", "venv"))
    if host is None or not same or glibc is None:
        log.info("The dependency image installs under emulation", platform=platform,
                 reason="no host base of the same distro and Python" if glibc else "unknown glibc")
        return None
    return CrossTarget(host_base=host_ref, host_base_id=host.id, machine=MACHINES[arch(platform)], glibc=glibc,
                       python=mine["python"])


def remember_stage(engine: Engine, lines: list[str], rendered_text: str, repo: str, cache_tag: str) -> None:
    """Tag the last layer of the Dockerfile's first stage (the editable install on the host's CPU,
    builder/plan/cross.py package_on_host) as REPO:CACHE_TAG-stage: the classic builder with
    cache_from looks for cached steps only in those images' chains, and that stage is not in the
    agent image's, so a code-only rebuild would run it (and, after it, every emulated step) again."""
    if not rendered_text.startswith("#> step package-host"):
        return
    last = None
    for line in lines:
        if line.startswith(" ---> ") and not line.startswith(" ---> Running") and " " not in line[6:].strip():
            last = line[6:].strip()
        elif re.match(r"^Step (\d+)/\d+ : FROM ", line) and not line.startswith("Step 1/"):
            break
    if last:
        engine.tag(last, f"{repo}:{cache_tag}-stage")


def stage_cache(engine: Engine, repo: str, cache_tag: str) -> list[str]:
    """The image remember_stage tagged, for cache_from (none: nothing)."""
    image = engine.image(f"{repo}:{cache_tag}-stage")
    return [image.id] if image is not None else []
