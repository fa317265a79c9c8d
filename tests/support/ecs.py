"""The ECS side of the tests: example role and parameter ARNs, and botocore's model of
RegisterTaskDefinition as a check (offline)."""

from __future__ import annotations

from botocore.session import get_session
from botocore.validate import ParamValidator

ROLE = "arn:aws:iam::123456789012:role/agent-exec"
TASK_ROLE = "arn:aws:iam::123456789012:role/agent-task"
SSM = "arn:aws:ssm:eu-west-1:123456789012:parameter/agents/"
DB_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf"
_SHAPE = get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
S = 1_000_000_000  # nanoseconds in a second (the engine's health-check unit)


def api_errors(request: dict) -> str:
    """'' when botocore's model of RegisterTaskDefinition accepts REQUEST."""
    report = ParamValidator().validate(request, _SHAPE)
    return report.generate_report() if report.has_errors() else ""


def registered(*requests: dict) -> list[dict]:
    """REQUESTS registered with moto's ECS (mock_aws, offline): the task definitions ECS stores."""
    import boto3
    from moto import mock_aws
    with mock_aws():  # (it sets fake credentials of its own for its duration)
        client = boto3.client("ecs", region_name="eu-west-1")
        return [client.register_task_definition(**r)["taskDefinition"] for r in requests]
