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
from builder.core.errors import RegistryError
from builder.ship.assemble import registry_image
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
    tag = f"{registry.host}/{PREFIX}-ok/agent-image.base:py3.11"  # named by its tag, as many pipelines do
    drop_built += [pinned, tag]
    agent = agent_factory("pull-beside", requirements="tinyreq==1.1\n")
    args = ("--index-url", index_url, "--base-image", tag, "--registry", f"{registry.host}/{PREFIX}-agents",
            "--cache-dir", str(tmp_path / "c"))
    code, out, stderr = build_json(agent, *args)
    assert code == 0, stderr[-3000:]
    drop_built.append(out["image_id"])
    events = [e.get("event") for e in _events(stderr)]
    assert "Pulled the base image" in events, events
    assert "Building the dependency image" in events, events  # the sandbox's path, not a build without deps
    image = docker_client.images.get(out["image_id"])
    assert image.labels["org.opencontainers.image.base.digest"] == pinned.split("@")[1]
    assert docker_client.images.get(tag).id == docker_client.images.get(pinned).id  # the tag, as a pull gives it
    ran = docker_client.containers.run(out["image_id"], ["python", "-c", "import tinyreq; print('ok')"],
                                       remove=True, network_mode="none")
    assert ran.strip() == b"ok"
    # planned on the registry's facts, it is the build of the engine's: the same inputs, so reused
    code, again, stderr = build_json(agent, *args)
    assert code == 0, stderr[-3000:]
    assert "Pulled the base image" not in [e.get("event") for e in _events(stderr)]
    assert (again["input_digest"], again["image_id"], again["cached"]) == (out["input_digest"], out["image_id"], True)


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


def test_a_tag_moved_while_the_base_is_pulled_changes_nothing(registry, docker_client, drop_built):
    """The build is planned on the facts read from the registry: the pull gives that image (by its
    digest) and the tag, even when the registry's tag names another image by then."""
    first, _ = _lone_base(registry, docker_client, "moved")
    tag = f"{registry.host}/{PREFIX}-moved/agent-image.base:py3.11"
    read = registry_image(tag, auth=None)
    assert read is not None and read.digests == (first,)
    second, _ = _lone_base(registry, docker_client, "moved")  # the same tag, pushed again: another image
    assert second != first and registry_image(tag, auth=None).digests == (second,)
    drop_built += [first, second, tag]
    BasePull(Engine(), tag, read).wait()
    assert docker_client.images.get(tag).id == read.id
    assert f"{tag.rsplit(':', 1)[0]}@{first.split('@')[1]}" in docker_client.images.get(tag).attrs["RepoDigests"]
