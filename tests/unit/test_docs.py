"""The docs agree with the code: exit codes generated from the error table,
links that resolve, module paths that exist, a README that stays short.

Engine-free: it reads files and imports builder.core.errors only (through
scripts/gen_exit_codes.py).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "bench" / "README.md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
_MODULE_PATH = re.compile(r"(?<![\w/.])builder/[\w/]*\.py\b")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_exit_codes", ROOT / "scripts" / "gen_exit_codes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0)[1:-1], heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    text = _CODE_SPAN.sub("", text)
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_docs_exist():
    assert README.is_file()
    names = {p.name for p in DOCS}
    assert "exit-codes.md" in names
    assert len(names) > 1


def test_exit_codes_page_is_generated_from_the_error_table():
    gen = _generator()
    expected = gen.render()
    actual = (ROOT / "docs" / "exit-codes.md").read_text(encoding="utf-8")
    assert actual == expected, ("docs/exit-codes.md differs from builder/core/errors.py: "
                                "run `python scripts/gen_exit_codes.py` and commit the result")


def test_every_error_class_has_a_documented_exit_code():
    from builder.core import errors
    text = (ROOT / "docs" / "exit-codes.md").read_text(encoding="utf-8")
    for name, code in errors.EXIT_CODES.items():
        assert f"| {code} | `{name}` |" in text, f"{name} ({code}) missing: run `python scripts/gen_exit_codes.py`"


def test_a_class_without_a_docstring_fails_the_generator(monkeypatch):
    from builder.core import errors

    class UndocumentedError(errors.PackageLoadError):
        reference = "undocumented"
        exit_code = 98

    monkeypatch.setattr(errors, "ALL_ERRORS", (*errors.ALL_ERRORS, UndocumentedError))
    monkeypatch.setitem(errors.EXIT_CODES, "UndocumentedError", 98)
    gen = _generator()
    with pytest.raises(gen.MissingDocstring, match="UndocumentedError"):
        gen.render()


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {_rel(dest)})")
    assert not broken, f"{_rel(page)}: broken links: " + "; ".join(broken)


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines < 200, f"README.md has {lines} lines; move detail to docs/"


def test_readme_starts_with_the_commands():
    head = README.read_text(encoding="utf-8").splitlines()[:8]
    text = "\n".join(head)
    for command in ("bash scripts/demo.sh", "bash scripts/test.sh    #", "bash scripts/test.sh unit"):
        assert command in text, f"README.md's first lines must show `{command}`"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_module_paths_exist(page):
    named = set(_MODULE_PATH.findall(page.read_text(encoding="utf-8")))
    missing = sorted(p for p in named if not (ROOT / p).is_file())
    assert not missing, f"{_rel(page)} names files that do not exist: {', '.join(missing)}"


def test_slug_matches_github():
    assert slug("Errors and `--json`") == "errors-and---json"
    assert slug("What a build can reach") == "what-a-build-can-reach"
    assert slug("Patching the base: `rebase` vs. a warm rebuild (`bench/rebase.py`)") == \
        "patching-the-base-rebase-vs-a-warm-rebuild-benchrebasepy"
