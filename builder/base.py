"""Build the shared base image every agent image starts FROM."""

from __future__ import annotations

from pathlib import Path

import structlog

from .context import build_context
from .engine import Engine
from .errors import BaseImageMissingError, RegistryError
from .rebase import ABI_LABEL, abi_label
from .resources import resource

log = structlog.get_logger("agent_image.base")

HERE = Path(__file__).resolve().parent
DOCKERFILE_BASE = resource("Dockerfile.base")
PYTHON_IMAGES = {"3.11": "agent-image/python:3.11", "3.9": "agent-image/python:3.9"}
BASE_NAME = "agent-image.base"  # in a registry: REGISTRY/agent-image.base:pyX.Y (no agent name has a dot)
# What the agent's layers depend on, read from the built base itself (a LABEL
# cannot be computed by a RUN): the distro release, Python major.minor, the venv,
# the agent user's uid, and what the base seeds into the venv.
_PROBE = """. /etc/os-release; echo "distro=$ID:$VERSION_ID"; echo "venv=$1"; echo "uid=$(id -u agent)"
"$1/bin/python" - <<'EOF'
import sys, importlib.metadata as m
print("python=%d.%d" % sys.version_info[:2])
for name in ("pip", "setuptools"):
    try:
        print(f"{name}={m.version(name)}")
    except m.PackageNotFoundError:
        pass
EOF"""


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
    venv = engine.image(outcome.image_id).labels.get("io.pixell.agent-image.venv", "/opt/venv")
    facts = dict(line.split("=", 1) for line in engine.run_once(
        outcome.image_id, ["sh", "-c", _PROBE, "probe", venv]).splitlines() if "=" in line)
    abi = abi_label(facts)
    # the same build again (every step cached) with the label the engine appends
    labelled = engine.build(context=context.data, buildargs={"PYTHON_IMAGE": from_image}, network_mode="default",
                            labels={ABI_LABEL: abi})
    if labelled.image_id is None:
        raise BaseImageMissingError(f"labelling the base image failed: {labelled.error}",
                                    log_tail=labelled.lines[-20:])
    engine.tag(labelled.image_id, tag)
    log.info("Base image ready", tag=tag, image_id=labelled.image_id, abi=abi)
    return labelled.image_id


def push_base(engine: Engine, image_id: str, *, registry: str, python: str, auth: dict | None = None) -> str:
    """Tag the base REGISTRY/agent-image.base:pyX.Y, push it, return its digest reference."""
    target = f"{registry.rstrip('/')}/{BASE_NAME}:py{python}"
    engine.tag(image_id, target)
    for attempt in (1, 2, 3):
        try:
            digest = engine.push(target, auth=auth)
            break
        except RegistryError:
            if attempt == 3:
                raise
    pinned = f"{target.rsplit(':', 1)[0]}@{digest}"
    log.info("Pushed the base image", image=target, digest_ref=pinned)
    return pinned
