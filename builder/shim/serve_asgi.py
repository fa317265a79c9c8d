"""The agent's FastAPI app behind uvicorn, with the same limits and drain.

Used only when the agent's own venv has FastAPI and uvicorn. A plain ASGI
wrapper in front of the app answers the contract's routes (so a slow invoke
cannot stall /health), caps and times bodies, adds the request id and the
access log line to every request, answers the agent's unhandled route
exceptions with the JSON 500, and turns the drain on. uvicorn's protocol gets
the 408 for a slow head and a lingering close (Lingering). We run
uvicorn.Server ourselves and keep its signal handling off: uvicorn would stop
listening at once, and the load balancer would see refused connections
instead of 503s while requests drain.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import time
import traceback

import serve_core as core
from serve_core import Reply, error, log, state


class TooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


async def send_reply(send, reply: Reply, head_only: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply.body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    if reply.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else reply.body})


def guarded_receive(receive, rid: str):
    """The request body under the cap and the body timeout (for the agent's routes too)."""
    seen = [0, False]  # bytes, body complete

    async def wrapped():
        if seen[1]:  # after the body only http.disconnect comes: an app may wait for it
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), core.BODY_TIMEOUT)
        except asyncio.TimeoutError:
            raise BodyTimeout()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > core.MAX_BODY:
                raise TooLarge()
            seen[1] = not message.get("more_body", False)
        return message
    return wrapped


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


RID_KEY = "agent_image.request_id"  # in the scope: the 500 handler answers with the request's id


def json_500s(app) -> None:
    """An exception out of the agent's own route answers the shim's JSON 500
    (as /invoke's) instead of Starlette's plain text. Not when the agent has its
    own handler for 500 or Exception; its HTTPException and returned 500s are
    untouched. Starlette still re-raises, so Shim.failed logs the traceback."""
    handlers = getattr(app, "exception_handlers", None)
    if not isinstance(handlers, dict) or 500 in handlers or Exception in handlers:
        return
    from starlette.responses import Response  # FastAPI's own dependency

    async def agent_500(request, exc):
        rid = request.scope.get(RID_KEY) or core.request_id(None)
        reply = error(500, "agent-error", rid, **{"class": type(exc).__name__})
        return Response(reply.body, status_code=500, media_type="application/json")
    app.add_exception_handler(Exception, agent_500)


