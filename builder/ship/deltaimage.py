"""A near twin's dependency image, written in the registry (builder/build/delta.py makes its layer).

``siblings`` reads the dependency images the registry holds for this family (same base, index,
installer, reader, repository, builder: DEPS_FAMILY_LABEL) whose listings a near twin can build
on. ``publish`` writes the new one from the chosen sibling's manifest: the base's layers, the
sibling's install layers (not its COPY of its own lines, and not its environment record), the
near twin's layer, then the sibling's record, which still holds (delta.py checked that nothing
new changes it); labels for the new key and listings. Blobs first, the manifest last.
Nothing is pulled: the layers are in the repository already.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from builder.build import agentbuild, delta, depsimage
from builder.build.delta import Delta, Sibling
from builder.build.image import Image
from builder.core import depsenv
from builder.core.errors import RebaseError, RegistryError
from builder.core.refs import CACHE_TAG
from builder.core.labels import (AGENT_NAME_LABEL, DEPS_DELTA_LABEL, DEPS_DISTS_LABEL, DEPS_FAMILY_LABEL, DEPS_LABEL,
                                 DEPS_REQUESTED_LABEL, DEPS_WHEELS_LABEL, DEPS_HASHES_LABEL)
from builder.build.reuse import remote
from builder.plan.agent import Plan
from builder.plan.options import BuildOptions
from builder.ship.assemble import doc_image, env_record
from builder.ship.client import RegistryClient, parse_ref
from builder.ship.rebase import ImageDoc
from builder.ship.rebaser import fetch

log = structlog.get_logger("agent_image")

MAX_CANDIDATES = 64   # dependency images read per near twin (each: its manifest, config and record)
_WORKERS = 8


@dataclass(frozen=True)
class Candidate:
    sibling: Sibling
    doc: ImageDoc
    repo: str


def siblings(client: RegistryClient, deps: depsimage.Plan, base: Image, agent_repo: str) -> list[Candidate]:
    """The family's dependency images a near twin may build on; [] when none (or the registry cannot list).
    The agent's own last one first (its next version adding a line is the common near twin), then the
    repository's others, MAX_CANDIDATES in all."""
    ref = parse_ref(deps.ref)
    try:
        tags = [t for t in client.tags(ref.repo) if t.startswith("deps-") and t != ref.reference]
    except RegistryError as exc:
        log.info("Cannot list the dependency images: no near twin", reason=str(exc)[:200])
        return []
    own = _own_last(client, agent_repo)  # (read whether or not the list shows it: a long list may not)
    tags = ([own] if own and own != ref.reference else []) + [t for t in tags if t != own]
    with ThreadPoolExecutor(_WORKERS) as pool:
        found = list(pool.map(lambda tag: _candidate(client, ref.repo, tag, deps, base), tags[:MAX_CANDIDATES]))
    return [c for c in found if c is not None]


def _own_last(client: RegistryClient, agent_repo: str) -> str | None:
    """The deps tag of the agent's last pushed image (its CACHE_TAG), or None."""
    try:
        doc = fetch(client, parse_ref(f"{agent_repo}:{CACHE_TAG}"))
    except (RegistryError, RebaseError, ValueError):
        return None
    key = doc.labels.get(DEPS_LABEL, "")
    return depsimage.ref("", key).split(":", 1)[1] if re.fullmatch(r"[0-9a-f]{64}", key) else None


def _candidate(client: RegistryClient, repo: str, tag: str, deps: depsimage.Plan, base: Image) -> Candidate | None:
    try:
        doc = fetch(client, parse_ref(f"{client.host}/{repo}:{tag}"))
    except (RegistryError, RebaseError, ValueError):
        return None
    labels = doc.labels
    if labels.get(DEPS_FAMILY_LABEL) != deps.family or AGENT_NAME_LABEL in labels or DEPS_LABEL not in labels \
            or labels.get(DEPS_WHEELS_LABEL) != "1":  # its install may have run code that its listing hides
        return None
    image = doc_image(doc, f"{client.host}/{repo}@{doc.digest}")
    if depsimage.refusal(image, labels[DEPS_LABEL], base, deps.layers) is not None \
            or depsimage.deltas(labels) >= depsimage.MAX_DELTAS:
        return None
    try:
        listing = json.loads(labels.get(DEPS_DISTS_LABEL, ""))
        requested = json.loads(labels.get(DEPS_REQUESTED_LABEL, ""))
        hashes = json.loads(depsimage.wheel_hashes(labels.get(DEPS_HASHES_LABEL)) or "")
        dists = {str(e[0]): str(e[1]) for e in listing}
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(requested, list) or depsenv.refusal(env_record(client, repo, doc)) is not None:
        return None  # no record of what the package step sees there, or not the base's: not one to build on
    return Candidate(Sibling(ref=image.digests[0] if image.digests else f"{repo}@{doc.digest}", dists=dists,
                             requested=[str(n) for n in requested], listing=listing, hashes=hashes), doc, repo)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compose(cand: Candidate, deps: depsimage.Plan, base: Image, delta: Delta) -> tuple[bytes, str, bytes, bytes]:
    """(manifest, media type, config, gzipped layer) of the near twin's dependency image. Pure."""
    doc = cand.doc
    layers, diff_ids = doc.manifest["layers"], (doc.config.get("rootfs") or {}).get("diff_ids") or []
    if len(layers) != len(diff_ids) or len(layers) < len(base.layers) + 2:
        raise ValueError("the sibling's manifest and config disagree on its layers")
    stacked = depsimage.deltas(doc.labels)
    first = len(base.layers) + (1 if stacked == 0 else 0)  # built whole: its COPY of its own lines stays behind
    keep = [*range(len(base.layers)), *range(first, len(layers) - 1)]
    blob = gzip.compress(delta.layer, compresslevel=6, mtime=0)
    config = copy.deepcopy(doc.config)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config["created"] = created
    config["rootfs"] = {"type": "layers", "diff_ids": [*(diff_ids[i] for i in keep), _sha(delta.layer), diff_ids[-1]]}
    config["history"] = _history(config.get("history") or [], set(keep), len(layers) - 1, created,
                                 f"agent-image near twin of {cand.sibling.ref}: {' '.join(delta.new)}")
    labels = (config.setdefault("config", {}).get("Labels") or {})
    labels.update({DEPS_LABEL: deps.key, DEPS_DISTS_LABEL: delta.listing.strip(), DEPS_WHEELS_LABEL: "1",
                   DEPS_REQUESTED_LABEL: delta.requested.strip(), DEPS_DELTA_LABEL: str(stacked + 1),
                   DEPS_HASHES_LABEL: delta.hashes.strip()})
    config["config"]["Labels"] = labels
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
    media = doc.manifest.get("mediaType")
    manifest = {**{k: v for k, v in doc.manifest.items() if k not in ("config", "layers", "annotations")},
                "config": {**doc.manifest["config"], "size": len(config_bytes), "digest": _sha(config_bytes)},
                "layers": [*(layers[i] for i in keep),
                           {"mediaType": layers[-1]["mediaType"], "size": len(blob), "digest": _sha(blob)},
                           layers[-1]]}
    return json.dumps(manifest, indent=3).encode(), media, config_bytes, blob


