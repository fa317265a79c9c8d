"""Image references (REPOSITORY[:TAG][@sha256:DIGEST]): the one reader of them."""

from __future__ import annotations

import re
from typing import NamedTuple

from builder.core.errors import PackageValidationError

REPOSITORY_RE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")


# tags agent-image moves itself in an agent's repository: no version may take one
CACHE_TAG = "latest"              # the layer cache an empty runner builds from
INPUT_TAG_PREFIX = "in-"          # in-<input digest>: a build of the same inputs is skipped, on any runner
REFERRER_TAG_PREFIX = "sha256-"   # the OCI referrers tag schema (signatures, SBOMs where a registry lacks the API)


def input_tag(digest: str) -> str:
    return f"{INPUT_TAG_PREFIX}{digest[:20]}"


def builder_tag(tag: str) -> bool:
    """Is TAG one agent-image writes itself? (Compared without case: registries differ on it.)"""
    low = tag.lower()
    # (latest-ARCH: the layer cache of one platform's images, builder/core/platforms.py)
    return low in (CACHE_TAG, f"{CACHE_TAG}-amd64", f"{CACHE_TAG}-arm64") \
        or low.startswith((INPUT_TAG_PREFIX, REFERRER_TAG_PREFIX))


class ImageRef(NamedTuple):
    repository: str        # [HOST[:PORT]/]PATH
    tag: str | None
    digest: str | None


def parse(ref: str) -> ImageRef:
    """REPOSITORY[:TAG][@DIGEST] split, unchecked: a tag is a colon after the last slash
    (a colon before it is the registry's port)."""
    name, _, digest = ref.partition("@")
    slash, colon = name.rfind("/"), name.rfind(":")
    repo, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, None)
    return ImageRef(repo, tag, digest or None)


def check_image_ref(ref: str, option: str) -> str:
    """REPOSITORY[:TAG][@sha256:DIGEST] or an image id, checked before the engine is
    asked: a malformed one would come back from the engine as a 400, told as
    'engine unreachable'."""
    repo, tag, digest = parse(ref)
    if DIGEST_RE.match(ref) or (REPOSITORY_RE.match(repo) and (tag is None or TAG_RE.match(tag))
                                  and (not digest or DIGEST_RE.match(digest))):
        return ref
    raise PackageValidationError(f"{ref!r} is not a valid image reference", field=option,
                                 hint="Use REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST, e.g. agent-image/base:py3.11.")


def split_ref(ref: str) -> tuple[str, str | None]:
    """'host:5000/a/b:tag' -> ('host:5000/a/b', 'tag'); digests stay in the repo part."""
    repo, tag, digest = parse(ref)
    return (ref, None) if digest else (repo, tag or "latest")
