"""What both serving paths share: settings, the JSON log, the agent's state,
the bounded worker pool, the contract's answers, drain bookkeeping.

Standard library only, Python 3.9 compatible. Everything that touches the
counters runs on the serving event loop (one thread), so they need no lock.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import json
import os
import re
import sys
import time
import traceback
import uuid
from http import HTTPStatus
from typing import List, NamedTuple, Optional, Tuple


def log(event: str, level: str = "info", **kw) -> None:
    kw.update(event=event, level=level, agent=NAME, version=VERSION,
              timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sys.stdout.write(json.dumps(kw, default=str) + "\n")
    sys.stdout.flush()


def _number(name: str, default: float, low: float, kind=int):
    """A positive setting from the environment; a bad value is logged, not fatal."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        log("ignoring a bad setting", level="warning", setting=name, value=raw[:40], default=default)
        return default
    return value


NAME = os.environ.get("AGENT_NAME", "agent")
VERSION = os.environ.get("AGENT_VERSION", "0")
APP_ID = os.environ.get("AGENT_APP_ID", NAME)
ENTRYPOINT = os.environ.get("AGENT_ENTRYPOINT", "")
REST_ENTRY = os.environ.get("AGENT_REST_ENTRY", "")
PORT = int(os.environ.get("REST_PORT", "8080"))
BASE = "/" + os.environ.get("BASE_PATH", "/").strip("/")
BASE = "" if BASE == "/" else BASE

MAX_BODY = _number("AGENT_MAX_BODY_BYTES", 10 * 1024 * 1024, 0)
WORKERS = _number("AGENT_WORKERS", 32, 1)            # entrypoint calls running at once
QUEUE = _number("AGENT_QUEUE", 128, 0)               # calls waiting for a worker; more is 503 busy
DRAIN_SECONDS = _number("AGENT_DRAIN_SECONDS", 25.0, 0, float)  # under ECS's 30 s stopTimeout
HEADER_TIMEOUT = _number("AGENT_HEADER_TIMEOUT", 10.0, 0.1, float)  # first byte to end of headers
BODY_TIMEOUT = _number("AGENT_BODY_TIMEOUT", 30.0, 0.1, float)
# an idle keep-alive connection lives longer than an ALB's 60 s idle timeout:
# closing first makes the balancer send into a closed socket (a 502)
IDLE_TIMEOUT = _number("AGENT_IDLE_TIMEOUT", 75.0, 0.1, float)
MAX_CONNECTIONS = _number("AGENT_MAX_CONNECTIONS", 2048, 1)
RETRY_AFTER = "1"
# an error answered while the client is still sending (a 413 before the body)
# is followed by a lingering close, as nginx does: half-close, then read and
# discard until the client closes, it is quiet for LINGER_IDLE, LINGER_SECONDS
# pass or LINGER_BYTES come. Closing with unread bytes sends a reset, and a
# client still writing its body (urllib, requests) never reads the answer.
LINGER_SECONDS = 30.0       # nginx's lingering_time
LINGER_IDLE = 5.0           # nginx's lingering_timeout
LINGER_BYTES = max(64 * 1024 * 1024, 4 * MAX_BODY)
# every ECS/ALB/HEALTHCHECK probe of /health would be a log line (and a log
# bill): a health answer below 400 is logged only with AGENT_LOG_HEALTH=1
LOG_HEALTH = os.environ.get("AGENT_LOG_HEALTH", "").strip().lower() in ("1", "true", "yes", "on")

HEALTH_PATHS = (f"{BASE}/health", f"{BASE}/agents/{APP_ID}/health")
META_PATH = f"{BASE}/meta"
INVOKE_PATH = f"{BASE}/invoke"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DIGITS = re.compile(r"[0-9]{1,18}")


class State:
    ready = False
    failed = False      # the entrypoint's import raised: stays 503 (the log says why)
    draining = False
    handler = None
    in_flight = 0       # requests read and not yet answered, for the drain
    admitted = 0        # entrypoint calls running or queued, for the busy gate


state = State()
# threads, not the event loop, run the agent's synchronous code: a slow
# invoke never stalls /health (ECS would replace a busy, healthy task)
POOL = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="invoke")


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: List[Tuple[str, str]] = []
    close: bool = False     # answer with Connection: close


