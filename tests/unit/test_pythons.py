"""Issue 26: the Pythons table (end of life, Debian suite), the end-of-life warning of a
python3.9 build, and runtimes pixell-kit does not allow yet (refused unless asked for by name).
No engine here: tests/integration/test_pythons.py builds and serves them."""

from __future__ import annotations

import datetime as dt

import pytest

from builder.cli import ciout
from builder.cli import main as cli
from builder.core.errors import PackageValidationError
from builder.core.pythons import PREVIEW_ENV, PYTHONS, eol_warning, preview_runtimes
from builder.package.manifest import SUPPORTED_RUNTIMES, parse_manifest
from builder.package.runtime import runtime_facts
from tests.support.packages import AGENT_YAML

DEC_2026 = dt.date(2026, 12, 5)


def manifest(runtime: str, preview=None):
    return parse_manifest(AGENT_YAML.format(name="py-agent", display="Py", runtime=runtime, version="1.0"), preview)


def test_python_3_9_is_past_end_of_life_and_the_warning_names_a_supported_runtime():
    facts, warning = runtime_facts(manifest("python3.9"), today=DEC_2026)
    assert facts["past_end_of_life"] and facts["end_of_life"] == "2025-10-31"
    assert "python3.9 is past its end of life" in warning and "October 2025" in warning
    assert "python3.11 (until October 2027)" in warning
    # the day before its end of life it was not
    assert runtime_facts(manifest("python3.9"), today=dt.date(2025, 10, 30)) == (
        {"name": "python3.9", "python": "3.9", "end_of_life": "2025-10-31", "past_end_of_life": False,
         "preview": False}, None)


def test_python_3_11_is_supported_until_october_2027():
    facts, warning = runtime_facts(manifest("python3.11"), today=DEC_2026)
    assert warning is None and facts == {"name": "python3.11", "python": "3.11", "end_of_life": "2027-10-31",
                                         "past_end_of_life": False, "preview": False}
    assert eol_warning("3.11", ["python3.9"], today=dt.date(2027, 11, 1)).endswith("has had no security fixes "
                                                                                   "since October 2027. Set "
                                                                                   "'runtime' in agent.yaml to a "
                                                                                   "supported one.")


def test_every_runtime_the_kit_allows_has_an_end_of_life_date():
    assert {py for py in SUPPORTED_RUNTIMES.values()} <= set(PYTHONS)


@pytest.mark.parametrize("runtime", ["python3.12", "python3.13"])
def test_the_next_runtimes_are_refused_unless_asked_for_by_name(runtime):
    with pytest.raises(PackageValidationError) as err:
        manifest(runtime)
    assert err.value.field == "runtime" and PREVIEW_ENV in err.value.message
    m = manifest(runtime, preview_runtimes({PREVIEW_ENV: f"python3.14, {runtime}"}))
    assert m.python == runtime.removeprefix("python") and runtime_facts(m)[0]["preview"]


def test_only_known_next_runtimes_can_be_asked_for():
    assert preview_runtimes({PREVIEW_ENV: "python3.14,node20,python3.11"}) == {}
    with pytest.raises(PackageValidationError):
        manifest("node20", preview_runtimes({PREVIEW_ENV: "node20"}))


def test_base_takes_every_python_of_the_table():
    args = cli.parser().parse_args(["base", "--python", "3.13"])
    assert args.python == "3.13"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["base", "--python", "3.10"])


def test_the_github_summary_and_an_annotation_say_the_runtime_is_past_end_of_life(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "s.md"))
    facts, warning = runtime_facts(manifest("python3.9"), today=DEC_2026)
    ciout.succeeded("build", {"image": "r/a:1", "duration_s": 1.0, "runtime": facts, "warnings": [warning]})
    assert ("| runtime | :warning: `python3.9` is past its end of life (2025-10-31): set `runtime` in agent.yaml "
            "to a supported one |") in (tmp_path / "s.md").read_text()
    err = capsys.readouterr().err
    assert err.startswith("::warning title=agent-image%3A runtime python3.9 is past its end of life::runtime "
                          "python3.9 is past its end of life")
    ciout.succeeded("build", {"image": "r/b:1", "runtime": runtime_facts(manifest("python3.11"), today=DEC_2026)[0]})
    assert "| runtime | `python3.11` (supported until 2027-10-31) |" in (tmp_path / "s.md").read_text()
    assert "::warning" not in capsys.readouterr().err
