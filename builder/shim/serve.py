"""Serve an agent inside its image: the runtime's REST contract.

Runs with the agent's own venv Python and adds no package to it. When the
agent declares ``rest.entry`` and its venv already has FastAPI and uvicorn
(the ``pixell init`` scaffold does), the agent's app is used and its routes
are mounted; otherwise a standard-library server answers the same routes.

Routes under BASE_PATH: GET /health (503 until the entrypoint imported, and
while draining), GET /agents/{AGENT_APP_ID}/health, GET /meta, POST /invoke.
Both paths share serve_core: body cap, timeouts, a bounded worker pool and
queue, JSON error bodies with a request id, one access-log line per request,
and a drain on SIGTERM. Python 3.9 compatible: bullseye bases run it.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
import time
import traceback

STARTED = time.monotonic()
# the shim's own modules sit beside this file (sys.path[0]); import them
# before /app goes first on the path, so an agent module cannot shadow them
import serve_core as core  # noqa: E402
from serve_core import log, state  # noqa: E402


def serve_fastapi(fastapi, uvicorn) -> int:
    import serve_asgi
    app = fastapi.FastAPI(title=core.NAME, version=core.VERSION)
    try:
        core.load(core.REST_ENTRY)(app)
        log("mounted rest entry", rest_entry=core.REST_ENTRY)
    except Exception as exc:  # the contract's routes still answer; /health says why not ready
        state.failed = True
        log("rest entry failed", level="error", rest_entry=core.REST_ENTRY, error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc())
    return asyncio.run(serve_asgi.serve(serve_asgi.Shim(app), uvicorn))


def main() -> None:
    if "/app" not in sys.path:
        sys.path.insert(0, "/app")
    threading.Thread(target=core.warm_up, args=(STARTED,), daemon=True).start()
    left = None
    if core.REST_ENTRY:
        try:
            fastapi = importlib.import_module("fastapi")
            uvicorn = importlib.import_module("uvicorn")
        except ImportError:
            log("rest.entry declared but the agent's venv has no fastapi/uvicorn: serving without it",
                level="warning", rest_entry=core.REST_ENTRY)
        else:
            left = serve_fastapi(fastapi, uvicorn)
    if left is None:
        import serve_stdlib
        left = serve_stdlib.serve_forever()
    log("stopped", left_in_flight=left)
    sys.stdout.flush()
    if left:  # a worker thread still runs the agent's code: exiting must not wait for it
        os._exit(0)


if __name__ == "__main__":
    main()
