"""pytest in a subprocess with agent-image's plugin loaded, as an agent author runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tests.support.paths import ROOT

PLUGIN = "builder.testing.plugin"


def plugin_args() -> list[str]:
    """`-p builder.testing.plugin` unless the installed distribution already registers it (pytest11):
    loading it twice is an error."""
    registered = any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))
    return [] if registered else ["-p", PLUGIN]


def run_pytest(where: Path, *args: str, env: dict | None = None, timeout: float = 600,
               prelude: str = "") -> subprocess.CompletedProcess:
    """`pytest WHERE ARGS` in a fresh interpreter (PRELUDE runs first: e.g. hide a module)."""
    code = f"{prelude}\nimport sys, pytest\nsys.exit(pytest.main(sys.argv[1:]))"
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, str(where), "-p", "no:cacheprovider", "-rs", *plugin_args(),
                           *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=where.parent
                          if where.is_file() else where)
