"""Reading a build log: uv's cut lines glued back, the failing step's lines,
a failed build script's last words, what the build installed, its
post-install conflict notes, and ``Failure``, everything known about a failed
build. Pure: no engine. ``pipfailures`` classifies a ``Failure``.

Three installers write these logs, and each says the same thing its own way
(real samples: tests/data/buildlogs/): pip 23 (bookworm), pip 20.3 (bullseye:
no "from versions" list, "Command errored out" instead of markers) and uv
("No solution found when resolving dependencies" + a "Because ..." cause for
every resolution failure, " + name==version" for what it installed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Sequence

from builder.core.errors import PackageLoadError
from builder.package.piplines import Line, normalise

TAIL = 25
DIST_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"

# --- uv's lines arrive in pieces -----------------------------------------------
# uv writes one line in several write()s (Rust's stderr is unbuffered) and the
# engine makes lines of each stream chunk, so "error: No solution found" can come
# as "error" + ": No solution found", " + tinyreq==2.0" as "+" + "tinyreq==" + "2.0"
# (a piece that is only blanks is dropped, and trailing blanks are cut).
# Inside a step that runs uv, a line that does not start like a uv (or engine)
# line is glued back onto the one before it. pip writes whole lines: untouched.
_STEP = re.compile(r"^Step \d+/\d+ : ")
_ENGINE_LINE = re.compile(r"^(?: ---> |Removing intermediate container )")
_UV_STEP = re.compile(r"^Step \d+/\d+ : RUN .*/uv pip (?:install|sync)\b")
_UV_LINE_START = re.compile(
    r"^(?:Step \d+/\d+ : | ---> |Removing intermediate container|Successfully (?:built|tagged)\b"
    r"|Using (?:C?Python|Python)\b"
    r"|(?:Resolved|Prepared|Installed|Uninstalled|Audited|Checked|Downloaded|Downloading|Bytecode compiled)\b"
    r"|(?:error|warning|hint|help)\b|\s*(?:cause|Caused by)\b|\s*\[std(?:out|err)\]|\s*(?:Building|Built)\b"
    r"|\s*[+~-](?: |$)|\s{2,}\S)")


def _glue(prev: str, nxt: str) -> str:
    # the engine dropped trailing blanks: put a space back between words, none inside
    # "==1" ".0" "file" ":" "//" "/app" ")" and the like
    if nxt[:1].isspace() or nxt[:1] in ".,:;)]=<>!~" or prev[-1:] in "=([.<>~!/":
        return ""
    if prev.endswith(":") and nxt.startswith("/"):
        return ""
    return " "


def rejoin(lines: Sequence[str]) -> list[str]:
    """The log with uv's cut lines glued back (pip's lines pass unchanged)."""
    out: list[str] = []
    in_uv = False
    for line in lines:
        if _STEP.match(line):
            in_uv = bool(_UV_STEP.match(line))
        elif in_uv and out and not _UV_LINE_START.match(line):
            out[-1] += _glue(out[-1], line) + line
            continue
        out.append(line)
    return out


@dataclass
class Failure:
    """Everything known about a failed build, for the classifiers to read."""
    step: str                      # our step name: deps, package, requirements, ...
    lines: list[str]               # the failing step's log lines
    error: str = ""                # the engine's final error message
    all_lines: list[str] = field(default_factory=list)
    deps: Sequence[Line] = ()      # lines of the generated deps file, in order
    requirements: Sequence[Line] = ()  # every logical line of requirements.txt
    auth_failures: Sequence[int] = ()  # from the index proxy
    unreachable: Sequence[str] = ()    # from the index proxy
    refused: Sequence[str] = ()        # from the index proxy: upstream answers it would not pass on
    # from the index proxy: URLs the index answered 404 for; None = not known.
    # pip 20 says "Could not find a version that satisfies X" for both a missing
    # project and a missing version: only the index knows which.
    not_found: Sequence[str] | None = None
    # from the index proxy: the versions each project's index page listed
    versions: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @cached_property
    def joined(self) -> list[str]:
        return rejoin(self.lines or self.all_lines)

    @property
    def text(self) -> str:
        return "\n".join(self.joined)

    @property
    def tail(self) -> list[str]:
        return self.joined[-TAIL:] + ([self.error] if self.error else [])

    def find_line(self, project: str) -> Line | None:
        """The requirements line that names PROJECT (normalised as pip does)."""
        want = normalise(project)
        for line in self.requirements:
            m = re.match(rf"\s*({DIST_NAME})", line.text)
            if m and normalise(m.group(1)) == want:
                return line
        return None

    def make(self, cls: type[PackageLoadError], message: str, *, requirement: str | None = None,
             hint: str | None = None) -> PackageLoadError:
        where = None
        line_no = None
        if requirement:
            name = re.match(rf"\s*({DIST_NAME})", requirement)
            found = self.find_line(name.group(1)) if name else None
            if found:
                where, line_no = found.where, found.number
        if where:
            message = f"{message} ({where})"
        return cls(message, requirement=requirement, hint=hint, step=self.step, line=line_no,
                   log_tail=self.tail)


def subprocess_reason(lines: Sequence[str]) -> str | None:
    """The last line a failed build script printed (pip 23's "[N lines of output]"
    box, pip 20's "Complete output", uv's "[stderr]"): usually the actual error."""
    reason = None
    inside = False
    for line in lines:
        s = line.strip()
        if re.search(r"\[\d+ lines? of output\]$|^Complete output \(\d+ lines?\):|^\[std(?:out|err)\]$", s):
            inside = True
        elif inside and (s == "[end of output]" or re.fullmatch(r"-{20,}", s) or s.startswith("hint:")
                         or _STEP.match(line) or _ENGINE_LINE.match(line)):
            inside = False
        elif inside and s and not s.startswith("^"):
            reason = s
    return reason


def step_lines(lines: list[str], step_number: int | None) -> list[str]:
    """The log lines of 'Step N/M' (from its header to the end)."""
    if step_number is None:
        return lines
    prefix = f"Step {step_number}/"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(prefix):
            return lines[i:]
    return lines


STEP_MARK = "--- agent-image step: "


def marked_step(lines: list[str], default: str) -> tuple[str, list[str]]:
    """A RUN that does several of the seed's installs echoes STEP_MARK before
    each: the last mark names the one that failed, and its lines are the evidence."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(STEP_MARK):
            return lines[i][len(STEP_MARK):].strip(), lines[i + 1:]
    return default, lines


