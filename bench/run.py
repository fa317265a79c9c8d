#!/usr/bin/env python3
"""Side-by-side benchmark: the runtime's venv-at-boot (A), a hand-written
Dockerfile (B) and `agent-image build` (C), on one machine, in one run.

    .venv/bin/python bench/run.py            # about 10 minutes; prints a table, writes bench/results.json

Everything it uses is started here and removed at the end, also on Ctrl-C or
SIGTERM: a pypiserver with the tests' wheelhouse, a docker-registry on
127.0.0.1, temp folders, the images it tags (bench-b/*, bench-c/*, the
registry's bench-*/*) and the container it starts. The machine is shared,
so absolute seconds are noisy: each case runs A, B and C back to back
(in a rotating order) and the table reports ratios. No time is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from builder.core.errors import BuildInterruptedError  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

BIN = Path(sys.executable).parent
BASE_IMAGE = "agent-image/base:py3.11"
# our image namespaces: cleanup removes every image tagged under them, and only those
B_REPO, C_REPO, BASE_REPO = "bench-b", "bench-c", "bench-base/py3.11"
RESULTS = Path(__file__).resolve().parent / "results.json"

# A realistic agent: an HTTP client, logging, the `pixell init` web stack, plus
# one or two private fixture wheels so agents differ a little ("share most").
COMMON = ["requests==2.32.3", "structlog==24.4.0", "fastapi", "uvicorn", "watchdog"]
AGENTS = {
    "bench-one": COMMON + ["sharedlib==1.0"],
    "bench-two": COMMON + ["tinyreq==1.1"],            # "a second agent sharing most dependencies"
    "bench-q1": COMMON + ["tinyreq==1.0"],             # the four built at once
    "bench-q2": COMMON + ["tinyreq==2.0"],
    "bench-q3": COMMON + ["tinydep==1.0"],
    "bench-q4": COMMON + ["sharedlib==1.0", "tinyreq==1.1"],
}
# the agent imports its dependencies at import time, as real agents do, so
# "importable" (A) and "/health is 200" (C) both include loading them
MAIN_PY = """\
import fastapi, requests, structlog, uvicorn, watchdog
{extra_imports}
CODE_REVISION = {revision}


def handler(context):
    return {{"ok": True, "revision": CODE_REVISION, "requests": requests.__version__}}
"""

B_DOCKERFILE = """\
FROM {base}
ARG INDEX_URL
WORKDIR /app
COPY . .
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/pip install --no-cache-dir -q --disable-pip-version-check -i "$INDEX_URL" -e . \\
 && /opt/venv/bin/pip install --no-cache-dir -q --disable-pip-version-check -i "$INDEX_URL" -r requirements.txt
ENV PATH=/opt/venv/bin:$PATH AGENT_ENTRYPOINT=src.main:handler
CMD ["python", "/opt/agent-image/serve.py"]
"""


# --- processes we start: tracked so Ctrl-C reaches them and nothing outlives us ------

class Children:
    """Subprocesses in their own session (a terminal Ctrl-C reaches only us); on
    interrupt we forward SIGINT to each by pid so the builder and the B worker
    cancel their engine builds themselves, then wait for them."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.live.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen) -> tuple[int, str, str]:
        out, err = proc.communicate()
        self.live.remove(proc)
        return proc.returncode, out, err

    def stop_all(self) -> None:
        for proc in list(self.live):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in list(self.live):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.live.remove(proc)


CHILDREN = Children()


def run_parallel(cmds: list[tuple[list[str], dict[str, str] | None]]) -> tuple[float, list[str]]:
    """Start all CMDS at once, wait for all; wall seconds and their stdouts. Raises on a failure."""
    started = time.monotonic()
    procs = [CHILDREN.start(cmd, env) for cmd, env in cmds]
    outs = []
    for proc, (cmd, _) in zip(procs, cmds):
        rc, out, err = CHILDREN.finish(proc)
        if rc != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}... exited {rc}:\n{err[-3000:]}\n{out[-2000:]}")
        outs.append(out)
    return time.monotonic() - started, outs


# --- the environment: index, registry, engine, a private base, temp folders ----------

