"""Issue 11, item 2: version tags are immutable; a retry of the same upload keeps the tag.

Tags are read from the registry over its HTTP API (urllib), never from the engine.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

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