def conflict_warnings(lines: list[str]) -> list[str]:
    """Post-install conflict notes, which exit 0: pip's 'X requires Y, but you have Z'
    and uv pip check's 'The package `X` requires `Y`, but `Z` is installed'.
    (uv pip install itself prints none: requirements pins then win silently.)"""
    return [ln.strip() for ln in rejoin(lines)
            if re.search(r" requires .+, but you have .+ which is incompatible", ln)
            or re.search(r"The package `[^`]+` requires `[^`]+`, but (?:`[^`]+` is|it's not) installed", ln)]


def installed_packages(lines: list[str]) -> list[str]:
    """What the build installed, as 'name-version', in first-install order; a later
    install of the same name wins (the seed's order reinstalls requirements pins
    after the package's own install_requires)."""
    out: dict[str, str] = {}
    for ln in rejoin(lines):
        if "Successfully installed" in ln:  # pip: name-version ...
            for token in ln.split("Successfully installed", 1)[1].split():
                m = re.match(r"(.+?)-(\d[^-]*)$", token)
                out[normalise(m.group(1) if m else token)] = token
            continue
        m = re.match(rf"^\s*\+ ({DIST_NAME})==(\S+)", ln)  # uv: " + name==version"
        if m:
            out[normalise(m.group(1))] = f"{m.group(1)}-{m.group(2)}"
    return list(out.values())


def cached_steps(rendered, cached: set[int]) -> list[str]:
    """The build steps of RENDERED (plan.dockerfile.Rendered) the layer cache served, by the
    step numbers it served (BuildOutcome.cached): a step counts when every instruction in it did."""
    return sorted({name for name in rendered.steps
                   if all(n in cached for n, other in enumerate(rendered.steps, 1)
                          if other == name and n > 1)} - {"base"})
