"""Driving an IndexProxy in this process: raw request lines (absolute-form, CONNECT and
unnormalised paths reach it as a hostile build would send them), its page's file links."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import Upstream


def ask(proxy: IndexProxy, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Send one raw request line to the proxy; return (status, body)."""
    port = int(proxy.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(f"{method} {target} HTTP/1.1\r\nHost: agent-image-index.invalid\r\nConnection: close\r\n\r\n"
                  .encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def links(body: bytes) -> list[str]:
    return re.findall(r'href="(/_f/[^"#]+)', body.decode())


def make(index_url: str, tmp_path: Path, **kw) -> IndexProxy:
    return IndexProxy(Upstream.parse(index_url), DownloadCache(tmp_path / "cache"), **kw)
