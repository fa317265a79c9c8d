"""Issue 14: the index proxy passes a file on while it downloads, and never passes on a bad one.

The upstream is a real HTTP server on loopback that sends files in pieces
with pauses (as a far index does), announcing a Content-Length or not,
cutting a file short, or sending other bytes than its page's sha256. The
clients are raw sockets (to see exactly what went on the wire), http.client,
and pip itself.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import Upstream
from tests.support.httpserver import Running

PIECE = 64 * 1024


class Slow:
    """Upstream: FILES {name: (body, mode, pause)}; mode 'length' (Content-Length), 'chunked',
    'close' (HTTP/1.0 style: body ends with the connection), 'short' (announces the whole
    length, sends half, closes; ignores Range), 'flaky' (short, then answers Range requests).
    HASHES {name: sha256 put on the page}. DONE {name: time the last byte left}."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, float]] = {}
        self.hashes: dict[str, str] = {}
        self.done: dict[str, float] = {}
        self.gets: list[str] = []
        self.connections = 0
        self.ranges: list[int] = []
        self.page_pause = 0.0
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                srv.connections += 1
                super().setup()

            def do_GET(self):  # noqa: N802
                if self.path == "/simple/pkg/":
                    time.sleep(srv.page_pause)
                    page = "".join(srv.anchor(n, b) for n, (b, _, _) in srv.files.items())
                    body = f"<html><body>{page}</body></html>".encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                name = self.path.rsplit("/", 1)[-1]
                srv.gets.append(name)
                body, mode, pause = srv.files[name]
                ranged = self.headers.get("Range", "")
                if mode == "flaky" and ranged:   # the rest, as a CDN sends it
                    start = int(ranged.split("=")[1].rstrip("-"))
                    srv.ranges.append(start)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(body) - start))
                    self.end_headers()
                    self.wfile.write(body[start:])
                    return
                if mode == "flaky":   # the first answer is cut short
                    mode = "short"
                self.send_response(200)
                if mode in ("length", "short"):
                    self.send_header("Content-Length", str(len(body)))
                elif mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                sent = body[:len(body) // 2] if mode == "short" else body
                for i in range(0, len(sent), PIECE):
                    time.sleep(pause)
                    part = sent[i:i + PIECE]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if mode == "chunked" else part)
                if mode == "chunked":
                    self.wfile.write(b"0\r\n\r\n")
                srv.done[name] = time.monotonic()
                if mode in ("close", "short"):
                    self.close_connection = True

            def log_message(self, *a):
                pass

        self.running = Running(H, request_queue_size=128)
        self.base = self.running.base

    def anchor(self, name: str, body: bytes) -> str:
        sha = self.hashes[name]
        fragment = "" if sha is None else f"#sha256={sha or hashlib.sha256(body).hexdigest()}"
        return f'<a href="/files/{name}{fragment}">{name}</a>\n'

    def file(self, name: str, body: bytes, mode: str = "length", pause: float = 0.0, sha: str | None = "") -> None:
        """SHA '' puts the true hash on the page, None no hash, else that hash."""
        self.files[name] = (body, mode, pause)
        self.hashes[name] = sha


@pytest.fixture
def up():
    s = Slow()
    yield s
    s.running.close()


def blob(size: int, seed: bytes = b"") -> bytes:
    out, i = b"", 0
    while len(out) < size:
        out += hashlib.sha256(seed + str(i).encode()).digest() * 64
        i += 1
    return out[:size]


def proxy_for(up: Slow, tmp_path: Path, **kw) -> IndexProxy:
    return IndexProxy(Upstream.parse(f"{up.base}/simple/"), DownloadCache(tmp_path / "cache"), **kw)


def file_links(proxy: IndexProxy) -> dict[str, str]:
    conn = http.client.HTTPConnection(proxy.address.split("//")[1], timeout=20)
    conn.request("GET", "/simple/pkg/")
    page = conn.getresponse().read().decode()
    conn.close()
    return {m.rsplit("/", 1)[1]: m for m in re.findall(r'href="(/_f/[^"#]+)', page)}


