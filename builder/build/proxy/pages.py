"""What the index proxy does to an index page before the build sees it (builder/build/proxy/server.py).

Pure text work, no network: the in-build URLs of extra indexes, index options
in requirements turned into them, the versions a page lists (for error
messages), and the links to wheels the build's interpreter can never install
left off (builder/build/proxy/wheeltags.py).
"""

from __future__ import annotations

import html
import re
from urllib.parse import unquote

from builder.build.proxy.wheeltags import Target
from builder.package.piplines import normalise

ANCHOR = re.compile(r"<a\s[^>]*>", re.I)
_ELEMENT = re.compile(r"<a\s[^>]*>[^<]*</a>[ \t]*(?:<br\s*/?>)?", re.I)  # one PEP 503 link, as indexes write it
_REQUIRES_PYTHON = re.compile(r"""\bdata-requires-python\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_YANKED = re.compile(r"\bdata-yanked\b", re.I)
HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
SHA256 = re.compile(r"sha256=([0-9a-f]{64})")


def filename_of(href: str) -> str:
    """The file name a link points at (its last path segment, unquoted)."""
    return unquote(href.split("#", 1)[0].split("?", 1)[0].rsplit("/", 1)[-1])


def project_and_version(filename: str) -> tuple[str, str] | None:
    """(project, version) as a wheel's or a source archive's FILENAME spells them, or None."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
    else:
        stem = re.sub(r"\.(tar\.gz|tar\.bz2|zip|tgz)$", "", filename)
        if stem == filename:
            return None
        parts = stem.rsplit("-", 1)
    return (parts[0], parts[1]) if len(parts) >= 2 else None


def versions_on_page(project: str, hrefs: list[str]) -> list[str]:
    """Versions of PROJECT named by the files a PEP 503 page links, in page order."""
    want = normalise(project)
    seen: list[str] = []
    for href in hrefs:
        found = project_and_version(filename_of(href))
        if found and normalise(found[0]) == want and found[1] not in seen:
            seen.append(found[1])
    return seen




def href_of(tag: str) -> str | None:
    m = HREF.search(tag)
    return None if m is None else html.unescape(m.group(1) or m.group(2) or "")


def drop_foreign(text: str, target: Target) -> tuple[str, int]:
    """TEXT without its links to wheels TARGET cannot install, and how many went."""
    dropped = 0

    def keep(m: re.Match) -> str:
        nonlocal dropped
        href = href_of(m.group(0))
        if href is None or target.keeps(filename_of(href)):
            return m.group(0)
        dropped += 1
        return ""

    return _ELEMENT.sub(keep, text), dropped


def offer_attrs(tag: str) -> tuple[str | None, bool]:
    """An anchor's data-requires-python (unescaped) and whether it is yanked."""
    m = _REQUIRES_PYTHON.search(tag)
    return (html.unescape(m.group(1) or m.group(2)) if m else None), _YANKED.search(tag) is not None
