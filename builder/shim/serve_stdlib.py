"""The standard-library server: HTTP/1.1 on asyncio streams.

One event loop holds every connection (an idle one costs a coroutine, not a
thread), reads heads and bodies under timeouts and caps, and answers
/health and /meta itself; the entrypoint runs in the core's worker pool, and
a coroutine it returns runs on a loop of its own, so neither can stall the
server's loop. Python 3.9 compatible.
"""
from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from typing import Dict, Optional, Tuple

import serve_core as core
from serve_core import Reply, error, log, state

HEAD_LIMIT = 64 * 1024       # request line and headers (and a chunk-size line, and the trailers)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_connections: set = set()


class Refuse(Exception):
    """A request that is answered with REPLY and then the connection closed."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


def refuse(status: int, kind: str, rid: Optional[str] = None, **extra) -> Refuse:
    return Refuse(error(status, kind, rid or core.request_id(None), close=True, **extra))


def parse_head(head: bytes) -> Tuple[str, str, str, Dict[str, str]]:
    """(method, path, version, lower-cased headers) or Refuse(400)."""
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise refuse(400, "bad-request", reason="malformed request line")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise refuse(400, "bad-request", reason="malformed header line")
        key, value = name.lower(), value.strip()
        if key == "content-length" and headers.get(key, value) != value:
            raise refuse(400, "bad-request", reason="conflicting Content-Length")
        headers[key] = value
    return parts[0], parts[1].split("?", 1)[0], parts[2], headers


async def read_head(reader: asyncio.StreamReader) -> Optional[bytes]:
    """The next request's head; None when the client closed or stayed idle."""
    try:  # an idle keep-alive connection may wait long; a started head may not
        first = await asyncio.wait_for(reader.readexactly(1), core.IDLE_TIMEOUT)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    try:
        return first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), core.HEADER_TIMEOUT)
    except asyncio.TimeoutError:
        raise refuse(408, "header-timeout")
    except (asyncio.LimitOverrunError, ValueError):
        raise refuse(431, "headers-too-large", limit=HEAD_LIMIT)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def read_body(reader: asyncio.StreamReader, headers: Dict[str, str], rid: str,
                    writer: asyncio.StreamWriter) -> bytes:
    chunked = "transfer-encoding" in headers
    if chunked:
        if headers["transfer-encoding"].lower() != "chunked":
            raise refuse(400, "bad-request", rid, reason="the only Transfer-Encoding accepted is chunked")
        if "content-length" in headers:  # which one frames the body? a smuggling vector: refuse both
            raise refuse(400, "bad-request", rid, reason="both Transfer-Encoding and Content-Length")
        length = 0
    else:
        length, refusal = core.check_length(headers.get("content-length"), rid)
        if refusal:
            raise Refuse(refusal)
        if not length:
            return b""
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        reading = read_chunked(reader, rid) if chunked else reader.readexactly(length)
        return await asyncio.wait_for(reading, core.BODY_TIMEOUT)
    except asyncio.TimeoutError:
        raise refuse(408, "body-timeout", rid)


async def read_chunked(reader: asyncio.StreamReader, rid: str) -> bytes:
    """A chunked body, decoded, under the same cap (counted as decoded);
    chunk extensions and trailers are read and dropped."""
    body = bytearray()
    try:
        while True:
            size = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):
                raise refuse(400, "bad-request", rid, reason="malformed chunk size")
            size = int(size, 16)
            if not size:
                break
            if len(body) + size > core.MAX_BODY:
                raise refuse(413, "body-too-large", rid, limit=core.MAX_BODY)
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise refuse(400, "bad-request", rid, reason="a chunk does not end with CRLF")
        trailers = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            trailers += len(line)
            if line == b"\r\n":
                return bytes(body)
            if trailers > HEAD_LIMIT:
                raise refuse(431, "headers-too-large", rid, limit=HEAD_LIMIT)
    except (asyncio.LimitOverrunError, ValueError):  # a line longer than the stream's limit
        raise refuse(400, "bad-request", rid, reason="a chunk line is too long")


