"""requirements.txt -> numbered lines, the index policy, and the layer split.

Pure functions over text. The split is what makes code-only changes cheap:
lines that need no source go into a dependency layer built before the
package's files are copied in; lines that need the source (``-e .``, local
paths) are installed after, together with the seed's
``pip install -r requirements.txt`` pass that keeps its pins winning.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .errors import IndexPolicyError, PackageValidationError

# options that point pip at another index or file source
INDEX_OPTIONS = {
    "-i": "--index-url", "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links", "--find-links": "--find-links",
    "--trusted-host": "--trusted-host",
}
INCLUDE_OPTIONS = {"-r": "-r", "--requirement": "-r", "-c": "-c", "--constraint": "-c"}
EDITABLE_OPTIONS = {"-e", "--editable"}
MAX_INCLUDE_DEPTH = 5


@dataclass(frozen=True)
class Line:
    """One logical requirements line (continuations joined, comment stripped)."""
    file: str     # path relative to the package root
    number: int   # 1-based line number where the logical line starts
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


@dataclass(frozen=True)
class Split:
    deps: list[Line]        # installable before the source is copied
    source: list[Line]      # need the package's files (editable, local paths)
    constraints: dict[str, str]  # -c files: name in context -> content
    real_lines: int         # lines that are neither blank nor comment
    includes: tuple[str, ...] = ()  # files -r/-c name, relative to the package root

    @property
    def deps_text(self) -> str:
        return "".join(f"{ln.text}\n" for ln in self.deps)

    @property
    def hashed(self) -> bool:
        """Does any line pin a hash (pip's hash-checking mode for the whole file)?"""
        return any("--hash" in ln.text for ln in (*self.deps, *self.source))


_COMMENT = re.compile(r"(^|\s+)#.*$")


def normalise(name: str) -> str:
    """A project name as PEP 503 compares them: runs of -_. are one '-', case folded."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(text: str, file: str = "requirements.txt") -> list[Line]:
    """Join backslash continuations and drop comments and blanks, as pip does."""
    out: list[Line] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not buf:
            start = number
        if raw.endswith("\\") and not _COMMENT.search(raw):
            buf += raw[:-1] + " "
            continue
        buf += raw
        line = _COMMENT.sub("", buf).strip()
        buf = ""
        if line:
            out.append(Line(file, start, line))
    if buf.strip():
        out.append(Line(file, start, _COMMENT.sub("", buf).strip()))
    return out


def _tokens(line: Line) -> list[str]:
    try:
        return shlex.split(line.text)
    except ValueError:
        return line.text.split()


def _option(tok: str) -> tuple[str, str | None]:
    """'--index-url=X' -> ('--index-url', 'X'); '-iX' -> ('-i', 'X')."""
    if tok.startswith("--") and "=" in tok:
        name, value = tok.split("=", 1)
        return name, value
    if len(tok) > 2 and tok[:2] in ("-i", "-f", "-r", "-c", "-e") and not tok.startswith("--"):
        return tok[:2], tok[2:]
    return tok, None


def _host(value: str) -> str:
    parts = urlsplit(value if "://" in value else f"//{value}")
    return (parts.hostname or value).lower()


def check_policy(lines: list[Line], allowed_hosts: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse lines that point pip at another index, unless the host is allowed."""
    allowed = {h.lower() for h in allowed_hosts}
    for line in lines:
        toks = _tokens(line)
        for i, tok in enumerate(toks):
            name, value = _option(tok)
            if name not in INDEX_OPTIONS:
                continue
            if value is None:
                value = toks[i + 1] if i + 1 < len(toks) else ""
            host = _host(value) if value else ""
            if host and host in allowed:
                continue
            raise IndexPolicyError(
                f"{line.where}: '{INDEX_OPTIONS[name]}' points pip at {host or 'another source'}; "
                f"requirements may not choose their own index (dependency confusion)",
                line=line.number, requirement=line.text, field=line.file,
                hint=f"Remove the line, or allow the host with --allow-index-host {host or 'HOST'}.")


def _needs_source(tokens: list[str]) -> bool:
    first = tokens[0]
    if first in EDITABLE_OPTIONS or first.startswith("-e"):
        return True
    target = first
    if " @ " in " ".join(tokens):
        target = " ".join(tokens).split(" @ ", 1)[1].strip()
    return target.startswith((".", "/", "file:", "~")) or target in (".",)


def _resolve_include(root: Path, base_file: str, name: str, line: Line) -> tuple[str, str]:
    rel = (PurePosixPath(base_file).parent / name).as_posix()
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise PackageValidationError(
            f"{line.where}: '{line.text}' includes a file outside the package", line=line.number,
            requirement=line.text, field=line.file)
    if not target.is_file():
        raise PackageValidationError(
            f"{line.where}: '{line.text}' names {rel}, which is not in the package", line=line.number,
            requirement=line.text, field=line.file, hint="Add the file to the package or remove the line.")
    return target.relative_to(root.resolve()).as_posix(), target.read_text(encoding="utf-8", errors="replace")


def read_requirements(root: Path, allowed_hosts: frozenset[str] | set[str] = frozenset(),
                      file: str = "requirements.txt") -> Split:
    """Read ROOT/requirements.txt (following -r/-c inside the package) and split it."""
    deps: list[Line] = []
    source: list[Line] = []
    constraints: dict[str, str] = {}
    included: list[str] = []
    real = 0

    def visit(rel: str, text: str, depth: int) -> None:
        nonlocal real
        lines = logical_lines(text, rel)
        check_policy(lines, allowed_hosts)
        for line in lines:
            real += 1
            toks = _tokens(line)
            name, value = _option(toks[0])
            if name in INCLUDE_OPTIONS:
                target = value if value is not None else (toks[1] if len(toks) > 1 else "")
                if depth >= MAX_INCLUDE_DEPTH:
                    raise PackageValidationError(f"{line.where}: requirements includes nest deeper than "
                                                 f"{MAX_INCLUDE_DEPTH}", line=line.number, field=line.file)
                inc_rel, inc_text = _resolve_include(root, rel, target, line)
                included.append(inc_rel)
                if INCLUDE_OPTIONS[name] == "-r":
                    visit(inc_rel, inc_text, depth + 1)
                else:
                    key = f"constraints-{len(constraints) + 1}.txt"
                    constraints[key] = inc_text
                    deps.append(Line(line.file, line.number, f"-c {key}"))
                continue
            (source if _needs_source(toks) else deps).append(line)

    path = root / file
    if path.is_file():
        visit(file, path.read_text(encoding="utf-8", errors="replace"), 0)
    # hash-checking mode is all-or-nothing in pip: keep hashed files whole
    return Split(deps=deps, source=source, constraints=constraints, real_lines=real,
                 includes=tuple(dict.fromkeys(included)))
