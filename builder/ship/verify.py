"""`agent-image verify`, and `pull`/`run --verify-key`: is this image one our builder signed, for this agent?

What passes: the registry's manifest for REF has a cosign signature (builder/ship/sign.py)
that verifies with the key; its payload names this manifest's digest and this repository
(an image signed for another agent's repository and pushed here does not pass); the
image's agent label is the one the signature names; and the SBOM and provenance it names
are attached to this manifest. Anything else is a SignatureError (exit 64) saying which.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import structlog

from builder.core import events
from builder.core.errors import SignatureError
from builder.core.labels import AGENT_NAME_LABEL, AGENT_VERSION_LABEL
from builder.ship.client import MAX_CONFIG_BYTES, RegistryClient, parse_ref
from builder.ship.referrers import document
from builder.ship.sign import PAYLOAD_TYPE, SIGNATURE_ANNOTATION, SIMPLE_SIGNING, KmsSigner, kms_arn, signature_tag

log = structlog.get_logger("agent_image.verify")
_MAX_PAYLOAD = 64 * 1024


def load_public_key(spec: str, *, kms_client=None):
    """--key / --verify-key: a PEM public key file (cosign.pub) or awskms:///ARN (its public half from KMS)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    arn = kms_arn(spec)
    try:
        pem = KmsSigner(*arn, client=kms_client).public_key_pem() if arn else Path(spec).read_bytes()
        key = load_pem_public_key(pem)
    except SignatureError:
        raise
    except OSError as exc:
        raise SignatureError(f"the key {spec}: cannot read it ({exc.strerror})", field="--key",
                             hint="Pass the public key (PEM) that matches the --sign-key the builder used.") from None
    except Exception as exc:  # a malformed PEM, or KMS refusing
        raise SignatureError(f"the key {spec}: not a usable public key ({type(exc).__name__})", field="--key",
                             hint="Pass an EC P-256 public key in PEM (`openssl ec -in sign.key -pubout`).") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"the key {spec}: not an EC public key", field="--key")
    return key


def verifies(key, body: bytes, signature_b64: str) -> bool:
    """Does SIGNATURE_B64 (cosign's annotation: base64 ASN.1 DER) sign BODY with the EC public KEY?"""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), body, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_image(ref: str, key_spec: str, *, auth: dict | None = None, expect_name: str | None = None,
                 expect_version: str | None = None, kms_client=None) -> dict:
    """Verify REF against the key; return what was verified (digest_ref, agent, sbom, provenance)."""
    key = load_public_key(key_spec, kms_client=kms_client)
    r = parse_ref(ref)
    client = RegistryClient(r.host, auth=auth)
    found = client.manifest(r.repo, r.reference)
    if found is None:
        raise SignatureError(f"{ref} is not in the registry", hint="Check the reference.")
    data, _, digest = found
    pinned = r.with_digest(digest)
    sig = client.manifest(r.repo, signature_tag(digest))
    if sig is None:
        raise SignatureError(f"{pinned} is not signed (no {signature_tag(digest)} in {r.name})",
                             hint="Do not run it: build and push it with --sign-key, or find out who pushed it.")
    claims = _verified_claims(client, r.repo, json.loads(sig[0]), key, pinned, key_spec)
    _check_claims(claims, digest, r.name, pinned)
    optional = claims.get("optional") or {}
    labels = _labels(client, r.repo, json.loads(data))
    agent = labels.get(AGENT_NAME_LABEL)
    if optional.get(AGENT_NAME_LABEL) != agent or optional.get(AGENT_VERSION_LABEL) != labels.get(AGENT_VERSION_LABEL):
        raise SignatureError(f"{pinned} is agent {agent!r} {labels.get(AGENT_VERSION_LABEL)!r}, but its signature "
                             f"names {optional.get(AGENT_NAME_LABEL)!r} {optional.get(AGENT_VERSION_LABEL)!r}",
                             hint="Do not run it: its labels are not the ones that were signed.")
    for want, what in ((expect_name, AGENT_NAME_LABEL), (expect_version, AGENT_VERSION_LABEL)):
        if want is not None and optional.get(what) != want:
            raise SignatureError(f"{pinned} is signed as {what}={optional.get(what)!r}, expected {want!r}",
                                 hint="The reference points at another agent or version.")
    attached = {kind: _attachment(client, r.repo, optional, kind, digest, pinned) for kind in ("sbom", "provenance")}
    log.info(events.VERIFIED, image=ref, digest_ref=pinned, key=key_spec, agent=agent)
    return {"ok": True, "image": ref, "digest_ref": pinned, "agent": {"name": agent, "version": optional.get(
        AGENT_VERSION_LABEL)}, "key": key_spec, **attached}


def _verified_claims(client: RegistryClient, repo: str, sig_manifest: dict, key, pinned: str, key_spec: str) -> dict:
    layers = [x for x in sig_manifest.get("layers") or [] if x.get("mediaType") == SIMPLE_SIGNING]
    for layer in layers:
        body = client.blob(repo, layer["digest"], max_bytes=_MAX_PAYLOAD)
        if verifies(key, body, (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION, "")):
            try:
                return json.loads(body)
            except ValueError:
                continue
    raise SignatureError(f"{pinned}: none of its {len(layers)} signature(s) verifies with the key {key_spec}",
                         hint="It was signed with another key, or its signature was altered: do not run it.")


def _check_claims(claims: dict, digest: str, name: str, pinned: str) -> None:
    critical = claims.get("critical") or {}
    if critical.get("type") != PAYLOAD_TYPE:
        raise SignatureError(f"{pinned}: the signed payload is not a cosign image signature")
    signed_digest = (critical.get("image") or {}).get("docker-manifest-digest")
    if signed_digest != digest:
        raise SignatureError(f"{pinned}: the signature is for the manifest {signed_digest}, not this one",
                             hint="The manifest was changed after it was signed: do not run it.")
    signed_repo = (critical.get("identity") or {}).get("docker-reference")
    if signed_repo != name:
        raise SignatureError(f"{pinned}: the signature is for the repository {signed_repo}, not {name}",
                             hint="An image signed for another agent was pushed under this one's name: "
                                  "do not run it.")


def _labels(client: RegistryClient, repo: str, manifest: dict) -> dict[str, str]:
    if "config" not in manifest:
        return {}
    config = json.loads(client.blob(repo, manifest["config"]["digest"], max_bytes=MAX_CONFIG_BYTES))
    return dict((config.get("config") or {}).get("Labels") or {})


def _attachment(client: RegistryClient, repo: str, optional: dict, kind: str, digest: str, pinned: str) -> str | None:
    """The signed SBOM / provenance digest, checked to be in the registry and to refer to this image."""
    want = optional.get(f"io.pixell.agent-image.{kind}")
    if not want:
        return None
    try:
        document(client, repo, want, digest)
    except KeyError as exc:
        raise SignatureError(f"{pinned}: the signed {kind} {want} is not attached ({exc})",
                             hint=f"The {kind} was removed or replaced after signing: do not trust the image.") from None
    return want
