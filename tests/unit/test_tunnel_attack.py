"""Attacks on the sandbox tunnel (builder/build/tunnel.py) from what a build step controls.

A build step cannot write frames itself (the forwarder frames its bytes), but it
controls how many connections it opens, what it sends on each, whether it
reads the answers, and when it stops (a step that hangs until --timeout). The
test plays the engine's attach socket (a socketpair carrying docker's
multiplexed stdout) with the forwarder's frames on it, exactly as they arrive.
"""

from __future__ import annotations

import socket
import threading
import time

from builder.build.tunnel import DOCKER_HEAD, HEAD, Tunnel
from tests.support.indexproxy import make


class FakeForwarder:
    """The sandbox's end of the attach socket: sends the forwarder's frames, reads the builder's."""

    def __init__(self) -> None:
        self.builder_end, self.end = socket.socketpair()
        self.received: list[tuple[bytes, int, bytes]] = []
        self.pings: list[float] = []
        self._reader = threading.Thread(target=self._read, name="atk29-fake-forwarder", daemon=True)
        self._reader.start()

    def send(self, kind: bytes, sid: int, data: bytes = b"") -> None:
        frame = HEAD.pack(kind, sid, len(data)) + data
        self.end.sendall(DOCKER_HEAD.pack(1, len(frame)) + frame)

    def _read(self) -> None:
        buf = bytearray()
        while True:
            try:
                chunk = self.end.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= HEAD.size:
                kind, sid, size = HEAD.unpack_from(buf)
                if len(buf) < HEAD.size + size:
                    break
                if kind == b"P":
                    self.pings.append(time.monotonic())
                else:
                    self.received.append((kind, sid, bytes(buf[HEAD.size:HEAD.size + size])))
                del buf[:HEAD.size + size]

    def data_for(self, sid: int) -> bytes:
        return b"".join(d for k, s, d in list(self.received) if k == b"D" and s == sid)


def _unix_connect(path: str):
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s
    return connect


def _in_background(fn) -> threading.Thread:
    def run() -> None:
        try:
            fn()
        except OSError:
            pass  # the tunnel closed under it: the test is over
    t = threading.Thread(target=run, name="atk29-sender", daemon=True)
    t.start()
    return t


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_streams_open_when_the_tunnel_closes_leave_no_thread_and_no_proxy_connection(a, tmp_path):
    """A step that holds a keep-alive connection to the index until the build's --timeout (or
    Ctrl-C) ends it: closing the tunnel must end that stream on the builder, as killing the
    old bind-mounted forwarder did (the kernel closed its socket and the proxy saw EOF)."""
    sock = str(tmp_path / "p.sock")
    with make(f"http://alice:pw-1234@127.0.0.1:{a.port}/simple/", tmp_path, unix_path=sock):
        before = set(threading.enumerate())
        fwd = FakeForwarder()
        tunnel = Tunnel(fwd.builder_end, _unix_connect(sock)).start()
        for sid in (1, 2, 3):  # HTTP/1.1 keep-alive: after answering, the proxy waits for the next request
            fwd.send(b"O", sid)
            fwd.send(b"D", sid, b"GET /_sandbox/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _wait(lambda: all(b" 200 " in fwd.data_for(sid) for sid in (1, 2, 3)), 10)
        tunnel.close()
        _wait(lambda: not (set(threading.enumerate()) - before - {fwd._reader}), 5)
        left = sorted(t.name for t in set(threading.enumerate()) - before - {fwd._reader})
        # today: tunnel-up-N waits on its queue for ever (close() puts no end marker), tunnel-down-N
        # stays in recv() (close() from another thread does not wake it, nor send the proxy EOF),
        # and the proxy's handler thread waits for a request that never comes
        assert left == [], f"threads left running after the tunnel closed: {left}"


def test_upload_data_the_builder_holds_is_bounded_across_streams(tmp_path):
    """The proxy stops reading while its handler is busy (writing an answer the build step does
    not read, fetching from the index). Each stream's queue is bounded (256 chunks), but a step
    that opens many connections multiplies that: the builder's memory is the limit."""
    path = str(tmp_path / "stuck.sock")
    stuck = socket.socket(socket.AF_UNIX)
    stuck.bind(path)
    stuck.listen(512)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(stuck.accept()[0]) for _ in iter(int, 1)],
                     name="atk29-stuck-proxy", daemon=True).start()
    fwd = FakeForwarder()
    tunnel = Tunnel(fwd.builder_end, _unix_connect(path)).start()
    chunk = b"x" * 65536  # the forwarder reads 64 KiB at a time from the build step
    streams, chunks = 16, 250  # fewer than 256 chunks each: the per-stream bound never trips
    try:
        for sid in range(1, streams + 1):
            fwd.send(b"O", sid)
        sender = _in_background(lambda: [fwd.send(b"D", sid, chunk) for sid in range(1, streams + 1)
                                         for _ in range(chunks)])

        def queued() -> int:
            return sum(len(d) for s in list(tunnel.streams.values()) for d in list(s.inbound.queue) if d)
        _wait(lambda: not sender.is_alive(), 30)
        time.sleep(0.5)
        held_mib = queued() >> 20
        assert held_mib <= 64, f"the builder holds {held_mib} MiB a build step sent (16 connections)"
    finally:
        tunnel.close()
        stuck.close()


def test_one_stream_the_proxy_does_not_read_does_not_stop_the_others_or_the_pings(tmp_path):
    """Head-of-line: the pump thread waits up to 30 s on one stream's full queue; meanwhile no
    other stream moves and no ping goes (two such waits and the forwarder quits: IDLE_S 60)."""
    path = str(tmp_path / "p.sock")
    lis = socket.socket(socket.AF_UNIX)
    lis.bind(path)
    lis.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        held.append(lis.accept()[0])  # the first connection: never read
        conn = lis.accept()[0]        # the second: echoes
        while data := conn.recv(65536):
            conn.sendall(data)
    threading.Thread(target=serve, name="atk29-proxy", daemon=True).start()
    fwd = FakeForwarder()
    tunnel = Tunnel(fwd.builder_end, _unix_connect(path), ping_s=0.5).start()
    try:
        fwd.send(b"O", 1)
        assert _wait(lambda: len(held) == 1, 5)
        # 300 chunks for the stuck connection, then a new stream: the sender (the forwarder's
        # stdout) is blocked while the tunnel does not read, so it runs on its own thread
        _in_background(lambda: [fwd.send(b"D", 1, b"y" * 65536) for _ in range(300)]
                              + [fwd.send(b"O", 2), fwd.send(b"D", 2, b"hello")])
        t0 = time.monotonic()
        answered = _wait(lambda: fwd.data_for(2) == b"hello", 8)
        _wait(lambda: len([p for p in fwd.pings if p > t0]) >= 3, 8)  # pings go on meanwhile
        pings = [p for p in fwd.pings if p > t0]
        assert answered, "stream 2 got no answer while stream 1's proxy connection was stuck"
        assert len(pings) >= 3, f"{len(pings)} pings in 8 s with ping_s=0.5 while one stream was stuck"
    finally:
        tunnel.close()
        lis.close()
