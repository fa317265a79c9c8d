"""Issue 15: the ECS task definition, derived from the image and checked against the AWS API model.

botocore's ParamValidator is the real RegisterTaskDefinition input shape,
offline; it checks shapes only, so the Fargate rules are asserted here too.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.support.cli import AGENT_IMAGE
from tests.support.ecs import ROLE, SSM, TASK_ROLE, S, api_errors, registered
from tests.support.paths import BIN

# --- pure: every shape the generator can take passes the API model ---------------------------


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
    # the numeric uid of the base's user (its ABI label), read-only root with a writable /tmp volume
    abi = dict(kv.split("=", 1) for kv in cfg["Labels"]["io.pixell.agent-image.abi"].split(";"))
    assert cfg["User"] == "agent" and container["user"] == abi["uid"] == "10001"
    # read-only root where the image allows it: EC2 a tmpfs /tmp; Fargate a /tmp volume only when the image
    # declares VOLUME /tmp (Fargate makes an undeclared one root-owned 0755, unwritable for uid 10001)
    if request["requiresCompatibilities"] == ["EC2"]:
        assert container["readonlyRootFilesystem"] is True and "volumes" not in request
        assert container["linuxParameters"]["tmpfs"][0]["containerPath"] == "/tmp"
    elif "/tmp" in (cfg.get("Volumes") or {}):
        assert container["readonlyRootFilesystem"] is True and request["volumes"] == [{"name": "tmp"}]
    else:
        assert "readonlyRootFilesystem" not in container and "volumes" not in request
    assert container["image"] == digest
    assert api_errors(request) == "" and registered(request)[0]["family"] == request["family"]


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
    # a failing --json run: stdout empty (`> task.json` gets nothing), the error object last on stderr
    assert bad.returncode == 80 and bad.stdout == ""
    assert json.loads(bad.stderr.strip().splitlines()[-1])["error"]["field"] == "--log-region"

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
    assert request["requiresCompatibilities"] == ["EC2"] and request["networkMode"] == "bridge"
    assert "secrets" not in request["containerDefinitions"][0]


def test_an_image_never_pushed_has_no_digest(agent_factory, index_url, cleanup_images, tmp_path):
    cleanup_images("agents/local-ecs")
    proc = cli("build", str(agent_factory("local-ecs", requirements=None)), "--index-url", index_url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = cli("ecs-task-def", "agents/local-ecs:0.1.0", "--json")
    assert bad.returncode == 80 and bad.stdout == ""
    assert "Push it first" in json.loads(bad.stderr.strip().splitlines()[-1])["error"]["hint"]
    no_push = cli("build", str(tmp_path), "--ecs-task-def", str(tmp_path / "x.json"), "--json")
    assert no_push.returncode == 80 and json.loads(no_push.stdout)["error"]["field"] == "--ecs-task-def"
