"""Where things are: the checkout, the venv's executables, the caches the tests keep."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))
WHEEL_CACHE = CACHE / "test-wheels"
DATA = ROOT / "tests" / "data"
