"""Push agent images to a registry and pull them back, verified."""

from __future__ import annotations

import contextvars
import json
import threading

import structlog

from builder.build.engine import Engine
from builder.core import events
from builder.build.image import Image
from builder.build.reuse import remote
from builder.core.errors import ImageVerificationError, PlatformMissingError, RegistryError, TagExistsError
from builder.core.filelock import key_lock, locked
from builder.core.labels import AGENT_NAME_LABEL, AGENT_VERSION_LABEL, CONTENT_LABEL
from builder.core.platforms import arch
from builder.core.refs import CACHE_TAG, input_tag, split_ref
from builder.core.retry import with_retries

log = structlog.get_logger("agent_image.registry")


def tag_lock(ref: str):
    """The version tag's lock on this machine: check-then-push is one step for every builder here
    (threads and processes alike, whatever their --cache-dir)."""
    return locked(key_lock("tags", ref))


def tag_refused(text: str) -> bool:
    """Does a registry's push error say the tag is immutable and taken? ECR's ImageTagAlreadyExistsException
    ("tag invalid: The image tag '1.0' already exists in the 'x' repository and cannot be overwritten because
    the repository is immutable"), Harbor's and Artifactory's immutable-tag refusals."""
    low = text.lower()
    return ("imagetagalreadyexists" in low or ("already exists" in low and "cannot be overwritten" in low)
            or ("immutable" in low and ("tag" in low) and ("overwrit" in low or "denied" in low or "refus" in low)))


def push_image(engine: Engine, ref: str, *, input_digest: str | None = None, retries: int = 3,
               auth: dict | None = None, cache_tag: str = CACHE_TAG) -> str:
    """Push REF (and its input-digest tag); return REPO@sha256:... pinned by digest. A registry that
    refuses to move an immutable tag raises TagExistsError (the caller decides whether it holds this
    content); a registry that moves it anyway is read back, so a race with another runner that pushed
    other content in between is reported, not hidden."""
    repo, _ = split_ref(ref)
    # VERSION, the input-digest tag (no-op builds find it), and latest (the
    # layer cache an empty CI runner starts from)
    refs = [ref] + ([f"{repo}:{input_tag(input_digest)}"] if input_digest else []) + [f"{repo}:{cache_tag}"]
    digest = ""
    image = engine.image(ref)
    for target in refs:
        if image is not None and target != ref:
            engine.tag(image.id, target)
        try:
            d = with_retries(lambda: engine.push(target, auth=auth), doing="push", attempts=retries, image=target)
        except RegistryError as exc:
            if target == ref and tag_refused(str(exc)):
                raise TagExistsError(f"{ref}: the registry refused to move the tag ({str(exc)[:300]})",
                                     field="metadata.version", hint="Bump metadata.version in agent.yaml.") from None
            raise
        if target == ref:
            read_back(ref, d, auth, image.labels.get(CONTENT_LABEL) if image is not None else None)
        digest = digest or d
    pinned = f"{repo}@{digest}"
    log.info(events.PUSHED, image=ref, digest_ref=pinned)
    return pinned


def push_or_keep(engine: Engine, ref: str, *, image_id: str, input_digest: str | None, auth: dict | None,
                 overwrite: bool = False, cache_tag: str = CACHE_TAG) -> tuple[str, bool]:
    """push_image; when the registry refuses to move the version tag (immutable), the tag is read:
    this content already there is (its digest ref, kept=True), other content is TagExistsError."""
    try:
        return push_image(engine, ref, input_digest=input_digest, auth=auth, cache_tag=cache_tag), False
    except TagExistsError:
        image = engine.image(image_id)
        kept = None if overwrite else guard_tag(ref, image_id=image_id, auth=auth,
                                                content=image.labels.get(CONTENT_LABEL, "") if image else "")
        if kept is None:
            raise
        return kept, True


def read_back(ref: str, pushed: str, auth: dict | None, content: str | None) -> None:
    """After the version tag's push: it must hold what was pushed (or the same content). Another
    runner's push of other content between this builder's check and its push shows here (when it
    came before the read)."""
    held = remote_image(ref, auth=auth)
    if held is None or held[0].endswith(pushed) or (content and held[1].get(CONTENT_LABEL) == content):
        return
    raise TagExistsError(f"{ref} holds {held[0].split('@', 1)[1]} (content {held[1].get(CONTENT_LABEL, 'unknown')}) "
                         f"right after this builder pushed {pushed}: another runner pushed the same version at the "
                         "same time", field="metadata.version",
                         hint="Two uploads of one version raced on a registry without immutable tags: check which "
                              "content the tag should hold, then bump metadata.version (or --overwrite).")


def verify_labels(labels: dict[str, str], *, ref: str, name: str | None, version: str | None) -> None:
    """An agent image must carry its name/version labels, matching what the caller expects."""
    for key, want in ((AGENT_NAME_LABEL, name), (AGENT_VERSION_LABEL, version)):
        have = labels.get(key)
        if have is None:
            raise ImageVerificationError(f"{ref} has no {key} label: it was not built by agent-image",
                                         hint="Pull an image built with `agent-image build`.")
        if want is not None and have != want:
            raise ImageVerificationError(f"{ref} is {key}={have!r}, expected {want!r}",
                                         hint="Check the reference: it points at another agent or version.")


def pull_image(engine: Engine, ref: str, *, expect_name: str | None = None, expect_version: str | None = None,
               auth: dict | None = None, retries: int = 3, platform: str | None = None) -> str:
    """Pull REF (PLATFORM's image of an index), check its agent labels, return the local image id."""
    image = with_retries(lambda: engine.pull(ref, auth=auth, platform=platform), doing="pull", attempts=retries,
                         image=ref)
    check_platform(image, ref, platform)
    verify_labels(image.labels, ref=ref, name=expect_name, version=expect_version)
    log.info("Pulled agent image", image=ref, image_id=image.id, agent=image.labels.get(AGENT_NAME_LABEL))
    return image.id


