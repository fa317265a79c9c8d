"""Issue 26: the OCI provenance labels (source, revision, created) from options or the CI's
variables, in the image's labels and input digest but not its content digest."""

from __future__ import annotations

import pytest

from builder.api import BuildOptions, prepare
from builder.core.errors import PackageValidationError
from builder.package.reader import open_package
from builder.plan.inputs import added_files, content_digest
from builder.plan.provenance import CREATED_LABEL, REVISION_LABEL, SOURCE_LABEL, provenance
from tests.support.paths import ROOT

HELLO = ROOT / "examples" / "hello-agent"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("env, source", [
    ({"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/agents", "GITHUB_SHA": SHA},
     "https://github.com/org/agents"),
    ({"CODEBUILD_SOURCE_REPO_URL": "https://github.com/org/agents.git", "CODEBUILD_RESOLVED_SOURCE_VERSION": SHA},
     "https://github.com/org/agents.git"),
    ({"CI_PROJECT_URL": "https://gitlab.example/org/agents", "CI_COMMIT_SHA": SHA}, "https://gitlab.example/org/agents"),
])
def test_ci_variables_give_source_and_revision(env, source):
    assert provenance(None, None, env) == {SOURCE_LABEL: source, REVISION_LABEL: SHA}


def test_options_win_credentials_never_reach_a_label_and_created_is_source_date_epoch():
    env = {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "org/a", "GITHUB_SHA": SHA,
           "SOURCE_DATE_EPOCH": "1700000000"}
    assert provenance("https://x-access-token:ghs_SECRET@git.example/o/r", "v1.2", env) == {
        SOURCE_LABEL: "https://git.example/o/r", REVISION_LABEL: "v1.2", CREATED_LABEL: "2023-11-14T22:13:20Z"}
    assert provenance(None, None, {}) == {}  # nothing known: no label, and no wall-clock time
    for env, field in (({"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH"),
                       ({"GITHUB_SHA": "abc def"}, "--revision"), ({"CI_PROJECT_URL": 'a"b'}, "--source-url")):
        with pytest.raises(PackageValidationError) as info:
            provenance(None, None, env)
        assert info.value.field == field


def _digests(labels: dict[str, str]) -> tuple[str, str, str]:
    options = BuildOptions(provenance=labels)
    with open_package(HELLO) as pkg:
        split, rendered, _, digest = prepare(pkg, options, "https://pypi.org/simple/", "sha256:" + "0" * 64)
        added, _ = added_files(pkg, options, split)
        content = content_digest(pkg, options, "https://pypi.org/simple/", split, added)
    return rendered.text, digest, content


def test_labels_are_in_the_input_digest_not_the_content_digest():
    labels = provenance(None, None, {"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r",
                                     "GITHUB_SHA": SHA, "SOURCE_DATE_EPOCH": "1700000000"})
    text, digest, content = _digests(labels)
    assert f'{REVISION_LABEL}="{SHA}"' in text and f'{CREATED_LABEL}="2023-11-14T22:13:20Z"' in text
    assert _digests(labels)[1] == digest  # identical builds: the same input digest (no wall clock)
    plain_text, plain_digest, plain_content = _digests({})
    assert SOURCE_LABEL not in plain_text and plain_digest != digest
    assert plain_content == content  # the same bytes from another commit: the same content
    later = dict(labels, **{REVISION_LABEL: "f" * 40})
    assert _digests(later)[1] != digest and _digests(later)[2] == content
