"""Requirements text as pip reads it, with pip's own code: the encoding it
accepts, its line joining and comment stripping (``join_lines``,
``ignore_comments``), its split of a line into requirement and options
(``break_args_options``), its option table (``build_parser``, so
``--extra-index`` is ``--extra-index-url`` and ``--pypi-url`` is
``--index-url``) and where in a requirement it finds a URL or a path.

Reading only: the policy that decides what a line may do is
builder/package/requirements.py; the rewrite to the build's proxy is
builder/build/proxy/pages.py. Both read lines here so they read them alike.
"""

from __future__ import annotations

import codecs
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from builder.core.errors import IndexPolicyError, PackageValidationError, RequirementsSyntaxError

# options handed to a package's build (setup.py, a build backend), which can fetch
# from anywhere; the older pips in the base images also read the last three
BACKEND_OPTIONS = {"config_settings": "--config-settings", "global_options": "--global-option",
                   "build_options": "--build-option", "install_options": "--install-option"}
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
APP = PurePosixPath("/app")  # where the package is in the image; the installs that need it run there
# an option line naming an index or find-links URL, and what it may carry beside them: the
# rewrite to the build's proxy (plan/proxied.py) rebuilds such a line from these alone
INDEX_URL_OPTIONS = {"index_url": "--index-url", "extra_index_urls": "--extra-index-url", "find_links": "--find-links"}
BESIDE_INDEX_URL = {"trusted_hosts": "--trusted-host", "no_index": "--no-index", "pre": "--pre",
                    "prefer_binary": "--prefer-binary", "require_hashes": "--require-hashes"}
_CODING = re.compile(rb"coding[:=]\s*([-\w.]+)")  # PEP 263, which pip honours in the first two lines
# Control characters but tab, and CR but in CRLF: pip (str.splitlines) starts a new line at
# \r, \v, \f, \x1c-\x1e, \x85, U+2028/9 where editors and reviewers see one; a terminal hides what
# a lone \r precedes; NUL reaches os.stat as a path. No requirement needs any of them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]|\r(?!\n)")


@dataclass(frozen=True)
class Line:
    """One logical requirements line (continuations joined, comment stripped)."""
    file: str     # path relative to the package root
    number: int   # 1-based line number where the logical line starts
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


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
    from pip._internal.req.req_file import join_lines
    last = 0

    def numbered():
        nonlocal last
        for last, physical in enumerate(text.splitlines(), start=1):
            yield last, physical

    # pip's generators read lazily: when a logical line comes out, the last physical
    # line read is the one that ended it
    return [(Line(file, n, t), last) for n, t in without_comments(join_lines(numbered()))]


def without_comments(lines):
    """pip's ignore_comments, in linear time: its COMMENT_RE, ``(^|\\s+)#.*$``, backtracks
    quadratically over a long run of spaces with no '#' after it (100,000 spaces: 50 s).
    The same cut: from the whitespace before the first '#' that starts the line or follows
    whitespace (tests/unit/test_readers_agree.py compares the two)."""
    for number, line in lines:
        line = line[:comment_start(line)].strip()
        if line:
            yield number, line


def comment_start(line: str) -> int:
    """Where pip's COMMENT_RE would cut LINE (len(line) when it would not)."""
    at = line.find("#")
    while at > 0 and not line[at - 1].isspace():
        at = line.find("#", at + 1)
    if at < 0:
        return len(line)
    while at > 0 and line[at - 1].isspace():  # (regex \s and str.isspace are the same Unicode set)
        at -= 1
    return at


