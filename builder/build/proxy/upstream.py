"""Every request that leaves the builder for a package index goes out here.

One urllib3 ``PoolManager`` (redirects off, retries bounded), so what may
leave the builder reads in one screen: only ``http``/``https`` URLs that
urllib.parse and urllib3 read alike (builder/core/urls.py: this module
decides with the one, the connection acts on the other); never a link-local
address (the cloud metadata services), checked by the connection itself on
the address it connects to (builder/build/proxy/connect.py); the index's
credentials only inside its scope (scheme, host and the index path minus a
trailing ``simple/``), never over plain http to a host that is not loopback,
and never again once a redirect has left that scope; redirects followed by
hand and re-checked at every hop; a cap on every body, checked against
Content-Length before reading and again while reading.
"""
from __future__ import annotations

import base64
import ipaddress
import ssl
import threading
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

import urllib3

from builder.build.proxy.connect import AddressRefused, checked_pools
from builder.core.redact import redact, register_secret
from builder.core.urls import Disagreement, join, read_url

PUBLIC_INDEX = "https://pypi.org/simple/"
MAX_REDIRECTS = 5


class Refused(Exception):
    """An upstream answer (or a hop) the proxy will not pass on. Names the URL, never a secret."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = shown(url)
        self.reason = reason
        super().__init__(f"{reason}: {self.url}")


class UpstreamStatus(Exception):
    """The upstream answered with an HTTP error status."""

    def __init__(self, code: int, url: str) -> None:
        self.code, self.url = code, shown(url)
        super().__init__(f"{code} from {self.url}")


class Unreachable(Exception):
    """No answer: refused, DNS, TLS, reset, timeout."""


def shown(url: str) -> str:
    """A URL as it may appear in a log or error: no userinfo, no query (presigned URLs sign there)."""
    try:
        read_url(url, userinfo=True)
    except Disagreement:  # shown as written (escaped, cut before any query): a host picked out could mislead
        return redact(repr(url.split("?", 1)[0].split("#", 1)[0][:200]))
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Upstream:
    """An index URL split into what may be shown and what may not."""
    url: str                    # without credentials: safe to log and to put in a Dockerfile
    auth_header: str | None     # "Basic ..." or None

    @classmethod
    def parse(cls, raw: str) -> "Upstream":
        try:
            read_url(raw.strip(), userinfo=True)
        except Disagreement as exc:
            raise ValueError(f"index URL must be a plain http(s)://host/... ({exc}): {shown(raw.strip())}") from None
        parts = urlsplit(raw.strip())
        auth = None
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            register_secret(password)
            register_secret(parts.password)
            auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            register_secret(auth.split(" ", 1)[1])
            if parts.scheme == "http" and not is_loopback(parts.hostname):
                raise ValueError(f"refusing to send index credentials over plain http to {parts.hostname}: "
                                 f"use https:// (only a loopback index may take credentials over http)")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        return cls(url=urlunsplit((parts.scheme, netloc, path, "", "")), auth_header=auth)

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def scope(self) -> str:
        """Where the credential may go: the index URL minus a trailing 'simple/'
        (pypiserver: '/', files under /packages/; CodeArtifact: /pypi/REPO/)."""
        return self.url[:-len("simple/")] if self.url.endswith("/simple/") else self.url

    def covers(self, url: str) -> bool:
        """May the credential go with a request for URL?"""
        a, b = urlsplit(url), urlsplit(self.scope)
        if (a.scheme, a.hostname, a.port) != (b.scheme, b.hostname, b.port) or a.username or a.password:
            return False
        if a.scheme != "https" and not is_loopback(a.hostname or ""):
            return False
        # compare decoded, dot-segment-free paths: /pypi/r/../other/ must not pass as /pypi/r/
        path = unquote(a.path)
        return "/../" not in path + "/" and "/./" not in path + "/" and path.startswith(b.path)


class Body:
    """A streaming upstream response with its final URL and a size cap."""

    def __init__(self, url: str, resp: urllib3.BaseHTTPResponse, max_bytes: int) -> None:
        self.url, self._resp, self.max_bytes = url, resp, max_bytes
        self.content_type = resp.headers.get("Content-Type", "")
        self.status, self.content_range = resp.status, resp.headers.get("Content-Range", "")
        # the length of what chunks() yields: urllib3 decodes a Content-Encoding, so then it is unknown
        declared = resp.headers.get("Content-Length", "")
        coded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        self.length = int(declared) if declared.isdigit() and not coded else None
        self._done = False

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        got = 0
        try:
            for chunk in self._resp.stream(size):
                got += len(chunk)
                if got > self.max_bytes:
                    raise Refused(self.url, f"larger than the cap of {self.max_bytes} bytes")
                yield chunk
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unreachable(redact(str(exc))) from None
        self._done = True

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def close(self) -> None:
        if not self._done:  # an unread rest (a refused body): the connection cannot be reused
            self._resp.close()
        self._resp.release_conn()

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Fetcher:
    """The builder's one HTTP client for index pages and files."""

    def __init__(self, *, ca_bundle: str | None = None, timeout: float = 60.0, retries: int = 2,
                 loopback_ok: bool = False, private_ok: bool = False) -> None:
        """LOOPBACK_OK, PRIVATE_OK: the index itself is on loopback (a local test index) or on a
        private network (an internal mirror), so its links may be too (connect.forbidden_address)."""
        self.loopback_ok, self.private_ok = loopback_ok, private_ok
        ctx = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        self._retry = urllib3.Retry(total=retries, connect=retries, read=retries, status=0, other=0,
                                    redirect=0, raise_on_redirect=False, raise_on_status=False,
                                    backoff_factor=0.2)
        # uv fetches ~50 files at once: a smaller pool would not block them, but each
        # connection past it is closed after one use and the next pays a new TLS handshake
        self.pool = urllib3.PoolManager(ssl_context=ctx, retries=self._retry, maxsize=64,
                                        timeout=urllib3.Timeout(connect=timeout, read=timeout))
        # its connections refuse forbidden addresses themselves, at every connect (connect.py)
        self.pool.pool_classes_by_scheme = checked_pools(loopback_ok, private_ok)
        self.requests = 0
        self._count = threading.Lock()

    @staticmethod
    def _check(url: str) -> None:
        """URL must read alike to this module (urllib.parse: covers, shown) and to the connection (urllib3)."""
        try:
            read_url(url)
        except Disagreement as exc:
            raise Refused(url, str(exc)) from None

    def open(self, url: str, *, auth: Upstream | None, max_bytes: int, accept: str | None = None,
             method: str = "GET", start: int = 0) -> Body:
        """Open URL, following redirects by hand. AUTH's credential goes only
        where AUTH.covers() and only until a hop leaves that scope. START: ask
        for the bytes from there on (Body.status 206 when the server did so)."""
        creds = auth is not None and auth.auth_header is not None
        for _ in range(MAX_REDIRECTS + 1):
            self._check(url)
            creds = creds and auth.covers(url)
            headers = {"User-Agent": "agent-image-index-proxy"}
            if accept:
                headers["Accept"] = accept
            if creds:
                headers["Authorization"] = auth.auth_header
            if start:
                headers["Range"] = f"bytes={start}-"
            with self._count:  # request threads run this at once: += is not atomic
                self.requests += 1
            try:
                resp = self.pool.urlopen(method, url, headers=headers, redirect=False, retries=self._retry,
                                         preload_content=False)
            except AddressRefused as exc:
                raise Refused(url, exc.reason) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Unreachable(redact(str(exc))) from None
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                resp.drain_conn()
                resp.release_conn()
                try:  # (checked as written too: the loop's _check sees only the joined URL)
                    url = join(url, resp.headers["Location"])
                except Disagreement as exc:  # (named as written: a joined one may read otherwise)
                    raise Refused(resp.headers["Location"], f"a redirect from {shown(url)} refused ({exc})") from None
                continue
            if resp.status >= 400:
                resp.drain_conn()
                resp.release_conn()
                raise UpstreamStatus(resp.status, url)
            length = resp.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                resp.close()
                resp.release_conn()
                raise Refused(url, f"larger than the cap of {max_bytes} bytes (Content-Length {length})")
            return Body(url, resp, max_bytes)
        raise Refused(url, f"more than {MAX_REDIRECTS} redirects")
