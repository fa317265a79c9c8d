"""``Failure`` -> one classified ``PackageLoadError``: what pip or uv said
went wrong (each installer's wording: see ``steplog``). Pure: no engine.
Apart from ``buildlog``, which reads the log, so each module stays small.

Like structlog's processors, classification is a plain list of small
callables, each ``(Failure) -> PackageLoadError | None``; the first that
recognises the failure wins, so the most specific go first. pip's stable
markers (``subprocess-exited-with-error``, ``ResolutionImpossible``) are
matched before plain-text patterns, which pip gives no marker for.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from builder.build.steplog import DIST_NAME, Failure, subprocess_reason
from builder.core.errors import (BuildError, DependencyConflictError, DependencyError, DependencyNotFoundError,
                                 EditableInstallError, HashMismatchError, IndexAuthError, IndexResponseError,
                                 IndexUnreachableError, PackageLoadError, RequirementsSyntaxError, VersionNotFoundError,
                                 WheelBuildError)
from builder.package.piplines import normalise

DEPS_FILE = "requirements-deps.txt"


def _project(req: str) -> str:
    m = re.match(rf"\s*({DIST_NAME})", req)
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
    # the proxy saw the refusal; pip 23 shows none of it at default verbosity,
    # uv adds "hint: An index (...) returned a 403 Forbidden error"
    m = re.search(r"\b(401|403)\b(?: Client Error| Unauthorized| Forbidden)", f.text)
    if f.auth_failures or m:
        code = f.auth_failures[0] if f.auth_failures else int(m.group(1))
        return f.make(IndexAuthError,
                      f"The package index refused our credentials (HTTP {code}): the CodeArtifact token "
                      "was refused: expired or lacks read permission",
                      hint="Refresh the token (or --index-url credentials) and check the repository's read "
                           "permission, then rebuild.")
    return None


def classify_refused(f: Failure) -> PackageLoadError | None:
    # the proxy refused what the index sent (over a cap, a redirect to a refused place);
    # pip only saw a 502, the proxy knows which URL and why
    if f.refused:
        return f.make(IndexResponseError, f"The index proxy refused an index response: {f.refused[0]}",
                      hint="Raise --max-download-bytes / --max-index-page-bytes if the file is expected, "
                           "or check what the index serves at that URL.")
    return None


def classify_unreachable(f: Failure) -> PackageLoadError | None:
    pip_says = re.search(r"(Failed to establish a new connection|Max retries exceeded|ProxyError|"
                         r"Connection refused|Temporary failure in name resolution|Read timed out)", f.text)
    # uv names the cause; a 5xx is our proxy saying the upstream did not answer
    uv_says = re.search(r"(HTTP status server error \(5\d\d[^)]*\)|tcp connect error|dns error|"
                        r"error sending request|operation timed out)", f.text)
    if f.unreachable or uv_says or (pip_says and "from versions: none" in f.text) \
            or (pip_says and not f.requirements):
        reason = f.unreachable[0] if f.unreachable else (uv_says or pip_says).group(1)
        return f.make(IndexUnreachableError,
                      f"The package index could not be reached ({reason})",
                      hint="Check the index URL and the network (or the CodeArtifact endpoint), then rebuild.")
    return None


def _hash_mode(f: Failure) -> PackageLoadError | None:
    """Hash-checking mode (one line with --hash) with a line that has no hash or no == pin."""
    text = f.text
    unpinned = (re.search(r"must have their versions pinned with `==`, but found: (\S+)", text)  # uv
                or re.search(r"must have their versions pinned with ==\. These do not:\s*\n\s+(\S+)", text))
    if unpinned:
        req = unpinned.group(1)
        what = f"{req} is not pinned with =="
    else:
        m = (re.search(r"all requirements must have a hash, but none were provided for: (\S+)", text)  # uv
             or re.search(r"^\s+(\S+) --hash=", text, re.M))
        if not m and "Hashes are required in --require-hashes mode" not in text:
            return None
        req = m.group(1) if m else None
        what = f"{req} has none" if req else ""
    return f.make(HashMismatchError,
                  "Hash verification failed: once one requirement has --hash, every one needs it"
                  f"{f' and an == pin; {what}' if unpinned else (f'; {what}' if what else '')}",
                  requirement=req, hint="Pin every line with == and add its --hash (pip-compile --generate-hashes), "
                                        "or use --hash on no line.")


def classify_hash(f: Failure) -> PackageLoadError | None:
    text = f.text
    hint = ("The file in the index differs from the --hash in requirements.txt: update the hash "
            "if the new file is trusted, or pin the version whose hash you recorded.")
    if "THESE PACKAGES DO NOT MATCH THE HASHES" in text:
        m = re.search(r"^\s+(\S+==\S+|\S+) from \S+", text, re.M)
        req = m.group(1).rstrip(":") if m else None
        exp = re.search(r"Expected sha256 (\w+)", text)
        got = re.search(r"Got\s+(\w+)", text)
    else:
        m = re.search(r"Hash mismatch for `([^`]+)`", text)  # uv
        if not m:
            return _hash_mode(f)
        req = m.group(1)
        exp = re.search(r"Expected:\s*sha256:(\w+)", text)
        got = re.search(r"Computed:\s*sha256:(\w+)", text)
    detail = f": expected sha256 {exp.group(1)[:16]}..., got {got.group(1)[:16]}..." if exp and got else ""
    return f.make(HashMismatchError, f"Hash verification failed for {req or 'a requirement'}{detail}",
                  requirement=req, hint=hint)


def classify_wheel_build(f: Failure) -> PackageLoadError | None:
    # before conflict/not-found: pip 20 discards an sdist whose setup.py fails and
    # then reports "No matching distribution" for it; the build is the cause
    markers = ("subprocess-exited-with-error", "metadata-generation-failed", "Failed building wheel",
               "Failed to build", "legacy-install-failure", "Command errored out with exit status",
               "The build backend returned an error")
    text = f.text
    if not any(mk in text for mk in markers):
        return None
    if f.step == "package":
        return None  # the agent's own package: classify_editable says it better
    m = (re.search(r"Failed to build `([^`]+)`", text)                       # uv
         or re.search(rf"Failed to build (?!installable wheels)({DIST_NAME})", text)  # pip 23+ summary
         or re.search(rf"Failed to build installable wheels.*\n\W*({DIST_NAME})", text)  # pip 25+: "╰─> name"
         or re.search(rf"Failed building wheel for ({DIST_NAME})", text)
         or re.search(rf"Running setup\.py install for ({DIST_NAME})", text)      # pip 20/23 legacy install
         or re.search(r"Discarding \S*/([A-Za-z0-9][\w.]*?)-\d[^/\s]*?\.(?:tar\.gz|zip|tar\.bz2)", text)  # pip 20
         or re.search(rf"Collecting ({DIST_NAME}\S*)[^\n]*\n(?:(?!Collecting).*\n)*?.*subprocess-exited-with-error", text))
    req = m.group(1).split(" @ ")[0] if m else None
    if req:  # each installer names it its own way: report the requirements.txt line when there is one
        line = f.find_line(_project(req))
        req = line.text if line else req
    reason = subprocess_reason(f.joined)
    compiler = re.search(r"(gcc|cc|g\+\+)['\"]?:? (not found|failed)|command '.*gcc'|"
                         r"No such file or directory: 'gcc'", text)
    why = "a compiler is missing" if compiler else \
          "C headers are missing" if re.search(r"\.h: No such file", text) else \
          f"its build script failed: {reason}" if reason else "its build script failed"
    hint = ("Use a version that publishes a wheel for this Python, or publish a prebuilt wheel "
            "to your index; the base image has no compiler." if compiler or "headers" in why else
            "Its setup.py fails in a clean build: use a version that publishes a wheel (or whose sdist "
            "builds), or publish a wheel of it to your index.")
    return f.make(WheelBuildError, f"Building a wheel failed for {req or 'a dependency'}: {why}",
                  requirement=req, hint=hint)


def _uv_unsolvable(text: str) -> str | None:
    """uv's one header for every resolution failure: which kind is it?"""
    if "No solution found when resolving dependencies" not in text:
        return None
    if "was not found in the package registry" in text:
        return "not-found"
    if "depends on" in text or re.search(r"\bdepend on\b", text):
        return "conflict"
    if "there is no version of" in text or re.search(r"only \S+ is available and you require", text):
        return "version"
    return "conflict"


