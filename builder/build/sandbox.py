"""The network a build step gets: its own loopback, with one door to the index proxy.

Every build gets a sandbox container started with ``--network none`` (its
only interface is loopback). The build runs with
``network_mode="container:<id>"``, so each RUN step shares that namespace:
no route to the host's loopback, to any host or docker address, to
link-local (cloud metadata) addresses, to the internet, and no DNS. Inside
the sandbox a small forwarder (builder/build/forwarder.py, run by the base
image's python3) listens on 127.0.0.1:PORT and carries each connection over
its stdin/stdout, which the engine's attach API links to the builder
(builder/build/tunnel.py); there the tunnel connects it to the index proxy's
unix socket. The build's ``http_proxy`` is ``http://127.0.0.1:PORT``: that
is its one door. Nothing is mounted, so it works wherever DOCKER_HOST points
(a local socket, tcp:// with or without TLS, a dind service): the proxy, its
credentials and its download cache stay on the builder.

A sandbox goes away by itself when its builder does: the forwarder exits at
EOF on its stdin (the attach connection closed), after IDLE_S without the
builder's ping, or at the end of LIFETIME_S, and the engine removes it
(auto-remove). Its labels name the builder (a host identity, the pid and its
start time) and when it expires; the next build and ``agent-image doctor``
remove one whose builder on this host is gone, or any builder's once expired.
A remote engine is shared by many builder hosts: a sandbox of another host is
never removed before it expires, by which time its own forwarder has quit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import structlog

from builder.build.engine import Engine
from builder.build.tunnel import Tunnel, forwarder_command
from builder.core.errors import EngineError, SandboxError
from builder.core.labels import SANDBOX_LABEL

log = structlog.get_logger("agent_image.sandbox")

PORT = 3128
SOCKET_NAME = "index.sock"
# the longest a sandbox lives (a build's --timeout is far less); after it, any builder may remove it
LIFETIME_S = 6 * 3600
DIR_PREFIX = "agent-image-sbx-"  # + pid: the proxy's socket folder on the builder's host
# test-only: build on the host network with the proxy on the host's loopback,
# as before the sandbox, so a test (and bench/) can see what the sandbox stops
HOST_NETWORK_ENV = "AGENT_IMAGE_TEST_HOST_NETWORK"

def process_started(pid: int) -> str:
    """A process's start time (clock ticks since boot): pid plus this survives pid reuse."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def host_identity() -> str:
    """Which builder host (and pid namespace) this is: a pid means something only there.

    The hostname alone is not enough on a shared remote engine (CI job
    containers share a kernel, and some share a hostname), so the boot id and
    the pid namespace join it."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip() if not path.startswith("/proc/self/ns") else os.readlink(path)
        except OSError:
            return ""
    raw = "|".join([socket.gethostname(), read("/proc/sys/kernel/random/boot_id"), read("/proc/self/ns/pid")])
    return f"{socket.gethostname()[:40]}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def sandbox_labels(now: float | None = None) -> dict[str, str]:
    pid, now = os.getpid(), time.time() if now is None else now
    return {SANDBOX_LABEL: "1", f"{SANDBOX_LABEL}.pid": str(pid), f"{SANDBOX_LABEL}.started": process_started(pid),
            f"{SANDBOX_LABEL}.host": host_identity(), f"{SANDBOX_LABEL}.expires": str(int(now + LIFETIME_S))}


def owner_alive(labels: dict[str, str], now: float | None = None) -> bool:
    expires = labels.get(f"{SANDBOX_LABEL}.expires", "")
    if expires.isdigit() and (time.time() if now is None else now) > int(expires):
        return False  # past its lifetime: its forwarder has quit, whoever started it
    host = labels.get(f"{SANDBOX_LABEL}.host")
    # a sandbox from before host identities (bare hostname, no expiry) is judged by its pid as then
    legacy = not expires and host == socket.gethostname()
    if host != host_identity() and not legacy:
        return True  # another builder host's on a shared engine: not ours to judge before it expires
    pid = labels.get(f"{SANDBOX_LABEL}.pid", "")
    return pid.isdigit() and process_started(int(pid)) == labels.get(f"{SANDBOX_LABEL}.started", "") != ""


def remove_stale(engine: Engine) -> int:
    """Remove sandboxes whose builder is gone. Returns how many."""
    removed = 0
    for c in engine.containers(label=SANDBOX_LABEL):
        if not owner_alive(c["labels"]):
            engine.remove_container(c["id"])
            removed += 1
    if removed:
        log.info("removed build sandboxes left by builders that are gone", count=removed)
    _remove_stale_dirs()
    return removed


def _socket_parent() -> str:
    """Where the proxy's socket folder goes: TMPDIR, unless its path is so deep that the socket's
    would pass AF_UNIX's 107 bytes (then /tmp)."""
    base = tempfile.gettempdir()
    longest = os.path.join(base, f"{DIR_PREFIX}{os.getpid()}-xxxxxxxx", SOCKET_NAME)
    return base if len(longest.encode()) <= 100 else "/tmp"


