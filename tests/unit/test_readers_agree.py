"""Trust, round 3: where pip, the image's older pip and uv could read one requirement
line differently, the policy refuses it, and the installers read the line as pip read
it (written_as_read), never the package's own text. And versions that would move the
builder's own tags are refused. No engine here."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.core.errors import IndexPolicyError, PackageValidationError
from builder.package.manifest import parse_manifest
from builder.package.piplines import logical_lines, parse_line, written_as_read_text
from builder.package.requirements import read_requirements
from builder.plan.dockerfile import render
from tests.support.packages import AGENT_YAML, make_agent

OUTSIDE = "/usr/share/python-wheels/setuptools-66.1.1-py3-none-any.whl"


def policy(tmp_path, text: str):
    (tmp_path / "requirements.txt").write_text(text)
    return read_requirements(tmp_path)


@pytest.mark.parametrize("text, says", [
    # the finding: pip's option parser drops the path, uv installs it
    (f"--no-index {OUTSIDE}\n", "pip drops '" + OUTSIDE),
    (f"--pre {OUTSIDE}\n", "pip drops"),
    ("--prefer-binary tinyreq\n", "pip drops 'tinyreq'"),
    ("-r other.txt extra\n", "pip drops 'extra'"),
    # pip reads only --hash on a requirement line; the rest it ignores
    ("tinyreq==1.0 --pre\n", "ignores the option for 'pre'"),
    ("tinyreq==1.0 --no-index\n", "ignores the option for 'no_index'"),
    ("tinyreq==1.0 -r other.txt\n", "ignores the option for 'requirements'"),
    # words pip unquotes or unescapes, which another reader may split otherwise
    ("-r 'other file.txt'\n", "quoted, escaped"),
    ('--only-binary ":all:"\n', None),  # (unquoted by pip to a plain word: accepted, written plain)
    ("-r other\\ file.txt\n", "quoted, escaped"),
    ("tinyreq==1.0\t--hash=sha256:" + "a" * 64 + "\n", "tab or a control character"),
])
def test_lines_the_readers_disagree_on_are_refused(tmp_path, text, says):
    (tmp_path / "other.txt").write_text("tinydep\n")
    (tmp_path / "other file.txt").write_text("tinydep\n")
    if says is None:
        policy(tmp_path, text)
        return
    with pytest.raises(IndexPolicyError) as err:
        policy(tmp_path, text)
    assert says in str(err.value) and "requirements.txt:1" in str(err.value)


def test_what_installers_read_is_each_line_as_pip_read_it():
    text = ("# a comment \\\n"              # pip: a comment never continues
            "tinyreq==1.0 \\\n"
            "    --hash=sha256:" + "a" * 64 + "   # pinned\n"
            "\n"
            "--index-url=https://example.org/simple/\n"
            "tinydep ; python_version < \"4\"  # marker kept, comment gone\n")
    out = written_as_read_text(text, "requirements.txt").split("\n")
    assert out[0] == ""                                                  # the comment
    assert out[1] == "tinyreq==1.0 --hash=sha256:" + "a" * 64            # joined at its first line's number
    assert out[2] == "" and out[3] == ""
    assert out[4] == "--index-url=https://example.org/simple/"
    assert out[5] == 'tinydep ; python_version < "4"'
    assert len(out) == 7  # six lines and the final newline: every line keeps its number


# requirement text built from pieces that readers have split differently
_NAME = st.sampled_from(["tinyreq", "tinydep", "sharedlib", "Tiny_Req", "tinyreq[extra]"])
_SPEC = st.sampled_from(["", "==1.0", ">=1,<2", " == 1.0", "~=1.0"])
_MARK = st.sampled_from(["", " ; python_version >= '3'", ';platform_system=="Linux"'])
_HASH = st.sampled_from(["", " --hash=sha256:" + "b" * 64, " --hash sha256:" + "c" * 64])
_TAIL = st.sampled_from(["", "  # note", " #", "\t# tab note", " \\", " # note \\"])
_OPTION = st.sampled_from(["--pre", "--prefer-binary", "--only-binary :all:", "--no-binary=tinyreq",
                           "--index-url https://example.org/simple/", "-i https://example.org/simple/",
                           "--no-index", "--require-hashes", "--trusted-host example.org"])
_STRAY = st.sampled_from(["", " " + OUTSIDE, " tinyreq", " ./lib"])
_LINE = st.one_of(
    st.builds(lambda n, s, m, h, t: f"{n}{s}{m}{h}{t}", _NAME, _SPEC, _MARK, _HASH, _TAIL),
    st.builds(lambda o, x, t: f"{o}{x}{t}", _OPTION, _STRAY, _TAIL),
    st.sampled_from(["", "# only a comment", "   ", "\\"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=6))
def test_pip_reads_the_rewrite_as_it_read_the_package(tmp_path_factory, lines):
    """For every text the policy accepts, the file the installers get parses, line for
    line, to what pip parsed from the package's text; and it is in the plain form: no
    comment, no continuation, no quoting, nothing after the options."""
    root = tmp_path_factory.mktemp("p")
    text = "\n".join(lines) + "\n"
    try:
        policy(root, text)
    except (IndexPolicyError, PackageValidationError):
        return
    written = written_as_read_text(text, "requirements.txt")
    assert written.count("\n") == len(text.splitlines())
    before = [(ln.number, parse_line(ln)) for ln in logical_lines(text)]
    after = [(ln.number, parse_line(ln)) for ln in logical_lines(written)]
    assert [(n, p.args.strip(), p.opts) for n, p in before] == [(n, p.args, p.opts) for n, p in after]
    for physical in written.splitlines():
        assert "#" not in physical.replace("#sha256=", "") and not physical.endswith("\\")
        assert not re.search(r"['\"\\\\]", physical.split(";", 1)[0])  # quotes only in a marker
        assert "\t" not in physical
    assert all(not parse_line(ln).stray for ln in logical_lines(written))


@pytest.mark.parametrize("version", ["latest", "LATEST", "in-0123456789abcdef0123", "In-house", "sha256-" + "0" * 64])
def test_a_version_that_is_one_of_the_builders_own_tags_is_refused(version):
    with pytest.raises(PackageValidationError) as err:
        parse_manifest(AGENT_YAML.format(name="a", display="A", runtime="python3.11", version=version))
    assert err.value.field == "metadata.version" and "tag agent-image writes itself" in str(err.value)
    assert err.value.exit_code == 10


@pytest.mark.parametrize("version", ["1.0.0", "2024.1", "1.0.0-rc.1", "latest-1", "main_3", "v1"])
def test_release_versions_pass(version):
    assert parse_manifest(AGENT_YAML.format(name="a", display="A", runtime="python3.11",
                                            version=version)).version == version


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_no_installer_reads_a_configuration_file(tmp_path, installer):
    """pip.conf (in the venv, a home folder, /etc) and uv.toml / [tool.uv] (found from /app, where
    the package is) never steer an install: every install step runs with them off."""
    manifest = parse_manifest(AGENT_YAML.format(name="cfg", display="Cfg", runtime="python3.11", version="1.0"))
    text = render(manifest, base_image="agent-image/base:py3.11", index_identity="i", deps=True, editable=True,
                  requirements=True, source_requirements=True, installer=installer).text
    args = " ".join(re.findall(r"^ARG (?:.*\\\n)*.*", text, re.M))
    first_run = min(text.index(m) for m in ("pip install", "uv pip install") if m in text)
    assert "PIP_CONFIG_FILE=/dev/null" in args and text.index("PIP_CONFIG_FILE") < first_run
    if installer == "uv":
        assert "UV_NO_CONFIG=1" in args and "UV_NO_SOURCES=1" in args


# --- the review's findings: each a class -------------------------------------------------

@pytest.mark.parametrize("text", [
    "-e=../outlib\n", "-e=/tmp/outside/lib\n", "-r=x.txt\n", "-c=x.txt\ntinyreq\n",  # pip: '=x', uv: 'x'
    "-rx.txt\n", "-e.\n",                                                            # joined short options
    "--editable==../outlib\n", "--requirement==x.txt\n",                              # a value starting with '='
])
def test_an_option_joined_to_its_value_is_refused(tmp_path, text):
    (tmp_path / "x.txt").write_text("tinyreq\n")
    (tmp_path / "=x.txt").write_text("tinyreq\n")
    with pytest.raises(IndexPolicyError) as err:
        policy(tmp_path, text)
    assert "requirements.txt:1" in str(err.value)


def test_an_include_through_a_symbolic_link_is_refused(tmp_path):
    """pip and uv join a nested include to the path as written (/app/f.txt -> /app/s.txt),
    not to where a link points (deep/dir/s.txt): the policy would read another file."""
    (tmp_path / "deep" / "dir").mkdir(parents=True)
    (tmp_path / "deep" / "dir" / "r.txt").write_text("-r s.txt\n")
    (tmp_path / "deep" / "dir" / "s.txt").write_text("tinyreq\n")
    (tmp_path / "s.txt").write_text("-e /\n")
    (tmp_path / "f.txt").symlink_to("deep/dir/r.txt")
    with pytest.raises(IndexPolicyError) as err:
        policy(tmp_path, "-r f.txt\n")
    assert "symbolic link" in str(err.value) and "requirements.txt:1" in str(err.value)
    # '..' after a link: pip 24+ normalises the text (a/b.txt), pip 23 and uv follow the link (deep/b.txt)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "lnk").symlink_to("../deep/dir")
    (tmp_path / "a" / "b.txt").write_text("-e /\n")
    (tmp_path / "deep" / "b.txt").write_text("tinyreq\n")
    with pytest.raises(IndexPolicyError):
        policy(tmp_path, "-r a/lnk/../b.txt\n")
    # the same files without links pass
    assert policy(tmp_path, "-r deep/dir/r.txt\n").deps


@pytest.mark.parametrize("entry", ["http:/agent-image-index.invalid/simple/foo/index.html", "https:/x/y",
                                   "file:/etc/x"])
def test_a_folder_named_like_a_url_scheme_is_refused(tmp_path, entry):
    """pip takes its index URL for a path when that path exists in /app: a package folder
    'http:' holding 'agent-image-index.invalid/simple/' would be the build's index."""
    import zipfile

    from builder.package.reader import open_package
    agent = make_agent(tmp_path, "schemey", requirements="tinyreq\n")
    (agent / entry).parent.mkdir(parents=True)
    (agent / entry).write_text('<a href="file:///tmp/outside/foo-1.0-py3-none-any.whl">foo</a>')
    with pytest.raises(PackageValidationError) as err:
        open_package(agent).__enter__()
    assert "named like a URL scheme" in str(err.value)
    apkg = tmp_path / "schemey-0.1.0.apkg"
    with zipfile.ZipFile(apkg, "w") as zf:
        for f in sorted(agent.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(agent).as_posix())
    with pytest.raises(PackageValidationError) as err:
        open_package(apkg).__enter__()
    assert "named like a URL scheme" in str(err.value)


