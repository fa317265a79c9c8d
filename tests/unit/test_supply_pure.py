"""Issue 25, without an engine or a registry: the signature format is cosign's, byte for byte; the
provenance carries no credential; the SBOM validates; a signing key never shows in an error."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from builder.core.errors import SignatureError
from builder.ship import attest, sbom
from builder.ship.sign import SIGNATURE_ANNOTATION, SIMPLE_SIGNING, load_signer, payload, signature_manifest
from builder.ship.verify import load_public_key, verifies

# A signature cosign made with a key (cosign sign --key), as published for
# ghcr.io/freedomofpress/dangerzone/v1 (freedom.press, "Dangerzone's container image signatures"):
# the payload's blob digest and size from its .sig manifest, the signature from the layer's
# annotation, the public key from the Rekor entry of the same signature.
COSIGN_PUB = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3CUlnwh825Z5wQAJV6TekEi6bCK2
YvAg7A+aeerM5hvc4CCCJFBae5AjnsjGHv4V/3xzssck6e51W+b0jU4qVw==
-----END PUBLIC KEY-----
"""
COSIGN_REPO = "ghcr.io/freedomofpress/dangerzone/v1"
COSIGN_DIGEST = "sha256:7396780b5862cf8b37527854a2a2331e5c746b6a71aa1f424258c3bfaf3a1bd7"
COSIGN_PAYLOAD_DIGEST = "sha256:88b8a2ac5b829f47bd25a5a4d9c2ccb0fccff7f53a17477b6d9b5680436aa80f"
COSIGN_PAYLOAD_SIZE = 252
COSIGN_SIGNATURE = "MEQCIAQScnT03MVfmxjYyW5qAmvQ6TSoukPuw0HmSVlMBwYEAiAzGb76cvDb4CHJ+H6tD00bW1Sh1CK6opaRmI2ist4p2A=="
# the config cosign 1.13 wrote for a signature (crane blob of a .sig manifest's config; its "created" varies)
COSIGN_CONFIG = ('{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":"0001-01-01T00:00:00Z"}],'
                 '"os":"","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}')


def test_payload_is_cosigns_byte_for_byte_and_its_signature_verifies(tmp_path):
    body = payload(COSIGN_REPO, COSIGN_DIGEST)
    assert len(body) == COSIGN_PAYLOAD_SIZE
    assert "sha256:" + hashlib.sha256(body).hexdigest() == COSIGN_PAYLOAD_DIGEST
    (tmp_path / "cosign.pub").write_bytes(COSIGN_PUB)
    key = load_public_key(str(tmp_path / "cosign.pub"))
    assert verifies(key, body, COSIGN_SIGNATURE)
    assert not verifies(key, payload(COSIGN_REPO, COSIGN_DIGEST.replace("7396", "7397")), COSIGN_SIGNATURE)


def test_signature_manifest_has_cosigns_layout():
    import base64
    body = payload(COSIGN_REPO, COSIGN_DIGEST)
    config, manifest = signature_manifest(body, base64.b64decode(COSIGN_SIGNATURE))
    assert config.decode() == COSIGN_CONFIG % COSIGN_PAYLOAD_DIGEST
    doc = json.loads(manifest)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert doc["layers"] == [{"mediaType": SIMPLE_SIGNING, "size": COSIGN_PAYLOAD_SIZE, "digest": COSIGN_PAYLOAD_DIGEST,
                              "annotations": {SIGNATURE_ANNOTATION: COSIGN_SIGNATURE}}]


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_pem_signer_round_trip_and_refusals_never_quote_the_key(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "sign.key").write_bytes(_pem(key))
    (tmp_path / "sign.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    import base64
    body = payload("127.0.0.1:5000/agents/a", COSIGN_DIGEST, {"io.pixell.agent.name": "a"})
    sig = base64.b64encode(load_signer(str(tmp_path / "sign.key")).sign(body)).decode()
    assert verifies(load_public_key(str(tmp_path / "sign.pub")), body, sig)
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "rsa.key").write_bytes(rsa_pem)
    broken = _pem(key)[:-80] + b"\n-----END PRIVATE KEY-----\n"
    (tmp_path / "broken.key").write_bytes(broken)
    for name, material in (("rsa.key", rsa_pem), ("broken.key", broken)):
        with pytest.raises(SignatureError) as info:
            load_signer(str(tmp_path / name))
        text = str(info.value) + (info.value.hint or "")
        assert info.value.exit_code == 64 and name in text
        assert not any(line in text for line in material.decode().splitlines()[1:-1])
    with pytest.raises(SignatureError, match="awskms:///arn:aws:kms:REGION"):
        load_signer("awskms:///not-an-arn")


