"""The pure parts, without an engine: requirements split, render, context, redaction, cache."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from builder.core import depsenv

from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import Upstream
from builder.core.errors import PackageValidationError
from builder.core.redact import redact, redaction_scope, register_secret
from builder.package.manifest import parse_manifest
from builder.package.piplines import logical_lines
from builder.package.requirements import read_requirements
from builder.plan.context import build_context
from builder.plan.dockerfile import parse_steps, render

YAML = """\
name: demo
display_name: Demo
description: d
author: a
license: MIT
entrypoint: src.main:handler
metadata:
  version: 1.2.3
"""


def test_logical_lines_join_continuations_and_drop_comments():
    text = "# top\nrequests>=2 \\\n  --hash=sha256:abc\n\nstructlog  # logging\n   \n"
    lines = logical_lines(text)
    assert [(ln.number, ln.text.split()) for ln in lines] == [(2, ["requests>=2", "--hash=sha256:abc"]),
                                                              (5, ["structlog"])]


def test_split_puts_source_lines_after_the_source(tmp_path):
    (tmp_path / "requirements.txt").write_text("requests==2.32.3\n-e ./libs/helper\n./wheels/x.whl\n"
                                               "pkg @ file:///app/x\n-r more.txt\n-c pins.txt\n")
    (tmp_path / "more.txt").write_text("structlog\n")
    (tmp_path / "pins.txt").write_text("idna<4\n")
    split = read_requirements(tmp_path)
    assert [ln.text for ln in split.deps] == ["requests==2.32.3", "structlog", "-c constraints-1.txt"]
    assert [ln.text for ln in split.source] == ["-e ./libs/helper", "./wheels/x.whl", "pkg @ file:///app/x"]
    assert split.constraints == {"constraints-1.txt": "idna<4\n"}
    assert split.real_lines == 7  # six lines plus the one in more.txt
    assert split.deps[1].where == "more.txt:1"


def test_include_outside_the_package_is_refused(tmp_path):
    (tmp_path / "requirements.txt").write_text("-r ../../etc/passwd\n")
    with pytest.raises(PackageValidationError) as info:
        read_requirements(tmp_path)
    assert "outside the package" in str(info.value)


@pytest.mark.parametrize("line", ["--index-url https://evil.example/simple", "-i https://evil.example/simple",
                                  "--extra-index-url=https://evil.example/simple", "--find-links https://evil.example/",
                                  "-f https://evil.example/", "--trusted-host evil.example"])
def test_index_policy(tmp_path, line):
    from builder.core.errors import IndexPolicyError
    (tmp_path / "requirements.txt").write_text(f"requests\n{line}\n")
    with pytest.raises(IndexPolicyError) as info:
        read_requirements(tmp_path)
    assert info.value.line == 2 and "requirements.txt:2" in str(info.value) and info.value.exit_code == 11
    assert read_requirements(tmp_path, allowed_hosts={"evil.example"}).real_lines == 2


def _render(manifest_text=YAML, **kw):
    args = dict(base_image="agent-image/base:py3.11", index_identity="https://pypi.org/simple/", deps=True,
                editable=True, requirements=True)
    args.update(kw)
    return render(parse_manifest(manifest_text), **args)


from builder.plan.dockerfile import (COMPILE_START, DEPS_LIST_DISTS, LIST_DISTS, LIST_REQUESTED,  # noqa: E402
                                     SYSTEM_PATH)


def test_render_order_and_step_names():
    r = _render()
    runs = [i for i in r.instructions if i.startswith("RUN")]
    # bytecode in parallel after pip, which compiles one file at a time: each install step
    # compiles only the files it wrote (newer than its stamp)
    stamp = "RUN touch /tmp/.agent-image-stamp && "
    new = (" && { find /opt/venv/lib -name '*.py' -newer /tmp/.agent-image-stamp -print0 | xargs -0 -r -n 256 -P 4 "
           "python -m compileall -qq || :; } && rm -f /tmp/.agent-image-stamp && " + LIST_DISTS)  # the SBOM's listing
    # the dependency step compiles in the background while pip installs, stops the compiler and
    # waits for it whatever pip did, and ends with pip's status before the same pass as the others
    assert runs[0] == (stamp + COMPILE_START + "pip install --no-compile -r "
                       "/opt/agent-image/deps/requirements-deps.txt; r=$?; " + SYSTEM_PATH +
                       "touch /tmp/.agent-image-stamp.done; wait $w; rm -f /tmp/.agent-image-stamp.done; (exit $r); }"
                       + new.replace(" python -m compileall", ' "$py" -I -S -m compileall').replace(
                           LIST_DISTS, DEPS_LIST_DISTS) + " && " + LIST_REQUESTED), \
        "after the install nothing from the venv's bin (a wheel's scripts) nor its site (a .pth) runs; REQUESTED"
    assert runs[1] == "RUN " + depsenv.COMMAND, "the dependency layer's record, in a layer of its own"
    # one pass for package and requirements; the seed's order when that pass refuses (pins against
    # install_requires); both first from the packaging files alone, then (only if that could not work) after the code
    assert runs[2].startswith(stamp + "if pip install --no-compile -e /app -r /app/requirements.txt || {")
    assert "pip install --no-compile -e /app && pip install --no-compile -r /app/requirements.txt; }" in runs[2]
    assert runs[2].endswith(new)
    assert runs[3].startswith("RUN if [ -e /opt/agent-image/installed-after-code ]; then touch /tmp/.agent-image-stamp")
    assert runs[3].index("pip install --no-compile -e /app") < runs[3].index("pip install --no-compile -r /app/req")
    assert runs[3].endswith(new + "; fi"), "a code-only change must not scan the venv"
    assert r.step_name(r.instructions.index(runs[2]) + 1) == "package"
    assert r.steps[r.instructions.index("COPY .agent-image/meta/ /app/")] == "package"
    assert r.instructions[0] == "FROM agent-image/base:py3.11"
    args = [i for i in r.instructions if i.startswith("ARG")]
    assert len(args) == 1 and 'PIP_INDEX_URL="http://agent-image-index.invalid/simple/"' in args[0]
    # code-independent metadata precedes the code; the agent's environment and USER follow the installs
    order = [r.steps[r.instructions.index(i)] for i in r.instructions]
    assert order.index("config") < order.index("package") < order.index("source") < order.index("install") \
        < order.index("runtime")
    assert r.instructions[-1] == "USER agent"


def test_requirements_that_need_the_code_install_after_it():
    r = _render(source_requirements=True)
    runs = [i for i in r.instructions if i.startswith("RUN")]
    assert "pip install -r /app/requirements.txt" not in runs[2], "the early pass cannot read -e ./lib lines"
    assert runs[3].endswith("pip install --no-compile -r /app/requirements.txt && { find /opt/venv/lib -name '*.py' "
                            "-newer /tmp/.agent-image-stamp -print0 | xargs -0 -r -n 256 -P 4 python -m compileall "
                            "-qq || :; } && rm -f /tmp/.agent-image-stamp && " + LIST_DISTS)


def test_a_marked_step_names_the_install_that_failed():
    from builder.build.steplog import marked_step
    lines = ["Step 14/16 : RUN if ...", "--- agent-image step: package", "Obtaining file:///app",
             "--- agent-image step: requirements", "ERROR: No matching distribution found for x"]
    assert marked_step(lines, "install") == ("requirements", ["ERROR: No matching distribution found for x"])
    assert marked_step(lines[:1], "install") == ("install", lines[:1])


def test_render_creates_the_venv_when_the_base_has_none():
    """Our base carries /opt/venv; any other --base-image gets it created in the agent's Dockerfile."""
    assert "RUN python3 -m venv /opt/venv" not in _render().instructions
    r = _render(base_has_venv=False)
    assert r.instructions[2] == "RUN python3 -m venv /opt/venv" and r.steps[2] == "venv"


