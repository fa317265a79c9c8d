"""What carrying the sandbox's door over the engine's API costs: `.venv/bin/python bench/remote.py [ROUNDS]`.

Side by side, in one run, rounds in rotating order:
- builds of examples/hello-agent through the CLI, cold (--no-cache, empty
  download cache) then code-only (one line of src/main.py changed):
    host      the local engine, no sandbox (AGENT_IMAGE_TEST_HOST_NETWORK=1): the floor
    bind      the local engine, the sandbox as it was before issue 29 (a unix
              socket bind-mounted from this host; the code of BIND_REF, unpacked
              from git into a temp folder and run with PYTHONPATH)
    tunnel    the local engine, this tree's sandbox (the attach-API tunnel)
    remote    a dind engine over tcp:// (tests/support/dind.py), this tree's sandbox
- the sandbox alone (start until the forwarder's hello reached the proxy) for
  bind, tunnel and remote;
- throughput through the door: a step in the sandbox's network reads 256 MiB
  from 127.0.0.1:3128, served on the builder's side of the door.
Prints medians and ratios; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIND_REF = "35da02d"  # main before issue 29: the last sandbox with the bind-mounted socket
BIN = Path(sys.executable).parent
HOST_NETWORK_ENV = "AGENT_IMAGE_TEST_HOST_NETWORK"
MIB = 256


def _probe() -> None:
    """In a child process (PYTHONPATH picks the tree): time the sandbox alone and the door's
    throughput against the engine of DOCKER_HOST; print one JSON line."""
    from builder.build.engine import Engine
    from builder.build.proxy.cache import DownloadCache
    from builder.build.proxy.server import IndexProxy
    from builder.build.proxy.upstream import Upstream
    from builder.build.sandbox import Sandbox
    from builder.core.defaults import base_image_for
    engine, tmp = Engine(), Path(tempfile.mkdtemp())
    started = time.monotonic()
    box = Sandbox(engine, base_image_for("3.11"), host_network=False)
    with box, IndexProxy(Upstream.parse("http://127.0.0.1:9/simple/"), DownloadCache(tmp / "c"),
                         unix_path=box.socket_path) as proxy:
        box.wait(proxy.ready)
        ready = time.monotonic() - started
    started = time.monotonic()
    box = Sandbox(engine, base_image_for("3.11"), host_network=False)
    with box:
        sink = _Sink(box.socket_path)
        box.wait(sink.ready)
        reader = ("import socket,time;s=socket.create_connection(('127.0.0.1',3128));t=time.monotonic();n=0\n"
                  "s.sendall(b'GET /bulk HTTP/1.0\\r\\n\\r\\n')\n"
                  "while True:\n d=s.recv(1<<20)\n if not d: break\n n+=len(d)\n"
                  "print(n, time.monotonic()-t)")
        got, secs = _run_in(box.network_mode, reader).split()
    print(json.dumps({"ready_s": ready, "mib_s": int(got) / 2**20 / float(secs), "bytes": int(got)}))


def _run_in(network_mode: str, code: str) -> str:
    from builder.core.defaults import base_image_for
    return subprocess.run(["docker", "run", "--rm", "--network", network_mode, "--entrypoint", "python3",
                           base_image_for("3.11"), "-c", code], capture_output=True, text=True, check=True).stdout


class _Sink:
    """On the builder's side of the door: answers the forwarder's hello, then sends MIB MiB per connection."""

    def __init__(self, path: str) -> None:
        self.ready = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        block = b"\0" * (1 << 20)
        while True:
            conn, _ = self.sock.accept()
            first = conn.recv(4096)
            if b"/_sandbox/ready" in first:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nok\n")
                conn.close()
                self.ready.set()
                continue
            threading.Thread(target=self._send, args=(conn, block), daemon=True).start()

    @staticmethod
    def _send(conn, block) -> None:
        for _ in range(MIB):
            conn.sendall(block)
        conn.close()


def _build(agent: Path, env: dict, index_url: str, cache: Path, *extra: str) -> float:
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "agent-image"), "build", str(agent), "--json", "--index-url", index_url,
                           "--cache-dir", str(cache), "--repository", "ai29-bench/remote", *extra],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return time.monotonic() - started


def main(rounds: int = 3) -> None:
    from tests.support.dind import DindNetwork, RemoteEngine
    from tests.support.index import fill_wheelhouse, start_index
    from builder.core.defaults import base_image_for
    tmp = Path(tempfile.mkdtemp(prefix="ai29-bench-remote-"))
    old = tmp / "bind-tree"
    old.mkdir()
    subprocess.run(f"git -C {ROOT} archive {BIND_REF} builder templates | tar -x -C {old}", shell=True, check=True)
    index = start_index(tmp / "index", fill_wheelhouse(tmp / "house", tmp / "src"))
    net = dind = None
    times: dict[tuple[str, str], list[float]] = {}
    probes: dict[str, list[dict]] = {}
    try:
        net = DindNetwork()
        dind = RemoteEngine.start(net)
        dind.load(base_image_for("3.11"))
        base = {k: v for k, v in os.environ.items() if k not in (HOST_NETWORK_ENV, "DOCKER_HOST", "PYTHONPATH")}
        envs = {"host": {**base, "PYTHONPATH": str(ROOT), HOST_NETWORK_ENV: "1"},
                "bind": {**base, "PYTHONPATH": str(old)},
                "tunnel": {**base, "PYTHONPATH": str(ROOT)},
                "remote": {**base, "PYTHONPATH": str(ROOT), "DOCKER_HOST": dind.url}}
        modes = list(envs)
        for r in range(rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                agent = tmp / f"agent-{mode}-{r}"
                shutil.copytree(ROOT / "examples" / "hello-agent", agent)
                cache, url = tmp / f"cache-{mode}-{r}", index.url_for("alice")
                times.setdefault((mode, "cold"), []).append(_build(agent, envs[mode], url, cache, "--no-cache"))
                main_py = agent / "src" / "main.py"
                main_py.write_text(main_py.read_text() + f"\nROUND = {r}\n")
                times.setdefault((mode, "code-only"), []).append(_build(agent, envs[mode], url, cache))
                if mode != "host":
                    out = subprocess.run([sys.executable, __file__, "--probe"], env={**envs[mode], "PYTHONPATH":
                                         f"{envs[mode]['PYTHONPATH']}:{ROOT}"}, capture_output=True, text=True, timeout=300)
                    if out.returncode != 0:
                        raise RuntimeError(out.stderr[-2000:])
                    probes.setdefault(mode, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        index.proc.kill()
        if dind is not None:
            dind.stop()
        if net is not None:
            net.remove()
        subprocess.run("docker images -q --filter reference='ai29-bench/*' | xargs -r docker rmi -f",
                       shell=True, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _report(times, probes, rounds)


def _report(times, probes, rounds) -> None:
    med = {key: statistics.median(v) for key, v in times.items()}
    print("| build | host (no sandbox) s | bind s | tunnel s | remote (dind tcp) s | tunnel/bind | "
          "tunnel-host | remote-host |\n|---|---|---|---|---|---|---|---|")
    for kind in ("cold", "code-only"):
        h, b, t, r = (med[(m, kind)] for m in ("host", "bind", "tunnel", "remote"))
        print(f"| {kind} | {h:.2f} | {b:.2f} | {t:.2f} | {r:.2f} | {t / b:.3f} | {t - h:+.2f} | {r - h:+.2f} |")
    print("\n| sandbox | start to ready s | ratio to bind | door throughput MiB/s |\n|---|---|---|---|")
    ready = {m: statistics.median(p["ready_s"] for p in v) for m, v in probes.items()}
    for mode, samples in probes.items():
        print(f"| {mode} | {ready[mode]:.3f} | {ready[mode] / ready['bind']:.2f} | "
              f"{statistics.median(p['mib_s'] for p in samples):.0f} |")
    print(f"\nmedians of {rounds}; samples (s):",
          {f"{m} {k}": [round(x, 2) for x in v] for (m, k), v in times.items()})
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (the engine is shared)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        _probe()
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
