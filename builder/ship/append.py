"""Append the agent's layers to its dependency image, in the registry (ko, jib, `crane append`).

Nothing of the dependency image is pulled: its layers are mounted into the
agent's repository (same host, no bytes), the agent's own layers
(builder/build/codelayer.py) are gzipped and uploaded, then the config and
the manifest. Writes go blobs first, the manifest last (under each tag), so a
failure halfway leaves the tags as they were. Registry API through
builder/ship/client.py only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass

from builder.build.codelayer import Assembly
from builder.ship.client import DOCKER_MANIFEST, RegistryClient
from builder.ship.rebase import ImageDoc

_LAYER = {DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip",
          "application/vnd.oci.image.manifest.v1+json": "application/vnd.oci.image.layer.v1.tar+gzip"}
_CONFIG = {DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
           "application/vnd.oci.image.manifest.v1+json": "application/vnd.oci.image.config.v1+json"}


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Appended:
    """The image to write: its manifest and config, and the new layers' compressed blobs."""
    manifest: bytes
    media_type: str
    config: bytes
    blobs: tuple[bytes, ...]

    @property
    def digest(self) -> str:
        return _sha(self.manifest)

    @property
    def config_digest(self) -> str:
        """The image id an engine gives this image once pulled."""
        return _sha(self.config)


def compose(deps: ImageDoc, assembly: Assembly, *, extra_labels: dict[str, str],
            created: str | None = None) -> Appended:
    """DEPS with ASSEMBLY's layers on top and its config (ENV, labels, user, history). Pure."""
    media = deps.manifest.get("mediaType", DOCKER_MANIFEST)
    if media not in _LAYER:
        raise ValueError(f"the dependency image is a {media}")
    blobs = tuple(layer.blob for layer in assembly.layers)
    config = copy.deepcopy(deps.config)
    inner = config.setdefault("config", {})
    inner["Env"] = list(assembly.env)
    inner["Labels"] = {**assembly.labels, **extra_labels}
    inner["User"] = assembly.user
    if assembly.volumes:  # (as the engine writes VOLUME: the path, an empty object)
        inner["Volumes"] = {**(inner.get("Volumes") or {}), **{v: {} for v in assembly.volumes}}
    config["created"] = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config["rootfs"] = {"type": "layers", "diff_ids": [*(config.get("rootfs") or {}).get("diff_ids", []),
                                                       *(layer.diff_id for layer in assembly.layers)]}
    config["history"] = [*(config.get("history") or []),
                         *({**h, "created": config["created"]} for h in assembly.history)]
    for stale in ("container", "container_config", "docker_version"):  # the engine's record of its own build
        config.pop(stale, None)
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": _CONFIG[media], "size": len(config_bytes), "digest": _sha(config_bytes)},
        "layers": [*deps.manifest["layers"],
                   *({"mediaType": _LAYER[media], "size": len(b), "digest": _sha(b)} for b in blobs)],
    }
    return Appended(manifest=json.dumps(manifest, indent=3).encode(), media_type=media, config=config_bytes,
                    blobs=blobs)


def push(client: RegistryClient, repo: str, image: Appended, deps_repo: str, deps: ImageDoc,
         tags: list[str]) -> int:
    """Mount the dependency layers, upload the new ones and the config, then PUT the manifest
    under each tag (the first tag last-but-none: all tags name one digest). Returns bytes sent."""
    before = client.bytes_sent
    for layer in deps.manifest["layers"]:
        if client.has_blob(repo, layer["digest"]) or client.mount(repo, layer["digest"], deps_repo):
            continue
        client.copy_blob(client, deps_repo, repo, layer["digest"], int(layer["size"]))  # would not mount
    for blob in image.blobs:
        client.upload(repo, blob)
    client.upload(repo, image.config)
    for tag in tags:
        client.put_manifest(repo, tag, image.manifest, image.media_type)
    return client.bytes_sent - before


def retag(client: RegistryClient, repo: str, reference: str, tags: list[str]) -> str | None:
    """Put the manifest REPO holds under REFERENCE under TAGS too (no blob moves); its digest, or None."""
    found = client.manifest(repo, reference)
    if found is None:
        return None
    data, media, digest = found
    for tag in tags:
        client.put_manifest(repo, tag, data, media)
    return digest
