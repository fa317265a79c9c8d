"""Issue 26: the AWS names in a task definition checked by their documented shapes, every
problem reported at once, and a failing `ecs-task-def --json` that leaves stdout empty."""

from __future__ import annotations

import json

import pytest

from builder.cli.main import main
from builder.core.errors import TaskDefinitionError
from builder.ship.awsnames import prefix_problem, region_problem, role_problem, secret_ref_problem
from builder.ship.ecs import task_definition
from builder.ship.ecsopts import TaskOptions, check_options
from tests.support.ecs import DB_ARN, ROLE, SSM, api_errors, registered
from tests.support.packages import make_agent
from tests.unit.test_ecs_taskdef import REF, facts

GOOD_SECRETS = [
    DB_ARN,
    "arn:aws:secretsmanager:eu-west-1:123456789012:secret:agents/hello/openai",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf:username::",
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf:username:AWSCURRENT:",
    "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:db",
    "arn:aws:ssm:eu-west-1:123456789012:parameter/agents/hello/OPENAI_API_KEY",
    "arn:aws-us-gov:ssm:us-gov-west-1:123456789012:parameter/x",
    "/agents/hello/OPENAI_API_KEY",
    "openai_api_key",
]
BAD_SECRETS = {
    "not an ARN": "arn:db",
    "account": "arn:aws:secretsmanager:eu-west-1:1:secret:db",
    "region": "arn:aws:ssm:mars-1:123456789012:parameter/x",
    "service": "arn:aws:s3:eu-west-1:123456789012:parameter/x",
    "cross-partition region": "arn:aws-cn:ssm:eu-west-1:123456789012:parameter/x",
    "space": "/agents/a b",
}


@pytest.mark.parametrize("value", GOOD_SECRETS)
def test_documented_secret_references_pass(value):
    assert secret_ref_problem(value) is None


@pytest.mark.parametrize("case", sorted(BAD_SECRETS))
def test_malformed_secret_references_are_named(case):
    assert secret_ref_problem(BAD_SECRETS[case])


def test_roles_and_regions():
    for good in (ROLE, "arn:aws:iam::123456789012:role/service-role/agents/exec",
                 "arn:aws-cn:iam::123456789012:role/x"):
        assert role_problem(good) is None, good
    for bad in ("agent-exec", "arn:aws:iam::12345:role/x", "arn:aws:iam::123456789012:user/x",
                "arn:mars:iam::123456789012:role/x", "arn:aws:iam::123456789012:role/" + "n" * 65):
        assert role_problem(bad), bad
    assert region_problem("eu-west-1") is None and region_problem("cn-north-1") is None
    assert "mars-1" in region_problem("mars-1")
    assert region_problem("eu-west-1", "aws-cn")  # a region of another partition


def test_secrets_prefix_must_end_in_a_separator():
    # the case: ".../hello-agent" + "OPENAI_API_KEY" ran the two together
    assert "separator" in prefix_problem("arn:aws:ssm:eu-west-1:123456789012:parameter/agents/hello-agent")
    for good in (SSM, "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hello-agent-",
                 "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hello-AbCdEf:", "/agents/hello/"):
        assert prefix_problem(good) is None, good
    for bad in ("not-an-arn-", "arn:aws:ssm:mars-1:123456789012:parameter/a/", "agents/"):
        assert prefix_problem(bad), bad


def test_every_problem_in_one_error_each_naming_its_option():
    opts = TaskOptions(cpu=300, execution_role_arn="not-a-role", task_role_arn="arn:aws:iam::1:role/x",
                       secrets_prefix="arn:aws:ssm:eu-west-1:123456789012:parameter/agents/hello-agent",
                       secrets={"DB_URL": "arn:db"}, log_group="/ecs/a", log_region="mars-1",
                       family_prefix="a b", ephemeral_storage=500)
    with pytest.raises(TaskDefinitionError) as info:
        check_options(opts)
    err = info.value
    fields = [p["field"] for p in err.problems]
    assert set(fields) == {"--cpu", "--execution-role-arn", "--task-role-arn", "--secrets-prefix", "--secret",
                           "--log-region", "--family-prefix", "--ephemeral-storage"}
    assert err.exit_code == 80 and f"{len(err.problems)} problems" in err.message
    for p in err.problems:  # each line of the message names its option
        assert f"- [{p['field']}] " in err.message
    assert "hello-agentNAME" in err.message and "mars-1" in err.message and "***" not in err.message
    assert err.to_dict()["problems"] == err.problems


def test_image_and_option_problems_together():
    image = facts(labels={"io.pixell.agent.env-refs": "OPENAI_API_KEY"}, architecture="s390x",
                  healthcheck={"Test": ["CMD", "true"], "Interval": 1_000_000_000})
    with pytest.raises(TaskDefinitionError) as info:
        task_definition(image, REF, TaskOptions(log_region="eu-west-1"))
    fields = {p["field"] for p in info.value.problems}
    assert {"--secret", "--execution-role-arn", "--log-group", "runtimePlatform.cpuArchitecture",
            "healthCheck.interval"} <= fields


def test_hardened_options_register_with_ecs():
    ec2 = task_definition(facts(), REF, TaskOptions(launch_type="EC2", network_mode="host", family_prefix="prod-"))
    fargate = task_definition(facts(), REF, TaskOptions(ephemeral_storage=21, family_prefix="team_a-"))
    assert ec2["networkMode"] == "host" and ec2["family"] == "prod-demo"
    assert fargate["ephemeralStorage"] == {"sizeInGiB": 21} and fargate["volumes"] == [{"name": "tmp"}]
    for request in (ec2, fargate):
        assert api_errors(request) == ""
    stored = registered(ec2, fargate)
    assert stored[1]["containerDefinitions"][0]["readonlyRootFilesystem"] is True
    assert stored[1]["containerDefinitions"][0]["mountPoints"][0]["containerPath"] == "/tmp"


def test_failing_json_leaves_stdout_empty(capsys):
    code = main(["ecs-task-def", "127.0.0.1:5000/agents/demo:1.0.0", "--json", "--progress", "plain",
                 "--secrets-prefix", "not-an-arn-", "--log-group", "/ecs/a", "--log-region", "mars-1"])
    out, err = capsys.readouterr()
    assert code == 80 and out == ""
    error = json.loads(err.strip().splitlines()[-1])
    assert error["schema"] == 1 and error["ok"] is False
    assert {p["field"] for p in error["error"]["problems"]} == {"--secrets-prefix", "--log-region",
                                                               "--execution-role-arn"}


def test_build_precheck_reports_options_and_secret_mapping_at_once(tmp_path, capsys):
    agent = make_agent(tmp_path / "src", "mapped", requirements=None)
    (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text()
                                      + "environment:\n  OPENAI_API_KEY: ${OPENAI_API_KEY}\n")
    code = main(["build", str(agent), "--registry", "127.0.0.1:9/ecs", "--push", "--json",
                 "--ecs-task-def", str(tmp_path / "t.json"), "--cpu", "300", "--env", "NOVALUE"])
    out, _ = capsys.readouterr()
    error = json.loads(out)["error"]  # build's stdout is its result object: the error stays there
    assert code == 80 and {p["field"] for p in error["problems"]} == {"--cpu", "--secret", "--execution-role-arn",
                                                                      "--env"}
    assert "'NOVALUE': not KEY=VALUE" in error["message"]
