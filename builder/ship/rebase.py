"""Rebase an agent image onto a new base: a pure function of manifests and configs.

The models are go-containerregistry's ``mutate.Rebase`` and the CNB
lifecycle's rebaser: the agent's layers above its old base are kept byte for
byte, the new base's layers go under them, and only a new config and manifest
are written. As CNB does, the old base is known from a label written at build
time (``io.pixell.agent-image.base.top-layer``, the diff id of its top layer),
so no copy of the old base is needed, and the new base must carry the same
ABI label fields. Nothing here talks to a registry: ``builder/ship/pushpull.py``
fetches the documents and pushes the result.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field

from builder.core.errors import RebaseError
from builder.core.labels import (ABI_LABEL, ABI_MUST_MATCH, AGENT_NAME_LABEL, BASE_DIGEST_LABEL, BASE_NAME_LABEL,
                                 BUILDER_LABEL, INPUT_LABEL, REBASED_FROM_LABEL, TOP_LAYER_LABEL, parse_abi)
from builder.ship.client import DOCKER_MANIFEST, MANIFEST_TYPES, OCI_MANIFEST

# the same layer, named by each manifest flavour
_LAYER_TYPES = {
    DOCKER_MANIFEST: {"application/vnd.oci.image.layer.v1.tar+gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                      "application/vnd.oci.image.layer.v1.tar": "application/vnd.docker.image.rootfs.diff.tar"},
    OCI_MANIFEST: {"application/vnd.docker.image.rootfs.diff.tar.gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar"},
}
_CONFIG_TYPES = {DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
                 OCI_MANIFEST: "application/vnd.oci.image.config.v1+json"}


@dataclass(frozen=True)
class ImageDoc:
    """An image as the registry holds it: manifest and config, parsed, with the manifest's digest."""
    manifest: dict
    config: dict
    digest: str

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})


@dataclass(frozen=True)
class Rebased:
    manifest: bytes
    media_type: str
    config: bytes
    base_layers: tuple[dict, ...]       # the new base's layer descriptors (to mount into the agent's repository)
    layers_kept: int                    # the agent's own layers, unchanged
    changes: dict[str, tuple[str, str]] = field(default_factory=dict)  # field -> (old, new), for --dry-run

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def check(image: ImageDoc, new_base: ImageDoc, *, image_ref: str, base_ref: str) -> int:
    """Refuse what would break; return how many of IMAGE's layers are its old base's."""
    labels, base_labels = image.labels, new_base.labels
    if BUILDER_LABEL not in labels or AGENT_NAME_LABEL not in labels:
        raise RebaseError(f"{image_ref} was not built by agent-image: it has no {BUILDER_LABEL} / "
                          f"{AGENT_NAME_LABEL} label", field=BUILDER_LABEL,
                          hint="Only images built by `agent-image build` can be rebased; rebuild it.")
    top = labels.get(TOP_LAYER_LABEL)
    if not top:
        raise RebaseError(f"{image_ref}: its base is unknown ({TOP_LAYER_LABEL} is absent; the image was built "
                          "before agent-image recorded its base)", field=TOP_LAYER_LABEL,
                          hint="Rebuild it once with `agent-image build`; later bases can then be swapped by rebase.")
    if ABI_LABEL not in base_labels:
        raise RebaseError(f"the new base {base_ref} has no {ABI_LABEL} label (the image has "
                          f"{labels.get(ABI_LABEL, 'none')!r})", field=ABI_LABEL,
                          hint="Build the base with `agent-image base`, which writes the label.")
    if ABI_LABEL not in labels:
        raise RebaseError(f"{image_ref}: its base had no {ABI_LABEL} label (the new base has "
                          f"{base_labels[ABI_LABEL]!r})", field=ABI_LABEL,
                          hint="Rebuild the image on a base made by `agent-image base`.")
    old_abi, new_abi = parse_abi(labels[ABI_LABEL]), parse_abi(base_labels[ABI_LABEL])
    differ = [key for key in ABI_MUST_MATCH if old_abi.get(key) != new_abi.get(key)]
    if differ:
        raise RebaseError(f"{image_ref} and the new base {base_ref} differ in their ABI: " + "; ".join(
                          f"{key} is {old_abi.get(key)!r} in the image, {new_abi.get(key)!r} in the new base"
                          for key in differ), field=f"{ABI_LABEL}:{','.join(differ)}",
                          hint="Rebase only onto a base of the same distro release, Python, venv and uid; "
                               "otherwise rebuild the agent on the new base.")
    for doc, ref in ((image, image_ref), (new_base, base_ref)):
        if doc.manifest.get("mediaType", DOCKER_MANIFEST) not in MANIFEST_TYPES:
            raise RebaseError(f"{ref} is a {doc.manifest.get('mediaType')}, not a single-platform image manifest",
                              field="mediaType", hint="Name one platform's manifest by its digest.")
        if len(doc.manifest.get("layers") or ()) != len(_diff_ids(doc)):
            raise RebaseError(f"{ref}: its manifest has {len(doc.manifest.get('layers') or ())} layers, its config "
                              f"{len(_diff_ids(doc))}", field="rootfs.diff_ids",
                              hint="The image is malformed; rebuild it.")
    diff_ids = _diff_ids(image)
    if top not in diff_ids:
        raise RebaseError(f"{image_ref}: the base layer {top[:19]} named by {TOP_LAYER_LABEL} is not among its "
                          "layers", field=TOP_LAYER_LABEL, hint="The image was changed after it was built; rebuild it.")
    for key in ("architecture", "os"):
        if image.config.get(key) != new_base.config.get(key):
            raise RebaseError(f"{image_ref} is {key} {image.config.get(key)!r}, the new base {base_ref} "
                              f"{new_base.config.get(key)!r}", field=key, hint="Use a base of the same platform.")
    return diff_ids.index(top) + 1


