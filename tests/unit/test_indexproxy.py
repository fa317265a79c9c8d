"""Issue 10: each rule of the index proxy, against real HTTP servers on loopback.

Two upstreams: A plays the index (and records what it was asked, with which
Authorization), B plays another origin. The proxy is driven with raw request
lines, so absolute-form, CONNECT and unnormalised paths reach it as a
hostile build would send them.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket

import pytest

from builder.build.proxy.cache import DownloadCache, identity
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import Upstream
from builder.plan.proxied import proxy_url
from tests.support.httpserver import SHA, WHEEL
from tests.support.indexproxy import ask, links, make


def test_only_normalised_project_pages_of_the_index(a, b, tmp_path):
    a.page("/simple/foo-bar/", [])
    with make(f"{a.base}/simple/", tmp_path) as proxy:
        assert ask(proxy, "/simple/foo-bar/")[0] == 200
        assert ask(proxy, "http://agent-image-index.invalid/simple/foo-bar/")[0] == 200
        for target in ("/simple/Foo_Bar/", "/simple/foo.bar/", "/simple/../x/", "/simple/%2e%2e/%2e%2e/x/",
                       "/simple/", "/", f"/simple/http://127.0.0.1:{b.port}/", "/simple/foo-bar/../../x/",
                       "/packages/x.whl", "/simple/data:text/html,%3Ca%20href=%22file:///x%22%3E"):
            assert ask(proxy, target)[0] == 404, target
        # absolute-form to any other host, and CONNECT: not an open proxy
        assert ask(proxy, f"{b.base}/")[0] == 403
        assert ask(proxy, "http://agent-image-index.invalid:8080/simple/foo-bar/")[0] == 403
        assert ask(proxy, f"127.0.0.1:{b.port}", method="CONNECT")[0] == 501
        assert proxy.stats.denied == 12
    assert a.paths() == ["/simple/foo-bar/", "/simple/foo-bar/"] and b.seen == []


def test_a_page_passes_on_a_hash_fragment_and_nothing_else(a, tmp_path):
    """pip joins '#subdirectory=' to the source as written: a page must not pick a directory of the image."""
    sha = "ab" * 32
    a.page("/simple/foo/", [f"{a.base}/f/foo-1.tar.gz#subdirectory=/opt/agent-image",
                            f"{a.base}/f/foo-2.tar.gz#egg=foo&subdirectory=../..", f"{a.base}/f/foo-3.tar.gz#sha256={sha}"])
    with make(f"{a.base}/simple/", tmp_path) as proxy:
        status, body = ask(proxy, "/simple/foo/")
    hrefs = re.findall(r'href="([^"]+)"', body.decode())
    assert status == 200 and len(hrefs) == 3
    assert "#" not in hrefs[0] and "#" not in hrefs[1] and hrefs[2].endswith(f"/foo-3.tar.gz#sha256={sha}")


def test_other_schemes_lead_nowhere(a, tmp_path):
    a.page("/simple/foo/", ["file:///etc/passwd", "data:text/plain,x", "ftp://example.test/foo-1.whl",
                            "../../packages/foo-1.0-py3-none-any.whl"])
    a.file("/packages/foo-1.0-py3-none-any.whl")
    with make(f"{a.base}/simple/", tmp_path) as proxy:
        status, body = ask(proxy, "/simple/foo/")
        assert status == 200
        assert not re.search(r'href="(file|data|ftp):', body.decode()), body
        assert len(links(body)) == 1
        assert ask(proxy, "/_f/file//etc/passwd")[0] == 404
    for raw in ("file:///x/simple/", "ftp://h/simple/", "data:text/html,x", "gopher://h/"):
        with pytest.raises(ValueError):
            Upstream.parse(raw)


def test_files_only_at_the_exact_urls_a_page_served_to_this_build_linked(a, b, tmp_path):
    a.page("/simple/foo/", [f"../../packages/foo-1.0-py3-none-any.whl#sha256={SHA}", f"{b.base}/ext/foo-1.1.tar.gz"])
    a.file("/packages/foo-1.0-py3-none-any.whl")
    a.file("/packages/secret-1.0.whl", b"not linked")
    b.file("/ext/foo-1.1.tar.gz", b"sdist-bytes")
    with make(f"{a.base}/simple/", tmp_path) as proxy:
        status, body = ask(proxy, "/simple/foo/")
        wheel, sdist = links(body)
        assert f"#sha256={SHA}" in body.decode()
        assert ask(proxy, wheel) == (200, WHEEL)
        assert ask(proxy, sdist) == (200, b"sdist-bytes")
        key = wheel.split("/")[2]
        assert ask(proxy, f"/_f/{key}/secret-1.0.whl")[0] == 404      # the id names one file only
        assert ask(proxy, f"/_f/{'0' * 32}/foo-1.0-py3-none-any.whl")[0] == 404
        assert ask(proxy, wheel, method="HEAD")[0] == 200
    # another build's proxy has served no page yet: the same link means nothing to it
    with make(f"{a.base}/simple/", tmp_path) as second:
        assert ask(second, wheel)[0] == 404
    assert "/packages/secret-1.0.whl" not in a.paths()


def test_credentials_only_inside_the_index_scope(a, b, tmp_path):
    index = f"http://alice:pw-1234@127.0.0.1:{a.port}/pypi/r/simple/"
    a.page("/pypi/r/simple/foo/", ["/pypi/r/files/foo-1.whl", "/pypi/other/files/foo-2.whl",
                                   "/pypi/r/../other/foo-3.whl", "/pypi/r/%2e%2e/other/foo-6.whl",
                                   f"{b.base}/pypi/r/files/foo-4.whl",
                                   f"http://localhost:{a.port}/pypi/r/files/foo-5.whl"])
    for n in (1, 2, 5):
        a.file(f"/pypi/{'other' if n == 2 else 'r'}/files/foo-{n}.whl", b"x%d" % n)
    a.file("/pypi/other/foo-3.whl", b"x3")
    a.file("/pypi/r/%2E%2E/other/foo-6.whl", b"x6")  # urllib3 upper-cases escapes
    b.file("/pypi/r/files/foo-4.whl", b"x4")
    with make(index, tmp_path) as proxy:
        _, body = ask(proxy, "/simple/foo/")
        for link in links(body):
            assert ask(proxy, link)[0] == 200, link
    auth = {p: h for _, p, h in a.seen + b.seen}
    assert auth["/pypi/r/simple/foo/"] and auth["/pypi/r/files/foo-1.whl"]
    for path in ("/pypi/other/files/foo-2.whl", "/pypi/other/foo-3.whl", "/pypi/r/%2E%2E/other/foo-6.whl",
                 "/pypi/r/files/foo-4.whl"):
        assert auth[path] is None, path
    assert [h for _, p, h in a.seen if p == "/pypi/r/files/foo-5.whl"] == [None]  # localhost != 127.0.0.1
    # plain http carries no credential except to a loopback index
    with pytest.raises(ValueError, match="plain http"):
        Upstream.parse("http://aws:tok-5678@example.test/pypi/r/simple/")
    up = Upstream.parse("https://aws:tok-5678@example.test/pypi/r/simple/")
    assert up.scope == "https://example.test/pypi/r/"
    assert up.covers("https://example.test/pypi/r/x.whl")
    assert not up.covers("http://example.test/pypi/r/x.whl")
    assert not up.covers("https://example.test/pypi/rr/x.whl")
    assert not up.covers("https://example.test:444/pypi/r/x.whl")
    assert not up.covers("https://example.test/pypi/r/../../other/x.whl")
    assert Upstream.parse("http://u:p@127.0.0.1:1/simple/").scope == "http://127.0.0.1:1/"


def test_redirects_lose_credentials_once_they_leave_and_go_only_to_http(a, b, tmp_path):
    index = f"http://alice:pw-1234@127.0.0.1:{a.port}/simple/"
    names = ["out.whl", "within.whl", "outandback.whl", "tofile.whl", "loop.whl"]
    a.page("/simple/foo/", [f"/packages/{n}" for n in names])
    a.redirect("/packages/out.whl", f"{b.base}/landing.whl")
    b.file("/landing.whl", b"landed")
    a.redirect("/packages/within.whl", "/packages/real.whl")
    a.file("/packages/real.whl", b"real")
    a.redirect("/packages/outandback.whl", f"{b.base}/bounce")
    b.redirect("/bounce", f"{a.base}/packages/back.whl")
    a.file("/packages/back.whl", b"back")
    a.redirect("/packages/tofile.whl", "file:///etc/passwd")
    a.redirect("/packages/loop.whl", "/packages/loop.whl")
    with make(index, tmp_path) as proxy:
        _, body = ask(proxy, "/simple/foo/")
        got = {link.rsplit("/", 1)[1]: ask(proxy, link) for link in links(body)}
        assert got["out.whl"] == (200, b"landed")
        assert got["within.whl"] == (200, b"real")
        assert got["outandback.whl"] == (200, b"back")
        assert got["tofile.whl"][0] == 502 and got["loop.whl"][0] == 502
        assert any("file:///etc/passwd" in r for r in proxy.stats.refused), proxy.stats.refused
        assert any("redirects" in r and "loop.whl" in r for r in proxy.stats.refused), proxy.stats.refused
    auth = [(p, h) for _, p, h in a.seen + b.seen]
    assert ("/landing.whl", None) in auth and ("/bounce", None) in auth
    assert ("/packages/back.whl", None) in auth           # left once: never again
    assert [h for p, h in auth if p == "/packages/real.whl"][0]  # stayed inside: kept


def test_size_caps_refuse_and_keep_nothing(a, tmp_path):
    a.routes["/simple/big/"] = (200, {"Content-Type": "text/html"}, b"<html>" + b"x" * 5000 + b"</html>")
    a.page("/simple/foo/", ["/packages/declared.whl", "/packages/chunked.whl", "/packages/small.whl"])
    a.file("/packages/declared.whl", b"d" * 5000)
    a.file("/packages/chunked.whl", b"c" * 5000, **{"Transfer-Encoding": "chunked"})
    a.file("/packages/small.whl", b"s" * 500)
    with make(f"{a.base}/simple/", tmp_path, page_max_bytes=2000, file_max_bytes=1000) as proxy:
        status, body = ask(proxy, "/simple/big/")
        assert status == 502 and b"/simple/big/" in body
        _, page = ask(proxy, "/simple/foo/")
        got = {link.rsplit("/", 1)[1]: ask(proxy, link)[0] for link in links(page)}
        assert got == {"declared.whl": 502, "chunked.whl": 502, "small.whl": 200}
        refused = " ".join(proxy.stats.refused)
        for name in ("/simple/big/", "/packages/declared.whl", "/packages/chunked.whl"):
            assert name in refused, refused
    blobs = list((tmp_path / "cache" / "v2" / "sha256").iterdir())
    assert [p.read_bytes() for p in blobs] == [b"s" * 500]
    assert list((tmp_path / "cache" / "v2" / "tmp").iterdir()) == []


def test_a_file_without_a_hash_is_reused_only_for_the_same_index_and_credential(a, tmp_path):
    a.page("/simple/foo/", ["/packages/nohash.whl", f"/packages/hashed.whl#sha256={SHA}"])
    a.file("/packages/nohash.whl", b"first")
    a.file("/packages/hashed.whl")
    cache = DownloadCache(tmp_path / "cache")

    def fetch(user: str) -> dict[str, bytes]:
        with IndexProxy(Upstream.parse(f"http://{user}:pw-{user}@127.0.0.1:{a.port}/simple/"), cache) as proxy:
            _, body = ask(proxy, "/simple/foo/")
            return {link.rsplit("/", 1)[1]: ask(proxy, link)[1] for link in links(body)}

    assert fetch("alice") == {"nohash.whl": b"first", "hashed.whl": WHEEL}
    a.file("/packages/nohash.whl", b"second")
    assert fetch("alice")["nohash.whl"] == b"first"   # same identity: reused
    assert fetch("bob")["nohash.whl"] == b"second"    # another credential: fetched again
    assert a.paths().count("/packages/hashed.whl") == 1  # a hash from the page is reused by anyone
    assert b"pw-alice" not in b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert identity("u", "Basic x") != identity("u", "Basic y")


def test_cache_discards_url_keyed_entries_and_cleans_crashed_parts(tmp_path):
    root = tmp_path / "cache"
    (root / "urls").mkdir(parents=True)
    (root / "blobs").mkdir()
    (root / "urls" / "k").write_text("0" * 64)
    (root / "blobs" / ("0" * 64)).write_bytes(b"trusted by url")
    (root / "v2" / "tmp").mkdir(parents=True)
    dead = root / "v2" / "tmp" / ".part-999999999-abc"
    live = root / "v2" / "tmp" / f".part-{os.getpid()}-live"
    dead.write_bytes(b"x" * 10)
    live.write_bytes(b"y" * 10)
    cache = DownloadCache(root, max_bytes=15)
    assert not (root / "urls").exists() and not (root / "blobs").exists()
    assert not dead.exists() and live.exists() and cache.parts_removed == 1
    # a download in flight counts toward the cap
    (cache.blobs / ("1" * 64)).write_bytes(b"z" * 10)
    cache.evict()
    assert not (cache.blobs / ("1" * 64)).exists()


def test_unix_socket_and_allowed_extra_hosts(a, b, tmp_path):
    b.page("/extra/simple/foo/", [f"{b.base}/files/foo-9.whl"])
    b.file("/files/foo-9.whl", b"extra")
    b.page("/links/", ["foo-8.whl"])
    b.file("/links/foo-8.whl", b"found")
    sock = str(tmp_path / "p.sock")
    with make(f"http://alice:pw-1234@127.0.0.1:{a.port}/simple/", tmp_path, unix_path=sock,
              allowed_hosts=frozenset({"localhost"})) as proxy:
        def over_unix(target: str) -> tuple[int, bytes]:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), body

        assert over_unix("/_sandbox/ready")[0] == 200 and proxy.ready.is_set()
        # 127.0.0.1 is not an allowed host (localhost is): refused
        assert over_unix(proxy_url(f"{b.base}/extra/simple/").split("invalid", 1)[1] + "foo/")[0] == 403
        extra = proxy_url(f"http://localhost:{b.port}/extra/simple/").split("invalid", 1)[1]
        status, body = over_unix(extra + "foo/")
        assert status == 200
        assert over_unix(links(body)[0]) == (200, b"extra")
        status, body = over_unix(proxy_url(f"http://localhost:{b.port}/links/", find_links=True)
                                 .split("invalid", 1)[1])
        assert status == 200 and over_unix(links(body)[0]) == (200, b"found")
        assert over_unix(extra + "Foo/")[0] == 404
    assert all(h is None for _, _, h in b.seen)  # never the index's credential


def test_a_direct_reference_is_served_only_as_the_requirements_name_it(a, b, tmp_path):
    from builder.plan.proxied import direct_url
    b.file("/files/bar-2.whl", b"direct")
    b.file("/files/bad-1.whl", b"not what the hash says")
    good = f"http://localhost:{b.port}/files/bar-2.whl#sha256={hashlib.sha256(b'direct').hexdigest()}"
    bad = f"http://localhost:{b.port}/files/bad-1.whl#sha256={'0' * 64}"
    elsewhere = f"{b.base}/files/bar-2.whl"  # 127.0.0.1: not the allowed host, even if a line named it

    def path(url: str) -> str:
        return direct_url(url).split("invalid", 1)[1].split("#")[0]

    with make(f"http://alice:pw-1234@127.0.0.1:{a.port}/simple/", tmp_path, allowed_hosts=frozenset({"localhost"}),
              direct_urls=frozenset({good, bad, elsewhere})) as proxy:
        assert ask(proxy, path(good)) == (200, b"direct")
        # the path names the file: another name for the same token is not that file
        assert ask(proxy, path(good).replace("bar-2.whl", "other-1.whl"))[0] == 404
        # a URL on the allowed host that no requirement names (here: without its hash), or not on it
        assert ask(proxy, path(good.split("#")[0]))[0] == 403
        assert ask(proxy, path(elsewhere))[0] == 403
        # the hash the line gives is checked before the file is kept
        assert ask(proxy, path(bad))[0] == 502
    assert b.paths() == ["/files/bar-2.whl", "/files/bad-1.whl"] and all(h is None for _, _, h in b.seen)
    kept = {p.name for p in (tmp_path / "cache" / "v2" / "sha256").rglob("*") if p.is_file()}
    assert kept == {hashlib.sha256(b"direct").hexdigest()}, kept  # the refused file is not kept


def test_links_to_the_builders_loopback_are_refused_unless_the_index_is_there(a, tmp_path):
    """An index that is not on loopback cannot point the proxy at the builder's own services."""
    from builder.build.proxy.upstream import Fetcher, Refused
    fetcher = Fetcher(loopback_ok=False)
    for url in (f"{a.base}/x", f"http://localhost:{a.port}/x", f"http://0.0.0.0:{a.port}/x",
                f"http://[::ffff:127.0.0.1]:{a.port}/x"):
        with pytest.raises(Refused, match="loopback"):
            fetcher.open(url, auth=None, max_bytes=100)
    assert a.seen == []


