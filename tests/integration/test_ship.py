"""Issue 4: push, pull by digest, and serve the runtime's REST contract from the image."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from testcontainers.core.container import DockerContainer

from builder.api import BuildOptions, build_image
from builder.build.engine import Engine
from builder.core.defaults import base_image_for
from builder.core.errors import ImageVerificationError
from builder.ship.pushpull import pull_image
from tests.support.cli import AGENT_IMAGE
from tests.support.engine import image_holds
from tests.support.net import get, wait_for
from tests.support.paths import BIN

SLOW_MAIN = """\
import time
time.sleep(2)  # a slow import: /health must say 503 until it is done

async def handler(context):
    import tinyreq
    return {"answer": context.get("q", 0) * 2, "tinyreq": tinyreq.__version__}
"""


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_push_pull_by_digest_and_verify(agent_factory, index_url, registry, docker_client, cleanup_images):
    prefix = f"{registry.host}/agents"
    cleanup_images(prefix)
    agent = agent_factory("shipped", requirements="tinyreq==1.1\n")
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url,
                           "--registry", prefix, "--push"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["image"] == f"{prefix}/shipped:0.1.0"
    assert out["digest_ref"].startswith(f"{prefix}/shipped@sha256:")
    # issue 22: the whole command's time, the push included, and where it went
    assert out["schema"] == 1 and set(out["phases"]) == {"check", "registry", "build", "push", "supply"}, out["phases"]
    assert abs(sum(out["phases"].values()) - out["duration_s"]) < 0.5 and out["phases"]["push"] > 0
    # the registry has the version tag and the input-digest tag
    with urllib.request.urlopen(f"http://{registry.host}/v2/agents/shipped/tags/list") as resp:
        tags = set(json.loads(resp.read())["tags"])
    assert "0.1.0" in tags and f"in-{out['input_digest'][:20]}" in tags
    # the runtime side: remove locally, pull by digest, labels verified
    for tag in docker_client.images.get(out["image_id"]).tags:
        docker_client.images.remove(tag, force=True)
    image_id = pull_image(Engine(), out["digest_ref"], expect_name="shipped", expect_version="0.1.0")
    assert image_id == out["image_id"]
    pulled = subprocess.run([AGENT_IMAGE, "pull", out["digest_ref"], "--expect-name", "shipped", "--json"],
                            capture_output=True, text=True)
    assert pulled.returncode == 0 and json.loads(pulled.stdout)["image_id"] == image_id
    # a wrong expected name is an error, not a warning
    with pytest.raises(ImageVerificationError):
        pull_image(Engine(), out["digest_ref"], expect_name="someone-else")
    wrong = subprocess.run([AGENT_IMAGE, "pull", out["digest_ref"], "--expect-version", "9.9.9", "--json"],
                           capture_output=True, text=True)
    assert wrong.returncode == 61 and json.loads(wrong.stdout)["error"]["class"] == "ImageVerificationError"


def test_pull_of_an_unlabelled_image_fails(registry, docker_client, engine, cleanup_images):
    ref = f"{registry.host}/plain/base:1"
    cleanup_images(f"{registry.host}/plain")
    docker_client.images.get(base_image_for("3.11")).tag(ref)
    engine.push(ref)
    with pytest.raises(ImageVerificationError) as info:
        pull_image(engine, ref)
    assert "io.pixell.agent.name" in str(info.value)


def test_registry_down_is_a_registry_error(agent_factory, index_url, tmp_path, cleanup_images):
    from tests.support.net import free_port
    from tests.support.registry import Registry
    reg = Registry(tmp_path, free_port())
    reg.start()
    reg.stop()  # a registry that was there and is gone
    cleanup_images(f"{reg.host}/")
    agent = agent_factory("orphan", requirements=None)
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url,
                           "--registry", f"{reg.host}/agents", "--push"], capture_output=True, text=True)
    out = json.loads(proc.stdout)
    assert out["error"]["class"] == "RegistryError" and proc.returncode == 60
    assert "unreachable" in out["error"]["message"] or "refused" in out["error"]["message"]
    # issue 22: found before the build, not after it
    assert "checked before building" in out["error"]["message"], out
    assert "Agent image ready" not in proc.stderr and "build step" not in proc.stderr


def test_serves_health_meta_invoke(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/served")
    agent = agent_factory("served", requirements="tinyreq==2.0\n", extra={"src/main.py": SLOW_MAIN})
    result = build_image(agent, BuildOptions(index_url=index_url))
    with DockerContainer(result.image).with_exposed_ports(8080).with_env("AGENT_APP_ID", "app-42") as c:
        base = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8080)}"
        seen = wait_for(f"{base}/health")
        assert 503 in seen, f"/health must say 503 while the entrypoint imports, saw {set(seen)}"
        assert get(f"{base}/health") == (200, {"ok": True, "agent": "served", "version": "0.1.0"})
        assert get(f"{base}/agents/app-42/health")[0] == 200
        code, meta = get(f"{base}/meta")
        assert code == 200 and meta["name"] == "served" and meta["labels"]["io.pixell.agent.version"] == "0.1.0"
        # the async entrypoint is awaited and its requirement imports at run time
        assert post(f"{base}/invoke", {"q": 21}) == (200, {"answer": 42, "tinyreq": "2.0"})
        logs = c.get_logs()[0].decode()
        assert any(json.loads(ln).get("event") == "agent ready" for ln in logs.splitlines() if ln.startswith("{"))


def test_base_path_and_graceful_stop(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/pathy")
    result = build_image(agent_factory("pathy", requirements=None), BuildOptions(index_url=index_url))
    container = docker_client.containers.run(result.image, detach=True, environment={"BASE_PATH": "/x/y/"},
                                             ports={"8080/tcp": ("127.0.0.1", None)})
    try:
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        wait_for(f"http://127.0.0.1:{port}/x/y/health")
        assert get(f"http://127.0.0.1:{port}/health")[0] == 404
        started = time.monotonic()
        container.stop(timeout=15)
        assert time.monotonic() - started < 10, "SIGTERM must stop the agent without waiting for SIGKILL"
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0
        assert container.attrs["Config"]["User"] == "agent"
        assert "/health" in " ".join(container.attrs["Config"]["Healthcheck"]["Test"]) or \
            "healthcheck.py" in " ".join(container.attrs["Config"]["Healthcheck"]["Test"])
    finally:
        container.remove(force=True, v=True)


def test_healthcheck_turns_healthy(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/healthy")
    result = build_image(agent_factory("healthy", requirements=None), BuildOptions(index_url=index_url))
    container = docker_client.containers.run(result.image, detach=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            container.reload()
            if container.attrs["State"]["Health"]["Status"] == "healthy":
                break
            time.sleep(0.5)
        assert container.attrs["State"]["Health"]["Status"] == "healthy"
    finally:
        container.remove(force=True, v=True)


def test_pixell_apkg_serves_its_rest_entry(tmp_path, index_url, cleanup_images):
    cleanup_images("agents/kit-rest")
    subprocess.run([str(BIN / "pixell"), "init", "kit-rest"], cwd=tmp_path, check=True, capture_output=True)
    proj = tmp_path / "kit-rest"
    shutil.copy(proj / ".env.example", proj / ".env")
    subprocess.run([str(BIN / "pixell"), "build"], cwd=proj, check=True, capture_output=True)
    result = build_image(next(proj.glob("*.apkg")), BuildOptions(index_url=index_url))
    with DockerContainer(result.image).with_exposed_ports(8080) as c:
        base = f"http://{c.get_container_host_ip()}:{c.get_exposed_port(8080)}"
        wait_for(f"{base}/health")
        assert get(f"{base}/api/hello") == (200, {"message": "Hello from REST"})
        code, body = post(f"{base}/invoke", {"x": 1})
        assert code == 200 and body["received"] == {"x": 1}


def test_agent_pins_stay_exactly_as_pinned(agent_factory, index_url, docker_client, cleanup_images):
    """The image adds no package to the agent's venv and changes no pinned version."""
    cleanup_images("agents/pinned")
    agent = agent_factory("pinned", requirements="structlog==24.4.0\ntinyreq==1.0\n")
    result = build_image(agent, BuildOptions(index_url=index_url))
    freeze = docker_client.containers.run(result.image, ["pip", "list", "--format=json"], remove=True)
    versions = {p["name"].lower(): p["version"] for p in json.loads(freeze)}
    assert versions["structlog"] == "24.4.0" and versions["tinyreq"] == "1.0"
    assert set(versions) - {"structlog", "tinyreq", "pinned", "pip", "setuptools"} == set(), versions