def test_render_uv_from_the_base():
    """uv is the base's when it carries it (io.pixell.agent-image.uv); another base gets it per image."""
    assert not [i for i in _render(installer="uv", base_has_uv=True).instructions if "install -q uv==" in i]
    r = _render(installer="uv", base_has_uv=False)
    assert [r.steps[n] for n, i in enumerate(r.instructions) if "install -q uv==" in i] == ["tools"]
    # hash-checked lines keep the seed's two passes: -e /app has no hash
    hashed = [i for i in _render(installer="uv", require_hashes=True).instructions if i.startswith("RUN if")]
    assert "-e /app -r" not in hashed[0] and "--require-hashes -r /app/requirements.txt" in hashed[0]


def test_render_skips_what_the_package_lacks():
    # (was: no instruction starts with "RUN pip", which every rendering meets: install steps start "RUN touch")
    def installs(r):
        return [i for i in r.instructions if i.startswith("RUN") and "pip install" in i]
    assert len(installs(_render())) == 3   # a package with everything has its three install steps
    bare = _render(deps=False, editable=False, requirements=False)
    assert installs(bare) == [] and not {"deps", "package", "install"} & set(bare.steps)


def test_environment_literals_only_and_quoted():
    text = YAML + "environment:\n  GREETING: 'say \"hi\" for $5'\n  KEY: ${SECRET}\n  HOME_DIR: $HOME/x\n"
    r = _render(text)
    assert 'ENV GREETING="say \\"hi\\" for \\$5"' in r.instructions
    envs = [i for i in r.instructions if i.startswith("ENV ")]
    assert not any("SECRET" in i or "HOME_DIR" in i for i in envs), "references are left to deploy time"
    # their names (only) are recorded for the ECS task definition's secrets
    label = next(i for i in r.instructions if i.startswith("LABEL "))
    assert 'io.pixell.agent.env-refs="KEY,HOME_DIR"' in label and "$" not in label.replace("\\$", "")
    assert not any("SECRET" in i or "$HOME" in i for i in r.instructions if not i.startswith("#"))


