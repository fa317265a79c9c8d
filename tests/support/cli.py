"""The ``agent-image`` command of this venv, run as a subprocess (PYTHONPATH picks the code)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.paths import BIN

AGENT_IMAGE = str(BIN / "agent-image")


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """`agent-image ARGS`, output captured as text; KW goes to subprocess.run (env, timeout, ...)."""
    return subprocess.run([AGENT_IMAGE, *map(str, args)], capture_output=True, text=True, **kw)


def build_json(source: Path, *args: str, timeout: float = 600) -> tuple[int, dict, str]:
    """`agent-image build SOURCE --json ARGS`: (exit code, the one JSON object, stderr: JSON log lines, as
    tools following events read them); never a traceback."""
    proc = run_cli("build", source, "--json", "--progress", "json", *args, timeout=timeout)
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"--json must print exactly one object on stdout, got: {proc.stdout!r}"
    return proc.returncode, json.loads(lines[0]), proc.stderr
