"""Issue 11, a package cannot reach past its own agent: the refusals and redactions that
happen before the engine is asked (identity, YAML anchors, requirement lines, credentials
and env values in logs).

What a real build keeps out of its image and its tags is in tests/integration/test_package_bounds.py.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from builder.api import BuildOptions, build_image
from builder.core.errors import PackageValidationError
from builder.core.redact import Redactor, current_redactor, redact, redaction_scope
from builder.package.manifest import parse_manifest
from builder.package.requirements import read_requirements
from tests.support.packages import AGENT_YAML, make_agent


def test_env_values_are_whole_tokens_never_log_words():
    r = Redactor()
    for value in ("Step", "Successfully", "Collecting", "ERROR", "Successfully installed", "short"):
        assert not r.add_value(value), value
    assert r.add_value("evil.example") and r.add_value("sk-live-abcdef123456")
    for text in ("Step 7/14 : RUN pip install -r reqs.txt", "Successfully installed tinyreq-1.0",
                 "pip at https://evil.example/simple", "notevil.example", "evil.example.com", "evil.example:8080",
                 "x-sk-live-abcdef123456", "sk-live-abcdef1234567"):
        assert r(text) == text, text
    assert r("key sk-live-abcdef123456 and 'sk-live-abcdef123456', K=sk-live-abcdef123456.") == \
        "key *** and '***', K=***."
    assert r("host evil.example here") == "host *** here"
    # a value the package shows itself (requirements, agent.yaml) is no secret
    assert not r.add_value("tinyreq-internal", public="tinyreq-internal==1.0\n")


def test_credentials_hide_everywhere_and_only_within_their_scope():
    with redaction_scope() as outer:
        outer.add_secret("registry-pass-9999")
        with redaction_scope() as build:
            build.add_value("sk-live-abcdef123456")
            assert redact("x registry-pass-9999x sk-live-abcdef123456") == "x ***x ***"
        assert redact("sk-live-abcdef123456") == "sk-live-abcdef123456", "the build's values end with it"
        assert redact("registry-pass-9999") == "***"
    assert redact("registry-pass-9999") == "registry-pass-9999"
    assert current_redactor()("https://u:p4ss@h/") == "https://***@h/", "the patterns apply outside any scope"


def _identity_error(agent: Path, secret: str) -> PackageValidationError:
    with pytest.raises(PackageValidationError) as caught:  # refused before the engine: none is asked
        build_image(agent, BuildOptions(expect_name=agent.name, expect_version=secret, env={}))
    return caught.value


def test_env_values_do_not_outlive_their_build(tmp_path):
    secret = "sk-live-abcdef123456"
    one = make_agent(tmp_path / "one", "agent-one", env_file=f"API_KEY={secret}\nMODE=Step\n")
    two = make_agent(tmp_path / "two", "agent-two", env_file=None)
    assert secret not in _identity_error(one, secret).message  # its own build hides it
    assert redact(secret) == secret, "nothing stays registered in the process"
    assert secret in _identity_error(two, secret).message, "the next build does not hide agent one's value"


def test_local_paths_inside_the_package_go_after_the_code(tmp_path):
    lines = ["requests==2.32.3", "./wheels/x-1.0-py3-none-any.whl", "-e ./lib", "--editable=.", "src/lib",
             "x-1.0.tar.gz", "pkg @ file:///app/lib", "-e .[dev]"]
    (tmp_path / "requirements.txt").write_text("\n".join(lines) + "\n")
    split = read_requirements(tmp_path)
    assert [ln.text for ln in split.deps] == ["requests==2.32.3"]
    assert [ln.text for ln in split.source] == lines[1:]


def test_allowed_host_passes_and_lines_stay_as_pip_reads_them(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "--extra-index-url https://pkgs.example/simple   # ours\n"
        "pkg @ https://pkgs.example/pkg-1.0-py3-none-any.whl\n"
        "requests==2.32.3 \\\n    --hash=sha256:" + "a" * 64 + "\n")
    split = read_requirements(tmp_path, allowed_hosts={"PKGS.example"})
    assert [ln.text for ln in split.deps] == [
        "--extra-index-url https://pkgs.example/simple", "pkg @ https://pkgs.example/pkg-1.0-py3-none-any.whl",
        "requests==2.32.3     --hash=sha256:" + "a" * 64]
    assert split.hashed and [ln.number for ln in split.deps] == [1, 2, 3]


def test_alias_bomb_is_refused_at_its_first_anchor():
    text = AGENT_YAML.format(name="bomb", display="Bomb", runtime="python3.11", version="1.0") + \
        "a: &a [x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}]\n" for p, c in zip("abcdefghijklmnopqrstuvwx",
                                                                             "bcdefghijklmnopqrstuvwxy"))
    with pytest.raises(PackageValidationError) as caught:
        parse_manifest(text)
    assert caught.value.line == 11 and "line 11" in caught.value.message and caught.value.exit_code == 10


def test_index_proxy_request_threads_redact_with_their_build(tmp_path):
    """The proxy answers pip from its own threads; their log lines must use the build's redactor."""
    from builder.build.proxy.cache import DownloadCache
    from builder.build.proxy.server import IndexProxy
    from builder.build.proxy.upstream import Upstream
    seen = []

    def handle(handler, head=False):
        seen.append(current_redactor())
        handler.send_error(404)

    with redaction_scope() as build:
        proxy = IndexProxy(Upstream.parse("http://127.0.0.1:9/simple/"), DownloadCache(tmp_path / "cache"))
        proxy._handle = handle
        with proxy, pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{proxy.address}/simple/tinyreq/", timeout=10)
    assert seen == [build]


def test_an_option_pip_does_not_know_is_a_syntax_error_before_the_build(tmp_path):
    from builder.core.errors import RequirementsSyntaxError
    (tmp_path / "requirements.txt").write_text("requests\n--no-such-option x\n")
    with pytest.raises(RequirementsSyntaxError) as caught:
        read_requirements(tmp_path)
    assert caught.value.line == 2 and "requirements.txt:2" in caught.value.message and caught.value.exit_code == 12
