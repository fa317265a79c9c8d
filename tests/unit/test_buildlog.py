"""Classification of real build logs, with no engine: pure and fast.

Every log under tests/data/buildlogs/ was written by a real build
(tests/data/buildlogs/record.py: pip 23 on Python 3.11, pip 20.3 on Python
3.9, uv 0.13.9, and uv again through an engine that keeps lines whole). Its
sidecar JSON holds what builder.api hands the classifier: the step, the
requirements, the engine's error and the index proxy's notes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.build.classify import classify
from builder.build.steplog import Failure, conflict_warnings, installed_packages, rejoin, step_lines, subprocess_reason
from builder.core import errors
from builder.package.piplines import Line, logical_lines
from tests.support.paths import DATA as TEST_DATA

DATA = TEST_DATA / "buildlogs"
SIDECARS = sorted(DATA.glob("*/*.json"))
FAILED = [p for p in SIDECARS if not json.loads(p.read_text())["ok"]]
SUCCEEDED = [p for p in SIDECARS if json.loads(p.read_text())["ok"]]
VARIANTS = sorted({p.parent.name for p in SIDECARS})


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def load(sidecar: Path) -> tuple[dict, list[str]]:
    side = json.loads(sidecar.read_text())
    lines = sidecar.with_suffix(".log").read_text().splitlines()
    return side, lines


def failure(side: dict, lines: list[str], *, proxy: bool = True, proxy_404: bool = False) -> Failure:
    """The Failure builder.api builds (its proxy notes optional; the 404 list is not passed by api yet)."""
    reqs = logical_lines(side["requirements_txt"]) if side["requirements_txt"] else []
    return Failure(step=side["step"], lines=step_lines(lines, side["failed_step"]), error=side["error"],
                   all_lines=lines, deps=[Line(**d) for d in side["deps"]], requirements=reqs,
                   auth_failures=side["auth_failures"] if proxy else (),
                   unreachable=side["unreachable"] if proxy else (),
                   not_found=side["proxy_not_found"] if proxy_404 else None)


# case -> (class, requirement, requirements.txt line, words the message must hold)
EXPECT: dict[str, tuple[str, str | None, int | None, tuple[str, ...]]] = {
    "auth": ("IndexAuthError", None, None, ("expired or lacks read permission", "HTTP 403")),
    "unreachable": ("IndexUnreachableError", None, None, ("could not be reached",)),
    "unreachable_tools": ("IndexUnreachableError", None, None, ("could not be reached",)),
    "hash": ("HashMismatchError", "tinyreq==1.0", 1,
             ("Hash verification failed", "requirements.txt:1", "expected sha256 0000000000000000")),
    "hash_missing": ("HashMismatchError", "tinydep==1.0", 2,
                     ("Hash verification failed", "every one needs it", "requirements.txt:2")),
    "conflict": ("DependencyConflictError", "tinyreq==2.0", 2,
                 ("tinyreq==2.0", "tinydep", "tinyreq<2", "requirements.txt:2")),
    "conflict_setup": ("DependencyConflictError", "tinyreq==2.0", 2,
                       ("tinyreq==2.0", "bl-conflict-setup", "tinyreq<2", "requirements.txt:2")),
    "not_found": ("DependencyNotFoundError", "not-a-real-package==999.999.999", 2,
                  ("Dependency not found", "'not-a-real-package==999.999.999'", "requirements.txt:2")),
    "version_not_found": ("VersionNotFoundError", "tinyreq==1.7", 1,
                          ("Package version not found", "'tinyreq'", "requirements.txt:1")),
    "syntax": ("RequirementsSyntaxError", "invalid syntax here", 2, ("'invalid syntax here'", "requirements.txt:2")),
    "wheel_build": ("WheelBuildError", "needscc==1.0", 1, ("needscc", "a compiler is missing", "requirements.txt:1")),
    "wheel_build_setup": ("WheelBuildError", "brokensdist==1.0", 1,
                          ("brokensdist", "setup.py fails on purpose", "requirements.txt:1")),
    "editable": ("EditableInstallError", None, None, ("pip install -e .", "setup.py is broken on purpose")),
    # pip 20, Python 3.9: requests' charset-normalizer has no wheel for this Python in the test index
    "no_wheel_for_python": ("DependencyNotFoundError", "charset-normalizer<4,>=2", None,
                            ("Dependency not found", "required by requests")),
}
# where an installer says it differently (or does something else)
EXPECT_BY_VARIANT = {
    # pip 20.3 prints "Could not find a version that satisfies the requirement tinyreq==1.7" with no
    # version list, exactly as for a project that does not exist: without the proxy's 404 list
    # (not passed by builder.api yet) the classifier says "not found" and the hint covers both
    ("pip20-py39", "version_not_found"): ("DependencyNotFoundError", "tinyreq==1.7", 1,
                                          ("Dependency not found", "no version of it matches")),
}
# uv does not turn on hash-checking for every line when one has --hash: it installs
SUCCEEDS_WITH = {("uv", "hash_missing"), ("uv-linebuffered", "hash_missing")}


def test_every_variant_and_case_was_recorded():
    assert set(VARIANTS) == {"pip23-py311", "pip20-py39", "pip26-py311", "pip25-py39", "uv", "uv-linebuffered"}
    for variant in VARIANTS:
        names = {p.stem for p in (DATA / variant).glob("*.json")}
        assert set(EXPECT) - {"no_wheel_for_python", "unreachable_tools"} | {"success"} <= names, variant
        for p in (DATA / variant).glob("*.json"):
            assert p.with_suffix(".log").is_file()
    assert "pip 23" in json.loads((DATA / "pip23-py311" / "hash.json").read_text())["installer"]
    assert "pip 20.3" in json.loads((DATA / "pip20-py39" / "hash.json").read_text())["installer"]
    # the base's own pip for the dependency layer (builder/plan/dockerfile.py TOOL_PIP_DIR), the venv's for the package
    assert json.loads((DATA / "pip26-py311" / "hash.json").read_text())["installer"].startswith("pip 26.3 (dep")
    assert json.loads((DATA / "pip25-py39" / "hash.json").read_text())["installer"].startswith("pip 25.3 (dep")


@pytest.mark.parametrize("sidecar", FAILED, ids=_id)
def test_recorded_failure_is_classified(sidecar):
    side, lines = load(sidecar)
    variant, case = sidecar.parent.name, sidecar.stem
    cls, requirement, line, words = EXPECT_BY_VARIANT.get((variant, case), EXPECT[case])
    err = classify(failure(side, lines))
    assert type(err).__name__ == cls, (err.to_dict(), "\n".join(step_lines(lines, side["failed_step"])[-20:]))
    assert err.exit_code == errors.EXIT_CODES[cls]
    if requirement is not None:
        assert err.requirement == requirement
    assert err.line == line, err.to_dict()
    for word in words:
        assert word in err.message, (word, err.message)
    # it says what to do, names the step, and carries the evidence
    assert err.hint and len(err.hint) > 20 and err.hint in str(err)
    assert err.step == side["step"] and err.step in ("deps", "package", "requirements", "tools")
    assert err.log_tail and err.log_tail[-1] == side["error"]
    assert "wrong-password-7777" not in json.dumps(err.to_dict())


@pytest.mark.parametrize("variant", VARIANTS)
def test_version_not_found_names_the_closest_versions_when_the_installer_lists_them(variant):
    side, lines = load(DATA / variant / "version_not_found.json")
    err = classify(failure(side, lines))
    listed = re.search(r"\(from versions: ([^)]*)\)", "\n".join(lines))
    if listed:  # pip 23 lists 1.0, 1.1, 2.0: the neighbours of 1.7 are named
        assert "closest available: 1.0, 1.1, 2.0" in err.message
    else:  # pip 20.3 and uv name none; the message does not invent any
        assert "closest available" not in err.message


@pytest.mark.parametrize("variant", VARIANTS)
def test_conflict_names_both_sides(variant):
    for case, other in (("conflict", "tinydep"), ("conflict_setup", "bl-conflict-setup")):
        side, lines = load(DATA / variant / f"{case}.json")
        err = classify(failure(side, lines))
        sides = err.message.split("constraint: ", 1)[1]
        assert "tinyreq==2.0" in sides and re.search(rf"{other}\S* \S*\s?depends on tinyreq<2", sides), sides
        assert "install_requires" in err.hint


def test_pip20_tells_missing_project_from_missing_version_with_the_proxys_404s():
    """What the proxy's 404 list (Stats.not_found) would decide once builder.api passes it."""
    got = {}
    for case in ("not_found", "version_not_found", "no_wheel_for_python"):
        side, lines = load(DATA / "pip20-py39" / f"{case}.json")
        got[case] = classify(failure(side, lines, proxy_404=True))
    assert type(got["not_found"]).__name__ == "DependencyNotFoundError"
    assert type(got["version_not_found"]).__name__ == "VersionNotFoundError"
    assert got["version_not_found"].line == 1 and "closest available" not in got["version_not_found"].message
    assert type(got["no_wheel_for_python"]).__name__ == "VersionNotFoundError"
    assert "required by requests" in got["no_wheel_for_python"].message


