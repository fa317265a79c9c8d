"""Where things are: the checkout, the venv's executables, the caches the tests keep."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))
WHEEL_CACHE = CACHE / "test-wheels"
DATA = ROOT / "tests" / "data"


def checkout_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked and new, not ignored), copied to DEST: no .venv, no build/."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest
