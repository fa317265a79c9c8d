"""builder.testing without an engine: the facts read from an image, the --expect
subset check, the options of `agent-image test` and of the pytest plugin, the
skip message, and a missing engine or testcontainers failing (not skipping)."""

from __future__ import annotations

import json
import sys

import pytest

from builder.build.image import Image
from builder.core.errors import EXIT_CODES, SmokeTestError
from builder.testing.facts import DEFAULT_DRAIN_S, DEFAULT_START_PERIOD_S, json_option, mismatches, run_facts
from builder.testing.plugin import SKIP_MESSAGE
from tests.support.cli import run_cli
from tests.support.plugin import run_pytest

NS = 1_000_000_000


def image(**kw) -> Image:
    base = dict(id="sha256:x", tags=(), labels={}, size=0, layers=(), env=("REST_PORT=8080",), user="agent")
    return Image(**{**base, **kw})


class TestExpect:
    def test_a_subset_that_matches_has_no_mismatch(self):
        assert mismatches({"message": "Hello, ECS!"}, {"message": "Hello, ECS!", "requests": "2.32.3"}) == {}

    def test_each_differing_or_missing_key_is_named(self):
        got = mismatches({"a": 1, "b": {"c": 2}, "gone": None}, {"a": 2, "b": {"c": 2, "d": 3}})
        assert got == {"a": {"expected": 1, "got": 2}, "b": {"expected": {"c": 2}, "got": {"c": 2, "d": 3}},
                       "gone": {"expected": None, "got": None, "missing": True}}

    def test_json_true_is_not_1(self):
        assert set(mismatches({"ok": True}, {"ok": 1})) == {"ok"}
        assert mismatches({"n": 1}, {"n": 1.0}) == {}  # JSON numbers

    def test_an_answer_that_is_not_an_object_misses_every_key(self):
        assert set(mismatches({"a": 1}, ["a"])) == {"a"}

    def test_an_empty_expect_accepts_anything(self):
        assert mismatches({}, "text") == {}


class TestJsonOption:
    def test_values(self):
        assert json_option('{"name": "ECS"}', "--invoke") == {"name": "ECS"}
        assert json_option('"x"', "--invoke") == "x" and json_option(None, "--invoke") is None

    @pytest.mark.parametrize("text, want", [("{bad", "is not JSON"), ("[1]", "must be a JSON object")])
    def test_bad_values_name_the_option(self, text, want):
        with pytest.raises(SmokeTestError) as caught:
            json_option(text, "--expect", want_object=True)
        assert want in str(caught.value) and caught.value.field == "--expect" and caught.value.hint


class TestRunFacts:
    def test_from_the_image(self):
        facts = run_facts(image(healthcheck={"Test": ["CMD", "x"], "StartPeriod": 7 * NS},
                                labels={"io.pixell.agent.drain-seconds": "3",
                                        "io.pixell.agent-image.abi": "distro=debian:12;uid=10001"},
                                env=("REST_PORT=9000", "BASE_PATH=/a/")))
        assert (facts.port, facts.base_path, facts.user, facts.start_period_s, facts.drain_s) == \
            (9000, "/a", "10001", 7.0, 3.0)
        assert facts.stop_timeout_s == 8  # as the task definition's stopTimeout: drain + 5

    def test_defaults_and_the_task_environment(self):
        facts = run_facts(image(), {"AGENT_DRAIN_SECONDS": "1.5", "BASE_PATH": "/"})
        assert (facts.port, facts.base_path, facts.user, facts.start_period_s, facts.drain_s) == \
            (8080, "", "agent", DEFAULT_START_PERIOD_S, 1.5)
        assert run_facts(image(labels={"io.pixell.agent.drain-seconds": "soon"})).drain_s == DEFAULT_DRAIN_S


def test_the_new_exit_codes():
    assert EXIT_CODES["RunError"] == 70 and EXIT_CODES["SmokeTestError"] == 71
    assert EXIT_CODES["AgentResponseError"] == 72


class TestCommand:
    def test_bad_json_is_exit_71_before_the_engine(self):
        proc = run_cli("test", "agents/x:1", "--invoke", "{bad")
        assert proc.returncode == 71 and "--invoke is not JSON" in proc.stderr, proc.stderr

    def test_expect_without_invoke_is_a_usage_error(self):
        proc = run_cli("test", "agents/x:1", "--expect", "{}")
        assert proc.returncode == 2 and "--expect needs --invoke" in proc.stderr

    def test_it_is_listed(self):
        assert "test" in run_cli("--help").stdout


FIXTURE_TEST = """
def test_uses_the_agent(agent):
    assert agent.health()["ok"]
"""


class TestPlugin:
    def test_without_an_option_the_fixture_skips_with_a_clear_message(self, tmp_path):
        (tmp_path / "test_a.py").write_text(FIXTURE_TEST)
        proc = run_pytest(tmp_path)
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout + proc.stderr
        assert SKIP_MESSAGE[:60] in proc.stdout

    def test_a_missing_engine_fails_and_does_not_skip(self, tmp_path):
        (tmp_path / "test_a.py").write_text(FIXTURE_TEST)
        proc = run_pytest(tmp_path, "--agent-image", "agents/x:1")
        assert proc.returncode == 1 and "1 error" in proc.stdout and "skipped" not in proc.stdout, proc.stdout
        assert "Docker engine is not reachable" in proc.stdout

    def test_both_options_are_a_usage_error(self, tmp_path):
        (tmp_path / "test_a.py").write_text(FIXTURE_TEST)
        proc = run_pytest(tmp_path, "--agent-image", "a:1", "--agent-package", str(tmp_path))
        assert proc.returncode == 4 and "pass one of them" in proc.stderr

    def test_pytest_works_without_testcontainers(self, tmp_path):
        """An agent-image install without the [testing] extra: every other test runs; `agent` fails and says why."""
        (tmp_path / "test_a.py").write_text(FIXTURE_TEST + "\ndef test_plain():\n    assert True\n")
        hide = "import sys; sys.modules['testcontainers'] = None"
        proc = run_pytest(tmp_path, "--agent-image", "agents/x:1", prelude=hide)
        assert "1 passed" in proc.stdout and "1 error" in proc.stdout, proc.stdout + proc.stderr
        assert "pip install 'agent-image[testing]'" in proc.stdout

    def test_loading_the_plugin_imports_no_testcontainers(self):
        import subprocess
        code = ("import sys, builder.testing, builder.testing.plugin, builder.testing.smoke; "
                "print([m for m in sys.modules if m.startswith(('testcontainers', 'docker'))])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"


def test_agent_image_test_without_testcontainers_says_what_to_install(monkeypatch, capsys):
    """The recipes ran `agent-image test` with the tool installed without its 'testing' extra: exit 99."""
    from builder.cli import main as cli
    for name in [n for n in sys.modules if n == "testcontainers" or n.startswith("testcontainers.")] or ["testcontainers"]:
        monkeypatch.setitem(sys.modules, name, None)  # (an import of it raises ModuleNotFoundError, loaded or not)
    monkeypatch.delitem(sys.modules, "builder.testing.container", raising=False)
    code = cli.main(["test", "agents/x:1.0", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 71 and error["class"] == "SmokeTestError" and "agent-image[testing]" in error["hint"]


def test_agent_image_test_with_no_engine_is_an_engine_error(capsys):
    """No engine reachable (the unit tier's DOCKER_HOST points nowhere): exit 50 naming the engine, never 99."""
    from builder.cli import main as cli
    code = cli.main(["test", "agents/x:1.0", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 50 and error["class"] == "EngineError" and "DOCKER_HOST" in (error["hint"] or "")
