"""Serve the package index to a build, and nothing more, without letting credentials into it.

pip inside the build is told ``--index-url http://agent-image-index.invalid/simple/``
and ``http_proxy`` (a predefined build arg: kept out of ``docker history``
and of the layer cache key) points at this proxy: on a unix socket that the
build's sandbox forwards its one loopback port to (builder/build/sandbox.py), or on
the builder's loopback. It fetches from the real upstream index with the
credentials (through builder/build/proxy/upstream.py, the one outbound client), rewrites
every file link on an index page to an opaque ``/_f/<id>/<file>`` that only
this proxy can map back, and keeps downloaded files in a content-addressed
cache shared by every build on the host (builder/build/proxy/cache.py), passing
each on to the build while it downloads (builder/build/proxy/tee.py).

What a build may ask for is an allow-list: ``/simple/<PEP 503 normalised
name>/`` of the configured index; ``/_f/<id>/<file>`` only for a link an index
page served to this build; the indexes and find-links pages of hosts named by
``--allow-index-host`` (``/_x/``, ``/_l/``, see ``proxy_url``) and the files
requirements name there directly (``/_d/``), without the index's credentials.
Everything else is a 4xx with a one-line reason; with ``wheels_only``, every file but a wheel too.
"""

from __future__ import annotations

import contextvars
import hashlib
import html
import os
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import structlog

from builder.build.proxy.cache import DownloadCache, identity  # noqa: F401 (re-exported)
from builder.build.proxy.pages import ANCHOR, HREF, SHA256, drop_foreign, offer_attrs, versions_on_page
from builder.build.proxy.prefetch import Offer, Prefetcher
from builder.build.proxy.routes import PROJECT_NAME, Denied, route, unb64
from builder.build.proxy.stats import Stats
from builder.build.proxy.tee import Tee, begin, send, send_file
from builder.build.proxy.upstream import Fetcher, Refused, Unreachable, Upstream, UpstreamStatus, is_loopback
from builder.build.proxy.wheeltags import Target
from builder.core.defaults import DEFAULT_FILE_BYTES, DEFAULT_PAGE_BYTES
from builder.core.redact import redact
from builder.core.urls import Disagreement, join, read_url
from builder.package.piplines import names_own_index, normalise
from builder.plan.proxied import direct_name
from builder.build.proxy.connect import index_is_private
from builder.build.proxy.listen import TCPHTTPServer, UnixHTTPServer

log = structlog.get_logger("agent_image.index")
_HASH_FRAGMENT = re.compile(r"(?:md5|sha1|sha224|sha256|sha384|sha512)=[0-9a-fA-F]+")


