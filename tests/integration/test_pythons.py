"""Issue 26: current Pythons. The 3.13 base (Debian trixie, made by scripts/setup.sh) builds,
and serves the example agent and the `pixell init` FastAPI scaffold, run as their ECS task
runs them (read-only root, a tmpfs /tmp, the numeric uid); python3.13 is refused unless
AGENT_IMAGE_PREVIEW_RUNTIMES names it. A python3.9 build warns that its runtime is past end of
life: in the log, the JSON result and the GitHub summary.

Costs about a minute: the base rebuild is the layer cache's (setup.sh built it), the agents
are small, and the 3.13 wheels come from the tests' index (tests/support/index.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from builder.api import BuildOptions, build_image
from builder.core.errors import PackageValidationError
from builder.core.labels import ABI_LABEL, READY_LABEL, parse_abi
from builder.core.pythons import PREVIEW_ENV
from tests.support.cli import AGENT_IMAGE
from tests.support.paths import BIN, ROOT
from tests.support.serving import Served

HELLO = ROOT / "examples" / "hello-agent"
# how the ECS task runs the image (builder/ship/ecs.py): read-only root, /tmp writable, the base's uid
AS_A_TASK = {"read_only": True, "tmpfs": {"/tmp": "rw,size=64m"}, "user": "10001"}
BASE_313 = "agent-image/base:py3.13"


def runtime(folder, name: str) -> None:
    text = (folder / "agent.yaml").read_text()
    (folder / "agent.yaml").write_text(text.replace("runtime: python3.11", f"runtime: {name}"))


def test_the_3_13_base_builds(index_url, docker_client, cleanup_images):
    cleanup_images("pythons-test/")
    proc = subprocess.run([AGENT_IMAGE, "base", "--python", "3.13", "--tag", "pythons-test/base:py3.13",
                           "--index-url", index_url, "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = docker_client.images.get("pythons-test/base:py3.13")
    abi = parse_abi(image.labels[ABI_LABEL])
    assert (abi["distro"], abi["python"], abi["uid"]) == ("debian:13", "3.13", "10001")
    assert image.id == docker_client.images.get(BASE_313).id  # what setup.sh built: the same steps, cached


def test_python_3_13_is_refused_unless_asked_for(tmp_path, monkeypatch):
    agent = shutil.copytree(HELLO, tmp_path / "hello")
    runtime(agent, "python3.13")
    monkeypatch.delenv(PREVIEW_ENV, raising=False)
    with pytest.raises(PackageValidationError) as err:
        build_image(agent, BuildOptions())
    assert err.value.field == "runtime" and PREVIEW_ENV in err.value.message


def test_the_example_agent_on_3_13_serves_as_a_task(tmp_path, index_url, docker_client, cleanup_images, monkeypatch):
    cleanup_images("pythons-test/")  # its dependency image too
    agent = shutil.copytree(HELLO, tmp_path / "hello")
    runtime(agent, "python3.13")
    monkeypatch.setenv(PREVIEW_ENV, "python3.13")
    result = build_image(agent, BuildOptions(index_url=index_url, repository="pythons-test/hello"))
    assert result.runtime == {"name": "python3.13", "python": "3.13", "end_of_life": "2029-10-31",
                              "past_end_of_life": False, "preview": True}
    image = docker_client.images.get(result.image_id)
    assert "python=3.13" in image.labels[ABI_LABEL] and float(image.labels[READY_LABEL]) > 0
    served = Served(docker_client, result.image, env={"OPENAI_API_KEY": "sk-test"}, **AS_A_TASK)
    try:
        status, _, body = served.call("POST", "/invoke", {"name": "py313"})
        assert status == 200 and body["message"] == "Hello, py313!"
        assert served.call("GET", "/health")[0] == 200
    finally:
        served.remove()


def test_the_fastapi_scaffold_on_3_13_serves_as_a_task(tmp_path, index_url, docker_client, cleanup_images,
                                                       monkeypatch):
    cleanup_images("pythons-test/")  # its dependency image too
    subprocess.run([str(BIN / "pixell"), "init", "kit313"], cwd=tmp_path, check=True, capture_output=True)
    proj = tmp_path / "kit313"
    shutil.copy(proj / ".env.example", proj / ".env")
    runtime(proj, "python3.13")  # (the folder: `pixell build` would refuse the runtime, as the kit does today)
    monkeypatch.setenv(PREVIEW_ENV, "python3.13")
    result = build_image(proj, BuildOptions(index_url=index_url, repository="pythons-test/kit"))
    served = Served(docker_client, result.image, **AS_A_TASK)
    try:
        status, _, body = served.call("GET", "/api/hello")  # the scaffold's own route, under uvicorn
        assert status == 200 and body, body
        assert served.call("GET", "/health")[0] == 200
        assert any(line.get("event") == "mounted rest entry" for line in served.logs())
        version = served.container.exec_run(["python", "-c", "import sys; print(sys.version_info[:2])"])
        assert version.output.decode().strip() == "(3, 13)"
    finally:
        served.remove()


def test_a_python_3_9_build_warns_that_its_runtime_is_past_end_of_life(agent_factory, index_url, tmp_path,
                                                                       cleanup_images):
    cleanup_images("pythons-test/")  # its dependency image too
    agent = agent_factory("old-python", runtime="python3.9", requirements=None)
    summary = tmp_path / "summary.md"
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--index-url", index_url, "--repository",
                           "pythons-test/old", "--json", "--progress", "json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["runtime"]["past_end_of_life"] is True and out["runtime"]["end_of_life"] == "2025-10-31"
    assert out["warnings"][0].startswith("runtime python3.9 is past its end of life")
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    eol = [e for e in events if e.get("event") == "Runtime past end of life"]
    assert len(eol) == 1 and eol[0]["level"] == "warning" and eol[0]["end_of_life"] == "2025-10-31"
    assert "::warning title=agent-image%3A runtime python3.9 is past its end of life::" in proc.stderr
    assert "| runtime | :warning: `python3.9` is past its end of life (2025-10-31)" in summary.read_text()
