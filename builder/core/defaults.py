"""Defaults every phase agrees on: where the cache lives, which base an agent
starts from, how big an index page or a download may be."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))
# AGENT_IMAGE_BASE_REPOSITORY names another base repository (a CI runner's own,
# or a work tree that changes the base without touching the shared one)
BASE_REPOSITORY = os.environ.get("AGENT_IMAGE_BASE_REPOSITORY", "agent-image/base")


def base_image_for(python: str, platform: str | None = None) -> str:
    """The shared base for PYTHON on PLATFORM: pyX.Y for the host's CPU, pyX.Y-ARCH for another
    (builder/core/platforms.py tag_suffix): one tag per architecture."""
    from builder.core.platforms import tag_suffix
    return f"{BASE_REPOSITORY}:py{python}{tag_suffix(platform)}"


# the index proxy refuses bigger pages and files
DEFAULT_PAGE_BYTES = 64 * 1024 ** 2      # PyPI's largest project pages are a few MiB
DEFAULT_FILE_BYTES = 3 * 1024 ** 3       # the largest wheels people install (CUDA builds) are ~2.5 GiB
