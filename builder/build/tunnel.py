"""The builder's end of the sandbox's one door, carried over the engine's own API.

The sandbox's forwarder (builder/build/forwarder.py) listens on 127.0.0.1 in
a ``--network none`` namespace and sends each connection as a stream of
frames over its stdin/stdout; the engine's attach API links those to one
socket here, whatever DOCKER_HOST is (unix, tcp, tcp with TLS): the engine
never needs a path or a port of the builder's. For each stream the tunnel
opens a connection to the index proxy's unix socket on this host, so the
proxy, its credentials and its download cache stay on the builder.

One pump thread owns the engine socket (non-blocking; a TLS socket must not
be read and written from two threads at once) and sends a ping every
PING_S seconds: the forwarder exits when they stop, and the engine removes
the sandbox (auto-remove), so a builder that died leaves nothing running.

What comes from the engine is docker's multiplexed stream (an 8-byte header
per chunk: stream, 0, 0, 0, length); what goes to it is the forwarder's
stdin, raw.
"""

from __future__ import annotations

import collections
import queue
import select
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Callable

import structlog

log = structlog.get_logger("agent_image.tunnel")

FORWARDER_SOURCE = (Path(__file__).with_name("forwarder.py")).read_text(encoding="utf-8")
HEAD = struct.Struct(">cII")
DOCKER_HEAD = struct.Struct(">BxxxI")
PING_S = 5.0
IDLE_S = 60.0  # the forwarder exits after this long without a frame (12 missed pings)
CHUNK = 262144
# What a build step can make the builder hold: a bounded number of streams and upload bytes in
# all (uploads are requests, small; a stream that passes its share is dropped, never waited on,
# so one stream the proxy does not read cannot stall the pump, the other streams or the pings)
MAX_STREAMS = 128
UPLOAD_BUDGET = 32 << 20
STREAM_BUDGET = 4 << 20
MAX_FRAME = (1 << 20) + 64  # the forwarder sends at most 64 KiB a frame; anything larger is not it
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError)


class _Stream:
    """One sandbox connection: its socket to the proxy and the data waiting to go there."""

    def __init__(self, sid: int, upstream: socket.socket | None) -> None:
        self.sid, self.upstream = sid, upstream
        # upload direction (requests, small): bounded in bytes by Tunnel._deliver, never blocking
        self.inbound: queue.Queue = queue.Queue()
        self.queued = 0      # bytes in INBOUND
        self.dropped = False
        self.done = 0  # directions finished; 2: close