@pytest.mark.parametrize("variant", ["uv", "uv-linebuffered"])
def test_uv_says_enough_on_its_own_for_auth_and_unreachable(variant):
    """uv names the 403 and the 502 in its log: classified even without the proxy's notes."""
    for case, cls in (("auth", "IndexAuthError"), ("unreachable", "IndexUnreachableError")):
        side, lines = load(DATA / variant / f"{case}.json")
        assert type(classify(failure(side, lines, proxy=False))).__name__ == cls


@pytest.mark.parametrize("variant", ["pip23-py311", "pip20-py39"])
def test_pip_needs_the_proxy_for_auth_and_unreachable(variant):
    """pip 23/20 only say "no matching distribution" at default verbosity: the proxy's notes decide."""
    for case in ("auth", "unreachable"):
        side, lines = load(DATA / variant / f"{case}.json")
        assert side["auth_failures"] or side["unreachable"]
        assert type(classify(failure(side, lines, proxy=False))).__name__ == "DependencyNotFoundError"


def test_tools_step_failure_with_uv_says_how_to_get_out():
    """--installer uv installs uv from the same index first; an index without it gets a hint."""
    side, lines = load(DATA / "uv" / "unreachable_tools.json")
    f = failure(side, lines, proxy=False)
    err = classify(f)
    assert type(err).__name__ == "DependencyNotFoundError" and err.step == "tools"
    assert "uv==0.13.9" in err.message and "--installer pip" in err.hint