def request_id(given: Optional[str]) -> str:
    """The caller's X-Request-Id when it is a plain token (it is echoed into
    headers and logs), else a new one."""
    if given and _REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def error(status: int, kind: str, rid: str, close: bool = False, **extra) -> Reply:
    headers = [("Retry-After", RETRY_AFTER)] if status == 503 else []
    return Reply(status, dumps({"error": kind, "id": rid, **extra}), headers, close or state.draining)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode(reply: Reply, rid: str, close: bool, head_only: bool = False) -> bytes:
    """REPLY as HTTP/1.1 bytes."""
    lines = [f"HTTP/1.1 {reply.status} {reason_phrase(reply.status)}", "Content-Type: application/json",
             f"Content-Length: {len(reply.body)}", f"X-Request-Id: {rid}",
             "Connection: close" if close else "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in reply.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else reply.body)


def access(method: str, path: str, status: int, nbytes: int, started: float, rid: str) -> None:
    if path in HEALTH_PATHS and status < 400 and not LOG_HEALTH:
        return
    # the path without its query string: a token in a URL stays out of the log
    log("request", method=method, path=path, status=status, bytes=nbytes,
        duration_ms=round((time.monotonic() - started) * 1000, 1), request_id=rid)


def load(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def warm_up(started: float) -> None:
    """Import the entrypoint (in a thread: /health says 503 meanwhile)."""
    try:
        if ENTRYPOINT:
            state.handler = load(ENTRYPOINT)
        state.ready = True
        log("agent ready", entrypoint=ENTRYPOINT, boot_ms=int((time.monotonic() - started) * 1000))
    except Exception as exc:  # the agent's import failed: stay 503, say why in the log only
        state.failed = True
        log("entrypoint import failed", level="error", entrypoint=ENTRYPOINT,
            error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())


def health(rid: str) -> Reply:
    who = {"agent": NAME, "version": VERSION}
    if state.draining or not state.ready:
        why = "draining" if state.draining else "import-failed" if state.failed else "starting"
        return Reply(503, dumps({"ok": False, **who, "error": why, "id": rid}), [("Retry-After", RETRY_AFTER)],
                     state.draining)
    return Reply(200, dumps({"ok": True, **who}))


def meta() -> Reply:
    return Reply(200, dumps({
        "name": NAME, "version": VERSION, "entrypoint": ENTRYPOINT, "rest_entry": REST_ENTRY, "app_id": APP_ID,
        "python": sys.version.split()[0],
        "limits": {"max_body_bytes": MAX_BODY, "workers": WORKERS, "queue": QUEUE, "drain_seconds": DRAIN_SECONDS},
        "labels": {"io.pixell.agent.name": NAME, "io.pixell.agent.version": VERSION,
                   "io.pixell.agent.entrypoint": ENTRYPOINT}}))


def contract(method: str, path: str, rid: str) -> Optional[Reply]:
    """The answer for the shim's own GET routes (and draining), or None."""
    if path in HEALTH_PATHS and method in ("GET", "HEAD"):
        return health(rid)  # 503 while draining too
    if state.draining:
        return error(503, "draining", rid, close=True)
    if path in HEALTH_PATHS or path == META_PATH:
        return meta() if method in ("GET", "HEAD") and path == META_PATH else error(405, "method-not-allowed", rid)
    if path == INVOKE_PATH and method != "POST":
        return error(405, "method-not-allowed", rid)
    return None


def agent_error(exc: BaseException, rid: str) -> Reply:
    """500 with the id and the class; the message and traceback go to the log only."""
    log("entrypoint raised", level="error", request_id=rid, error_class=type(exc).__name__, error=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    return error(500, "agent-error", rid, **{"class": type(exc).__name__})


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _call(body: bytes, rid: str):
    """In a worker thread: parse, call, serialize. Returns (Reply, None) or (None, awaitable)."""
    try:
        payload = json.loads(body) if body.strip() else {}
    except RecursionError:
        return error(400, "bad-json", rid, reason="the JSON body is nested too deep"), None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return error(400, "bad-json", rid, reason=_one_line(exc)), None
    try:
        out = state.handler(payload)
        if inspect.isawaitable(out):
            return None, out
        return Reply(200, dumps(out)), None
    except BaseException as exc:  # noqa: B902 - SystemExit in an agent must not stop the server
        return agent_error(exc, rid), None


async def invoke(body: bytes, rid: str, agent_loop: Optional[asyncio.AbstractEventLoop]) -> Reply:
    """POST /invoke: admission, then the entrypoint in the pool (a coroutine it
    returns is awaited on AGENT_LOOP, or here when that is None)."""
    if not state.ready:
        return error(503, "import-failed" if state.failed else "starting", rid)
    if state.handler is None:
        return error(404, "no-entrypoint", rid)
    if state.admitted >= WORKERS + QUEUE:
        return error(503, "busy", rid)
    state.admitted += 1
    try:
        reply, pending = await asyncio.get_running_loop().run_in_executor(POOL, _call, body, rid)
        if pending is None:
            return reply
        try:
            if agent_loop is not None:
                pending = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(pending, agent_loop))
            return Reply(200, dumps(await pending))
        except Exception as exc:
            return agent_error(exc, rid)
    finally:
        state.admitted -= 1


def check_length(value: Optional[str], rid: str) -> Tuple[int, Optional[Reply]]:
    """Content-Length against the cap, before a byte of the body is read."""
    if value is None:
        return 0, None
    if not _DIGITS.fullmatch(value):  # not str.isdigit: it accepts "²", which int() refuses
        return 0, error(400, "bad-request", rid, close=True, reason="Content-Length is not a number")
    length = int(value)
    if length > MAX_BODY:
        return 0, error(413, "body-too-large", rid, close=True, limit=MAX_BODY)
    return length, None


async def drain(signal_name: str) -> int:
    """Answer 503 from now on; wait for in-flight requests up to the window.
    Returns how many were still in flight when it ended."""
    state.draining = True
    started = time.monotonic()
    log("draining", signal=signal_name, in_flight=state.in_flight, window_s=DRAIN_SECONDS)
    while state.in_flight > 0 and time.monotonic() - started < DRAIN_SECONDS:
        await asyncio.sleep(0.02)
    left = state.in_flight
    log("drained", level="warning" if left else "info", left_in_flight=left,
        waited_ms=int((time.monotonic() - started) * 1000))
    return left
