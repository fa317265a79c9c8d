"""Does the index proxy's tee (issue 14) make downloads through it faster? Side by side, one run.

    .venv/bin/python bench/proxy_stream.py [--rounds N] [--before REF] [--uv] [--sandbox]

Runs pip (`pip download`, this venv's pip, with deps) for the seed set through
an IndexProxy on 127.0.0.1 in front of the real PyPI, empty download cache
and no pip cache each time: "before" is builder/ at REF (default: where this
branch left main), "after" is this checkout's builder/. Each proxy runs in its
own process (two versions of one package cannot share one). Rounds alternate
the order. With --uv it also times `uv pip install --target` (uv from a temp
venv: the host has none). With --sandbox the clients are the build's own
(pip 23 and uv in the base image) in a container inside a build sandbox, as a
build's RUN reaches the proxy (forwarder, unix socket). Prints SKIPPED and exits 0 when PyPI is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple/"
CA = "/etc/ssl/certs/ca-certificates.crt"
SEED = ["langchain-openai==0.3.28", "fastapi", "uvicorn", "structlog", "requests"]

# runs in the proxy's own process: builder/ from SRC, address on stdout, stats when stdin closes
WORKER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import Upstream
ca, unix = sys.argv[3], (sys.argv[4] if len(sys.argv) > 4 else None)
with IndexProxy(Upstream.parse("https://pypi.org/simple/"), DownloadCache(Path(sys.argv[2])),
                ca_bundle=ca or None, unix_path=unix) as proxy:
    if unix:
        proxy.ready.wait(60)  # the sandbox's forwarder said hello
    print("ready" if unix else proxy.address, flush=True)
    sys.stdin.read()
s = proxy.stats
print("STATS", json.dumps({"upstream_bytes": s.upstream_bytes, "files": len(set(s.downloaded)),
                  "refused": s.refused, "unreachable": s.unreachable}), flush=True)
"""


TIMER = ("import subprocess, sys, time; t = time.monotonic(); r = subprocess.run(sys.argv[1:]); "
         "print('TOOK', time.monotonic() - t); sys.exit(r.returncode)")


def reachable() -> bool:
    ctx = ssl.create_default_context(cafile=CA if os.path.exists(CA) else None)
    try:
        with urllib.request.urlopen(PYPI + "pip/", timeout=10, context=ctx) as resp:
            return resp.status == 200
    except OSError:
        return False


def export(ref: str, into: Path) -> Path:
    """builder/ as it was at REF."""
    into.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "builder"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return into


