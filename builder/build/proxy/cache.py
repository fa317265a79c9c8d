"""Files the index proxy downloaded, kept on the build host and shared by every build.

Layout under the cache root (``v2``; the URL-keyed layout before it is
discarded on first use, not trusted):

- ``sha256/<hex>``: the bytes, named by their own content hash;
- ``ids/<key>``: for a file whose index page gave no hash, the blob it
  gave, keyed by sha256(identity, url) where identity is a hash of the index
  URL and its credential, so it is reused only for the same index and the
  same credential (a token never touches the disk);
- ``tmp/.part-<pid>-*``: downloads in flight. A dead process's are removed
  (and counted) by the next build; live ones count toward the cap.

Writes go to a temp file then ``os.replace``, which is atomic, so two builds
fetching the same file at once both end with one good copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import structlog

log = structlog.get_logger("agent_image.index")

DEFAULT_CACHE_BYTES = 2 * 1024 ** 3
STALE_PART_SECONDS = 24 * 3600  # a part file this old is stale whatever its pid says


def identity(index_url: str, auth_header: str | None) -> str:
    """Who asked: a hash of the index and its credential (the token itself is never stored)."""
    return hashlib.sha256(f"agent-image-cache-id\0{index_url}\0{auth_header or ''}".encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DownloadCache:
    """Content-addressed files on the build host, bounded, safe across processes."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.parts_removed = 0
        self._discard_legacy()
        for sub in ("sha256", "ids", "tmp", "names"):
            (self.root / "v2" / sub).mkdir(parents=True, exist_ok=True)
        self.parts_removed = self._clean_parts()

    @property
    def blobs(self) -> Path:
        return self.root / "v2" / "sha256"

    def _discard_legacy(self) -> None:
        legacy = [self.root / "urls", self.root / "blobs"]
        if any(p.is_dir() for p in legacy):
            for p in legacy:
                shutil.rmtree(p, ignore_errors=True)
            log.info("discarded the URL-keyed download cache of an older agent-image", cache=str(self.root))

    def _clean_parts(self) -> int:
        removed = 0
        now = time.time()
        for entry in os.scandir(self.root / "v2" / "tmp"):
            pid = entry.name.split("-")[1] if entry.name.count("-") >= 2 else ""
            try:
                old = now - entry.stat().st_mtime > STALE_PART_SECONDS
                if old or not pid.isdigit() or not _pid_alive(int(pid)):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        if removed:
            log.info("removed partial downloads of crashed builds", count=removed, cache=str(self.root))
        return removed

    def _id_key(self, ident: str, url: str) -> Path:
        return self.root / "v2" / "ids" / hashlib.sha256(f"{ident}\0{url}".encode()).hexdigest()

    def lookup(self, url: str, sha256: str | None, ident: str) -> Path | None:
        """The blob for URL: by the page's hash when it gave one, else only what
        this same identity fetched from this same URL before."""
        if sha256:
            digest = sha256
        else:
            try:
                digest = self._id_key(ident, url).read_text().strip()
            except OSError:
                return None
        blob = self.blobs / digest
        if len(digest) == 64 and blob.is_file():
            os.utime(blob)
            return blob
        return None

    def store(self, url: str, tmp_path: Path, digest: str, ident: str) -> Path:
        blob = self.blobs / digest
        os.replace(tmp_path, blob)
        fd, tmp = tempfile.mkstemp(dir=self.root / "v2" / "tmp", prefix=f".part-{os.getpid()}-")
        with os.fdopen(fd, "w") as fh:
            fh.write(digest)
        os.replace(tmp, self._id_key(ident, url))
        self.evict(keep=digest)
        return blob

    def evict(self, keep: str | None = None) -> None:
        """Drop the least recently used blobs past max_bytes (never KEEP). Downloads
        in flight count toward the total but are never removed here."""
        blobs, total = [], 0
        for folder in (self.blobs, self.root / "v2" / "tmp"):
            for entry in os.scandir(folder):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                total += st.st_size
                if folder == self.blobs:
                    blobs.append((st.st_mtime, st.st_size, entry.path))
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

    # -- what each file was: the SBOM's hashes (builder/ship/sbom.py) ------------------------------------------
    def _name_key(self, index_url: str, name: str, version: str) -> Path:
        index = hashlib.sha256(index_url.encode()).hexdigest()[:16]
        return self.root / "v2" / "names" / f"{index}-{hashlib.sha256(f'{name}=={version}'.encode()).hexdigest()[:32]}"

    def remember(self, index_url: str, file_name: str, sha256: str, origin: str) -> None:
        """FILE_NAME (a wheel or sdist of INDEX_URL, served to a build) is SHA256: for the SBOM of this
        build and of later builds whose layers reuse it. Keyed by the index (without credentials)."""
        from builder.build.proxy.dists import name_version
        nv = name_version(file_name)
        if nv is None:
            return
        fd, tmp = self.tmpfile()
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{sha256} {file_name} {origin}")
        os.replace(tmp, self._name_key(index_url, *nv))

    def recall(self, index_url: str, name: str, version: str) -> dict | None:
        """{"sha256", "file", "origin"} of the file a build got for NAME==VERSION from INDEX_URL."""
        try:
            sha, file_name, origin = self._name_key(index_url, name, version).read_text().split(" ", 2)
        except (OSError, ValueError):
            return None
        return {"sha256": sha, "file": file_name, "origin": origin}

    def tmpfile(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.root / "v2" / "tmp", prefix=f".part-{os.getpid()}-")
