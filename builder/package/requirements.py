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

from builder.core.errors import PackageValidationError, RequirementsSyntaxError
from builder.core.urls import Disagreement, read_url
from builder.package.piplines import (APP, BACKEND_OPTIONS, BESIDE_INDEX_URL, CONTROL, INDEX_URL_OPTIONS, PLAIN_WORD,
                                      REQUIREMENT_OPTIONS, SCHEME, Line, decode, logical_lines, parse_line, pip_path,
                                      refuse, requirement_targets, strip_extras, subdirectories, under_app,
                                      written_as_read)

# options that point pip at another index or file source (pip's dest -> its name)
INDEX_OPTIONS = {**INDEX_URL_OPTIONS, "trusted_hosts": "--trusted-host"}
# options that change how pip picks among the index's files, and reach nothing else
HARMLESS = frozenset({"no_index", "prefer_binary", "require_hashes", "no_require_hashes", "pre", "format_control",
                      "release_control", "features_enabled", "hashes"})
INCLUDES = {"requirements": "-r", "constraints": "-c"}
VCS_SCHEMES = frozenset({"git", "hg", "svn", "bzr"})
ENV_VAR = re.compile(r"\$\{[A-Z0-9_]+\}")  # pip fills these from the build's environment
MAX_INCLUDE_DEPTH = 5


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
    target = (real_root / pure).resolve()
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


def _check_readers_agree(line: Line, parsed) -> None:
    """What the build's installers read is the line as pip read it (piplines.written_as_read);
    refused here: what pip drops or splits in a way another reader (uv) would not."""
    if parsed.stray:
        raise refuse(line, f"pip drops '{' '.join(parsed.stray)}' after the options, but uv would install it",
                     "Put each requirement on its own line.")
    if parsed.args:
        ignored = sorted(set(parsed.opts) - REQUIREMENT_OPTIONS)
        if ignored:
            raise refuse(line, f"pip ignores the option for {ignored[0]!r} on a requirement line; uv may not",
                         "Put the option on a line of its own.")
        if CONTROL.search(parsed.args.strip()):
            raise refuse(line, "has a tab or a control character, which readers of requirement files split "
                               "differently", "Separate words with spaces.")
    odd = next((t for t in parsed.tokens if not PLAIN_WORD.match(t)), None)
    if odd is not None:
        raise refuse(line, f"the option word {odd!r} is quoted, escaped, or holds a space, '#', '$' or '`': "
                           "readers of requirement files split it differently", "Write the value plainly.")


def _check_options(line: Line, parsed, allowed: set[str]) -> None:
    """The line's options: indexes only on allowed hosts, nothing that steers a package's build."""
    for dest, option in INDEX_OPTIONS.items():
        if dest not in parsed.opts:
            continue
        given = f" (written '{parsed.written[dest]}')" if dest in parsed.written else ""
        values = parsed.opts[dest] if isinstance(parsed.opts[dest], list) else [parsed.opts[dest]]
        for value in values:
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
    DIRECT gets the URLs on allowed hosts the line installs from (the proxy serves those only)."""
    if ENV_VAR.search(line.text):
        raise refuse(line, f"'{ENV_VAR.search(line.text).group(0)}' is filled from the build's environment, "
                            "so the line could name anything", "Write the value out.")
    if line.text.endswith("\\"):  # what is written back (the dependency file, a rewrite) would join the next line
        raise refuse(line, "ends in a backslash that pip does not join to the next line (a space or a comment "
                            "follows it)", "Remove the backslash, or end the line with it.")
    parsed = parse_line(line)
    _check_readers_agree(line, parsed)
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
    direct: list[str] = []
    real = 0

    def visit(rel: str, text: str, depth: int, constraint: bool = False) -> None:
        nonlocal real
        for line in logical_lines(text, rel):
            real += not constraint
            kind, include = check_line(line, root, allowed, constraint, direct)
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
    return Split(deps=deps, source=source, constraints=constraints, real_lines=real, direct=frozenset(direct),
                 includes=tuple(dict.fromkeys(included)))
