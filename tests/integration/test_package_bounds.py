"""Issue 11: a package cannot reach past its own agent.

Refusals that happen before the engine (identity, YAML anchors, every
requirements side door) are in tests/test_bad_packages.py's corpus, through
the API and the CLI. Here: what needs a real build, the registry, or a
closer look (the redactor's rules, the lines the parser keeps).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.request
import zipfile
from pathlib import Path

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from builder.build.reuse import own_previous
from builder.core.errors import EXIT_CODES
from builder.package.manifest import parse_manifest
from tests.support.cli import AGENT_IMAGE
from tests.support.engine import engine_tags, run_in_image
from tests.support.packages import AGENT_YAML, MAIN_PY, make_agent

ENV_FILES = {".env": "ROOT_KEY=sk-root-value-111111\n", "src/.env": "SRC_KEY=sk-src-value-222222\n",
             ".env.production": "PROD_KEY=sk-prod-value-333333\n", "config/.env.local": "LOCAL=sk-local-444444\n",
             ".env.d/__init__.py": "SECRET = 'sk-dir-value-555555'\n"}


# --- 5. redaction is the build's, by rules the package cannot bend -------------------------


def test_step_and_log_words_in_env_do_not_break_classification(agent_factory, index_url, docker_client):
    """X=Step used to turn 'Step 3/12' into '*** 3/12' (and 'Successfully' into '***')."""
    agent = agent_factory("env-words", requirements="tinyreq==1.0\nnosuchpkg-issue11==1.0\n",
                          env_file="X=Step\nY=Successfully\nZ=Collecting\nW=nosuchpkg-issue11\nE=ERROR\n")
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url],
                          capture_output=True, text=True, timeout=600)
    err = json.loads(proc.stdout)["error"]
    assert proc.returncode == EXIT_CODES["DependencyNotFoundError"] == 21, (err, proc.stderr[-2000:])
    assert err["class"] == "DependencyNotFoundError" and err["step"] == "deps", err
    assert err["requirement"] == "nosuchpkg-issue11==1.0", err
    assert "***" not in json.dumps(err)


# --- 4. what stays allowed, and goes after the code --------------------------------------


# --- 6. anchors and aliases -----------------------------------------------------------------


# --- 3 and 7: a real build from an .apkg: every .env out, modes as they should be -------------

def _apkg(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}-0.1.0.apkg"
    entries = {"agent.yaml": (AGENT_YAML.format(name=name, display=name, runtime="python3.11", version="0.1.0"), 0o644),
               "src/__init__.py": ("", 0o644), "src/main.py": (MAIN_PY, 0o644),
               "bin/run.sh": ("#!/bin/sh\necho ran\n", 0o4755),     # setuid: +x stays, s does not
               "bin/plain.sh": ("#!/bin/sh\n", 0o2644),             # setgid, no x
               "data/shared.txt": ("x\n", 0o1666)}                  # sticky, world-writable
    entries.update({rel: (text, 0o644) for rel, text in ENV_FILES.items()})
    with zipfile.ZipFile(path, "w") as zf:
        for rel, (text, mode) in entries.items():
            info = zipfile.ZipInfo(rel, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, (stat.S_IFREG | mode) << 16
            zf.writestr(info, text)
    return path


def _modes_and_env(docker_client, image: str) -> tuple[dict[str, str], list[str]]:
    out = run_in_image(docker_client, image, ["sh", "-c", "stat -c '%a %n' /app/bin/run.sh /app/bin/plain.sh "
                                                          "/app/data/shared.txt; find /app /opt/agent-image -name '.env*' | sort"])
    modes = {ln.split()[1]: ln.split()[0] for ln in out.splitlines() if ln[:1].isdigit()}
    return modes, [ln for ln in out.splitlines() if ln.startswith("/")]


def test_apkg_keeps_exec_bits_drops_special_bits_and_every_env_file(tmp_path, index_url, docker_client,
                                                                     cleanup_images):
    cleanup_images("agents/bounds-apkg")
    result = build_image(_apkg(tmp_path, "bounds-apkg"), BuildOptions(index_url=index_url))
    modes, env = _modes_and_env(docker_client, result.image_id)
    assert modes == {"/app/bin/run.sh": "755", "/app/bin/plain.sh": "644", "/app/data/shared.txt": "644"}
    assert env == [], f"kept out, at every depth: {env}"
    assert run_in_image(docker_client, result.image_id, ["/app/bin/run.sh"]).strip() == "ran"


def test_folder_special_bits_dropped_and_include_env_logs_each_path(tmp_path, index_url, docker_client,
                                                                   cleanup_images):
    cleanup_images("agents/bounds-folder")
    agent = make_agent(tmp_path, "bounds-folder", env_file=None, setup_py=False,
                       extra={**ENV_FILES, "bin/run.sh": "#!/bin/sh\necho ran\n"})
    os.chmod(agent / "bin" / "run.sh", 0o4755)
    with capture_logs() as logs:
        result = build_image(agent, BuildOptions(index_url=index_url, include_env=True))
    logged = sorted(e["path"] for e in logs if e.get("event", "").startswith("Including .env in the image"))
    assert logged == sorted(ENV_FILES.keys() - {".env.d/__init__.py"} | {".env.d"}), logged
    modes, env = _modes_and_env(docker_client, result.image_id)
    assert modes["/app/bin/run.sh"] == "755"
    assert {"/app/.env", "/app/src/.env", "/app/.env.production", "/app/config/.env.local", "/app/.env.d"} <= set(env)


# --- 1 and the moving tags: the caller's agent, read back from the registry ------------------

def _registry_digest(registry, repo: str, tag: str) -> str | None:
    req = urllib.request.Request(f"http://{registry.host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return None


def test_expect_name_refuses_another_agents_package_and_its_tags_stay(agent_factory, index_url, registry,
                                                                       docker_client, cleanup_images, tmp_path):
    prefix = f"{registry.host}/bounds"
    cleanup_images(prefix)
    victim = agent_factory("agent-victim", requirements="tinyreq==1.0\n")
    build_image(victim, BuildOptions(index_url=index_url, registry=prefix, push=True, expect_name="agent-victim"))
    before = {t: _registry_digest(registry, "bounds/agent-victim", t) for t in ("0.1.0", "latest")}
    assert all(before.values())
    # an upload for agent-a whose agent.yaml says agent-victim, with new code
    hostile = make_agent(tmp_path / "upload", "agent-victim", requirements="tinyreq==1.0\n")
    (hostile / "src" / "main.py").write_text(MAIN_PY + "\nOWNED = True\n")
    proc = subprocess.run([AGENT_IMAGE, "build", str(hostile), "--json", "--index-url", index_url, "--registry",
                           prefix, "--push", "--expect-name", "agent-a", "--expect-version", "0.1.0"],
                          capture_output=True, text=True, timeout=600)
    err = json.loads(proc.stdout)["error"]
    assert proc.returncode == 10 and err["class"] == "PackageValidationError" and err["field"] == "name", err
    assert "'agent-victim'" in err["message"] and "'agent-a'" in err["message"]
    assert {t: _registry_digest(registry, "bounds/agent-victim", t) for t in before} == before
    assert _registry_digest(registry, "bounds/agent-a", "latest") is None


def test_moving_tags_of_another_agent_are_not_a_layer_cache(agent_factory, index_url, registry, docker_client,
                                                           cleanup_images, engine):
    prefix = f"{registry.host}/bounds2"
    cleanup_images(prefix)
    reqs = 'tinyreq==1.0 ; platform_release != "issue11-moving-tags"\n'  # a dependency layer no one else has
    # another agent's image sits under this agent's repository (an operator's --repository slip, an old upload)
    impostor = agent_factory("impostor", requirements=reqs)
    (impostor / "src" / "main.py").write_text("IMPOSTOR = True\n")
    bad = build_image(impostor, BuildOptions(index_url=index_url, repository=f"{prefix}/owner", push=True))
    deps_layers = len(docker_client.images.get(bad.deps_image).attrs["RootFS"]["Layers"])
    impostor_own = set(docker_client.images.get(bad.image_id).attrs["RootFS"]["Layers"][deps_layers:])
    for tag in engine_tags(docker_client):
        if tag.startswith(prefix):
            docker_client.images.remove(tag, force=True)
    owner = agent_factory("owner", requirements=reqs)
    with capture_logs() as logs:
        result = build_image(owner, BuildOptions(index_url=index_url, registry=prefix))
    assert any(e["event"].startswith("Not using the last pushed image") and e["labelled"] == "impostor"
               for e in logs), logs
    # the impostor's own layers (its code, its installs) are not used; the dependency image of these
    # lines (built in the sandbox from the lines alone, no agent's file in it) is shared by design
    own = set(docker_client.images.get(result.image_id).attrs["RootFS"]["Layers"])
    assert not own & impostor_own, "the impostor's layers were not used"
    assert not any(s in result.steps_cached for s in ("config", "package", "source")), result.steps_cached
    # locally too: a :latest labelled for another agent is not this agent's previous image
    manifest = parse_manifest((owner / "agent.yaml").read_text())
    assert own_previous(engine, f"{prefix}/owner", f"{prefix}/owner:9.9.9", manifest) == []
    assert own_previous(engine, f"{prefix}/owner", result.image, manifest) == [result.image_id]


