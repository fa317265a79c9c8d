"""Issue 22: `build --create-repository` creates a new agent's ECR repositories
(builder/ship/ecr.py), against moto's ECR: the request shape botocore's model
accepts, the settings ECR stores, and a second upload that finds them."""

from __future__ import annotations

import json

import pytest
from moto import mock_aws  # the test extra's moto[ecr]: a missing one fails here, it does not skip

from builder.cli.main import main
from builder.core.errors import RegistryError
from builder.ship.ecr import ecr_registry, ensure_repositories

ACCOUNT, REGION = "123456789012", "us-east-1"
HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
AGENT, DEPS = f"{HOST}/agents/my-agent", f"{HOST}/agents/agent-image.deps"


@pytest.fixture
def ecr(monkeypatch):
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_ECR", raising=False)
    with mock_aws():
        import boto3
        yield boto3.client("ecr", region_name=REGION)


def test_ecr_hosts_are_recognised():
    assert ecr_registry(f"{HOST}/agents") == (ACCOUNT, REGION)
    assert ecr_registry(f"{ACCOUNT}.dkr.ecr-fips.us-gov-west-1.amazonaws.com/x") == (ACCOUNT, "us-gov-west-1")
    assert ecr_registry(f"{ACCOUNT}.dkr.ecr.cn-north-1.amazonaws.com.cn/x") == (ACCOUNT, "cn-north-1")
    for other in ("127.0.0.1:5000/agents", "ghcr.io/o/agents", f"{HOST}.evil.example/agents",
                  f"x{HOST}/agents", "public.ecr.aws/o/agents"):
        assert ecr_registry(other) is None, other


def test_first_upload_creates_both_repositories_with_their_settings(ecr):
    assert ensure_repositories(AGENT, DEPS) == [AGENT, DEPS]
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {"agents/my-agent", "agents/agent-image.deps"}
    agent = repos["agents/my-agent"]
    assert agent["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert {(f["filterType"], f["filter"]) for f in agent["imageTagMutabilityExclusionFilters"]} == {
        ("WILDCARD", "latest"), ("WILDCARD", "in-*"), ("WILDCARD", "sha256-*")}
    assert repos["agents/agent-image.deps"]["imageTagMutability"] == "IMMUTABLE"

    agent_rules = json.loads(ecr.get_lifecycle_policy(repositoryName="agents/my-agent")["lifecyclePolicyText"])["rules"]
    # no rule may select a tagged agent image: each version image also carries its in-* tag
    assert [r["selection"]["tagStatus"] for r in agent_rules] == ["untagged"]
    deps_rules = json.loads(ecr.get_lifecycle_policy(repositoryName="agents/agent-image.deps")["lifecyclePolicyText"])
    assert {r["selection"].get("tagPatternList", [None])[0] for r in deps_rules["rules"]} == {None, "deps-*"}


def test_second_upload_finds_them_and_changes_nothing(ecr):
    ensure_repositories(AGENT, DEPS)
    ecr.put_image_tag_mutability(repositoryName="agents/my-agent", imageTagMutability="MUTABLE")  # its owner's choice
    assert ensure_repositories(AGENT, DEPS) == []
    assert ensure_repositories(f"{HOST}/agents/other-agent", DEPS) == [f"{HOST}/agents/other-agent"]
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert repos["agents/my-agent"]["imageTagMutability"] == "MUTABLE"
    assert len(repos) == 3


def test_a_concurrent_first_upload_is_not_an_error(ecr):
    class Racing:
        """describe says missing, as it did for both racers; create then finds it made."""
        def __init__(self, real):
            self.real, self.meta, self.exceptions = real, real.meta, real.exceptions

        def describe_repositories(self, **kw):
            raise self.real.exceptions.RepositoryNotFoundException({"Error": {"Code": "RepositoryNotFoundException"}},
                                                                  "DescribeRepositories")

        def __getattr__(self, name):
            return getattr(self.real, name)

    ensure_repositories(AGENT, DEPS)
    assert ensure_repositories(AGENT, DEPS, client=Racing(ecr)) == []


def test_aws_refusal_is_a_registry_error_naming_the_permissions(ecr):
    class Denied:
        def __init__(self, real):
            self.meta, self.exceptions = real.meta, real.exceptions

        def describe_repositories(self, **kw):
            from botocore.exceptions import ClientError
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}},
                              "DescribeRepositories")

    with pytest.raises(RegistryError) as err:
        ensure_repositories(AGENT, DEPS, client=Denied(ecr))
    assert err.value.field == "--create-repository" and "ecr:CreateRepository" in err.value.hint


@pytest.mark.parametrize("extra", [["--registry", "127.0.0.1:5000/agents", "--push"],
                                   ["--registry", f"{HOST}.example.com/agents", "--push"],
                                   ["--registry", f"{HOST}/agents"]])
def test_create_repository_elsewhere_is_a_usage_error_naming_the_option(extra, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(tmp_path), "--create-repository", *extra])
    assert exit_.value.code == 2
    assert "--create-repository" in capsys.readouterr().err


def test_build_option_creates_the_repositories_the_build_pushes_to(ecr):
    """The name comes from the package when --expect-name is absent; the deps repository sits next to the agent's."""
    from builder.api import BuildOptions
    from builder.cli.commands import _create_repositories
    from builder.cli.main import parser
    from tests.support.paths import ROOT
    args = parser().parse_args(["build", str(ROOT / "examples" / "hello-agent"), "--registry", f"{HOST}/team-a",
                                "--push", "--create-repository"])

    opts = BuildOptions(registry=args.registry, push=True)
    assert _create_repositories(args, opts) == [f"{HOST}/team-a/hello-agent", f"{HOST}/team-a/agent-image.deps"]


def test_build_creates_them_before_the_engine_is_asked(ecr):
    """A refused AWS call costs no build; the repositories exist when the push comes."""
    from builder.cli.commands import cmd_build
    from builder.cli.main import parser
    from tests.support.paths import ROOT
    args = parser().parse_args(["build", str(ROOT / "examples" / "hello-agent"), "--registry", f"{HOST}/agents",
                                "--expect-name", "hello-agent", "--push", "--create-repository"])

    def engine_factory():
        names = {r["repositoryName"] for r in ecr.describe_repositories()["repositories"]}
        assert names == {"agents/hello-agent", "agents/agent-image.deps"}
        raise LookupError("the engine, asked after the repositories were made")

    with pytest.raises(LookupError):
        cmd_build(args, engine_factory)
