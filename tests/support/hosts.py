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


def own_address() -> str | None:
    """An IPv4 address of this machine that is not loopback or link-local (one a listener can bind),
    or None: a target that is the builder itself without being its loopback."""
    import fcntl
    import ipaddress
    import struct
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:  # SIOCGIFADDR: the interface's address, read locally (nothing is sent)
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))[20:24]
            except OSError:
                continue
        addr = ipaddress.ip_address(socket.inet_ntoa(packed))
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((str(addr), 0))  # bindable: it is on this machine
            except OSError:
                continue
        return str(addr)
    return None
