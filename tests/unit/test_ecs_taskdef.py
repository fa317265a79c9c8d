"""Issue 15, the ECS task definition as a pure function of an image's facts and the options,
checked against botocore's model of RegisterTaskDefinition (offline).

Task definitions of real images, built and pushed, are in tests/integration/test_ecs.py.
"""

from __future__ import annotations

import itertools

import pytest

from builder.build.image import Image
from builder.core.errors import TaskDefinitionError
from builder.package.manifest import parse_manifest
from builder.ship.ecs import digest_ref, health_check, stop_timeout, task_definition
from builder.ship.ecsopts import TaskOptions
from tests.support.ecs import DB_ARN, ROLE, SSM, TASK_ROLE, S, api_errors, registered
from tests.support.packages import AGENT_YAML


def facts(**over) -> Image:
    """What `docker image inspect` reports for an agent image, as the engine seam returns it."""
    labels = {"io.pixell.agent.name": "demo", "io.pixell.agent.version": "1.0.0",
              "io.pixell.agent.env-refs": "", "io.pixell.agent-image.input-digest": "ab" * 32,
              "io.pixell.agent-image.abi": "distro=debian:12;python=3.11;venv=/opt/venv;uid=10001"}
    labels.update(over.pop("labels", {}))
    base = dict(id="sha256:" + "0" * 64, tags=(), labels=labels, size=1, layers=(),
                digests=("127.0.0.1:5000/agents/demo@sha256:" + "1" * 64,), env=("REST_PORT=8080", "BASE_PATH=/"),
                user="agent", exposed_ports=("8080/tcp",), architecture="amd64", os="linux", volumes=("/tmp",),
                healthcheck={"Test": ["CMD", "python", "/opt/agent-image/healthcheck.py"], "Interval": 5 * S,
                             "Timeout": 3 * S, "StartPeriod": 10 * S, "Retries": 3})
    base.update(over)
    return Image(**base)


REF = "127.0.0.1:5000/agents/demo@sha256:" + "1" * 64


def test_every_option_combination_is_a_valid_request():
    combos = itertools.product(
        ["FARGATE", "EC2"], [None, "/ecs/agents"], ["", "OPENAI_API_KEY,DB_URL"], [None, TASK_ROLE],
        [{}, {"AGENT_APP_ID": "app-1", "DEPLOYMENT_ID": "d-9", "BASE_PATH": "/agents/app-1"}],
        ["amd64", "arm64"], [None, {"Test": ["NONE"]}], [False, True])
    requests = []
    for launch, group, refs, task_role, env, arch, hc, writable in combos:
        image = facts(labels={"io.pixell.agent.env-refs": refs}, architecture=arch,
                      **({"healthcheck": hc} if hc else {}))
        opts = TaskOptions(launch_type=launch, cpu=512, memory=2048, execution_role_arn=ROLE, task_role_arn=task_role,
                           log_group=group, log_region="eu-west-1" if group else None, secrets_prefix=SSM,
                           environment=env, writable_root=writable,
                           ephemeral_storage=30 if launch == "FARGATE" else None)
        request = task_definition(image, REF, opts)
        assert api_errors(request) == "", (launch, group, refs, request)
        assert request["networkMode"] == ("awsvpc" if launch == "FARGATE" else "bridge")
        assert request["requiresCompatibilities"] == [launch]
        container = request["containerDefinitions"][0]
        assert container["image"] == REF and container["user"] == "10001"
        assert container.get("readonlyRootFilesystem", False) is not writable
        assert ("volumes" in request) == (not writable and launch == "FARGATE")  # EC2: a tmpfs instead
        assert ("linuxParameters" in container) == (not writable and launch == "EC2")
        assert [s["name"] for s in container.get("secrets", [])] == [n for n in refs.split(",") if n]
        assert ("healthCheck" in container) == (hc is None)
        requests.append(request)
    assert len(requests) == 2 ** 8
    stored = registered(*requests)  # ECS (moto's) takes every one
    assert [t["revision"] for t in stored] == list(range(1, 2 ** 8 + 1))


def test_the_default_request_in_full():
    request = task_definition(facts(), REF, TaskOptions())
    assert api_errors(request) == ""
    assert request == {
        "family": "demo", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
        "memory": "512", "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        "containerDefinitions": [{
            "name": "demo", "image": REF, "essential": True,
            "portMappings": [{"containerPort": 8080, "protocol": "tcp", "name": "rest", "appProtocol": "http"}],
            "stopTimeout": 30, "user": "10001", "readonlyRootFilesystem": True,
            "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],
            "healthCheck": {"command": ["CMD", "python", "/opt/agent-image/healthcheck.py"], "interval": 5,
                            "timeout": 3, "retries": 3, "startPeriod": 10}}],
        "volumes": [{"name": "tmp"}],
        "tags": [{"key": "io.pixell.agent.name", "value": "demo"}, {"key": "io.pixell.agent.version", "value": "1.0.0"},
                 {"key": "io.pixell.agent-image.input-digest", "value": "ab" * 32}]}


