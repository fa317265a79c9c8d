"""Issue 25: every pushed agent image carries an SBOM, a provenance statement and a signature.

Real parts: Debian's docker-registry on loopback (no referrers API: the referrers tag
schema), the tests' private index, images built by `agent-image build --push`. The
registry is read and tampered with over its HTTP API here (urllib, not the code under test).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import docker
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.cli import build_json, run_cli
from tests.support.engine import remove_tags
from tests.support.packages import make_agent

PREFIX = "ai25"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join(("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json",
                    OCI_INDEX))


def http(method: str, url: str, body: bytes | None = None, ctype: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Accept": ACCEPT, **({"Content-Type": ctype} if ctype else {})})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def manifest(host: str, repo: str, ref: str) -> tuple[str, bytes]:
    status, headers, data = http("GET", f"http://{host}/v2/{repo}/manifests/{ref}")
    assert status == 200, (repo, ref, status, data[:300])
    return headers["Docker-Content-Digest"], data


def put_manifest(host: str, repo: str, ref: str, data: bytes) -> str:
    status, headers, body = http("PUT", f"http://{host}/v2/{repo}/manifests/{ref}", data,
                                 json.loads(data)["mediaType"])
    assert status == 201, body[:300]
    return headers["Docker-Content-Digest"]


def blob(host: str, repo: str, digest: str) -> bytes:
    return http("GET", f"http://{host}/v2/{repo}/blobs/{digest}")[2]


def attached(host: str, repo: str, digest: str, artifact_type: str) -> bytes:
    """The document of the one artifact of ARTIFACT_TYPE the referrers tag schema lists for DIGEST."""
    _, index = manifest(host, repo, digest.replace(":", "-"))
    found = [m for m in json.loads(index)["manifests"] if m["artifactType"] == artifact_type]
    assert len(found) == 1, found
    _, art = manifest(host, repo, found[0]["digest"])
    art = json.loads(art)
    assert art["subject"]["digest"] == digest and art["artifactType"] == artifact_type
    return blob(host, repo, art["layers"][0]["digest"])


@pytest.fixture(scope="module", autouse=True)
def _remove_our_tags(registry, docker_client):
    """Every tag this module made is under REGISTRY/ai25 (the dependency images too): gone at its end."""
    yield
    remove_tags(docker_client, [f"{registry.host}/{PREFIX}/"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ai25-keys")
    out = {}
    for name in ("good", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
        (folder / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        out[name] = (str(folder / f"{name}.key"), str(folder / f"{name}.pub"))
    return out


@pytest.fixture(scope="module")
def shipped(registry, index, keys, tmp_path_factory, docker_client):
    """Two agents built and pushed, signed with the good key: ai25-signed (tinydep, which needs
    tinyreq, from the private index; its own setup.py) and ai25-other."""
    root, prefix = tmp_path_factory.mktemp("ai25-agents"), f"{registry.host}/{PREFIX}"
    out = {}
    for name, reqs in (("ai25-signed", "tinydep==1.0\n"), ("ai25-other", "tinyreq==1.1\n")):
        agent = make_agent(root, name, requirements=reqs)
        code, result, err = build_json(agent, "--index-url", index.url_for("alice"), "--registry", prefix,
                                       "--push", "--sign-key", keys["good"][0])
        assert code == 0, err[-3000:]
        out[name] = (result, err)
    yield out
    remove_tags(docker_client, [prefix])


def test_sbom_lists_exactly_what_pip_list_shows_and_validates(shipped, registry, index, docker_client):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    result, _ = shipped["ai25-signed"]
    digest = result["digest_ref"].split("@")[1]
    assert result["supply"]["signed"] is True and result["supply"]["referrers"] == "tag"
    assert set(result["phases"]) >= {"push", "supply"}
    sbom = attached(registry.host, f"{PREFIX}/ai25-signed", digest, "application/vnd.cyclonedx+json")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom.decode()) is None
    doc = json.loads(sbom)
    assert doc["specVersion"] == "1.6" and doc["metadata"]["component"]["name"] == "ai25-signed"
    assert doc["metadata"]["tools"]["components"][0]["name"] == "agent-image"
    listed = json.loads(docker_client.containers.run(result["image"], ["pip", "list", "--format", "json"], network_mode="none",
                                                     remove=True))
    pip_list = {f"pkg:pypi/{p['name'].lower().replace('_', '-')}@{p['version']}"
                for p in listed}
    purls = {c["purl"] for c in doc["components"] if c.get("purl", "").startswith("pkg:pypi/")}
    assert purls == pip_list, (purls ^ pip_list)
    # the files the build downloaded: the index's bytes, by sha256, from the index named without credentials
    comps = {c["name"]: c for c in doc["components"]}
    for name in ("tinydep", "tinyreq"):
        wheel = next(index.root.glob(f"{name}-{comps[name]['version']}-*.whl"))
        assert comps[name]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}]
        url = comps[name]["externalReferences"][0]["url"]
        assert url.startswith("http://127.0.0.1") and "@" not in url
    assert comps["ai25-signed"]["properties"][0]["value"] == "agent package"
    assert any(c["type"] == "container" and c["bom-ref"] == "base" for c in doc["components"])
    assert index.users["alice"] not in sbom.decode()
    assert len(sbom) < 50_000


def test_provenance_subject_is_the_pushed_digest(shipped, registry, index):
    result, log = shipped["ai25-signed"]
    digest = result["digest_ref"].split("@")[1]
    statement = json.loads(attached(registry.host, f"{PREFIX}/ai25-signed", digest, "application/vnd.in-toto+json"))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": f"{registry.host}/{PREFIX}/ai25-signed",
                                     "digest": {"sha256": digest.split(":")[1]}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"]["agent"] == {"name": "ai25-signed", "version": "0.1.0"}
    assert definition["externalParameters"]["installer"] == "pip"
    assert "@" not in definition["externalParameters"]["index"]
    assert {d["name"] for d in definition["resolvedDependencies"]} == {"base", "package"}
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["version"]["agent-image"] and run["metadata"]["startedOn"] < run["metadata"]["finishedOn"]
    assert index.users["alice"] not in json.dumps(statement) and index.users["alice"] not in log


def test_verify_passes_and_names_what_it_checked(shipped, registry, keys):
    result, _ = shipped["ai25-signed"]
    for ref in (result["digest_ref"], f"{registry.host}/{PREFIX}/ai25-signed:0.1.0"):
        proc = run_cli("verify", ref, "--key", keys["good"][1], "--json", "--expect-name", "ai25-signed")
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout)
        assert out["digest_ref"] == result["digest_ref"] and out["sbom"] == result["supply"]["sbom"]
    proc = run_cli("verify", result["digest_ref"], "--key", keys["other"][1])
    assert proc.returncode == 64 and "verifies with the key" in proc.stderr, proc.stderr[-2000:]


def test_changed_manifest_fails(shipped, registry, keys):
    result, _ = shipped["ai25-signed"]
    repo, host = f"{PREFIX}/ai25-signed", registry.host
    digest = result["digest_ref"].split("@")[1]
    _, data = manifest(host, repo, digest)
    changed = json.loads(data)
    changed["annotations"] = {"org.example.changed": "yes"}
    new = put_manifest(host, repo, "ai25-changed", json.dumps(changed).encode())
    proc = run_cli("verify", f"{host}/{repo}:ai25-changed", "--key", keys["good"][1])
    assert proc.returncode == 64 and "is not signed" in proc.stderr, proc.stderr[-2000:]
    # the original signature copied beside the changed manifest does not sign it either
    _, sig = manifest(host, repo, digest.replace(":", "-") + ".sig")
    put_manifest(host, repo, new.replace(":", "-") + ".sig", sig)
    proc = run_cli("verify", f"{host}/{repo}:ai25-changed", "--key", keys["good"][1])
    assert proc.returncode == 64 and f"is for the manifest {digest}" in proc.stderr, proc.stderr[-2000:]


def _copy_image(host: str, src_repo: str, dst_repo: str, digest: str) -> bytes:
    """Mount every blob of SRC_REPO@DIGEST into DST_REPO; return the manifest bytes."""
    _, data = manifest(host, src_repo, digest)
    doc = json.loads(data)
    for d in [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]:
        status, _, body = http("POST", f"http://{host}/v2/{dst_repo}/blobs/uploads/?mount={d}&from={src_repo}", b"")
        assert status == 201, body[:300]
    return data


def test_another_agents_image_under_the_tag_fails_and_pull_and_run_refuse(shipped, registry, keys, docker_client):
    other, _ = shipped["ai25-other"]
    host, repo, other_repo = registry.host, f"{PREFIX}/ai25-signed", f"{PREFIX}/ai25-other"
    digest = other["digest_ref"].split("@")[1]
    # ai25-other's image, validly signed for its own repository, pushed as ai25-signed:impostor,
    # its signature copied along
    put_manifest(host, repo, "impostor", _copy_image(host, other_repo, repo, digest))
    sig_tag = digest.replace(":", "-") + ".sig"
    put_manifest(host, repo, sig_tag, _copy_image(host, other_repo, repo, sig_tag))
    ref = f"{host}/{repo}:impostor"
    proc = run_cli("verify", ref, "--key", keys["good"][1])
    assert proc.returncode == 64 and f"is for the repository {host}/{other_repo}" in proc.stderr, proc.stderr[-2000:]
    for command in (("pull", ref, "--verify-key", keys["good"][1]),
                    ("run", ref, "--verify-key", keys["good"][1], "--port", "18925", "--name", "ai25-impostor")):
        proc = run_cli(*command)
        assert proc.returncode == 64, proc.stderr[-2000:]
        assert "SignatureError" in proc.stderr or "signature" in proc.stderr
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ref)
    assert docker_client.containers.list(all=True, filters={"name": "ai25-impostor"}) == []  # nothing ran


def test_removed_signature_fails(shipped, registry, keys):
    result, _ = shipped["ai25-signed"]
    host, repo = registry.host, f"{PREFIX}/ai25-signed"
    digest = result["digest_ref"].split("@")[1]
    sig_digest, sig = manifest(host, repo, digest.replace(":", "-") + ".sig")
    assert http("DELETE", f"http://{host}/v2/{repo}/manifests/{sig_digest}")[0] == 202
    try:
        for command in (("verify", result["digest_ref"], "--key", keys["good"][1]),
                        ("pull", result["digest_ref"], "--verify-key", keys["good"][1])):
            proc = run_cli(*command)
            assert proc.returncode == 64 and "is not signed" in proc.stderr, proc.stderr[-2000:]
    finally:
        put_manifest(host, repo, digest.replace(":", "-") + ".sig", sig)
    assert run_cli("verify", result["digest_ref"], "--key", keys["good"][1]).returncode == 0


def test_unsigned_push_attaches_and_says_so(registry, index, tmp_path, docker_client, keys):
    prefix = f"{registry.host}/{PREFIX}"
    agent = make_agent(tmp_path, "ai25-unsigned", requirements="tinyreq==1.1\n")
    try:
        code, result, err = build_json(agent, "--index-url", index.url_for("alice"), "--registry", prefix, "--push")
        assert code == 0, err[-3000:]
        assert result["supply"]["signed"] is False and result["supply"]["sbom"] and result["supply"]["provenance"]
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        attached = [e for e in events if e.get("event") == "Attached SBOM and provenance"]
        assert len(attached) == 1 and attached[0]["signed"] is False and attached[0]["level"] == "warning", attached
        proc = run_cli("verify", result["digest_ref"], "--key", keys["good"][1])
        assert proc.returncode == 64 and "is not signed" in proc.stderr
    finally:
        remove_tags(docker_client, [f"{prefix}/ai25-unsigned"])


@pytest.fixture(scope="module")
def bases(registry, docker_client):
    """The shared base pushed as REGISTRY/ai25/ai25-base, and a patched one built FROM it (a new layer,
    as a Debian update gives) as REGISTRY/ai25/ai25-base-patched."""
    import io
    host = registry.host
    old, new = f"{host}/{PREFIX}/ai25-base:py3.11", f"{host}/{PREFIX}/ai25-base-patched:py3.11"
    docker_client.images.get("agent-image/base:py3.11").tag(old)
    docker_client.images.build(fileobj=io.BytesIO(b"FROM agent-image/base:py3.11\n"
                                                  b"RUN echo fixed > /etc/ai25-patch\n"),
                               tag=new, rm=True, network_mode="none")
    out = {}
    for key, ref in (("old", old), ("new", new)):
        docker_client.images.push(ref)
        digest, _ = manifest(host, ref.split("/", 1)[1].rsplit(":", 1)[0], "py3.11")
        out[key] = f"{ref.rsplit(':', 1)[0]}@{digest}"
    yield out
    remove_tags(docker_client, [old, new])


def test_rebase_carries_sbom_and_provenance_and_re_signs(bases, registry, index, keys, tmp_path, docker_client):
    host, prefix = registry.host, f"{registry.host}/{PREFIX}"
    agent = make_agent(tmp_path, "ai25-rebased", requirements="tinyreq==1.1\n")
    try:
        code, built, err = build_json(agent, "--index-url", index.url_for("alice"), "--registry", prefix, "--push",
                                      "--base-image", bases["old"], "--sign-key", keys["good"][0])
        assert code == 0, err[-3000:]
        ref = f"{prefix}/ai25-rebased:0.1.0"
        proc = run_cli("rebase", ref, "--base", bases["new"], "--sign-key", keys["good"][0], "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout)["results"][0]
        assert result["supply"]["signed"] is True, result
        new_digest = result["digest_ref"].split("@")[1]
        assert new_digest != built["digest_ref"].split("@")[1]
        proc = run_cli("verify", ref, "--key", keys["good"][1], "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["digest_ref"] == result["digest_ref"]
        # the SBOM's base part names the new base; its distributions are the old SBOM's
        repo = f"{PREFIX}/ai25-rebased"
        old_sbom = json.loads(attached(host, repo, built["digest_ref"].split("@")[1], "application/vnd.cyclonedx+json"))
        new_sbom = json.loads(attached(host, repo, new_digest, "application/vnd.cyclonedx+json"))
        base = next(c for c in new_sbom["components"] if c["bom-ref"] == "base")
        assert base["name"] == f"{host}/{PREFIX}/ai25-base-patched"
        assert base["version"] == bases["new"].split("@")[1]
        libs = lambda doc: sorted(c["purl"] for c in doc["components"] if "purl" in c)  # noqa: E731
        assert libs(new_sbom) == libs(old_sbom)
        statement = json.loads(attached(host, repo, new_digest, "application/vnd.in-toto+json"))
        assert statement["subject"][0]["digest"]["sha256"] == new_digest.split(":")[1]
        deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
        assert deps["base"]["digest"]["sha256"] == bases["new"].split(":")[-1]
        # rebased without a key: carried, unsigned, and verify refuses it
        proc = run_cli("rebase", ref, "--base", bases["old"], "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["results"][0]["supply"]["signed"] is False
        assert run_cli("verify", ref, "--key", keys["good"][1]).returncode == 64
    finally:
        remove_tags(docker_client, [f"{prefix}/ai25-rebased"])


def test_kms_signature_verifies_against_the_registry(shipped, registry, keys):
    """--sign-key awskms:///ARN: boto3 kms.sign against moto's KMS, verified with the key's public half."""
    import boto3
    from moto import mock_aws

    from builder.ship.client import RegistryClient, parse_ref
    from builder.ship.sign import load_signer, push_signature
    from builder.ship.verify import verify_image
    result, _ = shipped["ai25-other"]
    ref = parse_ref(result["digest_ref"])
    with mock_aws():
        kms = boto3.client("kms", region_name="eu-west-1")
        arn = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        signer = load_signer(f"awskms:///{arn}", kms_client=kms)
        push_signature(RegistryClient(ref.host), ref.repo, ref.digest, signer,
                       {"io.pixell.agent.name": "ai25-other", "io.pixell.agent.version": "0.1.0",
                        "io.pixell.agent-image.sbom": result["supply"]["sbom"],
                        "io.pixell.agent-image.provenance": result["supply"]["provenance"]})
        out = verify_image(result["digest_ref"], f"awskms:///{arn}", kms_client=kms)
        assert out["digest_ref"] == result["digest_ref"] and out["key"] == f"awskms:///{arn}"
    # cosign appends: the build's own signature, by the PEM key, still verifies beside KMS's
    assert verify_image(result["digest_ref"], keys["good"][1])["digest_ref"] == result["digest_ref"]
