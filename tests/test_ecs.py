"""Issue 15: the ECS task definition, derived from the image and checked against the AWS API model.

botocore's ParamValidator is the real RegisterTaskDefinition input shape,
offline; it checks shapes only, so the Fargate rules are asserted here too.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from botocore.session import get_session
from botocore.validate import ParamValidator

from builder.build.engine import Image
from builder.core.errors import TaskDefinitionError
from builder.package.manifest import parse_manifest
from builder.ship.ecs import TaskOptions, digest_ref, health_check, stop_timeout, task_definition
from tests.conftest import AGENT_YAML, BIN

AGENT_IMAGE = str(BIN / "agent-image")
ROLE = "arn:aws:iam::123456789012:role/agent-exec"
TASK_ROLE = "arn:aws:iam::123456789012:role/agent-task"
SSM = "arn:aws:ssm:eu-west-1:123456789012:parameter/agents/"
_SHAPE = get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
S = 1_000_000_000


def api_errors(request: dict) -> str:
    """'' when botocore's model of RegisterTaskDefinition accepts REQUEST."""
    report = ParamValidator().validate(request, _SHAPE)
    return report.generate_report() if report.has_errors() else ""


def facts(**over) -> Image:
    """What `docker image inspect` reports for an agent image, as the engine seam returns it."""
    labels = {"io.pixell.agent.name": "demo", "io.pixell.agent.version": "1.0.0",
              "io.pixell.agent.env-refs": "", "io.pixell.agent-image.input-digest": "ab" * 32}
    labels.update(over.pop("labels", {}))
    base = dict(id="sha256:" + "0" * 64, tags=(), labels=labels, size=1, layers=(),
                digests=("127.0.0.1:5000/agents/demo@sha256:" + "1" * 64,), env=("REST_PORT=8080", "BASE_PATH=/"),
                user="agent", exposed_ports=("8080/tcp",), architecture="amd64", os="linux",
                healthcheck={"Test": ["CMD", "python", "/opt/agent-image/healthcheck.py"], "Interval": 5 * S,
                             "Timeout": 3 * S, "StartPeriod": 10 * S, "Retries": 3})
    base.update(over)
    return Image(**base)


REF = "127.0.0.1:5000/agents/demo@sha256:" + "1" * 64


# --- pure: every shape the generator can take passes the API model ---------------------------

def test_every_option_combination_is_a_valid_request():
    combos = itertools.product(
        ["FARGATE", "EC2"], [None, "/ecs/agents"], ["", "OPENAI_API_KEY,DB_URL"], [None, TASK_ROLE],
        [{}, {"AGENT_APP_ID": "app-1", "DEPLOYMENT_ID": "d-9", "BASE_PATH": "/agents/app-1"}],
        ["amd64", "arm64"], [None, {"Test": ["NONE"]}])
    count = 0
    for launch, group, refs, task_role, env, arch, hc in combos:
        image = facts(labels={"io.pixell.agent.env-refs": refs}, architecture=arch,
                      **({"healthcheck": hc} if hc else {}))
        opts = TaskOptions(launch_type=launch, cpu=512, memory=2048, execution_role_arn=ROLE, task_role_arn=task_role,
                           log_group=group, log_region="eu-west-1" if group else None, secrets_prefix=SSM,
                           environment=env)
        request = task_definition(image, REF, opts)
        assert api_errors(request) == "", (launch, group, refs, request)
        assert request["networkMode"] == "awsvpc" and request["requiresCompatibilities"] == [launch]
        container = request["containerDefinitions"][0]
        assert container["image"] == REF and container["user"] == "agent"
        assert [s["name"] for s in container.get("secrets", [])] == [n for n in refs.split(",") if n]
        assert ("healthCheck" in container) == (hc is None)
        count += 1
    assert count == 2 ** 7


def test_the_default_request_in_full():
    request = task_definition(facts(), REF, TaskOptions())
    assert api_errors(request) == ""
    assert request == {
        "family": "demo", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256",
        "memory": "512", "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
        "containerDefinitions": [{
            "name": "demo", "image": REF, "essential": True,
            "portMappings": [{"containerPort": 8080, "protocol": "tcp", "name": "rest", "appProtocol": "http"}],
            "stopTimeout": 30, "user": "agent",
            "healthCheck": {"command": ["CMD", "python", "/opt/agent-image/healthcheck.py"], "interval": 5,
                            "timeout": 3, "retries": 3, "startPeriod": 10}}],
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
    (TaskOptions(log_group="/ecs/a b", log_region="x", execution_role_arn=ROLE), "--log-group", "without spaces"),
])
def test_options_ecs_refuses_are_errors(opts, field, words):
    with pytest.raises(TaskDefinitionError) as info:
        task_definition(facts(), REF, opts)
    assert info.value.field == field and words in str(info.value) and info.value.exit_code == 80