def once(src: Path, tmp: Path, client: list[str], warm: bool = False, image: str | None = None
         ) -> tuple[float, dict]:
    """Seconds CLIENT (with {index} and {dest} filled in) takes through a fresh proxy from SRC.
    WARM: the time of a second run, every file already in the proxy's cache (the floor).
    IMAGE: run CLIENT in a container of IMAGE inside a build sandbox, as a build's RUN does
    (http_proxy to the sandbox's forwarder, which relays to the proxy's unix socket)."""
    work = Path(tempfile.mkdtemp(dir=tmp))
    box = None
    if image:
        from builder.build.engine import Engine
        from builder.build.sandbox import Sandbox
        box = Sandbox(Engine(), image, host_network=False).__enter__()
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(src), str(work / "cache"), CA,
                               *([box.socket_path] if box else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = worker.stdout.readline().strip()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        if box:
            ready = threading.Event()
            ready.set()
            box.wait(ready)  # the forwarder reached the proxy (the worker saw it); the container is up
            from builder.build.sandbox import PORT
            from builder.plan.dockerfile import PIP_INDEX_URL
            index = PIP_INDEX_URL
            # timed inside the container: docker run's own start is no part of it
            prefix = ["docker", "run", "--rm", "--network", box.network_mode,
                      "-e", f"http_proxy=http://127.0.0.1:{PORT}",
                      image, "python3", "-c", TIMER]
        else:
            index, prefix = address + "/simple/", []
        for dest in ("dest", "dest2")[:2 if warm else 1]:
            cmd = prefix + [a.format(index=index, dest=f"/tmp/{dest}" if box else str(work / dest)) for a in client]
            started = time.monotonic()
            run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            took = time.monotonic() - started
            if run.returncode:
                sys.exit(f"{' '.join(cmd[:12])} failed through the proxy:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
            if box:
                took = float(run.stdout.rsplit("TOOK ", 1)[1])
    finally:
        worker.stdin.close()
        stats = {}
        for line in worker.stdout:  # the proxy's own log lines (structlog prints to stdout) come first
            if line.startswith("STATS "):
                stats = json.loads(line[6:])
            else:
                print("    proxy:", line.rstrip()[:300], file=sys.stderr)
        worker.wait(timeout=30)
        if box:
            box.__exit__(None, None, None)
    shutil.rmtree(work, ignore_errors=True)
    return took, stats


def uv_binary(tmp: Path) -> str:
    venv = tmp / "uv-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "uv"], check=True)
    return str(venv / "bin" / "uv")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=None, help="git ref for 'before' (default: merge-base with main)")
    ap.add_argument("--uv", action="store_true")
    ap.add_argument("--sandbox", action="store_true", help="clients in a build sandbox (the build's own path)")
    args = ap.parse_args()
    if not reachable():
        print(f"SKIPPED: {PYPI} is unreachable from this host")
        return
    before = args.before or subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                           capture_output=True, text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="agent-image-bench-proxy-"))
    try:
        srcs = {"before": export(before, tmp / "before"), "after": ROOT}
        image = None
        if args.sandbox:  # the build's own pip 23 and uv, in the base image, through the sandbox
            sys.path.insert(0, str(ROOT))
            from builder.core.defaults import base_image_for
            from builder.core.log import configure
            from builder.plan.proxied import PIP_INDEX_HOST
            configure(stream=sys.stderr)  # info and up: not the sandbox's debug line per run
            image = base_image_for("3.11")
            clients = {"pip": ["/opt/venv/bin/pip", "download", "--no-cache-dir", "-q",
                               "--trusted-host", PIP_INDEX_HOST, "--index-url", "{index}",
                               "-d", "{dest}", *SEED]}
            if args.uv:
                clients["uv"] = ["/opt/agent-image/tools/bin/uv", "pip", "install", "--no-cache", "-q", "--python",
                                 "/opt/venv/bin/python", "--index-url", "{index}", "--target", "{dest}", *SEED]
        else:
            clients = {"pip": [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir", "-q",
                               "--index-url", "{index}", "-d", "{dest}", *SEED]}
            if args.uv:
                clients["uv"] = [uv_binary(tmp), "pip", "install", "--no-cache", "-q", "--python", sys.executable,
                                 "--index-url", "{index}", "--target", "{dest}", *SEED]
        print(f"seed: {' '.join(SEED)}; before = {before[:10]}, after = this checkout; {args.rounds} rounds; "
              f"clients {'in a build sandbox (' + image + ')' if image else 'on the host, proxy on 127.0.0.1'}")
        for name, client in clients.items():
            times: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    took, stats = once(srcs[side], tmp, client, image=image)
                    times[side].append(took)
                    print(f"  {name} round {r + 1} {side:6} {took:6.2f} s  {stats.get('files')} files "
                          f"{stats.get('upstream_bytes', 0) / 2 ** 20:.1f} MiB", flush=True)
            b, a = statistics.median(times["before"]), statistics.median(times["after"])
            # the floor: every file already in the proxy's cache, so no upstream wait at all
            floor = statistics.median(once(srcs["after"], tmp, client, warm=True, image=image)[0]
                                      for _ in range(args.rounds))
            # the engine and cores are shared: a round's pair ran back to back, so its ratio is the steadier number
            paired = statistics.median(x / y for x, y in zip(times["after"], times["before"]))
            print(f"{name}: median before {b:.2f} s, after {a:.2f} s, after/before {a / b:.2f} "
                  f"(median of the rounds' ratios {paired:.2f}; best before {min(times['before']):.2f}, "
                  f"after {min(times['after']):.2f}); floor (all files cached) {floor:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
