"""Build the shared base image every agent image starts FROM."""

from __future__ import annotations

from pathlib import Path

import structlog

from .context import build_context
from .engine import Engine
from .errors import BaseImageMissingError
from .resources import resource

log = structlog.get_logger("agent_image.base")

HERE = Path(__file__).resolve().parent
DOCKERFILE_BASE = resource("Dockerfile.base")
PYTHON_IMAGES = {"3.11": "agent-image/python:3.11", "3.9": "agent-image/python:3.9"}


def build_base(engine: Engine, *, python: str = "3.11", from_image: str | None = None,
               tag: str | None = None) -> str:
    """Build Dockerfile.base FROM a Python image; return the image id."""
    from_image = from_image or PYTHON_IMAGES.get(python)
    if not from_image:
        raise BaseImageMissingError(f"no default Python image for {python}", hint="Pass --from IMAGE.")
    engine.require_image(from_image, hint="Run scripts/setup.sh (debootstrap + docker import) or pass "
                                          "--from with a Python image the engine has.")
    from .api import base_image_for
    tag = tag or base_image_for(python)
    files = {"Dockerfile": DOCKERFILE_BASE.read_bytes()}
    for path in sorted((HERE / "shim").glob("*.py")):  # serve.py, its serve_*.py modules, healthcheck.py
        files[f"shim/{path.name}"] = path.read_bytes()
    empty = HERE / "shim" / "__absent__"
    context = build_context(empty, files)
    log.info("Building base image", tag=tag, python_image=from_image)
    outcome = engine.build(context=context.data, buildargs={"PYTHON_IMAGE": from_image}, network_mode="default",
                           on_step=lambda n, m, instr: log.info("build step", step=f"{n}/{m}", instruction=instr[:100]))
    if outcome.image_id is None:
        raise BaseImageMissingError(f"building the base image failed: {outcome.error}", log_tail=outcome.lines[-20:])
    engine.tag(outcome.image_id, tag)
    log.info("Base image ready", tag=tag, image_id=outcome.image_id)
    return outcome.image_id
