"""Fetch what pip in the build will ask for next, before it asks.

pip resolves one project at a time: a page, a pick, the wheel (or its
``.metadata``), its ``Requires-Dist``, the next page. Each step waits for a
round trip to the index, so a tree of 45 projects costs 90 round trips in a
row. The index proxy sees every wheel go by, so it reads the dependencies
itself and fetches their pages, and the wheel pip will most likely pick, a
few at a time: the proxy resolves ahead of pip, and pip finds what it asks
for already here.

What pip sees does not change: a prefetched page is the same page, made by
the same code (builder/build/proxy/server.py) and kept only for this build, and a
prefetched file goes through the same checks (its page's sha256, the size
cap) into the same download cache. A wrong guess costs one download, within
a byte budget. A prefetch that fails is not served and not retried: pip's own
request goes upstream and meets the failure itself, so errors stay pip's errors.
"""

from __future__ import annotations

import contextvars
import itertools
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog
from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from builder.build.proxy.pages import project_and_version
from builder.build.proxy.wheelmeta import METADATA_BYTES, requires_dist, wheel_metadata
from builder.build.proxy.wheeltags import Target

log = structlog.get_logger("agent_image.index")

WORKERS = 8                      # fetches at once: pip's serial walk needs only a few ahead of it
MAX_PAGES = 1000                 # per build: a dependency tree is rarely over 300 projects
PAGE_BYTES = 256 * 1024 ** 2     # per build: pages held until pip asks (each is let go once served)
GUESS_BYTES = 1024 ** 3          # per build: files fetched on a guess, before pip asked for them
GUESS_FILE_BYTES = 256 * 1024 ** 2  # a larger file is never a guess (8 at once could be 24 GiB): pip fetches it
META_BYTES = 32 * 1024 ** 2      # per build: .metadata files (PEP 658) held until pip asks
META_FILE_BYTES = META_BYTES // WORKERS  # a larger one is not a guess (pip fetches it: a few KiB is usual)
PAGE_WAIT = 15.0                 # pip's request waits this long for a page already being fetched
FILE_WAIT = 20.0                 # ... and for a guessed file (pip times out at 60 s; then it fetches itself)


_SERVED: Future = Future()
_SERVED.set_exception(LookupError("served already"))


@dataclass(frozen=True)
class Offer:
    """One file a page offers, as the guess needs it."""
    key: str                     # the proxy's /_f/<key>/ for it
    name: str                    # file name
    requires_python: str | None  # data-requires-python
    yanked: bool


