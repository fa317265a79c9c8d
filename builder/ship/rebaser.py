"""`agent-image rebase`: fetch, rebase (builder/ship/rebase.py, pure), push. Registry API only.

Each image is done or refused on its own. The order of writes makes a failure
halfway harmless: the new base's blobs are mounted (or copied) into the
agent's repository, then the new config is uploaded, and only then is the
manifest PUT under the tag, which is what moves it. Until that last request
the tag holds the old image; blobs left behind by a failure are unreferenced.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import structlog

from builder.core.errors import PackageLoadError, RebaseError, RegistryError
from builder.core.labels import TOP_LAYER_LABEL
from builder.ship.client import MAX_CONFIG_BYTES, Ref, RegistryClient, parse_ref
from builder.ship.rebase import ImageDoc, Rebased, rebase

log = structlog.get_logger("agent_image.rebase")


@dataclass
class Outcome:
    image: str
    ok: bool
    from_ref: str = ""
    digest_ref: str = ""
    layers_kept: int = 0
    bytes_uploaded: int = 0
    duration_s: float = 0.0
    unchanged: bool = False
    changes: dict = field(default_factory=dict)
    supply: dict = field(default_factory=dict)  # the SBOM and provenance carried over, and the signature
    error: PackageLoadError | None = None

    def to_dict(self) -> dict:
        out = {"image": self.image, "ok": self.ok}
        if self.ok:
            out.update({"from": self.from_ref, "digest_ref": self.digest_ref, "layers_kept": self.layers_kept,
                        "bytes_uploaded": self.bytes_uploaded, "duration_s": self.duration_s})
            if self.unchanged:
                out["unchanged"] = True
            if self.changes:
                out["changes"] = {k: list(v) for k, v in self.changes.items()}
            if self.supply:
                out["supply"] = self.supply
        else:
            out["error"] = self.error.to_dict() if self.error else None
        return out


class Clients:
    """One client per registry host, shared by every image of a run (tokens and pools reused)."""

    def __init__(self, auth: dict | None) -> None:
        self.auth, self._by_host = auth, {}

    def __call__(self, host: str) -> RegistryClient:
        if host not in self._by_host:
            self._by_host[host] = RegistryClient(host, auth=self.auth)
        return self._by_host[host]


def fetch(client: RegistryClient, ref: Ref) -> ImageDoc:
    found = client.manifest(ref.repo, ref.reference)
    if found is None:
        raise RegistryError(f"{ref} is not in the registry", hint="Check the reference (repository and tag).")
    data, media, digest = found
    manifest = json.loads(data)
    if "config" not in manifest:
        raise RebaseError(f"{ref} is a {media}, not a single-platform image manifest", field="mediaType",
                          hint="Name one platform's manifest by its digest.")
    config = json.loads(client.blob(ref.repo, manifest["config"]["digest"], max_bytes=MAX_CONFIG_BYTES))
    return ImageDoc(manifest=manifest, config=config, digest=digest)


def rebase_refs(refs: list[str], base: str, *, auth: dict | None = None, dry_run: bool = False,
                signer=None) -> list[Outcome]:
    """Rebase every REF onto BASE, each on its own; a failure is recorded, not raised."""
    clients = Clients(auth)
    base_ref = parse_ref(base)
    base_doc = fetch(clients(base_ref.host), base_ref)
    out = []
    for text in refs:
        started = time.monotonic()
        try:
            outcome = rebase_one(text, base_ref, base_doc, clients, dry_run=dry_run, signer=signer)
        except PackageLoadError as err:
            log.error("Rebase refused" if isinstance(err, RebaseError) else "Rebase failed", image=text,
                      error_class=type(err).__name__, error=str(err))
            outcome = Outcome(image=text, ok=False, error=err)
        outcome.duration_s = round(time.monotonic() - started, 3)
        out.append(outcome)
    return out


def rebase_one(text: str, base_ref: Ref, base_doc: ImageDoc, clients: Clients, *, dry_run: bool,
               signer=None) -> Outcome:
    ref = parse_ref(text)
    client = clients(ref.host)
    doc = fetch(client, ref)
    from_ref = ref.with_digest(doc.digest)
    base_name = str(Ref(base_ref.host, base_ref.repo, base_ref.tag))
    if doc.labels.get(TOP_LAYER_LABEL) == base_doc.config["rootfs"]["diff_ids"][-1] and \
            [x["digest"] for x in base_doc.manifest["layers"]] == \
            [x["digest"] for x in doc.manifest["layers"][:len(base_doc.manifest["layers"])]]:
        log.info("Already on this base: nothing to do", image=text, digest_ref=from_ref)
        return Outcome(image=text, ok=True, from_ref=from_ref, digest_ref=from_ref, unchanged=True,
                       layers_kept=len(doc.manifest["layers"]) - len(base_doc.manifest["layers"]))
    plan = rebase(doc, base_doc, image_ref=text, base_ref=str(base_ref), base_name=base_name)
    result = Outcome(image=text, ok=True, from_ref=from_ref, digest_ref=ref.with_digest(plan.digest),
                     layers_kept=plan.layers_kept, changes=plan.changes)
    if dry_run:
        log.info("Would rebase (dry run: nothing pushed)", image=text, digest_ref=result.digest_ref,
                 layers_kept=plan.layers_kept)
        return result
    result.bytes_uploaded = push(client, ref, plan, clients(base_ref.host), base_ref)
    from builder.ship.supply import carry  # the SBOM (its base part) and provenance follow; re-signed
    result.supply = carry(client, ref, doc.digest, plan.digest,
                          {"name": base_name, "id": base_doc.manifest["config"]["digest"], "digest": base_doc.digest},
                          signer)
    log.info("Rebased", image=text, old=from_ref, new=result.digest_ref, layers_kept=plan.layers_kept,
             bytes_uploaded=result.bytes_uploaded)
    return result


def push(client: RegistryClient, ref: Ref, plan: Rebased, base_client: RegistryClient, base_ref: Ref) -> int:
    """Blobs first, the manifest last (the one write that moves the tag); return bytes sent."""
    before = client.bytes_sent
    for layer in plan.base_layers:
        digest = layer["digest"]
        if client.has_blob(ref.repo, digest):
            continue
        if base_ref.host == ref.host and client.mount(ref.repo, digest, base_ref.repo):
            continue
        # another registry, or one that would not mount: the bytes have to travel
        client.copy_blob(base_client, base_ref.repo, ref.repo, digest, int(layer["size"]))
    client.upload(ref.repo, plan.config)
    client.put_manifest(ref.repo, ref.tag or plan.digest, plan.manifest, plan.media_type)
    return client.bytes_sent - before
