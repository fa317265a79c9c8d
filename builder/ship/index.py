"""Multi-platform images in a registry: one OCI image index per tag, holding each
platform's manifest; and the one manifest of a platform, picked from an index.

Each platform's image is pushed whole by the engine (under its own VERSION-ARCH
tag); the index is assembled here from what the registry then holds (each
manifest's digest, size and media type, and its config's os/architecture) and
PUT through builder/ship/client.py under every tag it should move. Debian's
dockerd 20.10 pushes Docker schema-2 manifests; an OCI index may list those
(the media type of each entry says what it is), and the engine, ECS and
containerd pick an entry by its platform.
"""

from __future__ import annotations

import hashlib
import json

import structlog

from builder.core.errors import PlatformMissingError, RegistryError, TagExistsError
from builder.core.platforms import platform_of
from builder.ship.client import DOCKER_LIST, MANIFEST_TYPES, OCI_INDEX, RegistryClient, parse_ref

log = structlog.get_logger("agent_image.registry")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)


def descriptor(client: RegistryClient, repo: str, digest: str) -> dict:
    """The index entry for the manifest REPO@DIGEST: media type, digest, size and its platform."""
    found = client.manifest(repo, digest)
    if found is None:
        raise RegistryError(f"{client.host}/{repo}@{digest} is not in the registry", hint="Push it first.")
    data, media, _ = found
    if media not in MANIFEST_TYPES:
        raise RegistryError(f"{client.host}/{repo}@{digest} is a {media}, not one platform's image manifest")
    config = json.loads(client.blob(repo, json.loads(data)["config"]["digest"]))
    plat = {"architecture": config.get("architecture") or "", "os": config.get("os") or "linux"}
    if config.get("variant"):
        plat["variant"] = config["variant"]
    return {"mediaType": media, "digest": digest, "size": len(data), "platform": plat}


def index_document(entries: list[dict]) -> bytes:
    """An OCI image index over ENTRIES, one per platform (a second entry of a platform is refused)."""
    seen = [platform_of(e["platform"]["architecture"], e["platform"]["os"]) for e in entries]
    twice = sorted({p for p in seen if seen.count(p) > 1})
    if twice:
        raise RegistryError(f"two images for {', '.join(twice)} in one index",
                            hint="Give each platform once (--platform linux/amd64,linux/arm64).")
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def push_index(pinned: list[str], tags: list[str], *, auth: dict | None = None, overwrite: bool = True) -> str:
    """PUT one index of the manifests PINNED (REPO@sha256:..., one per platform, one repository)
    under each of TAGS (the first is the version tag: without OVERWRITE it must be free or
    hold this very index); return REPO@sha256:<index digest>."""
    refs = [parse_ref(p) for p in pinned]
    repo = refs[0]
    if any((r.host, r.repo) != (repo.host, repo.repo) for r in refs):
        raise RegistryError("an index lists manifests of one repository", hint="Push every platform to one repository.")
    client = RegistryClient(repo.host, auth=auth)
    data = index_document([descriptor(client, repo.repo, r.digest) for r in refs])
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not overwrite and tags:
        held = client.manifest(repo.repo, tags[0])
        if held is not None and held[2] != digest:
            raise TagExistsError(f"{repo.name}:{tags[0]} already holds {held[2]}; this index is {digest}; version "
                                 "tags are immutable", field="metadata.version",
                                 hint="Bump metadata.version in agent.yaml, or pass --overwrite to replace it on purpose.")
    for tag in tags:
        client.put_manifest(repo.repo, tag, data, OCI_INDEX)
    log.info("Pushed the image index", image=f"{repo.name}:{tags[0] if tags else ''}", digest_ref=f"{repo.name}@{digest}",
             platforms=platforms_of(data))
    return f"{repo.name}@{digest}"


def platforms_of(data: bytes) -> list[str]:
    """The platforms an index lists (linux/amd64, ...)."""
    return [platform_of(m.get("platform", {}).get("architecture", ""), m.get("platform", {}).get("os", ""))
            for m in json.loads(data).get("manifests") or []]


def pick(client: RegistryClient, repo: str, reference: str, platform: str) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of PLATFORM's manifest under REFERENCE: the index's entry for it,
    or the manifest itself when its config is of that platform. PlatformMissingError otherwise."""
    found = client.manifest(repo, reference)
    if found is None:
        raise RegistryError(f"{client.host}/{repo}:{reference} is not in the registry",
                            hint="Check the reference (repository and tag).")
    data, media, digest = found
    if media in INDEX_TYPES:
        for entry in json.loads(data).get("manifests") or []:
            plat = entry.get("platform") or {}
            if platform_of(plat.get("architecture", ""), plat.get("os", "")) == platform:
                got = client.manifest(repo, entry["digest"])
                if got is None:
                    raise RegistryError(f"{client.host}/{repo}@{entry['digest']} (its index's {platform} entry) is "
                                        "not in the registry", hint="Push that platform's image again.")
                return got
        raise PlatformMissingError(f"{client.host}/{repo}:{reference} has no image for {platform} (it has "
                                   f"{', '.join(platforms_of(data)) or 'none'})", field="--platform",
                                   hint=f"Build and push it with --platform {platform}, or ask for one it has.")
    config = json.loads(client.blob(repo, json.loads(data)["config"]["digest"]))
    have = platform_of(config.get("architecture", ""), config.get("os", ""))
    if have != platform:
        raise PlatformMissingError(f"{client.host}/{repo}:{reference} is one image for {have}, not {platform}",
                                   field="--platform", hint=f"Build and push it with --platform {platform}.")
    return data, media, digest


def platform_ref(ref: str, platform: str, *, auth: dict | None = None) -> str:
    """REPO@sha256:<PLATFORM's manifest> for the registry reference REF (an index or one image)."""
    r = parse_ref(ref)
    _, _, digest = pick(RegistryClient(r.host, auth=auth), r.repo, r.reference, platform)
    return r.with_digest(digest)