# --- uv's lines come cut in pieces ---------------------------------------------------------

def _shape(line: str) -> str:
    """A line with what changes between two runs (ids, ports, timings, temp names) masked."""
    line = re.sub(r"\b[0-9a-f]{12}\b", "ID", line)
    line = re.sub(r"\d+(\.\d+)?(ms|s)\b", "T", line)
    line = re.sub(r"(127\.0\.0\.1(%3A|:))\d+", r"\1PORT", line)
    return re.sub(r"/tmp/\S+", "/tmp/X", line)


def test_rejoin_leaves_whole_lines_alone():
    for sidecar in SIDECARS:
        if sidecar.parent.name in ("pip23-py311", "pip20-py39", "uv-linebuffered"):
            _, lines = load(sidecar)
            assert rejoin(lines) == lines, _id(sidecar)


@pytest.mark.parametrize("case", sorted({p.stem for p in (DATA / "uv").glob("*.json")}
                                        & {p.stem for p in (DATA / "uv-linebuffered").glob("*.json")}))
def test_rejoin_gives_back_uvs_lines(case):
    """uv's cut lines, glued back, read as the line-buffered recording of the same build."""
    cut_side, cut = load(DATA / "uv" / f"{case}.json")
    whole_side, whole = load(DATA / "uv-linebuffered" / f"{case}.json")
    # (a piece that was only blanks is gone for good: compare without the indentation)
    uv_lines = lambda lines: [_shape(ln.strip()) for ln in lines  # noqa: E731
                              if re.match(r"\s*(error|warning|hint|cause|[+-] )", ln)]
    # the failing step (earlier steps may have come from the layer cache in one run and not the other)
    assert uv_lines(rejoin(step_lines(cut, cut_side["failed_step"]))) == \
        uv_lines(step_lines(whole, whole_side["failed_step"]))


