"""What a build uses, and when it last did: the facts `agent-image prune` decides by.

- **Last use.** An image's labels cannot change once it is built, so the
  builder keeps a stamp file per image under the cache folder,
  ``images/<image id hex>``: its mtime is the last time a build built,
  reused, pulled or built FROM the image, its text the references it was
  used under (JSON). An image with no stamp was last used when it was created.
- **Leases.** A build in progress writes ``<lock dir>/leases/<pid>-<n>.json``
  (``$AGENT_IMAGE_LOCK_DIR``, default ``/tmp/agent-image-locks``: one per
  machine, as the engine is one per machine) naming
  the repositories and references it may read or tag (its agent's
  repository, its dependency image) and the image ids it builds FROM. Prune
  keeps every image a live lease names. Writing a lease and pruning take the
  same lock (``leases/.lock``), so a prune either ends before a build looks
  anything up or sees its lease. A lease whose process is gone (SIGKILL) is
  ignored and removed by the next prune.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from pathlib import Path

import structlog

from builder.build.sandbox import process_started
from builder.core.filelock import LOCK_DIR, locked

log = structlog.get_logger("agent_image")

STAMPS = "images"
# machine-wide (the engine is): a build with another --cache-dir is seen by every prune
LEASE_DIR = LOCK_DIR / "leases"
_counter = itertools.count()
_counter_lock = threading.Lock()


def stamp_path(cache_dir: Path, image_id: str) -> Path:
    return Path(cache_dir) / STAMPS / image_id.split(":", 1)[-1]


def touch_used(cache_dir: Path, image_id: str | None, refs: list[str] | tuple[str, ...] = (),
               kind: str = "") -> None:
    """IMAGE_ID was used now (under REFS). A cache: a build never fails for it."""
    if not image_id:
        return
    path = stamp_path(cache_dir, image_id)
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        old = {}
    try:
        data = {"refs": sorted({*old.get("refs", []), *refs}), "kind": kind or old.get("kind", "")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)  # a new file: its mtime is now
    except OSError as exc:
        log.debug("could not record an image's use", image=image_id, reason=str(exc))


def read_stamps(cache_dir: Path) -> dict[str, tuple[float, dict]]:
    """{image id: (last use, {"refs", "kind"})} for every stamp."""
    out = {}
    folder = Path(cache_dir) / STAMPS
    if not folder.is_dir():
        return out
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        name = f"short:{entry.name[6:]}" if entry.name.startswith("short-") else f"sha256:{entry.name}"
        try:
            out[name] = (entry.stat().st_mtime, json.loads(Path(entry.path).read_text()))
        except (OSError, ValueError):
            continue
    return out


def lease_lock(root: Path | None = None):
    return locked((root or LEASE_DIR) / ".lock")


class Lease:
    """``with Lease(repos=[...]) as lease: ... lease.add(ref=..., ids=[...])``:
    what this build may use, for as long as it runs."""

    def __init__(self, *, repos: list[str] = (), refs: list[str] = (), root: Path | None = None) -> None:
        with _counter_lock:
            n = next(_counter)
        self.root = root or LEASE_DIR
        self.path = self.root / f"{os.getpid()}-{n}.json"
        self.data = {"pid": os.getpid(), "started": process_started(os.getpid()), "host": socket.gethostname(),
                     "repos": list(repos), "refs": list(refs), "ids": []}

    def _write(self) -> None:
        try:
            with lease_lock(self.root):
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data))
                tmp.replace(self.path)
        except OSError as exc:  # an unwritable cache folder: prune then cannot see this build (logged)
            log.warning("could not write the build's lease; a prune now could remove what it uses",
                        path=str(self.path), reason=str(exc))

    def add(self, *, refs: list[str] = (), ids: list[str] = ()) -> None:
        """Before the build looks REFS up (or builds FROM IDS)."""
        self.data["refs"] += [r for r in refs if r]
        self.data["ids"] += [i for i in ids if i]
        self._write()

    def narrow(self, *, ids: list[str]) -> None:
        """The build ended: only IDS (what it made) stay leased, until its own prune has run."""
        self.data.update(repos=[], refs=[], ids=[i for i in ids if i])
        self._write()

    def __enter__(self) -> "Lease":
        self._write()
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def live_leases(root: Path | None = None, *, remove_dead: bool = False) -> list[dict]:
    """The leases of builds still running (call with lease_lock held). A dead builder's are
    removed when REMOVE_DEAD."""
    folder = root or LEASE_DIR
    out = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        alive = (data.get("host") != socket.gethostname()
                 or (data.get("started") and process_started(int(data.get("pid", 0))) == data["started"]))
        if alive:
            out.append(data)
        elif remove_dead:
            path.unlink(missing_ok=True)
    for tmp in folder.glob("*.tmp") if remove_dead and folder.is_dir() else ():
        if time.time() - tmp.stat().st_mtime > 3600:
            tmp.unlink(missing_ok=True)
    return out


def touch_many(cache_dir: Path, short_ids: list[str], refs: list[str]) -> None:
    """What a failed build committed (the classic builder prints 12-hex short ids): prune's to
    remove, in REFS' scope. Kept as ``short-<id>`` stamps; read_stamps gives them as ``short:<id>``."""
    folder = Path(cache_dir) / STAMPS
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for short in short_ids:
            (folder / f"short-{short}").write_text(json.dumps({"refs": list(refs), "kind": "failed-build"}))
    except OSError as exc:
        log.debug("could not record a failed build's images", reason=str(exc))


def stamp_of(stamps: dict[str, tuple[float, dict]], image_id: str) -> tuple[float, dict] | None:
    hexid = image_id.split(":", 1)[-1]
    return stamps.get(f"sha256:{hexid}") or stamps.get(f"short:{hexid[:12]}")
