"""Run the CI recipes of examples/ci/ on this machine, as their CI would (tests/integration/test_recipes_run.py).

The commands come from the recipe files themselves (parsed YAML), in order, in
the shell and environment that CI gives them, so a test cannot drift from the
recipe. What cannot run here is replaced, each in one marked place:

- STAND-IN ``aws``: a script first on PATH that answers the calls the recipes
  make (``ecr get-login-password`` prints a password of the test's,
  ``s3 cp`` copies from a local folder, ``ecr describe/create-repository``
  and ``sts`` answer as AWS would), and fails on any other call.
- REWRITE: the ECR host the recipes compute becomes the local registry,
  ``--create-repository`` (ECR only) is dropped (tests/unit/test_ecr.py
  runs it against moto's ECR), and ``build`` gets ``--index-url`` of the
  test index in place of the recipes' CodeArtifact (PIP_INDEX_URL would also
  be pip's own index when the recipe installs the tool).
- SKIPPED GitHub actions: aws-actions/configure-aws-credentials (no AWS),
  actions/cache (its path is checked by tests/unit/test_recipes.py),
  actions/upload-artifact (its files are checked to exist). The agent-image
  action (``uses: OWNER/agent-image@...``) runs: its action.yml, from the
  checkout copy as GITHUB_ACTION_PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.paths import ROOT, checkout_copy

RECIPES = ROOT / "examples" / "ci"
ECR_HOST = "$AWS_ACCOUNT_ID.dkr.ecr.$AWS_REGION.amazonaws.com"
SKIPPED_ACTIONS = ("aws-actions/configure-aws-credentials@", "actions/cache@", "actions/upload-artifact@")
OWN_ACTION = "OWNER/agent-image@"

FAKE_AWS = r"""#!/usr/bin/env bash
# STAND-IN for the AWS CLI (tests/support/recipes.py): only the calls the recipes make
case "$1 $2" in
  "ecr get-login-password") printf '%s\n' "$FAKE_ECR_PASSWORD" ;;
  "s3 cp") cp "$FAKE_S3_ROOT/${3#s3://}" "$4" ;;
  "ecr describe-repositories") echo "$*" >> "$FAKE_AWS_LOG"; exit 254 ;;  # a first run: none yet
  "ecr create-repository") echo "$*" >> "$FAKE_AWS_LOG" ;;
  "sts assume-role-with-web-identity") printf 'ASIAFAKE\tfake-secret\tfake-session\n' ;;
  *) echo "stand-in aws: the recipes make no such call: $*" >&2; exit 2 ;;
esac
"""


def checkout_repo(dest: Path, tag: str) -> Path:
    """The files a fresh clone has, committed to a git repository at DEST and tagged TAG: what
    `pip install "agent-image @ git+URL@TAG"` and `uses: OWNER/agent-image@TAG` fetch."""
    checkout_copy(dest)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(dest)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "recipe test"], ["tag", tag]):
        subprocess.run(git + args, check=True, capture_output=True)
    return dest


def fake_aws(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    aws = bin_dir / "aws"
    aws.write_text(FAKE_AWS)
    aws.chmod(0o755)
    return bin_dir


def rewrite(script: str, registry_host: str) -> str:
    """REWRITE (see the module docstring): the local registry for ECR; no --create-repository; the build's
    index is the test index (for the recipes' CodeArtifact, which --index-url overrides)."""
    return (script.replace(ECR_HOST, registry_host).replace(" --create-repository", "")
            .replace("agent-image build ", 'agent-image build --index-url "$TEST_INDEX_URL" '))


def run_shell(args: list[str], script: str, env: dict, cwd: Path, what: str, timeout: float = 900) -> str:
    proc = subprocess.run([*args, script], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{script}\n--- output ---\n{out[-4000:]}"
    return out


# -- GitHub Actions ------------------------------------------------------------------------------------------------

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def evaluate(expr: str, contexts: dict) -> str:
    """The expressions the recipes use: `a.b.c || 'literal' || x.y`; anything else fails the test."""
    for alt in (a.strip() for a in expr.split("||")):
        if alt.startswith("'") and alt.endswith("'"):
            value = alt[1:-1]
        else:
            assert re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_]+)+", alt), f"an expression the runner does not know: {expr}"
            value = contexts
            for part in alt.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if value:
            return str(value)
    return ""


def expand(text: str, contexts: dict) -> str:
    return _EXPR.sub(lambda m: evaluate(m.group(1), contexts), text)


def _read_env_file(path: Path) -> dict:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    return {k: v for k, v in pairs}


