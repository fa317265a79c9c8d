#!/usr/bin/env python3
"""Upload to pushed image on a fresh CI runner (issue 24), side by side in one run:

    .venv/bin/python bench/fresh.py [--set seed|science|both]

Every timed build runs on an engine with nothing on it, as a GitHub-hosted or
CodeBuild job gets: a second dockerd on this host (its own --data-root,
--exec-root, --pidfile and socket, `--bridge ai24br0 --iptables=false`: the shared
engine is not touched), stopped and wiped before every timed build, with an
empty download cache. The registry (Debian's docker-registry on loopback, a
new one per set) holds the base, pinned by digest as the CI recipes pin it,
and what the earlier uploads pushed.

C   `agent-image build --push --base-image REGISTRY/...@sha256:...` (builder.api)
K   bench/real.py's expert BuildKit Dockerfile, `docker build --network host
    --build-arg BUILDKIT_INLINE_CACHE=1 --cache-from <its last pushed image>`,
    then `docker push` (K-fresh). Its first image is built with the same
    --network: the network mode is in BuildKit's cache key.

Cases: (1) the twin of a pushed agent (same requirement lines, another agent);
(2) a near twin (one requirement line added); (3) a code-only update of a pushed
agent (new version); (4) cold (nothing pushed before: a new registry prefix for
C, no --cache-from for K). For each: seconds (the build and the push, what a CI
job waits for), bytes pulled (the registry's answers to GETs, from its log) and
bytes pushed (the growth of its blob store). Needs https://pypi.org/simple/
(through the host's CA bundle); without it, says so and exits 0. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real import CA, K_DOCKERFILE, MAIN_PY, PYPI, SETS, reachable  # noqa: E402

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

PREFIX = "ai24-fresh"
SOCK = f"/run/{PREFIX}.sock"
HOST = f"unix://{SOCK}"
EXEC_ROOT = f"/run/{PREFIX}-exec"
PIDFILE = f"/run/{PREFIX}.pid"
BRIDGE = "ai24br0"
DATA_ROOT = Path(f"/var/lib/{PREFIX}")  # beside /var/lib/docker: the same filesystem, overlay2 works
NEAR_LINE = "python-dotenv==1.0.1"     # case 2's added line: small, pure Python
RESULTS = Path(__file__).resolve().parent / "results-fresh-{}.json"  # the set, or "both"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class FreshEngine:
    """A dockerd of our own, started empty; `wipe` stops it and deletes everything it had."""

    def __init__(self, log: Path) -> None:
        self.log, self.proc = log, None

    def start(self) -> None:
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        # A bridge of its own: started with `--bridge none`, dockerd deletes the host's
        # docker0, which the machine's own engine (and everything on it) still uses.
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode != 0:
            for cmd in (["ip", "link", "add", BRIDGE, "type", "bridge"],
                        ["ip", "addr", "add", "10.224.0.1/24", "dev", BRIDGE], ["ip", "link", "set", BRIDGE, "up"]):
                subprocess.run(cmd, check=True)
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(DATA_ROOT), "--exec-root", EXEC_ROOT, "--pidfile", PIDFILE, "-H", HOST,
             "--bridge", BRIDGE, "--iptables=false", "--log-level", "warn"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):
            if subprocess.run(["docker", "-H", HOST, "info"], capture_output=True).returncode == 0:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited; see {self.log}")
            time.sleep(0.1)
        raise RuntimeError(f"dockerd did not answer; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # our own process, by its handle
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def wipe(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", str(DATA_ROOT / "overlay2")], capture_output=True)  # (normally none left)
        shutil.rmtree(DATA_ROOT, ignore_errors=True)
        shutil.rmtree(EXEC_ROOT, ignore_errors=True)
        # a new runner's disk is quiet: the deleted engine's writes are not left for the timed build to wait on
        os.sync()
        self.start()


class Meter:
    """Bytes the registry sent back (GETs answered 200, from its log) and the growth of its blob store."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def mark(self) -> tuple[int, int]:
        logf = self.reg.root / "registry.log"
        return (logf.stat().st_size if logf.exists() else 0), _du(self.reg.root / "data")

    def since(self, mark: tuple[int, int]) -> tuple[int, int]:
        with open(self.reg.root / "registry.log", "rb") as fh:
            fh.seek(mark[0])
            text = fh.read().decode(errors="replace")
        pulled = 0
        for line in text.splitlines():
            if "http.request.method=GET" in line and "http.response.status=200" in line:
                m = re.search(r"http\.response\.written=(\d+)", line)
                pulled += int(m.group(1)) if m else 0
        return pulled, _du(self.reg.root / "data") - mark[1]


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Bench:
    def __init__(self, which: str, tmp: Path, fresh: FreshEngine) -> None:
        self.which, self.tmp, self.fresh = which, tmp, fresh
        self.reqs, self.imports = SETS[which]
        self.reg = Registry(tmp / "registry", free_port(), level="info")
        (tmp / "registry").mkdir(parents=True)
        self.meter = Meter(self.reg)
        self.base = ""
        self.rows: dict[str, dict[str, dict]] = {}

    def agent(self, name: str, *, version: str = "0.1.0", revision: int = 1, extra_line: str = "") -> Path:
        reqs = "".join(f"{r}\n" for r in self.reqs) + (f"{extra_line}\n" if extra_line else "")
        path = make_agent(self.tmp / "agents" / f"{name}-{version}-{revision}", name, version=version,
                          requirements=reqs, install_requires=["structlog"],
                          extra={"src/main.py": MAIN_PY.format(imports=self.imports, revision=revision)})
        shutil.copy(CA, path / ".bench-ca.pem")
        return path

    def push_base(self) -> None:
        """The base in the registry, pinned by digest (through the shared engine: a tag of ours, removed after)."""
        shared = Engine()
        target = f"{self.reg.host}/{PREFIX}/agent-image.base:py3.11"
        shared.tag(shared.require_image(base_image_for("3.11"), hint="run scripts/setup.sh").id, target)
        try:
            digest = shared.push(target)
        finally:
            shared.api.remove_image(target)
        self.base = f"{self.reg.host}/{PREFIX}/agent-image.base@{digest}"

    def c(self, agent: Path, prefix: str) -> dict:
        opts = BuildOptions(registry=f"{self.reg.host}/{prefix}", push=True, base_image=self.base, index_url=PYPI,
                            ca_bundle=CA, cache_dir=self.tmp / f"c-cache-{time.time_ns()}", timeout=1800)
        result = build_image(agent, opts, engine=Engine(HOST, api_timeout=900))
        return {"deps_origin": result.deps_origin, "cached": result.cached, "phases": result.phases,
                "digest_ref": result.digest_ref}

    def k(self, agent: Path, cache_from: str | None) -> dict:
        (agent / "Dockerfile").write_text(K_DOCKERFILE.format(base=self.base, index=PYPI,
                                                              cache_id=f"{PREFIX}-pip"))  # one id: it is in the cache key
        (agent / ".dockerignore").write_text(".env\nDockerfile\n.dockerignore\n")
        version = re.search(r"\n  version: (\S+)", (agent / "agent.yaml").read_text()).group(1)  # metadata.version
        ref = f"{self.reg.host}/{PREFIX}-k/{agent.name}:{version}"
        env = {**os.environ, "DOCKER_HOST": HOST, "DOCKER_BUILDKIT": "1"}
        cmd = ["/usr/bin/docker", "build", "-q", "--network", "host", "--build-arg", "BUILDKIT_INLINE_CACHE=1",
               *(["--cache-from", cache_from] if cache_from else []), "-t", ref, str(agent)]
        for step in (cmd, ["/usr/bin/docker", "push", "-q", ref]):
            proc = subprocess.run(step, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"K failed: {' '.join(step[:3])}: {proc.stderr[-3000:]}")
        return {"image": ref}

    def timed(self, case: str, way: str, run) -> None:
        self.fresh.wipe()  # nothing on the engine, before the clock
        mark = self.meter.mark()
        t = time.monotonic()
        info = run()
        took = time.monotonic() - t
        pulled, pushed = self.meter.since(mark)
        self.rows.setdefault(case, {})[way] = {"s": round(took, 2), "pulled": pulled, "pushed": pushed, **info}
        say(f"  {case} {way}: {took:.2f} s, pulled {pulled / 2**20:.1f} MiB, pushed {pushed / 2**20:.2f} MiB {info}")

    def run(self) -> dict:
        self.reg.start()
        try:
            self.push_base()
            one, two = self.agent("ai24-one"), self.agent("ai24-two")
            near = self.agent("ai24-near", extra_line=NEAR_LINE)
            update = self.agent("ai24-one", version="0.2.0", revision=2)
            cold = self.agent("ai24-cold")
            k_one = f"{self.reg.host}/{PREFIX}-k/ai24-one:0.1.0"
            say(f"[{self.which}] earlier uploads (untimed): C and K push ai24-one 0.1.0")
            self.timed("seed upload", "C", lambda: self.c(one, "c"))
            self.timed("seed upload", "K", lambda: self.k(one, None))
            say(f"[{self.which}] (1) twin, (2) near twin, (3) code-only update, (4) cold")
            for case, agent, prefix in (("1 twin", two, "c"), ("2 near twin", near, "c"),
                                        ("3 code-only update", update, "c"), ("4 cold", cold, "c-cold")):
                self.timed(case, "C", lambda: self.c(agent, prefix))
                self.timed(case, "K", lambda: self.k(agent, None if agent is cold else k_one))
            return self.rows
        finally:
            self.reg.stop()


