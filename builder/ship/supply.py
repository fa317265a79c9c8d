"""After a push: the image's SBOM and provenance, attached as OCI referrers, and its signature.

Every `build --push` attaches both; `--sign-key` signs the manifest (builder/ship/sign.py)
with the attachments' digests in the signed payload, so `verify` also catches an SBOM or
provenance swapped after signing. Without a key they are attached unsigned and the result
says so. `rebase` carries them to the new manifest (carry()).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from builder import __version__
from builder.core import events
from builder.core.errors import RegistryError
from builder.core.labels import AGENT_NAME_LABEL, AGENT_VERSION_LABEL, BASE_DIGEST_LABEL
from builder.ship import attest, sbom
from builder.ship.client import MAX_CONFIG_BYTES, RegistryClient, parse_ref
from builder.ship.referrers import PROVENANCE_TYPE, SBOM_TYPE, attach, document, referrers
from builder.ship.sign import Signer, push_signature

log = structlog.get_logger("agent_image.supply")
SBOM_KEY, PROVENANCE_KEY = "io.pixell.agent-image.sbom", "io.pixell.agent-image.provenance"


@dataclass
class BuildFacts:
    """What the build knew, for the SBOM and the provenance (builder/api.py fills it)."""
    agent: dict[str, str]
    dists: list[sbom.Dist]
    index_url: str
    base: dict[str, str]                     # name, id, digest
    external: dict                           # the provenance's externalParameters
    dependencies: list[dict]                 # ... and resolvedDependencies (the package)
    started: float                           # wall-clock seconds
    env: dict[str, str] = field(default_factory=dict)
    recall: object = None                    # (index_url, name, version) -> {"sha256", "file", "origin"} | None
    sbom: bytes = b""                        # made by prepare(), beside the push


def prepare(engine, image_id: str, plan, pkg, options, started_monotonic: float, *,
            dists: list[sbom.Dist] | None = None, base_digests: tuple[str, ...] | None = None):
    """A Future of the BuildFacts with the SBOM made: none of it needs the pushed digest, so it runs
    beside the push (reading the image's listing, and the libraries' imports, cost more than the
    pushes of the documents). DISTS, BASE_DIGESTS: see build_facts."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-image-sbom")

    def work() -> BuildFacts:
        facts = build_facts(engine, image_id, plan, pkg, options, started_monotonic, dists=dists,
                            base_digests=base_digests)
        facts.sbom = make_sbom(facts)
        return facts
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future


def make_sbom(facts: BuildFacts) -> bytes:
    return sbom.make_sbom(agent=facts.agent, dists=facts.dists, files=_files(facts), index_url=facts.index_url,
                          base=facts.base, builder_version=__version__)


def build_facts(engine, image_id: str, plan, pkg, options, started_monotonic: float, *,
                dists: list[sbom.Dist] | None = None, base_digests: tuple[str, ...] | None = None) -> BuildFacts:
    """What the build knew (builder/api.py's plan, package and options) and what the image holds.
    DISTS (the image's listing) and BASE_DIGESTS (the base's NAME@DIGEST refs) are read from ENGINE
    unless given: an image assembled in the registry (ship/assemble.py) is not in the engine."""
    from builder.build.proxy.cache import DownloadCache
    m = pkg.manifest
    if base_digests is None:
        base_image = engine.image(plan.base.id)  # its registry digest, when it came from (or went to) one
        base_digests = base_image.digests if base_image else ()
    # (a base still being pulled beside the build: the digest its plan read in the registry)
    base = {"name": plan.base.image, "id": plan.base.id,
            "digest": next((d.split("@", 1)[1] for d in base_digests if "@" in d), "")
            or plan.base.labels.get(BASE_DIGEST_LABEL, "")}
    package = {"name": "package", "digest": {"sha256": plan.content.split(":", 1)[-1]},
               "annotations": {"kind": pkg.source_kind, "inputDigest": plan.digest}}
    if Path(pkg.source).is_file():
        package["annotations"]["fileSha256"] = _file_sha256(Path(pkg.source))
    external = {"package": {"contentDigest": plan.content, "inputDigest": plan.digest, "kind": pkg.source_kind},
                "agent": {"name": m.name, "version": m.version},
                "expected": {"name": options.expect_name, "version": options.expect_version},
                "index": plan.upstream_url, "base": base["name"], "installer": options.installer,
                "options": {"includeEnv": options.include_env, "caBundleInImage": options.ca_bundle_in_image,
                            "allowIndexHosts": sorted(options.allow_index_hosts), "noCache": options.nocache,
                            "overwrite": options.overwrite, "provenanceLabels": dict(options.provenance)}}
    cache = DownloadCache(Path(options.cache_dir) / "downloads", options.cache_max_bytes)
    return BuildFacts(agent={"name": m.name, "version": m.version}, dists=sbom.dists_of(engine, image_id) if dists is None else dists,
                      index_url=plan.upstream_url, base=base, external=external, dependencies=[package],
                      started=time.time() - (time.monotonic() - started_monotonic),
                      env=dict(options.env if options.env is not None else os.environ), recall=cache.recall)