def test_every_fargate_size_passes_and_its_neighbours_do_not():
    from builder.ship.ecs import FARGATE_SIZES, check_options
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
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets={"DB_URL": "arn:db"}))
    assert "OPENAI_API_KEY" in info.value.message and "DB_URL" not in info.value.message.split("references")[1]
    with pytest.raises(TaskDefinitionError, match="OPENAI_KEY: not an environment reference"):
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets_prefix=SSM,
                                                secrets={"OPENAI_KEY": "arn:typo"}))
    with pytest.raises(TaskDefinitionError, match="need --execution-role-arn"):
        task_definition(image, REF, TaskOptions(secrets_prefix=SSM))
    with pytest.raises(TaskDefinitionError, match="also given with --env"):
        task_definition(image, REF, TaskOptions(execution_role_arn=ROLE, secrets_prefix=SSM,
                                                environment={"DB_URL": "postgres://u:p@h/db"}))
    db_arn = "arn:aws:secretsmanager:eu-west-1:1:secret:db"
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


# --- real images: built, pushed to a real registry, inspected by the real engine --------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT_IMAGE, *args], capture_output=True, text=True)


def assert_matches_inspect(request: dict, docker_client, image_id: str, digest: str) -> None:
    """The task definition says what `docker image inspect` says of the built image."""
    cfg = docker_client.api.inspect_image(image_id)["Config"]
    container = request["containerDefinitions"][0]
    hc = cfg["Healthcheck"]
    assert container["healthCheck"] == {"command": hc["Test"], "interval": hc["Interval"] // S,
                                        "timeout": hc["Timeout"] // S, "retries": hc["Retries"],
                                        "startPeriod": hc["StartPeriod"] // S}
    port = dict(e.split("=", 1) for e in cfg["Env"])["REST_PORT"]
    assert f"{port}/tcp" in cfg["ExposedPorts"]
    assert [p["containerPort"] for p in container["portMappings"]] == [int(port)]
    assert container["user"] == cfg["User"] == "agent"
    assert container["image"] == digest
    assert api_errors(request) == ""


def push_build(source, index_url, registry, *extra) -> tuple[subprocess.CompletedProcess, dict]:
    proc = cli("build", str(source), "--json", "--index-url", index_url, "--registry", f"{registry.host}/ecs",
               "--push", *extra)
    return proc, json.loads(proc.stdout)


def test_plain_agent_task_definition_after_push(agent_factory, index_url, registry, docker_client, cleanup_images,
                                               tmp_path):
    cleanup_images(f"{registry.host}/ecs/plain-ecs")
    agent = agent_factory("plain-ecs", requirements="tinyreq==1.0\n")
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "task-def.json"
    proc, out = push_build(agent, index_url, registry, "--ecs-task-def", str(target), "--agent-app-id", "app-7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # written by rename: no temporary file is left beside it
    assert out["ecs_task_def"] == str(target) and [p.name for p in target.parent.iterdir()] == ["task-def.json"]
    written = json.loads(target.read_text())
    assert_matches_inspect(written, docker_client, out["image_id"], out["digest_ref"])
    assert written["family"] == "plain-ecs"
    assert written["containerDefinitions"][0]["environment"] == [{"name": "AGENT_APP_ID", "value": "app-7"}]
    assert {"key": "io.pixell.agent-image.input-digest", "value": out["input_digest"]} in written["tags"]

    # from the tag alone, on a machine without the image: pulled, and the same request
    for tag in docker_client.images.get(out["image_id"]).tags:
        docker_client.images.remove(tag, force=True)
    again = cli("ecs-task-def", out["image"], "--json", "--agent-app-id", "app-7")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout) == written
    # without --json: the same request, pretty-printed, and nothing else on stdout
    pretty = cli("ecs-task-def", out["digest_ref"], "--agent-app-id", "app-7")
    assert pretty.returncode == 0 and json.loads(pretty.stdout) == written and pretty.stdout.startswith("{\n  ")


def test_agent_with_secrets(agent_factory, index_url, registry, docker_client, cleanup_images, tmp_path):
    cleanup_images(f"{registry.host}/ecs/secretive")
    secret_value = "sk-live-ECS-SECRET-0404"
    agent = agent_factory("secretive", requirements=None, env_file=f"OPENAI_API_KEY={secret_value}\n")
    (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text() + (
        "environment:\n  GREETING: hi\n  OPENAI_API_KEY: ${OPENAI_API_KEY}\n  DB_URL: ${DB_URL}\n"))
    target = tmp_path / "td.json"

    # unmapped references fail before the build: no image, no file, one JSON error on stdout
    proc, out = push_build(agent, index_url, registry, "--ecs-task-def", str(target), "--execution-role-arn", ROLE,
                           "--secret", "DB_URL=arn:aws:secretsmanager:eu-west-1:123456789012:secret:db")
    assert proc.returncode == 80 and out["error"]["class"] == "TaskDefinitionError"
    assert "OPENAI_API_KEY" in out["error"]["message"] and len(proc.stdout.strip().splitlines()) == 1
    assert not target.exists() and "Building agent image" not in proc.stderr
    assert not docker_client.api.images(name=f"{registry.host}/ecs/secretive")

    proc, out = push_build(agent, index_url, registry)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = docker_client.api.inspect_image(out["image_id"])["Config"]["Labels"]
    assert labels["io.pixell.agent.env-refs"] == "OPENAI_API_KEY,DB_URL"
    assert secret_value not in json.dumps(labels)

    # the same from the pushed image: every required option missing is an error before any output
    for missing, words in ((["--execution-role-arn", ROLE], "OPENAI_API_KEY, DB_URL, which no secret maps"),
                           (["--secrets-prefix", SSM], "need --execution-role-arn")):
        bad = cli("ecs-task-def", out["digest_ref"], *missing)
        assert bad.returncode == 80 and bad.stdout == "" and words in bad.stderr
    bad = cli("ecs-task-def", out["digest_ref"], "--json", "--secrets-prefix", SSM, "--execution-role-arn", ROLE,
              "--log-group", "/ecs/agents")
    assert bad.returncode == 80 and json.loads(bad.stdout)["error"]["field"] == "--log-region"

    ok = cli("ecs-task-def", out["digest_ref"], "--json", "--secrets-prefix", SSM, "--execution-role-arn", ROLE,
             "--task-role-arn", TASK_ROLE, "--log-group", "/ecs/agents", "--log-region", "eu-west-1",
             "--cpu", "512", "--memory", "1024", "--deployment-id", "dep-3", "--base-path", "/a/secretive")
    assert ok.returncode == 0, ok.stderr[-2000:]
    request = json.loads(ok.stdout)
    assert_matches_inspect(request, docker_client, out["image_id"], out["digest_ref"])
    container = request["containerDefinitions"][0]
    assert container["secrets"] == [{"name": "OPENAI_API_KEY", "valueFrom": SSM + "OPENAI_API_KEY"},
                                    {"name": "DB_URL", "valueFrom": SSM + "DB_URL"}]
    assert container["logConfiguration"] == {"logDriver": "awslogs", "options": {
        "awslogs-group": "/ecs/agents", "awslogs-region": "eu-west-1", "awslogs-stream-prefix": "secretive"}}
    assert (request["cpu"], request["memory"], request["executionRoleArn"], request["taskRoleArn"]) == (
        "512", "1024", ROLE, TASK_ROLE)
    assert secret_value not in ok.stdout + ok.stderr


def test_fastapi_scaffold(tmp_path, index_url, registry, docker_client, cleanup_images):
    cleanup_images(f"{registry.host}/ecs/kit-ecs")
    subprocess.run([str(BIN / "pixell"), "init", "kit-ecs"], cwd=tmp_path, check=True, capture_output=True)
    proj = tmp_path / "kit-ecs"
    shutil.copy(proj / ".env.example", proj / ".env")
    subprocess.run([str(BIN / "pixell"), "build"], cwd=proj, check=True, capture_output=True)
    target = tmp_path / "out" / "kit.json"
    target.parent.mkdir()
    proc, out = push_build(next(proj.glob("*.apkg")), index_url, registry, "--ecs-task-def", str(target),
                           "--launch-type", "EC2", "--cpu", "1024", "--memory", "1536")
    assert proc.returncode == 0, proc.stderr[-2000:]
    request = json.loads(target.read_text())
    assert_matches_inspect(request, docker_client, out["image_id"], out["digest_ref"])
    assert request["requiresCompatibilities"] == ["EC2"] and request["networkMode"] == "awsvpc"
    assert "secrets" not in request["containerDefinitions"][0]


def test_an_image_never_pushed_has_no_digest(agent_factory, index_url, cleanup_images, tmp_path):
    cleanup_images("agents/local-ecs")
    proc = cli("build", str(agent_factory("local-ecs", requirements=None)), "--index-url", index_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = cli("ecs-task-def", "agents/local-ecs:0.1.0", "--json")
    assert bad.returncode == 80
    assert "Push it first" in json.loads(bad.stdout)["error"]["message"]
    no_push = cli("build", str(tmp_path), "--ecs-task-def", str(tmp_path / "x.json"), "--json")
    assert no_push.returncode == 80 and json.loads(no_push.stdout)["error"]["field"] == "--ecs-task-def"