@pytest.mark.parametrize("opts, field, words", [
    (TaskOptions(cpu=300), "--cpu", "256, 512, 1024"),
    (TaskOptions(cpu=256, memory=4096), "--memory", "512, 1024, 2048"),
    (TaskOptions(cpu=1024, memory=2500), "--memory", "2048-8192 MiB in steps of 1024"),
    (TaskOptions(launch_type="EC2", cpu=64), "--cpu", "128-196608"),
    (TaskOptions(log_group="/ecs/a", execution_role_arn=ROLE), "--log-region", "awslogs-region"),
    (TaskOptions(log_group="/ecs/a", log_region="eu-west-1"), "--execution-role-arn", "awslogs"),
    (TaskOptions(log_region="eu-west-1"), "--log-group", "without --log-group"),
    (TaskOptions(execution_role_arn="agent-exec"), "--execution-role-arn", "IAM role ARN"),
    (TaskOptions(environment={"REST_PORT": "9000"}), "--env", "set by the image"),
    (TaskOptions(environment={"A B": "1"}), "--env", "not a valid variable name"),
    (TaskOptions(log_group="/ecs/a b", log_region="eu-west-1", execution_role_arn=ROLE), "--log-group",
     "without spaces"),
    (TaskOptions(launch_type="EC2", ephemeral_storage=30), "--ephemeral-storage", "Fargate tasks only"),
    (TaskOptions(ephemeral_storage=20), "--ephemeral-storage", "21-200 GiB"),
    (TaskOptions(network_mode="bridge"), "--network-mode", "awsvpc network mode only"),
    (TaskOptions(family_prefix="team a/"), "--family-prefix", "letters, digits"),
])
def test_options_ecs_refuses_are_errors(opts, field, words):
    with pytest.raises(TaskDefinitionError) as info:
        task_definition(facts(), REF, opts)
    assert info.value.field == field and words in str(info.value) and info.value.exit_code == 80


def test_every_fargate_size_passes_and_its_neighbours_do_not():
    from builder.ship.ecsopts import FARGATE_SIZES, check_options
    for cpu, memories in FARGATE_SIZES.items():
        for memory in memories:
            check_options(TaskOptions(cpu=cpu, memory=memory))
        for memory in (memories[0] - 1, memories[-1] + (memories[1] - memories[0])):
            with pytest.raises(TaskDefinitionError):
                check_options(TaskOptions(cpu=cpu, memory=memory))
    assert len(FARGATE_SIZES) == 7 and FARGATE_SIZES[16384][-1] == 122880


def test_secrets_map_every_reference_or_fail_naming_it():
    image = facts(labels={"io.pixell.agent.env-refs": "OPENAI_API_KEY,DB_URL"})
    with pytest.raises(TaskDefinitionError) as info:
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets={"DB_URL": DB_ARN}))
    assert "OPENAI_API_KEY" in info.value.message and "DB_URL" not in info.value.message.split("references")[1]
    with pytest.raises(TaskDefinitionError, match="OPENAI_KEY: not an environment reference"):
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets_prefix=SSM,
                                                secrets={"OPENAI_KEY": DB_ARN}))
    with pytest.raises(TaskDefinitionError, match="need --execution-role-arn"):
        task_definition(image, REF, TaskOptions(secrets_prefix=SSM))
    with pytest.raises(TaskDefinitionError, match="also given with --env"):
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets_prefix=SSM,
                                                environment={"DB_URL": "postgres://u:p@h/db"}))
    db_arn = DB_ARN
    request = task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets_prefix=SSM,
                                                      secrets={"DB_URL": db_arn}))
    assert request["containerDefinitions"][0]["secrets"] == [
        {"name": "OPENAI_API_KEY", "valueFrom": SSM + "OPENAI_API_KEY"},
        {"name": "DB_URL", "valueFrom": db_arn}]
    # an image from before the label: which secrets it reads is unknown, so no guess
    old = facts()
    del old.labels["io.pixell.agent.env-refs"]
    with pytest.raises(TaskDefinitionError, match="Rebuild it"):
        task_definition(old, REF, TaskOptions())


def test_health_check_is_the_images_in_seconds_or_an_error():
    assert health_check({"Test": ["CMD-SHELL", "curl -f localhost/health"], "Interval": 60 * S, "Retries": 10}) == {
        "command": ["CMD-SHELL", "curl -f localhost/health"], "interval": 60, "timeout": 30, "retries": 10,
        "startPeriod": 0}  # Docker's defaults for unset fields (timeout 30 s), not ECS's (5 s)
    assert health_check(None) is None and health_check({"Test": ["NONE"]}) is None
    for hc, words in (({"Interval": 2 * S}, "interval is 2, outside ECS's 5-300"),
                      ({"Timeout": 90 * S}, "timeout is 90, outside ECS's 2-60"),
                      ({"Retries": 20}, "retries is 20"),
                      ({"StartPeriod": 600 * S}, "startPeriod is 600"),
                      ({"Interval": 7_500_000_000}, "7.5s; ECS takes whole seconds")):
        with pytest.raises(TaskDefinitionError, match=words):
            health_check({"Test": ["CMD", "true"], **hc})


