"""Issue 9: the build-on-upload recipes in examples/ci/ use only commands the
real argument parser accepts, and build the way the README says."""

from __future__ import annotations

import shlex

import pytest
import yaml

from builder.cli.main import parser
from tests.support.paths import ROOT

RECIPES = ROOT / "examples" / "ci"
_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "(", ")"}


def shell_scripts(path) -> list[str]:
    """Every shell script in a GitHub Actions workflow (steps' run) or a CodeBuild buildspec (phases' commands)."""
    doc = yaml.safe_load(path.read_text())
    if "jobs" in doc:
        return [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    return [cmd for phase in doc["phases"].values() for cmd in phase.get("commands", [])]


def agent_image_commands(script: str) -> list[list[str]]:
    """argv (after 'agent-image') of every agent-image command in SCRIPT, up to a shell operator."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
        for i, tok in enumerate(tokens):
            if tok == "agent-image" and (i == 0 or tokens[i - 1] in _OPERATORS):
                argv = []
                for arg in tokens[i + 1:]:
                    if arg in _OPERATORS:
                        break
                    argv.append(arg)
                found.append(argv)
    return found


@pytest.mark.parametrize("recipe", ["github-actions.yml", "buildspec.yml"])
def test_every_agent_image_command_in_the_recipe_parses(recipe):
    commands = [argv for script in shell_scripts(RECIPES / recipe) for argv in agent_image_commands(script)]
    assert commands, f"{recipe} runs no agent-image command"
    for argv in commands:
        try:
            parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{recipe}: `agent-image {shlex.join(argv)}` is refused by the argument parser")
    builds = [argv for argv in commands if argv[0] == "build"]
    assert builds, f"{recipe} builds nothing"
    for argv in builds:
        assert {"--expect-name", "--push", "--json", "--registry"} <= set(argv), argv


def test_github_workflow_runs_on_the_runner_not_in_a_container():
    doc = yaml.safe_load((RECIPES / "github-actions.yml").read_text())
    assert all("container" not in job for job in doc["jobs"].values())
