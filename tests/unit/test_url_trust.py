"""Trust, round 3, class 2: what decides and what connects read a URL alike.

The proxy decides with urllib.parse and connects with urllib3. Every URL it
fetches or allows must read the same to both (builder/core/urls.py), and the
connection checks the address it connects to (builder/build/proxy/connect.py).
Here: a table of URLs the two read differently (each refused), a property over
URL pieces (whatever is accepted, the host checked is the host urllib3 connects
to), and the requirement policy, the proxy's tokens and the registry client's
redirects. The proxy against real listeners is in test_url_trust_connect.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import urllib3
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.build.proxy.upstream import Fetcher, Refused, Upstream
from builder.core.errors import IndexPolicyError, RegistryError
from builder.core.urls import Disagreement, read_url
from builder.package.piplines import Line
from builder.package.requirements import check_line
from builder.plan.proxied import proxied_requirements
from builder.ship.client import RegistryClient, _loopback

# (URL, what urllib.parse and urllib3 (or pip, or the resolver) would each make of it)
REFUSED = [
    ("http://127.0.0.1:8080\\@pypi.org/x.whl", "the issue's example: pypi.org to one, 127.0.0.1:8080 to the other"),
    ("http://pypi.org\\@127.0.0.1/x.whl", "the same the other way round"),
    ("http://127.0.0.1:8080\\\\@pypi.org/x.whl", "two backslashes"),
    ("https://pypi.org\\.127.0.0.1/", "a backslash inside the host"),
    ("http:\\\\127.0.0.1/x", "backslashes for slashes (WHATWG: a host; urllib.parse: a path)"),
    ("http://127.0.0.1\t.pypi.org/", "a tab: urllib.parse drops it, urllib3 does not"),
    ("http://127.0.0.1\n@pypi.org/", "a newline in the authority"),
    ("http://pypi.org\r/x", "a carriage return"),
    (" http://127.0.0.1/", "a leading space: urllib.parse strips it"),
    ("\x00http://127.0.0.1/", "a leading NUL: urllib.parse strips C0 controls"),
    ("http://127.0.0.1/x\x7f", "DEL"),
    ("http://pypi.org /x", "a space in the authority"),
    ("http://a@b@127.0.0.1/", "two @: urllib.parse splits at the last, others at the first"),
    ("http://127.0.0.1:80:@pypi.org/", "userinfo that looks like host:port"),
    ("http://pypi.org%2F@127.0.0.1/", "userinfo that looks like a host"),
    ("http://user@pypi.org/x.whl", "any userinfo on a fetched URL"),
    ("http://[::1%25lo]/", "an IPv6 zone id"),
    ("http://[fe80::1%eth0]/", "a zone id, not percent-encoded"),
    ("http://%31%32%37.0.0.1/", "percent-encoded host bytes (urllib3 keeps them, a resolver may decode)"),
    ("http://127.0.0.1%2Epypi.org/", "a percent-encoded dot"),
    ("http://ex\u00e4mple.org/", "a host outside ASCII (IDNA: each library its own)"),
    ("http://\uff11\uff12\uff17.0.0.1/", "fullwidth digits (NFKC makes them 127)"),
    ("http://evil\u2100.example/", "a character NFKC turns into a/c"),
    ("http://[127.0.0.1]/", "brackets round an IPv4 address"),
    ("http://[v7.127.0.0.1]/", "an IPvFuture literal"),
    ("http://pypi.org:80x/", "a port that is not digits"),
    ("http://pypi.org:+80/", "a signed port"),
    ("http://pypi.org:99999/", "a port out of range"),
    ("http://pypi.org:/x", "an empty port"),
    ("http:///127.0.0.1/x", "no authority, a host-looking path"),
    ("http:/127.0.0.1/x", "one slash"),
    ("http:127.0.0.1/x", "no slashes"),
    ("//127.0.0.1/x", "no scheme"),
    ("file:///etc/passwd", "not http(s)"),
    ("ftp://pypi.org/x", "not http(s)"),
    ("javascript:alert(1)", "not a URL to fetch"),
    ("", "nothing"),
]

ACCEPTED = [
    ("https://files.pythonhosted.org/packages/ab/x-1.whl#sha256=00", ("https", "files.pythonhosted.org", None)),
    ("HTTP://PyPI.org:8080/simple/", ("http", "pypi.org", 8080)),
    ("http://pypi.org?@127.0.0.1/", ("http", "pypi.org", None)),   # the @ is in the query: both say pypi.org
    ("http://pypi.org#@127.0.0.1/", ("http", "pypi.org", None)),
    ("http://pypi.org/@127.0.0.1/x\\y", None),                      # a backslash anywhere is refused
    ("http://[::1]:81/x", ("http", "::1", 81)),
    ("http://[::ffff:127.0.0.1]/", ("http", "::ffff:127.0.0.1", None)),  # read alike; the connection refuses it
    ("http://0x7f.1/", ("http", "0x7f.1", None)),                   # (idem: it resolves to 127.0.0.1)
    ("http://localhost./", ("http", "localhost.", None)),
]


@pytest.mark.parametrize("url,why", REFUSED, ids=[w for _, w in REFUSED])
def test_urls_read_two_ways_are_refused(url, why):
    with pytest.raises(Disagreement):
        read_url(url)
    with pytest.raises(Refused) as exc:  # as the proxy refuses it, on every hop: a one-line reason
        Fetcher._check(url)
    assert "\n" not in str(exc.value) and exc.value.reason


@pytest.mark.parametrize("url,expected", ACCEPTED)
def test_urls_read_one_way_are_read_as_urllib3_reads_them(url, expected):
    if expected is None:
        with pytest.raises(Disagreement):
            read_url(url)
        return
    assert read_url(url)[:3] == expected


def test_the_index_url_may_carry_credentials_but_must_read_one_way():
    assert Upstream.parse("https://aws:tok%2Fen@example.test/pypi/r/simple/").url == \
        "https://example.test/pypi/r/simple/"
    for raw in ("https://aws:tok@127.0.0.1:1\\@example.test/simple/", "https://a@b@example.test/simple/"):
        with pytest.raises(ValueError, match="plain http"):
            Upstream.parse(raw)


# -- the property: whatever is accepted, the host checked is the host connected to ---------------
_SCHEME = st.sampled_from(["http", "https", "HTTP", "ftp", ""])
_SEP = st.sampled_from(["://", ":/", ":\\\\", ":///", "://\\", ":", "//"])
_HOST = st.sampled_from(["pypi.org", "127.0.0.1", "[::1]", "[::1%25lo]", "0x7f.1", "localhost.", "a.b-c_d", "",
                         "%31", "ex\u00e4m", "[127.0.0.1]", "PyPI.ORG"])
_DELIMS = ["@", ":", "\\", "/", "?", "#", "%", "%40", "%2F", " ", "\t", "\n", "[", "]", ";", "&", "=", "."]
_JUNK = st.lists(st.one_of(st.sampled_from(_DELIMS), _HOST, st.sampled_from(["80", "8080", "x"])),
                 max_size=4).map("".join)
_PORT = st.sampled_from(["", ":80", ":", ":8080", ":99999", ":0x1", ":+1", ": 1"])


@st.composite
def _urls(draw) -> str:
    userinfo = draw(st.one_of(st.just(""), _JUNK.map(lambda s: s + "@")))
    return (draw(_SCHEME) + draw(_SEP) + userinfo + draw(_HOST) + draw(_JUNK) + draw(_PORT) + draw(_JUNK)
            + draw(st.sampled_from(["", "/", "/x.whl", "/@127.0.0.1/", "?a=@b", "#@c"])) + draw(_JUNK))


_POOLS = urllib3.PoolManager()


@settings(max_examples=3000, deadline=None)
@given(_urls())
def test_an_accepted_url_connects_to_the_host_it_was_checked_for(url):
    try:
        where = read_url(url, userinfo=True)
    except Disagreement:
        return
    # what PoolManager.urlopen connects to (connection_from_url is its own first step)
    pool = _POOLS.connection_from_url(url)
    default = 443 if where.scheme == "https" else 80
    assert (pool.scheme, pool.host.strip("[]").lower(), pool.port) == (where.scheme, where.host,
                                                                       where.port or default), url
    parts = urlsplit(url)  # and what covers(), shown() and the allow-lists read
    assert (parts.scheme, parts.hostname, parts.port) == where[:3], url


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(list("ab1.:@/\\?#%[] \t\x00\u00e4") + ["%2F", "%40", "127.0.0.1", "::1"]),
                max_size=12).map("".join))
def test_any_authority_accepted_connects_where_it_was_checked(authority):
    url = f"http://{authority}/x"
    try:
        where = read_url(url)
    except Disagreement:
        return
    pool = _POOLS.connection_from_url(url)
    assert (pool.host.strip("[]").lower(), pool.port) == (where.host, where.port or 80), url
    assert urlsplit(url).hostname == where.host, url


# -- the requirement policy: the host it allows is the host the proxy connects to -----------------
@pytest.mark.parametrize("text", [
    "--index-url http://127.0.0.1:8080\\@allowed.example/simple/",
    "--extra-index-url https://127.0.0.1:8080%40allowed.example/simple/",   # (a % host byte, after any @)
    "--find-links http://allowed.example%2F@127.0.0.1/links/",
    "-i https://[::1%25lo]@allowed.example/simple/",
    "foo @ http://127.0.0.1:8080\\@allowed.example/foo-1.whl",
    "foo @ http://a@b@allowed.example/foo-1.whl",
    "--trusted-host 127.0.0.1\\@allowed.example",
    "--index-url https://allowed.example:99999/simple/",
])
def test_the_requirement_policy_refuses_hosts_read_two_ways(text, tmp_path: Path):
    with pytest.raises(IndexPolicyError):
        check_line(Line("requirements.txt", 1, text), tmp_path, {"allowed.example"})
    # and the rewrite would leave such a line alone: the proxy never gets its URL
    assert proxied_requirements(text + "\n", frozenset({"allowed.example"})) == text + "\n"


def test_the_requirement_policy_still_allows_plain_urls(tmp_path: Path):
    for text in ("--index-url https://allowed.example/simple/", "foo @ https://ALLOWED.example:8443/foo-1.whl",
                 "--trusted-host allowed.example:8080"):
        assert check_line(Line("requirements.txt", 1, text), tmp_path, {"allowed.example"})[0] == "deps"


def test_the_proxy_refuses_tokens_read_two_ways(a, tmp_path):
    from tests.support.indexproxy import ask, make
    a.page("/simple/foo/", [])
    tokens = [f"http://127.0.0.1:{a.port}\\@allowed.example/", f"http://allowed.example\t.127.0.0.1:{a.port}/",
              f"http://a@allowed.example@127.0.0.1:{a.port}/"]
    with make(f"{a.base}/simple/", tmp_path, allowed_hosts=frozenset({"allowed.example"})) as proxy:
        for url in tokens:
            token = base64.urlsafe_b64encode(url.encode()).decode()
            assert ask(proxy, f"/_x/{token}/foo/")[0] == 403
            assert ask(proxy, f"/_l/{token}/")[0] == 403
    assert a.seen == []


# -- the registry client ---------------------------------------------------------------------
class _Redirecting:
    """A urllib3 pool stand-in whose first answer redirects to LOCATION."""

    def __init__(self, location: str) -> None:
        self.location, self.asked = location, []

    def request(self, method, url, **kw):
        self.asked.append(url)
        return urllib3.HTTPResponse(body=b"", status=307, headers={"Location": self.location},
                                    preload_content=False)


@pytest.mark.parametrize("location", ["https://127.0.0.1:8080\\@blobs.example/x", "https://a@b@blobs.example/x",
                                      "https://blobs.example\t.evil/x", "https://[::1%25lo]/x"])
def test_the_registry_client_refuses_redirects_read_two_ways(location):
    pool = _Redirecting(location)
    client = RegistryClient("registry.example", auth={}, pool=pool)
    with pytest.raises(RegistryError, match="redirect is refused"):
        client._send("GET", "https://registry.example/v2/", {}, None, client.retry, stream=False)
    assert pool.asked == ["https://registry.example/v2/"]


def test_registry_loopback_is_an_address_not_a_prefix():
    assert _loopback("127.0.0.1:5000") and _loopback("localhost:5000") and _loopback("[::1]:5000")
    for netloc in ("127.0.0.1.example.com", "127.evil.example", "127.0.0.1\\@example.com", "localhost.example"):
        assert not _loopback(netloc), netloc
