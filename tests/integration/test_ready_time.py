"""Issue 26: the ready time measured at build, and the task definition that runs the image.

A deliberately slow-importing agent (its entrypoint module sleeps at import): the build
records how long its import took (io.pixell.agent-image.ready-seconds), ecs-task-def derives
healthCheck.startPeriod from it (builder/ship/ecs.py start_period), --start-period overrides.
The image declares VOLUME /tmp, so Fargate's request has a read-only root with a /tmp volume;
the image runs with each task definition's settings (EC2: `--read-only --tmpfs /tmp --user
UID`; Fargate: `--read-only --user UID` and the declared /tmp volume), and every request
passes botocore's model and registers with moto's ECS, described back equal.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from builder.core.labels import READY_LABEL
from tests.support.cli import AGENT_IMAGE
from tests.support.ecs import api_errors
from tests.support.serving import Served

SLEEP_S = 2.0
SLOW_MAIN = f"""\
import time

time.sleep({SLEEP_S})  # a slow import: a model loaded, a big library imported


def handler(context):
    with open("/tmp/agent-scratch", "w") as fh:  # the one place an agent writes
        fh.write("ok")
    return {{"ok": True}}
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT_IMAGE, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def slow(tmp_path_factory, index, registry, docker_client):
    from tests.support.engine import remove_tags
    from tests.support.packages import make_agent
    agent = make_agent(tmp_path_factory.mktemp("slow"), "slow-import", requirements=None,
                       extra={"src/main.py": SLOW_MAIN})
    proc = cli("build", str(agent), "--json", "--index-url", index.url_for("alice"), "--registry",
               f"{registry.host}/ready", "--push")
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield json.loads(proc.stdout)
    remove_tags(docker_client, [f"{registry.host}/ready/"])  # the agent and its dependency image


def task_def(ref: str, *options: str) -> dict:
    proc = cli("ecs-task-def", ref, *options)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def registered_equal(request: dict) -> dict:
    """REQUEST registered with moto's ECS and described back: the stored container equals the request's."""
    import boto3
    from moto import mock_aws
    assert api_errors(request) == ""
    with mock_aws():
        client = boto3.client("ecs", region_name="eu-west-1")
        arn = client.register_task_definition(**request)["taskDefinition"]["taskDefinitionArn"]
        stored = client.describe_task_definition(taskDefinition=arn)["taskDefinition"]
    mine, theirs = request["containerDefinitions"][0], stored["containerDefinitions"][0]
    assert {k: theirs.get(k) for k in mine} == mine
    assert stored.get("volumes", []) == request.get("volumes", [])
    return stored


def test_the_build_records_the_agents_ready_time(slow, docker_client):
    seconds = float(docker_client.images.get(slow["image_id"]).labels[READY_LABEL])
    assert SLEEP_S <= seconds < SLEEP_S + 20


def test_start_period_follows_the_ready_time_and_the_task_cpu(slow, docker_client):
    seconds = float(docker_client.images.get(slow["image_id"]).labels[READY_LABEL])
    fargate = task_def(slow["digest_ref"])  # 256 CPU units: 4x slower than the builder's core
    assert fargate["containerDefinitions"][0]["healthCheck"]["startPeriod"] == math.ceil(seconds * 4 * 1.5 + 5) >= 17
    ec2 = task_def(slow["digest_ref"], "--launch-type", "EC2", "--cpu", "1024", "--memory", "1024")
    assert ec2["containerDefinitions"][0]["healthCheck"]["startPeriod"] == max(10, math.ceil(seconds * 1.5 + 5))
    fixed = task_def(slow["digest_ref"], "--start-period", "42")
    assert fixed["containerDefinitions"][0]["healthCheck"]["startPeriod"] == 42
    for request in (fargate, ec2, fixed):
        registered_equal(request)
    bad = cli("ecs-task-def", slow["digest_ref"], "--start-period", "301", "--json")
    assert bad.returncode == 80 and bad.stdout == "" and "--start-period" in bad.stderr


