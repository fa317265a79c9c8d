"""Issue 24: on an empty runner, --push assembles the agent image in the registry (the agent's
layers appended to the dependency image there, nothing pulled), and the image it makes
behaves as the one the engine builds: the same files with the same modes and owners, the same
`pip install -e` record in the venv, the same config, `pip list`, imports, /health and
`agent-image test`. What it cannot make exactly goes to the engine as before."""

from __future__ import annotations

import json
import subprocess

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from builder.testing.smoke import run_smoke
from tests.support.engine import engine_tags

REQS = "tinyreq==1.0\nstructlog==24.4.0\n"
# what pip install -e leaves, and everything under /app and the venv: path, mode, owner, size, link
LIST = ("find /app /opt/venv -path /opt/venv/bin -prune -o -printf '%p %m %u:%g %s %l\\n' | sort; "
        "for f in /app/*.egg-info/* /opt/venv/lib/python3.11/site-packages/*.egg-link "
        "/opt/venv/lib/python3.11/site-packages/*.pth; do echo \"== $f\"; cat \"$f\"; echo; done; "
        "pip list --disable-pip-version-check; python -c 'import src.main, structlog, tinyreq; print(\"imports ok\")'")


def _drop(docker_client, prefix: str) -> None:
    """An empty runner: no tag under PREFIX on this engine."""
    for tag in engine_tags(docker_client):
        if tag.startswith(prefix):
            docker_client.images.remove(tag, force=True)


def _inside(image: str) -> str:
    return subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", LIST], capture_output=True,
                          text=True, check=True, timeout=120).stdout


def _config(docker_client, image: str) -> dict:
    cfg = docker_client.images.get(image).attrs["Config"]
    return {k: cfg.get(k) for k in ("Env", "Labels", "User", "WorkingDir", "Cmd", "Healthcheck", "ExposedPorts",
                                    "Entrypoint", "Volumes")}


def test_an_empty_runner_appends_the_agent_to_the_registrys_dependency_image_and_it_behaves_alike(
        agent_factory, index_url, registry, docker_client, cleanup_images, tmp_path):
    prefix = f"{registry.host}/ai24asm"
    cleanup_images(prefix)
    cleanup_images("ai24-asm-engine/")
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    first = build_image(agent_factory("asm-one", requirements=REQS, install_requires=["structlog"]), opts)
    assert first.deps_origin == "built", first
    twin = agent_factory("asm-two", requirements=REQS, install_requires=["structlog"])
    # the engine's image of the twin, for comparison (not pushed)
    engine_built = build_image(twin, BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "c"))
    docker_client.images.get(engine_built.image_id).tag("ai24-asm-engine/asm-two", "0.1.0")
    _drop(docker_client, prefix)

    with capture_logs() as logs:
        made = build_image(twin, opts)
    assert made.deps_origin == "registry" and made.deps_image == first.deps_image, made
    appended = [e for e in logs if e["event"].startswith("Appended the agent's layers")]
    assert appended and appended[0]["bytes_sent"] < 64 * 1024, appended  # the code, a config, a manifest
    assert not [t for t in engine_tags(docker_client) if t.startswith(prefix)], "nothing was pulled"

    docker_client.images.pull(made.digest_ref)
    assert docker_client.images.get(made.digest_ref).id == made.image_id
    ours, theirs = _inside(made.digest_ref), _inside("ai24-asm-engine/asm-two:0.1.0")
    assert "imports ok" in ours and ["asm-two", "0.1.0", "/app"] in [ln.split() for ln in ours.splitlines()], ours
    assert ours == theirs
    assert _config(docker_client, made.digest_ref) == {**_config(docker_client, "ai24-asm-engine/asm-two:0.1.0")}
    report = run_smoke(made.digest_ref, payload={"imports": ["structlog", "tinyreq"]})
    assert report["ok"] and report["health"]["ok"] and report["answer"]["modules"]["tinyreq"] == "1.0", report

    # a code-only update on another empty runner: appended again, the new code runs
    _drop(docker_client, prefix)
    (twin / "src" / "main.py").write_text((twin / "src" / "main.py").read_text() + "\nREVISION = 2\n")
    (twin / "agent.yaml").write_text((twin / "agent.yaml").read_text().replace("0.1.0", "0.2.0"))
    (twin / "setup.py").write_text((twin / "setup.py").read_text().replace("0.1.0", "0.2.0"))
    update = build_image(twin, opts)
    assert update.deps_origin == "registry" and update.image.endswith(":0.2.0"), update
    out = subprocess.run(["docker", "run", "--rm", update.digest_ref, "python", "-c",
                          "import src.main, importlib.metadata as m; print(src.main.REVISION, m.version('asm-two'))"],
                         capture_output=True, text=True, check=True, timeout=120).stdout.split()
    assert out == ["2", "0.2.0"], out


def test_a_setup_py_that_must_run_is_built_by_the_engine(agent_factory, index_url, registry, docker_client,
                                                          cleanup_images, tmp_path):
    prefix = f"{registry.host}/ai24asm-run"
    cleanup_images(prefix)
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    build_image(agent_factory("asm-first", requirements=REQS), opts)
    agent = agent_factory("asm-code", requirements=REQS)
    (agent / "setup.py").write_text("import os\nfrom setuptools import setup\n"
                                    "setup(name='asm-code', version=os.environ.get('V', '0.1.0'), packages=['src'])\n")
    _drop(docker_client, prefix)
    with capture_logs() as logs:
        result = build_image(agent, opts)
    reasons = [e.get("reason", "") for e in logs if e["event"].startswith("Not assembling in the registry")]
    assert any("setup.py is more than one setup() call of literals" in r for r in reasons), reasons
    assert result.deps_origin == "pulled", result  # the engine path, as before
    labels = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .Config.Labels}}", result.image],
                                       capture_output=True, text=True, check=True).stdout)
    assert labels["io.pixell.agent.name"] == "asm-code"
