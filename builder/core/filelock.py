"""An exclusive lock between processes (and threads) on one machine: ``flock`` on a file.

The kernel drops the lock when its holder dies, SIGKILL included, so a killed
builder never leaves a lock behind. Threads of one process each open their own
file description, so they exclude each other too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path

# machine-wide, not per cache folder or TMPDIR: two builders with different --cache-dir or TMPDIR
# still meet here (/tmp, not tempfile.gettempdir(), which follows each process's TMPDIR)
LOCK_DIR = Path(os.environ.get("AGENT_IMAGE_LOCK_DIR", "/tmp/agent-image-locks"))


@contextlib.contextmanager
def locked(path: Path, *, timeout: float | None = None):
    """Hold an exclusive flock on PATH (created if missing) for the block.
    Raises TimeoutError after TIMEOUT seconds (None: wait for ever)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} is held by another process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the description releases the lock


def key_lock(kind: str, key: str, root: Path | None = None) -> Path:
    """The lock file for KEY (e.g. a registry/repo:tag): one per key, any key spelling is safe."""
    return (root or LOCK_DIR) / kind / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
