#!/usr/bin/env python3
"""Real agents from the public index, side by side in one run (issue 14):

    AGENT_IMAGE_BASE_REPOSITORY=... .venv/bin/python bench/real.py [--set seed|science] [--reps 1]

A  the seed's runtime: host venv, `pip install -e .`, `pip install -r`, import
B  a naive Dockerfile (classic builder, docker-py, one RUN, no cache)
K  the expert Dockerfile: `DOCKER_BUILDKIT=1 /usr/bin/docker build`, venv,
   COPY requirements.txt, RUN --mount=type=cache pip install -r, COPY . .,
   then the seed's two installs (Debian's 20.10 CLI: no buildx, no `# syntax=`)
C  `agent-image build` (pip), and C-uv (`--installer uv`)

Cases: cold (empty caches, --no-cache), code-only change, a second agent with
the same requirements, time to ready (run -> /health 200) beside its floor
(`docker run IMAGE python -c "import <entrypoint module>"`), image bytes over
the base, and the .py files shipped without bytecode. Then a per-step
breakdown of C's cold build, timed from the build log as it streamed.

Needs https://pypi.org/simple/ (through the host's CA bundle); when it is not
reachable the bench says so and exits 0 without measuring. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import remove_tree, tar_context, wait_health  # noqa: E402
from timeline import TimedEngine, breakdown  # noqa: E402

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

PYPI = "https://pypi.org/simple/"
CA = os.environ.get("BENCH_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
RESULTS = Path(__file__).resolve().parent / "results-real.json"
PREFIX = "bench-real"  # every image we tag lives under it; cleanup removes exactly those

SETS = {
    # the seed's agent (issue 14's table)
    "seed": (["langchain-openai==0.3.28", "fastapi", "uvicorn", "structlog", "requests"],
             "import langchain_openai, fastapi, uvicorn, structlog, requests"),
    # large compiled wheels: where unpacking and bytecode, not downloads, dominate
    "science": (["numpy==2.2.6", "pandas==2.2.3", "scipy==1.15.3", "scikit-learn==1.6.1", "fastapi", "uvicorn",
                 "structlog", "requests"],
                "import numpy, pandas, scipy, sklearn, fastapi, uvicorn, structlog, requests"),
}
MAIN_PY = """\
{imports}
CODE_REVISION = {revision}


def handler(context):
    return {{"ok": True, "revision": CODE_REVISION}}
"""

B_DOCKERFILE = """\
FROM {base}
WORKDIR /app
COPY . .
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir -q --disable-pip-version-check --cert /app/.bench-ca.pem -i {index} -e . \\
 && /opt/venv/bin/pip install --no-cache-dir -q --disable-pip-version-check --cert /app/.bench-ca.pem -i {index} -r requirements.txt