def classify_conflict(f: Failure) -> PackageLoadError | None:
    text = f.text
    hint = ("Loosen one of the two constraints named above (the pin in requirements.txt, or the "
            "install_requires of the package that depends on it) so both can be satisfied (ResolutionImpossible).")
    if _uv_unsolvable(text) == "conflict":
        # "Because all versions of A depend on B<2 and you require A==1.0 ... And because you require B==2.0"
        users = re.findall(r"(?<!conclude that )you require (\S+?)(?=,| and |$)", text, re.M)
        depends = []
        for a, b in re.findall(rf"(?:all versions of )?({DIST_NAME}(?:==\S+)?) depends? on ({DIST_NAME}[^\s,]*)", text):
            b = b.rstrip(".")
            if (a, b) not in depends and not any(_project(a) == _project(x) and b == y for x, y in depends):
                depends.append((a, b))
        dep_projects = {normalise(_project(b)) for _, b in depends}
        requirement = next((u for u in users if normalise(_project(u)) in dep_projects), users[-1] if users else None)
        sides = ([f"you require {requirement}"] if requirement else []) + [f"{a} depends on {b}" for a, b in depends]
        detail = "; ".join(sides[:4]) or "see the log"
        return f.make(DependencyConflictError, f"Dependency conflict: no versions satisfy every constraint: {detail}",
                      requirement=requirement, hint=hint)
    if "ResolutionImpossible" not in text and "conflicting dependencies" not in text:
        return None
    causes = re.findall(r"^\s+(The user requested .+|\S+ \S+ depends on .+)$", text, re.M)
    sides = [c.strip() for c in causes][:4]
    head = re.search(r"Cannot install (.+?) because these package versions have conflicting", text)
    requirement = None
    m = re.search(r"The user requested (\S+)", text)
    if m:
        requirement = m.group(1)
    detail = "; ".join(sides) if sides else (head.group(1) if head else "see the log")
    return f.make(DependencyConflictError,
                  f"Dependency conflict: no versions satisfy every constraint: {detail}",
                  requirement=requirement, hint=hint)


