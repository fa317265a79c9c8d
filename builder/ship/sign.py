"""Sign an image the way cosign signs with a key, so `cosign verify --key` reads what we write.

Why cosign's key-based format and not a Notary Project envelope: it is what most
verifiers read (cosign, Kyverno, the sigstore policy-controller, Ratify, podman's
``sigstoreSigned`` policy), it needs no certificate chain or trust policy file, and it
is simple to produce: a JSON "simple signing" payload naming the repository and the
manifest digest, signed with ECDSA P-256 over its SHA-256, stored as a layer of an
OCI manifest under the tag ``sha256-<hex>.sig`` beside the image. (AWS Signer, ECR's
managed signing, writes Notary Project envelopes; see docs/supply-chain.md.)

The key is a PEM file (an EC P-256 private key; an encrypted one takes its password
from AGENT_IMAGE_SIGN_KEY_PASSWORD) or ``awskms:///ARN`` (boto3 ``kms.sign``): the
private key never leaves KMS, and a PEM key's bytes stay in this process: no log
line, error or image carries them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from builder.core.errors import SignatureError
from builder.ship.client import OCI_MANIFEST, RegistryClient
from builder.ship.referrers import canonical, digest_of, tag_schema

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
_KMS = re.compile(r"^awskms:///(arn:aws[\w-]*:kms:([a-z0-9-]+):\d{12}:(key|alias)/[\w/+=,.@-]+)$")


def signature_tag(digest: str) -> str:
    return tag_schema(digest) + ".sig"


def payload(docker_reference: str, digest: str, optional: dict[str, str] | None = None) -> bytes:
    """cosign's payload, byte for byte (Go's encoding/json: struct order, no spaces)."""
    doc = {"critical": {"identity": {"docker-reference": docker_reference},
                        "image": {"docker-manifest-digest": digest}, "type": PAYLOAD_TYPE},
           "optional": dict(sorted(optional.items())) if optional else None}  # Go sorts map keys
    return json.dumps(doc, separators=(",", ":")).encode()


class Signer:
    """sign(data) -> ASN.1 DER ECDSA-P256-SHA256 signature; ``name`` says which key, never what it is."""
    name = ""

    def sign(self, data: bytes) -> bytes:
        raise NotImplementedError


class PemSigner(Signer):
    def __init__(self, path: str) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        self.name = f"file {Path(path).name}"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SignatureError(f"--sign-key {path}: cannot read it ({exc.strerror})", field="--sign-key",
                                 hint="Pass an EC P-256 private key in PEM, or awskms:///ARN.") from None
        password = os.environ.get("AGENT_IMAGE_SIGN_KEY_PASSWORD")
        try:
            key = load_pem_private_key(data, password.encode() if password else None)
        except (ValueError, TypeError):  # (their messages may quote the key: not passed on)
            raise SignatureError(f"--sign-key {path}: not a PEM private key (or its password, "
                                 "AGENT_IMAGE_SIGN_KEY_PASSWORD, is wrong)", field="--sign-key",
                                 hint="Make one with `openssl ecparam -name prime256v1 -genkey -noout -out "
                                      "sign.key`; cosign's own encrypted key format is not read.") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise SignatureError(f"--sign-key {path}: not an EC P-256 key", field="--sign-key",
                                 hint="cosign verifies ECDSA P-256 signatures: use a prime256v1 key.")
        self._key = key

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


class KmsSigner(Signer):
    """An AWS KMS key (KeySpec ECC_NIST_P256, KeyUsage SIGN_VERIFY), as cosign's awskms:/// provider uses it."""

    def __init__(self, arn: str, region: str, client=None) -> None:
        self.name, self.arn = f"awskms:///{arn}", arn
        if client is None:
            import boto3
            client = boto3.client("kms", region_name=region)
        self._kms = client

    def sign(self, data: bytes) -> bytes:
        # KMS hashes a RAW message of up to 4096 bytes itself (a payload is a few hundred); a longer one
        # goes as its SHA-256 (MessageType DIGEST). (moto hashes a DIGEST again; real KMS does not.)
        raw = len(data) <= 4096
        try:
            out = self._kms.sign(KeyId=self.arn, Message=data if raw else hashlib.sha256(data).digest(),
                                 MessageType="RAW" if raw else "DIGEST", SigningAlgorithm="ECDSA_SHA_256")
        except Exception as exc:  # botocore's ClientError / NoCredentialsError: the key's name, not its material
            raise SignatureError(f"KMS could not sign with {self.name}: {type(exc).__name__}: {str(exc)[:200]}",
                                 field="--sign-key", hint="Check the key's ARN, its KeySpec (ECC_NIST_P256) "
                                                          "and that this role may kms:Sign with it.") from None
        return out["Signature"]

    def public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
        der = self._kms.get_public_key(KeyId=self.arn)["PublicKey"]
        return load_der_public_key(der).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def load_signer(spec: str, *, kms_client=None) -> Signer:
    """--sign-key: a PEM file or awskms:///ARN."""
    if spec.startswith("awskms://"):
        m = _KMS.match(spec)
        if not m:
            raise SignatureError(f"--sign-key {spec}: not awskms:///arn:aws:kms:REGION:ACCOUNT:key/ID",
                                 field="--sign-key", hint="Give the key's (or alias's) full ARN after awskms:///.")
        return KmsSigner(m.group(1), m.group(2), kms_client)
    return PemSigner(spec)


def signer_for(sign_key: str | None, *, push: bool) -> Signer | None:
    """build --sign-key, loaded before the build."""
    if not sign_key:
        return None
    if not push:
        from builder.core.errors import PackageValidationError
        raise PackageValidationError("--sign-key needs --push: a signature names the pushed manifest",
                                     field="--sign-key", hint="Add --push --registry ....")
    return load_signer(sign_key)


def kms_arn(spec: str) -> tuple[str, str] | None:
    m = _KMS.match(spec)
    return (m.group(1), m.group(2)) if m else None


def signature_manifest(payload_bytes: bytes, signature: bytes, earlier: list[dict] | None = None) -> tuple[bytes, bytes]:
    """(config, manifest) of cosign's signature image: one simple-signing layer per signature,
    EARLIER layers kept (cosign appends), the config listing them as its diff_ids."""
    layer = {"mediaType": SIMPLE_SIGNING, "size": len(payload_bytes), "digest": digest_of(payload_bytes),
             "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}}
    layers = [x for x in earlier or [] if x != layer] + [layer]  # another key's signature of the same payload stays
    config = json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z",
                         "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
                         "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
                         "config": {}}, separators=(",", ":")).encode()
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": digest_of(config)},
                          "layers": layers})
    return config, manifest


def push_signature(client: RegistryClient, repo: str, digest: str, signer: Signer,
                   optional: dict[str, str]) -> str:
    """Sign REPO@DIGEST and put the signature under cosign's tag; return that tag."""
    body = payload(f"{client.host}/{repo}", digest, optional)
    signature = signer.sign(body)
    tag = signature_tag(digest)
    found = client.manifest(repo, tag)
    earlier = json.loads(found[0]).get("layers") or [] if found else []
    config, manifest = signature_manifest(body, signature, earlier)
    client.upload(repo, body)
    client.upload(repo, config)
    client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return tag