ENV PATH=/opt/venv/bin:$PATH AGENT_ENTRYPOINT=src.main:handler
CMD ["python", "/opt/agent-image/serve.py"]
"""

# what a careful engineer writes today; CACHE_ID is new per cold build (a fresh,
# empty pip cache without pruning the engine's whole BuildKit cache, which other
# users of this engine own too) and shared by the later builds of one repetition
K_DOCKERFILE = """\
FROM {base}
COPY .bench-ca.pem /etc/bench-ca.pem
ENV PIP_CERT=/etc/bench-ca.pem PIP_INDEX_URL={index} PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY requirements.txt .
RUN --mount=type=cache,id={cache_id},target=/root/.cache/pip pip install -r requirements.txt
COPY . .
RUN --mount=type=cache,id={cache_id},target=/root/.cache/pip pip install -e . && pip install -r requirements.txt
ENV AGENT_ENTRYPOINT=src.main:handler
CMD ["python", "/opt/agent-image/serve.py"]
"""


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def reachable() -> str | None:
    """None when the public index answers, else why not."""
    try:
        ctx = ssl.create_default_context(cafile=CA)
        with urllib.request.urlopen(f"{PYPI}langchain-openai/", context=ctx, timeout=15) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except Exception as exc:  # noqa: BLE001 any failure means: skip
        return str(exc)[:200]


# --- the bench --------------------------------------------------------------------

class Bench:
    def __init__(self, which: str, ways: list[str]) -> None:
        self.which, self.ways = which, ways
        self.reqs, self.imports = SETS[which]
        self.tmp = Path(tempfile.mkdtemp(prefix="agent-image-real-"))
        self.engine = TimedEngine(api_timeout=900)
        self.base = ""
        self.base_id = ""
        self.cleanups: list = []
        self.py = shutil.which("python3.11") or sys.executable
        self.py = subprocess.run([self.py, "-c", "import sys; print(sys.executable)"], capture_output=True,
                                 text=True, check=True).stdout.strip()

    # environment
    def make_base(self) -> None:
        """A label-only child of our base (same layers, new id): its cache chains are ours alone."""
        run_id = f"{os.getpid()}-{time.time_ns()}"
        src = base_image_for("3.11")
        ctx = tar_context({"Dockerfile": f'FROM {src}\nLABEL io.agent-image.bench-run="{run_id}"\n'.encode()})
        outcome = self.engine.build(context=ctx, network_mode="default", timeout=120)
        self.base_id = outcome.image_id
        self.base = f"{PREFIX}-base/py3.11:{run_id}"
        self.engine.tag(outcome.image_id, self.base)
        self.cleanups.append(lambda: remove_tree(self.engine, self.base_id))

    def agent(self, name: str, revision: int = 1) -> Path:
        main = MAIN_PY.format(imports=self.imports, revision=revision)
        path = make_agent(self.tmp / "agents", name, requirements="".join(f"{r}\n" for r in self.reqs),
                          install_requires=["structlog"], extra={"src/main.py": main})
        shutil.copy(CA, path / ".bench-ca.pem")  # B and K hand it to pip (C's proxy reads --ca-bundle)
        return path

    @staticmethod
    def change_code(agent: Path, revision: int) -> None:
        main = agent / "src" / "main.py"
        main.write_text(re.sub(r"CODE_REVISION = \d+", f"CODE_REVISION = {revision}", main.read_text()))

    # ways
    def a(self, agent: Path) -> float:
        venv, src = self.tmp / "venv-a", self.tmp / "a-src"
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(agent, src)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
        pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", "--cert", CA, "-i", PYPI]
        t = time.monotonic()
        subprocess.run([self.py, "-m", "venv", str(venv)], check=True)
        subprocess.run(pip + ["-e", str(src)], check=True, env=env)
        subprocess.run(pip + ["-r", str(src / "requirements.txt")], check=True, env=env)
        subprocess.run([str(venv / "bin" / "python"), "-c", "import src.main"], check=True, cwd=src)
        return time.monotonic() - t

    def b(self, agent: Path, nocache: bool = False) -> float:
        files = {"Dockerfile": B_DOCKERFILE.format(base=self.base, index=PYPI).encode()}
        t = time.monotonic()
        out = Engine.build(self.engine, context=tar_context(files, agent), network_mode="default",
                           nocache=nocache, timeout=1200)
        if out.image_id is None:
            raise RuntimeError(f"B failed: {out.error}\n" + "\n".join(out.lines[-30:]))
        self.engine.tag(out.image_id, f"{PREFIX}-b/{agent.name}:latest")
        return time.monotonic() - t

    def k(self, agent: Path, cache_id: str, nocache: bool = False) -> float:
        (agent / "Dockerfile").write_text(K_DOCKERFILE.format(base=self.base, index=PYPI, cache_id=cache_id))
        (agent / ".dockerignore").write_text(".env\nDockerfile\n.dockerignore\n")
        cmd = ["/usr/bin/docker", "build", "-q", "-t", f"{PREFIX}-k/{agent.name}:latest", str(agent)]
        t = time.monotonic()
        proc = subprocess.run(cmd[:2] + (["--no-cache"] if nocache else []) + cmd[2:], capture_output=True,
                              text=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        took = time.monotonic() - t
        for f in ("Dockerfile", ".dockerignore"):
            (agent / f).unlink()
        if proc.returncode:
            raise RuntimeError(f"K failed: {proc.stderr[-3000:]}")
        return took

    def c(self, agent: Path, installer: str = "pip", nocache: bool = False) -> tuple[float, dict]:
        repo = f"{PREFIX}-c{'' if installer == 'pip' else '-' + installer}/{agent.name}"
        opts = BuildOptions(repository=repo, index_url=PYPI, ca_bundle=CA, cache_dir=self.c_cache(installer),
                            base_image=self.base, nocache=nocache, installer=installer, timeout=1200)
        self.engine.timelines = []
        t = time.monotonic()
        result = build_image(agent, opts, engine=self.engine)
        took = time.monotonic() - t
        return took, {**result.to_dict(), "timelines": [list(tl) for tl in self.engine.timelines]}

    def c_cache(self, installer: str) -> Path:
        return self.tmp / f"c-cache-{installer}"

    # measurements on C's image
    def ready(self, image: str) -> tuple[float, float, float]:
        """(run -> /health 200, floor: docker run python -c import, the import alone inside)"""
        port = free_port()
        t = time.monotonic()
        cid = self.engine.run(image, env={"REST_PORT": "8080"}, ports={8080: port})
        try:
            wait_health(f"http://127.0.0.1:{port}/health", timeout=120)
            ready = time.monotonic() - t
        finally:
            self.engine.stop(cid, timeout=2)
        module = "src.main"
        t = time.monotonic()
        out = subprocess.run(["docker", "run", "--rm", image, "python", "-c",
                              f"import time; t = time.perf_counter(); import {module}; "
                              "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
        return ready, time.monotonic() - t, float(out.stdout.strip().splitlines()[-1])

    @staticmethod
    def missing_bytecode(image: str) -> tuple[int, int]:
        """(.py files under the venv without a cached .pyc for this interpreter, all .py files)"""
        script = ("import importlib.util, pathlib, sys; fs = list(pathlib.Path(sys.prefix).rglob('*.py'));"
                  "miss = [f for f in fs if not pathlib.Path(importlib.util.cache_from_source(str(f))).exists()];"
                  "print(len(miss), len(fs))")
        out = subprocess.run(["docker", "run", "--rm", image, "python", "-c", script], capture_output=True,
                             text=True, check=True).stdout.split()
        return int(out[0]), int(out[1])

    @staticmethod
    def compile_cost(image: str) -> dict[str, float]:
        """Seconds to compile the venv's bytecode from scratch in IMAGE: one process
        (what pip does while it installs), compileall -j 0, and batches of 256 files over
        xargs -P 4 (what C's install steps do now)."""
        ways = {"j1": "python -m compileall -qq -f /opt/venv/lib",
                "j0": "python -m compileall -qq -f -j 0 /opt/venv/lib",
                "xargs": "find /opt/venv/lib -name '*.py' -print0 | xargs -0 -r -n 256 -P 4 python -m compileall -qq -f"}
        out = {}
        for key, cmd in ways.items():
            t = time.monotonic()
            subprocess.run(["docker", "run", "--rm", "--user", "0", image, "sh", "-c", cmd], capture_output=True)
            out[key] = round(time.monotonic() - t, 2)
        return out

    def empty_runner(self, rep: int = 0) -> dict:
        """The issue's empty runner: one runner builds and pushes an agent (untimed);
        then every image of ours and C's download cache are removed, as on a fresh CI
        runner (only the base stays: K's empty runner needs it as much), and a new
        agent with the same lines is built (timed). Its dependency image comes from
        the registry; the registry holds its layers once for both agents."""
        reg = Registry(self.tmp / f"registry-{rep}", free_port())
        (self.tmp / f"registry-{rep}").mkdir()
        reg.start()
        try:
            prefix = f"{reg.host}/{PREFIX}-er"
            opts = BuildOptions(registry=prefix, push=True, index_url=PYPI, ca_bundle=CA, timeout=1200,
                                cache_dir=self.c_cache("pip"), base_image=self.base)
            first = build_image(self.agent(f"er-one-r{rep}"), opts, engine=self.engine)
            self.remove_ours()
            empty = self.tmp / f"er-empty-cache-{rep}"
            t = time.monotonic()
            second = build_image(self.agent(f"er-two-r{rep}"), dataclasses.replace(opts, push=False, cache_dir=empty),
                                 engine=self.engine)
            took = time.monotonic() - t
            reg_layers = lambda name: _manifest_layers(reg.host, f"{PREFIX}-er/{name}")  # noqa: E731
            self.engine.push(second.image)  # (after the clock) to compare the two manifests
            one, two = reg_layers(f"er-one-r{rep}"), reg_layers(f"er-two-r{rep}")
            return {"seconds": round(took, 2), "deps_origin": second.deps_origin, "first_deps": first.deps_origin,
                    "steps_cached": second.steps_cached, "downloaded": second.index.get("downloaded"),
                    "layers_shared": len([1 for x, y in zip(one, two) if x == y]), "layers": len(two)}
        finally:
            reg.stop()

    def size(self, ref: str) -> int:
        img = self.engine.image(ref)
        return img.size if img else 0

    def remove_ours(self) -> None:
        for img in self.engine.api.images():
            if any(_ours(t) for t in img.get("RepoTags") or []):
                try:
                    self.engine.api.remove_image(img["Id"], force=True)
                except Exception:  # noqa: BLE001 gone with another's parents
                    pass

    def run(self, reps: int) -> dict:
        rows: dict[str, dict[str, list[float]]] = {}
        notes: dict = {"sizes": {}, "bytecode": {}, "ready": [], "breakdown": {}, "steps_cached": {}}

        def add(case: str, way: str, seconds: float) -> None:
            rows.setdefault(case, {}).setdefault(way, []).append(round(seconds, 2))
            say(f"    {case} {way}: {seconds:.2f} s")

        for rep in range(reps):
            one = self.agent(f"real-one-r{rep}")
            cache_id = f"{PREFIX}-pip-{os.getpid()}-{rep}"
            self.remove_ours()
            for installer in ("pip", "uv"):
                shutil.rmtree(self.c_cache(installer), ignore_errors=True)
            say(f"[{rep + 1}/{reps}] cold build")
            order = self.ways[rep % len(self.ways):] + self.ways[:rep % len(self.ways)]
            for way in order:
                if way == "A":
                    add("cold", "A", self.a(one))
                elif way == "B":
                    add("cold", "B", self.b(one, nocache=True))
                elif way == "K":
                    add("cold", "K", self.k(one, cache_id, nocache=True))
                elif way in ("C", "C-uv"):
                    installer = "pip" if way == "C" else "uv"
                    secs, res = self.c(one, installer, nocache=True)
                    add("cold", way, secs)
                    notes["breakdown"][way] = [breakdown(tl) for tl in res["timelines"]]
                    notes.setdefault("timeline", {})[f"{way} r{rep}"] = [[(round(t, 2), ln[:160]) for t, ln in tl]
                                                                        for tl in res["timelines"]]
                    notes.setdefault("index", {})[way] = {k: v for k, v in res["index"].items()
                                                          if k in ("upstream_requests", "upstream_bytes")}
            def warm(case: str, agent: Path, key: str) -> None:
                """CASE with the caches the cold build left: B, K and C (C also notes what it reused)."""
                for way in order:
                    if way == "B":
                        add(case, "B", self.b(agent))
                    elif way == "K":
                        add(case, "K", self.k(agent, cache_id))
                    elif way in ("C", "C-uv"):
                        secs, res = self.c(agent, "pip" if way == "C" else "uv")
                        add(case, way, secs)
                        notes["steps_cached"][f"{key} {way}"] = res["steps_cached"]

            say(f"[{rep + 1}/{reps}] code-only change")
            self.change_code(one, 100 + rep)
            warm("code-only", one, "code-only")
            say(f"[{rep + 1}/{reps}] second agent, same requirements")
            warm("second agent", self.agent(f"real-two-r{rep}"), "second")
            if rep == reps - 1:
                base = self.size(self.base)
                for way, ref in (("B", f"{PREFIX}-b/{one.name}:latest"), ("K", f"{PREFIX}-k/{one.name}:latest"),
                                 ("C", f"{PREFIX}-c/{one.name}:0.1.0"), ("C-uv", f"{PREFIX}-c-uv/{one.name}:0.1.0")):
                    if way in self.ways:
                        notes["sizes"][way] = {"image_mib": round(self.size(ref) / 2 ** 20, 1),
                                               "over_base_mib": round((self.size(ref) - base) / 2 ** 20, 1)}
                        notes["bytecode"][way] = self.missing_bytecode(ref)
                if "C" in self.ways:
                    notes["compile"] = self.compile_cost(f"{PREFIX}-c/{one.name}:0.1.0")
                for way in ("C", "C-uv"):
                    if way in self.ways:
                        ref = f"{PREFIX}-c{'' if way == 'C' else '-uv'}/{one.name}:0.1.0"
                        ready, floor, imp = self.ready(ref)
                        notes["ready"].append({"way": way, "ready_s": round(ready, 2), "floor_s": round(floor, 2),
                                               "import_s": round(imp, 2)})
                        say(f"    ready {way}: {ready:.2f} s, floor {floor:.2f} s (import alone {imp:.2f} s)")
            if "C" in self.ways:
                say(f"[{rep + 1}/{reps}] empty runner: a new agent with a pushed agent's lines")
                try:
                    er = self.empty_runner(rep)
                    notes.setdefault("empty_runner", []).append(er)
                    add("empty runner", "C", er["seconds"])
                    if "K" in rows.get("cold", {}):  # K on an empty runner: no layers, an empty cache mount
                        rows.setdefault("empty runner", {}).setdefault("K", []).append(rows["cold"]["K"][-1])
                except Exception as exc:  # noqa: BLE001 an extra: never lose the table for it
                    say(f"    empty runner failed: {exc}")
        return {"rows": rows, **notes}


def _ours(tag: str) -> bool:
    """A tag this bench made: under PREFIX-, on the engine or a registry (not the base's)."""
    first, _, rest = tag.partition("/")
    path = rest if rest and (":" in first or "." in first) else tag
    return path.startswith(f"{PREFIX}-") and not path.startswith(f"{PREFIX}-base/")


def _manifest_layers(host: str, repo: str, tag: str = "0.1.0") -> list[str]:
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [layer["digest"] for layer in json.load(resp)["layers"]]


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def report(which: str, ways: list[str], res: dict, load: tuple, total: float, reps: int) -> str:
    rows = res["rows"]
    cols = ways
    head = "| case | " + " | ".join(f"{w} s" for w in cols) + " | C/K | C/B |"
    out = [head, "|" + "---|" * (len(cols) + 3)]
    for case, by in rows.items():
        med = {w: median(by[w]) for w in by}
        ck = f"{med['C'] / med['K']:.2f}" if "C" in med and "K" in med else "-"
        cb = f"{med['C'] / med['B']:.2f}" if "C" in med and "B" in med else "-"
        out.append(f"| {case} | " + " | ".join(f"{med[w]:.2f}" if w in med else "" for w in cols)
                   + f" | {ck} | {cb} |")
    out.append("")
    for r in res["ready"]:
        out.append(f"time to ready {r['way']}: {r['ready_s']} s (run -> /health 200); floor {r['floor_s']} s "
                   f"(docker run python -c 'import src.main'; the import alone {r['import_s']} s)")
    for way, s in res["sizes"].items():
        miss, total_py = res["bytecode"][way]
        out.append(f"image {way}: {s['image_mib']} MiB, {s['over_base_mib']} MiB over the base; "
                   f".py without bytecode in the venv: {miss} of {total_py}")
    out.append(f"C steps the layer cache served: {res['steps_cached']}")
    if res.get("index"):
        out.append(f"C's index proxy upstream requests, cold: {res['index']} (pooled per host since issue 10)")
    for er in res.get("empty_runner", []):
        out.append(f"empty runner (K: its cold build): C's dependency image {er['deps_origin']}, steps cached "
                   f"{er['steps_cached']}, downloaded {er['downloaded']}; registry layers shared by the two "
                   f"agents: {er['layers_shared']} of {er['layers']}")
    if res.get("compile"):
        out.append(f"bytecode for C's venv from scratch (docker run, start included): one process "
                   f"{res['compile']['j1']} s, compileall -j 0 {res['compile']['j0']} s, "
                   f"xargs -n 256 -P 4 (C) {res['compile'].get('xargs', '-')} s")
    for way, builds in res["breakdown"].items():
        for n, rows_ in enumerate(builds, 1):
            what = "the dependency image" if n < len(builds) else "the agent image"
            out.append(f"\ncold build {way}, build {n} of {len(builds)} ({what}), from its log (seconds):")
            out += [f"  {name:<78} {secs:6.2f}" for name, secs in rows_]
    out.append(f"\nset {which}, medians of {reps} rep(s); samples {json.dumps(rows)}")
    out.append(f"total {total:.0f} s; load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="seed", choices=sorted(SETS))
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--ways", default="A,B,K,C,C-uv")
    args = p.parse_args()
    why = reachable()
    if why:
        say(f"SKIPPED: the public index {PYPI} is not reachable from here ({why}); "
            f"set BENCH_CA_BUNDLE if a TLS-intercepting proxy needs its CA")
        return 0
    from builder.core.log import configure
    log_file = open(Path(__file__).resolve().parent / "last-run-real.log", "w")
    configure(json_output=False, stream=log_file)
    load, t0 = os.getloadavg(), time.monotonic()
    ways = args.ways.split(",")
    bench = Bench(args.set, ways)
    try:
        bench.make_base()
        res = bench.run(args.reps)
        text = report(args.set, ways, res, load, time.monotonic() - t0, args.reps)
        print(text)
        RESULTS.with_name(f"results-real-{args.set}.json").write_text(json.dumps(
            {"set": args.set, "reps": args.reps, "loadavg_start": load, "loadavg_end": os.getloadavg(),
             "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **res, "table": text}, indent=1, default=str) + "\n")
        return 0
    finally:
        bench.remove_ours()
        for undo in reversed(bench.cleanups):
            undo()
        shutil.rmtree(bench.tmp, ignore_errors=True)
        log_file.close()


if __name__ == "__main__":
    sys.exit(main())
