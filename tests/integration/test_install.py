"""Issue 9: what a pip user gets. The wheel `python -m build` makes, installed
into a fresh venv outside the checkout, builds and serves the example agent
with nothing from the checkout on its path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from tests.support.net import free_port
from tests.support.paths import ROOT, checkout_copy

PREFIX = "agent-image-test-wheel"  # every image this test tags lives under it


def _runtime_files() -> list[str]:
    """Repository-relative files the tool reads at run time."""
    files = [p.relative_to(ROOT).as_posix() for p in (ROOT / "templates").rglob("*") if p.is_file()]
    return files + ["Dockerfile.base", "builder/shim/serve.py", "builder/shim/healthcheck.py"]


def _run(args: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, f"{args[:3]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_wheel_installed_outside_the_checkout_builds_and_serves(tmp_path, index_url, docker_client,
                                                                 cleanup_images):
    cleanup_images(PREFIX + "/")
    src, dist, elsewhere = checkout_copy(tmp_path / "clone"), tmp_path / "dist", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    _run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=elsewhere, env=env)

    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for rel in _runtime_files():
        packaged = rel if rel.startswith("builder/") else f"builder/_data/{rel}"
        assert packaged in in_wheel, f"the wheel lacks {rel} (as {packaged})"
        assert rel in in_sdist, f"the sdist lacks {rel}"

    # a fresh venv; pip finds the dependencies where the project venv found them (pip's own config)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=elsewhere, env=env)
    _run([venv / "bin" / "pip", "install", "-q", wheel], cwd=elsewhere, env=env)
    where = _run([venv / "bin" / "python", "-c", "import builder; print(builder.__file__)"], cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout
    # builder.testing ships, its pytest plugin is registered, and it imports without the [testing] extra
    plugin = _run([venv / "bin" / "python", "-c", "import builder.testing, importlib.metadata as m; "
                   "print(sorted(e.value for e in m.entry_points(group='pytest11')))"], cwd=elsewhere, env=env)
    assert plugin.stdout.strip() == "['builder.testing.plugin']", plugin.stdout
    assert "builder/testing/container.py" in in_wheel
    tool = venv / "bin" / "agent-image"

    base = f"{PREFIX}/base:py3.11"
    out = json.loads(_run([tool, "base", "--tag", base, "--json"], cwd=elsewhere, env=env).stdout)
    assert out["ok"] and out["image"] == base

    agent = shutil.copytree(ROOT / "examples" / "hello-agent", tmp_path / "hello-agent")
    out = json.loads(_run([tool, "build", agent, "--base-image", base, "--index-url", index_url,
                           "--repository", f"{PREFIX}/hello-agent", "--json"], cwd=elsewhere, env=env).stdout)
    assert out["ok"] and out["image"] == f"{PREFIX}/hello-agent:1.0.0", out

    port, name = free_port(), f"{PREFIX}-hello-{os.getpid()}"
    try:
        url = json.loads(_run([tool, "run", out["image"], "--port", port, "--name", name, "--json"],
                              cwd=elsewhere, env=env).stdout)["url"]
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["ok"] is True
    finally:
        try:
            docker_client.containers.get(name).remove(force=True, v=True)
        except Exception:  # never started: nothing to remove
            pass