def test_subprocess_reason_is_the_build_scripts_last_words():
    side, lines = load(DATA / "pip23-py311" / "wheel_build.json")
    assert subprocess_reason(lines) == "error: command 'x86_64-linux-gnu-gcc' failed: No such file or directory"
    side, lines = load(DATA / "pip20-py39" / "editable.json")
    assert subprocess_reason(lines) == "setup.py is broken on purpose"


# --- successful builds --------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_installed_packages(variant):
    side, lines = load(DATA / variant / "success.json")
    assert side["ok"]
    got = installed_packages(lines)
    by_name = dict(re.match(r"(.+?)(?:-(\d\S*))?$", p).groups() for p in got)
    # the requirements pin (tinyreq 2.0) is installed last and wins over install_requires' tinyreq<2
    assert by_name["tinyreq"] == "2.0"
    assert by_name["sharedlib"] == "1.0" and by_name["structlog"] == "24.4.0" and by_name["tinydep"] == "1.0"
    # the agent itself: pip 20 (the py3.9 venv's, which the package step uses) prints no version for an editable
    assert by_name["bl-success"] == (None if variant in ("pip20-py39", "pip25-py39") else "0.1.0")
    assert len(got) == len(by_name) == 5, got


@pytest.mark.parametrize("variant", VARIANTS)
def test_conflict_warnings(variant):
    side, lines = load(DATA / variant / "success.json")
    warnings = conflict_warnings(lines)
    if variant.startswith("pip"):
        assert warnings == ["tinydep 1.0 requires tinyreq<2, but you have tinyreq 2.0 which is incompatible.",
                            "bl-success 0.1.0 requires tinyreq<2, but you have tinyreq 2.0 which is incompatible."]
    else:
        # uv pip install prints no such note: the pin wins silently (only `uv pip check` reports it)
        assert warnings == []
    # what `uv pip check` (0.13.9) prints for the same venv, were the template to run it
    assert conflict_warnings(["The package `tinydep` requires `tinyreq<2`, but `2.0` is installed"]) == \
        ["The package `tinydep` requires `tinyreq<2`, but `2.0` is installed"]


@pytest.mark.parametrize("sidecar", SUCCEEDED, ids=_id)
def test_successful_logs_install_something(sidecar):
    side, lines = load(sidecar)
    assert (sidecar.parent.name, sidecar.stem) in SUCCEEDS_WITH or sidecar.stem == "success"
    assert installed_packages(lines)


def test_version_not_found_names_the_index_versions_when_the_installer_does_not():
    """uv's 'there is no version of tinyreq==1.7' lists nothing; the proxy saw the page."""
    lines = ["error: No solution found when resolving dependencies",
             "  cause: Because there is no version of tinyreq==1.7 and you require tinyreq==1.7, "
             "we can conclude that your requirements are unsatisfiable."]
    reqs = [Line("requirements.txt", 1, "tinyreq==1.7")]
    err = classify(Failure(step="deps", lines=lines, requirements=reqs, deps=reqs,
                           versions={"tinyreq": ["1.0", "1.1", "2.0"]}))
    assert isinstance(err, errors.VersionNotFoundError)
    assert "closest available: 1.0, 1.1, 2.0" in err.message and "requirements.txt:1" in err.message, err.message