def _not_found(f: Failure, req: str, parent: str | None = None, *, maybe_version: bool = False) -> PackageLoadError:
    project = _project(req)
    via = f" (required by {parent})" if parent else ""
    hint = f"Check requirements.txt for a typo in '{project}', or publish it to your private index."
    what = "is not in the package index (PyPI/CodeArtifact)"
    if maybe_version:
        what = ("is not in the package index (PyPI/CodeArtifact): either the project is missing or "
                "no version of it matches (pip 20 does not say which)")
        hint = f"Check '{project}' for a typo and its version constraint against the index, then rebuild."
    if f.step == "tools":
        hint = (f"--installer uv installs {req} from the same index first: mirror it there, "
                "or build with --installer pip.")
    return f.make(DependencyNotFoundError, f"Dependency not found: '{req}'{via} {what}",
                  requirement=req, hint=hint)


def _version_not_found(f: Failure, req: str, near: list[str] | None, parent: str | None = None) -> PackageLoadError:
    project = _project(req)
    if not near and f.versions.get(normalise(project)):
        # uv and pip 20 list no alternatives; the index page the proxy served did
        wanted = re.search(r"(?:==|~=|<=|>=|<|>)\s*([0-9][^,;\s]*)", req)
        available = list(f.versions[normalise(project)])
        near = closest_versions(wanted.group(1), available) if wanted else available[-3:]
    via = f" (required by {parent})" if parent else ""
    closest = f"; closest available: {', '.join(near)}" if near else \
              "; the installer did not list the available versions"
    hint = "Check the version constraint in requirements.txt against the versions the index has, then rebuild."
    if parent:
        hint = (f"'{project}' is needed by {parent}: publish a version matching '{req}' (with a wheel for this "
                f"Python) to the index, or pin a {parent} that accepts one it has.")
    return f.make(VersionNotFoundError,
                  f"Package version not found: no version of '{project}'{via} matches '{req}'{closest}",
                  requirement=req, hint=hint)


def classify_not_found(f: Failure) -> PackageLoadError | None:
    text = f.text
    kind = _uv_unsolvable(text)
    if kind == "not-found":
        # "Because X was not found in the package registry and you require X==1 / and Y depends on X"
        m = re.search(rf"({DIST_NAME}) was not found in the package registry", text)
        missing = m.group(1)
        user = re.search(rf"you require ({re.escape(missing)}\S*?)(?=,| and |$)", text, re.M)
        parent = re.search(rf"({DIST_NAME})(?:==\S+)? depends? on {re.escape(missing)}", text)
        return _not_found(f, user.group(1) if user else missing, parent.group(1) if parent and not user else None)
    if kind == "version":
        m = re.search(r"there is no version of (\S+?)(?=,| and |$)", text, re.M) or \
            re.search(r"you require (\S+?), we can conclude", text)
        only = re.search(r"only (\S+) is available", text)
        return _version_not_found(f, m.group(1) if m else "?", [only.group(1)] if only else None)
    # pip: "... the requirement X (from parent) (from versions: a, b)"; pip 20.3 omits the versions
    m = re.search(r"Could not find a version that satisfies the requirement (\S+)((?: \([^)]*\))*)", text)
    if not m:
        m2 = re.search(r"No matching distribution found for (\S+)", text)
        if not m2:
            return None
        req, extra = m2.group(1), ""
    else:
        req, extra = m.group(1), m.group(2)
    versions = re.search(r"\(from versions: ([^)]*)\)", extra)
    parent = next((p for p in re.findall(r"\(from ([^)]*)\)", extra)
                   if not p.startswith(("versions:", "-r "))), None)
    if versions is None:
        # pip 20.3: the same words for a missing project and a missing version
        if f.not_found is not None and not _project_404(f.not_found, _project(req)) \
                and re.search(r"[=<>~!]", req):
            return _version_not_found(f, req, None, parent)
        return _not_found(f, req, parent, maybe_version=f.not_found is None and bool(re.search(r"[=<>~!]", req)))
    listed = versions.group(1).strip()
    if listed == "none":
        return _not_found(f, req, parent)
    available = [v.strip() for v in listed.split(",") if v.strip()]
    wanted = re.search(r"(?:==|~=|<=|>=|<|>)\s*([0-9][^,;\s]*)", req)
    near = closest_versions(wanted.group(1), available) if wanted else available[-3:]
    return _version_not_found(f, req, near, parent)