class Shim:
    def __init__(self, app):
        self.app = app
        json_500s(app)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = core.request_id(headers.get("x-request-id"))
        method, path = scope["method"], scope["path"]
        scope[RID_KEY] = rid
        sent = {"status": 0, "bytes": 0}

        async def tagged_send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                if state.draining:  # the balancer must not reuse this connection
                    extra.append((b"connection", b"close"))
                ours = (b"x-request-id", b"connection") if state.draining else (b"x-request-id",)
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in ours]
                message = {**message, "headers": kept + extra}
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        counted = not state.draining  # the drain waits for requests that came before it
        state.in_flight += counted
        try:
            reply = await self.own(scope, headers, guarded_receive(receive, rid), tagged_send, rid)
            if reply is not None:
                await send_reply(tagged_send, reply, head_only=method == "HEAD")
        except Exception as exc:
            await self.failed(exc, rid, sent, tagged_send)
        finally:
            state.in_flight -= counted
            core.access(method, path, sent["status"], sent["bytes"], started, rid)

    async def own(self, scope, headers, receive, send, rid):
        """The shim's answer, or None after the agent's app answered."""
        path = scope["path"]
        reply = core.contract(scope["method"], path, rid)
        if reply is not None:
            return reply
        _, refusal = core.check_length(headers.get("content-length"), rid)
        if refusal is not None:
            return refusal
        if path != core.INVOKE_PATH:
            await self.app(scope, receive, send)
            return None
        return await core.invoke(await read_body(receive), rid, None)

    async def failed(self, exc, rid, sent, send) -> None:
        if isinstance(exc, TooLarge):
            reply = error(413, "body-too-large", rid, close=True, limit=core.MAX_BODY)
        elif isinstance(exc, BodyTimeout):
            reply = error(408, "body-timeout", rid, close=True)
        else:
            log("request failed", level="error", request_id=rid, error_class=type(exc).__name__, error=str(exc),
                traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            reply = error(500, "agent-error", rid, close=True, **{"class": type(exc).__name__})
        if not sent["status"]:  # else the app has begun its answer: the log line is all we can add
            await send_reply(send, reply)


def make_server(uvicorn, config):
    """uvicorn.Server with its signal handling off (ours drains first)."""
    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        @contextlib.contextmanager
        def capture_signals(self):  # uvicorn >= 0.29
            yield
    return Server(config)


class Lingering:
    """uvicorn's transport, except that closing it while the request body is
    still coming is a lingering close (serve_core's LINGER_*): uvicorn closes
    at once after a 413, the unread body makes that a reset, and a client
    still sending (urllib, requests) never reads the 413."""

    def __init__(self, transport, loop, unread):
        self._transport, self._loop, self._unread = transport, loop, unread
        self._timer = None
        self.lingering = False

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def write(self, data) -> None:
        if not self.lingering:  # nothing may follow the half-close
            self._transport.write(data)

    def close(self) -> None:
        if self.lingering or self._transport.is_closing() or not self._unread():
            return self.stop()
        self.lingering, self._seen = True, 0
        self._until, self._last = self._loop.time() + core.LINGER_SECONDS, self._loop.time()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._transport.resume_reading()  # uvicorn's flow control may have paused it
        self._timer = self._loop.call_later(core.LINGER_IDLE, self._check)

    def swallow(self, data: bytes) -> None:
        self._seen += len(data)
        self._last = self._loop.time()
        if self._seen > core.LINGER_BYTES:
            self.stop()

    def _check(self) -> None:
        now = self._loop.time()
        due = min(self._until, self._last + core.LINGER_IDLE)
        if now >= due:
            return self.stop()
        self._timer = self._loop.call_later(due - now, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()


def shim_protocol(protocol):
    """uvicorn's HTTP protocol plus what it lacks: a connection that starts a
    request head and does not finish it within AGENT_HEADER_TIMEOUT gets 408
    `header-timeout` and is closed (one that opens and sends nothing within
    AGENT_IDLE_TIMEOUT is closed), and a close with the request body unread
    lingers (Lingering). Reads uvicorn's `cycle` (its `more_body`), `transport`
    and `loop`, present in its h11 and httptools protocols for years; without
    them the class is left as it is."""
    class ShimProtocol(protocol):
        _shim_timer = None
        _shim_kind = None
        _shim_cycle = None
        _shim_started = 0.0

        def connection_made(self, transport):
            super().connection_made(Lingering(transport, self.loop, self._shim_body_unread))
            self._shim_arm("idle", core.IDLE_TIMEOUT)

        def _shim_body_unread(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return bool(cycle is not None and getattr(cycle, "more_body", False))

        def data_received(self, data):
            if self.transport.lingering:  # after the answer: read and drop
                return self.transport.swallow(data)
            before = getattr(self, "cycle", None)
            if self._shim_kind != "head" and (before is None or getattr(before, "response_complete", False)):
                self._shim_arm("head", core.HEADER_TIMEOUT)  # the first bytes of a head
            super().data_received(data)
            if self._shim_kind == "head" and getattr(self, "cycle", None) is not self._shim_cycle:
                self._shim_disarm()  # the head is complete: a request started

        def connection_lost(self, exc):
            self._shim_disarm()
            super().connection_lost(exc)
            self.transport.stop()

        def _shim_arm(self, kind: str, seconds: float) -> None:
            self._shim_disarm()
            self._shim_kind, self._shim_cycle = kind, getattr(self, "cycle", None)
            self._shim_started = time.monotonic()
            self._shim_timer = self.loop.call_later(seconds, self._shim_expired)

        def _shim_disarm(self) -> None:
            if self._shim_timer is not None:
                self._shim_timer.cancel()
            self._shim_timer = self._shim_kind = None

        def _shim_expired(self) -> None:
            kind = self._shim_kind
            self._shim_timer = self._shim_kind = None
            if getattr(self, "cycle", None) is not self._shim_cycle or self.transport.is_closing():
                return
            if kind == "head":  # as the stdlib path answers: the client learns why
                rid = core.request_id(None)
                reply = error(408, "header-timeout", rid, close=True)
                self.transport.write(core.encode(reply, rid, True))
                core.access("-", "-", 408, len(reply.body), self._shim_started, rid)
            self.transport.close()
    return ShimProtocol


def uvicorn_config(uvicorn, app):
    """Only the options this uvicorn knows (the agent pins its own version)."""
    wanted = {"host": "0.0.0.0", "port": core.PORT, "log_level": "warning", "access_log": False,
              "timeout_keep_alive": int(core.IDLE_TIMEOUT), "timeout_graceful_shutdown": 5, "lifespan": "auto",
              "backlog": 1024}
    known = inspect.signature(uvicorn.Config.__init__).parameters
    return uvicorn.Config(app, **{k: v for k, v in wanted.items() if k in known})


async def serve(app, uvicorn) -> int:
    config = uvicorn_config(uvicorn, app)
    try:
        config.load()
        config.http_protocol_class = shim_protocol(config.http_protocol_class)
    except AttributeError:  # an older uvicorn: serve() loads it, without the head timeout and linger
        pass
    server = make_server(uvicorn, config)
    loop = asyncio.get_running_loop()
    left = [0]

    async def drain_then_stop(name: str) -> None:
        left[0] = await core.drain(name)
        server.should_exit = True  # now uvicorn closes the listener and idle connections

    def on_signal(sig) -> None:
        if not state.draining:
            loop.create_task(drain_then_stop(sig.name))
        else:
            server.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log("serving", server="uvicorn", port=core.PORT, base_path=core.BASE or "/", workers=core.WORKERS,
        queue=core.QUEUE, max_body_bytes=core.MAX_BODY, drain_seconds=core.DRAIN_SECONDS)
    await server.serve()
    return left[0]
