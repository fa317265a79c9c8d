"""Issue 3: a private index without leaking it, and a cache that survives token rotation."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from builder.api import BuildOptions, build_image
from builder.core.errors import IndexAuthError, PackageValidationError
from tests.support.cli import AGENT_IMAGE
from tests.support.engine import image_holds


def test_token_appears_nowhere(agent_factory, index, docker_client, cleanup_images, tmp_path):
    cleanup_images("agents/secret-scan")
    password = index.users["alice"]
    agent = agent_factory("secret-scan", requirements="tinyreq==1.0\nrequests==2.32.3\n")
    url = index.url_for("alice")
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "-v", "--index-url", url],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    ref = out["image"]
    dry = subprocess.run([AGENT_IMAGE, "build", str(agent), "--dry-run", "--index-url", url],
                         capture_output=True, text=True)
    assert "FROM agent-image/base" in dry.stdout
    history = subprocess.run(["docker", "history", "--no-trunc", ref], capture_output=True, text=True).stdout
    inspect = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True).stdout
    assert "agent-image-index.invalid" in history, "sanity: history shows the build's index arg"
    for where, text in {"stdout": proc.stdout, "stderr (logs)": proc.stderr, "dry-run": dry.stdout + dry.stderr,
                        "history": history, "inspect": inspect}.items():
        assert password not in text, f"the index password leaked into {where}"
        assert "http_proxy" not in text.lower() or where not in ("history", "inspect"), \
            f"the build's proxy arg leaked into {where}"
    assert image_holds(docker_client, ref, [password.encode(), b"alice:"]) == []


def test_token_rotation_reuses_the_dependency_layer(agent_factory, wheelhouse, docker_client, cleanup_images,
                                                    tmp_path):
    """A rotated token (same index user) keeps the dependency image; another account of the
    same index never gets it (the key holds the user, never the token)."""
    from passlib.apache import HtpasswdFile

    from tests.support.index import start_index
    idx = start_index(tmp_path / "own-index", wheelhouse)  # its own, so its tokens can rotate
    try:
        cleanup_images("agents/rotating")
        agent = agent_factory("rotating", requirements='requests==2.32.3\ntinyreq==1.1 ; platform_release != "rot"\n')
        first = build_image(agent, BuildOptions(index_url=idx.url_for("alice"), cache_dir=tmp_path / "c"))
        ht = HtpasswdFile(str(tmp_path / "own-index" / "htpasswd"))
        ht.set_password("alice", "s3cret-token-ROTATED-3333")
        time.sleep(1.1)  # pypiserver reloads the file when its mtime moves
        ht.save()
        idx.users["alice"] = "s3cret-token-ROTATED-3333"
        (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\n# code change\n")
        second = build_image(agent, BuildOptions(index_url=idx.url_for("alice"), cache_dir=tmp_path / "c"))
        assert not second.cached and second.image_id != first.image_id
        assert "deps" in second.steps_cached and second.deps_image == first.deps_image, second
        assert second.index["upstream_bytes"] == 0 or not second.index["downloaded"]
        layers1 = docker_client.images.get(first.image_id).attrs["RootFS"]["Layers"]
        layers2 = docker_client.images.get(second.image_id).attrs["RootFS"]["Layers"]
        # base + deps layers are shared; only the code layers differ
        shared = [a for a, b in zip(layers1, layers2) if a == b]
        assert len(shared) >= len(layers1) - 3, (layers1, layers2)
        third = build_image(agent_factory("rotating-bob", requirements=(agent / "requirements.txt").read_text()),
                            BuildOptions(index_url=idx.url_for("bob"), cache_dir=tmp_path / "c"))
        assert third.deps_image != first.deps_image and third.deps_origin == "built", third
        cleanup_images("agents/rotating-bob")
    finally:
        idx.proc.terminate()
        idx.proc.wait(5)


def test_second_agent_downloads_no_shared_file(agent_factory, index_url, tmp_path, cleanup_images):
    cleanup_images("agents/share-")
    cache = tmp_path / "downloads"
    # (markers no other test's lines have: their dependency images would leave nothing to download)
    a = build_image(agent_factory("share-one", requirements='requests==2.32.3 ; platform_release != "s1"\n'),
                    BuildOptions(index_url=index_url, cache_dir=cache))
    b = build_image(agent_factory("share-two", requirements='requests==2.32.3 ; platform_release != "s2"\n'
                                                            'tinyreq==2.0\nsharedlib\n'),
                    BuildOptions(index_url=index_url, cache_dir=cache))
    first_files = set(a.index["downloaded"])
    assert any(f.startswith("requests-2.32.3") for f in first_files)
    assert not first_files & set(b.index["downloaded"]), "shared files were fetched again"
    assert first_files <= set(b.index["reused"])
    assert {"tinyreq-2.0-py3-none-any.whl", "sharedlib-1.0-py3-none-any.whl"} <= set(b.index["downloaded"])


def test_wrong_credentials_are_an_auth_error_without_the_password(agent_factory, index):
    agent = agent_factory("wrong-creds", requirements="tinyreq==1.0\n")
    bad = index.url.replace("http://", "http://bob:not-the-token-4242@")
    with pytest.raises(IndexAuthError) as info:
        build_image(agent, BuildOptions(index_url=bad))
    text = json.dumps(info.value.to_dict())
    assert "not-the-token-4242" not in text and "expired or lacks read permission" in text


# --- CodeArtifact (botocore's Stubber: the real client, offline) ---------------------------------


# --- the public index through a CA bundle ------------------------------------------------------

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def test_public_index_through_ca_bundle(agent_factory, docker_client, cleanup_images, tmp_path):
    cleanup_images("agents/public-")
    agent = agent_factory("public-ca", requirements="six==1.16.0\n")
    result = build_image(agent, BuildOptions(index_url="https://pypi.org/simple/", ca_bundle=str(HOST_BUNDLE),
                                             cache_dir=tmp_path / "c"))
    assert docker_client.containers.run(result.image, ["python", "-c", "import six; print(six.__version__)"],
                                        remove=True).decode().strip() == "1.16.0"
    # the bundle is used by the builder's proxy only: it is not in the image
    probe = docker_client.containers.run(result.image, ["sh", "-c", "grep -rl 'BEGIN CERT' /app /opt/venv || true"],
                                         remove=True).decode()
    assert probe.strip() == "" or "certifi" in probe
    # and a bundle that trusts nothing makes the same build fail as unreachable, proving it is the one used
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    other = tmp_path / "other-ca.pem"
    other.write_text(HOST_BUNDLE.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    from builder.core.errors import IndexUnreachableError
    with pytest.raises(IndexUnreachableError):
        build_image(agent_factory("public-ca2", requirements="six==1.16.0\n"),
                    BuildOptions(index_url="https://pypi.org/simple/", ca_bundle=str(other),
                                 cache_dir=tmp_path / "c2", nocache=True))


def test_ca_bundle_in_image_only_when_asked(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    """--ca-bundle-in-image adds the extra CA to the image's trust, next to the system CAs."""
    cleanup_images("agents/ca-in-")
    pem = HOST_BUNDLE.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    extra = tmp_path / "corp-ca.pem"
    extra.write_text(pem)
    agent = agent_factory("ca-in-image", requirements="tinyreq==1.0\n")
    result = build_image(agent, BuildOptions(index_url=index_url, ca_bundle=str(extra), ca_bundle_in_image=True))
    script = ("import os, ssl; f = os.environ['SSL_CERT_FILE']; t = open(f).read(); "
              "print(f == os.environ['REQUESTS_CA_BUNDLE'], t.count('BEGIN CERTIFICATE') > 1, "
              f"{pem.strip()!r} in t, len(ssl.create_default_context().get_ca_certs()) > 0)")
    out = docker_client.containers.run(result.image, ["python", "-c", script], remove=True).decode().split()
    assert out == ["True", "True", "True", "True"], out
    # a folder that is not a PEM is refused before anything is built
    with pytest.raises(PackageValidationError) as info:
        build_image(agent, BuildOptions(index_url=index_url, ca_bundle=str(agent / "agent.yaml"),
                                        ca_bundle_in_image=True))
    assert info.value.field == "--ca-bundle" and "no PEM certificate" in str(info.value)
