"""Issue 22: each CI recipe of examples/ci/ runs, command by command, on this machine.

A fresh runner: an empty HOME, a PATH without the project's venv, the tool
installed the way the recipe installs it (the composite action from a copy of
the checkout; `pip install "agent-image @ git+...@v0.1.0"` from that copy as a
git repository), that CI's environment variables set. The base workflow runs
first and pushes the base; its digest reference is then the upload's
AGENT_IMAGE_BASE, as the docs tell a person to set it. The cloud calls are
stand-ins, marked in tests/support/recipes.py. Afterwards: the image is in the
registry under the digest the recipe printed, and the ECR password appears in
no output and no file the run left (no docker login, no ~/.docker/config.json).
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.recipes import (RECIPES, GitHubRunner, buildspec_env, buildspec_script, checkout_repo, fake_aws,
                                   gitlab_script, run_shell)

# what the stand-in `aws ecr get-login-password` prints; made at run time, so no file holds it before the run
PASSWORD = f"ecr-login-{secrets.token_hex(16)}"
TAG = "v0.1.0"
LOCAL_BASE = "agent-image/base:py3.11"  # `agent-image base` without --tag moves it: put back afterwards


def _apkg(dest: Path, name: str) -> Path:
    """examples/hello-agent renamed NAME, zipped as `pixell build` writes an .apkg."""
    src = ROOT / "examples" / "hello-agent"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            data = path.read_bytes()
            if path.name == "agent.yaml":
                data = data.replace(b"name: hello-agent", f"name: {name}".encode())
            zf.writestr(path.relative_to(src).as_posix(), data)
    return dest


@pytest.fixture
def runner_env(tmp_path, index_url, registry, docker_client, cleanup_images):
    """A fresh runner's environment, the stand-in aws first on PATH, and the local Python image in the
    registry (the base recipes `docker pull` theirs)."""
    home = tmp_path / "home"
    home.mkdir()
    path = [str(fake_aws(tmp_path / "fake-bin"))] + [p for p in os.environ["PATH"].split(os.pathsep)
                                                     if ".venv" not in p]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "AGENT_IMAGE_CACHE") and not k.startswith("PYTEST")}
    python = f"{registry.host}/recipe-test/python:3.11-slim"
    cleanup_images(f"{registry.host}/recipe-test/")
    cleanup_images(f"{registry.host}/agents/")
    docker_client.images.get("agent-image/python:3.11").tag(python)
    docker_client.images.push(python)
    s3 = tmp_path / "s3"
    before = docker_client.images.get(LOCAL_BASE).id
    env.update(PATH=os.pathsep.join(path), HOME=str(home), FAKE_ECR_PASSWORD=PASSWORD, FAKE_S3_ROOT=str(s3),
               FAKE_AWS_LOG=str(tmp_path / "aws.log"),
               TEST_INDEX_URL=index_url)  # the build's --index-url (REWRITE in tests/support/recipes.py)
    yield env, python, s3
    docker_client.images.get(before).tag(LOCAL_BASE)


def _assert_no_secret(tmp_path: Path, outputs: list[str]) -> None:
    for out in outputs:
        assert PASSWORD not in out
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 50 * 1024 ** 2:
            assert PASSWORD.encode() not in path.read_bytes(), f"the ECR password is in {path}"
    assert not list(tmp_path.glob("home/.docker/config.json")), "something logged in to a registry"


def _check_pushed(registry, digest_ref: str, name: str) -> None:
    from builder.ship.pushpull import remote_image
    assert digest_ref.startswith(f"{registry.host}/agents/{name}@sha256:"), digest_ref
    held = remote_image(f"{registry.host}/agents/{name}:1.0.0")
    assert held is not None and held[0] == digest_ref
    assert held[1]["io.pixell.agent.name"] == name


@pytest.mark.slow
def test_github_actions_recipes_run_on_a_fresh_runner(tmp_path, runner_env, registry):
    env, python, s3 = runner_env
    action = checkout_repo(tmp_path / "agent-image", TAG)  # what `uses: OWNER/agent-image@v0.1.0` checks out

    base_work = tmp_path / "base-run"
    base_work.mkdir()
    base = GitHubRunner(base_work, action, env, {"inputs": {"python_image": python}, "vars": {}}, registry.host)
    steps = base.run_job(RECIPES / "github-actions-base.yml", "base")
    assert steps[0].startswith("skipped aws-actions/configure-aws-credentials")
    base_ref = json.loads((base_work / "base.json").read_text())["digest_ref"]
    assert base_ref.startswith(f"{registry.host}/agents/agent-image.base@sha256:")
    assert base_ref in base.files["GITHUB_STEP_SUMMARY"].read_text()

    _apkg(s3 / "uploads" / "recipe-gh-1.0.0.apkg", "recipe-gh")
    payload = {"s3_uri": "s3://uploads/recipe-gh-1.0.0.apkg", "name": "recipe-gh", "version": "1.0.0"}
    work = tmp_path / "upload-run"
    work.mkdir()
    upload = GitHubRunner(work, action, env, {"github": {"event": {"client_payload": payload}},
                                              "vars": {"AGENT_IMAGE_BASE": base_ref}}, registry.host)
    steps = upload.run_job(RECIPES / "github-actions.yml", "build")
    assert "action OWNER/agent-image@v0.1.0" in steps and "skipped actions/cache@v4" in steps
    result = json.loads((work / "result.json").read_text())
    assert result["ok"] and (work / "image-ref.txt").read_text().strip() == result["digest_ref"]
    _check_pushed(registry, result["digest_ref"], "recipe-gh")
    # the recipe's cache folder is the one the build used (what actions/cache keeps)
    assert any((work / ".agent-image-cache").iterdir())
    _assert_no_secret(tmp_path, base.log + upload.log)


@pytest.mark.slow
def test_codebuild_recipes_run_on_a_fresh_build_container(tmp_path, runner_env, registry):
    env, python, s3 = runner_env
    repo = checkout_repo(tmp_path / "agent-image", TAG)
    source = {"AGENT_IMAGE_SOURCE": f"git+file://localhost{repo}"}  # the recipe's git URL, here a local clone

    base_work = tmp_path / "base-build"
    base_work.mkdir()
    spec = RECIPES / "buildspec-base.yml"
    outputs = [run_shell(["bash", "-c"], buildspec_script(spec, registry.host),
                         buildspec_env(spec, env, {**source, "PYTHON_IMAGE": python}), base_work, spec.name)]
    base_ref = json.loads((base_work / "base.json").read_text())["digest_ref"]

    _apkg(s3 / "uploads" / "recipe-cb-1.0.0.apkg", "recipe-cb")
    work = tmp_path / "upload-build"
    work.mkdir()
    spec = RECIPES / "buildspec.yml"
    overrides = {**source, "AGENT_IMAGE_CACHE": str(tmp_path / "cb-cache"), "AGENT_IMAGE_BASE": base_ref,
                 # StartBuild's environmentVariablesOverride
                 "APKG_S3_URI": "s3://uploads/recipe-cb-1.0.0.apkg", "AGENT_NAME": "recipe-cb", "AGENT_VERSION": "1.0.0"}
    outputs.append(run_shell(["bash", "-c"], buildspec_script(spec, registry.host), buildspec_env(spec, env, overrides),
                             work, spec.name))
    result = json.loads((work / "result.json").read_text())
    assert result["ok"] and (work / "image-ref.txt").read_text().strip() == result["digest_ref"]
    _check_pushed(registry, result["digest_ref"], "recipe-cb")
    assert any((tmp_path / "cb-cache").iterdir())
    assert "create-repository --repository-name agents/agent-image.base" in (tmp_path / "aws.log").read_text()
    _assert_no_secret(tmp_path, outputs)


@pytest.mark.slow
def test_gitlab_recipe_runs_under_a_shell_executor(tmp_path, runner_env, registry):
    """Its commands as a shell executor on a host with dockerd runs them (the recipe's other set-up): no
    apt-get, the local engine. Builds through a docker:dind engine over TLS, as the recipe's service
    gives them, are tests/integration/test_remote.py's."""
    env, python, s3 = runner_env
    repo = checkout_repo(tmp_path / "agent-image", TAG)
    base_ref = _push_base(tmp_path, env, python, registry, repo)
    _apkg(s3 / "uploads" / "recipe-gl-1.0.0.apkg", "recipe-gl")
    work = tmp_path / "project"
    work.mkdir()
    ci = {"CI": "true", "GITLAB_CI": "true", "CI_PROJECT_DIR": str(work), "CI_JOB_ID": "1",
          "CI_PIPELINE_SOURCE": "trigger", "AWS_ID_TOKEN": "fake-oidc-token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/x"}
    variables = yaml.safe_load((RECIPES / "gitlab-ci.yml").read_text())["build-agent-image"]["variables"]
    job_env = {**env, **{k: str(v) for k, v in variables.items() if not k.startswith("DOCKER_")}, **ci,
               "AGENT_IMAGE_SOURCE": f"git+file://localhost{repo}", "AGENT_IMAGE_CACHE": str(work / ".agent-image-cache"),
               "AGENT_IMAGE_BASE": base_ref, "APKG_S3_URI": "s3://uploads/recipe-gl-1.0.0.apkg",
               "AGENT_NAME": "recipe-gl", "AGENT_VERSION": "1.0.0"}
    # SKIPPED: apt-get (this host has git) and the system-wide awscli (the stand-in aws answers instead)
    script = gitlab_script(RECIPES / "gitlab-ci.yml", "build-agent-image", registry.host,
                           skip=("apt-get", "pip install --quiet awscli"))
    out = run_shell(["bash", "-c"], script, job_env, work, "gitlab-ci.yml")
    digest_ref = (work / "image-ref.txt").read_text().strip()
    _check_pushed(registry, digest_ref, "recipe-gl")
    _assert_no_secret(tmp_path, [out])


def _push_base(tmp_path: Path, env: dict, python: str, registry, repo: Path) -> str:
    """The base, pushed by buildspec-base.yml's commands (GitLab has no base recipe of its own)."""
    work = tmp_path / "base-build"
    work.mkdir()
    spec = RECIPES / "buildspec-base.yml"
    run_shell(["bash", "-c"], buildspec_script(spec, registry.host),
              buildspec_env(spec, env, {"AGENT_IMAGE_SOURCE": f"git+file://localhost{repo}", "PYTHON_IMAGE": python}),
              work, spec.name)
    return json.loads((work / "base.json").read_text())["digest_ref"]