def refuse(line: Line, what: str, hint: str) -> IndexPolicyError:
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
        raise refuse(first, "is UTF-16/32 (a byte-order mark): requirements files must be UTF-8",
                      "Save the file as UTF-8.")
    for number, raw in enumerate(data.split(b"\n")[:2], 1):
        coding = _CODING.search(raw) if raw[:1] == b"#" else None
        if coding:
            try:
                name = codecs.lookup(coding.group(1).decode("ascii")).name
            except LookupError:
                name = coding.group(1).decode("ascii", "replace")
            if name != "utf-8":
                raise refuse(Line(file, number, raw.decode("ascii", "replace")),
                              f"declares the encoding {name!r}: requirements files must be UTF-8",
                              "Remove the coding line and save the file as UTF-8.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data[:exc.start].count(b"\n") + 1
        raise refuse(Line(file, number, data.split(b"\n")[number - 1].decode("utf-8", "replace")),
                      "is not UTF-8: pip would read it in the locale's encoding", "Save the file as UTF-8.") from None
    bad = _CONTROL.search(text)
    if bad:
        number = text.count("\n", 0, bad.start()) + 1
        shown = text.split("\n")[number - 1][:200].encode("unicode_escape").decode("ascii")
        raise RequirementsSyntaxError(
            f"{file}:{number}: holds the control character {bad.group(0)[:1]!r} (pip reads line ends, NUL "
            "and controls other than editors do)", line=number, requirement=shown, field=file,
            hint="Remove it; end lines with LF or CRLF only.")
    return text


@dataclass(frozen=True)
class Parsed:
    args: str                   # the requirement part ('' on an options-only line)
    opts: dict[str, Any]        # pip's dest -> value, for the options the line sets
    written: dict[str, str]     # pip's dest -> the long option as written, when it is not pip's main name
    abbreviated: dict[str, str]  # pip's dest -> an abbreviation optparse expanded (--extra-index)
    tokens: tuple[str, ...] = ()  # the options part as pip split it (shlex)
    stray: tuple[str, ...] = ()   # words after the options that pip's option parser drops (uv reads them)


def parse_line(line: Line) -> Parsed:
    """Split LINE as pip does and run its options through pip's own option table."""
    from pip._internal.exceptions import PipError  # (an option's callback raises pip's own: CommandError)
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
        tokens = shlex.split(options)
        values, stray = parser.parse_args(tokens, values)
    except (ValueError, OptionParsingError, PipError) as exc:
        msg = getattr(exc, "msg", str(exc))
        for name in BACKEND_OPTIONS.values():
            if re.search(rf"(^|\s){re.escape(name[:8])}", options):
                raise refuse(line, f"'{name}' passes options to a package's build, which can fetch from "
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
    return Parsed(args=args, opts=opts, written=written, abbreviated=abbreviated, tokens=tuple(tokens),
                  stray=tuple(stray))


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a word every reader of requirement files takes alike: nothing quoted, escaped,
# commented or filled from the environment (pip, the older pips, uv)
PLAIN_WORD = re.compile(r"""[^\s'"\\#$`]+\Z""")
# the one option pip reads on a requirement line (config-settings is refused); it drops the others
REQUIREMENT_OPTIONS = frozenset({"hashes"})


def written_as_read(line: Line) -> str:
    """LINE as pip read it, in the plainest form: the requirement and its hashes, or the
    option words, one logical line on one physical line, without a comment. What the
    build's installers read is this, never the package's own text, so pip, the older
    pip in the image and uv cannot read a line three ways (requirements.check_line
    refuses the lines that would not survive the rewrite)."""
    parsed = parse_line(line)
    if parsed.args:
        hashes = parsed.opts.get("hashes") or {}
        return " ".join([parsed.args.strip(), *(f"--hash={alg}:{h}" for alg in sorted(hashes) for h in hashes[alg])])
    return " ".join(parsed.tokens)


def written_as_read_text(text: str, file: str) -> str:
    """A requirements file written as pip read it (written_as_read), each logical line at
    the number of its first physical line (pip's errors name it), the rest left empty."""
    physical = text.splitlines()
    out = [""] * len(physical)
    for line, _ in logical_spans(text, file):
        out[line.number - 1] = written_as_read(line)
    return "".join(f"{ln}\n" for ln in out)


def values(value) -> list:
    """An option's parsed value as a list: pip stores 'append' options as lists, the rest alone."""
    return [] if value is None else value if isinstance(value, list) else [value]


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


def requirement_targets(args: str) -> list[str]:
    """Every URL or path pip could read a requirement line as (pip's parse_req_from_line, conservatively)."""
    return [args[start:end] for start, end in requirement_spans(args)]


def requirement_spans(args: str) -> list[tuple[int, int]]:
    """Where in ARGS each of requirement_targets is: (start, end), so a rewrite
    changes the very characters pip reads, not another copy of them."""
    if SCHEME.match(args):  # a bare URL; pip splits its marker at '; ' (ARGS starts with it: lines are stripped)
        return [(0, len(args.split("; ", 1)[0].rstrip()))]
    from pip._internal.utils.filetypes import is_archive_file

    def looks_like_path(text: str) -> bool:
        return "/" in text or text.startswith(".") or is_archive_file(text)

    raw = args.split(";", 1)[0]
    lead = len(raw) - len(raw.lstrip())
    head = raw.strip()
    out = []
    name, at, url = head.partition("@")
    if at:  # name @ URL (PEP 508): pip reads 'x@y' this way unless x looks like a path
        start = lead + len(name) + 1 + len(url) - len(url.lstrip())
        out.append((start, start + len(url.strip())))
    path = re.sub(r"\[[^\]]*\]$", "", head)  # extras: ./lib[extra]
    if looks_like_path(path) and (not at or looks_like_path(name.strip())):
        out.append((lead, lead + len(path)))
    return [(start, end) for start, end in out if end > start]


def strip_extras(text: str) -> str:
    """TEXT without a trailing [extras], as pip strips them from a path (named _strip_extras before pip 24).
    ValueError when pip could not read the extras (pip 24+ checks them; the line would fail in pip)."""
    from pip._internal.req import constructors
    strip = getattr(constructors, "strip_extras", None) or getattr(constructors, "_strip_extras")
    try:
        return strip(text)[0]
    except Exception as exc:  # (packaging's InvalidRequirement: pip's vendored copy, not ours to import)
        raise ValueError(str(exc)) from None


def pip_path(args: str, cwd: str = str(APP)) -> str | None:
    """The path pip may read requirement ARGS as, or None when it reads a URL or a name only.

    pip's parse_req_from_line and _get_url_from_path, without the disk: the whole text
    before the marker, made absolute from CWD and normalised as text, extras stripped.
    pip uses it when the text looks like a path and names a directory, or names an
    archive, so '[/../../opt/x[e]' or 'x @ https://h/y#/../../..' can reach past /app."""
    from pip._internal.req import constructors
    from pip._internal.utils.filetypes import is_archive_file
    name = args.split("; " if constructors.is_url(args) else ";", 1)[0].strip()
    if constructors.is_url(name):
        return None
    path = strip_extras(posixpath.normpath(posixpath.join(cwd, name)))
    # normalised again: pip is done with the text, but the OS reads '/app/..' (from '..[x]/.') as '/'
    return posixpath.normpath(path) if constructors._looks_like_path(name) or is_archive_file(path) else None


def subdirectories(text: str) -> list[str]:
    """Every subdirectory= pip could find in TEXT: its Link.subdirectory_fragment matches
    '[#&]subdirectory=' anywhere in a URL (fragment, query or path) and joins it to the
    source unnormalised."""
    return re.findall(r"[#&]subdirectory=([^&\s]*)", text)


def under_app(path: str) -> bool:
    """Is PATH (absolute, normalised as text) /app or below it? A '..' left in it is not."""
    pure = PurePosixPath(path)
    return ".." not in pure.parts and (pure == APP or APP in pure.parents)