def _history(history: list[dict], keep: set[int], record: int, created: str, note: str) -> list[dict]:
    """The sibling's history for the layers kept (and every config-only step), then the near twin's
    layer and the record's: one entry per layer, as the engine writes it."""
    out: list[dict] = []
    rec: dict | None = None
    layer = 0
    for h in history:
        if h.get("empty_layer"):
            out.append(h)
            continue
        if layer in keep:
            out.append(h)
        elif layer == record:
            rec = h
        layer += 1
    return [*out, {"created": created, "created_by": note},
            rec or {"created": created, "created_by": "agent-image dependency environment record"}]


def publish(client: RegistryClient, cand: Candidate, deps: depsimage.Plan, base: Image, delta: Delta) -> str:
    """Write the near twin's dependency image under its deps tag; its REPO@DIGEST."""
    manifest, media, config, blob = compose(cand, deps, base, delta)
    ref = parse_ref(deps.ref)
    if ref.repo != cand.repo:
        raise RegistryError(f"the sibling is in {cand.repo}, the dependency image goes to {ref.repo}")
    client.upload(ref.repo, blob)
    client.upload(ref.repo, config)
    digest = client.put_manifest(ref.repo, ref.reference, manifest, media)
    log.info("Wrote the near twin's dependency image in the registry", image=deps.ref, sibling=cand.sibling.ref,
             new=delta.new, layer_bytes=len(blob))
    return ref.with_digest(digest)


@dataclass
class NearTwin:
    """A build's chance to be a near twin: the registry's siblings, and the step that tries them."""
    client: RegistryClient
    candidates: list[Candidate]
    step: agentbuild.DeltaStep

    def finish(self, deps: depsimage.Plan, base: Image, made: Delta) -> str | None:
        """Write the dependency image for MADE; its REPO@DIGEST, or None (logged): build it whole."""
        cand = next((c for c in self.candidates if c.sibling.ref == made.sibling), None)
        try:
            if cand is None:
                raise ValueError(f"the step chose {made.sibling}, which was not offered")
            return publish(self.client, cand, deps, base, made)
        except (RegistryError, ValueError, KeyError) as exc:
            log.warning("Could not write the near twin's dependency image: building it whole", reason=str(exc)[:300])
            return None


def near_twin(build: agentbuild.Builder, deps: depsimage.Plan | None, plan: Plan, base: Image,
              options: BuildOptions, agent_repo: str) -> NearTwin | None:
    """When this build may make its dependency image as a near twin (builder/build/delta.py), what it
    needs for that; None when it may not (the reason logged when it is not plain)."""
    if deps is None or deps.image is not None or not options.push or options.nocache or not remote(deps.repo):
        return None
    install = delta.install_command(deps.dockerfile)
    why = ("the installer is not pip" if options.installer != "pip" else
           "the dependency step is not pip's plain one (another CPU, or an older base)" if install is None else
           "a line names a URL" if plan.split.direct else
           "the lines carry hashes" if "--hash" in plan.split.deps_text else
           "the lines name constraint files" if plan.split.constraints else
           "a line sets a pip option" if any(ln.lstrip().startswith("-") and not ln.lstrip().startswith(
               ("-c ", "--constraint")) for ln in plan.split.deps_text.splitlines()) else
           "the dependency image and the agent are on two registries"
           if parse_ref(deps.ref).host != parse_ref(agent_repo + ":x").host else None)
    if why:
        log.info("Not a near twin: building the dependency image whole", reason=why)
        return None
    client = RegistryClient(parse_ref(deps.ref).host, auth=options.registry_auth)
    started = time.monotonic()
    candidates = siblings(client, deps, base, agent_repo)
    log.info("Read the registry's dependency images of this family", siblings=len(candidates),
             seconds=round(time.monotonic() - started, 2))
    if not candidates:
        return None
    return NearTwin(client, candidates, agentbuild.near_twin(build, deps, plan, [c.sibling for c in candidates],
                                                            install))
