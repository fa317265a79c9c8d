"""Everything the package and the options can get wrong is reported before the engine
is asked anything (README: the name is checked "before the engine is asked
anything"). No engine here: DOCKER_HOST points nowhere, and the docker-py client is
replaced by one that records being made, so each test also proves no engine call."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from builder.api import BuildOptions, build_image
from builder.build.engine import Engine
from builder.cli import main as cli
from builder.core.errors import EngineError, PackageValidationError
from tests.support.paths import BIN, ROOT

HELLO = ROOT / "examples" / "hello-agent"
NOWHERE = "tcp://127.0.0.1:1"


@pytest.fixture
def engine_calls(monkeypatch) -> list:
    """Each time a docker-py client would be made (the first engine call of an Engine)."""
    calls = []

    def client(*args, **kwargs):
        calls.append(kwargs.get("base_url"))
        raise AssertionError("the engine was asked")
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    monkeypatch.setattr("builder.build.engine._CancellableAPIClient", client)
    return calls


def _cli_json(argv: list[str], capsys) -> tuple[int, dict]:
    code = cli.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_engine_connects_on_its_first_call_not_when_made():
    engine = Engine(NOWHERE)  # nothing listens there: making it must not fail
    with pytest.raises(EngineError) as info:
        engine.ping()
    assert info.value.exit_code == 50


def test_a_package_naming_another_agent_is_refused_before_the_engine(engine_calls, tmp_path, capsys):
    code, out = _cli_json(["build", str(HELLO), "--expect-name", "other", "--cache-dir", str(tmp_path)], capsys)
    assert (code, out["error"]["class"], out["error"]["field"]) == (10, "PackageValidationError", "name"), out
    assert engine_calls == []


def test_push_without_a_registry_is_a_usage_error_and_nothing_is_built(engine_calls, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["build", str(HELLO), "--push", "--cache-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--push needs --registry" in capsys.readouterr().err
    assert engine_calls == []


def test_the_api_refuses_push_without_a_registry_before_the_engine(engine_calls, tmp_path):
    with pytest.raises(PackageValidationError) as info:
        build_image(HELLO, BuildOptions(push=True, cache_dir=tmp_path, env={}))
    assert info.value.field == "--registry" and info.value.exit_code == 10
    assert engine_calls == []


@pytest.mark.parametrize("argv, field", [
    (["--ca-bundle-in-image"], "--ca-bundle"),  # was found only once the base was resolved
])
def test_option_errors_come_before_the_engine(argv, field, engine_calls, tmp_path, capsys):
    code, out = _cli_json(["build", str(HELLO), *argv, "--cache-dir", str(tmp_path)], capsys)
    assert (code, out["error"]["field"]) == (10, field), out
    assert engine_calls == []


def test_the_api_checks_the_installer_before_the_engine(engine_calls, tmp_path):
    with pytest.raises(PackageValidationError) as info:
        build_image(HELLO, BuildOptions(installer="poetry", cache_dir=tmp_path, env={}))
    assert info.value.field == "--installer"
    assert engine_calls == []


def test_the_command_with_no_engine_reachable_exits_10_not_50(tmp_path):
    """The issue's case, end to end: the engine is down and the package names another agent."""
    proc = subprocess.run([str(BIN / "agent-image"), "build", str(HELLO), "--expect-name", "other", "--json",
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DOCKER_HOST": NOWHERE})
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["error"]["field"] == "name"


# -- issue 22: usage errors are exit 2 at parse time, whatever the package says ---------------------------------

@pytest.mark.parametrize("argv, said", [
    (["build", str(HELLO), "--registry", "Bad_Reg:99999/X"], "--registry: 'Bad_Reg:99999/X' is not a valid registry"),
    (["build", str(HELLO), "--registry", "127.0.0.1:99999/agents"], "a port of 1-65535"),
    (["build", str(HELLO), "--repository", "UPPER/case"], "--repository: 'UPPER/case' is not a valid repository"),
    (["build", str(HELLO), "--index-url", "notaurl"], "--index-url: index URL must be a plain http(s)"),
    (["build", str(HELLO), "--base-image", "Not A Ref!"], "--base-image: 'Not A Ref!' is not a valid image"),
    (["build", str(HELLO), "--base-image", "not a ref!!", "--dry-run"], "--base-image: 'not a ref!!'"),
    (["base", "--registry", "Bad_Reg/x", "--push"], "--registry: 'Bad_Reg/x'"),
    (["base", "--from", "Not/A Ref"], "--from: 'Not/A Ref'"),
    (["pull", "bad ref"], "REF: 'bad ref' is not a valid image reference"),
    (["run", "bad ref"], "REF: 'bad ref'"),
    (["ecs-task-def", "bad ref"], "REF: 'bad ref'"),
    (["rebase", "127.0.0.1:5000/a:1", "bad ref", "--base", "127.0.0.1:5000/b:1"], "REF: 'bad ref'"),
    (["rebase", "127.0.0.1:5000/a:1", "--base", "Bad Base"], "--base: 'Bad Base'"),
    (["doctor", "--base-image", "Bad Base"], "--base-image: 'Bad Base'"),
])
def test_malformed_options_are_usage_errors_before_anything_runs(argv, said, engine_calls, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--json"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and said in err, err
    assert engine_calls == []


def test_a_usage_error_wins_over_a_package_error(engine_calls, capsys):
    """A malformed option and a package naming another agent: the option is what CI reports (2, not 10)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["build", str(HELLO), "--expect-name", "other", "--registry", "Bad_Reg/x", "--json"])
    assert exit_.value.code == 2 and "--registry" in capsys.readouterr().err


def test_index_url_credentials_are_not_echoed_in_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["build", str(HELLO), "--index-url", "http://u:hunter2-secret@evil.example/simple/"])
    err = capsys.readouterr().err
    assert "--index-url" in err and "hunter2-secret" not in err


# -- issue 22: with --push the registry is checked after the package and before the engine --------------------

class _FakeRegistry:
    """A loopback registry answering only what the pre-build check sends (POST an upload, DELETE it)."""

    def __init__(self, post_status: int = 202, auth: str | None = None):
        import http.server
        import threading
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status, headers=()):
                seen.append(f"{self.command} {self.path}")
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                if auth and self.headers.get("Authorization") != auth:
                    return self._answer(401, [("WWW-Authenticate", 'Basic realm="test"')])
                self._answer(post_status, [("Location", "/v2/agents/hello-agent/blobs/uploads/u-1?_state=x")])

            def do_DELETE(self):
                self._answer(204)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_registry_is_found_before_the_engine(engine_calls, tmp_path, capsys):
    registry = f"127.0.0.1:{_free_port()}/agents"  # nothing listens there
    code, out = _cli_json(["build", str(HELLO), "--registry", registry, "--push", "--cache-dir", str(tmp_path)],
                          capsys)
    err = out["error"]
    assert (code, err["class"], err["field"]) == (60, "RegistryError", "--registry"), out
    assert "checked before building" in err["message"] and "unreachable" in err["message"]
    assert "Nothing was built" in err["hint"] and err["hint"] not in err["message"]
    assert engine_calls == []


def test_a_package_error_comes_before_the_registry(engine_calls, tmp_path, capsys):
    registry = f"127.0.0.1:{_free_port()}/agents"
    code, out = _cli_json(["build", str(HELLO), "--expect-name", "other", "--registry", registry, "--push",
                           "--cache-dir", str(tmp_path)], capsys)
    assert (code, out["error"]["field"]) == (10, "name"), out


def test_the_registry_check_opens_an_upload_and_cancels_it_then_the_engine_is_asked(engine_calls, tmp_path, capsys):
    fake = _FakeRegistry()
    try:
        code, out = _cli_json(["build", str(HELLO), "--registry", f"{fake.host}/agents", "--push",
                               "--cache-dir", str(tmp_path)], capsys)
    finally:
        fake.close()
    assert fake.seen == ["POST /v2/agents/hello-agent/blobs/uploads/",
                         "DELETE /v2/agents/hello-agent/blobs/uploads/u-1?_state=x"], fake.seen
    assert (code, out["error"]["class"]) == (99, "InternalError"), out  # the recording engine refused
    assert engine_calls, "the engine comes after the registry check"


def test_refused_credentials_are_found_before_the_engine(engine_calls, tmp_path, capsys, monkeypatch):
    fake = _FakeRegistry(auth="Basic nobody-has-this")
    monkeypatch.setenv("AGENT_IMAGE_REGISTRY_PASSWORD", "wrong-password-1234")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    try:
        code, out = _cli_json(["build", str(HELLO), "--registry", f"{fake.host}/agents", "--push",
                               "--registry-username", "ci", "--cache-dir", str(tmp_path)], capsys)
    finally:
        fake.close()
    assert (code, out["error"]["class"]) == (60, "RegistryError"), out
    assert "HTTP 401" in out["error"]["message"] and "wrong-password-1234" not in json.dumps(out)
    assert engine_calls == []


def test_base_push_without_a_registry_is_a_usage_error(engine_calls, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["base", "--push"])
    assert exit_.value.code == 2 and "--push needs --registry" in capsys.readouterr().err
    assert engine_calls == []


def test_base_push_checks_the_registry_before_the_engine(engine_calls, tmp_path, capsys):
    code, out = _cli_json(["base", "--registry", f"127.0.0.1:{_free_port()}/agents", "--push"], capsys)
    assert (code, out["error"]["class"]) == (60, "RegistryError"), out
    assert "agent-image.base" in out["error"]["message"]
    assert engine_calls == []


@pytest.mark.parametrize("status, said", [(404, "Create the repository"), (403, "refused the credentials")])
def test_a_refused_upload_says_what_to_do(status, said):
    from builder.core.errors import RegistryError
    from builder.ship.preflight import check_push
    fake = _FakeRegistry(post_status=status)
    try:
        with pytest.raises(RegistryError) as info:
            check_push(f"{fake.host}/agents/hello-agent", auth={"username": "u", "password": "p-1234"})
    finally:
        fake.close()
    assert f"HTTP {status}" in info.value.message and said in info.value.hint and info.value.exit_code == 60
    assert fake.seen == ["POST /v2/agents/hello-agent/blobs/uploads/"]  # nothing else was sent


# -- issue 22: --dry-run checks what it can without the engine, and says what it could not -------------------

@pytest.mark.parametrize("argv, code, field", [
    (["--expect-name", "other"], 10, "name"),
    (["--cache-dir", "/etc/hostname"], 10, "--cache-dir"),  # a dry run used to accept it
    (["--ca-bundle-in-image"], 10, "--ca-bundle"),
    (["--registry", "127.0.0.1:1/agents", "--push"], 60, "--registry"),
])
def test_dry_run_refuses_what_a_build_would(argv, code, field, engine_calls, tmp_path, capsys):
    argv = ["--cache-dir", str(tmp_path), *argv]  # (a later --cache-dir wins)
    got, out = _cli_json(["build", str(HELLO), "--dry-run", *argv], capsys)
    assert (got, out["error"]["field"]) == (code, field), out
    assert engine_calls == []


def test_dry_run_says_what_it_did_not_check(engine_calls, tmp_path, capsys):
    assert cli.main(["build", str(HELLO), "--dry-run", "--cache-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# agent-image") and "FROM " in out
    said = [ln for ln in err.splitlines() if ln.startswith("dry run: ")]
    assert len(said) == 1 and "not checked: the engine" in said[0] and "the index" in said[0], err
    assert engine_calls == []