def table(results: dict) -> str:
    out = ["| set | case | C s | K-fresh s | C/K | C pulled MiB | K pulled MiB | C pushed MiB | K pushed MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for which, rows in results.items():
        for case, by in rows.items():
            c, k = by.get("C"), by.get("K")
            if not c or not k:
                continue
            out.append(f"| {which} | {case} | {c['s']:.2f} | {k['s']:.2f} | {c['s'] / k['s']:.2f} | "
                       f"{c['pulled'] / 2**20:.2f} | {k['pulled'] / 2**20:.1f} | {c['pushed'] / 2**20:.2f} | "
                       f"{k['pushed'] / 2**20:.2f} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="seed", choices=[*sorted(SETS), "both"])
    args = p.parse_args()
    why = reachable()
    if why:
        say(f"SKIPPED: the public index {PYPI} is not reachable from here ({why})")
        return 0
    from builder.core.log import configure
    log_file = open(Path(__file__).resolve().parent / "last-run-fresh.log", "w")
    configure(json_output=False, stream=log_file)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    fresh = FreshEngine(tmp / "dockerd.log")
    results, t0, load = {}, time.monotonic(), os.getloadavg()
    try:
        for which in (sorted(SETS, reverse=True) if args.set == "both" else [args.set]):
            results[which] = Bench(which, tmp / which, fresh).run()
        text = table(results)
        print(text)
        print(f"\ntotal {time.monotonic() - t0:.0f} s; load average {load[0]:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end")
        Path(str(RESULTS).format(args.set)).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_start": load,
                                       "loadavg_end": os.getloadavg(), "results": results, "table": text},
                                      indent=1, default=str) + "\n")
        return 0
    finally:
        fresh.stop()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)  # ours (FreshEngine.start made it)
        shutil.rmtree(DATA_ROOT, ignore_errors=True)
        shutil.rmtree(EXEC_ROOT, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        log_file.close()


if __name__ == "__main__":
    sys.exit(main())