@dataclass
class Env:
    tmp: Path
    index_url: str            # with credentials, as the runtime's PIP_INDEX_URL would be
    registry: Registry
    engine: Engine
    c_cache: Path             # C's download cache (BuildOptions.cache_dir / --cache-dir)
    python311: str            # the host interpreter A uses
    base: str = ""            # the bench's alias of agent-image/base:py3.11 (see make_base)

    @property
    def registry_blobs(self) -> Path:
        return self.registry.root / "data" / "docker" / "registry" / "v2" / "blobs"


def host_python311() -> str:
    # resolve pyenv-style shims once, so A times Python, not the shim
    exe = shutil.which("python3.11") or sys.executable
    out = subprocess.run([exe, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def start_env(stack: list) -> Env:
    tmp = Path(tempfile.mkdtemp(prefix="agent-image-bench-"))
    stack.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    house = fill_wheelhouse(tmp / "wheelhouse", tmp / "fixture-src")
    (tmp / "index").mkdir()
    index = start_index(tmp / "index", house)
    stack.append(lambda: (index.proc.terminate(), index.proc.wait(10)))
    (tmp / "registry").mkdir()
    registry = Registry(tmp / "registry", free_port())
    registry.start()
    stack.append(registry.stop)
    return Env(tmp=tmp, index_url=index.url_for("alice"), registry=registry, engine=Engine(api_timeout=600),
               c_cache=tmp / "c-cache", python311=host_python311())


def make_base(env: Env, stack: list) -> None:
    """A label-only child of agent-image/base:py3.11 (same layers, new image id) for B and C.

    The classic builder's cache is "the newest child of the parent image with
    the same instruction". Other test runs on this engine build FROM the shared
    base too, some with --no-cache, and each such build makes a newer
    `RUN python3 -m venv` child that later builds pick, losing their own
    dependency layer (seen in the first run: C's code-only rebuild reused only
    `venv`). A private parent keeps the bench's cache chains its own.
    """
    run_id = f"{os.getpid()}-{time.time_ns()}"
    ctx = tar_context({"Dockerfile": f'FROM {BASE_IMAGE}\nLABEL io.agent-image.bench-run="{run_id}"\n'.encode()})
    outcome = env.engine.build(context=ctx, network_mode="default", timeout=120)
    if outcome.image_id is None:
        raise RuntimeError(f"could not make the bench base: {outcome.error}")
    env.base = f"{BASE_REPO}:{run_id}"
    env.engine.tag(outcome.image_id, env.base)
    stack.append(lambda: remove_tree(env.engine, outcome.image_id))


def write_agent(env: Env, name: str, revision: int = 1) -> Path:
    reqs = AGENTS[name.rsplit("-r", 1)[0]]
    fixtures = [r.split("==")[0] for r in reqs if r not in COMMON]
    main = MAIN_PY.format(extra_imports="import " + ", ".join(fixtures), revision=revision)
    return make_agent(env.tmp / "agents", name, requirements="".join(f"{r}\n" for r in reqs),
                      install_requires=["structlog"], extra={"src/main.py": main})


def change_code(agent: Path, revision: int) -> None:
    """The code-only change: one .py of the agent edited, requirements untouched."""
    main = agent / "src" / "main.py"
    lines = main.read_text().splitlines(keepends=True)
    main.write_text("".join(f"CODE_REVISION = {revision}\n" if ln.startswith("CODE_REVISION") else ln
                            for ln in lines))


# --- way A: the runtime today (venv + pip on the host, at every boot) -----------------

def a_command(env: Env, agent: Path) -> tuple[list[str], dict[str, str]]:
    # a fresh copy: the editable install writes *.egg-info into the source folder,
    # which must not leak into B's and C's build contexts
    venv, src = env.tmp / "venvs" / agent.name, env.tmp / "a-src" / agent.name
    script = f"""set -e
rm -rf '{venv}' '{src}'
mkdir -p '{src.parent}' && cp -r '{agent}' '{src}'
'{env.python311}' -m venv '{venv}'
'{venv}/bin/pip' install -q --no-cache-dir -i "$BENCH_INDEX" -e '{src}'
'{venv}/bin/pip' install -q --no-cache-dir -i "$BENCH_INDEX" -r '{src}/requirements.txt'
cd / && '{venv}/bin/python' -c 'import src.main'
"""
    # the host's pip config adds local find-links/indexes; A must see only the bench index
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return ["bash", "-c", script], {**clean, "PIP_CONFIG_FILE": os.devnull, "BENCH_INDEX": env.index_url,
                                    "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def way_a(env: Env, agents: list[Path]) -> float:
    """Seconds until `import src.main` (which imports every dependency) works, for all AGENTS at once."""
    seconds, _ = run_parallel([a_command(env, agent) for agent in agents])
    return seconds


# --- way B: a hand-written Dockerfile, docker-py, classic builder -------------------

def tar_context(files: dict[str, bytes], folder: Path | None = None) -> bytes:
    """A build context: FILES at the top, then FOLDER's files (minus .env, as a .dockerignore would)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for path in sorted(folder.rglob("*")) if folder else []:
            rel = path.relative_to(folder).as_posix()
            if rel != ".env":
                tar.add(path, arcname=rel, recursive=False)
    return buf.getvalue()


def b_context(env: Env, agent: Path) -> bytes:
    """What `docker build .` would send: the agent folder with the team's Dockerfile."""
    return tar_context({"Dockerfile": B_DOCKERFILE.format(base=env.base).encode()}, agent)


def b_build(engine: Engine, context: bytes, tag: str, index_url: str, nocache: bool) -> str:
    """Build through the same docker-py seam C uses (Engine.build: same engine,
    classic builder, --network host, cancels on Ctrl-C), so only the Dockerfile differs."""
    outcome = engine.build(context=context, buildargs={"INDEX_URL": index_url}, network_mode="host",
                           nocache=nocache, timeout=900)
    if outcome.image_id is None:
        raise RuntimeError(f"B build of {tag} failed: {outcome.error}\n" + "\n".join(outcome.lines[-30:]))
    engine.tag(outcome.image_id, tag)
    return outcome.image_id


def way_b(env: Env, agents: list[Path], nocache: bool = False) -> float:
    if len(agents) == 1:
        started = time.monotonic()
        b_build(env.engine, b_context(env, agents[0]), f"{B_REPO}/{agents[0].name}:latest", env.index_url, nocache)
        return time.monotonic() - started
    # several at once: one worker process each (see main(): --build-b)
    cmds = []
    for agent in agents:
        ctx = env.tmp / f"b-{agent.name}.tar"
        ctx.write_bytes(b_context(env, agent))
        cmds.append(([sys.executable, __file__, "--build-b", str(ctx), f"{B_REPO}/{agent.name}:latest"]
                     + (["--nocache"] if nocache else []), {**os.environ, "BENCH_INDEX": env.index_url}))
    seconds, _ = run_parallel(cmds)
    return seconds


# --- way C: agent-image build ------------------------------------------------------

def c_options(env: Env, name: str, nocache: bool) -> BuildOptions:
    return BuildOptions(repository=f"{C_REPO}/{name}", index_url=env.index_url, cache_dir=env.c_cache,
                        base_image=env.base, nocache=nocache, timeout=900)


def way_c(env: Env, agents: list[Path], nocache: bool = False) -> tuple[float, list[dict]]:
    if len(agents) == 1:
        started = time.monotonic()
        result = build_image(agents[0], c_options(env, agents[0].name, nocache), engine=env.engine)
        return time.monotonic() - started, [result.to_dict()]
    # several at once: the CLI, one process each, as four CI jobs on one runner would
    cmds = [([str(BIN / "agent-image"), "build", str(agent), "--json", "--repository", f"{C_REPO}/{agent.name}",
              "--index-url", env.index_url, "--cache-dir", str(env.c_cache), "--timeout", "900",
              "--base-image", env.base]
             + (["--no-cache"] if nocache else []), None) for agent in agents]
    seconds, outs = run_parallel(cmds)
    return seconds, [json.loads(out) for out in outs]


# --- measurements on images and the registry ------------------------------------------

def image_size(engine: Engine, ref: str) -> int:
    img = engine.image(ref)
    return img.size if img else 0


def blob_bytes(env: Env) -> int:
    """Bytes in the registry's blob store: the growth across a push is what it uploaded."""
    return sum(p.stat().st_size for p in env.registry_blobs.rglob("data")) if env.registry_blobs.exists() else 0


def push(env: Env, image: str, target: str) -> dict:
    """Tag IMAGE as TARGET in the bench registry, push it; bytes stored and layers sent vs. skipped."""
    env.engine.tag(env.engine.image(image).id, target)
    before = blob_bytes(env)
    statuses: dict[str, str] = {}

    def on_line(line: str) -> None:
        layer, _, status = line.partition(" ")
        if status.startswith(("Pushed", "Layer already exists", "Mounted from")):
            statuses[layer] = status.split(" ")[0]

    started = time.monotonic()
    digest = env.engine.push(target, on_line=on_line)
    return {"ref": target.rsplit(":", 1)[0] + "@" + digest, "seconds": round(time.monotonic() - started, 2),
            "bytes_stored": blob_bytes(env) - before,
            "layers_pushed": sum(1 for s in statuses.values() if s == "Pushed"),
            "layers_skipped": sum(1 for s in statuses.values() if s != "Pushed")}


def wait_health(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} never answered 200")


def remove_our_images(env: Env) -> None:
    """Every image tagged or pulled under our names (never agent-image/base, never the bench base)."""
    prefixes = (f"{B_REPO}/", f"{C_REPO}/", f"{env.registry.host}/bench-")
    for img in env.engine.api.images():
        names = (img.get("RepoTags") or []) + (img.get("RepoDigests") or [])
        if any(n.startswith(prefixes) for n in names):
            try:
                env.engine.api.remove_image(img["Id"], force=True)  # also prunes its untagged parents
            except Exception:  # noqa: BLE001 already gone with another one's parents
                pass


def remove_tree(engine: Engine, root_id: str) -> None:
    """ROOT_ID and every image built on it, leaves first: only our builds use the
    bench base, so this also catches intermediate images of an interrupted build."""
    children: dict[str, list[str]] = {}
    for img in engine.api.images(all=True):
        children.setdefault(img.get("ParentId") or "", []).append(img["Id"])
    order, todo = [], [root_id]
    while todo:
        node = todo.pop()
        order.append(node)
        todo += children.get(node, [])
    for image_id in reversed(order):
        try:
            engine.api.remove_image(image_id, force=True)
        except Exception:  # noqa: BLE001 gone already
            pass


# --- the cases --------------------------------------------------------------------

@dataclass
class Row:
    """One case: the samples of each way (one per repetition) and what C reported."""
    case: str
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict = field(default_factory=dict)

    @staticmethod
    def median(xs: list[float]) -> float | None:
        xs = sorted(xs)
        return None if not xs else (xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2)

    def way(self, name: str) -> float | None:
        return self.median(getattr(self, name))

    def ratio(self, other: str) -> float | None:
        c, o = self.way("c"), self.way(other)
        return round(c / o, 3) if c is not None and o else None

    def add(self, out: dict) -> None:
        for k, v in out.items():
            getattr(self, k).append(round(v, 3))


def side_by_side(turn: int, runs: dict) -> dict:
    """Run the ways back to back in a rotating order (ABC, BCA, CAB, ...) so none
    always runs first, or right after another way's burst, on a busy host."""
    keys = list(runs)
    order = keys[turn % len(keys):] + keys[:turn % len(keys)]
    return {k: runs[k]() for k in order}


def time_c(env: Env, agent: Path, nocache: bool = False, holder: list | None = None) -> float:
    seconds, results = way_c(env, [agent], nocache)
    if holder is not None:
        holder.append(results[0])
    return seconds


def index_stats(result: dict) -> dict:
    """What C asked of the index (its download cache at work), without the file lists."""
    return {k: v for k, v in result.get("index", {}).items() if k not in ("downloaded", "reused", "url")}


def time_cli_noop(env: Env, agent: Path) -> float:
    """The same no-op through the command a CI job runs: adds the Python start-up."""
    cmd = [str(BIN / "agent-image"), "build", str(agent), "--json", "--repository", f"{C_REPO}/{agent.name}",
           "--index-url", env.index_url, "--cache-dir", str(env.c_cache), "--base-image", env.base]
    seconds, outs = run_parallel([(cmd, None)])
    if not json.loads(outs[0]).get("cached"):
        raise RuntimeError("the CLI no-op build was not served from the input-digest cache")
    return seconds


def case_cold(env: Env, row: Row, agent: Path, turn: int) -> None:
    # emptied caches: our images and their untagged parents removed, BuildKit's
    # cache pruned, --no-cache for B and C, a fresh download cache for C, no pip
    # cache for A and B (their pip runs with --no-cache-dir)
    remove_our_images(env)
    env.engine.api.prune_builds()
    shutil.rmtree(env.c_cache, ignore_errors=True)
    res: list = []
    row.add(side_by_side(turn, {"a": lambda: way_a(env, [agent]), "b": lambda: way_b(env, [agent], nocache=True),
                                "c": lambda: time_c(env, agent, nocache=True, holder=res)}))
    row.extra.setdefault("c_index", []).append(index_stats(res[0]))


def case_code_only(env: Env, row: Row, agent: Path, turn: int, pushes: dict) -> None:
    # the cold images go to the registry first, so the code-only push shows what is new
    reg = env.registry.host
    pushes["b_before"] = push(env, f"{B_REPO}/{agent.name}:latest", f"{reg}/bench-b/{agent.name}:v{turn}a")
    pushes["c_before"] = push(env, f"{C_REPO}/{agent.name}:0.1.0", f"{reg}/bench-c/{agent.name}:v{turn}a")
    change_code(agent, 100 + turn)
    res: list = []
    row.add(side_by_side(turn, {"a": lambda: way_a(env, [agent]), "b": lambda: way_b(env, [agent]),
                                "c": lambda: time_c(env, agent, holder=res)}))
    row.extra.setdefault("c_steps_cached", []).append(res[0]["steps_cached"])
    row.extra.setdefault("c_index", []).append(index_stats(res[0]))
    pushes["b_code_only"] = push(env, f"{B_REPO}/{agent.name}:latest", f"{reg}/bench-b/{agent.name}:v{turn}b")
    pushes["c_code_only"] = push(env, f"{C_REPO}/{agent.name}:0.1.0", f"{reg}/bench-c/{agent.name}:v{turn}b")
    row.extra.setdefault("pushes", []).append(dict(pushes))
    row.note = f"C reused: {','.join(res[0]['steps_cached']) or 'nothing'}"


def case_noop(env: Env, row: Row, agent: Path, turn: int) -> None:
    res: list = []
    row.add(side_by_side(turn, {"a": lambda: way_a(env, [agent]), "b": lambda: way_b(env, [agent]),
                                "c": lambda: time_c(env, agent, holder=res)}))
    row.extra.setdefault("c_cached", []).append(res[0]["cached"])
    row.extra.setdefault("c_cli_s", []).append(round(time_cli_noop(env, agent), 3))
    row.note = f"C cached={all(row.extra['c_cached'])}"


def case_second(env: Env, row: Row, agent: Path, turn: int) -> None:
    res: list = []
    row.add(side_by_side(turn, {"a": lambda: way_a(env, [agent]), "b": lambda: way_b(env, [agent]),
                                "c": lambda: time_c(env, agent, holder=res)}))
    row.extra.setdefault("c_steps_cached", []).append(res[0]["steps_cached"])
    row.extra.setdefault("c_index", []).append(index_stats(res[0]))
    row.note = f"C reused: {','.join(res[0]['steps_cached']) or 'nothing'}"


def case_four(env: Env, row: Row, agents: list[Path], turn: int) -> None:
    row.add(side_by_side(turn, {"a": lambda: way_a(env, agents), "b": lambda: way_b(env, agents),
                                "c": lambda: way_c(env, agents)[0]}))
    row.note = "wall time, 4 processes per way"


def case_ready(env: Env, row: Row, agent: Path, pushed_ref: str, stack: list) -> None:
    """Runtime side: C's pushed image pulled onto a host that has only the base,
    started, /health 200 -- against A installing at boot (fresh venv) until importable."""
    row.a.append(round(way_a(env, [agent]), 3))
    remove_our_images(env)
    if env.engine.image(env.base) is None or env.engine.image(pushed_ref) is not None:
        raise RuntimeError("time to ready needs the base present and the agent image absent")
    port = free_port()
    started = time.monotonic()
    image = env.engine.pull(pushed_ref)
    pulled = time.monotonic()
    cid = env.engine.run(pushed_ref, env={"REST_PORT": "8080"}, ports={8080: port})
    stack.append(lambda: env.engine.stop(cid, timeout=2))
    wait_health(f"http://127.0.0.1:{port}/health")
    row.c.append(round(time.monotonic() - started, 3))
    row.extra.setdefault("c_pull_s", []).append(round(pulled - started, 3))
    env.engine.stop(cid, timeout=2)
    env.engine.api.remove_image(image.id, force=True)  # the next repetition pulls again
    row.note = "A: venv+pip+import; C: pull+start+/health 200"


# --- report -------------------------------------------------------------------------

def targets(rows: dict[str, Row]) -> dict[str, tuple[str, bool]]:
    """case -> (target text with the measured value, met?) on the medians"""
    cold, code, noop, ready = (rows[k] for k in ("cold build", "code-only rebuild", "no-op rebuild", "time to ready"))
    cc, cb = cold.way("c"), cold.way("b")
    k_cold, k_b = code.way("c") / cc, code.way("b") / code.way("c")
    k_ready = ready.way("a") / ready.way("c")
    return {
        "cold build": ("C <= B", cc <= cb),
        "code-only rebuild": (f"C <= 0.15x C cold ({k_cold:.2f}x) and B/C >= 5 ({k_b:.1f}x)",
                              k_cold <= 0.15 and k_b >= 5),
        "no-op rebuild": (f"C < 1 s and cached (max {max(noop.c):.2f} s)",
                          max(noop.c) < 1.0 and all(noop.extra.get("c_cached", [False]))),
        "time to ready": (f"C < 5 s and A/C >= 10 ({k_ready:.1f}x)", ready.way("c") < 5.0 and k_ready >= 10),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: list[Row], goals: dict[str, tuple[str, bool]]) -> str:
    head = ["case", "A s", "B s", "C s", "C/A", "C/B", "target"]
    body = []
    for r in rows:
        goal = goals.get(r.case)
        body.append([r.case, fmt(r.way("a")), fmt(r.way("b")), fmt(r.way("c"), 2), fmt(r.ratio("a"), 3),
                     fmt(r.ratio("b"), 3), f"{'PASS' if goal[1] else 'FAIL'}: {goal[0]}" if goal else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(b) for b in body])


def machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {"nproc": os.cpu_count(), "ram_gib": round(int(mem) / 1024 ** 2, 1),
            "docker": Engine().ping(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "kernel": os.uname().release, "loadavg_start": os.getloadavg()}


def footnotes(rows: dict[str, Row], sizes: dict, pushes: dict) -> str:
    mib = lambda n: f"{n / 1024 ** 2:.1f} MiB"  # noqa: E731
    b, c = pushes["b_code_only"], pushes["c_code_only"]
    samples = "; ".join(f"{r.case}: A {r.a} B {r.b} C {r.c}" for r in rows.values())
    return "\n".join([
        f"image size: B {mib(sizes['b_image'])}, C {mib(sizes['c_image'])}, base {mib(sizes['base'])}; "
        f"agent-unique (image - base): B {mib(sizes['b_agent_unique'])}, C {mib(sizes['c_agent_unique'])}",
        f"bytes pushed for the code-only change (registry blob store growth): "
        f"B {b['bytes_stored']:,} ({b['layers_pushed']} layers sent, {b['layers_skipped']} already there), "
        f"C {c['bytes_stored']:,} ({c['layers_pushed']} layers sent, {c['layers_skipped']} already there)",
        f"time to ready, C: pull {rows['time to ready'].extra['c_pull_s']} s, rest is start + /health",
        f"C reused in code-only rebuilds: {rows['code-only rebuild'].extra['c_steps_cached']}",
        f"C no-op through the CLI (process start included): {rows['no-op rebuild'].extra['c_cli_s']} s",
        f"C's download cache, second agent: {rows['second agent'].extra['c_index'][-1]}",
        f"samples (s): {samples}",
    ])


# --- main ---------------------------------------------------------------------------

def bench(stack: list, reps: int) -> None:
    t0 = time.monotonic()
    info = machine()
    env = start_env(stack)
    make_base(env, stack)
    stack.append(lambda: remove_our_images(env))  # runs before the base is removed (last in, first out)
    remove_our_images(env)  # leftovers of an interrupted earlier run
    say(f"index {env.index_url.split('@')[-1]}, registry {env.registry.host}, base {env.base}, "
        f"builder log {LOG}")
    one = write_agent(env, "bench-one")
    quads = [write_agent(env, f"bench-q{i}") for i in range(1, 5)]
    rows = {name: Row(name) for name in ("cold build", "code-only rebuild", "no-op rebuild", "second agent",
                                         "four agents at once", "time to ready")}
    pushes: dict = {}
    for rep in range(reps):
        two = write_agent(env, f"bench-two-r{rep}")  # a new "second agent" each time, same dependencies
        for turn, (name, run) in enumerate([
                ("cold build", lambda r: case_cold(env, r, one, rep)),
                ("code-only rebuild", lambda r: case_code_only(env, r, one, rep + 1, pushes)),
                ("no-op rebuild", lambda r: case_noop(env, r, one, rep + 2)),
                ("second agent", lambda r: case_second(env, r, two, rep))]):
            say(f"[{rep + 1}/{reps}] {name} ...")
            run(rows[name])
            say(f"    A {rows[name].a[-1]} s, B {rows[name].b[-1]} s, C {rows[name].c[-1]} s")
    say("four agents at once ...")
    case_four(env, rows["four agents at once"], quads, 0)
    say(f"    A {rows['four agents at once'].a[-1]} s, B {rows['four agents at once'].b[-1]} s, "
        f"C {rows['four agents at once'].c[-1]} s")
    base = image_size(env.engine, env.base)
    sizes = {"base": base}
    for way, ref in (("b", f"{B_REPO}/bench-one:latest"), ("c", f"{C_REPO}/bench-one:0.1.0")):
        sizes[f"{way}_image"] = image_size(env.engine, ref)
        sizes[f"{way}_agent_unique"] = sizes[f"{way}_image"] - base
    for rep in range(reps):
        say(f"[{rep + 1}/{reps}] time to ready ...")
        case_ready(env, rows["time to ready"], one, pushes["c_code_only"]["ref"], stack)
        say(f"    A {rows['time to ready'].a[-1]} s, C {rows['time to ready'].c[-1]} s")
    goals = targets(rows)
    text = table(list(rows.values()), goals)
    total = time.monotonic() - t0
    print(f"{text}\n\nmedians of {reps} runs per case (four agents at once: 1)\n"
          f"{footnotes(rows, sizes, pushes)}\n\ntotal bench time: {total:.0f} s on {info['nproc']} cores, "
          f"load average {info['loadavg_start'][0]:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    RESULTS.write_text(json.dumps({
        "machine": {**info, "loadavg_end": os.getloadavg()}, "reps": reps,
        "rows": [{"case": r.case, "a_s": r.way("a"), "b_s": r.way("b"), "c_s": r.way("c"),
                  "c_over_a": r.ratio("a"), "c_over_b": r.ratio("b"), "samples": {"a": r.a, "b": r.b, "c": r.c},
                  "note": r.note, **r.extra,
                  **({"target": goals[r.case][0], "pass": goals[r.case][1]} if r.case in goals else {})}
                 for r in rows.values()],
        "sizes_bytes": sizes, "pushes": pushes, "total_s": round(total, 1), "table": text,
    }, indent=2, default=str) + "\n")


LOG = Path(__file__).resolve().parent / "last-run.log"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def build_b_worker(argv: list[str]) -> int:
    """Worker for B in the 'four at once' case: one docker-py build per process."""
    p = argparse.ArgumentParser()
    p.add_argument("--build-b", required=True)
    p.add_argument("tag")
    p.add_argument("--nocache", action="store_true")
    a = p.parse_args(argv)
    b_build(Engine(api_timeout=600), Path(a.build_b).read_bytes(), a.tag, os.environ["BENCH_INDEX"], a.nocache)
    return 0


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    if "--build-b" in sys.argv:
        return build_b_worker(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="repetitions of each case but 'four at once' (default 3)")
    args = p.parse_args()
    from builder.core.log import configure
    log_file = open(LOG, "w")  # the builder's own log lines: kept for reading, off the terminal
    configure(json_output=False, stream=log_file)
    signal.signal(signal.SIGTERM, _terminate)  # a cancelled job cleans up like Ctrl-C
    stack: list = []  # cleanups, run last-in first-out
    try:
        bench(stack, args.reps)
        return 0
    except (KeyboardInterrupt, BuildInterruptedError):  # the builder turns Ctrl-C mid-build into the latter
        say("interrupted, cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        CHILDREN.stop_all()
        for undo in reversed(stack):
            try:
                undo()
            except Exception as exc:  # noqa: BLE001 keep cleaning the rest
                say(f"cleanup step failed: {exc}")
        log_file.close()


if __name__ == "__main__":
    sys.exit(main())
