"""Serve the package index to a build without letting credentials into it.

pip inside the build is told ``--index-url http://agent-image-index.invalid/simple/``
and ``http_proxy=http://127.0.0.1:PORT`` (a predefined build arg: kept out of
``docker history`` and of the layer cache key). This proxy, on loopback in
the builder's process, forwards to the real upstream index with the
credentials, rewrites every file link on an index page to pass through
itself, and keeps downloaded files in a content-addressed cache shared by
every build on the host. So the token never enters the build, a new token
does not invalidate any layer, and a file fetched once is not fetched again.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import html
import os
import re
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import structlog

from .errors import redact, register_secret
from .requirements import normalise

log = structlog.get_logger("agent_image.index")

PUBLIC_INDEX = "https://pypi.org/simple/"
DEFAULT_CACHE_BYTES = 2 * 1024 ** 3
_HREF = re.compile(r'href="([^"]+)"')
_SHA = re.compile(r"sha256=([0-9a-f]{64})")


@dataclass(frozen=True)
class Upstream:
    """An index URL split into what may be shown and what may not."""
    url: str                    # without credentials: safe to log and to put in a Dockerfile
    auth_header: str | None     # "Basic ..." or None

    @classmethod
    def parse(cls, raw: str) -> "Upstream":
        parts = urlsplit(raw.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"index URL must be http(s)://host/...: {redact(raw)!r}")
        auth = None
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            register_secret(password)
            register_secret(parts.password)
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            register_secret(auth.split(" ", 1)[1])
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return cls(url=urlunsplit((parts.scheme, netloc, path, "", "")), auth_header=auth)

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


def versions_on_page(project: str, hrefs: list[str]) -> list[str]:
    """Versions of PROJECT named by the files a PEP 503 page links, in page order."""
    want = normalise(project)
    seen: list[str] = []
    for href in hrefs:
        name = unquote(href.split("#", 1)[0].rsplit("/", 1)[-1])
        if name.endswith(".whl"):
            parts = name[:-4].split("-")
        else:
            stem = re.sub(r"\.(tar\.gz|tar\.bz2|zip|tgz)$", "", name)
            if stem == name:
                continue
            parts = stem.rsplit("-", 1)
        if len(parts) >= 2 and normalise(parts[0]) == want and parts[1] not in seen:
            seen.append(parts[1])
    return seen


@dataclass
class Stats:
    """What one build asked of the index. Reported in the build result."""
    upstream_requests: int = 0
    upstream_bytes: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    auth_failures: list[int] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    # versions each project page listed (normalised name -> versions): uv names no
    # alternatives when a version is missing, so the error takes them from here
    versions: dict[str, list[str]] = field(default_factory=dict)
    downloaded: list[str] = field(default_factory=list)  # file names fetched from upstream
    reused: list[str] = field(default_factory=list)      # file names served from the cache

    def as_dict(self) -> dict:
        return {"upstream_requests": self.upstream_requests, "upstream_bytes": self.upstream_bytes,
                "cache_hits": self.cache_hits, "cache_bytes": self.cache_bytes,
                "downloaded": sorted(set(self.downloaded)), "reused": sorted(set(self.reused))}


class DownloadCache:
    """Content-addressed files on the build host, bounded, safe across processes.

    blobs/<sha256> holds the bytes; urls/<sha256 of url> names the blob a URL
    gave. Writes go to a temp file then os.replace, which is atomic, so two
    builds fetching the same file at once both end with one good copy.
    """

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "urls").mkdir(parents=True, exist_ok=True)

    def _url_key(self, url: str) -> Path:
        return self.root / "urls" / hashlib.sha256(url.encode()).hexdigest()

    def lookup(self, url: str, sha256: str | None) -> Path | None:
        if sha256:
            blob = self.root / "blobs" / sha256
            if blob.is_file():
                os.utime(blob)
                return blob
        try:
            digest = self._url_key(url).read_text().strip()
        except OSError:
            return None
        blob = self.root / "blobs" / digest
        if blob.is_file() and (not sha256 or sha256 == digest):
            os.utime(blob)
            return blob
        return None

    def store(self, url: str, tmp_path: Path, digest: str) -> Path:
        blob = self.root / "blobs" / digest
        os.replace(tmp_path, blob)
        key = self._url_key(url)
        fd, tmp = tempfile.mkstemp(dir=self.root / "urls")
        with os.fdopen(fd, "w") as fh:
            fh.write(digest)
        os.replace(tmp, key)
        self.evict(keep=digest)
        return blob

    def evict(self, keep: str | None = None) -> None:
        """Drop the least recently used blobs past max_bytes (never KEEP, never a
        download still being written by another build)."""
        blobs = []
        for entry in os.scandir(self.root / "blobs"):
            if entry.name.startswith(".part-"):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            blobs.append((st.st_mtime, st.st_size, entry.path))
        total = sum(b[1] for b in blobs)
        for _, size, path in sorted(blobs):  # oldest use first
            if total <= self.max_bytes:
                break
            if os.path.basename(path) == keep:
                continue
            try:
                os.unlink(path)
                total -= size
            except FileNotFoundError:
                pass

    def tmpfile(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root / "blobs", prefix=".part-")


class IndexProxy:
    """A loopback HTTP proxy in front of one upstream index. Use as a context manager."""

    def __init__(self, upstream: Upstream, cache: DownloadCache, *, ca_bundle: str | None = None,
                 timeout: float = 60.0, retries: int = 2) -> None:
        self.upstream = upstream
        self.cache = cache
        self.stats = Stats()
        self.timeout = timeout
        self.retries = retries
        self._ssl = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        self._hashes: dict[str, str] = {}  # clean file URL -> sha256 from the index page
        self._hosts: set[str] = {upstream.netloc}  # only hosts an index page linked to are fetched
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "IndexProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in separate writes; with Nagle on, each
            # keep-alive response waits out the client's delayed ACK (~40 ms)
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                proxy._handle(self)

            def do_HEAD(self) -> None:  # noqa: N802 uv asks for sizes before downloading
                proxy._handle(self, head=True)

            def log_message(self, fmt: str, *args) -> None:  # quiet: we log our own events
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # each request thread runs in the build's context, so its log lines and
        # errors are redacted with this build's redactor (builder/errors.py)
        context, serve = contextvars.copy_context(), self._server.process_request_thread
        self._server.process_request_thread = lambda request, address: context.copy().run(serve, request, address)
        threading.Thread(target=self._server.serve_forever, name="index-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def address(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- upstream --------------------------------------------------------------
    def _open(self, url: str, accept: str | None = None):
        headers = {"User-Agent": "agent-image-index-proxy"}
        if accept:
            headers["Accept"] = accept
        if urlsplit(url).netloc == self.upstream.netloc and self.upstream.auth_header:
            headers["Authorization"] = self.upstream.auth_header
        req = urllib.request.Request(url, headers=headers)
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                with self._lock:
                    self.stats.upstream_requests += 1
                return urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl)
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, OSError) as exc:  # refused, DNS, TLS, reset
                last = exc
                time.sleep(0.2 * (attempt + 1))
        assert last is not None
        raise last

    def _map_link(self, page_url: str, href: str) -> str:
        absolute = urljoin(page_url, html.unescape(href))
        parts = urlsplit(absolute)
        m = _SHA.search(parts.fragment)
        clean = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
        if m:
            self._hashes[clean] = m.group(1)
        self._hosts.add(parts.netloc)
        local = f"/_f/{parts.scheme}/{parts.netloc}{quote(parts.path)}"
        if parts.query:
            local += "?" + parts.query
        if parts.fragment:
            local += "#" + parts.fragment
        return local

    # -- request handling -------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        path = urlsplit(h.path).path if "://" in h.path else h.path.split("?")[0]
        query = urlsplit(h.path).query
        try:
            if path.startswith("/simple/") or path == "/simple":
                self._serve_page(h, urljoin(self.upstream.url, path[len("/simple/"):]))
            elif path.startswith("/_f/"):
                scheme, _, rest = path[len("/_f/"):].partition("/")
                url = f"{scheme}://{unquote(rest)}" + (f"?{query}" if query else "")
                if urlsplit(url).netloc not in self._hosts:  # not an open proxy
                    self._send(h, 403, b"host not linked from the index\n")
                    return
                self._serve_file(h, url, head)
            else:
                self._send(h, 404, b"not an index path\n")
        except urllib.error.HTTPError as exc:
            target = redact(exc.url or "")
            if exc.code in (401, 403):
                self.stats.auth_failures.append(exc.code)
                log.warning("index refused credentials", status=exc.code, url=target)
            elif exc.code == 404:
                self.stats.not_found.append(target)
            self._send(h, exc.code, f"upstream answered {exc.code}\n".encode())
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            self.stats.unreachable.append(reason)
            log.warning("index unreachable", upstream=self.upstream.url, reason=reason)
            try:
                self._send(h, 502, b"upstream index unreachable\n")
            except OSError:
                pass

    def _serve_page(self, h: BaseHTTPRequestHandler, url: str) -> None:
        # ask for HTML (PEP 503) so there is one link format to rewrite
        with self._open(url, accept="text/html") as resp:
            body = resp.read()
            final = resp.geturl()
        with self._lock:
            self.stats.upstream_bytes += len(body)
        text = body.decode("utf-8", "replace")
        project = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        found = versions_on_page(project, _HREF.findall(text))
        if found:
            with self._lock:
                self.stats.versions[normalise(project)] = found
        text = _HREF.sub(lambda m: 'href="%s"' % html.escape(self._map_link(final, m.group(1))), text)
        self._send(h, 200, text.encode(), "text/html; charset=utf-8")

    def _serve_file(self, h: BaseHTTPRequestHandler, url: str, head: bool = False) -> None:
        sha = self._hashes.get(url)
        blob = self.cache.lookup(url, sha)
        if blob is not None:
            if not head:  # a HEAD is followed by the GET: count the file once
                with self._lock:
                    self.stats.cache_hits += 1
                    self.stats.cache_bytes += blob.stat().st_size
                    self.stats.reused.append(url.rsplit("/", 1)[-1])
            self._send_file(h, blob, head)
            return
        fd, tmp = self.cache.tmpfile()
        digest = hashlib.sha256()
        size = 0
        try:
            with self._open(url) as resp, os.fdopen(fd, "wb") as out:
                while chunk := resp.read(1 << 16):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            with self._lock:
                self.stats.upstream_bytes += size
                self.stats.downloaded.append(url.rsplit("/", 1)[-1])
            blob = self.cache.store(url, Path(tmp), digest.hexdigest())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._send_file(h, blob, head)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    @staticmethod
    def _send_file(h: BaseHTTPRequestHandler, blob: Path, head: bool = False) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(blob.stat().st_size))
        h.end_headers()
        if head:
            return
        with open(blob, "rb") as fh:
            while chunk := fh.read(1 << 16):
                h.wfile.write(chunk)