def _link_key(ident: str, url: str, sha256: str | None = None, metadata: bool = False) -> str:
    """The opaque id of a file a build may fetch (/_f/<id>/ for a page's link, /_d/'s the same way), one per
    reading: two pages giving one URL two hashes (or .metadata on one) make two links, neither replaced."""
    return hashlib.sha256(f"{ident}\0{url}\0{sha256 or ''}\0{int(metadata)}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Link:
    """A file an index page served to this build linked: the only files it may fetch."""
    url: str                   # exact upstream URL, without fragment
    name: str                  # file name as pip sees it
    sha256: str | None         # from the page's #sha256= fragment
    auth: Upstream | None      # whose credential may go with it (upstream.covers decides)
    ident: str                 # download-cache identity of the page that linked it
    metadata: bool = False     # the page offered <url>.metadata (PEP 658)


class IndexProxy:
    """An HTTP proxy in front of one upstream index. Use as a context manager.

    Listens on UNIX_PATH when given (the sandbox's door), else on 127.0.0.1."""

    def __init__(self, upstream: Upstream, cache: DownloadCache, *, ca_bundle: str | None = None,
                 timeout: float = 60.0, retries: int = 2, allowed_hosts: frozenset[str] = frozenset(),
                 page_max_bytes: int = DEFAULT_PAGE_BYTES, file_max_bytes: int = DEFAULT_FILE_BYTES,
                 unix_path: str | None = None, target: Target | None = None, prefetch: bool = True,
                 direct_urls: frozenset[str] = frozenset()) -> None:
        """TARGET: the build's interpreter; links to wheels it can never install are left
        off the pages the build sees (builder/build/proxy/wheeltags.py). None: pages pass whole.
        PREFETCH: fetch pages and wheels ahead of pip (builder/build/proxy/prefetch.py).
        DIRECT_URLS: the files on allowed hosts requirements name (requirements.Split.direct)."""
        self.upstream = upstream
        self.timeout = timeout
        self.target = target
        self.cache = cache
        self.stats = Stats()
        host = urlsplit(upstream.url).hostname or ""
        self.fetcher = Fetcher(ca_bundle=ca_bundle, timeout=timeout, retries=retries, loopback_ok=is_loopback(host),
                               private_ok=index_is_private(host))
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.direct_urls = direct_urls
        self.page_max_bytes, self.file_max_bytes = page_max_bytes, file_max_bytes
        self.unix_path = unix_path
        self.ready = threading.Event()
        self.wheels_only = False  # refuse every file but a wheel (a near twin's step, builder/build/delta.py)
        self._ident = identity(upstream.url, upstream.auth_header)
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()
        self._server: UnixHTTPServer | TCPHTTPServer | None = None
        self.prefetch = Prefetcher(self._prefetch_page, self._prefetch_file, target,
                                   self._prefetch_metadata) if prefetch else None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "IndexProxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body leave in separate writes; with Nagle on, each
            # keep-alive response waits out the client's delayed ACK (~40 ms)
            disable_nagle_algorithm = proxy.unix_path is None

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                proxy._handle(self)

            def do_HEAD(self) -> None:  # noqa: N802 uv asks for sizes before downloading
                proxy._handle(self, head=True)

            def log_message(self, fmt: str, *args) -> None:  # quiet: we log our own events
                pass

        if self.unix_path:
            self._server = UnixHTTPServer(self.unix_path, Handler)
            os.chmod(self.unix_path, 0o600)
        else:
            self._server = TCPHTTPServer(("127.0.0.1", 0), Handler)
        # each request thread runs in the build's context, so its log lines and
        # errors are redacted with this build's redactor (builder/core/errors.py)
        context, serve = contextvars.copy_context(), self._server.process_request_thread
        self._server.process_request_thread = lambda request, address: context.copy().run(serve, request, address)
        # shutdown() waits for the loop's next poll: 0.5 s by default, paid by every build's end
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="index-proxy",
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.prefetch is not None:
            self.prefetch.close()
            self.stats.prefetch = dict(self.prefetch.counts)
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            self.stats.upstream_requests = self.fetcher.requests

    @property
    def address(self) -> str:
        assert self._server is not None and not self.unix_path
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- pages -------------------------------------------------------------------
    def expect(self, lines: list[str]) -> None:
        """Requirement lines the build is about to install: their pages can be fetched now. Not
        when the lines name their own index: pip never asks this one for their names then."""
        if self.prefetch is not None and not names_own_index(lines):
            self.prefetch.expect(lines)

    def _link(self, page_url: str, tag: str, auth: Upstream | None, ident: str,
              offers: list[Offer] | None = None) -> str:
        """Register one anchor's target; return the tag pointing at the proxy (or at nothing)."""
        m = HREF.search(tag)
        if not m:
            return tag
        try:  # (as Fetcher.open would refuse it: one reading of the URL, the connection's)
            joined = join(page_url, html.unescape(m.group(1) or m.group(2) or ""))
        except Disagreement:  # file:, data:, ftp:, and what URL parsers read two ways lead nowhere
            return tag[:m.start()] + 'href=""' + tag[m.end():]
        parts = urlsplit(joined)
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
        name = unquote(parts.path.rsplit("/", 1)[-1]) or "index"
        sha = SHA256.search(parts.fragment)
        meta = re.search(r"\bdata-(?:dist-info|core)-metadata\s*=\s*[\"'](?!false)", tag, re.I) is not None
        digest = sha.group(1) if sha else None
        key = _link_key(ident, url, digest, meta)
        with self._lock:
            self._links[key] = Link(url, name, digest, auth, ident, meta)
        if offers is not None:
            offers.append(Offer(key, name, *offer_attrs(tag)))
        # only a hash goes on to pip: a page's '#subdirectory=/elsewhere' would have pip build from any
        # directory in the image (pip joins it as written), and the page chose it, not the package
        fragment = parts.fragment if _HASH_FRAGMENT.fullmatch(parts.fragment) else ""
        local = f"/_f/{key}/{quote(name)}" + (f"#{fragment}" if fragment else "")
        return tag[:m.start()] + f'href="{html.escape(local)}"' + tag[m.end():]

    def _page(self, url: str, project: str | None, auth: Upstream | None, ident: str) -> tuple[bytes, list[Offer]]:
        """The page at URL as the build sees it, and the files it offers."""
        # ask for HTML (PEP 503) so there is one link format to rewrite
        with self.fetcher.open(url, auth=auth, accept="text/html", max_bytes=self.page_max_bytes) as body:
            data = body.read()
            final = body.url
        with self._lock:
            self.stats.upstream_bytes += len(data)
        text = data.decode("utf-8", "replace")
        if project:
            found = versions_on_page(project, [a or b for a, b in HREF.findall(text)])
            if found:
                with self._lock:
                    self.stats.versions[normalise(project)] = found
        if self.target is not None:
            text, dropped = drop_foreign(text, self.target)
            if dropped:
                log.debug("index page: left off wheels for other platforms", project=project, dropped=dropped)
        offers: list[Offer] = []
        text = ANCHOR.sub(lambda m: self._link(final, m.group(0), auth, ident, offers), text)
        return text.encode(), offers

    def _prefetch_page(self, project: str) -> tuple[bytes, list[Offer]]:
        if not re.fullmatch(PROJECT_NAME, project):  # (prefetch.py hands only canonical names; a page path is one)
            raise Denied(404, "not a normalised project name")
        return self._page(self.upstream.url + project + "/", project, self.upstream, self._ident)

    def _extra(self, token: str) -> str:
        url = unb64(token)
        try:  # the host the connection will use: the one decided on here
            host = read_url(url).host
        except Disagreement as exc:
            raise Denied(403, f"not an index on a host --allow-index-host names ({exc})") from None
        if host not in self.allowed_hosts:
            raise Denied(403, "not an index on a host --allow-index-host names")
        return url

    # -- request handling -------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, head: bool = False) -> None:
        begin(h)
        try:
            kind, groups = route(h.path)
            if kind == "ready":
                self.ready.set()
                self._send(h, 200, b"ok\n")
            elif kind == "page":
                page = self.prefetch.page(groups[0]) if self.prefetch is not None else None
                self._send_page(h, page if page is not None else self._prefetch_page(groups[0])[0])
            elif kind == "xpage":
                base = self._extra(groups[0])
                base = base if base.endswith("/") else base + "/"
                self._send_page(h, self._page(base + groups[1] + "/", groups[1], None, identity(base, None))[0])
            elif kind == "links":
                url = self._extra(groups[0])
                self._send_page(h, self._page(url, None, None, identity(url, None))[0])
            elif kind == "direct":  # name @ URL on an allowed host: a URL the requirements name, as if linked
                url = self._extra(groups[0])
                if url not in self.direct_urls:
                    raise Denied(403, "not a file the requirements name on a host --allow-index-host names")
                plain, _, fragment = url.partition("#")
                ident, sha = identity(plain, None), SHA256.search(fragment)
                digest = sha.group(1) if sha else None
                key = _link_key(ident, plain, digest)
                with self._lock:  # (the name asked for must be the URL's own: _serve_file)
                    self._links[key] = Link(plain, direct_name(plain), digest, None, ident)
                self._serve_file(h, key, unquote(groups[1]), head)
            else:
                self._serve_file(h, groups[0], unquote(groups[1]), head)
        except Denied as exc:
            with self._lock:
                self.stats.denied += 1
            log.warning("index proxy refused a request from the build", status=exc.code, reason=exc.reason,
                        request=redact(h.path[:200]))
            self._send(h, exc.code, f"{exc.reason}\n".encode())
        except UpstreamStatus as exc:
            if exc.code in (401, 403):
                self.stats.auth_failures.append(exc.code)
                log.warning("index refused credentials", status=exc.code, url=exc.url)
            elif exc.code == 404:
                self.stats.not_found.append(exc.url)
            self._send(h, exc.code, f"upstream answered {exc.code}\n".encode())
        except Refused as exc:
            self.stats.refused.append(str(exc))
            log.warning("index proxy refused an upstream answer", reason=exc.reason, url=exc.url)
            self._send(h, 502, f"refused by the index proxy: {exc}\n".encode())
        except (Unreachable, OSError) as exc:
            reason = redact(str(exc))[:300]
            self.stats.unreachable.append(reason)
            log.warning("index unreachable", upstream=self.upstream.url, reason=reason)
            self._send(h, 502, b"upstream index unreachable\n")

    def _serve_file(self, h: BaseHTTPRequestHandler, key: str, name: str, head: bool = False) -> None:
        link = self._links.get(key)
        if link is not None and link.metadata and name == link.name + ".metadata":
            data = self.prefetch.metadata(key) if self.prefetch is not None else None
            if data is None:  # (the link read once, here: _links may take another page's reading meanwhile)
                data = self._metadata_of(link, self.page_max_bytes)
            self._send(h, 200, data, "application/octet-stream")
            if self.prefetch is not None and link.ident == self._ident:  # (as _read_dependencies)
                self.prefetch.saw_metadata(key, data.decode("utf-8", "replace"))
            return
        if link is None or name != link.name:
            raise Denied(404, "not a file an index page served to this build linked")
        if (not name.endswith(".whl") or link.ident != self._ident) and not self.stats.sources.append(name) \
                and self.wheels_only:
            raise Denied(403, "this step installs wheels alone: the dependency image is built whole instead")
        blob = self.cache.lookup(link.url, link.sha256, link.ident)
        if self.prefetch is not None:
            if blob is not None:
                self.prefetch.took(key)
            else:  # a guess may be fetching it (or have just put it there)
                self.prefetch.file(key)
                blob = self.cache.lookup(link.url, link.sha256, link.ident)
        if blob is not None:
            if not head:  # a HEAD is followed by the GET: count the file once
                with self._lock:
                    self.stats.cache_hits += 1
                    self.stats.cache_bytes += blob.stat().st_size
                    self.stats.reused.append(link.name)
            self._send_file(h, blob, head)
        else:
            blob, tee = self._download(link, h, head)
            if not tee.finish():
                self._send_file(h, blob, head)
        if not head:
            self._read_dependencies(link, blob)
            origin = urlsplit(link.url)
            self.cache.remember(self.upstream.url, link.name, blob.name, f"{origin.scheme}://{origin.hostname}")

    def _read_dependencies(self, link: Link, blob: Path) -> None:
        # only wheels of the configured index: its pages are the ones prefetched (an extra
        # index's wheel must not make this index hear of the names it needs)
        if self.prefetch is not None and link.name.endswith(".whl") and link.ident == self._ident:
            self.prefetch.saw_wheel(blob)

    def _prefetch_metadata(self, key: str, max_bytes: int) -> bytes | None:
        """A guess: KEY's .metadata (PEP 658) on the configured index; None when its page offers none."""
        link = self._links[key]
        ok = link.metadata and link.ident == self._ident
        return self._metadata_of(link, min(max_bytes, self.page_max_bytes)) if ok else None

    def _metadata_of(self, link: Link, max_bytes: int) -> bytes:
        with self.fetcher.open(link.url + ".metadata", auth=link.auth, max_bytes=max_bytes) as body:
            return body.read()

    def _prefetch_file(self, key: str, max_bytes: int, reserve: Callable[[int | None, int], int]) -> int:
        """A guessed file into the cache (at most MAX_BYTES, and what RESERVE allows): its size, or 0 when
        it was there."""
        link = self._links[key]
        blob = self.cache.lookup(link.url, link.sha256, link.ident)
        size = 0
        if blob is None:
            blob, tee = self._download(link, None, False, max_bytes=max_bytes, reserve=reserve)
            size = tee.size
        self._read_dependencies(link, blob)
        return size

    def _download(self, link: Link, h: BaseHTTPRequestHandler | None, head: bool, max_bytes: int | None = None,
                  reserve: Callable[[int | None, int], int] | None = None) -> tuple[Path, Tee]:
        """LINK from upstream into the cache, checked; sent on to H's client as it comes (no H: nobody).
        RESERVE (a guess's): its answer's length and the cap -> the cap it may fetch (0: refused before reading)."""
        cap = min(self.file_max_bytes, max_bytes or self.file_max_bytes)
        # a second request for the same file while this one runs downloads on its
        # own: its own temp file, and os.replace leaves one good copy either way
        fd, tmp = self.cache.tmpfile()
        try:
            with self.fetcher.open(link.url, auth=link.auth, max_bytes=cap) as body, os.fdopen(fd, "wb") as out:
                if reserve is not None:
                    cap = body.max_bytes = min(cap, reserve(body.length, cap))
                    if cap <= 0:
                        raise Refused(link.url, "not a guess: over its cap, or the guesses fill their budget")
                tee = Tee(h, body, out, stream=h is not None and not head)  # a HEAD answers once the file is cached
                tee.pump(lambda offset: self.fetcher.open(link.url, auth=link.auth, start=offset,
                                                          max_bytes=cap - offset))
            with self._lock:
                self.stats.upstream_bytes += tee.size
            digest = tee.digest.hexdigest()
            if link.sha256 and digest != link.sha256:
                raise Refused(link.url, f"sha256 {digest} is not the {link.sha256} its index page gave")
            with self._lock:
                self.stats.downloaded.append(link.name)
            return self.cache.store(link.url, Path(tmp), digest, link.ident), tee
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # refused (over the cap, wrong hash) or failed: never kept
            raise

    def _send_page(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        self._send(h, 200, body, "text/html; charset=utf-8")

    _send = staticmethod(send)
    _send_file = staticmethod(send_file)