def test_allowed_index_urls_in_requirements_become_proxy_urls():
    from builder.plan.proxied import direct_url, proxied_requirements
    text = ("tinyreq==1.0\n--extra-index-url https://extra.example/simple/\n-i https://EXTRA.example/x/simple/\n"
            "--find-links=https://extra.example/links/\n-f https://other.example/links/\n"
            "--trusted-host extra.example\nfoo @ https://extra.example/foo-1.whl#sha256=ab ; python_version>'3'\n")
    out = proxied_requirements(text, frozenset({"extra.example"}))
    assert f"--extra-index-url {proxy_url('https://extra.example/simple/')}\n" in out
    assert f"--index-url {proxy_url('https://EXTRA.example/x/simple/')}\n" in out
    assert f"--find-links {proxy_url('https://extra.example/links/', find_links=True)}\n" in out
    assert "-f https://other.example/links/\n" in out          # not allowed: refused earlier, left alone here
    assert "--trusted-host extra.example\n" in out
    # a direct reference goes to that one file through the proxy; pip still checks its hash and marker
    assert f"foo @ {direct_url('https://extra.example/foo-1.whl#sha256=ab')} ; python_version>'3'\n" in out
    assert direct_url("https://extra.example/foo-1.whl#sha256=ab").endswith("/foo-1.whl#sha256=ab")
    assert proxied_requirements(text, frozenset()) == text