def raw_get(proxy: IndexProxy, target: str) -> tuple[dict, bytes, float | None]:
    """(headers, everything after them, monotonic time the first body byte came)."""
    port = int(proxy.address.rsplit(":", 1)[1])
    first = None
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if first is None and b"\r\n\r\n" in data and data.split(b"\r\n\r\n", 1)[1]:
                first = time.monotonic()
            head = data.split(b"\r\n\r\n", 1)[0]
            if b"content-length:" in head.lower():   # a complete body ends the read (keep-alive)
                n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(data) - len(head) - 4 >= n:
                    break
            elif data.endswith(b"\r\n0\r\n\r\n"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    headers["status"] = lines[0].split()[1]
    return headers, body, first


def client_get(proxy: IndexProxy, target: str) -> bytes:
    """What an HTTP client makes of the response: raises on a body cut short."""
    conn = http.client.HTTPConnection(proxy.address.split("//")[1], timeout=20)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.read()
    finally:
        conn.close()


def cached(tmp_path: Path) -> list[bytes]:
    v2 = tmp_path / "cache" / "v2"
    assert list((v2 / "tmp").iterdir()) == []   # no temp file left behind either
    return [p.read_bytes() for p in (v2 / "sha256").iterdir()]


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_the_client_gets_bytes_before_the_upstream_has_sent_them_all(up, tmp_path, mode):
    data = blob(8 * PIECE)
    up.file("pkg-1.0-py3-none-any.whl", data, mode, pause=0.25)
    with proxy_for(up, tmp_path) as proxy:
        target = file_links(proxy)["pkg-1.0-py3-none-any.whl"]
        headers, body, first = raw_get(proxy, target)
        assert first is not None and first < up.done["pkg-1.0-py3-none-any.whl"] - 0.5
        if mode == "length":
            assert headers["content-length"] == str(len(data)) and body == data
        else:   # no usable length from upstream: chunked, so that a cut can show
            assert headers["transfer-encoding"] == "chunked"
            assert client_get(proxy, target) == data   # now a cache hit, with its length
        assert proxy.stats.upstream_bytes > len(data) and proxy.stats.downloaded == ["pkg-1.0-py3-none-any.whl"]
        assert client_get(proxy, target) == data and proxy.stats.cache_hits >= 1
    assert cached(tmp_path) == [data]
    assert up.gets == ["pkg-1.0-py3-none-any.whl"]


@pytest.mark.parametrize("case", ["short", "hash-length", "hash-chunked", "hash-close", "cap-chunked"])
def test_a_bad_download_is_cut_short_for_the_client_and_never_cached(up, tmp_path, case):
    data = blob(6 * PIECE)
    mode = {"short": "short", "hash-length": "length", "cap-chunked": "chunked"}.get(case, case[5:])
    up.file("bad-1.0.tar.gz", data, mode, pause=0.1, sha="0" * 64 if case.startswith("hash") else None)
    with proxy_for(up, tmp_path, file_max_bytes=4 * PIECE if case.startswith("cap") else 2 ** 30) as proxy:
        target = file_links(proxy)["bad-1.0.tar.gz"]
        headers, body, _ = raw_get(proxy, target)
        assert headers["status"] == "200" and body   # bytes went out before the failure showed
        if "content-length" in headers:
            assert headers["content-length"] == str(len(data)) and len(body) < len(data)
        else:
            assert headers["transfer-encoding"] == "chunked" and not body.endswith(b"\r\n0\r\n\r\n")
        with pytest.raises(http.client.IncompleteRead):
            client_get(proxy, target)
        problems = " ".join(proxy.stats.refused + proxy.stats.unreachable)
        assert ("sha256" if case.startswith("hash") else "cap" if case.startswith("cap") else "bytes") in problems
        assert "/files/bad-1.0.tar.gz" in problems or case == "short"
        assert proxy.stats.downloaded == []
    assert cached(tmp_path) == []


def test_a_small_bad_file_is_an_error_status_not_a_body(up, tmp_path):
    up.file("tiny-1.0.tar.gz", b"tiny", sha="0" * 64)
    with proxy_for(up, tmp_path) as proxy:
        headers, body, _ = raw_get(proxy, file_links(proxy)["tiny-1.0.tar.gz"])
        assert headers["status"] == "502" and b"sha256" in body
    assert cached(tmp_path) == []


def test_concurrent_requests_for_one_uncached_file_both_get_it(up, tmp_path):
    data = blob(6 * PIECE, b"same")
    up.file("same-1.0.tar.gz", data, "length", pause=0.1)
    with proxy_for(up, tmp_path) as proxy:
        target = file_links(proxy)["same-1.0.tar.gz"]
        got: list[bytes] = []
        threads = [threading.Thread(target=lambda: got.append(client_get(proxy, target))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert got == [data] * 3
    assert cached(tmp_path) == [data]


def test_parallel_fetches_are_not_served_one_after_another(up, tmp_path):
    # 40 files whose upstream takes 0.5 s each: one at a time would be 20 s
    for i in range(40):
        up.file(f"p{i}-1.0.tar.gz", blob(1000, str(i).encode()), "length", pause=0.5)
    with proxy_for(up, tmp_path) as proxy:
        targets = file_links(proxy)
        got: dict[str, bytes] = {}
        start = time.monotonic()
        threads = [threading.Thread(target=lambda n=n, t=t: got.__setitem__(n, client_get(proxy, t)))
                   for n, t in targets.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - start
        # and the upstream connections those opened stay pooled for the next burst
        opened, up.page_pause = up.connections, 0.3
        pages = [threading.Thread(target=file_links, args=(proxy,)) for _ in range(30)]
        for t in pages:
            t.start()
        for t in pages:
            t.join()
    assert len(got) == 40 and all(got[f"p{i}-1.0.tar.gz"] == blob(1000, str(i).encode()) for i in range(40))
    assert took < 6, took
    assert up.connections - opened <= 5, (opened, up.connections)


def wheel(name: str, extra: int) -> bytes:
    """A real (pip-readable) wheel with EXTRA bytes of incompressible data in it."""
    buf = io.BytesIO()
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(f"{name}/data.bin", blob(extra, name.encode()))
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return buf.getvalue()


@pytest.mark.parametrize("mode,ok", [("length", True), ("chunked", True), ("short", False), ("cap", False)])
def test_pip_downloads_through_the_tee_and_fails_on_a_cut(up, tmp_path, mode, ok):
    data = wheel("pkg", 6 * PIECE)
    up.file("pkg-1.0-py3-none-any.whl", data, "chunked" if mode == "cap" else mode, pause=0.1,
            sha=None if mode == "cap" else "")
    dest = tmp_path / "dest"
    with proxy_for(up, tmp_path, file_max_bytes=4 * PIECE if mode == "cap" else 2 ** 30) as proxy:
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-deps", "--no-cache-dir",
                              "--retries", "0", "--timeout", "20", "--index-url", f"{proxy.address}/simple/",
                              "-d", str(dest), "pkg==1.0"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PIP_FIND_LINKS": ""})
    assert (run.returncode == 0) == ok, run.stdout + run.stderr
    if ok:
        assert (dest / "pkg-1.0-py3-none-any.whl").read_bytes() == data
    else:
        assert not (dest / "pkg-1.0-py3-none-any.whl").exists()
        assert cached(tmp_path) == []


def hang_up_after_first_bytes(proxy: IndexProxy, target: str) -> None:
    port = int(proxy.address.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = reset
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    s.close()


def test_a_client_that_hangs_up_is_not_the_index_failing(up, tmp_path):
    # uv drops downloads it no longer needs; that was logged (and reported) as "index unreachable"
    data = blob(8 * PIECE, b"hang")
    up.file("hang-1.0.tar.gz", data, "length", pause=0.1)
    with proxy_for(up, tmp_path) as proxy:
        target = file_links(proxy)["hang-1.0.tar.gz"]
        hang_up_after_first_bytes(proxy, target)          # while downloading: the download goes on
        deadline = time.monotonic() + 10
        v2 = tmp_path / "cache" / "v2"
        while (list((v2 / "tmp").iterdir()) or not list((v2 / "sha256").iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cached(tmp_path) == [data]
        for _ in range(3):
            hang_up_after_first_bytes(proxy, target)      # a cache hit
        time.sleep(0.3)
        assert client_get(proxy, target) == data
        assert proxy.stats.unreachable == [] and proxy.stats.refused == []
    assert up.gets == ["hang-1.0.tar.gz"]


def test_head_answers_with_the_size_and_an_http10_client_gets_a_length(up, tmp_path):
    data = blob(4 * PIECE, b"head")
    up.file("head-1.0.tar.gz", data, "chunked", pause=0.05)
    up.file("old-1.0.tar.gz", data + b"old", "chunked", pause=0.05)
    with proxy_for(up, tmp_path) as proxy:
        targets = file_links(proxy)
        port = int(proxy.address.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("HEAD", targets["head-1.0.tar.gz"])   # uv asks sizes first
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Length") == str(len(data))
        resp.read()
        conn.close()
        assert client_get(proxy, targets["head-1.0.tar.gz"]) == data
        assert proxy.stats.cache_hits == 1 and up.gets == ["head-1.0.tar.gz"]
        # chunked is HTTP/1.1: an HTTP/1.0 client waits for the checked file and its length
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(f"GET {targets['old-1.0.tar.gz']} HTTP/1.0\r\n\r\n".encode())
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert f"Content-Length: {len(data) + 3}".encode() in head and body == data + b"old"


def test_a_failed_download_names_no_credential(up, tmp_path, capsys):
    up.file("cut-1.0.tar.gz", blob(4 * PIECE), "short", pause=0.05)
    up.file("wrong-1.0.tar.gz", blob(4 * PIECE), "length", pause=0.05, sha="1" * 64)
    up.file("tiny-1.0.tar.gz", b"tiny", sha="2" * 64)
    upstream = Upstream.parse(f"http://agent:s3cret-pw@{up.base.split('//')[1]}/simple/")
    with IndexProxy(upstream, DownloadCache(tmp_path / "cache")) as proxy:
        bodies = [raw_get(proxy, t)[1] for t in file_links(proxy).values()]
        problems = proxy.stats.refused + proxy.stats.unreachable
    out = capsys.readouterr()
    assert len(problems) == 3 and "sha256" in out.out + out.err   # the failures were logged
    secret = upstream.auth_header.split()[1]
    for text in [*problems, out.out, out.err, *(b.decode("latin-1") for b in bodies)]:
        assert "s3cret-pw" not in text and secret not in text
    assert cached(tmp_path) == []


def test_upstream_connections_are_reused(up, tmp_path):
    # a new connection per request paid DNS + TLS each time (bench/README, the real-index run)
    for i in range(10):
        up.file(f"r{i}-1.0.tar.gz", blob(PIECE + i, str(i).encode()), "length")
    with proxy_for(up, tmp_path) as proxy:
        targets = file_links(proxy)
        for _ in range(2):
            for name, target in targets.items():
                assert client_get(proxy, target) == up.files[name][0]
        for _ in range(3):
            file_links(proxy)
    assert up.connections == 1 and len(up.gets) == 10


def test_a_cut_upstream_is_resumed_with_a_range_request(up, tmp_path):
    # once bytes went to pip a cut can no longer be a 502 that pip retries: the proxy asks for the rest
    data = blob(6 * PIECE, b"flaky")
    up.file("flaky-1.0.tar.gz", data, "flaky", pause=0.05)
    with proxy_for(up, tmp_path) as proxy:
        target = file_links(proxy)["flaky-1.0.tar.gz"]
        assert client_get(proxy, target) == data
        assert proxy.stats.unreachable == [] and proxy.stats.downloaded == ["flaky-1.0.tar.gz"]
    assert up.ranges == [3 * PIECE] and cached(tmp_path) == [data]
