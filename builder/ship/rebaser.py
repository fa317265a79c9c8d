"""`agent-image rebase`: fetch, rebase (builder/ship/rebase.py, pure), push. Registry API only.

Each image is done or refused on its own. The order of writes makes a failure
halfway harmless: the new base's blobs are mounted (or copied) into the
agent's repository, then the new config is uploaded, and only then is the
manifest PUT under the tag, which is what moves it. Until that last request
the tag holds the old image; blobs left behind by a failure are unreferenced.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import structlog

from builder.core.errors import PackageLoadError, RebaseError, RegistryError
from builder.core.labels import TOP_LAYER_LABEL
from builder.ship.client import MAX_CONFIG_BYTES, OCI_INDEX, Ref, RegistryClient, parse_ref
from builder.ship.index import INDEX_TYPES, pick
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


def fetch(client: RegistryClient, ref: Ref, platform: str | None = None) -> ImageDoc:
    """REF's image manifest and config; with PLATFORM, that platform's (from an index too)."""
    if platform:
        data, media, digest = pick(client, ref.repo, ref.reference, platform)
    else:
        found = client.manifest(ref.repo, ref.reference)
        if found is None:
            raise RegistryError(f"{ref} is not in the registry", hint="Check the reference (repository and tag).")
        data, media, digest = found
    manifest = json.loads(data)
    if "config" not in manifest:
        raise RebaseError(f"{ref} is a {media}, not a single-platform image manifest", field="mediaType",
                          hint="Name one platform's manifest by its digest, or pass --platform.")
    config = json.loads(client.blob(ref.repo, manifest["config"]["digest"], max_bytes=MAX_CONFIG_BYTES))
    return ImageDoc(manifest=manifest, config=config, digest=digest)


def rebase_refs(refs: list[str], base: str, *, auth: dict | None = None, dry_run: bool = False,
                signer=None, platform: str | None = None) -> list[Outcome]:
    """Rebase every REF onto BASE, each on its own; a failure is recorded, not raised. A REF that is
    a multi-platform index has each platform's image (or PLATFORM's alone) rebased onto BASE's
    image of the same platform, and the index moved."""
    clients = Clients(auth)
    base_ref = parse_ref(base)
    bases = Bases(clients(base_ref.host), base_ref)
    out = []
    for text in refs:
        started = time.monotonic()
        try:
            if is_index(clients(parse_ref(text).host), parse_ref(text)):
                outcome = rebase_index(text, base_ref, bases, clients, dry_run=dry_run, platform=platform)
            else:
                outcome = rebase_one(text, base_ref, bases.for_image(clients, parse_ref(text), platform), clients,
                                     dry_run=dry_run, signer=signer)
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


class Bases:
    """The new base's image per platform (one fetch each), from an index or a single manifest."""

    def __init__(self, client: RegistryClient, ref: Ref) -> None:
        self.client, self.ref, self._docs = client, ref, {}

    def get(self, platform: str | None) -> ImageDoc:
        if platform not in self._docs:
            self._docs[platform] = fetch(self.client, self.ref, platform)
        return self._docs[platform]

    def for_image(self, clients: Clients, ref: Ref, platform: str | None) -> ImageDoc:
        """The base for the single-platform image REF: of REF's platform when the base is an index
        (or PLATFORM was asked: then REF must be of it)."""
        if platform:
            fetch(clients(ref.host), ref, platform)  # PlatformMissingError when REF is another platform's
            return self.get(platform)
        if not is_index(self.client, self.ref):
            return self.get(None)
        config = fetch(clients(ref.host), ref).config
        return self.get(f"{config.get('os') or 'linux'}/{config.get('architecture')}")


def is_index(client: RegistryClient, ref: Ref) -> bool:
    found = client.manifest(ref.repo, ref.reference)
    return found is not None and found[1] in INDEX_TYPES


def rebase_index(text: str, base_ref: Ref, bases: Bases, clients: Clients, *, dry_run: bool,
                 platform: str | None) -> Outcome:
    """Each platform's image of the index TEXT (or PLATFORM's) rebased, pushed by digest, then a
    new index with those entries replaced PUT under TEXT's tag (the one write that moves it)."""
    from builder.ship.index import index_document, platforms_of
    ref = parse_ref(text)
    client = clients(ref.host)
    data, _, index_digest = client.manifest(ref.repo, ref.reference)
    entries = json.loads(data)["manifests"]
    wanted = [platform] if platform else platforms_of(data)
    if platform and platform not in platforms_of(data):
        pick(client, ref.repo, ref.reference, platform)  # raises PlatformMissingError naming what it has
    new_entries, kept, changes = [], 0, {}
    for entry, plat in zip(entries, platforms_of(data)):
        if plat not in wanted:
            new_entries.append(entry)
            continue
        one = rebase_one(f"{ref.name}@{entry['digest']}", base_ref, bases.get(plat), clients, dry_run=dry_run)
        new_digest = one.digest_ref.split("@", 1)[1]
        got = client.manifest(ref.repo, new_digest) if not dry_run else None
        new_entries.append({**entry, "digest": new_digest, "size": len(got[0]) if got else entry["size"]})
        kept, changes = kept + one.layers_kept, {**changes, **{f"{plat} {k}": v for k, v in one.changes.items()}}
    doc = index_document(new_entries)
    new_ref = ref.with_digest("sha256:" + hashlib.sha256(doc).hexdigest())
    if not dry_run:
        client.put_manifest(ref.repo, ref.tag or new_ref.split("@", 1)[1], doc, OCI_INDEX)
    log.info("Rebased the index", image=text, old=ref.with_digest(index_digest), new=new_ref, platforms=wanted)
    return Outcome(image=text, ok=True, from_ref=ref.with_digest(index_digest), digest_ref=new_ref, layers_kept=kept,
                   changes=changes)
