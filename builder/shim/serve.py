"""Serve an agent inside its image: the runtime's REST contract.

Runs with the agent's own venv Python and adds no package to it. When the
agent declares ``rest.entry`` and its venv already has FastAPI and uvicorn
(the ``pixell init`` scaffold does), the agent's app is used and its routes
are mounted; otherwise a standard-library server answers the same routes.

Routes under BASE_PATH: GET /health (503 until the entrypoint imported),
GET /agents/{AGENT_APP_ID}/health, GET /meta, POST /invoke.
Python 3.9 compatible: bullseye bases run it.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("AGENT_NAME", "agent")
VERSION = os.environ.get("AGENT_VERSION", "0")
APP_ID = os.environ.get("AGENT_APP_ID", NAME)
ENTRYPOINT = os.environ.get("AGENT_ENTRYPOINT", "")
REST_ENTRY = os.environ.get("AGENT_REST_ENTRY", "")
PORT = int(os.environ.get("REST_PORT", "8080"))
BASE = "/" + os.environ.get("BASE_PATH", "/").strip("/")
BASE = "" if BASE == "/" else BASE
STARTED = time.monotonic()

state = {"ready": False, "error": None, "handler": None}


def log(event: str, level: str = "info", **kw) -> None:
    kw.update(event=event, level=level, agent=NAME, version=VERSION,
              timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    sys.stdout.write(json.dumps(kw, default=str) + "\n")
    sys.stdout.flush()


def load(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def warm_up() -> None:
    try:
        if "/app" not in sys.path:
            sys.path.insert(0, "/app")
        if ENTRYPOINT:
            state["handler"] = load(ENTRYPOINT)
        state["ready"] = True
        log("agent ready", entrypoint=ENTRYPOINT, boot_ms=int((time.monotonic() - STARTED) * 1000))
    except Exception as exc:  # the agent's import failed: stay 503, say why
        state["error"] = f"{type(exc).__name__}: {exc}"
        log("entrypoint import failed", level="error", entrypoint=ENTRYPOINT, error=state["error"],
            traceback=traceback.format_exc())


def health():
    if state["ready"]:
        return 200, {"ok": True, "agent": NAME, "version": VERSION}
    return 503, {"ok": False, "agent": NAME, "version": VERSION, "error": state["error"] or "starting"}


def meta():
    return 200, {"name": NAME, "version": VERSION, "entrypoint": ENTRYPOINT, "rest_entry": REST_ENTRY,
                 "app_id": APP_ID, "python": sys.version.split()[0],
                 "labels": {"io.pixell.agent.name": NAME, "io.pixell.agent.version": VERSION,
                            "io.pixell.agent.entrypoint": ENTRYPOINT}}


def invoke(body: bytes):
    if not state["ready"]:
        return health()
    if state["handler"] is None:
        return 404, {"error": "this agent declares no entrypoint"}
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return 400, {"error": "the request body must be JSON"}
    try:
        out = state["handler"](payload)
        if inspect.isawaitable(out):
            out = asyncio.run(out)
        json.dumps(out)
        return 200, out
    except Exception as exc:
        log("entrypoint raised", level="error", error=f"{type(exc).__name__}: {exc}")
        return 500, {"error": f"{type(exc).__name__}: {exc}"}


ROUTES_GET = {f"{BASE}/health": health, f"{BASE}/agents/{APP_ID}/health": health, f"{BASE}/meta": meta}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        route = ROUTES_GET.get(self.path.split("?")[0])
        self._send(*(route() if route else (404, {"error": "not found"})))

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] == f"{BASE}/invoke":
            self._send(*invoke(body))
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, fmt: str, *args) -> None:
        log("request", line=fmt % args)


def serve_stdlib() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    def stop(signum, frame) -> None:
        log("stopping", signal=signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=warm_up, daemon=True).start()
    log("serving", server="stdlib", port=PORT, base_path=BASE or "/")
    server.serve_forever()
    server.server_close()
    log("stopped")


def serve_fastapi(fastapi, uvicorn) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    app = fastapi.FastAPI(title=NAME, version=VERSION)

    def respond(pair):
        return JSONResponse(status_code=pair[0], content=pair[1])

    for path, fn in ROUTES_GET.items():
        app.add_api_route(path, (lambda fn=fn: respond(fn())), methods=["GET"])

    async def invoke_route(request: Request):
        body = await request.body()
        if not state["ready"] or state["handler"] is None:
            return respond(invoke(body))
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return respond((400, {"error": "the request body must be JSON"}))
        try:
            out = state["handler"](payload)
            if inspect.isawaitable(out):
                out = await out
            return respond((200, out))
        except Exception as exc:
            return respond((500, {"error": f"{type(exc).__name__}: {exc}"}))

    # annotations are strings here (__future__); FastAPI needs the real class
    invoke_route.__annotations__ = {"request": Request}
    app.add_api_route(f"{BASE}/invoke", invoke_route, methods=["POST"])
    try:
        load(REST_ENTRY)(app)
        log("mounted rest entry", rest_entry=REST_ENTRY)
    except Exception as exc:
        state["error"] = f"rest.entry {REST_ENTRY}: {type(exc).__name__}: {exc}"
        log("rest entry failed", level="error", error=state["error"], traceback=traceback.format_exc())
    threading.Thread(target=warm_up, daemon=True).start()
    log("serving", server="uvicorn", port=PORT, base_path=BASE or "/")
    # uvicorn handles SIGTERM itself: it stops accepting, finishes requests, exits
    uvicorn.run(app, host="0.0.0.0", port=PORT, log_level="warning", access_log=False)
    log("stopped")


def main() -> None:
    if "/app" not in sys.path:
        sys.path.insert(0, "/app")
    if REST_ENTRY:
        try:
            fastapi = importlib.import_module("fastapi")
            uvicorn = importlib.import_module("uvicorn")
        except ImportError:
            log("rest.entry declared but the agent's venv has no fastapi/uvicorn: serving without it",
                level="warning", rest_entry=REST_ENTRY)
        else:
            serve_fastapi(fastapi, uvicorn)
            return
    serve_stdlib()


if __name__ == "__main__":
    main()