def test_provenance_names_the_ci_run_and_carries_no_credential():
    env = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/agents", "GITHUB_RUN_ID": "42",
           "GITHUB_RUN_ATTEMPT": "2", "GITHUB_TOKEN": "ghs_supersecret", "CI_JOB_TOKEN": "glcbt-secret",
           "CODEBUILD_SOURCE_REPO_URL": "https://x-access-token:tok3n@github.com/org/agents.git",
           "AWS_SECRET_ACCESS_KEY": "wJalr/secret", "AGENT_IMAGE_REGISTRY_PASSWORD": "pw-secret"}
    data = attest.statement(subject_name="127.0.0.1:5000/agents/a", digest="sha256:" + "a" * 64,
                            external={"index": "https://pypi.org/simple/"}, dependencies=[], started=1.0,
                            finished=2.0, builder_version="0.1.0", env=env)
    doc = json.loads(data)
    assert doc["subject"] == [{"name": "127.0.0.1:5000/agents/a", "digest": {"sha256": "a" * 64}}]
    meta = doc["predicate"]["runDetails"]["metadata"]
    assert meta["invocationId"] == "https://github.com/org/agents/actions/runs/42/attempts/2"
    assert meta["startedOn"] == "1970-01-01T00:00:01.000000Z"
    text = data.decode()
    for secret in ("supersecret", "glcbt", "tok3n", "wJalr", "pw-secret"):
        assert secret not in text
    assert "https://github.com/org/agents.git" in text


def _listing() -> bytes:
    return json.dumps([
        ["agent", "1.0", "", [], None, "/app"],
        ["pip", "26.0", "MIT", [], None, "/opt/venv/lib/python3.11/site-packages"],
        ["requests", "2.32.3", "Apache-2.0", [], None, "/opt/venv/lib/python3.11/site-packages"],
        ["weird", "0.1", "Permission is hereby granted, free of charge, to any person\nobtaining a copy", [
            "License :: OSI Approved :: MIT License"], None, "/opt/venv/lib/python3.11/site-packages"],
    ]).encode()


def test_sbom_from_a_listing_validates_and_rebase_swaps_its_base():
    dists = sbom.read_listing(_listing())
    data = sbom.make_sbom(agent={"name": "agent", "version": "1.0"}, dists=dists,
                          files={"requests": {"sha256": "b" * 64, "file": "requests-2.32.3-py3-none-any.whl",
                                              "index": "https://pypi.org/simple/", "version": "2.32.3"}},
                          index_url="https://pypi.org/simple/",
                          base={"name": "agent-image/base:py3.11", "id": "sha256:" + "c" * 64, "digest": ""},
                          builder_version="0.1.0")
    doc = json.loads(data)
    comps = {c["name"]: c for c in doc["components"]}
    assert {c["purl"] for c in doc["components"] if "purl" in c} == {
        "pkg:pypi/agent@1.0", "pkg:pypi/pip@26.0", "pkg:pypi/requests@2.32.3", "pkg:pypi/weird@0.1"}
    assert comps["requests"]["hashes"] == [{"alg": "SHA-256", "content": "b" * 64}]
    assert comps["agent"]["properties"] == [{"name": "agent-image:source", "value": "agent package"}]
    assert comps["weird"]["licenses"] == [{"license": {"name": "MIT License"}}]  # a licence text is not a name
    new = json.loads(sbom.rebased(data, {"name": "reg/base", "id": "sha256:" + "d" * 64,
                                         "digest": "sha256:" + "e" * 64}))
    base = next(c for c in new["components"] if c["bom-ref"] == "base")
    assert base["name"] == "reg/base" and base["hashes"] == [{"alg": "SHA-256", "content": "e" * 64}]
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(new)) is None


def test_the_listing_command_is_one_dockerfile_line():
    from builder.plan.dockerfile import DISTS_PATH, LIST_DISTS
    assert "\n" not in LIST_DISTS and DISTS_PATH in LIST_DISTS
