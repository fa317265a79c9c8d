"""Issue 11, item 2: version tags are immutable; a retry of the same upload keeps the tag.

Tags are read from the registry over its HTTP API (urllib), never from the engine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest

from builder.core.errors import TagExistsError
from builder.ship.pushpull import read_back
from tests.support.cli import AGENT_IMAGE

ACCEPT = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def tag_digest(host: str, repo: str, tag: str) -> str:
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req) as resp:
        return resp.headers["Docker-Content-Digest"]


def build(agent, index_url, prefix, *extra) -> tuple[int, dict, str]:
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url,
                           "--registry", prefix, "--push", *extra], capture_output=True, text=True)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_a_different_package_under_a_pushed_version_is_refused(agent_factory, index_url, registry, docker_client,
                                                               cleanup_images):
    prefix = f"{registry.host}/immutable"
    cleanup_images(prefix)
    agent = agent_factory("fixed-version", requirements="tinyreq==1.0\n")
    code, first, err = build(agent, index_url, prefix)
    assert code == 0, err[-2000:]
    held = tag_digest(registry.host, "immutable/fixed-version", "0.1.0")
    assert first["digest_ref"].endswith(held)

    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nCHANGED = True\n")
    code, out, _ = build(agent, index_url, prefix)
    assert code == 62
    error = out["error"]
    assert error["class"] == "TagExistsError" and error["field"] == "metadata.version"
    assert f"{prefix}/fixed-version:0.1.0" in error["message"] and held in error["message"]
    assert "--overwrite" in error["hint"] and "image sha256:" in error["message"]
    assert tag_digest(registry.host, "immutable/fixed-version", "0.1.0") == held, "the refused push moved the tag"
    # no tag moved locally either: the refusal came before the build was tagged
    assert docker_client.images.get(f"{prefix}/fixed-version:0.1.0").id == first["image_id"]
    in_tags = [t for i in docker_client.images.list(f"{prefix}/fixed-version") for t in i.tags if ":in-" in t]
    assert len(in_tags) == 1, in_tags

    code, forced, err = build(agent, index_url, prefix, "--overwrite")
    assert code == 0, err[-2000:]
    assert forced["digest_ref"].endswith(tag_digest(registry.host, "immutable/fixed-version", "0.1.0"))
    assert tag_digest(registry.host, "immutable/fixed-version", "0.1.0") != held


def test_a_retry_on_another_runner_keeps_the_tag(agent_factory, index_url, registry, docker_client, cleanup_images,
                                                 tmp_path):
    """The same package, rebuilt from scratch on a runner whose base image differs
    (other bytes, other image id): the registry's tag stays, its digest is reported."""
    prefix = f"{registry.host}/retry"
    cleanup_images(prefix)
    cleanup_images("retry-test/")
    agent = agent_factory("retried", requirements="tinyreq==1.0\n")
    code, first, err = build(agent, index_url, prefix)
    assert code == 0, err[-2000:]
    held = tag_digest(registry.host, "retry/retried", "0.1.0")
    # "another runner": a base with another image id, no layer cache, no input-digest hit
    docker_client.images.build(fileobj=__import__("io").BytesIO(
        f"FROM {first_base(docker_client, first)}\nRUN echo other-runner > /etc/runner\n".encode()),
        tag="retry-test/base:other", rm=True)
    code, again, err = build(agent, index_url, prefix, "--no-cache", "--base-image", "retry-test/base:other")
    assert code == 0, err[-2000:]
    assert again["image_id"] != first["image_id"] and not again["cached"]
    assert again["tag_kept"] and again["digest_ref"] == first["digest_ref"]
    assert tag_digest(registry.host, "retry/retried", "0.1.0") == held
    assert "kept, nothing pushed" in err


def first_base(docker_client, result: dict) -> str:
    return docker_client.images.get(result["image_id"]).labels["org.opencontainers.image.base.name"]


# -- issue 27: two builds of one version at once ---------------------------------------------------------------

def _at_once(*cmds, env=None) -> list[tuple[int, dict, str]]:
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, json.loads(o[0]), o[1]) for p, o in zip(procs, outs)]


def _cmd(agent, index_url, prefix, cache):
    return [AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url, "--registry", prefix, "--push",
            "--cache-dir", str(cache)]


def test_two_processes_pushing_one_version_at_once_end_with_one_tag(agent_factory, index_url, registry,
                                                                    cleanup_images, tmp_path):
    """The same package twice at once (two caches: two builders), and two different packages under one
    version at once: the check and the push are one step on this machine, so exactly one push sets the
    tag; the other build keeps it (same content) or is refused (TagExistsError), never both pushed."""
    prefix = f"{registry.host}/ai27-race"
    cleanup_images(prefix)
    same = agent_factory("ai27-same", requirements="tinyreq==1.0\n")
    (a, first), (b, second) = [(code, out) for code, out, _ in
                               _at_once(_cmd(same, index_url, prefix, tmp_path / "c1"),
                                        _cmd(same, index_url, prefix, tmp_path / "c2"))]
    assert a == b == 0, (first, second)
    held = tag_digest(registry.host, "ai27-race/ai27-same", "0.1.0")
    assert sorted([first["tag_kept"], second["tag_kept"]]) == [False, True], "exactly one pushed"
    assert first["digest_ref"].endswith(held) and second["digest_ref"].endswith(held)

    one = agent_factory("ai27-diff", requirements="tinyreq==1.0\n")
    other = tmp_path / "other"
    shutil.copytree(one, other / "ai27-diff")
    main = other / "ai27-diff" / "src" / "main.py"
    main.write_text(main.read_text() + "\nOTHER = True\n")
    results = _at_once(_cmd(one, index_url, prefix, tmp_path / "c1"),
                       _cmd(other / "ai27-diff", index_url, prefix, tmp_path / "c2"))
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 62], [(c, o.get("error")) for c, o, _ in results]
    winner = next(o for c, o, _ in results if c == 0)
    loser = next(o for c, o, _ in results if c == 62)
    assert loser["error"]["class"] == "TagExistsError"
    assert winner["digest_ref"].endswith(tag_digest(registry.host, "ai27-race/ai27-diff", "0.1.0"))


def test_a_tag_moved_by_another_runner_right_after_the_push_is_reported(agent_factory, index_url, registry,
                                                                        docker_client, cleanup_images):
    """Across runners no lock is shared: a registry without immutable tags (Debian's docker-registry)
    takes both pushes. Reading the tag back after the push catches the race when the other push
    landed before the read: here the other runner's push is the one this builder reads back."""
    prefix = f"{registry.host}/ai27-readback"
    cleanup_images(prefix)
    agent = agent_factory("ai27-rb", requirements="tinyreq==1.0\n")
    code, first, err = build(agent, index_url, prefix)
    assert code == 0, err[-2000:]
    ref = f"{prefix}/ai27-rb:0.1.0"
    held = tag_digest(registry.host, "ai27-readback/ai27-rb", "0.1.0")
    read_back(ref, held, None, "sha256:whatever")  # the tag holds what was pushed: fine
    read_back(ref, "sha256:" + "0" * 64, None, first_content(docker_client, first))  # the same content: fine
    with pytest.raises(TagExistsError) as raced:
        read_back(ref, "sha256:" + "0" * 64, None, "sha256:other-content")
    assert "another runner pushed the same version" in str(raced.value) and held in str(raced.value)


def first_content(docker_client, result: dict) -> str:
    return docker_client.images.get(result["image_id"]).labels["io.pixell.agent-image.content-digest"]
