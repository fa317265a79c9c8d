"""Build the shared base image every agent image starts FROM."""

from __future__ import annotations

from pathlib import Path

import structlog

from .context import build_context
from .engine import Engine
from .errors import BaseImageMissingError

log = structlog.get_logger("agent_image.base")

HERE = Path(__file__).resolve().parent
DOCKERFILE_BASE = HERE.parent / "Dockerfile.base"
PYTHON_IMAGES = {"3.11": "agent-image/python:3.11", "3.9": "agent-image/python:3.9"}
UV_LABEL = "io.pixell.agent-image.uv"  # on our base: the uv version in /opt/agent-image/tools


def build_base(engine: Engine, *, python: str = "3.11", from_image: str | None = None,
               tag: str | None = None, index_url: str | None = None, ca_bundle: str | None = None,
               cache_dir: Path | None = None) -> str:
    """Build Dockerfile.base FROM a Python image; return the image id.

    uv goes into the base from the package index, through the same loopback
    proxy an agent build uses (so credentials stay out of the base too)."""
    from_image = from_image or PYTHON_IMAGES.get(python)
    if not from_image:
        raise BaseImageMissingError(f"no default Python image for {python}", hint="Pass --from IMAGE.")
    engine.require_image(from_image, hint="Run scripts/setup.sh (debootstrap + docker import) or pass "
                                          "--from with a Python image the engine has.")
    from .api import DEFAULT_CACHE_DIR, base_image_for
    from .dockerfile import PIP_INDEX_HOST, PIP_INDEX_URL, UV_VERSION
    from .index import resolve_index
    from .indexproxy import DownloadCache, IndexProxy
    tag = tag or base_image_for(python)
    files = {"Dockerfile": DOCKERFILE_BASE.read_bytes()}
    for name in ("serve.py", "healthcheck.py"):
        files[f"shim/{name}"] = (HERE / "shim" / name).read_bytes()
    empty = HERE / "shim" / "__absent__"
    context = build_context(empty, files)
    upstream = resolve_index(index_url)
    log.info("Building base image", tag=tag, python_image=from_image, index=upstream.url, uv=UV_VERSION)
    cache = DownloadCache(Path(cache_dir or DEFAULT_CACHE_DIR) / "downloads")
    with IndexProxy(upstream, cache, ca_bundle=ca_bundle) as proxy:
        outcome = engine.build(
            context=context.data, network_mode="host",  # the proxy listens on the builder's loopback
            buildargs={"PYTHON_IMAGE": from_image, "UV_VERSION": UV_VERSION, "http_proxy": proxy.address,
                       "PIP_INDEX_URL": PIP_INDEX_URL, "PIP_TRUSTED_HOST": PIP_INDEX_HOST},
            on_step=lambda n, m, instr: log.info("build step", step=f"{n}/{m}", instruction=instr[:100]))
    if outcome.image_id is None:
        raise BaseImageMissingError(f"building the base image failed: {outcome.error}", log_tail=outcome.lines[-20:],
                                    hint=f"The base installs uv=={UV_VERSION} from {upstream.url}: check that "
                                         "the index is reachable (--index-url, --ca-bundle).")
    engine.tag(outcome.image_id, tag)
    log.info("Base image ready", tag=tag, image_id=outcome.image_id)
    return outcome.image_id