def assembled_facts(done, pkg, options, started_monotonic: float) -> BuildFacts:
    """The BuildFacts of an image assembled in the registry (ship/assemble.py's Assembled): its
    listing and its base's digests are known there; the engine never had the image."""
    return build_facts(None, done.image_id, done.plan, pkg, options, started_monotonic,
                       dists=sbom.read_listing(done.dists.encode()), base_digests=done.base_digests)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _version(v: str) -> str:
    try:
        return str(Version(v))
    except InvalidVersion:
        return v


def _files(facts: BuildFacts) -> dict[str, dict]:
    out = {}
    for d in facts.dists if facts.recall else ():
        got = facts.recall(facts.index_url, canonicalize_name(d.name), _version(d.version))
        if got:
            out[sbom.normalise(d.name)] = {**got, "index": facts.index_url, "version": d.version}
    return out


def attach_build(digest_ref: str, facts, *, auth: dict | None, signer: Signer | None) -> dict:
    """SBOM + provenance for the pushed DIGEST_REF, attached, and signed with SIGNER when given."""
    started = time.monotonic()
    if not isinstance(facts, BuildFacts):  # prepare()'s Future: the SBOM made beside the push
        facts = facts.result()
    waited = time.monotonic() - started
    ref = parse_ref(digest_ref)
    client = RegistryClient(ref.host, auth=auth)
    sbom_doc = facts.sbom or make_sbom(facts)
    provenance = attest.statement(
        subject_name=ref.name, digest=ref.digest, external=facts.external,
        dependencies=[attest.base_dependency(facts.base), *facts.dependencies], started=facts.started,
        finished=time.time(), builder_version=__version__, env=facts.env)
    try:
        out = _attach(client, ref, sbom_doc, provenance, facts.agent, signer, started)
        out["waited_s"] = round(waited, 3)  # for the SBOM made beside the push: 0 when the push took longer
        return out
    except RegistryError as err:
        err.hint = " ".join(filter(None, (err.hint, f"The image itself is pushed as {digest_ref}.")))
        raise


def _attach(client: RegistryClient, ref, sbom_doc: bytes, provenance: bytes, agent: dict[str, str],
            signer: Signer | None, started: float) -> dict:
    before = client.bytes_sent
    found = client.manifest(ref.repo, ref.digest)
    if found is None:
        raise RegistryError(f"{ref} is not in the registry: nothing to attach to", hint="Push it again.")
    subject = {"mediaType": found[1], "digest": ref.digest, "size": len(found[0])}
    stamp = {"org.opencontainers.image.created": attest.stamp(time.time())}
    s, p = attach(client, ref.repo, subject, [(SBOM_TYPE, sbom_doc, stamp), (PROVENANCE_TYPE, provenance, stamp)])
    out = {"sbom": s["digest"], "provenance": p["digest"], "referrers": s["via"], "signed": False}
    if signer is not None:
        optional = {AGENT_NAME_LABEL: agent["name"], AGENT_VERSION_LABEL: agent["version"],
                    SBOM_KEY: s["digest"], PROVENANCE_KEY: p["digest"]}
        out["signature"] = f"{ref.name}:{push_signature(client, ref.repo, ref.digest, signer, optional)}"
        out["signed"], out["key"] = True, signer.name
    out["bytes_pushed"] = client.bytes_sent - before
    out["duration_s"] = round(time.monotonic() - started, 3)
    if out["signed"]:
        log.info(events.ATTACHED, image=str(ref), signed=True, sbom=s["digest"], provenance=p["digest"],
                 key=signer.name, referrers=s["via"])
    else:  # (warning: verify will refuse this image)
        log.warning(events.ATTACHED, image=str(ref), signed=False, sbom=s["digest"], provenance=p["digest"],
                    referrers=s["via"], note="UNSIGNED: no --sign-key, so verify and --verify-key refuse it")
    return out


def carry(client: RegistryClient, ref, old_digest: str, new_digest: str, base: dict[str, str],
          signer: Signer | None) -> dict:
    """A rebased image's SBOM (its base part updated) and provenance (its subject and base), re-signed."""
    started = time.monotonic()
    docs = {}
    for kind in (SBOM_TYPE, PROVENANCE_TYPE):
        found = referrers(client, ref.repo, old_digest, kind)
        if not found:
            return {"sbom": None, "provenance": None, "signed": False,
                    "note": f"{ref.name}@{old_digest} had no {kind} attached: nothing carried"}
        docs[kind], _ = document(client, ref.repo, found[-1]["digest"], old_digest)
    new_ref = parse_ref(f"{ref.name}@{new_digest}")
    sbom_doc = sbom.rebased(docs[SBOM_TYPE], base)
    provenance = attest.resubject(docs[PROVENANCE_TYPE], subject_name=ref.name, digest=new_digest, base=base,
                                  finished=time.time())
    agent = _agent_of(client, ref.repo, new_digest)
    return _attach(client, new_ref, sbom_doc, provenance, agent, signer, started)


def _agent_of(client: RegistryClient, repo: str, digest: str) -> dict[str, str]:
    manifest = json.loads(client.manifest(repo, digest)[0])
    config = json.loads(client.blob(repo, manifest["config"]["digest"], max_bytes=MAX_CONFIG_BYTES))
    labels = (config.get("config") or {}).get("Labels") or {}
    return {"name": labels.get(AGENT_NAME_LABEL, ""), "version": labels.get(AGENT_VERSION_LABEL, "")}