def test_injection_is_rejected_not_rendered():
    bad = YAML.replace("version: 1.2.3", 'version: "1.0\\nRUN curl evil"')
    with pytest.raises(PackageValidationError) as info:
        _render(bad)
    assert info.value.field == "metadata.version"


def test_parse_steps_handles_continuations():
    steps, instr = parse_steps("#> step a\nFROM x\n#> step b\nRUN one \\\n  two\nENV A=1\n")
    assert steps == ("a", "b", "b") and instr[1] == "RUN one two"


def test_context_is_deterministic(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / ".env").write_text("SECRET=1")
    one = build_context(tmp_path, {"Dockerfile": b"FROM x\n"}, exclude={".env"})
    os.utime(tmp_path / "a.py", (1, 1))
    two = build_context(tmp_path, {"Dockerfile": b"FROM x\n"}, exclude={".env"})
    assert one.digest == two.digest
    names = tarfile.open(fileobj=io.BytesIO(one.data)).getnames()
    assert names == ["Dockerfile", "app", "app/a.py", "app/sub/b.txt"]
    (tmp_path / "a.py").write_text("x = 2\n")
    assert build_context(tmp_path, {"Dockerfile": b"FROM x\n"}, exclude={".env"}).digest != one.digest


def test_redaction():
    assert redact("https://aws:tok123456@host/simple/") == "https://***@host/simple/"
    assert redact("token=abcdef123 password: hunter22") == "token=*** password: ***"
    with redaction_scope():
        register_secret("sk-registered-value-99")
        assert "sk-registered-value-99" not in redact("the key is sk-registered-value-99.")
    assert "sk-registered-value-99" in redact("the key is sk-registered-value-99.")  # gone with its scope


def test_upstream_splits_credentials():
    up = Upstream.parse("https://aws:to%2Fken@example.test:8443/pypi/r/simple")
    assert up.url == "https://example.test:8443/pypi/r/simple/"
    assert up.auth_header == "Basic " + __import__("base64").b64encode(b"aws:to/ken").decode()


