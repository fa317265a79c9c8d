"""Trust, round 3, class 2, against real listeners: the builder's loopback is never connected to.

The index here is NOT on loopback (it listens on a non-loopback address of this
machine: tests/support/hosts.own_address), so the proxy's connections refuse
the builder's loopback. A listener on 127.0.0.1 counts what it accepts: the
proof is that it accepted nothing, whatever a page, a redirect or a name's
(re-)resolution pointed at. Nothing leaves this machine.
"""

from __future__ import annotations

import socket

import pytest

from builder.build.proxy import connect
from builder.build.proxy.upstream import Fetcher, Refused
from tests.support.hosts import Counting, own_address
from tests.support.httpserver import Server
from tests.support.indexproxy import ask, links, make

OWN = own_address()
pytestmark = pytest.mark.skipif(OWN is None, reason="this machine has no non-loopback IPv4 address")


@pytest.fixture
def index():
    s = Server(OWN)
    yield s
    s.close()


@pytest.fixture
def trap():
    t = Counting("127.0.0.1")
    yield t
    t.close()


def _loopback_names(port: int) -> list[str]:
    """Ways to write the builder's loopback (port PORT) that urllib.parse and urllib3 read alike:
    the connection itself has to refuse them. All resolve without DNS ('localhost.' would ask the
    DNS server: the fake resolver below stands for any name that resolves to the loopback)."""
    return [f"http://{host}:{port}/x{i}.whl" for i, host in enumerate(
        ["localhost", "127.0.0.1", "127.1", "0x7f.1", "0177.0.0.1", "2130706433", "127.0.0.2",
         "[::ffff:127.0.0.1]", "[::1]", "0", "0.0.0.0"])]


def test_page_links_to_the_loopback_never_connect(index, trap, tmp_path):
    disagreeing = [f"http://127.0.0.1:{trap.port}\\@{OWN}:{index.port}/a.whl",  # the example
                   f"http://{OWN}:{index.port}\\@127.0.0.1:{trap.port}/b.whl",
                   f"http://127.0.0.1:{trap.port}\t@{OWN}:{index.port}/c.whl",
                   f"http://a@{OWN}:{index.port}@127.0.0.1:{trap.port}/d.whl",
                   f"\\\\127.0.0.1:{trap.port}\\e.whl"]
    index.page("/simple/foo/", disagreeing + _loopback_names(trap.port))
    with make(f"{index.base}/simple/", tmp_path) as proxy:
        status, body = ask(proxy, "/simple/foo/")
        assert status == 200
        served = links(body)
        assert len(served) == len(_loopback_names(trap.port))  # the disagreeing ones lead nowhere
        for link in served:
            status, answer = ask(proxy, link)
            assert status == 502 and b"loopback" in answer, (link, answer)
    assert trap.accepts == 0
    assert index.paths() == ["/simple/foo/"]


def test_redirects_to_the_loopback_never_connect(index, trap, tmp_path):
    targets = [f"http://127.0.0.1:{trap.port}\\@{OWN}:{index.port}/a.whl",
               f"http://127.0.0.1:{trap.port}\t/b.whl",  # (urljoin would drop the tab: checked as written)
               f"\\\\127.0.0.1:{trap.port}\\c.whl",
               *_loopback_names(trap.port)]
    index.page("/simple/foo/", [f"/packages/r{i}.whl" for i in range(len(targets))])
    for i, target in enumerate(targets):
        index.redirect(f"/packages/r{i}.whl", target)
    with make(f"{index.base}/simple/", tmp_path) as proxy:
        served = links(ask(proxy, "/simple/foo/")[1])
        assert len(served) == len(targets)
        for link in served:
            status, answer = ask(proxy, link)
            assert status == 502 and b"refused by the index proxy" in answer, (link, answer)
        assert len(proxy.stats.refused) == len(targets)
        assert sum("loopback" in r for r in proxy.stats.refused) == len(_loopback_names(trap.port))
    assert trap.accepts == 0


@pytest.fixture
def rebinding(monkeypatch):
    """'rebind.test' resolves to ANSWERS[0], then to ANSWERS[1], ... (a DNS answer that changes)."""
    answers: list[list[str]] = []
    real = socket.getaddrinfo

    def fake(host, port, *args, **kw):
        if host != "rebind.test":
            return real(host, port, *args, **kw)
        addrs = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in addrs]

    monkeypatch.setattr(connect.socket, "getaddrinfo", fake)
    return answers


def test_a_name_that_re_resolves_to_the_loopback_is_refused_at_connect(index, trap, rebinding):
    """Checked per connection, on the address connected to: a per-host check made once passed this."""
    index.file("/x.whl", b"from the index")
    rebinding += [[OWN], ["127.0.0.1"]]
    fetcher = Fetcher(loopback_ok=False, private_ok=True)
    with fetcher.open(f"http://rebind.test:{index.port}/x.whl", auth=None, max_bytes=100) as body:
        assert body.read() == b"from the index"
    with pytest.raises(Refused, match="loopback") as exc:
        fetcher.open(f"http://rebind.test:{trap.port}/x.whl", auth=None, max_bytes=100)
    assert "\n" not in str(exc.value) and "rebind.test" in str(exc.value)
    assert trap.accepts == 0


def test_a_name_with_any_loopback_address_is_refused_whole(index, trap, rebinding):
    rebinding.append([OWN, "127.0.0.1"])
    with pytest.raises(Refused, match="loopback"):
        Fetcher(loopback_ok=False, private_ok=True).open(f"http://rebind.test:{index.port}/x.whl", auth=None, max_bytes=100)
    assert index.seen == [] and trap.accepts == 0


def test_a_loopback_index_still_reaches_the_loopback(a):
    a.file("/x", b"on loopback")
    with Fetcher(loopback_ok=True).open(f"http://localhost:{a.port}/x", auth=None, max_bytes=100) as body:
        assert body.read() == b"on loopback"


# --- a public index's pages may not lead the proxy onto a private network --------------

@pytest.mark.parametrize("addr", ["10.0.0.1", "172.17.0.1", "192.168.1.1", "100.64.0.1", "198.18.0.1",
                                  "fd00::1", "::ffff:10.1.2.3", OWN])
def test_a_private_address_is_refused_unless_the_index_is_private(addr):
    from builder.build.proxy.connect import forbidden_address
    assert "private" in forbidden_address(addr, loopback_ok=False, private_ok=False)
    assert forbidden_address(addr, loopback_ok=False, private_ok=True) is None
    assert forbidden_address("8.8.8.8", loopback_ok=False, private_ok=False) is None  # (no connection made)
    assert "link-local" in forbidden_address("169.254.169.254", loopback_ok=True, private_ok=True)


def test_a_public_index_cannot_reach_the_builders_own_address(index):
    """The review's case: an allowed host's page or redirect naming the builder's own address
    (or the docker0 gateway): refused at connect when the index is on a public address."""
    index.file("/admin", b"INTERNAL-ONLY")
    with pytest.raises(Refused, match="private"):
        Fetcher(loopback_ok=False, private_ok=False).open(f"http://{OWN}:{index.port}/admin", auth=None,
                                                          max_bytes=100)
    assert index.seen == []


def test_the_proxy_allows_what_its_index_is_on():
    from builder.build.proxy.connect import index_is_private
    assert index_is_private(OWN) and index_is_private("127.0.0.1") and not index_is_private("8.8.8.8")
