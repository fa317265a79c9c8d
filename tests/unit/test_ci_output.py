"""Issue 22: output for CI. --progress picks the log format; under GitHub Actions a failure is
an ::error annotation (on stderr) and a job-summary block; every --json object carries
"schema": 1 and an error's message and hint are separate keys. No engine here."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from builder.cli import ciout
from builder.cli import main as cli
from builder.core.errors import RegistryError
from tests.support.paths import BIN, ROOT

HELLO = ROOT / "examples" / "hello-agent"
NOWHERE = "tcp://127.0.0.1:1"


def test_annotation_data_and_properties_are_escaped_as_github_reads_them():
    assert ciout.escape_data("100%\r\nnext") == "100%25%0D%0Anext"
    assert ciout.escape_property("a: b, c%") == "a%3A b%2C c%25"
    err = RegistryError("line one\nline two: 50%", hint="Retry, later.")
    line = ciout.annotation("build", err)
    assert line == ("::error title=agent-image build failed%3A RegistryError (exit 60)::"
                    "line one%0Aline two: 50%25%0Ahint: Retry, later.\n")
    assert line.count("\n") == 1  # one workflow command, one line


def test_the_summary_fences_text_with_backticks_in_it():
    err = RegistryError("a ``` fence", hint="use `--registry`")
    text = ciout._summary_of_failure("build", err)
    assert "````\na ``` fence\n````" in text and "RegistryError (exit 60)" in text


@pytest.mark.parametrize("progress, json_flag, tty, mode", [
    ("auto", False, True, "tty"), ("auto", False, False, "plain"), ("auto", True, True, "plain"),
    ("json", False, True, "json"), ("plain", True, True, "plain"), ("tty", False, False, "tty"),
])
def test_progress_auto_is_tty_on_a_terminal_else_plain(progress, json_flag, tty, mode, monkeypatch):
    import argparse
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    assert ciout.log_mode(argparse.Namespace(progress=progress, json=json_flag)) == mode


def _run(argv, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}  # (PYTHONPATH picks the code)
    return subprocess.run([str(BIN / "agent-image"), *argv, "--cache-dir", str(tmp_path / "c")], capture_output=True,
                          text=True, timeout=60, env={**base, "DOCKER_HOST": NOWHERE, **env})


def test_under_github_actions_a_failure_is_an_annotation_and_a_summary_and_stdout_stays_one_object(tmp_path):
    summary = tmp_path / "summary.md"
    proc = _run(["build", str(HELLO), "--expect-name", "other", "--json"], tmp_path,
                GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    assert proc.returncode == 10
    out = json.loads(proc.stdout)  # exactly one object: the annotation went to stderr
    assert out["schema"] == 1 and out["ok"] is False
    err = out["error"]
    assert (err["class"], err["exit_code"], err["field"]) == ("PackageValidationError", 10, "name")
    assert err["hint"] and err["hint"] not in err["message"]
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("::error ")]
    assert len(notes) == 1 and "PackageValidationError (exit 10)" in notes[0] and "hint%3A" not in notes[0]
    text = summary.read_text()
    assert "### agent-image build failed: PackageValidationError (exit 10)" in text and err["hint"] in text


def test_outside_github_actions_there_is_no_annotation(tmp_path):
    proc = _run(["build", str(HELLO), "--expect-name", "other"], tmp_path, GITHUB_STEP_SUMMARY=str(tmp_path / "s"))
    assert proc.returncode == 10 and "::error" not in proc.stderr and not (tmp_path / "s").exists()
    assert "error[package-invalid]" in proc.stderr and "hint: " in proc.stderr


def test_plain_and_json_logs_off_a_terminal(tmp_path):
    plain = _run(["build", str(HELLO), "--expect-name", "other"], tmp_path)
    assert any("[info" in ln and "Opened agent package" in ln for ln in plain.stderr.splitlines()), plain.stderr
    as_json = _run(["build", str(HELLO), "--expect-name", "other", "--progress", "json"], tmp_path)
    events = [json.loads(ln) for ln in as_json.stderr.splitlines() if ln.startswith("{")]
    assert "Opened agent package" in {e["event"] for e in events}, as_json.stderr


def test_every_json_object_has_the_schema_version(tmp_path, capsys):
    assert cli.main(["build", str(HELLO), "--dry-run", "--json", "--cache-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == ciout.SCHEMA and out["ok"] is True
    assert "the engine" in " ".join(out["not_checked"]) and "package" in out["checked"]


def test_ecs_task_def_json_stays_the_aws_request():
    assert ciout.envelope("ecs-task-def", {"family": "x"}) == {"family": "x"}
    assert ciout.envelope("pull", {"ok": True}) == {"schema": 1, "ok": True}


def test_a_success_summary_names_image_digest_and_time(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "s.md"))
    ciout.succeeded("build", {"image": "r/a:1", "digest_ref": "r/a@sha256:00", "duration_s": 3.25,
                              "agent": {"name": "a", "version": "1"},
                              "phases": {"check": 0.1, "build": 2.0, "push": 1.15}})
    text = (tmp_path / "s.md").read_text()
    assert "| digest | `r/a@sha256:00` |" in text and "3.2 s (check 0.1 s, build 2.0 s, push 1.1 s)" in text


def test_under_github_actions_a_usage_error_is_an_annotation_too(tmp_path):
    proc = _run(["build", str(HELLO), "--registry", "Bad_Reg/x", "--json"], tmp_path, GITHUB_ACTIONS="true")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "usage: agent-image build" in proc.stderr  # argparse's text, as always
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("::error ")]
    assert len(notes) == 1 and "exit 2" in notes[0] and "--registry%3A" not in notes[0]
    assert "'Bad_Reg/x' is not a valid registry" in notes[0]
