"""What the index proxy does to an index page before the build sees it (builder/indexproxy.py).

Pure text work, no network: the in-build URLs of extra indexes, index options
in requirements turned into them, the versions a page lists (for error
messages), and the links to wheels the build's interpreter can never install
left off (builder/wheeltags.py).
"""

from __future__ import annotations

import base64
import html
import re
from urllib.parse import unquote, urlsplit

from .requirements import normalise
from .wheeltags import Target

PIP_INDEX_HOST = "agent-image-index.invalid"   # what pip in the build sees (dockerfile.PIP_INDEX_URL)

_ANCHOR = re.compile(r"<a\s[^>]*>", re.I)
_ELEMENT = re.compile(r"<a\s[^>]*>[^<]*</a>[ \t]*(?:<br\s*/?>)?", re.I)  # one PEP 503 link, as indexes write it
_REQUIRES_PYTHON = re.compile(r"""\bdata-requires-python\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_YANKED = re.compile(r"\bdata-yanked\b", re.I)
_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_SHA = re.compile(r"sha256=([0-9a-f]{64})")


def proxy_url(url: str, *, find_links: bool = False) -> str:
    """The in-build URL for an index (or find-links page) on an allowed host."""
    token = base64.urlsafe_b64encode(url.encode()).decode()
    return f"http://{PIP_INDEX_HOST}/{'_l' if find_links else '_x'}/{token}/"


_INDEX_OPTION = re.compile(r"(?P<opt>(?<!\S)(?:-i|--index-url|--extra-index-url|-f|--find-links))"
                           r"(?P<sep>\s*=\s*|\s+|)(?P<url>https?://[^\s\\]+)")


def proxied_requirements(text: str, allowed_hosts: frozenset[str]) -> str:
    """requirements TEXT with each index / find-links URL on an allowed host turned into
    its in-build proxy URL (the build reaches nothing else). Other text is unchanged;
    lines naming a host that is not allowed were refused before (requirements.check_policy)."""
    allowed = {h.lower() for h in allowed_hosts}

    def swap(m: re.Match) -> str:
        url = m.group("url")
        if (urlsplit(url).hostname or "").lower() not in allowed:
            return m.group(0)
        return m.group("opt") + (m.group("sep") or " ") + proxy_url(url, find_links=m.group("opt") in ("-f", "--find-links"))

    return _INDEX_OPTION.sub(swap, text) if allowed else text


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
    m = _HREF.search(tag)
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
