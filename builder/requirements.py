"""requirements.txt -> numbered lines, the index policy, and the layer split.

Lines are read the way pip reads them, with pip's own code: its line joining
and comment stripping (``join_lines``, ``ignore_comments``), its split of a
line into requirement and options (``break_args_options``) and its option
table (``build_parser``, so ``--extra-index`` is ``--extra-index-url`` and
``--pypi-url`` is ``--index-url``, as pip would take them). pip's parser only
parses here: includes are followed by this module, inside the package, and
nothing is fetched. The policy is an allow-list: options known to reach
nothing (``--hash``, ``--pre``, ...), names from the index, and paths inside
the package; everything else is refused with the file and line.

The split is what makes code-only changes cheap: lines that need no source
go into a dependency layer built before the package's files are copied in;
lines that need the source (``-e .``, local paths) are installed after,
together with the seed's ``pip install -r requirements.txt`` pass that keeps
its pins winning. Lines are kept exactly as pip reads them.
"""

from __future__ import annotations

import codecs
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import IndexPolicyError, PackageValidationError, RequirementsSyntaxError

# options that point pip at another index or file source (pip's dest -> its name)
INDEX_OPTIONS = {"index_url": "--index-url", "extra_index_urls": "--extra-index-url",
                 "find_links": "--find-links", "trusted_hosts": "--trusted-host"}
# options handed to a package's build (setup.py, a build backend), which can fetch
# from anywhere; the older pips in the base images also read the last three
BACKEND_OPTIONS = {"config_settings": "--config-settings", "global_options": "--global-option",
                   "build_options": "--build-option", "install_options": "--install-option"}
# options that change how pip picks among the index's files, and reach nothing else
HARMLESS = frozenset({"no_index", "prefer_binary", "require_hashes", "no_require_hashes", "pre", "format_control",
                      "release_control", "features_enabled", "hashes"})
INCLUDES = {"requirements": "-r", "constraints": "-c"}
VCS_SCHEMES = frozenset({"git", "hg", "svn", "bzr"})
APP = PurePosixPath("/app")  # where the package is in the image; the installs that need it run there
ENV_VAR = re.compile(r"\$\{[A-Z0-9_]+\}")  # pip fills these from the build's environment
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_CODING = re.compile(rb"coding[:=]\s*([-\w.]+)")  # PEP 263, which pip honours in the first two lines
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
    includes: tuple[str, ...] = ()  # files -r/-c name (and requirements.txt's own target), from the package root

    @property
    def deps_text(self) -> str:
        return "".join(f"{ln.text}\n" for ln in self.deps)

    @property
    def hashed(self) -> bool:
        """Does any line pin a hash (pip's hash-checking mode for the whole file)?"""
        return any("--hash" in ln.text for ln in (*self.deps, *self.source))


