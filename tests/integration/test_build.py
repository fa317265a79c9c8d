"""Real builds against the real engine and a private index on loopback.

The seed's test list, as image builds: every success case is checked by
running the image; every failure class comes out of a real build, through
the CLI's --json result and exit code.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from builder.api import BuildOptions, build_image
from builder.core.defaults import base_image_for
from builder.core.errors import EXIT_CODES, BuildTimeoutError, DependencyNotFoundError
from tests.support.cli import build_json
from tests.support.engine import engine_containers, engine_tags, run_in_image
from tests.support.packages import make_project
from tests.support.paths import BIN


def opts(index_url: str, **kw) -> BuildOptions:
    return BuildOptions(index_url=index_url, **kw)


def py(docker_client, image: str, code: str) -> str:
    return run_in_image(docker_client, image, ["python", "-c", code]).strip()


# --- success cases ---------------------------------------------------------------------

def test_requirements_are_installed_and_importable(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/req-agent")
    # (a marker no other test's lines have: their dependency image would leave nothing to install)
    agent = agent_factory("req-agent", requirements='requests==2.32.3 ; platform_release != "req-agent"\nstructlog\n')
    code, out, logs = build_json(agent, "--index-url", index_url)
    assert code == 0, logs
    assert out["ok"] is True and out["image"] == "agents/req-agent:0.1.0"
    assert out["agent"] == {"name": "req-agent", "version": "0.1.0"}
    assert out["image_id"].startswith("sha256:") and out["duration_s"] > 0
    assert any(p.startswith("requests-2.32.3") for p in out["installed"])
    # the venv is first on PATH: plain `python` is the agent's
    assert py(docker_client, out["image"], "import requests, structlog, sys; print(requests.__version__, sys.prefix)") \
        == "2.32.3 /opt/venv"
    # the seed's log lines, as JSON events
    events = [json.loads(ln)["event"] for ln in logs.splitlines() if ln.startswith("{")]
    for expected in ("Found requirements.txt with dependencies", "Requirements installed successfully",
                     "Installed dependencies", "Agent image ready"):
        assert expected in events
    found = next(json.loads(ln) for ln in logs.splitlines() if "Found requirements.txt" in ln)
    assert found["line_count"] == 2


def test_labels_user_and_path(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/label-agent")
    result = build_image(agent_factory("label-agent", requirements="tinyreq==1.1\n"), opts(index_url))
    labels = docker_client.images.get(result.image).labels
    assert labels["org.opencontainers.image.title"] == "label-agent"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["io.pixell.agent.name"] == "label-agent"
    assert labels["io.pixell.agent.version"] == "0.1.0"
    assert labels["io.pixell.agent.entrypoint"] == "src.main:handler"
    assert py(docker_client, result.image, "import os, tinyreq; print(os.getuid(), tinyreq.__version__)") == "10001 1.1"


def test_no_requirements_file(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/plain-agent")
    code, out, logs = build_json(agent_factory("plain-agent", requirements=None), "--index-url", index_url)
    assert code == 0, logs
    assert "No requirements.txt found, skipping dependency installation" in logs
    # setup.py only: the package itself is installed editable
    assert py(docker_client, out["image"], "import src.main, sys; print(src.main.__file__)") == "/app/src/main.py"


def test_comments_only_requirements(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/empty-req")
    agent = agent_factory("empty-req", requirements="# Just comments\n# No actual dependencies\n\n")
    code, out, logs = build_json(agent, "--index-url", index_url)
    assert code == 0, logs
    assert "requirements.txt is empty, skipping dependency installation" in logs
    assert out["installed"] == ["empty-req-0.1.0"]


def test_comments_blank_lines_and_two_packages(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/commented")
    agent = agent_factory("commented", requirements="\n# Core dependencies\nrequests>=2.28.0\n\n"
                                                     "# Optional\nstructlog  # Logging\n")
    result = build_image(agent, opts(index_url))
    assert py(docker_client, result.image, "import requests, structlog; print('OK')") == "OK"


def test_no_setup_py_only_requirements(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/nosetup")
    agent = agent_factory("nosetup", requirements="tinyreq==1.0\n", setup_py=False)
    result = build_image(agent, opts(index_url))
    assert py(docker_client, result.image, "import tinyreq; print(tinyreq.__version__)") == "1.0"


def test_editable_line_in_requirements(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    cleanup_images("agents/editable")
    agent = agent_factory("editable", requirements="tinyreq==1.0\n-e ./libs/helper\n")
    make_project(agent / "libs", "helper", "0.3")
    (agent / "libs" / "helper-0.3").rename(agent / "libs" / "helper")
    result = build_image(agent, opts(index_url))
    assert py(docker_client, result.image, "import helper, tinyreq; print(helper.__version__, helper.__file__)") \
        == "0.3 /app/libs/helper/helper/__init__.py"


def test_requirements_pins_win_over_install_requires(agent_factory, index_url, docker_client, cleanup_images):
    """Seed case 8: setup.py wants tinyreq>=2, requirements pins 1.0: the pin wins, with a warning."""
    cleanup_images("agents/conflicted")
    agent = agent_factory("conflicted", requirements="tinyreq==1.0\n", install_requires=["tinyreq>=2"])
    code, out, logs = build_json(agent, "--index-url", index_url)
    assert code == 0, logs
    assert py(docker_client, out["image"], "import tinyreq; print(tinyreq.__version__)") == "1.0"
    assert any("tinyreq>=2" in w and "tinyreq 1.0" in w for w in out["warnings"]), out["warnings"]


def test_env_file_is_left_out(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/envless")
    agent = agent_factory("envless", env_file="OPENAI_API_KEY=sk-live-very-secret-9876\n")
    result = build_image(agent, opts(index_url))
    assert py(docker_client, result.image, "import os; print(os.path.exists('/app/.env'))") == "False"


def test_python39_runtime(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/old-python")
    result = build_image(agent_factory("old-python", runtime="python3.9", requirements="tinyreq==1.1\n"),
                         opts(index_url))
    assert py(docker_client, result.image, "import sys, tinyreq; print(sys.version_info[:2], tinyreq.__version__)") \
        == "(3, 9) 1.1"


def test_pixell_built_apkg(tmp_path, index_url, docker_client, cleanup_images):
    """A real package from `pixell init` + `pixell build`, as CI receives it."""
    cleanup_images("agents/kit-agent")
    subprocess.run([str(BIN / "pixell"), "init", "kit-agent"], cwd=tmp_path, check=True, capture_output=True)
    proj = tmp_path / "kit-agent"
    shutil.copy(proj / ".env.example", proj / ".env")
    subprocess.run([str(BIN / "pixell"), "build"], cwd=proj, check=True, capture_output=True)
    apkg = next(proj.glob("*.apkg"))
    code, out, logs = build_json(apkg, "--index-url", index_url)
    assert code == 0, logs
    assert py(docker_client, out["image"], "import fastapi, uvicorn, watchdog, src.main; print('OK')") == "OK"


def test_second_build_with_same_inputs_is_cached(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/again")
    agent = agent_factory("again", requirements="tinyreq==1.0\n")
    first = build_image(agent, opts(index_url))
    second = build_image(agent, opts(index_url))
    assert not first.cached and second.cached
    assert second.image_id == first.image_id


# --- failure classes, each from a real build --------------------------------------------

FAILURES = [
    # (id, requirements, extra agent kwargs, error class, text that must be in the message, requirement)
    ("not-found", "tinyreq==1.0\nnot-a-real-package==999.999.999\n", {}, "DependencyNotFoundError",
     "Dependency not found", "not-a-real-package==999.999.999"),
    ("no-such-version", "tinyreq==1.7\n", {}, "VersionNotFoundError", "1.1", "tinyreq==1.7"),
    ("hash-mismatch", "tinyreq==1.0 --hash=sha256:" + "0" * 64 + "\n", {}, "HashMismatchError",
     "Hash verification failed", "tinyreq==1.0"),
    ("conflict", "tinydep==1.0\ntinyreq==2.0\n", {}, "DependencyConflictError", "tinyreq", None),
    ("wheel-build", "needscc==1.0\n", {}, "WheelBuildError", "needscc", None),
    ("syntax", "tinyreq==1.0\ninvalid syntax here\n", {}, "RequirementsSyntaxError", "requirements.txt:2", None),
    ("editable-broken", None, {"extra": {"setup.py": "raise SystemExit('setup.py is broken on purpose')\n"}},
     "EditableInstallError", "pip install -e", None),
]


# every class again with --installer uv: uv words its errors differently
CASES = [(c, "pip") for c in FAILURES] + [(c, "uv") for c in FAILURES]


@pytest.mark.parametrize("case,installer", CASES, ids=[f"{c[0]}-{i}" for c, i in CASES])
def test_failure_classes(case, installer, agent_factory, index_url, docker_client):
    name, reqs, kwargs, cls, text, requirement = case
    tags_before = engine_tags(docker_client)
    agent = agent_factory(f"fail-{name}-{installer}", requirements=reqs, **kwargs)
    code, out, logs = build_json(agent, "--index-url", index_url, "--installer", installer)
    err = out["error"]
    assert out["ok"] is False
    assert err["class"] == cls, (err, logs[-3000:])
    assert code == EXIT_CODES[cls] == err["exit_code"]
    assert text in err["message"], err
    if requirement:
        assert err["requirement"] == requirement
    assert err["step"] in ("deps", "package", "requirements")
    assert err["log_tail"], "the error carries the tail of the build log"
    tags_after = engine_tags(docker_client)
    assert not any(t.startswith(f"agents/fail-{name}") for t in tags_after - tags_before), "no tag on failure"


def test_index_auth_refused(agent_factory, index):
    # (lines no other build has: a dependency image alice's valid token built would answer them
    # without asking the index, as an unchanged rebuild does; the key holds the user, not the token)
    agent = agent_factory("auth-fail", requirements='tinyreq==1.0 ; platform_release != "auth-fail"\n')
    bad = index.url.replace("http://", "http://alice:wrong-password-7777@")
    code, out, logs = build_json(agent, "--index-url", bad)
    assert out["error"]["class"] == "IndexAuthError" and code == EXIT_CODES["IndexAuthError"]
    assert "expired or lacks read permission" in out["error"]["message"]
    assert "wrong-password-7777" not in json.dumps(out) + logs


def test_index_unreachable(agent_factory):
    from tests.support.net import free_port
    agent = agent_factory("no-index", requirements="tinyreq==1.0\n")
    code, out, logs = build_json(agent, "--index-url", f"http://127.0.0.1:{free_port()}/simple/")
    assert out["error"]["class"] == "IndexUnreachableError", out
    assert code == EXIT_CODES["IndexUnreachableError"]


def test_timeout_cancels_the_build(agent_factory, index_url, docker_client, engine):
    """At the deadline: BuildTimeoutError, no build container left, no tag written."""
    agent = agent_factory("slow-agent", requirements="slowpkg==1.0\n")
    before = engine_containers(docker_client)
    started = time.monotonic()
    with pytest.raises(BuildTimeoutError) as info:
        build_image(agent, opts(index_url, timeout=8, use_cache=False), engine=engine)
    took = time.monotonic() - started
    assert "timed out" in str(info.value)
    assert took < 60, "the deadline is wall-clock: the 600 s sleep in setup.py must not be waited for"
    assert engine.image("agents/slow-agent:0.1.0") is None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leftover = engine_containers(docker_client) - before
        if not leftover:
            break
        time.sleep(0.5)
    assert not leftover, "the cancelled build left a container behind"
    # and the timeout is a CLI exit code too
    code, out, _ = build_json(agent, "--index-url", index_url, "--timeout", "5", "--no-cache")
    assert out["error"]["class"] == "BuildTimeoutError" and code == EXIT_CODES["BuildTimeoutError"]


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_one_hashed_line_puts_every_line_in_hash_mode(installer, agent_factory, index_url, wheelhouse):
    """pip's rule, with uv too: once one line has --hash, a line without an == pin fails the build."""
    import hashlib
    sha = hashlib.sha256(next(wheelhouse.glob("tinyreq-1.0-*.whl")).read_bytes()).hexdigest()
    agent = agent_factory(f"hash-mode-{installer}", requirements=f"tinyreq==1.0 --hash=sha256:{sha}\ntinydep\n")
    code, out, _ = build_json(agent, "--index-url", index_url, "--installer", installer)
    err = out["error"]
    assert (err["class"], code) == ("HashMismatchError", EXIT_CODES["HashMismatchError"]), err
    assert err["requirement"].startswith("tinydep") and "not pinned" in err["message"], err