def _project_404(urls: Sequence[str], project: str) -> bool:
    want = normalise(project)
    return any(normalise(u.rstrip("/").rsplit("/", 1)[-1]) == want for u in urls)


def classify_syntax(f: Failure) -> PackageLoadError | None:
    text = f.text
    uv = re.search(r"Couldn't parse requirement in `([^`]+)` at position (\d+)", text)
    line = None
    if uv:
        # uv gives a character offset and echoes the line above a caret
        file, pos = uv.group(1), int(uv.group(2))
        joined = f.joined
        carets = [i for i, ln in enumerate(joined) if re.fullmatch(r"\s*\^+\s*", ln)]
        bad = joined[carets[-1] - 1].strip() if carets and carets[-1] > 0 else None
        if file.endswith(DEPS_FILE):
            offset = 0
            for ln in f.deps:
                if pos < offset + len(ln.text) + 1:
                    line = ln
                    break
                offset += len(ln.text) + 1
        if line is None and bad:
            line = next((ln for ln in f.requirements if bad in ln.text), None)
        bad = bad or (line.text if line else "?")
    else:
        # pip 25+: "Invalid requirement: 'LINE': WHY", the line echoed, then "^ (from line N of FILE)"
        m = re.search(r"Invalid requirement: '(.+?)': .*\n(?:.*\n)*?.*\^ \(from line (\d+) of (\S+)\)$", text, re.M) \
            or re.search(r"Invalid requirement: '?(.+?)'?(?: \(from line (\d+) of (\S+)\))?$", text, re.M)
        if not m:
            m = re.search(r"(?:Invalid requirement|no such option|Invalid URL|Could not parse) ?:? ?(.+)$", text, re.M)
            if not m or "pip install" in m.group(0):
                return None
            bad, number, file = m.group(1), None, None
        else:
            bad, number, file = m.group(1), m.group(2), m.group(3) or ""
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


def classify_editable(f: Failure) -> PackageLoadError | None:
    if f.step != "package":
        return None
    reason = subprocess_reason(f.joined)
    if reason is None:
        m = re.search(r"(error: .+|ERROR: .+)$", f.text, re.M)
        reason = m.group(1) if m else "see the log"
    return EditableInstallError(
        f"Installing the agent package in editable mode (pip install -e .) failed: {reason}",
        hint="Check setup.py / pyproject.toml: run `pip install -e .` in the package folder to reproduce.",
        step=f.step, log_tail=f.tail)


def classify_generic_pip(f: Failure) -> PackageLoadError | None:
    if f.step in ("deps", "requirements", "tools"):
        m = re.search(r"^(?:ERROR|error): (.+)$", f.text, re.M)
        what = "Installing uv (--installer uv) failed" if f.step == "tools" else "Requirements installation failed"
        return f.make(DependencyError,
                      f"{what}: {m.group(1) if m else f.error or 'see the log'}",
                      hint="Read the log tail below; rerun with --json for the full record.")
    return None


CLASSIFIERS: list[Classifier] = [
    classify_auth, classify_refused, classify_unreachable, classify_hash, classify_wheel_build, classify_conflict,
    classify_not_found, classify_syntax, classify_editable, classify_generic_pip,
]


def classify(failure: Failure, classifiers: Sequence[Classifier] = CLASSIFIERS) -> PackageLoadError:
    for classifier in classifiers:
        err = classifier(failure)
        if err is not None:
            return err
    return BuildError(f"The image build failed at step '{failure.step}': {failure.error or 'see the log'}",
                      step=failure.step, log_tail=failure.tail,
                      hint="Read the log tail; if the engine itself failed, rerun the build.")