def normalise(name: str) -> str:
    """A project name as PEP 503 compares them: runs of -_. are one '-', case folded."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logical_lines(text: str, file: str = "requirements.txt") -> list[Line]:
    """pip's lines: backslash continuations joined, comments and blanks dropped.

    (Not pip's ``preprocess``: it also fills ``${VAR}`` from this process's
    environment, which would put the builder's variables into the lines.)"""
    return [line for line, _ in logical_spans(text, file)]


def logical_spans(text: str, file: str = "requirements.txt") -> list[tuple[Line, int]]:
    """pip's logical lines, each with the number of its last physical line (of
    ``text.splitlines()``, as pip numbers them): where a continuation ends."""
    from pip._internal.req.req_file import ignore_comments, join_lines
    last = 0

    def numbered():
        nonlocal last
        for last, physical in enumerate(text.splitlines(), start=1):
            yield last, physical

    # pip's generators read lazily: when a logical line comes out, the last physical
    # line read is the one that ended it
    return [(Line(file, n, t), last) for n, t in ignore_comments(join_lines(numbered()))]


def _refuse(line: Line, what: str, hint: str) -> IndexPolicyError:
    return IndexPolicyError(f"{line.where}: {what}", line=line.number, requirement=line.text, field=line.file,
                            hint=hint)


def decode(data: bytes, file: str) -> str:
    """A requirements file as text, if pip would read the same text from it: UTF-8 only.
    pip honours a UTF-16/32 BOM or a `# coding:` line, and falls back to the
    locale; a check that read other characters than pip would be no check."""
    first = Line(file, 1, repr(data[:4]))
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):
        raise _refuse(first, "is UTF-16/32 (a byte-order mark): requirements files must be UTF-8",
                      "Save the file as UTF-8.")
    for number, raw in enumerate(data.split(b"\n")[:2], 1):
        coding = _CODING.search(raw) if raw[:1] == b"#" else None
        if coding:
            try:
                name = codecs.lookup(coding.group(1).decode("ascii")).name
            except LookupError:
                name = coding.group(1).decode("ascii", "replace")
            if name != "utf-8":
                raise _refuse(Line(file, number, raw.decode("ascii", "replace")),
                              f"declares the encoding {name!r}: requirements files must be UTF-8",
                              "Remove the coding line and save the file as UTF-8.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data[:exc.start].count(b"\n") + 1
        raise _refuse(Line(file, number, data.split(b"\n")[number - 1].decode("utf-8", "replace")),
                      "is not UTF-8: pip would read it in the locale's encoding", "Save the file as UTF-8.") from None


@dataclass(frozen=True)
class Parsed:
    args: str                   # the requirement part ('' on an options-only line)
    opts: dict[str, Any]        # pip's dest -> value, for the options the line sets
    written: dict[str, str]     # pip's dest -> the long option as written, when it is not pip's main name
    abbreviated: dict[str, str]  # pip's dest -> an abbreviation optparse expanded (--extra-index)


def parse_line(line: Line) -> Parsed:
    """Split LINE as pip does and run its options through pip's own option table."""
    from pip._internal.req.req_file import OptionParsingError, break_args_options, build_parser
    parser = build_parser()
    matched: list[tuple[str, str]] = []
    match_long = parser._match_long_opt  # optparse's prefix matching, watched: abbreviations are refused

    def watch(opt: str) -> str:
        full = match_long(opt)
        matched.append((opt, full))
        return full

    parser._match_long_opt = watch  # type: ignore[method-assign]

    def error(msg: str):  # optparse would print its usage to stderr first
        raise OptionParsingError(msg)

    parser.error = error  # type: ignore[method-assign]
    values = parser.get_default_values()
    values.index_url = None  # as pip's own line parser does: a line naming the default index still names one
    args, options = break_args_options(line.text)
    try:
        values, _ = parser.parse_args(shlex.split(options), values)
    except (ValueError, OptionParsingError) as exc:
        msg = getattr(exc, "msg", str(exc))
        for name in BACKEND_OPTIONS.values():
            if re.search(rf"(^|\s){re.escape(name[:8])}", options):
                raise _refuse(line, f"'{name}' passes options to a package's build, which can fetch from "
                                    "anywhere", "Remove the option: the builder decides how packages build.")
        raise RequirementsSyntaxError(f"{line.where}: pip cannot read '{line.text}': {msg}", line=line.number,
                                      requirement=line.text, field=line.file,
                                      hint="Fix the line (pip's option names, written in full).") from None
    fresh = build_parser().get_default_values()
    fresh.index_url = None
    opts = {dest: value for dest, value in vars(values).items() if value != getattr(fresh, dest, None)}
    written, abbreviated = {}, {}
    for given, full in matched:
        option = parser._long_opt[full]
        if given != option.get_opt_string():
            written[option.dest] = given
        if given not in parser._long_opt:
            abbreviated[option.dest] = given
    return Parsed(args=args, opts=opts, written=written, abbreviated=abbreviated)


def names_own_index(texts: list[str]) -> bool:
    """Does a line set the index pip uses instead of the configured one (-i, --index-url and its
    alias --pypi-url, --no-index), as pip's own option table reads it? A line pip cannot read counts."""
    for number, text in enumerate(texts, 1):
        try:
            opts = parse_line(Line("requirements.txt", number, text)).opts
        except (PackageValidationError, RequirementsSyntaxError):
            return True
        if "index_url" in opts or "no_index" in opts:
            return True
    return False


def _host(value: str, line: Line, option: str) -> str:
    """The host a URL (or a --trusted-host value) names; refused when it could read two ways."""
    parts = urlsplit(value if "://" in value else f"//{value}")
    if "@" in parts.netloc or "\\" in value or re.search(r"\s", value):
        raise _refuse(line, f"{option} {value!r} has credentials, a backslash or a space in its address",
                      "Name the host plainly; the builder adds index credentials itself.")
    return (parts.hostname or "").lower()


def _inside(path: str, line: Line, root: Path) -> None:
    """A local path must stay inside the package: relative (the installs run in /app), or under /app."""
    pure = PurePosixPath(path)
    real_root = root.resolve()
    inside = not path.startswith("~")
    if pure.is_absolute():
        inside = inside and (pure == APP or APP in pure.parents)
        pure = pure.relative_to(APP) if inside else pure
    target = (real_root / pure).resolve()
    if not inside or (target != real_root and real_root not in target.parents):
        raise _refuse(line, f"'{path}' is outside the package: pip would install from the image's or the "
                            "builder's file system", "Put the file in the package and name it ./relative/path.")


def _target(value: str, line: Line, root: Path, allowed: set[str]) -> str:
    """Where a requirement or -e installs from: 'remote' (an allowed host) or 'local' (in the package)."""
    scheme = _SCHEME.match(value)
    if not scheme:
        _inside(value, line, root)
        return "local"
    name = scheme.group(1).lower()
    if name in VCS_SCHEMES or "+" in name:
        raise _refuse(line, f"'{value}' is a VCS reference: the build has no VCS access (refused even with "
                            "--allow-index-host)", "Publish the package to the index and name its version.")
    if name in ("http", "https"):
        host = _host(value, line, "the URL")
        if host and host in allowed:
            return "remote"
        raise _refuse(line, f"'{value}' is a direct reference: pip would fetch it from {host or 'elsewhere'}, "
                            "not from the index", f"Publish it to the index, or allow the host with "
                                                  f"--allow-index-host {host or 'HOST'}.")
    if name == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise _refuse(line, f"'{value}' names a file on another host", "Put the file in the package.")
        _inside(unquote(parts.path), line, root)
        return "local"
    raise _refuse(line, f"'{value}' is a {name}: URL; pip may only install from the index or the package",
                  "Publish the package to the index.")


def requirement_targets(args: str) -> list[str]:
    """Every URL or path pip could read a requirement line as (pip's parse_req_from_line, conservatively)."""
    if _SCHEME.match(args):
        return [args.split("; ", 1)[0].strip()]  # a bare URL; pip splits its marker at '; '
    from pip._internal.utils.filetypes import is_archive_file

    def looks_like_path(text: str) -> bool:
        return "/" in text or text.startswith(".") or is_archive_file(text)

    head = args.split(";", 1)[0].strip()
    out = []
    name, at, url = head.partition("@")
    if at:  # name @ URL (PEP 508): pip reads 'x@y' this way unless x looks like a path
        out.append(url.strip())
    path = re.sub(r"\[[^\]]*\]$", "", head)  # extras: ./lib[extra]
    if looks_like_path(path) and (not at or looks_like_path(name.strip())):
        out.append(path)
    return [t for t in out if t]


def check_line(line: Line, root: Path, allowed: set[str], constraint: bool = False
               ) -> tuple[str, tuple[str, str] | None]:
    """Police one line. Returns ('deps' | 'source', None), or ('include', (option, file))."""
    if ENV_VAR.search(line.text):
        raise _refuse(line, f"'{ENV_VAR.search(line.text).group(0)}' is filled from the build's environment, "
                            "so the line could name anything", "Write the value out.")
    parsed = parse_line(line)
    for dest, option in INDEX_OPTIONS.items():
        if dest not in parsed.opts:
            continue
        given = f" (written '{parsed.written[dest]}')" if dest in parsed.written else ""
        values = parsed.opts[dest] if isinstance(parsed.opts[dest], list) else [parsed.opts[dest]]
        for value in values:
            host = _host(value, line, option)
            if not host or host not in allowed:
                raise _refuse(line, f"'{option}'{given} points pip at {value}; requirements may not choose "
                                    "their own index (dependency confusion)",
                              f"Remove the line, or allow the host with --allow-index-host {host or 'HOST'}.")
    for dest, value in parsed.opts.items():
        if dest in BACKEND_OPTIONS:
            raise _refuse(line, f"'{BACKEND_OPTIONS[dest]}' passes options to a package's build, which can "
                                "fetch from anywhere", "Remove the option: the builder decides how packages build.")
        if dest not in HARMLESS and dest not in INDEX_OPTIONS and dest not in INCLUDES and dest != "editables":
            raise _refuse(line, f"the option for {dest!r} is not one agent-image lets a package set",
                          "Remove the option.")
    for dest, given in parsed.abbreviated.items():
        raise _refuse(line, f"'{given}' is an abbreviated option (pip expands it to the option it prefixes; the "
                            "older pips in the images may expand it to another)", "Write the option's full name.")
    includes = [(INCLUDES[d], v) for d in INCLUDES for v in parsed.opts.get(d, [])]
    if includes and not parsed.args:
        if constraint:
            raise _refuse(line, "a constraints file includes another file; pip would read it as requirements",
                          "Keep constraints files to names and versions.")
        if len(includes) > 1 or len(parsed.opts) > 1:
            raise _refuse(line, "an include (-r/-c) shares its line with other options", "Give it its own line.")
        option, target = includes[0]
        if _SCHEME.match(target):
            raise _refuse(line, f"'{option} {target}' includes a URL; pip would fetch it",
                          "Put the file in the package and include it by its path.")
        return "include", includes[0]
    kinds = [_target(v, line, root, allowed) for v in parsed.opts.get("editables", [])]
    kinds += [_target(v, line, root, allowed) for v in requirement_targets(parsed.args)] if parsed.args else []
    if constraint and (kinds or "editables" in parsed.opts):
        raise _refuse(line, "a constraints file names a URL, a path or an editable install",
                      "Keep constraints files to names and versions.")
    return ("source" if "local" in kinds or "editables" in parsed.opts else "deps"), None


def _kept(rel: str, keep_out, line: Line) -> None:
    if keep_out is not None and keep_out(rel):  # refused before a byte of it is read: it may hold secrets
        raise PackageValidationError(f"{line.where}: requirements include {rel} (-r/-c, or a link), which is kept "
                                     "out of the image", line=line.number, field=line.file,
                                     hint=f"Do not include {rel} from requirements.")


def _resolve_include(root: Path, base_file: str, name: str, line: Line, keep_out=None) -> tuple[str, str]:
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
    inc_rel = target.relative_to(root.resolve()).as_posix()
    _kept(rel, keep_out, line)
    _kept(inc_rel, keep_out, line)
    return inc_rel, decode(target.read_bytes(), inc_rel)


def read_requirements(root: Path, allowed_hosts: frozenset[str] | set[str] = frozenset(),
                      file: str = "requirements.txt", keep_out=None) -> Split:
    """Read ROOT/requirements.txt (following -r/-c inside the package), police and split it.
    KEEP_OUT(rel) names files no include may read (the .env files)."""
    allowed = {h.lower() for h in allowed_hosts}
    deps: list[Line] = []
    source: list[Line] = []
    constraints: dict[str, str] = {}
    included: list[str] = []
    real = 0

    def visit(rel: str, text: str, depth: int, constraint: bool = False) -> None:
        nonlocal real
        for line in logical_lines(text, rel):
            real += not constraint
            kind, include = check_line(line, root, allowed, constraint)
            if include is None:
                if not constraint:
                    (source if kind == "source" else deps).append(line)
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                raise PackageValidationError(f"{line.where}: requirements includes nest deeper than "
                                             f"{MAX_INCLUDE_DEPTH}", line=line.number, field=line.file)
            option, target = include
            inc_rel, inc_text = _resolve_include(root, rel, target, line, keep_out)
            included.append(inc_rel)
            if option == "-r":
                visit(inc_rel, inc_text, depth + 1)
            else:  # policed like any file pip reads; shipped whole, beside the dependency list
                visit(inc_rel, inc_text, depth + 1, constraint=True)
                key = f"constraints-{len(constraints) + 1}.txt"
                constraints[key] = inc_text
                deps.append(Line(line.file, line.number, f"-c {key}"))

    path = root / file
    if path.is_file():
        real_rel = path.resolve().relative_to(root.resolve()).as_posix() if root.resolve() in path.resolve().parents \
            else file
        if real_rel != file:  # requirements.txt is a link: what it points at is read (and checked) too
            _kept(real_rel, keep_out, Line(file, 1, f"{file} -> {real_rel}"))
            included.append(real_rel)
        visit(file, decode(path.read_bytes(), file), 0)
    return Split(deps=deps, source=source, constraints=constraints, real_lines=real,
                 includes=tuple(dict.fromkeys(included)))