class GitHubRunner:
    """One job of a workflow, step by step, as a GitHub-hosted runner would run it."""

    def __init__(self, work: Path, action_path: Path, base_env: dict, contexts: dict, registry_host: str):
        self.work, self.action_path, self.registry_host = work, action_path, registry_host
        self.files = {name: work / "runner" / name.lower() for name in
                      ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY")}
        self.files["GITHUB_ENV"].parent.mkdir(parents=True, exist_ok=True)
        for f in self.files.values():
            f.touch()
        self.base_env = {**base_env, "GITHUB_ACTIONS": "true", "CI": "true", "RUNNER_OS": "Linux",
                         "GITHUB_WORKSPACE": str(work), "RUNNER_TEMP": str(work / "runner" / "temp"),
                         **{k: str(v) for k, v in self.files.items()}}
        (work / "runner" / "temp").mkdir(exist_ok=True)
        self.contexts = {**contexts, "runner": {"os": "Linux", "temp": self.base_env["RUNNER_TEMP"]}}
        self.contexts.setdefault("github", {}).update(workspace=str(work), run_id="1")
        self.log: list[str] = []

    def env(self, *layers: dict) -> dict:
        env = dict(self.base_env)
        for layer in layers:
            env.update({k: expand(str(v), {**self.contexts, "env": env}) for k, v in (layer or {}).items()})
        env.update(_read_env_file(self.files["GITHUB_ENV"]))
        extra = [p for p in self.files["GITHUB_PATH"].read_text().splitlines() if p]
        env["PATH"] = os.pathsep.join([*reversed(extra), self.base_env["PATH"]])
        return env

    def run_job(self, workflow: Path, job: str) -> list[str]:
        doc = yaml.safe_load(workflow.read_text())
        ran = []
        for step in doc["jobs"][job]["steps"]:
            env = self.env(doc.get("env"), doc["jobs"][job].get("env"), step.get("env"))
            uses = step.get("uses", "")
            if uses.startswith(SKIPPED_ACTIONS):
                ran.append(f"skipped {uses}")
                self.check_skipped(uses, step, env)
            elif uses.startswith(OWN_ACTION):
                self.run_action(step, env)
                ran.append(f"action {uses}")
            else:
                script = rewrite(expand(step["run"], {**self.contexts, "env": env}), self.registry_host)
                self.log.append(run_shell(["bash", "-e", "-c"], script, env, self.work, step.get("name", "run")))
                ran.append(step.get("name", script.splitlines()[0]))
        return ran

    def check_skipped(self, uses: str, step: dict, env: dict) -> None:
        if uses.startswith("actions/upload-artifact@"):
            paths = expand(step["with"]["path"], {**self.contexts, "env": env}).split()
            missing = [p for p in paths if not (self.work / p).is_file()]
            assert not missing, f"the artifacts {missing} were not written"

    def run_action(self, step: dict, env: dict) -> None:
        action = yaml.safe_load((self.action_path / "action.yml").read_text())
        assert action["runs"]["using"] == "composite"
        inputs = {k: str(v.get("default", "")) for k, v in action.get("inputs", {}).items()}
        inputs.update({k: str(v) for k, v in (step.get("with") or {}).items()})
        for inner in action["runs"]["steps"]:
            ctx = {**self.contexts, "inputs": inputs, "env": env}
            step_env = {**self.env(), **{k: expand(str(v), ctx) for k, v in (inner.get("env") or {}).items()},
                        "GITHUB_ACTION_PATH": str(self.action_path)}
            assert inner["shell"] == "bash"
            self.log.append(run_shell(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"],
                                      expand(inner["run"], ctx), step_env, self.work, "action step"))


# -- AWS CodeBuild -------------------------------------------------------------------------------------------------

PHASES = ("install", "pre_build", "build", "post_build")


def buildspec_script(path: Path, registry_host: str) -> str:
    """The buildspec's commands, phase by phase, as one bash session: CodeBuild (buildspec 0.2) keeps
    variables and the working folder across commands and phases; a failing command stops the build."""
    doc = yaml.safe_load(path.read_text())
    assert doc["version"] == 0.2 and doc["env"]["shell"] == "bash"
    lines = ["set -eo pipefail"]
    for phase in PHASES:
        lines += [rewrite(cmd, registry_host) for cmd in doc["phases"].get(phase, {}).get("commands", [])]
    return "\n".join(lines)


def buildspec_env(path: Path, base_env: dict, overrides: dict) -> dict:
    doc = yaml.safe_load(path.read_text())
    env = {**base_env, "CODEBUILD_BUILD_ID": "agent-image-recipe:1", "CODEBUILD_BUILD_NUMBER": "1",
           "CODEBUILD_INITIATOR": "test", "CODEBUILD_SRC_DIR": base_env["HOME"], "AWS_REGION": "us-east-1"}
    env.update({k: str(v) for k, v in doc["env"].get("variables", {}).items()})
    env.update(overrides)
    return env


# -- GitLab CI -----------------------------------------------------------------------------------------------------

def gitlab_script(path: Path, job: str, registry_host: str, skip: tuple[str, ...]) -> str:
    """before_script then script, one shell (as GitLab's shell executor runs them); SKIP: lines left out."""
    doc = yaml.safe_load(path.read_text())[job]
    cmds = [c for c in doc["before_script"] + doc["script"] if not c.startswith(skip)]
    return "\n".join(["set -eo pipefail", *(rewrite(c, registry_host) for c in cmds)])