def test_index_options_are_read_as_pip_reads_them_and_keep_their_line_numbers():
    """The alias --pypi-url, a quoted URL and a continued line are each the same option to pip:
    all proxied; pip's errors name lines, so every line keeps its number."""
    from builder.plan.proxied import direct_url, proxied_requirements
    text = ("--pypi-url https://extra.example/alias/\r\n--extra-index-url 'https://extra.example/quoted/'\n"
            "--index-url \\\n   https://extra.example/continued/\nafter==1\n# -i https://extra.example/comment/\n"
            "https://extra.example/bar-2.tar.gz\n--extra-index-url https://extra.example/s/ --pre\n")
    out = proxied_requirements(text, frozenset({"extra.example"}))
    lines = out.splitlines()
    assert len(lines) == len(text.splitlines()) == 8
    assert lines[0] == f"--index-url {proxy_url('https://extra.example/alias/')}"
    assert lines[1] == f"--extra-index-url {proxy_url('https://extra.example/quoted/')}"
    assert lines[2] == f"--index-url {proxy_url('https://extra.example/continued/')}" and lines[3] == ""
    assert lines[4] == "after==1" and lines[5] == "# -i https://extra.example/comment/"  # a comment is no option
    assert lines[6].startswith("http://agent-image-index.invalid/_d/") and lines[6].endswith("/bar-2.tar.gz")
    assert lines[7] == f"--extra-index-url {proxy_url('https://extra.example/s/')} --pre"
    assert "extra.example" not in out.replace("# -i https://extra.example/comment/", "")
    # the URL is rewritten where pip reads it, not where the same text first appears on the line
    line = "bar @ https://extra.example/b.whl ; platform_release != 'https://extra.example/b.whl'\n"
    assert proxied_requirements(line, frozenset({"extra.example"})) == \
        f"bar @ {direct_url('https://extra.example/b.whl')} ; platform_release != 'https://extra.example/b.whl'\n"
