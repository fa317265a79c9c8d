"""The OCI provenance labels of an agent image: where its source is, which revision, when.

``org.opencontainers.image.source`` and ``.revision`` come from ``--source-url`` /
``--revision`` or the CI's own variables (GitHub Actions, CodeBuild, GitLab);
``.created`` only from ``SOURCE_DATE_EPOCH`` (reproducible-builds.org): a wall-clock
time would make two builds of the same inputs differ. They are in the input digest
(the image carries them: a cached image with another revision would be wrong) but not
in the content digest (they say where the bytes came from, not what they are: the
same package rebuilt at another commit is the same content under its version tag).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from builder.core.errors import PackageValidationError

SOURCE_LABEL = "org.opencontainers.image.source"
REVISION_LABEL = "org.opencontainers.image.revision"
CREATED_LABEL = "org.opencontainers.image.created"
_WORD = re.compile(r"^[^\s\"'\\\x00-\x1f\x7f]{1,2048}\Z")
_REVISION = re.compile(r"^[\w.:/+-]{1,256}\Z")


def _ci_source(env: Mapping[str, str]) -> str | None:
    if env.get("GITHUB_SERVER_URL") and env.get("GITHUB_REPOSITORY"):
        return f"{env['GITHUB_SERVER_URL'].rstrip('/')}/{env['GITHUB_REPOSITORY']}"
    return env.get("CODEBUILD_SOURCE_REPO_URL") or env.get("CI_PROJECT_URL") or None


def _ci_revision(env: Mapping[str, str]) -> str | None:
    return env.get("GITHUB_SHA") or env.get("CODEBUILD_RESOLVED_SOURCE_VERSION") or env.get("CI_COMMIT_SHA") or None


def _without_credentials(url: str) -> str:
    # a clone URL may carry a token (https://x-access-token:...@host/repo): never into a label
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def created(env: Mapping[str, str]) -> str | None:
    raw = env.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) > 253402300799:  # 9999-12-31
        raise PackageValidationError(f"SOURCE_DATE_EPOCH is {raw[:40]!r}, not a number of seconds since 1970",
                                     field="SOURCE_DATE_EPOCH",
                                     hint="Set it to an integer, e.g. $(git log -1 --format=%ct), or unset it.")
    return datetime.fromtimestamp(int(raw), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(source_url: str | None, revision: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """The provenance labels for these options and this environment (only those known)."""
    source = source_url if source_url is not None else _ci_source(env)
    rev = revision if revision is not None else _ci_revision(env)
    out: dict[str, str] = {}
    if source:
        if not _WORD.match(source):
            raise PackageValidationError(f"the source URL {source[:80]!r} is not one printable word",
                                         field="--source-url", hint="Pass the repository's URL, e.g. "
                                                                    "https://github.com/ORG/REPO.")
        out[SOURCE_LABEL] = _without_credentials(source)
    if rev:
        if not _REVISION.match(rev):
            raise PackageValidationError(f"the revision {rev[:80]!r} is not a commit id or version name",
                                         field="--revision", hint="Pass the commit's SHA.")
        out[REVISION_LABEL] = rev
    when = created(env)
    if when:
        out[CREATED_LABEL] = when
    return out
