"""Issue 10: the index proxy refuses a redirect to a link-local address before it connects.

A real link-local address on this machine (root: tests/support/hosts.py adds it) with a
listener on it: the proof is that the listener saw nothing. The rest of the proxy's rules
are in tests/unit/test_indexproxy.py.
"""

from __future__ import annotations

from tests.support.httpserver import Server
from tests.support.indexproxy import ask, links, make


def test_redirect_to_a_link_local_address_is_refused_before_connecting(a, link_local, tmp_path):
    trap = Server(link_local)  # on this machine: proves no connection was made
    try:
        a.page("/simple/foo/", ["/packages/meta.whl"])
        a.redirect("/packages/meta.whl", f"{trap.base}/latest/meta-data/")
        with make(f"{a.base}/simple/", tmp_path) as proxy:
            _, body = ask(proxy, "/simple/foo/")
            assert ask(proxy, links(body)[0])[0] == 502
            assert any("link-local" in r for r in proxy.stats.refused)
        assert trap.seen == []
    finally:
        trap.close()