def test_the_image_runs_with_the_ec2_task_settings(slow, docker_client):
    request = task_def(slow["digest_ref"], "--launch-type", "EC2", "--cpu", "512", "--memory", "512")
    container = request["containerDefinitions"][0]
    assert container["readonlyRootFilesystem"] is True
    (tmpfs,) = container["linuxParameters"]["tmpfs"]
    served = Served(docker_client, slow["digest_ref"], read_only=True, user=container["user"],
                    tmpfs={tmpfs["containerPath"]: f"rw,size={tmpfs['size']}m"})
    try:
        status, _, body = served.call("POST", "/invoke", {})
        assert status == 200 and body["ok"] is True  # it wrote its /tmp
        ready = next(line for line in served.logs() if line.get("event") == "agent ready")
        assert ready["boot_ms"] >= SLEEP_S * 1000
    finally:
        served.remove()


def test_the_image_runs_with_the_fargate_task_settings(slow, docker_client):
    request = task_def(slow["digest_ref"])
    container = request["containerDefinitions"][0]
    # the image declares VOLUME /tmp, so Fargate's read-only root gets a writable /tmp task volume
    assert container["readonlyRootFilesystem"] is True and request["volumes"] == [{"name": "tmp"}]
    assert container["mountPoints"] == [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}]
    registered_equal(request)
    # Fargate fills the task volume from the image's /tmp (mode 1777), as docker does an anonymous volume
    served = Served(docker_client, slow["digest_ref"], read_only=True, user=container["user"])
    try:
        mounts = served.container.attrs["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/tmp")]
        status, _, body = served.call("POST", "/invoke", {})
        assert status == 200 and body["ok"] is True
        assert served.container.exec_run(["sh", "-c", "touch /opt/x"]).exit_code != 0  # the root is read-only
    finally:
        volume = mounts[0]["Name"]
        served.remove()
    assert volume not in {v.name for v in docker_client.volumes.list()}  # removed with its container


def _build(agent, index_url: str, repo: str, cache) -> tuple[dict, list[dict]]:
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--progress", "json", "--index-url", index_url,
                           "--repository", repo, "--cache-dir", str(cache)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def test_a_code_only_rebuild_carries_the_ready_time_and_any_other_change_measures_it(
        agent_factory, index_url, cleanup_images, docker_client, tmp_path):
    """A code-only rebuild is not measured (the import would cost it more than the rebuild itself): it
    takes the previous image's ready time, and says so. An ENV the import reads that changed, on the
    same code-only path, measures again."""
    cleanup_images("ready-carry/")
    agent = agent_factory("ready-carry", requirements=None, extra={"src/main.py": SLOW_MAIN})
    label = lambda out: docker_client.images.get(out["image_id"]).labels[READY_LABEL]  # noqa: E731
    first, _ = _build(agent, index_url, "ready-carry/agent", tmp_path / "c")
    assert float(label(first)) >= SLEEP_S

    (agent / "src" / "main.py").write_text(SLOW_MAIN.replace(f"time.sleep({SLEEP_S})", "time.sleep(0)"))
    second, events = _build(agent, index_url, "ready-carry/agent", tmp_path / "c")
    assert second["image_id"] != first["image_id"]
    assert any(e.get("event") == "Only the code changed: building without a network" for e in events)
    assert label(second) == label(first)  # the previous image's: stale by design, and said so
    ready = [e for e in events if e.get("event") == "Measured the agent's ready time"]
    assert len(ready) == 1 and ready[0]["carried_from"] == first["image_id"], ready

    yaml = agent / "agent.yaml"
    yaml.write_text(yaml.read_text() + "environment:\n  READY_CARRY_MODE: fast\n")
    third, events = _build(agent, index_url, "ready-carry/agent", tmp_path / "c")
    assert float(label(third)) < SLEEP_S  # measured: this import does not sleep
    ready = [e for e in events if e.get("event") == "Measured the agent's ready time"]
    assert len(ready) == 1 and "carried_from" not in ready[0], ready
