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


def main(port, idle, deadline):
    out_lock = threading.Lock()
    conns = {}  # stream id -> [socket, inbound queue]
    hello = {}  # stream id -> event set when the proxy answered the hello (or closed)
    state = {"seen": time.time(), "next": 1}
    ids = threading.Lock()

    def send(kind, sid, data=b""):
        frame = HEAD.pack(kind, sid, len(data)) + data
        with out_lock:
            view = memoryview(frame)
            while view:
                view = view[os.write(1, view):]

    def new_id():
        with ids:
            sid = state["next"]
            state["next"] += 1
            return sid

    def upward(sid, conn):
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                send(b"D", sid, data)
        except OSError:
            pass
        send(b"C", sid)

    def downward(sid, conn, inbound):
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

    def accept(lis):
        while True:
            conn, _ = lis.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sid = new_id()
            inbound = queue.Queue(256)  # bounded: a client that stops reading holds the tunnel back
            conns[sid] = [conn, inbound]
            send(b"O", sid)
            threading.Thread(target=downward, args=(sid, conn, inbound), daemon=True).start()
            threading.Thread(target=upward, args=(sid, conn), daemon=True).start()

    def say_hello():
        # through the tunnel to the proxy, as a build step would: "ready" means the whole path works
        while time.time() < deadline:
            sid = new_id()
            attempt = hello[sid] = {"done": threading.Event(), "ok": False}
            send(b"O", sid)
            send(b"D", sid, READY)
            send(b"C", sid)
            if attempt["done"].wait(5) and attempt["ok"]:
                return
            time.sleep(0.05)

    lis = socket.socket()
    lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lis.bind(("127.0.0.1", port))
    lis.listen(256)
    send(b"H", 0)
    threading.Thread(target=accept, args=(lis,), daemon=True).start()
    threading.Thread(target=say_hello, daemon=True).start()

    def watchdog():
        while True:
            time.sleep(1)
            now = time.time()
            if now > deadline or now > state["seen"] + idle:
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    buf = bytearray()
    while True:
        chunk = os.read(0, 262144)
        if not chunk:
            os._exit(0)  # the builder closed the tunnel
        state["seen"] = time.time()
        buf += chunk
        pos = 0
        frames = []
        while len(buf) - pos >= HEAD.size:
            kind, sid, size = HEAD.unpack_from(buf, pos)
            if len(buf) - pos - HEAD.size < size:
                break
            frames.append((kind, sid, bytes(buf[pos + HEAD.size:pos + HEAD.size + size])))
            pos += HEAD.size + size
        del buf[:pos]
        for kind, sid, data in frames:
            attempt = hello.get(sid)
            if attempt is not None:
                if kind == b"D":
                    attempt["ok"] = True
                if kind in (b"D", b"C"):
                    attempt["done"].set()
                if kind == b"C":
                    hello.pop(sid, None)
                continue
            entry = conns.get(sid)
            if entry is None:
                continue
            if kind == b"D":
                entry[1].put(data)
            elif kind == b"C":
                entry[1].put(None)
                conns.pop(sid, None)


if __name__ == "__main__":
    # the deadline by this (the engine's) clock: the builder's may differ
    main(int(sys.argv[1]), float(sys.argv[2]), time.time() + float(sys.argv[3]))
