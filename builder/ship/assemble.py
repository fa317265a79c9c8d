"""Upload to pushed image without the engine: when the registry already has what the build needs.

A CI runner's engine starts empty every time; the registry does not. Before
the engine builds or pulls anything (``builder.api`` calls ``build`` first for
``--push`` to a registry), and when the engine lacks what it would build from,
this looks there:

1. the image of the same inputs (its ``in-DIGEST`` tag): the version tags are
   put on its manifest, nothing is pulled or uploaded;
2. the dependency image for these lines on this base (``depsimage``'s key):
   the agent's own steps are made here (builder/build/codelayer.py) and
   appended to it (builder/ship/append.py): only the new layers, the config
   and the manifest travel.

Anything else (no such image, a step only the engine can run, another
registry host) returns None with the reason logged, and the build goes on
with the engine exactly as before. The base is read from the registry too
when the engine lacks it (pinned by digest, as CI recipes do): not pulled.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from typing import Callable

import structlog

from builder.build import codelayer, depsimage
from builder.build.agentbuild import agent_labels
from builder.build.image import Image, image_from
from builder.build.reuse import remote
from builder.core import depsenv, events
from builder.core.errors import RebaseError, RegistryError, TagExistsError
from builder.core.labels import AGENT_NAME_LABEL, DEPS_DISTS_LABEL, INPUT_LABEL
from builder.core.refs import CACHE_TAG, input_tag, split_ref
from builder.package.reader import Package
from builder.package.requirements import Split
from builder.plan.agent import Plan, base_facts, from_deps, make_plan
from builder.plan.options import BuildOptions
from builder.ship import append
from builder.ship.client import RegistryClient, parse_ref
from builder.ship.pushpull import guard_tag
from builder.ship.rebase import ImageDoc
from builder.ship.rebaser import fetch

log = structlog.get_logger("agent_image")
_RECORD_LAYER_MAX = 256 * 1024  # the record's layer is a few kB; a bigger last layer is not it


@dataclass(frozen=True)
class Assembled:
    """What the registry now holds under the agent's tags."""
    plan: Plan
    image_id: str          # the config digest: the id an engine gives the image when it pulls it
    digest_ref: str
    how: str               # "reused" (same inputs) | "appended" (to the dependency image)
    tag_kept: bool = False
    deps_image: str = ""
    bytes_sent: int = 0
    editable: str = ""     # NAME==VERSION the package step installed, if any
    dists: str = ""        # the image's distribution listing (DISTS_PATH's JSON), when appended here
    base_digests: tuple[str, ...] = ()  # the base's NAME@DIGEST refs (the SBOM's and provenance's base)

    @property
    def installed(self) -> list[str]:
        """As BuildResult.installed reads pip's log: the package step's one install, NAME-VERSION."""
        return [self.editable.replace("==", "-")] if self.editable else []


@dataclass(frozen=True)
class Inputs:
    """What builder.api's checks settled (its _Job), as this module needs it."""
    pkg: Package
    options: BuildOptions
    repo: str
    ref: str
    upstream_url: str
    auth_header: str | None
    split: Split
    added: dict
    replace: dict
    base_image: str


def registry_image(ref: str, *, auth: dict | None) -> Image | None:
    """The engine's view of REF (id, labels, layers, digest) read from its registry, or None."""
    try:
        r = parse_ref(ref)
        doc = fetch(RegistryClient(r.host, auth=auth), r)
        return doc_image(doc, f"{r.name}@{doc.digest}")
    # (RebaseError: an index of platforms, not one image; the rest: a document not shaped as one)
    except (RegistryError, RebaseError, ValueError, TypeError, AttributeError, KeyError) as exc:
        log.debug("image not readable from its registry", image=ref, reason=str(exc)[:200])
        return None


