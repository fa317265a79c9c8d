"""Build the shared base image every agent image starts FROM."""

from __future__ import annotations

from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.core import events
from builder.core.errors import BaseImageMissingError
from builder.core.labels import ABI_LABEL, VENV_LABEL, abi_label
from builder.core.pythons import PYTHONS, python_image
from builder.core.resources import resource
from builder.core.retry import with_retries
from builder.plan.context import build_context

log = structlog.get_logger("agent_image.base")

SHIM = Path(__file__).resolve().parents[1] / "shim"  # builder/shim: copied into the base
DOCKERFILE_BASE = resource("Dockerfile.base")
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
               tag: str | None = None, index_url: str | None = None, ca_bundle: str | None = None,
               cache_dir: Path | None = None, platform: str | None = None) -> str:
    """Build Dockerfile.base FROM a Python image; return the image id.

    uv goes into the base from the package index, through the same loopback
    proxy an agent build uses (so credentials stay out of the base too).
    PLATFORM (default the host's) picks the Python image (agent-image/python:X.Y-ARCH
    for another CPU) and the tag; its RUN steps then run under QEMU emulation."""
    from builder.core.platforms import require_emulation, tag_suffix
    known, suffix = PYTHONS.get(python), tag_suffix(platform)
    if not from_image and not (known and known.debian_suite):
        raise BaseImageMissingError(f"no default Python image for {python}: scripts/setup.sh makes them from "
                                    "Debian, and no current Debian suite ships it",
                                    hint=f"Pass --from with a Python {python} image the engine has "
                                         f"(e.g. python:{python}-slim after `docker pull python:{python}-slim`).")
    from_image = from_image or python_image(python) + suffix
    found = engine.require_image(
        from_image, hint=f"Pass --from with a Python image the engine has (e.g. python:{python}-slim after `docker "
                         f"pull python:{python}-slim`), or run scripts/setup.sh (agent-image/python:X.Y, X.Y-arm64).")
    if platform:
        _check_platform(found, platform, from_image)
        require_emulation(platform, "building the base")
    sandbox_image = python_image(python) if suffix and engine.image(python_image(python)) else from_image
    from builder.build.proxy.cache import DownloadCache
    from builder.build.proxy.index import resolve_index
    from builder.build.proxy.server import IndexProxy
    from builder.build.sandbox import Sandbox
    from builder.core.defaults import DEFAULT_CACHE_DIR, base_image_for
    from builder.plan.dockerfile import PIP_INDEX_HOST, PIP_INDEX_URL, UV_VERSION, tool_pip_version
    tag = tag or base_image_for(python, platform)
    files = {"Dockerfile": DOCKERFILE_BASE.read_bytes()}
    for path in sorted(SHIM.glob("*.py")):  # serve.py, its serve_*.py modules, healthcheck.py
        files[f"shim/{path.name}"] = path.read_bytes()
    empty = SHIM / "__absent__"
    context = build_context(empty, files)
    upstream = resolve_index(index_url)
    log.info("Building base image", tag=tag, python_image=from_image, index=upstream.url, uv=UV_VERSION)
    cache = DownloadCache(Path(cache_dir or DEFAULT_CACHE_DIR) / "downloads")
    args = {"PYTHON_IMAGE": from_image, "UV_VERSION": UV_VERSION, "PIP_INDEX_URL": PIP_INDEX_URL,
            "PIP_TRUSTED_HOST": PIP_INDEX_HOST, "TOOL_PIP_VERSION": tool_pip_version(python)}
    # the base's build steps get the network an agent build gets (builder/build/sandbox.py):
    # the index proxy and nothing else
    # the sandbox's forwarder runs on the host's CPU when it can (no emulation for the door)
    with Sandbox(engine, sandbox_image) as sandbox, \
            IndexProxy(upstream, cache, ca_bundle=ca_bundle, unix_path=sandbox.socket_path) as proxy:
        sandbox.wait(proxy.ready)

        def build(labels: dict[str, str] | None = None):
            return engine.build(context=context.data, network_mode=sandbox.network_mode, labels=labels,
                                buildargs={**args, "http_proxy": sandbox.proxy_url(proxy)},
                                on_step=lambda n, m, instr: log.info(events.STEP, step=f"{n}/{m}",
                                                                     instruction=instr[:100]))
        outcome = build()
        if outcome.image_id is None:
            raise BaseImageMissingError(f"building the base image failed: {outcome.error}",
                                        log_tail=outcome.lines[-20:],
                                        hint=f"The base installs uv=={UV_VERSION} and pip=="
                                             f"{tool_pip_version(python) or '(none)'} from {upstream.url}: check that "
                                             "the index is reachable (--index-url, --ca-bundle).")
        venv = engine.image(outcome.image_id).labels.get(VENV_LABEL, "/opt/venv")
        facts = dict(line.split("=", 1) for line in engine.run_once(
            outcome.image_id, ["sh", "-c", _PROBE, "probe", venv]).splitlines() if "=" in line)
        abi = abi_label(facts)
        # the same build again (every step cached: the same args) with the label the engine appends
        labelled = build({ABI_LABEL: abi})
    if labelled.image_id is None:
        raise BaseImageMissingError(f"labelling the base image failed: {labelled.error}",
                                    log_tail=labelled.lines[-20:])
    engine.tag(labelled.image_id, tag)
    log.info("Base image ready", tag=tag, image_id=labelled.image_id, abi=abi,
             platform=f"linux/{engine.image(labelled.image_id).architecture}")
    return labelled.image_id


def _check_platform(image, platform: str, ref: str) -> None:
    from builder.core.platforms import arch
    if image.architecture != arch(platform):
        raise BaseImageMissingError(f"{ref} is {image.os}/{image.architecture}, not {platform}", field="--platform",
                                    hint="Pass --from with a Python image for that platform (scripts/setup.sh "
                                         "makes agent-image/python:X.Y-arm64).")


def push_base(engine: Engine, image_id: str, *, registry: str, python: str, auth: dict | None = None,
              platform: str | None = None, per_platform: bool = False) -> str:
    """Tag the base REGISTRY/agent-image.base:pyX.Y[-ARCH] (-ARCH for another CPU, or for every
    platform of a multi-platform push), push it, return its digest reference."""
    from builder.core.platforms import platform_tag, tag_suffix
    tag = platform_tag(f"py{python}", platform, True) if per_platform else f"py{python}{tag_suffix(platform)}"
    target = f"{registry.rstrip('/')}/{BASE_NAME}:{tag}"
    engine.tag(image_id, target)
    digest = with_retries(lambda: engine.push(target, auth=auth), doing="push", image=target)
    pinned = f"{target.rsplit(':', 1)[0]}@{digest}"
    log.info("Pushed the base image", image=target, digest_ref=pinned)
    return pinned
