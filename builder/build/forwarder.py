"""The build sandbox's one door, as it runs inside the sandbox (``python3 -I -S -c SOURCE``).

Not imported by agent-image: builder/build/tunnel.py hands this file's text to
the base image's python3 (3.9 and up, standard library only). It listens on
127.0.0.1:PORT in the sandbox's own network namespace and carries each
connection as a stream over its stdin/stdout, which the engine's attach API
links to the builder (builder/build/tunnel.py), wherever the engine runs.

Frames, both ways: kind (1 byte), stream id (4), length (4), payload.
  H  hello: listening (forwarder -> builder, stream 0)
  O  a new connection (forwarder -> builder)
  D  data on a stream
  C  no more data from the sender on that stream (the receiver shuts its write side)
  P  ping (builder -> forwarder, every few seconds; none for IDLE seconds: the builder is gone, exit)
Exits at EOF on stdin, after IDLE seconds without a frame, or LIFETIME seconds after it started,
so a sandbox whose builder died goes away by itself (the engine auto-removes it).
"""

import os
import queue
import socket
import struct
import sys
import threading
import time

HEAD = struct.Struct(">cII")
READY = b"GET /_sandbox/ready HTTP/1.0\r\n\r\n"


class Forwarder:
    def __init__(self, idle, deadline):
        self.idle, self.deadline = idle, deadline
        self.out_lock, self.ids = threading.Lock(), threading.Lock()
        self.conns = {}  # stream id -> inbound queue
        self.hello = {}  # stream id -> {"done": event, "ok": the proxy answered}
        self.seen, self.next_id = time.time(), 1

    def send(self, kind, sid, data=b""):
        frame = HEAD.pack(kind, sid, len(data)) + data
        with self.out_lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(1, view):]

    def new_id(self):
        with self.ids:
            self.next_id += 1
            return self.next_id - 1

    def upward(self, sid, conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.send(b"D", sid, data)
        except OSError:
            pass
        self.send(b"C", sid)

    @staticmethod
    def downward(conn, inbound):
        while True:
            data = inbound.get()
            if data is None:
                break
            try:
                conn.sendall(data)
            except OSError:
                pass  # the client went: drain the rest
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def accept(self, lis):
        while True:
            conn, _ = lis.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sid = self.new_id()
            inbound = self.conns[sid] = queue.Queue(256)  # bounded: a client that stops reading holds the tunnel
            self.send(b"O", sid)
            threading.Thread(target=self.downward, args=(conn, inbound), daemon=True).start()
            threading.Thread(target=self.upward, args=(sid, conn), daemon=True).start()

    def say_hello(self):
        # through the tunnel to the proxy, as a build step would: "ready" means the whole path works
        while time.time() < self.deadline:
            sid = self.new_id()
            attempt = self.hello[sid] = {"done": threading.Event(), "ok": False}
            self.send(b"O", sid)
            self.send(b"D", sid, READY)
            self.send(b"C", sid)
            if attempt["done"].wait(5) and attempt["ok"]:
                return
            time.sleep(0.05)

    def watchdog(self):
        while True:
            time.sleep(1)
            now = time.time()
            if now > self.deadline or now > self.seen + self.idle:
                os._exit(3)

    def frame(self, kind, sid, data):
        attempt = self.hello.get(sid)
        if attempt is not None:
            attempt["ok"] = attempt["ok"] or kind == b"D"
            if kind in (b"D", b"C"):
                attempt["done"].set()
            if kind == b"C":
                self.hello.pop(sid, None)
            return
        inbound = self.conns.get(sid)
        if inbound is not None and kind == b"D":
            inbound.put(data)
        elif inbound is not None and kind == b"C":
            inbound.put(None)
            self.conns.pop(sid, None)

    def read_stdin(self):
        try:  # a bigger stdin pipe: fewer, larger reads (F_SETPIPE_SZ; refused: keep the default)
            import fcntl
            fcntl.fcntl(0, 1031, 1 << 20)
        except (OSError, ImportError):
            pass
        buf = bytearray()
        while True:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                os._exit(0)  # the builder closed the tunnel
            self.seen = time.time()
            buf += chunk
            pos = 0
            while len(buf) - pos >= HEAD.size:
                kind, sid, size = HEAD.unpack_from(buf, pos)
                if len(buf) - pos - HEAD.size < size:
                    break
                self.frame(kind, sid, bytes(buf[pos + HEAD.size:pos + HEAD.size + size]))
                pos += HEAD.size + size
            del buf[:pos]


def main(port, idle, deadline):
    fwd = Forwarder(idle, deadline)
    lis = socket.socket()
    lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lis.bind(("127.0.0.1", port))
    lis.listen(256)
    fwd.send(b"H", 0)
    for target, args in ((fwd.accept, (lis,)), (fwd.say_hello, ()), (fwd.watchdog, ())):
        threading.Thread(target=target, args=args, daemon=True).start()
    fwd.read_stdin()


if __name__ == "__main__":
    # the deadline by this (the engine's) clock: the builder's may differ
    main(int(sys.argv[1]), float(sys.argv[2]), time.time() + float(sys.argv[3]))