def doc_image(doc: ImageDoc, digest_ref: str) -> Image:
    """The engine's inspect document of DOC, as a pull would give it (what the pipeline reads)."""
    return image_from({"Id": doc.manifest["config"]["digest"], "Config": doc.config.get("config") or {},
                       "RootFS": {"Layers": (doc.config.get("rootfs") or {}).get("diff_ids") or []},
                       "RepoDigests": [digest_ref], "Architecture": doc.config.get("architecture", ""),
                       "Os": doc.config.get("os", ""),
                       "Size": sum(int(layer.get("size", 0)) for layer in doc.manifest.get("layers") or [])})


def build(job: Inputs, local: Callable[[str], Image | None]) -> Assembled | None:
    """The agent image made in the registry (pushed, tagged), or None: the engine must build it.
    LOCAL: the engine's image of a reference, or None. What the engine has locally it builds
    from as before (no pull is saved there); the base it lacks is read from the registry.
    A shortcut only: any failure it did not foresee is logged and the engine builds."""
    try:
        return _build(job, local)
    except TagExistsError:  # the version tag holds other content: the engine's build would end the same way
        raise
    except (RegistryError, RebaseError) as exc:  # the engine's pull and push may still work, and say so if not
        log.info("Assembling in the registry failed: building with the engine", reason=str(exc)[:300])
        return None
    except Exception as exc:  # noqa: BLE001 (whatever the static path did not foresee, the engine builds)
        log.warning("Assembling in the registry failed unexpectedly: building with the engine",
                    reason=f"{type(exc).__name__}: {str(exc)[:300]}")
        return None


def _build(job: Inputs, local: Callable[[str], Image | None]) -> Assembled | None:
    base = local(job.base_image)
    if base is None and remote(split_ref(job.base_image)[0].split("@")[0]):
        base = registry_image(job.base_image, auth=job.options.registry_auth)  # read, not pulled
    if base is None:
        return None
    plan = make_plan(job.pkg, job.options, base_facts(job.base_image, base.id, base.labels, base.digests,
                                                      base.layers), job.upstream_url, job.split, job.added,
                     job.replace)
    ref = parse_ref(job.ref)
    client = RegistryClient(ref.host, auth=job.options.registry_auth)
    return _same_inputs(client, job, plan, local) or _append(client, job, plan, base, local)


def _tags(job: Inputs, plan: Plan) -> list[str]:
    """What push_image tags: VERSION, the input-digest tag, latest."""
    return [job.ref.rsplit(":", 1)[1], input_tag(plan.digest), CACHE_TAG]


def _kept(job: Inputs, image_id: str, plan: Plan) -> str | None:
    """Version tags are immutable (pushpull.guard_tag): the registry's digest ref when it holds this content."""
    if job.options.overwrite:
        return None
    return guard_tag(job.ref, image_id=image_id, content=plan.content, auth=job.options.registry_auth)


def _same_inputs(client: RegistryClient, job: Inputs, plan: Plan, local) -> Assembled | None:
    ref = parse_ref(job.ref)
    if local(f"{job.repo}:{input_tag(plan.digest)}") is not None:
        return None  # the engine has it: builder.api reuses it as before
    try:
        doc = fetch(client, parse_ref(f"{ref.name}:{input_tag(plan.digest)}"))
    except RegistryError:
        return None
    if doc.labels.get(INPUT_LABEL) != plan.digest or doc.labels.get(AGENT_NAME_LABEL) != job.pkg.manifest.name:
        return None
    image_id = doc.manifest["config"]["digest"]
    kept = _kept(job, image_id, plan)
    if kept is None:
        append.retag(client, ref.repo, doc.digest, _tags(job, plan))
    log.info(events.REUSED_IMAGE, image=job.ref, image_id=image_id, input_digest=plan.digest, where="registry")
    return Assembled(plan=plan, image_id=image_id, digest_ref=kept or ref.with_digest(doc.digest), how="reused",
                     tag_kept=kept is not None)


