"""Trust, round 3: what is read before the engine is bounded, odd bytes are named refusals,
and a hard link to .env stays out. Pure: no engine (the unit tier's DOCKER_HOST leads nowhere)."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile

import pytest

from builder.api import BuildOptions, build_image
from builder.core.errors import BuildTimeoutError, PackageLoadError, PackageValidationError, RequirementsSyntaxError
from builder.package import requirements as req
from builder.package.reader import open_package
from builder.package.requirements import read_requirements
from builder.plan.context import build_context
from builder.plan.inputs import added_files, kept_out, read_split
from tests.support.packages import AGENT_YAML, make_agent


def _files(root, files: dict[str, str | bytes]):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def _fan_out(root, levels: int, fan: int):
    files = {"requirements.txt": "-r l1.txt\n" * fan, f"l{levels}.txt": "tinyreq==1.0\n"}
    files.update({f"l{i}.txt": f"-r l{i + 1}.txt\n" * fan for i in range(1, levels)})
    return _files(root, files)


# --- 3. unbounded reading ------------------------------------------------------------------------

@pytest.mark.parametrize("fan", [8, 12])
def test_a_fan_out_include_graph_is_refused_at_once(tmp_path, fan):
    """Five levels, FAN lines each: pip would read the last file FAN**4 times (the issue's 37 s / 242 s)."""
    started = time.monotonic()
    with pytest.raises(PackageValidationError, match=rf"l\d\.txt:\d+: pip would follow more than "
                                                      rf"{req.MAX_INCLUDES} -r/-c includes") as info:
        read_requirements(_fan_out(tmp_path, 5, fan))
    assert time.monotonic() - started < 2
    assert info.value.exit_code == 10 and info.value.field.startswith("l") and info.value.line


def test_a_file_included_twice_is_read_once(tmp_path, monkeypatch):
    _files(tmp_path, {"requirements.txt": "-r dev.txt\n-r prod.txt\n", "dev.txt": "-r base.txt\npytest==8\n",
                      "prod.txt": "-r base.txt\n-r base.txt\n", "base.txt": "tinyreq==1.0\n"})
    reads = []
    real = req._Reader.read
    monkeypatch.setattr(req._Reader, "read", lambda self, rel, line: reads.append(rel) or real(self, rel, line))
    split = read_requirements(tmp_path)
    assert sorted(reads) == ["base.txt", "dev.txt", "prod.txt", "requirements.txt"]
    assert [ln.text for ln in split.deps] == ["tinyreq==1.0", "pytest==8"]
    assert split.includes == ("dev.txt", "base.txt", "prod.txt")


@pytest.mark.parametrize("order", [("-r", "-c"), ("-c", "-r")])
def test_a_file_read_as_requirements_and_constraints_is_policed_as_constraints(tmp_path, order):
    """Read once as requirements does not let it pass as a constraints file: a path is refused there."""
    (tmp_path / "lib").mkdir()
    _files(tmp_path, {"requirements.txt": f"{order[0]} both.txt\n{order[1]} both.txt\n", "both.txt": "./lib\n"})
    with pytest.raises(PackageLoadError, match="both.txt:1: a constraints file names a URL, a path"):
        read_requirements(tmp_path)


def test_a_file_as_requirements_and_constraints_is_both(tmp_path):
    _files(tmp_path, {"requirements.txt": "-r pins.txt\n-c pins.txt\n-c pins.txt\n", "pins.txt": "tinyreq==1.0\n"})
    split = read_requirements(tmp_path)
    assert [ln.text for ln in split.deps] == ["tinyreq==1.0", "-c constraints-1.txt"]
    assert split.constraints == {"constraints-1.txt": "tinyreq==1.0\n"}


def test_an_include_cycle_is_refused(tmp_path):
    _files(tmp_path, {"requirements.txt": "-r a.txt\n", "a.txt": "x==1\n-r b.txt\n", "b.txt": "-r ./a.txt\n"})
    with pytest.raises(PackageValidationError, match=r"b.txt:1: '-r ./a.txt' includes a.txt, which is being read"):
        read_requirements(tmp_path)


@pytest.mark.parametrize("files, match", [
    ({"requirements.txt": "-r big.txt\n", "big.txt": "x==1\n" * (req.MAX_BYTES // 5 + 1)},
     r"requirements.txt:1: requirements files hold more than 8 MiB together \(at big.txt\)"),
    ({"requirements.txt": "x==1\n" * (req.MAX_LINES + 1)}, rf"requirements.txt:{req.MAX_LINES + 1}: .* more than"),
    ({"requirements.txt": "x==1 " + "\\\n --hash=sha256:" + "a" * req.MAX_LINE_CHARS + "\n"},
     rf"requirements.txt:1: a line longer than {req.MAX_LINE_CHARS}"),
])
def test_caps_are_named_refusals(tmp_path, files, match):
    with pytest.raises(PackageValidationError, match=match) as info:
        read_requirements(_files(tmp_path, files))
    assert info.value.exit_code == 10 and info.value.hint


def test_reading_stops_at_the_deadline(tmp_path):
    with pytest.raises(BuildTimeoutError, match="--timeout passed while reading"):
        read_requirements(_files(tmp_path, {"requirements.txt": "x==1\n"}), deadline=time.monotonic() - 1)
    agent = make_agent(tmp_path / "f", "late")
    with pytest.raises(BuildTimeoutError):
        open_package(agent, deadline=time.monotonic() - 1)


def test_timeout_covers_the_reading_before_the_engine(tmp_path):
    """The unit tier has no engine: reaching for it would be EngineError, not the timeout."""
    agent = make_agent(tmp_path, "slow", requirements="x==1\n")
    with pytest.raises(BuildTimeoutError) as info:
        build_image(agent, BuildOptions(timeout=1e-9))
    assert info.value.exit_code == 41


# --- 4. odd bytes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, number", [
    (b"-r a\x00b\n", 1), (b"x==1\n./lib\x00/x\n", 2), (b"x==1\ry==2\n", 1), (b"x==1\n\x0c--index-url h\n", 2),
    (b"x==1\x0b\n", 1), ("x==1\u2028-i https://evil\n".encode(), 1), ("x==1\x85\n".encode(), 1), (b"\x1bx==1\n", 1),
])
def test_control_characters_in_requirements_are_refused_with_the_line(tmp_path, text, number):
    with pytest.raises(RequirementsSyntaxError, match=rf"^requirements.txt:{number}: holds the control") as info:
        read_requirements(_files(tmp_path, {"requirements.txt": text}))
    assert info.value.line == number and info.value.field == "requirements.txt"


def test_crlf_and_tabs_stay_allowed(tmp_path):
    split = read_requirements(_files(tmp_path, {"requirements.txt": b"x==1\r\ny==2\t# pin\r\n"}))
    assert [ln.text for ln in split.deps] == ["x==1", "y==2"]


@pytest.mark.parametrize("text", ["-r " + "a" * 300, "-r " + "a/" * 3000 + "x", "file:///app/%00x", "./" + "b" * 300])
def test_paths_the_file_system_cannot_look_up_are_refused(tmp_path, text):
    try:
        read_requirements(_files(tmp_path, {"requirements.txt": text + "\n"}))
    except PackageLoadError as exc:
        assert 10 <= exc.exit_code <= 12 and str(exc).startswith("requirements.txt:1:"), exc


def _zip(path, names: dict[str, bytes], flag_utf8: bool = False):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in names.items():
            info = zipfile.ZipInfo(name)
            zf.writestr(info, data)
    if flag_utf8:  # a name flagged UTF-8 that is not: zipfile raises UnicodeDecodeError reading it
        raw = path.read_bytes().replace(b"agent.yamX", b"agent.ya\xff\xfe")
        path.write_bytes(raw.replace(b"\x14\x00\x00\x00", b"\x14\x00\x00\x08"))
    return path


@pytest.mark.parametrize("name", ["src/a\nb.py", "src/\rx.py", "src/x\x1b[2J.py", "src/\x7f.py"])
def test_control_characters_in_zip_entry_names_are_refused(tmp_path, name):
    apkg = _zip(tmp_path / "a.apkg", {"agent.yaml": AGENT_YAML.encode(), name: b""})
    with pytest.raises(PackageValidationError, match="control character") as info:
        open_package(apkg)
    assert info.value.field == name


def test_a_zip_name_flagged_utf8_that_is_not_is_refused(tmp_path):
    apkg = _zip(tmp_path / "a.apkg", {"agent.yamX": b"x"}, flag_utf8=True)
    with pytest.raises(PackageValidationError, match="a.apkg"):
        open_package(apkg)


def test_control_characters_in_folder_names_are_refused(tmp_path):
    agent = make_agent(tmp_path, "ctl", extra={"src/a\rb.py": ""})
    with pytest.raises(PackageValidationError, match="control character"):
        open_package(agent)


# --- 6. a hard link to .env ------------------------------------------------------------------------

def test_a_hard_link_to_env_stays_out_of_the_context_and_of_includes(tmp_path):
    agent = make_agent(tmp_path, "linked", requirements="tinyreq==1.0\n", env_file="KEY=sk-linked-secret-9999\n",
                       extra={".env.d/inner": "INNER=sk-inner-secret-8888\n"})
    os.link(agent / ".env", agent / "config.txt")
    os.link(agent / ".env.d" / "inner", agent / "src" / "data.txt")
    options = BuildOptions()
    with open_package(agent) as pkg:
        assert pkg.env_aliases == ["config.txt", "src/data.txt"]
        split = read_split(pkg, options)
        added, _ = added_files(pkg, options, split)
        context = build_context(pkg.root, added, exclude=kept_out(pkg, options))
        names = tarfile.open(fileobj=io.BytesIO(context.data)).getnames()
        assert "app/src/main.py" in names
        assert not [n for n in names if n.endswith(("config.txt", "data.txt", ".env"))], names
        assert b"sk-linked-secret" not in context.data and b"sk-inner-secret" not in context.data
        (agent / "requirements.txt").write_text("tinyreq==1.0\n-r config.txt\n")
        with pytest.raises(PackageValidationError, match="requirements.txt:2: requirements include config.txt"):
            read_split(pkg, options)
    (agent / "requirements.txt").unlink()
    os.link(agent / ".env", agent / "requirements.txt")
    with open_package(agent) as pkg, pytest.raises(PackageValidationError,
                                                   match="requirements.txt is the same file as a .env") as info:
        read_split(pkg, options)
    assert "sk-linked" not in str(info.value)
