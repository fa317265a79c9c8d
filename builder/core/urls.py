"""One reading of an http(s) URL: the one urllib3 acts on, refused where urllib.parse reads otherwise.

The proxy decides with ``urllib.parse`` (which host is allowed, whose
credential goes where) and connects with urllib3, which splits some URLs
elsewhere: ``http://127.0.0.1:8080\\@pypi.org/`` is pypi.org to the one and
127.0.0.1:8080 to the other. So a URL anything fetches or allows must read the
same to both (scheme, host, port, userinfo) and have a plain authority:
no control character, space or backslash anywhere, an ASCII host of letters,
digits, ``-._`` or a bracketed IPv6 address (no zone id, no percent-encoded
byte), a port of digits. Everything else is refused, never repaired.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

SCHEMES = ("http", "https")
# urllib.parse drops tab/CR/LF anywhere and strips C0 and spaces at the ends; urllib3 does
# neither, and ends the authority at a backslash where urllib.parse does not
_ODD_CHARACTER = re.compile(r"[\x00-\x20\x7f\\]")
_AUTHORITY = re.compile(r"(?:(?P<userinfo>[A-Za-z0-9\-._~!$&'()*+,;=%:]*)@)?"
                        r"(?P<host>[A-Za-z0-9\-._]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


class Disagreement(ValueError):
    """A URL that is not http(s) or could be read two ways. The message is one line, without the URL."""


class Where(NamedTuple):
    """Where a URL leads, as urllib3 (the connection) reads it."""
    scheme: str
    host: str          # lower case; an IPv6 address without brackets
    port: int | None   # None: the scheme's default
    userinfo: str | None


def read_url(url: str, *, userinfo: bool = False) -> Where:
    """URL read as urllib3 reads it, or Disagreement when it is not http(s), urllib.parse reads
    it otherwise, or its address is not plain. USERINFO: may it carry 'user:password@'?"""
    odd = _ODD_CHARACTER.search(url)
    if odd:
        raise Disagreement(f"{_named(odd.group(0))} in the URL (URL parsers read those differently)")
    try:
        a, b = urlsplit(url), parse_url(url)
        a_port = a.port
    except (ValueError, LocationParseError):
        raise Disagreement("a URL that does not parse") from None
    if a.scheme not in SCHEMES or not a.netloc:
        raise Disagreement("not an http(s) URL")
    m = _AUTHORITY.fullmatch(a.netloc)
    if m is None:
        raise Disagreement("an address that is not a plain host[:port] (URL parsers may read it differently)")
    if m.group("userinfo") is not None and not userinfo:
        raise Disagreement("credentials in the URL's address")
    host = m.group("host").lower()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Disagreement("a bracketed host that is not an IPv6 address") from None
    b_host = (b.host or "").lower()
    # (userinfo by presence only: urllib3 re-encodes it, and neither sends it anywhere)
    seen = ((a.scheme, a.hostname, a_port, m.group("userinfo") is None),
            ((b.scheme or "").lower(), b_host.strip("[]"), b.port, b.auth is None))
    if seen[0] != seen[1] or b_host != host or host.strip("[]") != a.hostname:
        raise Disagreement("an address urllib.parse and urllib3 read differently")
    return Where(a.scheme, a.hostname, a_port, m.group("userinfo"))


def join(base: str, ref: str) -> str:
    """REF (a link, a redirect's Location) against BASE, checked as written and as joined: urljoin
    drops a tab or newline before it joins, so the joined URL alone would read one way."""
    odd = _ODD_CHARACTER.search(ref)
    if odd:
        raise Disagreement(f"{_named(odd.group(0))} in the URL (URL parsers read those differently)")
    url = urljoin(base, ref)
    read_url(url)
    return url


def _named(char: str) -> str:
    if char == "\\":
        return "a backslash"
    if char == " ":
        return "a space"
    return f"the character {char!r}"