def test_proxy_rewrites_links_through_itself(tmp_path):
    proxy = IndexProxy(Upstream.parse("http://idx.test/simple/"), DownloadCache(tmp_path))
    page = "http://idx.test/simple/requests/"
    tag = proxy._link(page, '<a href="../../packages/requests-2.whl#sha256=' + "a" * 64 + '">', None, "id")
    key = tag.split("/_f/", 1)[1].split("/", 1)[0]
    assert tag == f'<a href="/_f/{key}/requests-2.whl#sha256=' + "a" * 64 + '">'
    assert proxy._links[key].url == "http://idx.test/packages/requests-2.whl"
    assert proxy._links[key].sha256 == "a" * 64
    assert proxy._link(page, '<a href="file:///etc/passwd">', None, "id") == '<a href="">'
    # another page giving the same URL another hash, or its .metadata, is another link: neither reading
    # replaces the other's (pip fetches each by the page it read)
    other = proxy._link("http://idx.test/simple/evil/", '<a href="../../packages/requests-2.whl#sha256=' + "b" * 64
                        + '" data-core-metadata="true">', None, "id")
    key2 = other.split("/_f/", 1)[1].split("/", 1)[0]
    assert key2 != key and proxy._links[key].sha256 == "a" * 64 and not proxy._links[key].metadata
    assert proxy._links[key2].sha256 == "b" * 64 and proxy._links[key2].metadata


def test_download_cache_is_content_addressed_bounded_and_concurrent(tmp_path):
    cache = DownloadCache(tmp_path, max_bytes=3000)

    def put(i: int) -> Path:
        data = (str(i % 4) * 1000).encode()
        fd, tmp = cache.tmpfile()
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return cache.store(f"http://x/{i % 4}.whl", Path(tmp), hashlib.sha256(data).hexdigest(), "me")

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(40)))
    blobs = list(cache.blobs.iterdir())
    assert sum(p.stat().st_size for p in blobs) <= 3000, "bounded"
    for blob in blobs:
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    hit = cache.lookup("http://x/3.whl", None, "me")
    assert hit is None or hit.read_bytes() == b"3" * 1000
    assert cache.lookup("http://x/3.whl", None, "someone else") is None


def test_engine_rejoins_lines_cut_across_stream_chunks():
    """uv writes a line in several writes; the classifiers must see it whole."""
    from builder.build.stream import rejoin_lines
    chunks = [{"stream": "Step 3/9 : RUN x\n"}, {"stream": "error"}, {"stream": ": No solution found"},
              {"stream": " when resolving\n + tiny"}, {"stream": "req==2.0\n"}, {"aux": {"ID": "sha256:1"}},
              {"stream": "tail without newline"}]
    text = "".join(c.get("stream", "") for c in rejoin_lines(iter(chunks)))
    assert text.splitlines() == ["Step 3/9 : RUN x", "error: No solution found when resolving",
                                 " + tinyreq==2.0", "tail without newline"]
    assert {"aux": {"ID": "sha256:1"}} in list(rejoin_lines(iter(chunks)))


def test_versions_on_an_index_page():
    from builder.build.proxy.pages import versions_on_page
    hrefs = ["../../packages/tinyreq-1.0-py3-none-any.whl#sha256=ab", "/f/TinyReq-1.1.tar.gz",
             "tinyreq-2.0-py3-none-any.whl", "tinyreq-2.0.tar.gz", "other-9.0-py3-none-any.whl", "README.txt"]
    assert versions_on_page("tinyreq", hrefs) == ["1.0", "1.1", "2.0"]


def test_numbers_in_agent_yaml_stay_as_written():
    """`version: 1.10` is the tag 1.10, not the float 1.1."""
    m = parse_manifest(YAML.replace("version: 1.2.3", "version: 1.10") + "environment:\n  PORT: 8080\n  MASK: 0o17\n")
    assert m.version == "1.10" and m.labels["io.pixell.agent.version"] == "1.10"
    assert m.environment == {"PORT": "8080", "MASK": "0o17"}


