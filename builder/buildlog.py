"""Build-log lines -> one classified ``PackageLoadError``. Pure: no engine.

Like structlog's processors, classification is a plain list of small
callables, each ``(Failure) -> PackageLoadError | None``; the first that
recognises the failure wins, so the most specific go first. pip's stable
markers (``subprocess-exited-with-error``, ``ResolutionImpossible``) are
matched before plain-text patterns, which pip gives no marker for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import (BuildError, DependencyConflictError, DependencyError, DependencyNotFoundError,
                     EditableInstallError, HashMismatchError, IndexAuthError, IndexUnreachableError,
                     PackageLoadError, RequirementsSyntaxError, VersionNotFoundError, WheelBuildError)
from .requirements import Line

TAIL = 25
DEPS_FILE = "requirements-deps.txt"


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

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def tail(self) -> list[str]:
        return (self.lines or self.all_lines)[-TAIL:] + ([self.error] if self.error else [])

    def find_line(self, project: str) -> Line | None:
        """The requirements line that names PROJECT (normalised as pip does)."""
        want = _norm(project)
        for line in self.requirements:
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.text)
            if m and _norm(m.group(1)) == want:
                return line
        return None

    def make(self, cls: type[PackageLoadError], message: str, *, requirement: str | None = None,
             hint: str | None = None) -> PackageLoadError:
        where = None
        line_no = None
        if requirement:
            name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            found = self.find_line(name.group(1)) if name else None
            if found:
                where, line_no = found.where, found.number
        if where:
            message = f"{message} ({where})"
        return cls(message, requirement=requirement, hint=hint, step=self.step, line=line_no,
                   log_tail=self.tail)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return m.group(1) if m else req


def _version_key(v: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", v))


def closest_versions(wanted: str, available: list[str], n: int = 3) -> list[str]:
    """The N available versions nearest to WANTED (neighbours in version order)."""
    if not available:
        return []
    ordered = sorted(set(available), key=_version_key)
    key = _version_key(wanted)
    idx = next((i for i, v in enumerate(ordered) if _version_key(v) > key), len(ordered))
    lo = max(0, idx - (n + 1) // 2)
    return ordered[lo:lo + n] if lo + n <= len(ordered) else ordered[-n:]


# --- classifiers, most specific first -----------------------------------------

Classifier = Callable[[Failure], "PackageLoadError | None"]


def classify_auth(f: Failure) -> PackageLoadError | None:
    m = re.search(r"\b(401|403) Client Error", f.text)
    if f.auth_failures or m:
        code = f.auth_failures[0] if f.auth_failures else int(m.group(1))
        return f.make(IndexAuthError,
                      f"The package index refused our credentials (HTTP {code}): the CodeArtifact token "
                      "was refused: expired or lacks read permission",
                      hint="Refresh the token (or --index-url credentials) and check the repository's read "
                           "permission, then rebuild.")
    return None


def classify_unreachable(f: Failure) -> PackageLoadError | None:
    pip_says = re.search(r"(Failed to establish a new connection|Max retries exceeded|ProxyError|"
                         r"Connection refused|Temporary failure in name resolution|Read timed out)", f.text)
    if f.unreachable or (pip_says and "from versions: none" in f.text) or (pip_says and not f.requirements):
        reason = f.unreachable[0] if f.unreachable else pip_says.group(1)
        return f.make(IndexUnreachableError,
                      f"The package index could not be reached ({reason})",
                      hint="Check the index URL and the network (or the CodeArtifact endpoint), then rebuild.")
    return None


def classify_hash(f: Failure) -> PackageLoadError | None:
    if "THESE PACKAGES DO NOT MATCH THE HASHES" in f.text:
        m = re.search(r"^\s+(\S+==\S+|\S+) from \S+", f.text, re.M)
        req = m.group(1).rstrip(":") if m else None
        exp = re.search(r"Expected sha256 (\w+)", f.text)
        got = re.search(r"Got\s+(\w+)", f.text)
        detail = f": expected sha256 {exp.group(1)[:16]}..., got {got.group(1)[:16]}..." if exp and got else ""
        return f.make(HashMismatchError, f"Hash verification failed for {req or 'a requirement'}{detail}",
                      requirement=req,
                      hint="The file in the index differs from the --hash in requirements.txt: update the hash "
                           "if the new file is trusted, or pin the version whose hash you recorded.")
    if "Hashes are required in --require-hashes mode" in f.text:
        m = re.search(r"^\s+(\S+) --hash=", f.text, re.M)
        req = m.group(1) if m else None
        return f.make(HashMismatchError,
                      f"Hash verification failed: once one requirement has --hash, every one needs it"
                      f"{f'; {req} has none' if req else ''}",
                      requirement=req, hint="Add --hash to every line (pip-compile --generate-hashes) or to none.")
    return None


def classify_conflict(f: Failure) -> PackageLoadError | None:
    if "ResolutionImpossible" not in f.text and "conflicting dependencies" not in f.text:
        return None
    causes = re.findall(r"^\s+(The user requested .+|\S+ \S+ depends on .+)$", f.text, re.M)
    sides = [c.strip() for c in causes][:4]
    head = re.search(r"Cannot install (.+?) because these package versions have conflicting", f.text)
    requirement = None
    m = re.search(r"The user requested (\S+)", f.text)
    if m:
        requirement = m.group(1)
    detail = "; ".join(sides) if sides else (head.group(1) if head else "see the log")
    return f.make(DependencyConflictError,
                  f"Dependency conflict: no versions satisfy every constraint: {detail}",
                  requirement=requirement,
                  hint="Loosen one of the pins named above so both sides can be satisfied (ResolutionImpossible).")


def classify_not_found(f: Failure) -> PackageLoadError | None:
    m = re.search(r"Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)",
                  f.text)
    if not m:
        m2 = re.search(r"No matching distribution found for (\S+)", f.text)
        if not m2:
            return None
        req, versions = m2.group(1), "none"
    else:
        req, versions = m.group(1), m.group(2).strip()
    project = _project(req)
    if versions == "none":
        return f.make(DependencyNotFoundError,
                      f"Dependency not found: '{req}' is not in the package index (PyPI/CodeArtifact)",
                      requirement=req,
                      hint=f"Check requirements.txt for a typo in '{project}', or publish it to your private index.")
    available = [v.strip() for v in versions.split(",") if v.strip()]
    wanted = re.search(r"(?:==|~=|<=|>=|<|>)\s*([0-9][^,;\s]*)", req)
    near = closest_versions(wanted.group(1), available) if wanted else available[-3:]
    return f.make(VersionNotFoundError,
                  f"Package version not found: no version of '{project}' matches '{req}'; "
                  f"closest available: {', '.join(near)}",
                  requirement=req, hint="Check the version constraint in requirements.txt.")


def classify_syntax(f: Failure) -> PackageLoadError | None:
    m = re.search(r"Invalid requirement: '?(.+?)'?(?: \(from line (\d+) of (\S+)\))?$", f.text, re.M)
    if not m:
        m = re.search(r"(?:Invalid requirement|no such option|Invalid URL|Could not parse) ?:? ?(.+)$", f.text, re.M)
        if not m or "pip install" in m.group(0):
            return None
        bad, number, file = m.group(1), None, None
    else:
        bad, number, file = m.group(1), m.group(2), m.group(3) or ""
    line = None
    if number and file and file.endswith(DEPS_FILE) and int(number) <= len(f.deps):
        line = f.deps[int(number) - 1]
    elif number:
        line = next((ln for ln in f.requirements if ln.number == int(number)), None)
    if line is None:
        line = next((ln for ln in f.requirements if bad.strip("'") in ln.text), None)
    where = f" ({line.where})" if line else ""
    err = RequirementsSyntaxError(
        f"Invalid requirement syntax: '{bad.strip()}'{where}",
        requirement=bad.strip(), line=line.number if line else None, step=f.step,
        hint="Each line must be a requirement like 'name==1.2' or a pip option; fix or remove it.",
        log_tail=f.tail)
    return err


def classify_wheel_build(f: Failure) -> PackageLoadError | None:
    markers = ("subprocess-exited-with-error", "metadata-generation-failed", "Failed building wheel",
               "Failed to build", "legacy-install-failure")
    if not any(mk in f.text for mk in markers):
        return None
    if f.step == "package":
        return None  # the agent's own package: classify_editable says it better
    m = (re.search(r"Failed to build ([\w.-]+)", f.text) or re.search(r"Failed building wheel for ([\w.-]+)", f.text)
         or re.search(r"Getting requirements to build wheel .*?\n.*?([\w.-]+)", f.text)
         or re.search(r"Collecting ([\w.-]+)[^\n]*\n(?:(?!Collecting).*\n)*?.*subprocess-exited-with-error", f.text))
    req = m.group(1) if m else None
    why = "a compiler is missing" if re.search(r"(gcc|cc|g\+\+)['\"]?:? (not found|failed)|command '.*gcc'|"
                                               r"No such file or directory: 'gcc'", f.text) else \
          "C headers are missing" if re.search(r"\.h: No such file", f.text) else "its build script failed"
    return f.make(WheelBuildError,
                  f"Building a wheel failed for {req or 'a dependency'}: {why}",
                  requirement=req,
                  hint="Use a version that publishes a wheel for this Python, or publish a prebuilt wheel "
                       "to your index; the base image has no compiler.")


def classify_editable(f: Failure) -> PackageLoadError | None:
    if f.step != "package":
        return None
    m = re.search(r"(error: .+|ERROR: .+)$", f.text, re.M)
    return EditableInstallError(
        f"Installing the agent package in editable mode (pip install -e .) failed: "
        f"{m.group(1) if m else 'see the log'}",
        hint="Check setup.py / pyproject.toml: run `pip install -e .` in the package folder to reproduce.",
        step=f.step, log_tail=f.tail)


def classify_generic_pip(f: Failure) -> PackageLoadError | None:
    if f.step in ("deps", "requirements"):
        m = re.search(r"^ERROR: (.+)$", f.text, re.M)
        return f.make(DependencyError,
                      f"Requirements installation failed: {m.group(1) if m else f.error or 'see the log'}",
                      hint="Read the log tail below; rerun with --json for the full record.")
    return None


CLASSIFIERS: list[Classifier] = [
    classify_auth, classify_unreachable, classify_hash, classify_conflict, classify_not_found,
    classify_syntax, classify_wheel_build, classify_editable, classify_generic_pip,
]


def classify(failure: Failure, classifiers: Sequence[Classifier] = CLASSIFIERS) -> PackageLoadError:
    for classifier in classifiers:
        err = classifier(failure)
        if err is not None:
            return err
    return BuildError(f"The image build failed at step '{failure.step}': {failure.error or 'see the log'}",
                      step=failure.step, log_tail=failure.tail,
                      hint="Read the log tail; if the engine itself failed, rerun the build.")


def step_lines(lines: list[str], step_number: int | None) -> list[str]:
    """The log lines of 'Step N/M' (from its header to the end)."""
    if step_number is None:
        return lines
    prefix = f"Step {step_number}/"
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(prefix):
            return lines[i:]
    return lines


def conflict_warnings(lines: list[str]) -> list[str]:
    """pip's post-install conflict notes ('X requires Y, but you have Z'), which exit 0."""
    return [ln.strip() for ln in lines if re.search(r" requires .+, but you have .+ which is incompatible", ln)]


def installed_packages(lines: list[str]) -> list[str]:
    out: list[str] = []
    for ln in lines:
        if "Successfully installed" in ln:
            out.extend(ln.split("Successfully installed", 1)[1].split())
    return out