def test_api_raises_the_class(agent_factory, index_url):
    agent = agent_factory("api-fail", requirements="nope-not-here==1.0\n")
    with pytest.raises(DependencyNotFoundError) as info:
        build_image(agent, opts(index_url))
    assert info.value.requirement == "nope-not-here==1.0" and info.value.line == 1


# --- issue 14: bytecode at build, the installer in the base --------------------------------

_MISSING_PYC = ("import importlib.util, pathlib, sys; fs = list(pathlib.Path(sys.prefix, 'lib').rglob('*.py')); "
                "print(sum(not pathlib.Path(importlib.util.cache_from_source(str(f))).exists() for f in fs), len(fs))")


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_image_ships_bytecode_and_no_installer(installer, agent_factory, index_url, docker_client, cleanup_images, tmp_path,
                                                engine):
    """Every installed .py has its .pyc in the image (a start compiles nothing: the image
    runs with PYTHONDONTWRITEBYTECODE), and uv comes from the base, not the agent's layers."""
    name = f"pyc-agent-{installer}"
    cleanup_images(f"agents/{name}")
    agent = agent_factory(name, requirements="requests==2.32.3\ntinyreq==1.1\n", install_requires=["structlog"])
    result = build_image(agent, opts(index_url, installer=installer, use_cache=False, cache_dir=tmp_path / "cache"))
    missing, total = map(int, py(docker_client, result.image, _MISSING_PYC).split())
    assert total > 100 and missing == 0, f"{missing} of {total} .py files have no bytecode"
    # the installer is the base's: the agent's layers hold its packages and code only
    added = docker_client.images.get(result.image).attrs["Size"] - engine.image(base_image_for("3.11")).size
    assert added < 10 * 1024 ** 2, f"the agent adds {added / 1024 ** 2:.1f} MiB over the base"
    history = docker_client.api.history(result.image)  # newest first; the base's entries last
    own = history[:len(history) - len(docker_client.api.history(base_image_for("3.11")))]
    assert not any(" uv==" in (h.get("CreatedBy") or "") for h in own), "the agent image installed uv itself"


