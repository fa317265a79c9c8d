"""What hostile package code tries from inside a build (tests/integration/test_sandbox.py,
test_remote.py): every door it can think of, its results written into the image."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.hosts import LINK_LOCAL
from tests.support.index import start_index


def hostile_code(where: str, cfg: dict) -> str:
    """What runs inside the build: every door it can think of, results in /hostile-WHERE.json."""
    return textwrap.dedent(f"""
        import json, os, socket
        CFG = json.loads({json.dumps(json.dumps(cfg))})
        def attempt(fn):
            try:
                return fn()
            except Exception as exc:
                return "error: %s: %s" % (type(exc).__name__, str(exc)[:120])
        def tcp(host, port):
            s = socket.create_connection((host, port), timeout=3)
            s.close()
            return "connected"
        def raw(request):
            proxy = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY") or ""
            host, _, port = proxy.split("//", 1)[-1].rstrip("/").rpartition(":")
            s = socket.create_connection((host, int(port)), timeout=15)
            s.sendall(request.encode("latin-1"))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            return data.decode("latin-1")
        if os.environ.get("HOSTILE_SKIP") == "1":  # the test making the sdist on the host
            CFG["targets"], CFG["requests"] = [], {{}}
        report = {{"where": {where!r}, "env_canary": CFG["env_name"] in os.environ, "tcp": {{}}, "proxy": {{}},
                  "file": attempt(lambda: open(CFG["canary_path"]).read())}}
        for target in CFG["targets"]:
            host, _, port = target.rpartition(":")
            report["tcp"][target] = attempt(lambda: tcp(host, int(port)))
        report["dns"] = attempt(lambda: str(socket.getaddrinfo("pypi.org", 443)[0][4]))
        for name, request in CFG["requests"].items():
            report["proxy"][name] = attempt(lambda: raw(request))
        if os.environ.get("HOSTILE_SKIP") != "1":
            with open("/hostile-{where}.json", "w") as fh:
                json.dump(report, fh)
    """)


def requests_to_try(canary_path: str, port: int) -> dict[str, str]:
    b64 = lambda u: base64.urlsafe_b64encode(u.encode()).decode()  # noqa: E731
    get = lambda target, host="agent-image-index.invalid": (  # noqa: E731
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    return {
        "page_ok": get("/simple/tinyreq/"),
        "abs_listener": get(f"http://127.0.0.1:{port}/", f"127.0.0.1:{port}"),
        "abs_internet": get("http://pypi.org/simple/", "pypi.org"),
        "abs_metadata_alias": get(f"http://{LINK_LOCAL}:{port}/", LINK_LOCAL),
        "connect": f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "data_page": get("/simple/data:text/html,%3Ca%20href=%22file:///x%22%3E"),
        "file_read": get(f"/_f/file/{canary_path}"),
        "file_read_abs": get(f"http://agent-image-index.invalid/_f/file/{canary_path}"),
        "ssrf_simple": get(f"/simple/http://127.0.0.1:{port}/"),
        "traversal": get("/simple/../../other-repo/"),
        "traversal_encoded": get("/simple/%2e%2e/%2e%2e/other-repo/"),
        "unnormalised": get("/simple/TinyReq/"),
        "unlinked_file": get(f"/_f/{'0' * 32}/x-1.0-py3-none-any.whl"),
        "extra_not_allowed": get(f"/_x/{b64(f'http://127.0.0.1:{port}/simple/')}/tinyreq/"),
        "links_file_url": get(f"/_l/{b64('file://' + canary_path)}/"),
        "root_page": get("/simple/"),
    }


def hostile_index(tmp_path: Path, wheelhouse: Path, cfg: dict):
    """A copy of the test index with the hostile sdist dependency (hostiledep 1.0) beside its wheels."""
    src = tmp_path / "hostiledep-1.0"
    (src / "hostiledep").mkdir(parents=True)
    (src / "hostiledep" / "__init__.py").write_text("")
    (src / "setup.py").write_text(hostile_code("dep", cfg) + "from setuptools import setup\n"
                                  "setup(name='hostiledep', version='1.0', packages=['hostiledep'])\n")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "sdist")],
                   cwd=src, check=True, capture_output=True, env={**os.environ, "HOSTILE_SKIP": "1"})
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    for sdist in (tmp_path / "sdist").glob("hostiledep-*"):
        shutil.copy(sdist, house)
    return start_index(tmp_path / "index", house)


def hostile_agent(agent_factory, cfg: dict) -> Path:
    """The hostile agent: its setup.py tries every door, and it needs hostiledep from hostile_index."""
    agent = agent_factory("hostile-agent", requirements="hostiledep==1.0\ntinyreq==1.0\n")
    (agent / "setup.py").write_text(
        hostile_code("agent", cfg) + "from setuptools import setup\n"
        "setup(name='hostile-agent', version='0.1.0', packages=['src'], package_dir={'': '.'})\n")
    return agent


def assert_confined(reports: dict[str, dict], canaries: tuple[str, ...]) -> None:
    """What hostile_code wrote (per WHERE): no canary, no connection, no DNS; the proxy served the
    index page and refused every trick, and no answer carries a canary or a listener's words."""
    for where, report in reports.items():
        assert report["env_canary"] is False, where
        assert report["file"].startswith("error"), (where, report["file"])
        for target, outcome in report["tcp"].items():
            assert outcome.startswith("error"), (where, target, outcome)
        assert report["dns"].startswith("error"), (where, report["dns"])
        proxy = report["proxy"]
        assert proxy["page_ok"].startswith("HTTP/1.1 200"), (where, proxy["page_ok"][:300])
        for name, answer in proxy.items():
            if name != "page_ok":
                status = answer.split("\r\n", 1)[0]
                assert status[9:10] in ("4", "5") or answer.startswith("error"), (where, name, answer[:300])
            assert not any(c in answer for c in canaries) and "listener-answered" not in answer, (where, name)
