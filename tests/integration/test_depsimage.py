"""Issue 14: the dependency image. Agents with the same dependency lines build FROM
one image, pushed once: an empty runner pulls it instead of installing, and the
registry stores the dependency layers once for every such agent."""

from __future__ import annotations

import json
import os
import time
import urllib.request

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from builder.core.defaults import base_image_for
from builder.core.labels import DEPS_LABEL
from tests.support.engine import engine_tags
from tests.support.packages import make_agent

# a line no other test has, so this test's dependency image is its own
REQS = 'tinyreq==1.0 ; platform_release != "issue14-deps-image"\n'


def _layers(registry, repo: str, tag: str) -> list[str]:
    req = urllib.request.Request(f"http://{registry.host}/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req) as resp:
        return [layer["digest"] for layer in json.load(resp)["layers"]]


def _drop(docker_client, prefix: str) -> None:
    """An empty runner: no tag under PREFIX (agents, dependency images) on this engine."""
    for tag in engine_tags(docker_client):
        if tag.startswith(prefix):
            docker_client.images.remove(tag, force=True)


def test_an_empty_runner_pulls_the_dependency_image_and_the_registry_stores_it_once(
        agent_factory, index_url, registry, docker_client, cleanup_images, tmp_path):
    prefix = f"{registry.host}/depsimg"
    cleanup_images(prefix)
    first = build_image(agent_factory("deps-one", requirements=REQS),
                        BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c1"))
    assert first.deps_origin in ("built", "local") and first.deps_image.startswith(f"{prefix}/agent-image.deps:")
    assert any(p.startswith("tinyreq-1.0") for p in first.installed), first.installed

    _drop(docker_client, prefix)  # another runner: no local image, an empty download cache
    # (a setup.py only running it can read: the engine builds it; test_assemble.py has the literal one's path)
    two = agent_factory("deps-two", requirements=REQS)
    (two / "setup.py").write_text("import setuptools\nsetuptools.setup(name='deps-two', version='0.1.0', "
                                  "packages=['src'], package_dir={'': '.'})\n")
    second = build_image(two,
                         BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c2"))
    assert second.deps_image == first.deps_image and second.deps_origin == "pulled", second
    assert "deps" in second.steps_cached, second.steps_cached
    assert not any(p.startswith("tinyreq") for p in second.installed), second.installed
    assert not any(f.startswith("tinyreq") for f in second.index["downloaded"]), second.index
    # its sandbox started while the image was pulled, and went with the build
    mine = {"label": f"io.pixell.agent-image.sandbox.pid={os.getpid()}"}
    for _ in range(50):
        if not docker_client.containers.list(all=True, filters=mine):
            break
        time.sleep(0.1)
    assert docker_client.containers.list(all=True, filters=mine) == []

    # the two agents share the dependency image's layers in the registry: stored once, pulled once
    deps_repo, deps_tag = first.deps_image.rsplit(":", 1)
    shared = _layers(registry, deps_repo.split("/", 1)[1], deps_tag)
    base_layers = len(docker_client.images.get(base_image_for("3.11")).attrs["RootFS"]["Layers"])
    assert len(shared) == base_layers + 3  # COPY the lines, RUN the install, RUN the record (depsenv)
    for agent in ("deps-one", "deps-two"):
        assert _layers(registry, f"depsimg/{agent}", "0.1.0")[:len(shared)] == shared
    # and it runs
    out = docker_client.containers.run(second.image_id, ["python", "-c", "import tinyreq, src.main; print('ok')"],
                                       remove=True).decode().strip()
    assert out == "ok"


def test_the_dependency_image_holds_no_agent_file_and_names_no_agent(agent_factory, index_url, docker_client,
                                                                      cleanup_images, tmp_path):
    cleanup_images("agents/deps-secretive")
    agent = agent_factory("deps-secretive", requirements=REQS)
    (agent / "src" / "marker_7f3a.py").write_text("X = 1\n")
    result = build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "c"))
    deps = docker_client.images.get(result.deps_image)
    assert "io.pixell.agent.name" not in deps.labels and deps.labels[DEPS_LABEL]
    history = " ".join(h.get("CreatedBy") or "" for h in docker_client.api.history(result.deps_image))
    assert "COPY app/" not in history and ".agent-image/meta" not in history and "deps-secretive" not in history
    out = docker_client.containers.run(result.deps_image, ["sh", "-c", "find / -xdev -name 'marker_7f3a*' | wc -l"],
                                       remove=True).decode().strip()
    assert out == "0"
    # the agent's image is FROM it: every dependency-image layer is the agent's too
    agent_layers = docker_client.images.get(result.image_id).attrs["RootFS"]["Layers"]
    assert agent_layers[:len(deps.attrs["RootFS"]["Layers"])] == deps.attrs["RootFS"]["Layers"]


def test_an_agent_image_under_the_dependency_tag_is_refused(agent_factory, index_url, registry, docker_client,
                                                           cleanup_images, tmp_path):
    """The registry can hold anything under a tag: an agent's image pushed as the
    dependency image (its deps-key label copied, its own code on top) is not used."""
    prefix = f"{registry.host}/depspoison"
    cleanup_images(prefix)
    honest = build_image(agent_factory("deps-honest", requirements=REQS),
                         BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "c"))
    _drop(docker_client, f"{prefix}/agent-image.deps")
    intruder = make_agent(tmp_path / "x", "deps-intruder", requirements=REQS)
    (intruder / "src" / "main.py").write_text("OWNED = True\n")
    bad = build_image(intruder, BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "c"))
    docker_client.images.get(bad.image_id).tag(*honest.deps_image.rsplit(":", 1))  # it carries the key label
    docker_client.images.push(*honest.deps_image.rsplit(":", 1))
    over_deps = len(docker_client.images.get(base_image_for("3.11")).attrs["RootFS"]["Layers"]) + 3  # (+ record)
    intruder_layers = docker_client.images.get(bad.image_id).attrs["RootFS"]["Layers"][over_deps:]  # its own code
    _drop(docker_client, prefix)
    with capture_logs() as logs:
        again = build_image(agent_factory("deps-honest", requirements=REQS),
                            BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "c"))
    assert any(e["event"] == "Not using the dependency image from the registry" and "agent's image" in e["reason"]
               for e in logs), [e["event"] for e in logs]
    assert again.deps_origin == "built"
    layers = set(docker_client.images.get(again.image_id).attrs["RootFS"]["Layers"])
    assert not layers & set(intruder_layers)


# --- pure: the key and the checks -------------------------------------------------------------


def test_a_dependency_image_the_registry_refuses_is_a_warning_not_a_failure(agent_factory, index_url, registry,
                                                                            cleanup_images, tmp_path):
    """The agent is pushed; a registry that refuses the dependency image's repository (ECR
    before the repository is created) costs other runners a rebuild, not this upload."""
    from tests.support.net import free_port
    nowhere = f"127.0.0.1:{free_port()}/tenant"  # nothing listens: every push there fails
    repo = f"{registry.host}/depswarn/deps-warned"
    cleanup_images(repo)
    cleanup_images(nowhere)
    result = build_image(agent_factory("deps-warned", requirements=REQS),
                         BuildOptions(index_url=index_url, repository=repo, registry=nowhere, push=True,
                                      cache_dir=tmp_path / "c"))
    assert result.digest_ref and result.digest_ref.startswith(repo + "@sha256:")
    assert result.deps_image.startswith(f"{nowhere}/agent-image.deps:")
    assert any("was not pushed" in w and "Create the repository" in w for w in result.warnings), result.warnings
