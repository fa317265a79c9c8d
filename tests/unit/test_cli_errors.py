"""Issue 9: no traceback, ever. An unexpected exception is InternalError
(exit 99) with its traceback in a redacted file; a bad option is a user error;
an engine that is not there is an EngineError that says how to start one.

No engine: where a command gets as far as making its Engine, it gets one with
no connection (`unconnected_engine`): the checks these tests expect come before
any use of it. (That they also come before the CLI makes its Engine at all is
tests/unit/test_check_order.py's to say.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.cli import main as cli
from builder.core.errors import EXIT_CODES
from tests.support.cli import build_json
from tests.support.paths import ROOT

HELLO = ROOT / "examples" / "hello-agent"
SECRET = "hunter2-token-9f8e7d"


def _explode(*args, **kwargs):
    raise RuntimeError(f"fetching https://alice:{SECRET}@index.example/simple/ went wrong")


@pytest.fixture
def unconnected_engine(monkeypatch):
    """Engine() connects to nothing: the command gets an Engine that has no connection, so
    any use of it fails (as InternalError, not as the user error these tests expect)."""
    from builder.build.engine import Engine
    monkeypatch.setattr(Engine, "__init__", lambda self, *args, **kwargs: None)


@pytest.mark.parametrize("as_json", [True, False])
def test_unexpected_exception_is_internal_error_with_a_redacted_traceback_file(as_json, tmp_path, monkeypatch,
                                                                                  capsys, unconnected_engine):
    monkeypatch.setattr("builder.api.build_image", _explode)
    code = cli.main(["build", str(HELLO), "--cache-dir", str(tmp_path), *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == 99
    assert "Traceback" not in out + err and SECRET not in out + err
    if as_json:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1, out
        error = json.loads(lines[0])["error"]
        assert (error["class"], error["exit_code"]) == ("InternalError", 99)
        where = error["traceback_file"]
    else:
        said = [ln for ln in err.splitlines() if ln.startswith("error[")]
        assert len(said) == 1 and "bug in agent-image" in said[0] and "RuntimeError" in said[0], err
        where = said[0].split("the full traceback is in ", 1)[1].split(". Please", 1)[0]
    assert Path(where).parent == tmp_path / "crashes"
    text = Path(where).read_text()
    assert "Traceback" in text and "RuntimeError" in text and "_explode" in text
    assert SECRET not in text and "alice:***@" not in text and "***@index.example" in text


def test_traceback_file_falls_back_when_the_cache_dir_is_unusable(monkeypatch, capsys, tmp_path, unconnected_engine):
    monkeypatch.setattr("builder.api.build_image", _explode)
    monkeypatch.setattr("builder.core.defaults.DEFAULT_CACHE_DIR", tmp_path / "default")
    code = cli.main(["build", str(HELLO), "--cache-dir", "/etc/hostname", "--json"])
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 99 and Path(error["traceback_file"]).parent == tmp_path / "default" / "crashes"


@pytest.mark.parametrize("cache_dir", ["/etc/hostname", "/etc/hostname/sub", "/proc/no-such-folder"])
def test_unusable_cache_dir_is_a_user_error_naming_the_option(cache_dir, capsys, unconnected_engine):
    code = cli.main(["build", str(HELLO), "--cache-dir", cache_dir, "--no-cache", "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    error = json.loads(out)["error"]
    assert code == 10 and error["field"] == "--cache-dir", error
    assert cache_dir in error["message"] and "--cache-dir" in error["message"] + error["hint"]


@pytest.mark.parametrize("argv, said", [
    (["build", str(HELLO), "--timeout", "-1"], "--timeout: '-1' must be a number above 0"),
    (["build", str(HELLO), "--timeout", "nan"], "--timeout: 'nan' must be a number above 0"),
    (["run", "x", "--port", "99999"], "--port: '99999' is not a TCP port"),
    (["build", str(HELLO), "--max-entries", "0"], "--max-entries: '0' must be a number above 0"),
])
def test_out_of_range_numbers_are_usage_errors(argv, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["build", str(HELLO), "--base-image", "Not A Ref!"], "--base-image"),
    (["build", str(HELLO), "--base-image", "agent-image/base:py3.11@sha256:short"], "--base-image"),
    (["base", "--tag", "agent-image/BASE:py3.11"], "--tag"),
])
def test_malformed_image_reference_is_a_usage_error_naming_the_option(argv, option, capsys, unconnected_engine):
    """Found while trying issue 9: the engine answered these with a 400 that read as 'engine unreachable'.
    Issue 22: a malformed option is a usage error (exit 2), not a bad package (10)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--json"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"{option}: {argv[-1]!r} is not a valid image reference" in err and "REPOSITORY[:TAG]" in err


def test_well_formed_image_references_pass():
    from builder.core.refs import check_image_ref
    for ref in ("agent-image/base:py3.11", "127.0.0.1:5000/agent-image.base:py3.11", "python",
                "r.example.com/a/b@sha256:" + "0" * 64, "sha256:" + "a" * 64):
        assert check_image_ref(ref, "--base-image") == ref


def test_engine_unreachable(agent_factory, tmp_path):
    agent = agent_factory("no-engine", requirements=None)
    code, out, _ = build_json(agent, "--engine", f"unix://{tmp_path}/nothing.sock", "--index-url",
                              "http://127.0.0.1:9/simple/")
    assert out["error"]["class"] == "EngineError" and code == EXIT_CODES["EngineError"]
    assert "DOCKER_HOST" in out["error"]["hint"] and "scripts/setup.sh" not in json.dumps(out)
