"""Issue 23: builder.testing against real images: AgentContainer, the pytest
plugin on examples/hello-agent, and `agent-image test` from the CLI.

Ryuk is off here (conftest.py sets TESTCONTAINERS_RYUK_DISABLED: its image
cannot be pulled); every container these tests start is removed by the
module itself, which the tests check.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from builder.api import BuildOptions, build_image
from builder.core.errors import AgentResponseError, RunError
from builder.testing import AgentContainer
from tests.support.cli import run_cli
from tests.support.packages import make_agent
from tests.support.paths import ROOT
from tests.support.plugin import run_pytest

REPO = "agents/issue23"

BEHAVES = """\
import time


def handler(context):
    if "boom" in context:
        raise ValueError("the secret message: " + context["boom"])
    time.sleep(float(context.get("sleep", 0)))
    return {"ok": True, "echo": context}
"""

BROKEN = """\
raise RuntimeError("the model file is missing: /app/model.bin")
"""

SLOW = """\
import time

time.sleep(4)  # loading a model: within the image's 10 s start period


def handler(context):
    return {"ok": True}
"""

FAST_DRAIN = {"AGENT_DRAIN_SECONDS": "3"}


def _build(tmp_path_factory, index, kind: str, code: str) -> str:
    agent = make_agent(tmp_path_factory.mktemp(kind), f"issue23-{kind}", extra={"src/main.py": code}, env_file=None)
    return build_image(agent, BuildOptions(index_url=index.url_for("alice"), repository=f"{REPO}-{kind}")).image_id


@pytest.fixture(scope="module")
def images(tmp_path_factory, index, docker_client):
    built = {kind: _build(tmp_path_factory, index, kind, code)
             for kind, code in (("behaves", BEHAVES), ("broken", BROKEN), ("slow", SLOW))}
    yield built
    from tests.support.engine import remove_tags
    remove_tags(docker_client, [f"{REPO}-{kind}" for kind in built])


def _containers_of(docker_client, image_id: str) -> list:
    return docker_client.containers.list(all=True, filters={"ancestor": image_id})


class TestAgentContainer:
    def test_invoke_health_and_the_ecs_way_of_running(self, images, docker_client):
        with AgentContainer(images["behaves"], env=FAST_DRAIN, secrets={"OPENAI_API_KEY": "sk-x"}) as agent:
            assert agent.health()["ok"] is True
            assert agent.invoke({"name": "ECS"}) == {"ok": True, "echo": {"name": "ECS"}}
            assert agent.url.startswith(f"http://{agent.get_container_host_ip()}:")
            attrs = agent.get_wrapped_container().attrs
            assert attrs["HostConfig"]["ReadonlyRootfs"] is True and "/tmp" in attrs["HostConfig"]["Tmpfs"]
            assert attrs["Config"]["User"] == "10001"  # the numeric uid of the base's ABI label
            assert "OPENAI_API_KEY=sk-x" in attrs["Config"]["Env"]
        assert _containers_of(docker_client, images["behaves"]) == []

    def test_a_500_is_an_exception_that_carries_the_error_id(self, images):
        with AgentContainer(images["behaves"], env=FAST_DRAIN) as agent:
            with pytest.raises(AgentResponseError) as caught:
                agent.invoke({"boom": "hunter2"}, request_id="t23-boom")
            err = caught.value
            assert (err.status, err.kind, err.request_id, err.exit_code) == (500, "agent-error", "t23-boom", 72)
            assert err.body["class"] == "ValueError" and "hunter2" not in str(err)  # the body holds no message
            assert any("the secret message: hunter2" in ln for ln in err.log_tail)  # its log line does

    def test_an_import_failure_raises_with_the_agents_log(self, images, docker_client):
        started = time.monotonic()
        with pytest.raises(RunError) as caught:
            with AgentContainer(images["broken"]):
                pass
        err = caught.value
        assert "failed to import" in err.message and err.exit_code == 70
        assert any("the model file is missing" in ln for ln in err.log_tail), err.log_tail
        assert time.monotonic() - started < 9  # import-failed is final: no wait for the whole start period
        assert _containers_of(docker_client, images["broken"]) == []

    def test_a_slow_starter_within_its_start_period(self, images):
        started = time.monotonic()
        with AgentContainer(images["slow"]) as agent:
            assert time.monotonic() - started >= 4 and agent.facts.start_period_s == 10
            assert agent.invoke() == {"ok": True}

    def test_a_start_past_the_timeout_says_what_it_saw(self, images, docker_client):
        with pytest.raises(RunError) as caught:
            AgentContainer(images["slow"], start_timeout=1).start()  # start() alone, no `with`
        assert "within the start period of 1s" in caught.value.message and "HTTP 503 starting" in caught.value.message
        assert _containers_of(docker_client, images["slow"]) == []

    def test_stop_drains_the_request_in_flight(self, images):
        agent = AgentContainer(images["behaves"], env=FAST_DRAIN).start()
        got = {}
        caller = threading.Thread(target=lambda: got.update(answer=agent.invoke({"sleep": 1.5})))
        caller.start()
        time.sleep(0.5)
        agent.stop()  # SIGTERM, then up to 3 + 5 s
        caller.join(10)
        assert got["answer"]["ok"] is True and agent.exit_code == 0

    def test_from_package_reuses_the_identical_image(self, images, index, tmp_path):
        agent_dir = make_agent(tmp_path, "issue23-behaves", extra={"src/main.py": BEHAVES}, env_file=None)
        agent = AgentContainer.from_package(agent_dir, index_url=index.url_for("alice"), repository=f"{REPO}-behaves",
                                            env=FAST_DRAIN)
        assert agent.build_result.cached and agent.build_result.image_id == images["behaves"]
        with agent:
            assert agent.invoke({"a": 1})["echo"] == {"a": 1}


def test_the_example_agent_passes_its_own_tests(index, cleanup_images):
    cleanup_images("agents/hello-agent")
    proc = run_pytest(ROOT / "examples" / "hello-agent" / "tests", "--agent-package",
                      str(ROOT / "examples" / "hello-agent"), "--agent-index-url", index.url_for("alice"),
                      "--agent-env", "AGENT_DRAIN_SECONDS=2")
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


class TestCommand:
    def test_passing(self, images):
        proc = run_cli("test", images["behaves"], "--invoke", '{"sleep": 1}', "--expect", '{"ok": true}', "--json",
                       "--env", "AGENT_DRAIN_SECONDS=3", timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        drain = report["drain"]
        assert report["ok"] and report["answer"]["echo"] == {"sleep": 1}
        assert drain["in_flight_request"]["status"] == 200 and drain["in_flight_at_signal"] == 1
        assert drain["health_after_sigterm"] in ("503", "closed") and drain["exit_code"] == 0
        assert drain["left_in_flight"] == 0

    def test_one_line_without_json(self, images):
        proc = run_cli("test", images["behaves"], "--env", "AGENT_DRAIN_SECONDS=2", timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("ok ") and "exit 0" in proc.stdout, proc.stderr

    @pytest.mark.parametrize("kind, args, code, said", [
        ("behaves", ["--invoke", '{"x": 1}', "--expect", '{"ok": false}'], 71, "differs from --expect: ok: expected false, got true"),
        ("behaves", ["--invoke", '{"boom": "x"}'], 72, "answered 500 agent-error"),
        ("broken", [], 70, "failed to import"),
    ])
    def test_failing(self, images, kind, args, code, said):
        proc = run_cli("test", images[kind], *args, "--env", "AGENT_DRAIN_SECONDS=2", timeout=120)
        assert proc.returncode == code and said in proc.stderr, proc.stderr[-3000:]
        if kind == "broken":
            assert "the model file is missing" in proc.stderr  # the log tail
