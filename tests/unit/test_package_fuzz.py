"""Property tests: any bytes in a package file end in success or a named refusal.

Random and hostile bytes are spliced into a valid requirements.txt (and a file it
includes), agent.yaml, .env and zip member names, in a folder package and in an
.apkg; the package is read through the functions a build calls before the engine
(open_package, read_split, env_values). Each must succeed or raise a
PackageLoadError with exit code 10-12 whose message names the file; never another
exception (ValueError from os functions, UnicodeError, RecursionError, yaml's).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.api import prepare
from builder.core.errors import PackageLoadError
from builder.core.redact import redact
from builder.package.dotenv import env_values
from builder.package.reader import open_package
from builder.plan.options import BuildOptions
from tests.support.packages import AGENT_YAML

SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 120)), deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {
    "agent.yaml": AGENT_YAML.format(name="fuzz", display="Fuzz", runtime="python3.11", version="0.1.0").encode(),
    "requirements.txt": b"tinyreq==1.0\n-r extra.txt\n-c pins.txt\n./lib\n",
    "extra.txt": b"other==2.0 --hash=sha256:" + b"a" * 64 + b"\n",
    "pins.txt": b"tinyreq==1.0\n",
    ".env": b"KEY=sk-fuzz-secret-1234\nexport B='quoted value'\n",
    "src/main.py": b"def handler(c):\n    return c\n",
    "lib/setup.py": b"",
}
# bytes that have broken readers: NUL and other controls, line ends, invalid and odd UTF-8 (a lone
# surrogate, a BOM, U+2028), path and option syntax, YAML tags, anchors and flow syntax
HOSTILE = [b"\x00", b"\r", b"\n", b"\r\n", b"\x0b", b"\x0c", b"\x1b", b"\x7f", b"\x85", b"\xc2\x85", b"\xff",
           b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xff\xfe", "\u2028".encode(), b"\\", b"\\\n", b"/", b"..", b"../",
           b"~", b"%00", b"file:///", b"-r ", b"-c ", b"-e ", b"-r /etc/passwd", b"-r extra.txt\n", b"-c extra.txt\n",
           b"${HOME}", b"#", b" ", b"\t", b"[", b"]", b"{", b"}", b"&a ", b"*a", b"!!python/object:os.system ",
           b"!!binary ", b"? ", b": ", b"- ", b"'", b'"', b"@", b";", b"=", b"a" * 300, b"\xe6\xbc\xa2",
           b'"\\ud800"', b' "\\x00"', b'"\\U0001F600"']
chunks = st.lists(st.sampled_from(HOSTILE) | st.binary(max_size=6), min_size=1, max_size=6).map(b"".join)
splices = st.lists(st.tuples(st.floats(0, 1), st.booleans(), chunks), min_size=1, max_size=4)


def splice(data: bytes, edits) -> bytes:
    """DATA with each chunk inserted (or written over as many bytes) at a relative position."""
    for where, overwrite, chunk in edits:
        at = int(where * len(data))
        data = data[:at] + chunk + data[at + (len(chunk) if overwrite else 0):]
    return data


def _check(err: PackageLoadError, names) -> None:
    assert 10 <= err.exit_code <= 12, (type(err).__name__, err.exit_code, str(err))
    text = str(err)
    # (a long name is shown by its first 80 characters; messages are redacted: 'passwd:x' reads 'passwd:***')
    # (names are shown with repr, whose quoting depends on the quotes in them; a long one by its start)
    flat = _unquoted(text)
    assert any(n in text or _unquoted(shown)[:40] in flat for n in names for shown in (repr(n), redact(repr(n)))
               if n) or ("entry ''" in text and "" in names), (text, err.field)


def _unquoted(text: str) -> str:
    return re.sub(r"[\\'\"]", "", text)


def _read(source: Path, names) -> None:
    """What a build does before the engine, as a folder or an .apkg."""
    try:
        with open_package(source) as pkg:
            env_values(pkg.root, pkg.env_paths)
            # and what is made of it, engine-free (the Dockerfile, the context, their digest)
            prepare(pkg, BuildOptions(), "https://pypi.org/simple/", "sha256:base")
    except PackageLoadError as err:
        _check(err, names)


def _folder(files: dict[str, bytes], root: Path) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _apkg(files: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


FILE_NAMES = ["agent.yaml", "requirements.txt", "extra.txt", "pins.txt", ".env"]


@SETTINGS
@given(target=st.sampled_from(FILE_NAMES), edits=splices, zipped=st.booleans())
def test_any_bytes_in_a_package_file_are_read_or_refused_by_name(target, edits, zipped):
    files = {**GOOD, target: splice(GOOD[target], edits)}
    with tempfile.TemporaryDirectory() as tmp:
        source = _apkg(files, Path(tmp) / "fuzz.apkg") if zipped else _folder(files, Path(tmp) / "fuzz")
        _read(source, [*FILE_NAMES, "fuzz.apkg", "constraints"])


@SETTINGS
@given(target=st.sampled_from(["src/main.py", "requirements.txt", "extra.txt", ".env", "lib/setup.py"]),
       edits=splices)
def test_any_bytes_in_a_zip_member_name_are_read_or_refused_by_name(target, edits):
    name = splice(target.encode(), edits).decode("utf-8", "surrogateescape")
    files = {**GOOD}
    data = files.pop(target)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.apkg"
        with zipfile.ZipFile(path, "w") as zf:
            for rel, body in files.items():
                zf.writestr(rel, body)
            info = zipfile.ZipInfo(name.encode("utf-8", "surrogateescape").decode("cp437"))
            zf.writestr(info, data)
        _read(path, [*FILE_NAMES, "fuzz.apkg", info.filename])


@SETTINGS
@given(name=st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\x00" not in b))
def test_any_file_name_in_a_folder_is_read_or_refused_by_name(name):
    with tempfile.TemporaryDirectory() as tmp:
        root = _folder(GOOD, Path(tmp) / "fuzz")
        try:
            (root / "src" / os.fsdecode(name)).write_bytes(b"x")
        except OSError:  # the file system's own refusal (too long, '.', '..'): not a package
            return
        _read(root, [*FILE_NAMES, f"src/{os.fsdecode(name)}"])
