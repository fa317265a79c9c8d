"""Issue 24: on an empty runner the base is pulled beside the build. The plan, the registry's
images and the index proxy's pages need only the base's facts, read from its registry; the
sandbox and every engine build wait for the pull, and what the pull raises is the build's error
(its class and exit code), not the sandbox's."""

from __future__ import annotations

import io
import json
import urllib.request
import uuid

import docker
import pytest

from builder.build.engine import Engine
from builder.core.errors import BaseImageMissingError, RegistryError
from builder.ship.pushpull import BasePull
from tests.support.cli import build_json, run_cli

PREFIX = "basepull-test"
ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def _lone_base(registry, docker_client, name: str) -> tuple[str, dict]:
    """A base of its own pushed to the registry (a file no other image has, under the venv and tool
    layers: the engine must download those), then deleted from the engine: (REPO@DIGEST, manifest)."""
    python, local = f"{PREFIX}/python-{name}:3.11", f"{PREFIX}/base-{name}:py3.11"
    docker_client.images.build(fileobj=io.BytesIO(
        f"FROM agent-image/python:3.11\nRUN echo {uuid.uuid4().hex} > /etc/{PREFIX}\n".encode()), tag=python, rm=True)
    proc = run_cli("base", "--from", python, "--tag", local, "--registry", f"{registry.host}/{PREFIX}-{name}", "--push")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pinned = proc.stdout.split()[-1]
    for ref in (local, python, f"{registry.host}/{PREFIX}-{name}/agent-image.base:py3.11"):
        docker_client.images.remove(ref, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(pinned)
    repo, digest = pinned.split("/", 1)[1].split("@")
    req = urllib.request.Request(f"http://{registry.host}/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req) as resp:
        return pinned, json.loads(resp.read())


def _events(stderr: str) -> list[dict]:
    return [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]


@pytest.fixture()
def drop_built(docker_client):
    """Removes, at the end, every image the test built on its own base (they hold its layers)."""
    made: list[str] = []
    yield made
    for ref in made:
        try:
            docker_client.images.remove(ref, force=True)
        except docker.errors.APIError:
            pass


def test_a_base_pulled_beside_the_build_serves_its_sandbox_and_dependency_step(
        registry, docker_client, agent_factory, index_url, drop_built, tmp_path):
    pinned, _ = _lone_base(registry, docker_client, "ok")
    drop_built.append(pinned)
    agent = agent_factory("pull-beside", requirements="tinyreq==1.1\n")
    code, out, stderr = build_json(agent, "--index-url", index_url, "--base-image", pinned,
                                   "--registry", f"{registry.host}/{PREFIX}-agents", "--cache-dir", str(tmp_path / "c"))
    assert code == 0, stderr[-3000:]
    drop_built.append(out["image_id"])
    events = [e.get("event") for e in _events(stderr)]
    assert "Pulled the base image" in events, events
    assert "Building the dependency image" in events, events  # the sandbox's path, not a build without deps
    image = docker_client.images.get(out["image_id"])
    assert image.labels["org.opencontainers.image.base.digest"] == pinned.split("@")[1]
    ran = docker_client.containers.run(out["image_id"], ["python", "-c", "import tinyreq; print('ok')"],
                                       remove=True, network_mode="none")
    assert ran.strip() == b"ok"


def test_a_failed_pull_of_the_base_is_the_builds_registry_error_not_the_sandboxs(
        registry, docker_client, agent_factory, index_url, tmp_path):
    pinned, manifest = _lone_base(registry, docker_client, "broken")
    repo = pinned.split("/", 1)[1].split("@")[0]
    # the registry still answers the manifest and the config (the build reads the base's facts there),
    # but not a layer the engine lacks: the pull fails once the build is under way
    top = manifest["layers"][-1]["digest"]
    with urllib.request.urlopen(urllib.request.Request(f"http://{registry.host}/v2/{repo}/blobs/{top}",
                                                       method="DELETE")) as resp:
        assert resp.status == 202
    agent = agent_factory("pull-broken", requirements="tinyreq==1.1\n")
    code, out, stderr = build_json(agent, "--index-url", index_url, "--base-image", pinned,
                                   "--registry", f"{registry.host}/{PREFIX}-agents", "--cache-dir", str(tmp_path / "c"))
    assert code == RegistryError.exit_code, (code, stderr[-3000:])
    assert out["ok"] is False and f"pulling {pinned} failed" in out["error"]["message"], out
    assert "sandbox" not in out["error"]["message"].lower(), out


def test_a_base_whose_pull_is_not_the_image_read_fails_the_build(registry, docker_client):
    """The build is planned on the base's facts read from the registry; a tag that moved before the
    pull gives another image, and building on it would build what was not planned."""
    pinned, _ = _lone_base(registry, docker_client, "moved")
    try:
        pull = BasePull(Engine(), pinned, "sha256:" + "0" * 64)
        with pytest.raises(BaseImageMissingError, match="changed while it was pulled"):
            pull.wait()
        with pytest.raises(BaseImageMissingError):  # every caller that needs it hears it
            pull.wait()
    finally:
        docker_client.images.remove(pinned, force=True)