@pytest.mark.parametrize("key", ["PATH", "VIRTUAL_ENV", "AGENT_ENTRYPOINT"])
def test_environment_cannot_override_what_the_image_sets(key):
    with pytest.raises(PackageValidationError) as info:
        parse_manifest(YAML + f"environment:\n  {key}: /elsewhere\n")
    assert info.value.field == f"environment.{key}" and "cannot be overridden" in str(info.value)


@pytest.mark.parametrize("option", ["-r", "-c"])
def test_requirements_cannot_pull_dotenv_into_the_build(tmp_path, option):
    """.env stays out of the image, so requirements.txt may not include it either."""
    from builder.api import BuildOptions, prepare
    from builder.package.reader import open_package
    from tests.support.packages import make_agent
    agent = make_agent(tmp_path, "dotenv-include", requirements=f"{option} .env\n")
    with open_package(agent) as pkg, pytest.raises(PackageValidationError) as info:
        prepare(pkg, BuildOptions(), "https://pypi.org/simple/", "sha256:base")
    assert info.value.field == "requirements.txt" and ".env" in str(info.value)


def test_with_a_pip_that_reports_the_second_pass_runs_only_when_the_first_changed_something():
    """The seed's order (package, then requirements.txt so its pins win); the second pass is
    skipped when the first installed nothing but the package: the lines are then as the
    dependency layer left them. pip 20 (the py3.9 base) has no --report: the one pass stays."""
    from builder.plan.dockerfile import pip_reports
    runs = [i for i in _render(pip_report=True).instructions if i.startswith("RUN")]
    first = runs[2].index("pip install --no-compile -e /app --report /tmp/.agent-image-report.json")
    check = runs[2].index("sys.exit(any(i['download_info']['url'] != 'file:///app'")
    assert first < check < runs[2].index("|| pip install --no-compile -r /app/requirements.txt; }")
    assert "-e /app -r /app/requirements.txt" not in runs[2]
    uv = [i for i in _render(pip_report=True, installer="uv", base_has_uv=True).instructions if i.startswith("RUN")]
    assert "--report" not in uv[1], "uv has no --report: its one pass stays"
    hashed = [i for i in _render(pip_report=True, require_hashes=True).instructions if i.startswith("RUN")]
    assert "--report" not in hashed[1]
    abi = "distro=debian:12;python=3.11;venv=/opt/venv;uid=10001;pip={};setuptools=66.1.1"
    label = "io.pixell.agent-image.abi"
    assert pip_reports({label: abi.format("23.0.1")}) and pip_reports({label: abi.format("22.2")})
    assert not pip_reports({label: abi.format("20.3.4")}) and not pip_reports({}) and not pip_reports({label: "pip=x"})


def test_the_image_copy_of_requirements_is_rewritten_past_a_byte_order_mark(tmp_path):
    """pip reads past a UTF-8 BOM; the rewrite to proxy URLs must read the same line 1
    (the copy in /app is what the seed's second pass, pip 20 and uv read)."""
    from builder.api import BuildOptions
    from builder.package.reader import open_package
    from builder.plan.inputs import generated_files, read_split
    from builder.plan.proxied import proxy_url
    from tests.support.packages import make_agent
    agent = make_agent(tmp_path, "bom-extra", requirements=None)
    (agent / "requirements.txt").write_bytes(b"\xef\xbb\xbf--extra-index-url https://extra.example/simple/\nidna\n")
    options = BuildOptions(allow_index_hosts=frozenset({"extra.example"}))
    with open_package(agent) as pkg:
        generated, _ = generated_files(pkg, options, read_split(pkg, options), "FROM scratch\n")
    for copy in (".agent-image/meta/requirements.txt", ".agent-image/deps/requirements-deps.txt"):
        assert generated[copy].decode().splitlines()[0] == \
            f"--extra-index-url {proxy_url('https://extra.example/simple/')}", copy


def test_an_agent_set_drain_window_is_the_label():
    from builder.plan.dockerfile import drain_seconds
    assert drain_seconds({"AGENT_DRAIN_SECONDS": "40"}) == 40
    assert drain_seconds({"AGENT_DRAIN_SECONDS": "${DRAIN}"}) == 25  # decided at deploy: the shim's default
