"""This machine as a target: a link-local address that stays on it (needs root and
iproute2), and listeners that count what they accept."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

DUMMY_IF = "ai10ll0"
LINK_LOCAL = "169.254.77.1"   # on an interface set up here; never the metadata address


@contextlib.contextmanager
def link_local_address() -> Iterator[str]:
    """169.254.77.1 on a dummy interface (or, where the kernel has no dummy driver, on lo),
    removed after: a link-local target that stays on this machine."""
    if shutil.which("ip") is None:
        raise RuntimeError("iproute2 (ip) is needed: scripts/setup.sh installs it")
    subprocess.run(["ip", "link", "del", DUMMY_IF], capture_output=True)
    dev = DUMMY_IF
    if subprocess.run(["ip", "link", "add", DUMMY_IF, "type", "dummy"], capture_output=True).returncode != 0:
        dev = "lo"
    try:
        subprocess.run(["ip", "addr", "add", f"{LINK_LOCAL}/32", "dev", dev], check=True)
        subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        yield LINK_LOCAL
    finally:
        if dev == "lo":
            subprocess.run(["ip", "addr", "del", f"{LINK_LOCAL}/32", "dev", "lo"], capture_output=True)
        else:
            subprocess.run(["ip", "link", "del", DUMMY_IF], capture_output=True)


class Counting:
    """A listener on the builder's host that counts what it accepts."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.address, self.port, self.accepts = address, self.sock.getsockname()[1], 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nlistener-answered\n")
            conn.close()

    def close(self) -> None:
        self.sock.close()
