"""OCI 1.1 referrers: artifacts (an SBOM, a provenance statement) attached to an image manifest.

An artifact is an OCI image manifest with ``artifactType``, the empty config,
one layer (the document) and ``subject`` (the image's descriptor). It is found
through the registry's referrers API (``GET /v2/NAME/referrers/DIGEST``) where
the registry has one, which it says by answering the manifest PUT with an
``OCI-Subject`` header; elsewhere (Debian's docker-registry 2.8, ECR before
2024) through the referrers tag schema: an OCI index under the tag
``sha256-<hex>`` that lists the artifacts, updated by whoever attaches one.
All traffic goes through builder/ship/client.py.
"""

from __future__ import annotations

import hashlib
import json

from builder.ship.client import OCI_INDEX, OCI_MANIFEST, RegistryClient

SBOM_TYPE = "application/vnd.cyclonedx+json"
PROVENANCE_TYPE = "application/vnd.in-toto+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
MAX_DOCUMENT_BYTES = 4 * 1024 ** 2


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def tag_schema(digest: str) -> str:
    """The referrers tag schema's tag for DIGEST (and cosign's prefix for its .sig tag)."""
    return digest.replace(":", "-", 1)


def artifact_manifest(subject: dict, artifact_type: str, blob: bytes, annotations: dict[str, str]) -> bytes:
    return canonical({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_TYPE, "digest": digest_of(EMPTY), "size": len(EMPTY)},
        "layers": [{"mediaType": artifact_type, "digest": digest_of(blob), "size": len(blob)}],
        "subject": subject, "annotations": annotations})


def attach(client: RegistryClient, repo: str, subject: dict, artifacts: list[tuple[str, bytes, dict[str, str]]]
           ) -> list[dict]:
    """Push each (artifact type, document, annotations) as an artifact referring to SUBJECT (a
    descriptor); return their descriptors, each with "via": "api" when the registry indexed it, else
    "tag" (the referrers tag schema's index, updated once for all of them)."""
    client.upload(repo, EMPTY)
    out, unindexed = [], []
    for artifact_type, blob, annotations in artifacts:
        client.upload(repo, blob, check=False)  # (timestamped: new bytes)
        body = artifact_manifest(subject, artifact_type, blob, annotations)
        digest = client.put_manifest(repo, digest_of(body), body, OCI_MANIFEST)
        desc = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body), "artifactType": artifact_type,
                "annotations": annotations}
        if not client.subject_indexed:
            unindexed.append(desc)
        out.append({**desc, "via": "api" if client.subject_indexed else "tag"})
    if unindexed:
        _add_to_tag_index(client, repo, subject["digest"], unindexed)
    return out


def _add_to_tag_index(client: RegistryClient, repo: str, subject_digest: str, descs: list[dict]) -> None:
    tag = tag_schema(subject_digest)
    found = client.manifest(repo, tag)
    entries, new = [], {d["digest"] for d in descs}
    if found is not None and json.loads(found[0]).get("mediaType") == OCI_INDEX:
        entries = [m for m in json.loads(found[0]).get("manifests") or [] if m.get("digest") not in new]
    index = canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, *descs]})
    client.put_manifest(repo, tag, index, OCI_INDEX)


def referrers(client: RegistryClient, repo: str, digest: str, artifact_type: str | None = None) -> list[dict]:
    """The artifacts that refer to DIGEST (the API's and the tag schema's, merged), newest last."""
    found = []
    api = client.referrers(repo, digest)
    if api is not None:
        found += api.get("manifests") or []
    tagged = client.manifest(repo, tag_schema(digest))
    if tagged is not None and json.loads(tagged[0]).get("mediaType") == OCI_INDEX:
        found += json.loads(tagged[0]).get("manifests") or []
    seen, out = set(), []
    for m in found:
        if m.get("digest") in seen or (artifact_type and m.get("artifactType") != artifact_type):
            continue
        seen.add(m.get("digest"))
        out.append(m)
    return out


def document(client: RegistryClient, repo: str, manifest_digest: str, subject_digest: str) -> tuple[bytes, dict]:
    """The document an artifact manifest carries, and the manifest; checked to refer to SUBJECT_DIGEST.
    Raises KeyError when it does not (the caller names the failure)."""
    found = client.manifest(repo, manifest_digest)
    if found is None:
        raise KeyError(f"{manifest_digest} is not in the registry")
    manifest = json.loads(found[0])
    if (manifest.get("subject") or {}).get("digest") != subject_digest:
        raise KeyError(f"{manifest_digest} refers to another image")
    layer = (manifest.get("layers") or [{}])[0]
    return client.blob(repo, layer["digest"], max_bytes=MAX_DOCUMENT_BYTES), manifest