class Prefetcher:
    """Pages and files fetched ahead of pip, for one build.

    PAGE(name) -> (page bytes, offers): the proxy's page for a project; DOWNLOAD(key, max_bytes, reserve) ->
    bytes: the file into the download cache (0: it was there already), asking RESERVE(its Content-Length,
    its own cap) for the cap before it reads (0: not fetched). Both raise on failure."""

    def __init__(self, page: Callable[[str], tuple[bytes, list[Offer]]],
                 download: Callable[[str, int, Callable[[int | None, int], int]], int],
                 target: Target | None, metadata: Callable[[str, int], bytes | None] | None = None) -> None:
        self._page, self._download, self.target, self._metadata = page, download, target, metadata
        # a near twin's step (builder/build/delta.py) resolves the whole set and installs only what is
        # new: guess each page's .metadata, not its wheel (METADATA(key, max_bytes) -> the file's bytes,
        # None when its page offers none, or raises)
        self.metadata_first = False
        self._metas: dict[str, Future] = {}
        self.meta_bytes = 0              # .metadata files held now
        self._env = None if target is None else {
            "python_version": f"3.{target.minor}", "python_full_version": f"3.{target.minor}.0",
            "platform_machine": target.arch, "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "extra": ""}
        self._pages: dict[str, Future] = {}
        self._specs: dict[str, SpecifierSet] = {}
        self._files: dict[str, Future] = {}   # guesses, and files pip fetched itself (no guess then)
        self._guessed: set[str] = set()        # files a guess put in the cache that pip has not taken yet
        self._read: set[str] = set()           # wheels (cache blob names) whose METADATA was read
        self._lock = threading.Lock()
        # pages before files: a page is what pip waits for next, a file can be large
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.guessed_bytes = 0
        self._reserved = 0               # bytes the guesses under way may still fetch
        self.page_bytes = 0              # pages held now
        self.counts = {"pages": 0, "page_hits": 0, "files": 0, "file_hits": 0, "metadata": 0, "metadata_hits": 0}

    # -- what pip will want --------------------------------------------------------
    def expect(self, lines: list[str]) -> None:
        """Requirement strings pip is about to resolve (the requirements lines, a Requires-Dist)."""
        for text in lines:
            if self._closed or len(self._pages) >= MAX_PAGES:
                return
            try:
                req = Requirement(text)
                if req.url or (req.marker is not None and not self._applies(req)):
                    continue
            except (InvalidRequirement, InvalidMarker, InvalidSpecifier):
                continue  # pip's own parser has the last word; a line we cannot read is only not prefetched
            self._want(canonicalize_name(req.name), req.specifier)

    def _applies(self, req: Requirement) -> bool:
        if self._env is None:
            return "extra" not in str(req.marker)
        try:
            return req.marker.evaluate(self._env)
        except (UndefinedComparison, UndefinedEnvironmentName, InvalidVersion):
            return True

    def saw_wheel(self, blob: Path) -> None:
        """A wheel pip (or a guess) fetched: its dependencies are what pip asks for next."""
        with self._lock:
            if blob.name in self._read:
                return
            self._read.add(blob.name)
        self._submit(lambda: self.expect(requires_dist(wheel_metadata(blob))))

    def saw_metadata(self, key: str, text: str) -> None:
        """pip read a wheel's .metadata (PEP 658): it will want that wheel at the end, and its dependencies."""
        text = text[:METADATA_BYTES]  # read off the request's thread, at most as much as a wheel's
        self._submit(lambda: self.expect(requires_dist(text)))
        if not self.metadata_first:
            self._want_file(key)

    def _want(self, name: str, spec: SpecifierSet) -> None:
        with self._lock:
            full = len(self._pages) >= MAX_PAGES or self.page_bytes >= PAGE_BYTES
            if name in self._pages or self._closed or full:
                return
            self._pages[name] = fut = Future()
            self._specs[name] = spec
            self.counts["pages"] += 1
        self._submit(lambda: self._fetch_page(name, fut))

    def _fetch_page(self, name: str, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():  # pip asked first and fetched it itself
            return
        try:
            if self.page_bytes >= PAGE_BYTES:
                raise LookupError("the prefetched pages fill their budget")
            body, offers = self._page(name)
            with self._lock:
                if self.page_bytes + len(body) > PAGE_BYTES:
                    raise LookupError("the prefetched pages fill their budget")
                if self._pages.get(name) is fut:  # (not when pip stopped waiting and fetched it itself)
                    self.page_bytes += len(body)
                fut.set_result(body)  # under the lock: page() sees the bytes counted iff it is done
        except Exception as exc:  # noqa: BLE001 (module doc)
            fut.set_exception(exc)  # kept, never retried: pip's own request meets the error
            return
        guess = self.choose(offers, self._specs.get(name, SpecifierSet()))
        if guess is not None:
            (self._want_metadata if self.metadata_first else self._want_file)(guess.key)

    def choose(self, offers: list[Offer], spec: SpecifierSet) -> Offer | None:
        """The wheel pip will most likely take: the newest final release in SPEC that runs on the
        target, its best-ranked wheel; None when that release has only a source (pip builds it)."""
        if self.target is None:
            return None
        here = Version(f"3.{self.target.minor}.0")
        pre = bool(spec.prereleases)  # pip takes a pre-release only when the specifier names one
        by_version: dict[Version, list[Offer]] = {}
        for offer in offers:
            version = self._version(offer.name)
            if version is None or offer.yanked or not spec.contains(version, prereleases=pre):
                continue
            try:
                if offer.requires_python and not SpecifierSet(offer.requires_python).contains(here):
                    continue
            except InvalidSpecifier:
                pass
            if offer.name.endswith(".whl") and not self.target.keeps(offer.name):
                continue
            by_version.setdefault(version, []).append(offer)
        if not by_version:
            return None
        wheels = [(self.target.rank(o.name), o) for o in by_version[max(by_version)] if o.name.endswith(".whl")]
        return min(wheels, key=lambda pair: pair[0])[1] if wheels else None

    @staticmethod
    def _version(filename: str) -> Version | None:
        found = project_and_version(filename)
        try:
            return Version(found[1]) if found else None
        except InvalidVersion:
            return None

    def _want_file(self, key: str) -> None:
        with self._lock:
            if key in self._files or self._closed or self.guessed_bytes >= GUESS_BYTES:
                return
            self._files[key] = fut = Future()
            self.counts["files"] += 1
        self._submit(lambda: self._fetch_file(key, fut), priority=1)

    def _fetch_file(self, key: str, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():  # pip asked first and fetched it itself
            return
        if GUESS_BYTES - self.guessed_bytes - self._reserved <= 0:
            fut.set_exception(LookupError("the guesses fill their budget"))
            return
        held = 0

        def reserve(length: int | None, cap: int) -> int:
            """The answer's Content-Length (None: not given) and the download's own cap -> the most this
            guess may fetch; 0: none. The budget counts what the guesses under way may still fetch, not
            only what they did: each its own length (a fixed 256 MiB apiece let four of eight start), or
            an eighth of the budget when the answer gives none (a larger file then is pip's to fetch)."""
            nonlocal held
            want = min(cap, GUESS_FILE_BYTES, GUESS_BYTES // WORKERS if length is None else length)
            with self._lock:
                if length is not None and length > want or want <= 0 \
                        or want > GUESS_BYTES - self.guessed_bytes - self._reserved:
                    return 0
                self._reserved += want
                held = want
                self._guessed.add(key)  # before the file lands in the cache: pip may take it at once
            return want

        try:
            size = self._download(key, GUESS_FILE_BYTES, reserve)
        except Exception as exc:  # noqa: BLE001 (module doc)
            with self._lock:
                self._reserved -= held
                # what it held, it may have fetched (a wrong hash fails at the end): spent, or
                # failing guesses could fetch without end
                self.guessed_bytes += held
                self._guessed.discard(key)
            fut.set_exception(exc)  # kept, never retried: pip's own request meets the error
            return
        with self._lock:
            self._reserved -= held
            self.guessed_bytes += size
            if not size:  # it was in the cache already: not this guess's doing
                self._guessed.discard(key)
        fut.set_result(size)

    def _want_metadata(self, key: str) -> None:
        with self._lock:
            if key in self._metas or self._closed or self._metadata is None or self.meta_bytes >= META_BYTES:
                return
            self._metas[key] = fut = Future()
            self.counts["metadata"] += 1
        self._submit(lambda: self._fetch_metadata(key, fut))  # as a page: what pip waits for next

    def _fetch_metadata(self, key: str, fut: Future) -> None:
        if not fut.set_running_or_notify_cancel():  # pip asked first and fetched it itself
            return
        try:
            data = self._metadata(key, META_FILE_BYTES)
            if data is None:  # its page offers none: the wheel, as without a near twin
                with self._lock:
                    self._metas[key] = _SERVED
                    fut.set_result(None)  # (a request waiting on it goes on at once)
                self._want_file(key)
                return
            with self._lock:
                if self.meta_bytes + len(data) > META_BYTES:
                    raise LookupError("the prefetched .metadata files fill their budget")
                if self._metas.get(key) is fut:
                    self.meta_bytes += len(data)
                fut.set_result(data)
        except Exception as exc:  # noqa: BLE001 (module doc)
            fut.set_exception(exc)
            return
        self.expect(requires_dist(data[:METADATA_BYTES].decode("utf-8", "replace")))

    # -- what pip asks ---------------------------------------------------------------
    def metadata(self, key: str, timeout: float = PAGE_WAIT) -> bytes | None:
        """The prefetched .metadata of KEY's wheel (served once), or None: fetch it yourself."""
        with self._lock:
            fut = self._metas.get(key)
            if fut is None or fut.cancel():  # none, or still queued: pip's own request goes now
                self._metas[key] = _SERVED
                return None
        try:
            data = fut.result(timeout)
        except Exception:  # noqa: BLE001 failed or slow: the caller asks upstream itself
            with self._lock:
                if self._metas.get(key) is fut:  # not held for later (nor counted, if it came just now)
                    self._metas[key] = _SERVED
                    if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                        self.meta_bytes -= len(fut.result())
            return None
        with self._lock:
            if data is None or self._metas.get(key) is not fut:  # none offered; or another request took it
                return None
            self._metas[key] = _SERVED
            self.meta_bytes -= len(data)
            self.counts["metadata_hits"] += 1
        return data

    def page(self, name: str, timeout: float = PAGE_WAIT) -> bytes | None:
        """The prefetched page for NAME (waiting a little if it is being fetched), or None: fetch it
        yourself. A page still queued is given up to pip's request at once."""
        with self._lock:
            fut = self._pages.get(name)
            if fut is not None and fut.cancel():  # still queued (or given up before)
                self._pages[name] = _SERVED
                return None
        if fut is None:
            return None
        try:
            body = fut.result(timeout)
        except Exception:  # noqa: BLE001 failed or slow: the caller asks upstream itself
            with self._lock:
                if self._pages.get(name) is fut and not fut.done():  # slow: its page is not held later
                    self._pages[name] = _SERVED
            return None
        with self._lock:
            if self._pages.get(name) is not fut:  # another request took it first
                return None
            # served once: a later request for it (the next pip of the build) goes upstream
            self._pages[name] = _SERVED
            self.page_bytes -= len(body)
            self.counts["page_hits"] += 1
        return body

    def file(self, key: str, timeout: float = FILE_WAIT) -> bool:
        """pip asks for KEY, which is not in the cache: wait a little for a guess under way. True:
        it is there now. False: fetch it yourself (a guess still queued is given up to you, and no
        guess will start fetching it after this)."""
        with self._lock:
            fut = self._files.get(key)
            if fut is None:
                self._files[key] = done = Future()
                done.set_result(0)
                return False
            if fut.cancel():  # still queued (or given up before)
                return False
        try:
            fut.result(timeout)
        except Exception:  # noqa: BLE001 failed or slow: pip's request goes upstream
            return False
        return self.took(key)

    def took(self, key: str) -> bool:
        """pip gets KEY from the cache: was it a guess that put it there? (counted once)"""
        with self._lock:
            if key not in self._guessed:
                return False
            self._guessed.discard(key)
            self.counts["file_hits"] += 1
            return True

    # -- workers -----------------------------------------------------------------------
    def _submit(self, job: Callable[[], None], priority: int = 0) -> None:
        context = contextvars.copy_context()  # the build's redactor goes with the job (errors.py)
        with self._lock:
            if self._closed:
                return
            self._jobs.put((priority, next(self._order), lambda: context.run(job)))
            if len(self._threads) < WORKERS:
                t = threading.Thread(target=self._work, name="index-prefetch", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()[2]
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # noqa: BLE001 a guess never fails the build
                log.debug("index prefetch failed", error=str(exc)[:200])

    def close(self) -> None:
        """No new jobs; queued ones are dropped, running ones end on their own (daemon threads)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while not self._jobs.empty():
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            self._jobs.put((-1, next(self._order), None))