# --- the second review's findings ----------------------------------------------------------

@given(st.text(alphabet=" \t#a\xa0\u3000\u2003x", max_size=40))
@settings(max_examples=2000, deadline=None)
def test_comments_are_cut_where_pips_own_pattern_cuts_them(line):
    from pip._internal.req.req_file import COMMENT_RE

    from builder.package.piplines import comment_start
    assert line[:comment_start(line)].strip() == COMMENT_RE.sub("", line).strip()


def test_a_long_run_of_spaces_is_read_in_linear_time(tmp_path):
    """pip's comment pattern took 50 s over 100,000 spaces; the policy reads the file at once."""
    import time
    started = time.monotonic()
    with pytest.raises((IndexPolicyError, PackageValidationError)):
        policy(tmp_path, "foo" + " " * 100_000 + "x\n")
    assert time.monotonic() - started < 10  # (a generous bound: it takes well under a second)


@pytest.mark.parametrize("text", ["--only-binary -x\n", "--no-binary -\n", "--only-binary --pre\n",
                                  "tinyreq\n--only-binary=-\n"])
def test_an_option_pips_own_callback_refuses_is_a_syntax_error(tmp_path, text):
    from builder.core.errors import RequirementsSyntaxError
    with pytest.raises(RequirementsSyntaxError) as err:
        policy(tmp_path, text)
    assert err.value.exit_code == 12 and "requirements.txt:" in str(err.value)


def test_the_file_a_dotenv_link_points_at_stays_out(tmp_path):
    """`.env -> config/prod.env`: the target holds the secrets, under a name that is not .env."""
    from builder.package.reader import open_package
    from builder.plan.inputs import kept_out, read_split
    from builder.plan.options import BuildOptions
    agent = make_agent(tmp_path, "linked", requirements="tinyreq\n", env_file=None)
    (agent / "config").mkdir()
    (agent / "config" / "prod.env").write_text("API_KEY=sk-live-SECRET-0123\n")
    (agent / ".env").symlink_to("config/prod.env")
    with open_package(agent) as pkg:
        assert "config/prod.env" in kept_out(pkg, BuildOptions())
        from builder.package.dotenv import env_values
        assert "sk-live-SECRET-0123" in env_values(pkg.root, pkg.env_paths)
    (agent / "requirements.txt").write_text("-r config/prod.env\n")
    with open_package(agent) as pkg, pytest.raises(PackageValidationError) as err:
        read_split(pkg, BuildOptions())
    assert "kept out" in str(err.value) and "sk-live" not in str(err.value)