def rebase(image: ImageDoc, new_base: ImageDoc, *, image_ref: str, base_ref: str, base_name: str) -> Rebased:
    """IMAGE with its base's layers replaced by NEW_BASE's. Raises RebaseError before anything is made."""
    n_old = check(image, new_base, image_ref=image_ref, base_ref=base_ref)
    media = image.manifest.get("mediaType", DOCKER_MANIFEST)
    new_ids = _diff_ids(new_base)
    config = copy.deepcopy(image.config)
    for key in ("architecture", "os", "os.version", "variant"):
        if key in new_base.config:
            config[key] = new_base.config[key]
    config["rootfs"] = {"type": "layers", "diff_ids": [*new_ids, *_diff_ids(image)[n_old:]]}
    config["history"] = _history(image.config.get("history") or [], new_base.config.get("history") or [], n_old)
    labels = image.labels
    old = {k: labels.get(k, "") for k in (BASE_NAME_LABEL, BASE_DIGEST_LABEL, TOP_LAYER_LABEL, ABI_LABEL)}
    # the base's own labels (ABI, venv) move with it; the agent's stay; the input
    # digest no longer describes this image (its inputs named the old base)
    labels.update(new_base.labels)
    labels.update({BASE_NAME_LABEL: base_name, BASE_DIGEST_LABEL: new_base.digest, TOP_LAYER_LABEL: new_ids[-1],
                   REBASED_FROM_LABEL: image.digest})
    labels.pop(INPUT_LABEL, None)
    config.setdefault("config", {})["Labels"] = labels
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    base_layers = tuple(_as(media, layer) for layer in new_base.manifest["layers"])
    manifest = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"mediaType": _CONFIG_TYPES[media], "size": len(config_bytes),
                   "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest()},
        "layers": [*base_layers, *image.manifest["layers"][n_old:]],
    }
    changes = {k: (v, labels.get(k, "")) for k, v in old.items() if v != labels.get(k, "")}
    changes["base layers"] = (str(n_old), str(len(new_ids)))
    return Rebased(manifest=json.dumps(manifest, indent=3).encode(), media_type=media, config=config_bytes,
                   base_layers=base_layers, layers_kept=len(image.manifest["layers"]) - n_old, changes=changes)


def _diff_ids(doc: ImageDoc) -> list[str]:
    return list((doc.config.get("rootfs") or {}).get("diff_ids") or [])


def _as(media: str, layer: dict) -> dict:
    """A layer descriptor in the agent manifest's flavour (Docker or OCI media types)."""
    out = dict(layer)
    out["mediaType"] = _LAYER_TYPES[media].get(layer.get("mediaType", ""), layer.get("mediaType"))
    return out


def _history(image_history: list[dict], base_history: list[dict], n_old: int) -> list[dict]:
    """The new base's history, then the image's entries above its old base.

    History has entries without layers (ENV, LABEL: ``empty_layer``), so it is
    walked apart from the layers: the old base's part ends at the entry that
    made its n-th layer, and the layer-less entries after it that the new
    base's history also ends with (the same Dockerfile's ENV/WORKDIR) stay
    with the base."""
    seen, cut = 0, len(image_history)
    for i, entry in enumerate(image_history):
        if not entry.get("empty_layer"):
            seen += 1
            if seen == n_old:
                cut = i + 1
                break
    rest = image_history[cut:]
    tail = []
    for entry in reversed(base_history):
        if not entry.get("empty_layer"):
            break
        tail.insert(0, entry.get("created_by"))
    while tail and rest and rest[0].get("empty_layer") and rest[0].get("created_by") == tail[0]:
        rest, tail = rest[1:], tail[1:]
    return [*copy.deepcopy(base_history), *copy.deepcopy(rest)]
