"""What a caller asks of a build (the Python API's and the CLI's options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from builder.core.defaults import DEFAULT_CACHE_DIR, DEFAULT_FILE_BYTES, DEFAULT_PAGE_BYTES
from builder.package.reader import DEFAULT_LIMITS, Limits


@dataclass
class BuildOptions:
    repository: str | None = None          # default: agents/NAME, or REGISTRY/NAME with a registry
    registry: str | None = None            # HOST[:PORT]/PREFIX
    push: bool = False
    registry_auth: dict | None = None      # {"username", "password"}; None: the Docker config's
    index_url: str | None = None
    allow_index_hosts: frozenset[str] = frozenset()
    ca_bundle: str | None = None           # extra CA for the index proxy's upstream TLS
    ca_bundle_in_image: bool = False       # also trust it inside the image at run time
    timeout: float = 300.0
    base_image: str | None = None
    include_env: bool = False
    cache_dir: Path = DEFAULT_CACHE_DIR
    cache_max_bytes: int = 2 * 1024 ** 3
    index_page_max_bytes: int = DEFAULT_PAGE_BYTES  # the proxy refuses a bigger index page
    download_max_bytes: int = DEFAULT_FILE_BYTES    # ... and a bigger file (not kept in the cache)
    limits: Limits = DEFAULT_LIMITS
    nocache: bool = False
    installer: str = "pip"                  # "pip" | "uv" (uv in its own venv, outside the agent's)
    use_cache: bool = True                  # skip the build when the input digest exists
    env: dict[str, str] | None = None       # environment for index resolution (default os.environ)
    expect_name: str | None = None          # the caller's agent: agent.yaml must name it (it picks the repository)
    expect_version: str | None = None       # ... and this version (it picks the tag)
    overwrite: bool = False                 # --push may replace a NAME:VERSION that holds other content
    provenance: dict[str, str] = field(default_factory=dict)  # OCI source/revision/created (plan.provenance)
    sign_key: str | None = None             # --push signs with it: a PEM file or awskms:///ARN (ship/sign.py)
    platform: str | None = None             # linux/amd64 | linux/arm64 (None: the host's), builder/core/platforms.py
    platform_tags: bool = False             # tag VERSION-ARCH and latest-ARCH (one platform of a multi-platform push)
    host_deps_image: str = ""               # the host CPU's dependency image of the same build (plan/cross.py)
    prune_max_bytes: int | None = None      # after the build, prune what agent-image keeps to this (build.prune)
    prune_scope: tuple[str, ...] = ()       # ... only images whose references start with these
