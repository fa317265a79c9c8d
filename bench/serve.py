#!/usr/bin/env python3
"""Load on the serving shim (issue 12), against built images on loopback.

    AGENT_IMAGE_BASE_REPOSITORY=agent-image/base-issue12 .venv/bin/python bench/serve.py   # about 3 minutes

For each serving path (stdlib; the agent's FastAPI app under uvicorn) it
builds an agent whose entrypoint sleeps 50 ms, starts it with its port
published on 127.0.0.1, and runs:
  1. N clients (default 50, keep-alive) POSTing /invoke for S seconds (default 20);
  2. the same with M idle slow connections (default 300) held open: each sends
     half a request head and trickles a header line every 2 s; a connection
     the server closes is opened again;
  3. the same load, SIGTERM to the container after 5 s: requests sent before
     the signal that did not get a 200 (must be 0), and seconds from the
     signal to the container's exit.
Prints a table and writes bench/serve-results.json. Nothing is asserted.
Only 127.0.0.1 is targeted; client, connection and time counts are capped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from tests.support.engine import engine_tags  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402
from tests.support.net import wait_http  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "serve-results.json"
REPO = "bench-serve"
MAIN = "import time\n\n\ndef handler(context):\n    time.sleep(0.05)\n    return {'ok': True, 'n': context.get('n')}\n"
REST = "def mount(app):\n    @app.get('/api/ping')\n    def ping():\n        return {'pong': True}\n"
HOST = "127.0.0.1"


def build(path: str, index_url: str, tmp: Path) -> str:
    extra = {"src/main.py": MAIN}
    if path == "fastapi":
        extra["src/rest.py"] = REST
    agent = make_agent(tmp, f"bench-serve-{path}", requirements="fastapi\nuvicorn\n" if path == "fastapi" else None,
                       extra=extra, env_file=None)
    if path == "fastapi":
        (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text() + "rest:\n  entry: src.rest:mount\n")
    return build_image(agent, BuildOptions(index_url=index_url, repository=f"{REPO}/{path}")).image


def start(client, image: str):
    c = client.containers.run(image, detach=True, ports={"8080/tcp": (HOST, None)}, labels={"bench": REPO})
    c.reload()
    port = int(c.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    wait_http(f"http://{HOST}:{port}/health", timeout=60, ok=(200,))
    return c, port


def client_loop(port: int, until: float, stop: threading.Event, out: list) -> None:
    """One keep-alive client: (sent, done, status or error name) per request."""
    conn, n = None, 0
    while time.monotonic() < until and not stop.is_set():
        sent = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=35)
            conn.request("POST", "/invoke", body=json.dumps({"n": n}), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            out.append((sent, time.monotonic(), resp.status))
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as exc:
            out.append((sent, time.monotonic(), type(exc).__name__))
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.02)  # a refused connection must not spin
        n += 1
    if conn is not None:
        conn.close()


def hold_idle(port: int, count: int, stop: threading.Event, stats: dict) -> None:
    """COUNT slow connections (half a head, a header line every 2 s), reopened when closed."""
    socks: list = []
    while not stop.is_set():
        socks = [s for s in socks if s is not None]
        while len(socks) < count and not stop.is_set():
            try:
                s = socket.create_connection((HOST, port), timeout=2)
                s.sendall(b"POST /invoke HTTP/1.1\r\nHost: bench\r\n")
                socks.append(s)
                stats["opened"] += 1
            except OSError:
                break
        for i, s in enumerate(socks):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                s.close()
                socks[i] = None
        stop.wait(2.0)
    for s in socks:
        if s is not None:
            s.close()


def run_load(port: int, clients: int, seconds: float, stop: threading.Event | None = None) -> list:
    stop = stop or threading.Event()
    out: list = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(port, until, stop, out), daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return out


def summary(records: list, seconds: float) -> dict:
    ok = sorted(done - sent for sent, done, status in records if status == 200)
    errors = [status for _, _, status in records if status != 200]

    def pct(p: float) -> float | None:
        return round(ok[min(len(ok) - 1, int(p * len(ok)))] * 1000, 1) if ok else None
    kinds: dict = {}
    for e in errors:
        kinds[str(e)] = kinds.get(str(e), 0) + 1
    return {"requests": len(records), "ok": len(ok), "req_per_s": round(len(ok) / seconds, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": len(errors), "error_kinds": kinds}


def sigterm_run(client, image: str, clients: int, after: float = 5.0) -> dict:
    container, port = start(client, image)
    stop = threading.Event()
    out: list = []
    until = time.monotonic() + 60
    threads = [threading.Thread(target=client_loop, args=(port, until, stop, out), daemon=True)
               for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(after)
        term = time.monotonic()
        container.kill(signal="SIGTERM")
        code = container.wait(timeout=60)["StatusCode"]
        exited = time.monotonic()
        stop.set()
        for t in threads:
            t.join(40)
    finally:
        container.remove(force=True)
    before = [r for r in out if r[0] < term]
    # a request sent before the signal but answered after it was in flight (or queued) when it came
    in_flight = [r for r in before if r[1] >= term]
    after_sig = [r for r in out if r[0] >= term]
    return {"exit_code": code, "exit_s": round(exited - term, 2),
            "sent_before_sigterm": len(before), "in_flight_at_sigterm": len(in_flight),
            "failed_sent_before_sigterm": sum(1 for r in before if r[2] != 200),
            "after_sigterm": {str(k): sum(1 for r in after_sig if str(r[2]) == str(k))
                              for k in sorted({str(r[2]) for r in after_sig})}}


def bench_path(client, image: str, args) -> dict:
    row: dict = {}
    container, port = start(client, image)
    try:
        run_load(port, args.clients, 2)  # warm-up, not counted
        row["load"] = summary(run_load(port, args.clients, args.seconds), args.seconds)
        stop, stats = threading.Event(), {"opened": 0}
        holder = threading.Thread(target=hold_idle, args=(port, args.idle, stop, stats), daemon=True)
        holder.start()
        time.sleep(3)
        row["load_with_idle"] = summary(run_load(port, args.clients, args.seconds), args.seconds)
        stop.set()
        holder.join(10)
        row["load_with_idle"]["idle_connections_opened"] = stats["opened"]
    finally:
        container.remove(force=True)
    row["sigterm"] = sigterm_run(client, image, args.clients)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--idle", type=int, default=300)
    ap.add_argument("--paths", default="stdlib,fastapi")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes (default bench/serve-results.json)")
    args = ap.parse_args()
    args.seconds = min(max(args.seconds, 1.0), 120.0)
    args.clients = min(max(args.clients, 1), 200)
    args.idle = min(max(args.idle, 0), 1000)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    client = docker.from_env()
    started = time.monotonic()
    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
               "machine": platform.platform(), "base": base_image_for("3.11"),
               "docker": client.version().get("Version"), "clients": args.clients, "seconds": args.seconds,
               "idle": args.idle, "entrypoint_ms": 50, "paths": {}}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp_path = Path(tmp)
        index = start_index(tmp_path / "index", fill_wheelhouse(tmp_path / "wheelhouse", tmp_path / "src"))
        try:
            for path in args.paths.split(","):
                image = build(path, index.url_for("alice"), tmp_path / path)
                results["paths"][path] = bench_path(client, image, args)
                print(path, json.dumps(results["paths"][path]), flush=True)
        finally:
            index.proc.terminate()
            index.proc.wait(10)
            for c in client.containers.list(all=True, filters={"label": f"bench={REPO}"}):
                c.remove(force=True)
            for tag in engine_tags(client):  # NAME:VERSION and the build's in-<digest> tag
                if tag.startswith(f"{REPO}/"):
                    client.images.remove(tag, force=True)
    results["total_s"] = round(time.monotonic() - started)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(r: dict) -> str:
    lines = [f"{r['clients']} clients x {r['seconds']:.0f} s, POST /invoke, 50 ms entrypoint, "
             f"{r['cores']} cores, Docker {r['docker']}, {r['when']}",
             "| path | run | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for path, row in r["paths"].items():
        for run, label in (("load", "load"), ("load_with_idle", f"load + {r['idle']} idle slow connections")):
            s = row[run]
            lines.append(f"| {path} | {label} | {s['req_per_s']} | {s['p50_ms']} | {s['p99_ms']} | {s['errors']} |")
    lines += ["", "| path | SIGTERM mid-load: in flight | failed of those sent before | exit s | exit code | "
              "after the signal |", "|---|---|---|---|---|---|"]
    for path, row in r["paths"].items():
        s = row["sigterm"]
        lines.append(f"| {path} | {s['in_flight_at_sigterm']} | {s['failed_sent_before_sigterm']} | {s['exit_s']} | "
                     f"{s['exit_code']} | {s['after_sigterm']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
