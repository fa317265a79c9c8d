"""requirements.txt -> numbered lines, the index policy, and the layer split.

Lines are read the way pip reads them, with pip's own code (builder/package/piplines.py).
pip's parser only parses here: includes are followed by this module, inside
the package, and nothing is fetched. The policy is an allow-list: options
known to reach nothing (``--hash``, ``--pre``, ...), names from the index,
and paths inside the package; everything else is refused with the file and line.

The split is what makes code-only changes cheap: lines that need no source
go into a dependency layer built before the package's files are copied in;
lines that need the source (``-e .``, local paths) are installed after,
together with the seed's ``pip install -r requirements.txt`` pass that keeps
its pins winning. Lines are kept exactly as pip reads them.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from builder.core.deadline import check_deadline
from builder.core.errors import PackageValidationError, RequirementsSyntaxError
from builder.core.urls import Disagreement, read_url
from builder.package.agree import check_readers_agree
from builder.package.piplines import (APP, BACKEND_OPTIONS, BESIDE_INDEX_URL, INDEX_URL_OPTIONS, SCHEME, Line, decode,
                                      logical_lines, parse_line, pip_path, refuse, requirement_targets, strip_extras,
                                      subdirectories, under_app, values, written_as_read)

# options that point pip at another index or file source (pip's dest -> its name)
INDEX_OPTIONS = {**INDEX_URL_OPTIONS, "trusted_hosts": "--trusted-host"}
# options that change how pip picks among the index's files, and reach nothing else
HARMLESS = frozenset({"no_index", "prefer_binary", "require_hashes", "no_require_hashes", "pre", "format_control",
                      "release_control", "features_enabled", "hashes"})
INCLUDES = {"requirements": "-r", "constraints": "-c"}
VCS_SCHEMES = frozenset({"git", "hg", "svn", "bzr"})
ENV_VAR = re.compile(r"\$\{[A-Z0-9_]+\}")  # pip fills these from the build's environment
MAX_INCLUDE_DEPTH = 5
# Bounds on the reading, which runs before the engine and the build's sandbox: a hashed lock file
# of a thousand projects is ~3 MiB, a few thousand lines, its longest line (every wheel's hash) a
# few KiB, and real packages include a handful of files. Each cap is far above that, and keeps
# the reading under a second or two (a line costs ~0.2 ms through pip's own option parser).
MAX_BYTES = 8 * 1024 * 1024   # read from all requirement files together (each file once)
MAX_LINES = 5_000             # logical lines, all files together
MAX_LINE_CHARS = 64 * 1024    # one logical line, continuations joined
MAX_INCLUDES = 100            # -r/-c lines as pip follows them: repeats count, so a fan-out graph cannot hide


@dataclass(frozen=True)
class Split:
    deps: list[Line]        # installable before the source is copied
    source: list[Line]      # need the package's files (editable, local paths)
    constraints: dict[str, str]  # -c files: name in context -> content
    real_lines: int         # lines that are neither blank nor comment
    includes: tuple[str, ...] = ()  # files -r/-c name (and requirements.txt's own target), from the package root
    direct: frozenset[str] = frozenset()  # URLs on --allow-index-host hosts that lines install from (name @ URL)

    @property
    def deps_text(self) -> str:
        """The dependency lines as pip read them (piplines.written_as_read), one a line."""
        return "".join(f"{written_as_read(ln)}\n" for ln in self.deps)

    @property
    def hashed(self) -> bool:
        """Does any line pin a hash (pip's hash-checking mode for the whole file)?"""
        return any("--hash" in ln.text for ln in (*self.deps, *self.source))


def _host(value: str, line: Line, option: str) -> str:
    """The host a URL (or a --trusted-host value) names, as the index proxy will connect to it
    (builder/core/urls.py); refused when it could read two ways."""
    url = value if "://" in value else f"http://{value}/"
    try:
        if re.search(r"\s", value):  # (Unicode spaces too: urls.py names only ASCII ones)
            raise Disagreement("a space in the URL")
        return read_url(url).host
    except Disagreement as exc:
        raise refuse(line, f"{option} {value!r} has credentials, a backslash, a space or an address URL parsers "
                            f"read differently in it ({exc})",
                      "Name the host plainly; the builder adds index credentials itself.") from None


def _inside(path: str, line: Line, root: Path) -> None:
    """A local path must stay inside the package: relative (the installs run in /app), or under /app;
    both as pip reads it (normalised as text: '..' undoes a link) and as the package's links resolve."""
    pure = PurePosixPath(path)
    real_root = root.resolve()
    inside = not path.startswith("~") and under_app(posixpath.normpath(posixpath.join(str(APP), path)))
    if pure.is_absolute():
        inside = inside and (pure == APP or APP in pure.parents)
        pure = pure.relative_to(APP) if inside else pure
    try:  # ('file:///app/%00' unquotes to a NUL: ValueError; a name too long: OSError)
        target = (real_root / pure).resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise refuse(line, f"'{path[:200]}' is a path the file system cannot look up ({type(exc).__name__})",
                     "Name a file inside the package by a plain relative path.") from None
    if not inside or (target != real_root and real_root not in target.parents):
        raise refuse(line, f"'{path}' is outside the package: pip would install from the image's or the "
                            "builder's file system", "Put the file in the package and name it ./relative/path.")


def _target(value: str, line: Line, root: Path, allowed: set[str]) -> str:
    """Where a requirement or -e installs from: 'remote' (an allowed host) or 'local' (in the package)."""
    scheme = SCHEME.match(value)
    if not scheme:
        _inside(value, line, root)
        return "local"
    name = scheme.group(1).lower()
    if name in VCS_SCHEMES or "+" in name:
        raise refuse(line, f"'{value}' is a VCS reference: the build has no VCS access (refused even with "
                            "--allow-index-host)", "Publish the package to the index and name its version.")
    if name in ("http", "https"):
        host = _host(value, line, "the URL")
        if host and host in allowed:
            return "remote"
        raise refuse(line, f"'{value}' is a direct reference: pip would fetch it from {host or 'elsewhere'}, "
                            "not from the index", f"Publish it to the index, or allow the host with "
                                                  f"--allow-index-host {host or 'HOST'}.")
    if name == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise refuse(line, f"'{value}' names a file on another host", "Put the file in the package.")
        _inside(unquote(parts.path), line, root)
        return "local"
    raise refuse(line, f"'{value}' is a {name}: URL; pip may only install from the index or the package",
                  "Publish the package to the index.")


def _check_options(line: Line, parsed, allowed: set[str]) -> None:
    """The line's options: indexes only on allowed hosts, nothing that steers a package's build."""
    for dest, option in INDEX_OPTIONS.items():
        if dest not in parsed.opts:
            continue
        given = f" (written '{parsed.written[dest]}')" if dest in parsed.written else ""
        for value in values(parsed.opts[dest]):
            if dest != "trusted_hosts" and not re.match(r"https?://", value, re.I):
                raise refuse(line, f"'{option}'{given} {value!r} has no http:// or https://: pip would read it "
                                    "as a path in the image", "Write the index's whole URL (https://HOST/...).")
            host = _host(value, line, option)
            if not host or host not in allowed:
                raise refuse(line, f"'{option}'{given} points pip at {value}; requirements may not choose "
                                    "their own index (dependency confusion)",
                              f"Remove the line, or allow the host with --allow-index-host {host or 'HOST'}.")
    beside = set(parsed.opts) - set(INDEX_URL_OPTIONS) - set(BESIDE_INDEX_URL)
    if set(parsed.opts) & set(INDEX_URL_OPTIONS) and beside and not parsed.args:
        raise refuse(line, f"an index option shares its line with the option for {sorted(beside)[0]!r}",
                     "Give the index option its own line.")
    for dest, value in parsed.opts.items():
        if dest in BACKEND_OPTIONS:
            raise refuse(line, f"'{BACKEND_OPTIONS[dest]}' passes options to a package's build, which can "
                                "fetch from anywhere", "Remove the option: the builder decides how packages build.")
        if dest not in HARMLESS and dest not in INDEX_OPTIONS and dest not in INCLUDES and dest != "editables":
            raise refuse(line, f"the option for {dest!r} is not one agent-image lets a package set",
                          "Remove the option.")
    for dest, given in parsed.abbreviated.items():
        raise refuse(line, f"'{given}' is an abbreviated option (pip expands it to the option it prefixes; the "
                            "older pips in the images may expand it to another)", "Write the option's full name.")


def check_line(line: Line, root: Path, allowed: set[str], constraint: bool = False,
               direct: list[str] | None = None) -> tuple[str, tuple[str, str] | None]:
    """Police one line. Returns ('deps' | 'source', None), or ('include', (option, file)).
    DIRECT gets the URLs on allowed hosts the line installs from (the proxy serves those only).
    What the line does is checked first (its refusals name it plainest), then that every reader
    reads it alike."""
    verdict = _check_what(line, root, allowed, constraint, direct)
    check_readers_agree(line, parse_line(line))
    return verdict


def _check_what(line: Line, root: Path, allowed: set[str], constraint: bool,
                direct: list[str] | None) -> tuple[str, tuple[str, str] | None]:
    if ENV_VAR.search(line.text):
        raise refuse(line, f"'{ENV_VAR.search(line.text).group(0)}' is filled from the build's environment, "
                            "so the line could name anything", "Write the value out.")
    if line.text.endswith("\\"):  # what is written back (the dependency file, a rewrite) would join the next line
        raise refuse(line, "ends in a backslash that pip does not join to the next line (a space or a comment "
                            "follows it)", "Remove the backslash, or end the line with it.")
    parsed = parse_line(line)
    _check_options(line, parsed, allowed)
    includes = [(INCLUDES[d], v) for d in INCLUDES for v in parsed.opts.get(d, [])]
    if includes and not parsed.args:
        if constraint:
            raise refuse(line, "a constraints file includes another file; pip would read it as requirements",
                          "Keep constraints files to names and versions.")
        if len(includes) > 1 or len(parsed.opts) > 1:
            raise refuse(line, "an include (-r/-c) shares its line with other options", "Give it its own line.")
        option, target = includes[0]
        if SCHEME.match(target):
            raise refuse(line, f"'{option} {target}' includes a URL; pip would fetch it",
                          "Put the file in the package and include it by its path.")
        return "include", includes[0]
    targets = requirement_targets(parsed.args) if parsed.args else []
    if len(targets) > 1:
        raise refuse(line, f"pip could read '{parsed.args}' as a path or as a URL",
                      "Write either 'name @ URL' or a path inside the package.")
    for value in parsed.opts.get("editables", []):
        if "@" in value:  # newer pips read '-e name @ URL' (PEP 508); the older read a path
            raise refuse(line, f"'-e {value}' names its source with '@'",
                         "Give -e a path inside the package (-e ./lib).")
    try:  # as pip strips extras from a path (pip 24+ refuses extras it cannot read)
        editables = [strip_extras(v) for v in parsed.opts.get("editables", [])]
        seen = pip_path(parsed.args) if parsed.args else None
    except ValueError as exc:
        raise RequirementsSyntaxError(f"{line.where}: pip cannot read '{line.text}': {exc}", line=line.number,
                                      requirement=line.text, field=line.file,
                                      hint="Write extras as [name] or [one,two].") from None
    kinds = [_target(v, line, root, allowed) for v in editables]
    for target in targets:
        kinds.append(_target(target, line, root, allowed))
        if kinds[-1] == "remote" and direct is not None:
            direct.append(target)
    for sub in subdirectories(line.text):  # pip joins it to the source as written
        if unquote(sub).startswith("/") or ".." in PurePosixPath(unquote(sub)).parts:
            raise refuse(line, f"'subdirectory={sub}' leaves the source it names",
                         "Name a subdirectory inside the source, without '..'.")
    if seen is not None and not under_app(seen):  # (after the targets: theirs is the plainer message)
        raise refuse(line, f"pip could read '{parsed.args}' as the path {seen}, outside the package",
                     "Write 'name @ URL', or a path inside the package.")
    if constraint and (kinds or "editables" in parsed.opts):
        raise refuse(line, "a constraints file names a URL, a path or an editable install",
                      "Keep constraints files to names and versions.")
    return ("source" if "local" in kinds or "editables" in parsed.opts else "deps"), None


def _kept(rel: str, keep_out, line: Line) -> None:
    if keep_out is not None and keep_out(rel):  # refused before a byte of it is read: it may hold secrets
        raise PackageValidationError(f"{line.where}: requirements include {rel} (-r/-c, or a link), which is kept "
                                     "out of the image", line=line.number, field=line.file,
                                     hint=f"Do not include {rel} from requirements.")


def _unreadable(line: Line, rel: str, why: str) -> PackageValidationError:
    return PackageValidationError(f"{line.where}: '{line.text}' names {rel!r}, which {why}", line=line.number,
                                  requirement=line.text, field=line.file,
                                  hint="Name a file inside the package by a plain relative path.")


def _resolve_include(root: Path, base_file: str, name: str, line: Line, keep_out=None) -> str:
    """The included file's path from the package root (checked: inside, a file, not kept out)."""
    rel = (PurePosixPath(base_file).parent / name).as_posix()
    try:  # (a name too long for the file system is an OSError; NUL never gets here: decode refused it)
        target = (root / rel).resolve()
        is_file = target.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(line, rel, f"the file system cannot look up ({type(exc).__name__})") from None
    if root.resolve() not in target.parents:
        raise PackageValidationError(
            f"{line.where}: '{line.text}' includes a file outside the package", line=line.number,
            requirement=line.text, field=line.file)
    if not is_file:
        raise PackageValidationError(
            f"{line.where}: '{line.text}' names {rel}, which is not in the package", line=line.number,
            requirement=line.text, field=line.file, hint="Add the file to the package or remove the line.")
    inc_rel = target.relative_to(root.resolve()).as_posix()
    if posixpath.normpath(rel) != inc_rel:  # pip joins a nested include to the path as written, the policy
        raise refuse(line, f"includes {rel} through a symbolic link (it is {inc_rel}): pip, its older "  # would
                     "versions and uv find the files it includes in different folders",          # not
                     "Include the file by its own path.")
    _kept(rel, keep_out, line)
    _kept(inc_rel, keep_out, line)
    return inc_rel


class _Reader:
    """The include graph, read within bounds: each file once per reading (as requirements, as
    constraints), cycles refused, and caps on what is read and on what pip would follow."""

    def __init__(self, root: Path, allowed: set[str], keep_out, deadline: float | None) -> None:
        self.root, self.allowed, self.keep_out, self.deadline = root, allowed, keep_out, deadline
        self.deps: list[Line] = []
        self.source: list[Line] = []
        self.constraints: dict[str, str] = {}
        self.included: list[str] = []
        self.direct: list[str] = []
        self.real = self.lines = self.bytes = self.follows = 0
        self.done: dict[tuple[str, bool], int] = {}  # (file, read as constraints) -> the includes pip follows in it
        self.open: list[str] = []  # the files being read, outermost first

    def read(self, rel: str, line: Line) -> str:
        """REL's text, counted against the byte cap before it is read whole."""
        check_deadline(self.deadline, "reading requirements")
        try:
            with open(self.root / rel, "rb") as fh:
                data = fh.read(MAX_BYTES - self.bytes + 1)
        except OSError as exc:
            raise _unreadable(line, rel, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
        self.bytes += len(data)
        if self.bytes > MAX_BYTES:
            raise _over(line, f"requirements files hold more than {MAX_BYTES // 1024 // 1024} MiB together "
                              f"(at {rel})", "Keep requirements to names, versions and hashes.")
        return decode(data, rel)

    def visit(self, rel: str, text: str, depth: int, constraint: bool = False) -> None:
        self.open.append(rel)
        for line in logical_lines(text, rel):
            check_deadline(self.deadline, f"reading {line.where}")
            self.lines += 1
            if self.lines > MAX_LINES:
                raise _over(line, f"requirements hold more than {MAX_LINES} lines together", "Trim them.")
            if len(line.text) > MAX_LINE_CHARS:
                raise _over(line, f"a line longer than {MAX_LINE_CHARS} characters", "Shorten the line.")
            self.real += not constraint
            kind, include = check_line(line, self.root, self.allowed, constraint, self.direct)
            if include is None:
                if not constraint:
                    (self.source if kind == "source" else self.deps).append(line)
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                raise PackageValidationError(f"{line.where}: requirements includes nest deeper than "
                                             f"{MAX_INCLUDE_DEPTH}", line=line.number, field=line.file)
            self.include(line, include, depth)
        self.open.pop()

    def include(self, line: Line, include: tuple[str, str], depth: int) -> None:
        option, target = include
        inc_rel = _resolve_include(self.root, line.file, target, line, self.keep_out)
        if inc_rel in self.open:
            raise PackageValidationError(f"{line.where}: '{line.text}' includes {inc_rel}, which is being read "
                                         "(a cycle): pip would follow it without end", line=line.number,
                                         requirement=line.text, field=line.file, hint="Remove one of the includes.")
        self.included.append(inc_rel)
        constraint = option == "-c"
        before = self.follows
        if (inc_rel, constraint) in self.done:  # read (and policed this way) already: pip reads it again
            self.follows += self.done[(inc_rel, constraint)]
        else:
            text = self.read(inc_rel, line)
            self.visit(inc_rel, text, depth + 1, constraint)
            if constraint:  # shipped whole, beside the dependency list (once, however often it is named)
                key = f"constraints-{len(self.constraints) + 1}.txt"
                self.constraints[key] = text
                self.deps.append(Line(line.file, line.number, f"-c {key}"))
            self.done[(inc_rel, constraint)] = self.follows - before
        self.follows += 1
        if self.follows > MAX_INCLUDES:
            raise _over(line, f"pip would follow more than {MAX_INCLUDES} -r/-c includes (a file included n "
                              "times is read n times, with all it includes)", "Include each file once.")


def _over(line: Line, what: str, hint: str) -> PackageValidationError:
    return PackageValidationError(f"{line.where}: {what}", line=line.number, requirement=line.text[:200],
                                  field=line.file, hint=hint)


def read_requirements(root: Path, allowed_hosts: frozenset[str] | set[str] = frozenset(),
                      file: str = "requirements.txt", keep_out=None, deadline: float | None = None) -> Split:
    """Read ROOT/requirements.txt (following -r/-c inside the package), police and split it.
    KEEP_OUT(rel) names files no include may read (the .env files); DEADLINE (time.monotonic())
    ends the reading with BuildTimeoutError."""
    reader = _Reader(root, {h.lower() for h in allowed_hosts}, keep_out, deadline)
    path = root / file
    first = Line(file, 1, file)
    try:
        real = path.resolve()
        present = path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(first, file, f"the file system cannot look up ({type(exc).__name__})") from None
    if present:
        real_rel = real.relative_to(root.resolve()).as_posix() if root.resolve() in real.parents else file
        if keep_out is not None and keep_out(file):  # a hard link to a .env file: kept out by its inode
            raise PackageValidationError(f"{file} is the same file as a .env file (a hard link), which is kept "
                                         "out of the image", field=file, hint=f"Make {file} a file of its own.")
        if real_rel != file:  # requirements.txt is a link: what it points at is read (and checked) too
            _kept(real_rel, keep_out, Line(file, 1, f"{file} -> {real_rel}"))
            reader.included.append(real_rel)
            reader.open.append(real_rel)
        reader.visit(file, reader.read(file, first), 0)
    return Split(deps=reader.deps, source=reader.source, constraints=reader.constraints, real_lines=reader.real,
                 direct=frozenset(reader.direct), includes=tuple(dict.fromkeys(reader.included)))