def check_platform(image: Image, ref: str, platform: str | None) -> None:
    """PlatformMissingError unless IMAGE is PLATFORM's (None: any)."""
    if platform and image.architecture != arch(platform):
        raise PlatformMissingError(f"{ref} is {image.os or 'linux'}/{image.architecture}, not {platform}",
                                   field="--platform", hint=f"Build it with --platform {platform} (and push it), "
                                                            "or ask for the platform it has.")


def image_for_platform(engine: Engine, ref: str, platform: str | None, *, auth: dict | None = None) -> Image:
    """REF's image for PLATFORM: the engine's when it is that platform's, else pulled (from an
    index, that platform's entry); PlatformMissingError when neither has it."""
    image = engine.image(ref)
    if image is not None and (platform is None or image.architecture == arch(platform)):
        return image
    if not remote(split_ref(ref)[0].split("@")[0]):
        if image is None:
            raise ImageVerificationError(f"{ref} is not in the engine", hint="Build or pull it first.")
        check_platform(image, ref, platform)
    pulled = with_retries(lambda: engine.pull(ref, auth=auth, platform=platform), doing="pull", image=ref)
    check_platform(pulled, ref, platform)
    return pulled


def pull_base(engine: Engine, ref: str, *, auth: dict | None = None, retries: int = 3) -> Image:
    """Pull a base image the engine lacks (`build --base-image REGISTRY/...`)."""
    image = with_retries(lambda: engine.pull(ref, auth=auth), doing="pull", attempts=retries, image=ref)
    log.info("Pulled the base image", image=ref, image_id=image.id)
    return image


class BasePull:
    """The base pulled beside the build (issue 24): what needs only its registry facts goes on meanwhile
    (the plan, the registry's images, the index proxy fetching ahead); what needs it in the engine (the
    sandbox, a build) calls ``wait``. READ is the image those facts are of (builder/ship/assemble.py
    registry_image): pulled by its digest, so a tag that moves meanwhile changes nothing, then given
    REF's tag as a pull of REF would."""

    def __init__(self, engine: Engine, ref: str, read: Image, *, auth: dict | None = None) -> None:
        self.ref, self._error, self._done = ref, None, threading.Event()
        pinned = ref if "@" in ref else next(d for d in read.digests if "@" in d)

        def run() -> None:
            try:
                got = pull_base(engine, pinned, auth=auth)
                if got.layers != read.layers:  # (content-addressed: a registry or engine fault)
                    raise RegistryError(f"the engine's pull of {pinned} is not the image its registry described",
                                        hint="Check the registry, then rerun the build.")
                if pinned != ref:
                    engine.tag(got.id, ref)
            except BaseException as exc:  # noqa: BLE001 (raised by wait(), in the thread that needs the base)
                self._error = exc
            finally:
                self._done.set()
        # the build's redactor and log context go with it (builder/core/redact.py)
        context = contextvars.copy_context()
        threading.Thread(target=lambda: context.run(run), name="base-pull", daemon=True).start()

    def wait(self) -> None:
        """Return once the engine holds the base; raise what the pull raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error

    def settle(self, failing: bool) -> None:
        """The build is over. It returns after the pull; a build that fails or is interrupted does not
        wait for it (the thread ends with the pull, or with the process). A failure nobody waited for
        is only logged: the build did not need the base in the engine."""
        if failing:
            return
        self._done.wait()
        if self._error is not None:
            log.debug("the base's pull failed after the build needed it no more", image=self.ref,
                      reason=str(self._error)[:200])


def remote_image(ref: str, *, auth: dict | None = None) -> tuple[str, dict[str, str]] | None:
    """(REPO@digest, config labels) of what the registry holds under REF, or None: read
    through the registry's HTTP API, not the engine (whose copy may be stale)."""
    from builder.ship.client import RegistryClient, parse_ref
    r = parse_ref(ref)
    client = RegistryClient(r.host, auth=auth)
    found = client.manifest(r.repo, r.reference)
    if found is None:
        return None
    data, _, digest = found
    doc = json.loads(data)
    if "config" not in doc:  # an index: its platforms' labels are not one image's
        return f"{r.name}@{digest}", {}
    config = json.loads(client.blob(r.repo, doc["config"]["digest"]))
    return f"{r.name}@{digest}", dict((config.get("config") or {}).get("Labels") or {})


def guard_tag(ref: str, *, image_id: str, content: str, auth: dict | None = None) -> str | None:
    """Version tags are immutable: when the registry's REF already holds this content
    (its content-digest label), return its digest ref and push nothing (a retry on
    another runner, whose bytes differ, keeps what is there); when it holds other
    content, TagExistsError. None: the tag is free."""
    held = remote_image(ref, auth=auth)
    if held is None:
        return None
    digest_ref, labels = held
    theirs = labels.get(CONTENT_LABEL)
    if theirs == content:
        log.info("The registry's tag already holds this package: kept, nothing pushed", image=ref,
                 digest_ref=digest_ref, content_digest=content)
        return digest_ref
    raise TagExistsError(
        f"{ref} already holds {digest_ref.split('@', 1)[1]} (content {theirs or 'unknown'}); this build is image "
        f"{image_id} (content {content}); version tags are immutable", field="metadata.version",
        hint="Bump metadata.version in agent.yaml, or pass --overwrite to replace the tag on purpose.")
