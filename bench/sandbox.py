"""What the build sandbox costs: `.venv/bin/python bench/sandbox.py [ROUNDS]`.

Each round builds examples/hello-agent through the CLI with the sandbox and
on the host network (AGENT_IMAGE_TEST_HOST_NETWORK=1, as before the sandbox),
order alternating: cold (--no-cache, empty download cache), then a code-only
change (layer cache on). It also times the sandbox alone (start until the
forwarder reached the proxy, then removal). Prints medians side by side.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from builder.build.engine import Engine  # noqa: E402
from builder.build.proxy.cache import DownloadCache  # noqa: E402
from builder.build.proxy.server import IndexProxy  # noqa: E402
from builder.build.proxy.upstream import Upstream  # noqa: E402
from builder.build.sandbox import HOST_NETWORK_ENV, Sandbox  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from tests.support.engine import engine_tags  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402

BIN = Path(sys.executable).parent
MODES = {"host": {HOST_NETWORK_ENV: "1"}, "sandbox": {}}


def build(agent: Path, mode: str, index_url: str, cache: Path, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != HOST_NETWORK_ENV} | MODES[mode]
    started = time.monotonic()
    subprocess.run([str(BIN / "agent-image"), "build", str(agent), "--json", "--index-url", index_url,
                    "--cache-dir", str(cache), "--repository", f"bench-sandbox/{mode}", *extra],
                   check=True, capture_output=True, env=env)
    return time.monotonic() - started


def sandbox_alone(engine: Engine, tmp: Path) -> tuple[float, float]:
    """Seconds from start to ready, and to remove it."""
    started = time.monotonic()
    box = Sandbox(engine, base_image_for("3.11"), host_network=False)
    with box, IndexProxy(Upstream.parse("http://127.0.0.1:9/simple/"), DownloadCache(tmp / "sc"),
                         unix_path=box.socket_path) as proxy:
        box.wait(proxy.ready)
        ready = time.monotonic() - started
        leave = time.monotonic()
    return ready, time.monotonic() - leave


def main(rounds: int = 3) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agent-image-bench-sandbox-"))
    index = start_index(tmp / "index", fill_wheelhouse(tmp / "house", tmp / "src"))
    times: dict[tuple[str, str], list[float]] = {}
    alone: list[tuple[float, float]] = []
    engine = Engine()
    try:
        for r in range(rounds):
            for mode in (("host", "sandbox") if r % 2 == 0 else ("sandbox", "host")):
                agent = tmp / f"agent-{mode}-{r}"
                shutil.copytree(ROOT / "examples" / "hello-agent", agent)
                cache = tmp / f"cache-{mode}-{r}"
                url = index.url_for("alice")
                times.setdefault((mode, "cold"), []).append(build(agent, mode, url, cache, "--no-cache"))
                main_py = agent / "src" / "main.py"
                main_py.write_text(main_py.read_text() + f"\nROUND = {r}\n")
                times.setdefault((mode, "code-only"), []).append(build(agent, mode, url, cache))
            alone.append(sandbox_alone(engine, tmp))
    finally:
        index.proc.kill()
        client = docker.from_env()
        for tag in engine_tags(client):
            if tag.startswith("bench-sandbox/"):
                client.images.remove(tag, force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| build | host network s | sandbox s | sandbox/host | added s |\n|---|---|---|---|---|")
    for kind in ("cold", "code-only"):
        host, box = (statistics.median(times[(m, kind)]) for m in ("host", "sandbox"))
        print(f"| {kind} | {host:.2f} | {box:.2f} | {box / host:.3f} | {box - host:+.2f} |")
    print(f"\nsandbox alone: start to ready {statistics.median(a for a, _ in alone):.3f} s, "
          f"removal {statistics.median(b for _, b in alone):.3f} s (medians of {rounds})")
    print("samples (s):", {f"{m} {k}": [round(x, 2) for x in v] for (m, k), v in times.items()})
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (the engine is shared)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