def test_stop_timeout_covers_the_drain_window():
    assert stop_timeout({}, "FARGATE") == 30  # the serving default, 25 s, plus the margin
    assert stop_timeout({"io.pixell.agent.drain-seconds": "60"}, "FARGATE") == 65
    assert stop_timeout({"io.pixell.agent.drain-seconds": "12.5"}, "FARGATE") == 18
    assert stop_timeout({"io.pixell.agent.drain-seconds": "118"}, "EC2") == 123
    with pytest.raises(TaskDefinitionError, match="Fargate allows at most 120"):
        stop_timeout({"io.pixell.agent.drain-seconds": "118"}, "FARGATE")
    with pytest.raises(TaskDefinitionError, match="not a number"):
        stop_timeout({"io.pixell.agent.drain-seconds": "soon"}, "FARGATE")


def test_image_facts_ecs_cannot_run_are_errors():
    for image, words in ((facts(architecture="s390x"), "s390x"), (facts(os="windows"), "windows"),
                         (facts(exposed_ports=()), "exposes nothing"), (facts(env=()), "no usable REST_PORT"),
                         (facts(labels={"io.pixell.agent.name": ""}), "not built by agent-image")):
        with pytest.raises(TaskDefinitionError, match=words):
            task_definition(image, REF, TaskOptions())
    ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/agents/demo@sha256:" + "1" * 64
    with pytest.raises(TaskDefinitionError, match="pulls from ECR"):
        task_definition(facts(), ecr, TaskOptions())
    assert task_definition(facts(), ecr, TaskOptions(execution_role_arn=ROLE))["executionRoleArn"] == ROLE


def test_read_only_root_where_the_image_allows_it():
    ec2 = task_definition(facts(volumes=()), REF, TaskOptions(launch_type="EC2"))
    container = ec2["containerDefinitions"][0]
    assert container["readonlyRootFilesystem"] is True and "volumes" not in ec2
    assert container["linuxParameters"] == {"tmpfs": [{"containerPath": "/tmp", "size": 64}]}
    # Fargate mounts /tmp root-owned 0755 unless the image declares VOLUME /tmp: uid 10001 could not write it
    fargate = task_definition(facts(volumes=()), REF, TaskOptions())
    assert "readonlyRootFilesystem" not in fargate["containerDefinitions"][0] and "volumes" not in fargate
    writable = task_definition(facts(), REF, TaskOptions(writable_root=True))
    assert "readonlyRootFilesystem" not in writable["containerDefinitions"][0] and "volumes" not in writable
    assert registered(ec2, fargate, writable)[0]["containerDefinitions"][0]["readonlyRootFilesystem"] is True


def test_user_is_the_numeric_uid_when_the_base_says_it():
    old = facts()
    del old.labels["io.pixell.agent-image.abi"]
    assert task_definition(old, REF, TaskOptions())["containerDefinitions"][0]["user"] == "agent"
    root = facts(user="", labels={"io.pixell.agent-image.abi": "uid=0"})
    assert "user" not in task_definition(root, REF, TaskOptions())["containerDefinitions"][0]


def test_digest_ref_comes_from_the_registry_digest():
    image = facts()
    assert digest_ref(image, "127.0.0.1:5000/agents/demo:1.0.0") == image.digests[0]
    with pytest.raises(TaskDefinitionError, match="Push it first"):
        digest_ref(facts(digests=()), "agents/demo:1.0.0")
    two = facts(digests=("a.example/x@sha256:" + "1" * 64, "b.example/x@sha256:" + "1" * 64))
    with pytest.raises(TaskDefinitionError, match="several registries"):
        digest_ref(two, "agents/demo:1.0.0")
    assert digest_ref(two, "b.example/x:1") == "b.example/x@sha256:" + "1" * 64


def test_build_records_reference_names_not_values():
    text = AGENT_YAML.format(name="refs", display="Refs", runtime="python3.11", version="1.0")
    m = parse_manifest(text + "environment:\n  GREETING: hi\n  OPENAI_API_KEY: ${OPENAI_API_KEY}\n"
                              "  DB_URL: postgres://${DB_USER}@db/x\n")
    assert m.labels["io.pixell.agent.env-refs"] == "OPENAI_API_KEY,DB_URL"
    assert parse_manifest(text).labels["io.pixell.agent.env-refs"] == ""