async def answer(method: str, path: str, body: bytes, rid: str, agent_loop) -> Reply:
    reply = core.contract(method, path, rid)
    if reply is not None:
        return reply
    if path == core.INVOKE_PATH:
        return await core.invoke(body, rid, agent_loop)
    return error(404, "not-found", rid)


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client is still sending (bounded:
    serve_core's LINGER_*): closing with unread bytes resets the connection,
    and a client still writing its body would never read the answer."""
    try:
        writer.write_eof()
        deadline, seen = time.monotonic() + core.LINGER_SECONDS, 0
        while seen < core.LINGER_BYTES:
            left = min(deadline - time.monotonic(), core.LINGER_IDLE)
            chunk = await asyncio.wait_for(reader.read(65536), max(left, 0.001))
            if not chunk:
                return
            seen += len(chunk)
    except (asyncio.TimeoutError, ConnectionError, OSError, RuntimeError):
        pass


async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, agent_loop) -> None:
    if len(_connections) >= core.MAX_CONNECTIONS:
        rid = core.request_id(None)
        writer.write(core.encode(error(503, "busy", rid, close=True), rid, True))
        writer.close()
        return
    _connections.add(writer)
    try:
        while await one_request(reader, writer, agent_loop):
            pass
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        _connections.discard(writer)
        writer.close()


async def one_request(reader, writer, agent_loop) -> bool:
    """Read, answer and log one request; True when the connection stays open."""
    method = path = "-"
    head = None
    try:
        head = await read_head(reader)
        if head is None:
            return False
    except Refuse as refused:
        reply, rid, close = refused.reply, json.loads(refused.reply.body)["id"], True
    started = time.monotonic()
    # the drain waits for requests that came before it; later ones get a quick 503
    counted = not state.draining
    state.in_flight += counted
    try:
        if head is not None:
            reply, rid, close, method, path = await answer_head(head, reader, writer, agent_loop)
        writer.write(core.encode(reply, rid, close, head_only=method == "HEAD"))
        await asyncio.wait_for(writer.drain(), core.BODY_TIMEOUT)
    finally:
        state.in_flight -= counted
        core.access(method, path, reply.status, len(reply.body), started, rid)
    if close and reply.status >= 400:  # after the count and the log: the drain does not wait for it
        await linger(reader, writer)
    return not close


async def answer_head(head: bytes, reader, writer, agent_loop):
    """(reply, request id, close, method, path) for a request whose head is read."""
    method = path = "-"
    rid = core.request_id(None)
    try:
        method, path, version, headers = parse_head(head)
        rid = core.request_id(headers.get("x-request-id"))
        body = await read_body(reader, headers, rid, writer)  # any method: unread bytes would be the next "request"
        reply = await answer(method, path, body, rid, agent_loop)
    except Refuse as refused:
        return refused.reply, json.loads(refused.reply.body)["id"], True, method, path
    except Exception as exc:  # a bug of ours: still one JSON answer and one log line
        log("serving failed", level="error", request_id=rid, error_class=type(exc).__name__, error=str(exc))
        return error(500, "internal", rid, close=True), rid, True, method, path
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return reply, rid, reply.close or state.draining or not keep, method, path


def start_agent_loop() -> asyncio.AbstractEventLoop:
    """A loop of the agent's own for async entrypoints: one that blocks it
    does not block /health, and loop-bound clients stay on one loop."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="agent-loop", daemon=True).start()
    return loop


async def serve() -> int:
    loop = asyncio.get_running_loop()
    agent_loop = start_agent_loop()
    stopped = asyncio.Event()
    server = await asyncio.start_server(lambda r, w: connection(r, w, agent_loop), host="0.0.0.0",
                                        port=core.PORT, limit=HEAD_LIMIT, backlog=1024)
    left = [0]

    async def drain_then_stop(name: str) -> None:
        left[0] = await core.drain(name)
        stopped.set()

    def on_signal(sig: signal.Signals) -> None:
        if not state.draining:  # the listener stays open: late arrivals get 503, not a refused connection
            loop.create_task(drain_then_stop(sig.name))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log("serving", server="stdlib", port=core.PORT, base_path=core.BASE or "/", workers=core.WORKERS,
        queue=core.QUEUE, max_body_bytes=core.MAX_BODY, drain_seconds=core.DRAIN_SECONDS)
    await stopped.wait()
    server.close()
    for writer in list(_connections):
        writer.close()
    return left[0]


def serve_forever() -> int:
    """Serve until a signal's drain ends; how many requests were still in flight."""
    return asyncio.run(serve())