def _append(client: RegistryClient, job: Inputs, plan: Plan, base: Image, local) -> Assembled | None:
    deps = depsimage.plan(plan.rendered, plan.split, base, job.repo, job.options.registry, job.auth_header)
    if deps is None:
        return _skip(job, "no dependency lines (nothing in the registry to append to)")
    if local(deps.ref) is not None:
        return _skip(job, "the engine has the dependency image")
    deps_ref, ref = parse_ref(deps.ref), parse_ref(job.ref)
    if deps_ref.host != ref.host:
        return _skip(job, f"the dependency image is on {deps_ref.host}, the agent on {ref.host}")
    try:
        deps_doc = fetch(client, deps_ref)
    except RegistryError:
        return _skip(job, f"the registry has no {deps.ref}")
    image = doc_image(deps_doc, deps_ref.with_digest(deps_doc.digest))
    why = depsimage.refusal(image, deps.key, base, deps.layers)
    if why:
        log.warning("Not using the dependency image from the registry", image=deps.ref, reason=why)
        return None
    listing = image.labels.get(DEPS_DISTS_LABEL)
    if listing is None:  # the SBOM (and the agent's own listing) need it, and only the layers have it
        return _skip(job, f"the dependency image {deps.ref} has no {DEPS_DISTS_LABEL} label (an older "
                          "agent-image built it)")
    why = depsenv.refusal(env_record(client, deps_ref.repo, deps_doc))
    if why:
        return _skip(job, why)
    rendered, _, context = from_deps(job.pkg, job.options, plan, image.id)
    assembly = codelayer.assemble(rendered, context.data, base_env=list(image.env), base_labels=image.labels,
                                  deps_text=plan.split.deps_text, deps_listing=listing)
    if isinstance(assembly, str):
        return _skip(job, assembly)
    try:
        made = append.compose(deps_doc, assembly, extra_labels=agent_labels(plan), created=_created(job))
    except ValueError as exc:  # a manifest kind it does not write
        return _skip(job, str(exc))
    log.info(events.DEPS_REUSED, image=deps.ref, origin="registry", venv=_venv(job))
    kept = _kept(job, made.config_digest, plan)
    sent = 0
    if kept is None:
        sent = append.push(client, ref.repo, made, deps_ref.repo, deps_doc, _tags(job, plan))
    log.info("Appended the agent's layers to the dependency image in the registry", image=job.ref,
             layers=len(assembly.layers), bytes_sent=sent, editable=assembly.editable or None)
    return Assembled(plan=plan, image_id=made.config_digest, digest_ref=kept or ref.with_digest(made.digest),
                     how="appended", tag_kept=kept is not None, deps_image=deps.ref, bytes_sent=sent,
                     editable=assembly.editable, dists=assembly.dists, base_digests=tuple(base.digests))


def env_record(client: RegistryClient, repo: str, deps: ImageDoc) -> bytes | None:
    """builder/core/depsenv.py's record: the file in the dependency image's last layer (a few kB), or None."""
    layers = deps.manifest.get("layers") or []
    if not layers or int(layers[-1].get("size", 0)) > _RECORD_LAYER_MAX:
        return None
    blob = client.blob(repo, layers[-1]["digest"], max_bytes=_RECORD_LAYER_MAX)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as gz:
            data = gz.read(_RECORD_LAYER_MAX * 16 + 1)
        with tarfile.open(fileobj=io.BytesIO(data[:_RECORD_LAYER_MAX * 16])) as tar:
            member = tar.getmember(depsenv.PATH.lstrip("/"))
            return tar.extractfile(member).read() if member.isfile() else None
    except (OSError, EOFError, KeyError, tarfile.TarError):
        return None


def _skip(job: Inputs, why: str) -> None:
    log.info("Not assembling in the registry: building with the engine", venv=_venv(job), reason=why)
    return None


def _venv(job: Inputs) -> str:
    m = job.pkg.manifest
    return f"{m.name}-{m.version}"


def _created(job: Inputs) -> str | None:
    """The config's created time: the provenance's (SOURCE_DATE_EPOCH) when there is one."""
    created = (job.options.provenance or {}).get("org.opencontainers.image.created")
    return created or None

