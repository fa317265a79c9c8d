"""The documented shapes of the AWS names a task definition carries: regions, role ARNs,
Secrets Manager and SSM Parameter Store references. Pure; each check returns a problem
(a sentence) or None, so a caller can report every bad name at once.

Regions come from botocore's endpoint data when botocore is installed (the `aws` CLI
that registers the task definition has it); without it, from the shape of a region name.
"""

from __future__ import annotations

import functools
import re

_REGION_SHAPE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}\Z")
_PARTITION_SHAPE = re.compile(r"^aws(-[a-z]+)*\Z")
_ACCOUNT = r"\d{12}"
_IAM_NAME = r"[\w+=,.@-]"
# arn:PARTITION:iam::ACCOUNT:role/PATH/NAME (IAM: name 1-64, path of /-separated segments)
_ROLE_ARN = re.compile(rf"^arn:([a-z-]+):iam::{_ACCOUNT}:role/(?:{_IAM_NAME}+/)*{_IAM_NAME}{{1,64}}\Z")
# arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME[-6 chars][:json-key:version-stage:version-id]
_SECRET_ARN = re.compile(rf"^arn:([a-z-]+):secretsmanager:([a-z0-9-]+):{_ACCOUNT}:secret:"
                         r"[\w/+=.@-]{1,512}(?::[^:\s]*){0,3}\Z")
_SSM_ARN = re.compile(rf"^arn:([a-z-]+):ssm:([a-z0-9-]+):{_ACCOUNT}:parameter/[\w.-][\w./-]{{0,2047}}\Z")
# a parameter name: a flat name, or a path from the root (/a/b); ECS resolves it in the task's region
_SSM_NAME = re.compile(r"^(/[\w.-]+)+\Z|^[\w.-]{1,2048}\Z")
SEPARATORS = ("/", "-", ":")


@functools.lru_cache(maxsize=1)
def partitions() -> dict[str, frozenset[str]] | None:
    """partition -> its ECS regions, from botocore's endpoint data; None without botocore."""
    try:
        from botocore.session import Session
    except ImportError:
        return None
    session = Session()
    return {p: frozenset(session.get_available_regions("ecs", partition_name=p))
            for p in session.get_available_partitions()}


def region_problem(region: str, partition: str | None = None) -> str | None:
    known = partitions()
    if known is None:
        if not _REGION_SHAPE.match(region):
            return f"{region!r} is not an AWS region name (like eu-west-1)"
        return None
    if partition is not None and partition not in known:
        return f"{partition!r} is not an AWS partition ({', '.join(sorted(known))})"
    regions = known[partition] if partition else frozenset().union(*known.values())
    if region not in regions:
        where = f" in partition {partition}" if partition else ""
        return (f"{region!r} is not an AWS region{where} where ECS runs (botocore's endpoint data; "
                "a region newer than the installed botocore needs a newer botocore)")
    return None


def _arn_region_problem(value: str, pattern: re.Pattern) -> str | None:
    m = pattern.match(value)
    partition, region = m.group(1), m.group(2)
    if not _PARTITION_SHAPE.match(partition):
        return f"{partition!r} in {value[:100]!r} is not an AWS partition"
    return region_problem(region, partition)


def role_problem(value: str) -> str | None:
    m = _ROLE_ARN.match(value)
    if not m or len(value) > 2048:
        return f"{value[:100]!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME, ACCOUNT 12 digits)"
    known = partitions()
    if known is not None and m.group(1) not in known:
        return f"{m.group(1)!r} in {value[:100]!r} is not an AWS partition ({', '.join(sorted(known))})"
    return None


def secret_ref_problem(value: str) -> str | None:
    """None when VALUE is a secret's valueFrom ECS documents: a Secrets Manager ARN, an SSM
    parameter ARN, or an SSM parameter name."""
    if _SECRET_ARN.match(value):
        return _arn_region_problem(value, _SECRET_ARN)
    if _SSM_ARN.match(value):
        return _arn_region_problem(value, _SSM_ARN)
    if not value.startswith("arn:") and _SSM_NAME.match(value):
        return None
    # (the template of a secret ARN is not spelled out: the log redactor hides what follows "secret:")
    return (f"{value[:100]!r} is neither a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:..., "
            "as `aws secretsmanager describe-secret` shows it) nor an SSM parameter ARN "
            "(arn:aws:ssm:REGION:ACCOUNT:parameter/NAME) or parameter name")


def prefix_problem(prefix: str) -> str | None:
    """A --secrets-prefix: an ARN prefix or a parameter path, ending in a separator so that
    prefix + NAME is a name of its own (without one, .../hello-agent + KEY runs the two together)."""
    if not prefix.endswith(SEPARATORS):
        return (f"{prefix[:100]!r} does not end in a separator ({' '.join(SEPARATORS)}), so prefix + NAME "
                f"would read {prefix.rsplit('/', 1)[-1][-40:]}NAME")
    if not (prefix.startswith("arn:") or prefix.startswith("/")):
        return (f"{prefix[:100]!r} is neither an ARN prefix (arn:aws:ssm:REGION:ACCOUNT:parameter/PATH/ or a "
                "Secrets Manager one) nor a parameter path (/PATH/)")
    sample = prefix + "NAME"
    problem = secret_ref_problem(sample)
    return f"{prefix[:100]!r} + NAME: {problem}" if problem else None