def _remove_stale_dirs() -> None:
    """The socket folders of builders killed mid-build (SIGKILL runs no clean-up)."""
    for path in {*Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"), *Path("/tmp").glob(f"{DIR_PREFIX}*-*")}:
        pid = path.name[len(DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def host_network_requested() -> bool:
    return os.environ.get(HOST_NETWORK_ENV) == "1"


class Sandbox:
    """One build's network. ``with Sandbox(engine, image) as sb:`` starts it in
    the background; ``sb.wait(proxy.ready)`` before the build; removed on exit,
    whatever happened (error, timeout, Ctrl-C)."""

    def __init__(self, engine: Engine, image: str, *, host_network: bool | None = None,
                 ready_timeout: float = 30.0, before: Callable[[], None] | None = None) -> None:
        # BEFORE: what must be done before IMAGE can run (its pull: builder/ship/pushpull.BasePull);
        # its error is the build's, raised as it is, and the ready timeout counts from its end
        self.engine, self.image, self.before = engine, image, before
        self._before_done = threading.Event()
        self._before_error: BaseException | None = None
        self._gate = threading.Lock()  # a sandbox left while BEFORE runs starts no container after it
        self._closing = self._starting = False
        self.host_network = host_network_requested() if host_network is None else host_network
        self.ready_timeout = ready_timeout
        self._ready = False  # its hello reached a proxy: the next proxy on the same path needs none
        self.container_id: str | None = None
        self.tunnel: Tunnel | None = None
        self.started_s = 0.0
        self._handle = None  # the attach response: kept while the tunnel uses its socket
        self._dir: str | None = None
        self._thread: threading.Thread | None = None
        self._sweep: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def socket_path(self) -> str | None:
        """Where the index proxy listens, on the builder (the tunnel connects there)."""
        return None if self.host_network else os.path.join(self._dir, SOCKET_NAME)

    @property
    def network_mode(self) -> str:
        return "host" if self.host_network else f"container:{self.container_id}"

    def proxy_url(self, proxy) -> str:
        """The build's http_proxy: the forwarder's port, or the proxy itself on the host network."""
        return proxy.address if self.host_network else f"http://127.0.0.1:{PORT}"

    def __enter__(self) -> "Sandbox":
        if self.host_network:
            log.warning("building on the host network: the build can reach everything the builder can",
                        switch=HOST_NETWORK_ENV)
            return self
        # 0700: only root and the sandbox; the pid in its name lets remove_stale find a killed builder's
        self._dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=_socket_parent())
        self._thread = threading.Thread(target=self._start, name="sandbox-start", daemon=True)
        self._thread.start()
        # sweeping other builders' leftovers is off the build's path; joined at the end
        self._sweep = threading.Thread(target=self._remove_stale, name="sandbox-sweep", daemon=True)
        self._sweep.start()
        return self

    def _remove_stale(self) -> None:
        try:
            remove_stale(self.engine)
        except EngineError as err:
            log.warning("could not sweep stale build sandboxes", reason=str(err)[:200])

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def _start(self) -> None:
        try:
            if self.before is not None:
                self.before()
        except BaseException as exc:  # reported by wait(), as it is
            self._before_error = exc
            return
        finally:
            self._before_done.set()
        with self._gate:
            if self._closing:
                return
            self._starting = True
        t0 = time.monotonic()
        try:
            self.container_id, sock, self._handle = self.engine.start_attached(
                self.image, command=forwarder_command(PORT, LIFETIME_S), labels=sandbox_labels())
            self.tunnel = Tunnel(sock, self._connect).start()
        except BaseException as exc:  # reported by wait()
            self._error = exc
        self.started_s = time.monotonic() - t0

    def wait(self, ready: threading.Event) -> None:
        """Return once the forwarder listens and its hello has reached the proxy through the tunnel."""
        if self.host_network or self._ready:
            return
        self._before_done.wait()
        if self._before_error is not None:
            raise self._before_error
        deadline = time.monotonic() + self.ready_timeout
        while not (ready.wait(0.02) and not self._thread.is_alive()):
            if self._error is not None:
                if isinstance(self._error, SandboxError):
                    raise self._error
                raise SandboxError(f"the build sandbox could not start: {self._error}",
                                   hint="Check the engine (agent-image doctor) and that the base image has python3.")
            if self.tunnel is not None and self.tunnel.closed.is_set():
                raise SandboxError(f"the build sandbox (python3 in {self.image}) exited before it was ready",
                                   hint=f"The sandbox runs python3 from {self.image} (the build's base): it needs "
                                        "a base with python3. `agent-image doctor` shows what the engine does.")
            if time.monotonic() > deadline:
                raise SandboxError(f"the build sandbox did not become ready in {self.ready_timeout:g}s",
                                   hint="Run `agent-image doctor` to see what the engine does with it.")
        self._ready = True
        log.debug("build sandbox ready", container=(self.container_id or "")[:12],
                  start_s=round(self.started_s, 3))

    def __exit__(self, *exc) -> None:
        if self.host_network:
            return
        with self._gate:
            self._closing = True
            started = self._starting
        if self._thread is not None:
            if started or self.before is None:  # (one still waiting on BEFORE returns on its own, starting nothing)
                self._thread.join()
            self._sweep.join()
        try:
            if self.tunnel is not None:
                self.tunnel.close()  # the forwarder sees EOF and exits
            if self.container_id:
                self.engine.kill(self.container_id)  # started with auto-remove: the engine deletes it
        except EngineError as err:  # the engine went away mid-build: that error is the one to report
            log.warning("could not remove the build sandbox; it exits by itself within a minute",
                        container=self.container_id[:12], reason=str(err)[:200])
        finally:
            self._handle = None
            shutil.rmtree(self._dir, ignore_errors=True)
