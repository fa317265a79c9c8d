"""The network a build step gets: its own loopback, with one door to the index proxy.

Every build gets a sandbox container started with ``--network none`` (its
only interface is loopback). The build runs with
``network_mode="container:<id>"``, so each RUN step shares that namespace:
no route to the host's loopback, to any host or docker address, to
link-local (cloud metadata) addresses, to the internet, and no DNS. Inside
the sandbox a small forwarder (Python, from the build's base image) listens
on 127.0.0.1:PORT and relays each connection to a unix socket that is
bind-mounted from the builder's host, where the index proxy listens. The
build's ``http_proxy`` is ``http://127.0.0.1:PORT``: that is its one door.

Sandboxes carry ``SANDBOX_LABEL`` plus the builder's pid and its start time; one left
by a killed builder (its pid gone) is removed by the next build and by
``agent-image doctor``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.core.errors import EngineError, SandboxError
from builder.core.labels import SANDBOX_LABEL

log = structlog.get_logger("agent_image.sandbox")

PORT = 3128
MOUNT = "/run/agent-image"
SOCKET_NAME = "index.sock"
DIR_PREFIX = "agent-image-sbx-"  # + pid: the proxy's socket folder on the builder's host
# test-only: build on the host network with the proxy on the host's loopback,
# as before the sandbox, so a test (and bench/) can see what the sandbox stops
HOST_NETWORK_ENV = "AGENT_IMAGE_TEST_HOST_NETWORK"

# Runs inside the sandbox. Listens first, then says hello through the socket
# (the proxy may not be up yet: it retries), so "ready" means "listening".
FORWARDER = r"""
import socket, sys, threading, time
SOCK, PORT = sys.argv[1], int(sys.argv[2])
def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(conn):
    up = socket.socket(socket.AF_UNIX)
    try:
        up.connect(SOCK)
    except OSError:
        conn.close()
        return
    back = threading.Thread(target=pipe, args=(up, conn), daemon=True)
    back.start()
    pipe(conn, up)
    back.join()
    conn.close()
    up.close()
lis = socket.socket()
lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lis.bind(("127.0.0.1", PORT))
lis.listen(256)
# the proxy may come long after: the sandbox starts while the dependency image is pulled
begun = time.time()
while True:
    try:
        hello = socket.socket(socket.AF_UNIX)
        hello.connect(SOCK)
        hello.sendall(b"GET /_sandbox/ready HTTP/1.0\r\n\r\n")
        hello.recv(64)
        hello.close()
        break
    except OSError:
        if time.time() > begun + 3600:
            sys.exit("agent-image sandbox: the index proxy socket never answered")
        time.sleep(0.01 if time.time() < begun + 2 else 0.1)
while True:
    conn, _ = lis.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def process_started(pid: int) -> str:
    """A process's start time (clock ticks since boot): pid plus this survives pid reuse."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_alive(labels: dict[str, str]) -> bool:
    if labels.get(f"{SANDBOX_LABEL}.host") != socket.gethostname():
        return True  # another machine's builder on a shared engine: not ours to judge
    pid = labels.get(f"{SANDBOX_LABEL}.pid", "")
    return pid.isdigit() and process_started(int(pid)) == labels.get(f"{SANDBOX_LABEL}.started", "") != ""


def remove_stale(engine: Engine) -> int:
    """Remove sandboxes whose builder is gone. Returns how many."""
    removed = 0
    for c in engine.containers(label=SANDBOX_LABEL):
        if not _owner_alive(c["labels"]):
            engine.remove_container(c["id"])
            removed += 1
    if removed:
        log.info("removed build sandboxes left by builders that are gone", count=removed)
    _remove_stale_dirs()
    return removed


def _remove_stale_dirs() -> None:
    """The socket folders of builders killed mid-build (SIGKILL runs no clean-up)."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*-*"):
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
                 ready_timeout: float = 30.0) -> None:
        self.engine, self.image = engine, image
        self.host_network = host_network_requested() if host_network is None else host_network
        self.ready_timeout = ready_timeout
        self.container_id: str | None = None
        self.started_s = 0.0
        self._dir: str | None = None
        self._thread: threading.Thread | None = None
        self._sweep: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def socket_path(self) -> str | None:
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
        self._dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
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

    def _start(self) -> None:
        t0 = time.monotonic()
        try:
            pid = os.getpid()
            labels = {SANDBOX_LABEL: "1", f"{SANDBOX_LABEL}.pid": str(pid), f"{SANDBOX_LABEL}.started": process_started(pid),
                      f"{SANDBOX_LABEL}.host": socket.gethostname()}
            self.container_id = self.engine.start_isolated(
                self.image, command=["python3", "-I", "-S", "-c", FORWARDER, f"{MOUNT}/{SOCKET_NAME}", str(PORT)],
                labels=labels, binds={self._dir: MOUNT})
        except BaseException as exc:  # reported by wait()
            self._error = exc
        self.started_s = time.monotonic() - t0

    def wait(self, ready: threading.Event) -> None:
        """Return once the forwarder listens and has reached the proxy."""
        if self.host_network:
            return
        deadline = time.monotonic() + self.ready_timeout
        next_check = time.monotonic() + 2.0
        # ready: the forwarder said hello, which can come before the engine's start call returns
        while not (ready.wait(0.02) and not self._thread.is_alive()):
            if self._error is not None:
                if isinstance(self._error, SandboxError):
                    raise self._error
                raise SandboxError(f"the build sandbox could not start: {self._error}",
                                   hint="Check the engine (agent-image doctor) and that the base image has python3.")
            now = time.monotonic()
            if now > deadline:
                raise SandboxError(f"the build sandbox did not become ready in {self.ready_timeout:g}s",
                                   hint="Run `agent-image doctor` to see what the engine does with it.")
            if now > next_check and self.container_id:
                next_check = now + 1.0
                if not self.engine.container_state(self.container_id).get("Running"):
                    raise SandboxError(f"the build sandbox (python3 in {self.image}) exited before it was ready",
                                       hint=f"The sandbox runs python3 from {self.image} (the build's base) and "
                                            "mounts the proxy's socket from this host: it needs a base with "
                                            "python3 and the engine on this machine (not a remote DOCKER_HOST).")
        log.debug("build sandbox ready", container=(self.container_id or "")[:12],
                  start_s=round(self.started_s, 3))

    def __exit__(self, *exc) -> None:
        if self.host_network:
            return
        if self._thread is not None:
            self._thread.join()
            self._sweep.join()
        try:
            if self.container_id:
                self.engine.kill(self.container_id)  # started with auto-remove: the engine deletes it
        except EngineError as err:  # the engine went away mid-build: that error is the one to report
            log.warning("could not remove the build sandbox; the next build or doctor will",
                        container=self.container_id[:12], reason=str(err)[:200])
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