def test_agents_with_the_same_dependency_lines_share_the_layer(agent_factory, index_url, cleanup_images, tmp_path,
                                                               docker_client):
    """An agent whose lines equal another agent's reuses that agent's dependency layer,
    even when it has an image of its own from other lines (the classic builder with
    cache_from trusts only the images listed)."""
    cleanup_images("agents/share-one")
    cleanup_images("agents/share-two")
    first = build_image(agent_factory("share-one", requirements="tinyreq==1.1\nrequests==2.32.3\n"),
                        opts(index_url, use_cache=False, cache_dir=tmp_path / "c"))
    two = agent_factory("share-two", requirements="tinyreq==1.0\n")
    # (use_cache on, as in the CLI: a rebuild passes the agent's own previous image as cache_from)
    build_image(two, opts(index_url, cache_dir=tmp_path / "c"))
    (two / "requirements.txt").write_text("tinyreq==1.1\nrequests==2.32.3\n")  # switched to the first's lines
    again = build_image(two, opts(index_url, cache_dir=tmp_path / "c"))
    assert "deps" in again.steps_cached, again.steps_cached
    layers = lambda ref: docker_client.images.get(ref).attrs["RootFS"]["Layers"]  # noqa: E731
    upto_deps = len(layers(base_image_for("3.11"))) + 3  # COPY deps, RUN install, the record: stored once
    assert layers(again.image)[:upto_deps] == layers(first.image)[:upto_deps]