class Tunnel:
    """Relay the sandbox's streams to CONNECT() (a new socket to the proxy per stream)."""

    def __init__(self, sock, connect: Callable[[], socket.socket], *, ping_s: float = PING_S) -> None:
        self.sock, self.connect, self.ping_s = sock, connect, ping_s
        self.listening = threading.Event()   # the forwarder listens in the sandbox
        self.closed = threading.Event()      # the engine ended the stream (the sandbox exited)
        self.streams: dict[int, _Stream] = {}
        self.opened = 0
        self._out: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._room = threading.Semaphore(256)  # frames queued to the engine: a full queue holds the proxy back
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._lock = threading.Lock()
        self._queued = 0  # upload bytes held for all streams (UPLOAD_BUDGET)
        self._thread = threading.Thread(target=self._pump, name="sandbox-tunnel", daemon=True)

    def start(self) -> "Tunnel":
        self.sock.setblocking(False)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the pump and close every connection; the forwarder sees EOF and exits."""
        self._stop = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        for stream in list(self.streams.values()):
            self._end(stream)  # wakes both of its threads; the proxy sees end of stream
        self.streams.clear()
        for s in (self.sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    # -- to the engine -------------------------------------------------------------------
    def _send(self, kind: bytes, sid: int, data: bytes = b"", *, wait: bool = True) -> None:
        if wait:
            while not self._room.acquire(timeout=0.5):
                if self.closed.is_set() or self._stop:
                    return
        self._out.append((HEAD.pack(kind, sid, len(data)) + data, wait))  # control frames never wait
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the pump --------------------------------------------------------------------------
    def _pump(self) -> None:
        raw, frames = bytearray(), bytearray()
        pending: memoryview | None = None
        next_ping = time.monotonic() + self.ping_s
        try:
            while not self._stop:
                if pending is None and self._out:
                    pending = memoryview(self._take())
                ready_now = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
                timeout = 0 if ready_now else max(0.0, next_ping - time.monotonic())
                r, w, _ = select.select([self.sock, self._wake_r], [self.sock] if pending is not None else [], [],
                                        timeout)
                if self._wake_r in r:
                    self._wake_r.recv(4096)
                if w and pending is not None:
                    try:
                        sent = self.sock.send(pending)
                        pending = pending[sent:] if sent < len(pending) else None
                    except _WOULD_BLOCK:
                        pass
                if self.sock in r or ready_now:
                    try:
                        data = self.sock.recv(262144)
                    except _WOULD_BLOCK:
                        data = None
                    if data == b"":
                        return  # the engine closed the stream: the forwarder (and the sandbox) exited
                    if data:
                        raw += data
                        self._demux(raw, frames)
                        self._dispatch(frames)
                if time.monotonic() >= next_ping:
                    next_ping = time.monotonic() + self.ping_s
                    self._send(b"P", 0, wait=False)
        except OSError as err:
            if not self._stop:
                log.warning("the sandbox tunnel broke", reason=str(err)[:200])
        finally:
            self.closed.set()

    def _take(self, limit: int = 1 << 20) -> bytes:
        """Frames waiting for the engine, joined up to LIMIT bytes: one send for many (throughput)."""
        parts, size = [], 0
        while self._out and size < limit:
            frame, counted = self._out.popleft()
            parts.append(frame)
            size += len(frame)
            if counted:
                self._room.release()
        return b"".join(parts)

    @staticmethod
    def _demux(raw: bytearray, frames: bytearray) -> None:
        """Move the payloads of complete docker stream chunks from RAW to FRAMES."""
        pos = 0
        while len(raw) - pos >= DOCKER_HEAD.size:
            stream, size = DOCKER_HEAD.unpack_from(raw, pos)
            if len(raw) - pos - DOCKER_HEAD.size < size:
                break
            if stream == 1:  # stdout; stderr is not attached
                frames += raw[pos + DOCKER_HEAD.size:pos + DOCKER_HEAD.size + size]
            pos += DOCKER_HEAD.size + size
        del raw[:pos]

    def _dispatch(self, frames: bytearray) -> None:
        pos = 0
        while len(frames) - pos >= HEAD.size:
            kind, sid, size = HEAD.unpack_from(frames, pos)
            if size > MAX_FRAME:
                raise OSError(f"a frame of {size} bytes from the sandbox: not the forwarder's")
            if len(frames) - pos - HEAD.size < size:
                break
            data = bytes(frames[pos + HEAD.size:pos + HEAD.size + size])
            pos += HEAD.size + size
            self._frame(kind, sid, data)
        del frames[:pos]

    def _frame(self, kind: bytes, sid: int, data: bytes) -> None:
        if kind == b"H":
            self.listening.set()
        elif kind == b"O":
            self._open(sid)
        elif kind == b"D":
            stream = self.streams.get(sid)
            if stream is not None:
                self._deliver(stream, data)
        elif kind == b"C":
            stream = self.streams.get(sid)
            if stream is not None:
                self._deliver(stream, None)

    def _deliver(self, stream: _Stream, data: bytes | None) -> None:
        """Queue DATA for the proxy, never waiting: past its share the stream is dropped."""
        if stream.dropped:
            return
        if data is not None:
            with self._lock:
                over = (stream.queued + len(data) > STREAM_BUDGET
                        or self._queued + len(data) > UPLOAD_BUDGET)
                if not over:
                    stream.queued += len(data)
                    self._queued += len(data)
            if over:  # the proxy is not reading what the build sends: drop it, not the pump
                log.warning("sandbox connection dropped: the index proxy did not take its upload",
                            stream=stream.sid, held_bytes=self._queued)
                self._end(stream)
                return
        stream.inbound.put(data)

    # -- one stream ------------------------------------------------------------------------
    def _open(self, sid: int) -> None:
        if sid in self.streams or len(self.streams) >= MAX_STREAMS:
            self._send(b"C", sid, wait=False)  # refused: the connection in the sandbox ends at once
            return
        self.opened += 1
        try:
            upstream = self.connect()
        except OSError:
            upstream = None  # the proxy is not up yet: the forwarder retries its hello
        stream = self.streams[sid] = _Stream(sid, upstream)
        if upstream is None:
            self._send(b"C", sid, wait=False)
            stream.done = 1
            threading.Thread(target=self._to_proxy, args=(stream,), daemon=True).start()
            return
        threading.Thread(target=self._to_proxy, args=(stream,), name=f"tunnel-up-{sid}", daemon=True).start()
        threading.Thread(target=self._from_proxy, args=(stream,), name=f"tunnel-down-{sid}", daemon=True).start()

    def _to_proxy(self, stream: _Stream) -> None:
        while True:
            data = stream.inbound.get()
            if data is None or self._stop:
                break
            with self._lock:
                stream.queued -= len(data)
                self._queued -= len(data)
            if stream.upstream is not None and not stream.dropped:
                try:
                    stream.upstream.sendall(data)
                except OSError:
                    pass
        if stream.upstream is not None:
            try:
                stream.upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._finish(stream)

    def _from_proxy(self, stream: _Stream) -> None:
        try:
            while not self._stop:
                data = stream.upstream.recv(CHUNK)
                if not data:
                    break
                self._send(b"D", stream.sid, data)
        except OSError:
            pass
        self._send(b"C", stream.sid)
        self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        with self._lock:
            stream.done += 1
            if stream.done < 2:
                return
            self.streams.pop(stream.sid, None)
        self._close_upstream(stream)

    def _end(self, stream: _Stream) -> None:
        """End STREAM from any thread: its upload thread gets its end marker (what it still
        held is forgotten), and a shutdown wakes its download thread's recv and tells the
        proxy (close() from another thread does neither)."""
        stream.dropped = True
        with self._lock:
            while True:
                try:
                    data = stream.inbound.get_nowait()
                except queue.Empty:
                    break
                if data:
                    stream.queued -= len(data)
                    self._queued -= len(data)
        stream.inbound.put(None)
        if stream.upstream is not None:
            try:
                stream.upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _close_upstream(stream: _Stream) -> None:
        if stream.upstream is not None:
            try:
                stream.upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                stream.upstream.close()
            except OSError:
                pass


def forwarder_command(port: int, lifetime_s: float) -> list[str]:
    """The sandbox's command: the forwarder, isolated from the image's site and environment."""
    return ["python3", "-I", "-S", "-c", FORWARDER_SOURCE, str(port), str(IDLE_S), str(lifetime_s)]
