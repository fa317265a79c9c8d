"""The image's provenance: an in-toto Statement v1 with a SLSA Provenance v1 predicate.

The subject is the pushed manifest; the build definition holds what decided the
image (the package's digests, the agent's name and version, the expected name and
version the caller passed, the index without credentials, the base's digest, the
installer and its options); the run details hold the builder, start and finish, and
the CI run. CI variables are read from an allow-list of names that identify a run
(never a token: CI_JOB_TOKEN, GITHUB_TOKEN and the like are not on it), URLs lose any
userinfo, and the build's redactor runs over every string.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from builder.core.redact import current_redactor

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:pixell:agent-image:build:v1"
BUILDER_ID = "urn:pixell:agent-image"
CI_VARIABLES = (
    "GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_WORKFLOW",
    "GITHUB_WORKFLOW_REF", "GITHUB_SHA", "GITHUB_REF", "GITHUB_EVENT_NAME", "GITHUB_ACTOR",
    "CODEBUILD_BUILD_ARN", "CODEBUILD_BUILD_ID", "CODEBUILD_BUILD_NUMBER", "CODEBUILD_RESOLVED_SOURCE_VERSION",
    "CODEBUILD_SOURCE_REPO_URL", "CODEBUILD_INITIATOR", "CODEBUILD_WEBHOOK_TRIGGER",
    "CI_PROJECT_URL", "CI_PIPELINE_ID", "CI_PIPELINE_URL", "CI_JOB_ID", "CI_JOB_URL", "CI_COMMIT_SHA",
    "CI_COMMIT_REF_NAME", "CI_SERVER_URL",
)


def _clean(value: str) -> str:
    value = current_redactor()(value)
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        value = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return value


def ci_run(env: Mapping[str, str]) -> dict[str, str]:
    """The CI run's identifying variables (allow-listed names only)."""
    return {k: _clean(env[k]) for k in CI_VARIABLES if env.get(k)}


def invocation_id(ci: Mapping[str, str]) -> str | None:
    """A URL (or ARN) naming the CI run, when there is one."""
    if ci.get("GITHUB_RUN_ID") and ci.get("GITHUB_REPOSITORY"):
        server = ci.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        attempt = f"/attempts/{ci['GITHUB_RUN_ATTEMPT']}" if ci.get("GITHUB_RUN_ATTEMPT") else ""
        return f"{server}/{ci['GITHUB_REPOSITORY']}/actions/runs/{ci['GITHUB_RUN_ID']}{attempt}"
    return ci.get("CODEBUILD_BUILD_ARN") or ci.get("CI_JOB_URL") or ci.get("CI_PIPELINE_URL")


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def statement(*, subject_name: str, digest: str, external: dict, dependencies: list[dict], started: float,
              finished: float, builder_version: str, env: Mapping[str, str], extra: dict | None = None) -> bytes:
    """The statement as JSON bytes. EXTERNAL: the build's parameters; DEPENDENCIES: SLSA
    ResourceDescriptors (the base, the package)."""
    ci = ci_run(env)
    metadata = {"startedOn": stamp(started), "finishedOn": stamp(finished)}
    if invocation_id(ci):
        metadata["invocationId"] = invocation_id(ci)
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": digest.split(":", 1)[1]}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": _scrub(external),
                                "internalParameters": {"builderVersion": builder_version, **(extra or {})},
                                "resolvedDependencies": _scrub(dependencies)},
            "runDetails": {"builder": {"id": BUILDER_ID, "version": {"agent-image": builder_version}},
                           "metadata": metadata, **({"byproducts": [{"name": "ci", "content": None,
                                                                     "annotations": ci}]} if ci else {})},
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def resubject(data: bytes, *, subject_name: str, digest: str, base: dict, finished: float) -> bytes:
    """The statement of a rebased image: its subject, its base dependency, and the rebase recorded."""
    doc = json.loads(data)
    doc["subject"] = [{"name": subject_name, "digest": {"sha256": digest.split(":", 1)[1]}}]
    definition = doc["predicate"]["buildDefinition"]
    deps = [d for d in definition.get("resolvedDependencies") or [] if d.get("name") != "base"]
    definition["resolvedDependencies"] = [*deps, base_dependency(base)]
    definition.setdefault("internalParameters", {})["rebasedOn"] = stamp(finished)
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def base_dependency(base: dict) -> dict:
    out = {"name": "base", "uri": f"oci://{base['name']}", "annotations": {"imageId": base["id"]}}
    digest = base.get("digest") or base["id"]
    if digest.startswith("sha256:"):
        out["digest"] = {"sha256": digest.split(":", 1)[1]}
    return out


def _scrub(value):
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value