def test_env_file_absent_from_every_layer_unless_asked(agent_factory, index_url, docker_client, cleanup_images,
                                                      capfd):
    cleanup_images("agents/dotenv")
    secret = "sk-live-DOTENV-SECRET-5150"
    agent = agent_factory("dotenv", env_file=f"OPENAI_API_KEY={secret}\n")
    (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text() +
                                      "environment:\n  GREETING: hi there\n  OPENAI_API_KEY: ${OPENAI_API_KEY}\n")
    result = build_image(agent, BuildOptions(index_url=index_url))
    assert image_holds(docker_client, result.image, [secret.encode(), b"app/.env"]) == []
    env = docker_client.images.get(result.image).attrs["Config"]["Env"]
    assert "GREETING=hi there" in env
    assert not any(e.startswith("OPENAI_API_KEY") for e in env), "a ${...} reference is not baked in"
    # asked for: it is included, and the log says so (without the value)
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--include-env", "--repository", "agents/dotenv-in",
                           "--index-url", index_url], capture_output=True, text=True)
    cleanup_images("agents/dotenv-in")
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "Including .env in the image" in proc.stderr and secret not in proc.stderr
    assert image_holds(docker_client, "agents/dotenv-in:0.1.0", [secret.encode()]) != []


def test_run_command_waits_for_health(agent_factory, index_url, docker_client, cleanup_images):
    from tests.support.net import free_port
    cleanup_images("agents/runner")
    result = build_image(agent_factory("runner", requirements=None), BuildOptions(index_url=index_url))
    port = free_port()
    proc = subprocess.run([AGENT_IMAGE, "run", result.image, "--port", str(port), "--json"],
                          capture_output=True, text=True)
    out = json.loads(proc.stdout)
    try:
        assert proc.returncode == 0 and out["url"] == f"http://127.0.0.1:{port}"
        assert get(f"{out['url']}/health")[0] == 200
    finally:
        docker_client.containers.get(out["container"]).remove(force=True, v=True)
