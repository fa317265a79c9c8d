"""ECR: an agent's repositories, created on its first upload (`build --create-repository`).

ECR refuses a push to a repository that does not exist, so a new agent's
first upload fails unless someone created ``PREFIX/NAME`` (and, for the
shared dependency images, ``PREFIX/agent-image.deps``) beforehand. This
module creates what is missing, through boto3 (imported late: `--help` and
every other registry stay free of it), and leaves an existing repository
exactly as it is (its owner may have changed its settings on purpose).

What a created repository gets:
- the agent's: version tags immutable on ECR's side too
  (``IMMUTABLE_WITH_EXCLUSION``), with ``latest`` and ``in-*`` left movable,
  since every push moves them; untagged images expire after 14 days.
  ECR lifecycle rules expire *images*, not tags, and every version image
  carries its ``in-*`` tag, so no rule selects ``in-*`` here: it would delete
  deployed versions.
- the dependency images': all tags immutable (a ``deps-KEY`` tag names its
  content; nobody may replace what agents build FROM), ``deps-*`` images
  expire 90 days after their push (the next build that needs one builds and
  pushes it again; agent images keep their own copies of the layers),
  untagged ones after 1 day.
"""

from __future__ import annotations

import json
import re

import structlog

from builder.core.errors import RegistryError

log = structlog.get_logger("agent_image.registry")

# ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]: the hosts ECR's private registries answer on
ECR_HOST_RE = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr(-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
# tags every push moves (builder/ship/pushpull.py push_image), and cosign's sha256-<hex>.sig, which
# a second signature (rebase --sign-key, another key) rewrites (builder/ship/sign.py)
MOVING_TAGS = ("latest", "in-*", "sha256-*")
UNTAGGED_DAYS = 14
DEPS_DAYS = 90
_PERMISSIONS = "ecr:DescribeRepositories, ecr:CreateRepository and ecr:PutLifecyclePolicy"


def ecr_registry(ref: str) -> tuple[str, str] | None:
    """(account, region) when REF (HOST/...) names an ECR private registry, else None."""
    m = ECR_HOST_RE.match(ref.split("/", 1)[0])
    return (m["account"], m["region"]) if m else None


def _rule(priority: int, description: str, selection: dict) -> dict:
    return {"rulePriority": priority, "description": description, "selection": selection,
            "action": {"type": "expire"}}


def agent_settings() -> dict:
    """create_repository arguments and lifecycle policy of an agent's repository."""
    policy = {"rules": [_rule(1, f"untagged images, {UNTAGGED_DAYS} days after their push",
                              {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                               "countNumber": UNTAGGED_DAYS})]}
    return {"imageTagMutability": "IMMUTABLE_WITH_EXCLUSION",
            "imageTagMutabilityExclusionFilters": [{"filterType": "WILDCARD", "filter": f} for f in MOVING_TAGS],
            "lifecyclePolicy": policy}


def deps_settings() -> dict:
    """create_repository arguments and lifecycle policy of the dependency images' repository."""
    policy = {"rules": [
        _rule(1, "untagged images, 1 day after their push",
              {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1}),
        _rule(2, f"dependency images, {DEPS_DAYS} days after their push (a build pushes them again)",
              {"tagStatus": "tagged", "tagPatternList": ["deps-*"], "countType": "sinceImagePushed",
               "countUnit": "days", "countNumber": DEPS_DAYS}),
    ]}
    return {"imageTagMutability": "IMMUTABLE", "lifecyclePolicy": policy}


def _client(region: str, client=None):
    if client is not None:
        return client
    try:
        import boto3
    except ImportError:
        raise RegistryError("--create-repository needs boto3", field="--create-repository",
                            hint="pip install 'agent-image[ecr]'.") from None
    return boto3.client("ecr", region_name=region)


def _check_model(client) -> None:
    """An older botocore cannot send the exclusion filters: say so instead of failing mid-way."""
    enum = client.meta.service_model.shape_for("ImageTagMutability").enum
    if "IMMUTABLE_WITH_EXCLUSION" not in enum:
        raise RegistryError("this boto3/botocore does not know ECR's IMMUTABLE_WITH_EXCLUSION tag mutability",
                            field="--create-repository", hint="pip install -U boto3 botocore.")


def _exists(client, account: str, name: str) -> bool:
    try:
        client.describe_repositories(registryId=account, repositoryNames=[name])
        return True
    except client.exceptions.RepositoryNotFoundException:
        return False


def _create(client, account: str, name: str, settings: dict) -> bool:
    """Create NAME with SETTINGS; False when another build created it first."""
    args = {k: v for k, v in settings.items() if k != "lifecyclePolicy"}
    try:
        client.create_repository(registryId=account, repositoryName=name, **args)
    except client.exceptions.RepositoryAlreadyExistsException:
        return False  # a concurrent first upload won: its settings are these
    client.put_lifecycle_policy(registryId=account, repositoryName=name,
                                lifecyclePolicyText=json.dumps(settings["lifecyclePolicy"]))
    return True


def ensure_repositories(agent_repo: str, deps_repo: str, *, client=None) -> list[str]:
    """Create the ECR repositories AGENT_REPO and DEPS_REPO (HOST/PATH) when missing; return
    the ones this call created. Existing repositories are not touched."""
    where = ecr_registry(agent_repo)
    if where is None or ecr_registry(deps_repo) != where:
        raise RegistryError(f"--create-repository works with an ECR registry only; {agent_repo} is not in one",
                            field="--create-repository", hint="ECR registries are ACCOUNT.dkr.ecr.REGION.amazonaws.com.")
    account, region = where
    ecr = _client(region, client)
    from botocore.exceptions import BotoCoreError, ClientError
    created = []
    try:
        _check_model(ecr)
        for repo, settings in ((agent_repo, agent_settings()), (deps_repo, deps_settings())):
            name = repo.split("/", 1)[1]
            if not _exists(ecr, account, name) and _create(ecr, account, name, settings):
                log.info("Created the ECR repository", repository=repo)
                created.append(repo)
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"could not create the ECR repositories {agent_repo} and {deps_repo}: {exc}",
                            field="--create-repository",
                            hint=f"The build's AWS role needs {_PERMISSIONS} on them.") from None
    return created
