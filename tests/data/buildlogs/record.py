"""Record real build logs for tests/test_buildlog.py (needs the engine; the tests do not).

    .venv/bin/python tests/data/buildlogs/record.py [--variant VARIANT ...] [--case NAME ...]

(about 5 minutes for all four variants; needs scripts/setup.sh's engine and base images,
and the uv wheel, which it downloads once into ~/.cache/agent-image/buildlog-wheels)

Drives the same pipeline as ``builder.api.build_image`` (prepare -> index
proxy -> ``Engine.build``) against a real pypiserver on loopback, but stops
before classifying: it writes the engine's log lines as the classifier sees
them (``VARIANT/CASE.log``, one line per line) and a sidecar
(``VARIANT/CASE.json``) with what a test needs to rebuild the ``Failure``:
step name, failed step number, requirements.txt, the generated deps lines,
the engine's final error string and the index proxy's auth/unreachable notes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from builder.api import BuildOptions, prepare  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from builder.build.proxy.cache import DownloadCache  # noqa: E402
from builder.build.proxy.index import resolve_index  # noqa: E402
from builder.build.proxy.server import IndexProxy  # noqa: E402
from builder.build.steplog import marked_step, step_lines  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from builder.core.labels import TOOL_PIP_LABEL  # noqa: E402
from builder.package.piplines import logical_lines  # noqa: E402
from builder.package.reader import open_package  # noqa: E402
from builder.plan.dockerfile import TOOL_PIP_DIR, UV_VERSION  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index, start_pypiserver  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.paths import BIN, CACHE  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {  # folder -> (agent.yaml runtime, installer, whole lines?, the base's tools pip for the deps step?)
    "pip23-py311": ("python3.11", "pip", False, False),
    "pip20-py39": ("python3.9", "pip", False, False),
    # the dependency layer with the base's current pip (/opt/agent-image/tools/pip), the package step with the venv's
    "pip26-py311": ("python3.11", "pip", False, True),
    "pip25-py39": ("python3.9", "pip", False, True),
    # uv writes one line in several write()s. Engine re-cuts the stream at newlines
    # ("uv-linebuffered", what builds see); "uv" keeps the raw chunks, as an older
    # Engine read them, so buildlog.rejoin stays tested on lines cut in pieces.
    "uv": ("python3.11", "uv", False, False),
    "uv-linebuffered": ("python3.11", "uv", True, False),
}
ZERO_HASH = "sha256:" + "0" * 64
BROKEN_SETUP = "raise SystemExit('setup.py is broken on purpose')\n"

# case -> requirements.txt, make_agent kwargs, which index ("ok", "bad-password", "down", "nothing")
CASES: dict[str, dict] = {
    # requirements pin tinyreq 2.0 over setup.py's tinyreq<2 and tinydep's -> pip's two conflict warnings
    "success": {"requirements": "structlog==24.4.0\nsharedlib==1.0\ntinyreq==2.0\n",
                "install_requires": ["tinyreq<2", "tinydep==1.0"]},
    "auth": {"requirements": "tinyreq==1.0\n", "index": "bad-password"},
    "unreachable": {"requirements": "tinyreq==1.1\n", "index": "down"},
    "hash": {"requirements": f"tinyreq==1.0 --hash={ZERO_HASH}\n"},
    "hash_missing": {"requirements": "tinyreq==1.0 --hash=sha256:{tinyreq_sha}\ntinydep==1.0\n"},
    "conflict": {"requirements": "tinydep==1.0\ntinyreq==2.0\n"},
    "conflict_setup": {"requirements": "-e .\ntinyreq==2.0\n", "install_requires": ["tinyreq<2"]},
    "not_found": {"requirements": "tinyreq==1.0\nnot-a-real-package==999.999.999\n"},
    "version_not_found": {"requirements": "tinyreq==1.7\n"},
    "syntax": {"requirements": "tinyreq==1.0\ninvalid syntax here\n"},
    "wheel_build": {"requirements": "needscc==1.0\n"},
    "wheel_build_setup": {"requirements": "brokensdist==1.0\n"},
    "editable": {"requirements": None, "setup_py": BROKEN_SETUP},
}
# the test index holds charset-normalizer for CPython 3.11 only: a transitive dependency with no wheel
PY39_ONLY = {"no_wheel_for_python": {"requirements": "requests==2.32.3\n"}}
# with uv, the tools step (pip installing uv) meets a dead index first when its layer is not cached
UV_ONLY = {"unreachable_tools": {"requirements": "tinyreq==1.0\n", "index": "nothing"}}


def extra_sdists(house: Path, work: Path) -> None:
    """An sdist whose setup.py fails (no compiler involved), and the uv wheel for the tools step."""
    proj = work / "brokensdist-1.0"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "setup.py").write_text("import os\nif os.environ.get('BUILD_OK') != '1':\n"
                                   "    raise RuntimeError('brokensdist: setup.py fails on purpose')\n"
                                   "from setuptools import setup\nsetup(name='brokensdist', version='1.0')\n")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(house)], cwd=proj, check=True,
                   capture_output=True, env={"BUILD_OK": "1", "PATH": "/usr/bin:/bin"})
    uv_cache = CACHE / "buildlog-wheels"
    if not list(uv_cache.glob(f"uv-{UV_VERSION}-*.whl")):
        subprocess.run([str(BIN / "pip"), "download", "-q", "--only-binary=:all:", "--no-deps",
                        "--platform", "manylinux_2_17_x86_64", "--python-version", "3.9",
                        "-d", str(uv_cache), f"uv=={UV_VERSION}"], check=True)
    for whl in uv_cache.glob(f"uv-{UV_VERSION}-*.whl"):
        shutil.copy(whl, house)


class RawChunkEngine(Engine):
    """Engine that reads each stream chunk as it came, without re-cutting at newlines."""

    @staticmethod
    def _chunks(stream):
        yield from stream


def installer_version(engine: Engine, runtime: str, installer: str, tool_pip: bool = False) -> str:
    if installer == "uv":
        return f"uv {UV_VERSION}"
    base = base_image_for(runtime.removeprefix("python"))
    out = subprocess.run(["docker", "run", "--rm", base, "/opt/venv/bin/python", "-m", "pip", "--version"],
                         capture_output=True, text=True)
    venv_pip = " ".join(out.stdout.split()[:2]) or "pip ?"
    if not tool_pip:
        return venv_pip
    out = subprocess.run(["docker", "run", "--rm", "-e", f"PYTHONPATH={TOOL_PIP_DIR}", base, "/opt/venv/bin/python",
                          "-m", "pip", "--version"], capture_output=True, text=True)
    return f"{' '.join(out.stdout.split()[:2]) or 'pip ?'} (dependency layer), {venv_pip} (package)"


def build_once(engine: Engine, agent: Path, index_url: str, installer: str, cache_dir: Path,
               nocache: bool = False, tool_pip: bool = False):
    """One build through the real pipeline; returns (outcome, rendered, split, proxy stats)."""
    options = BuildOptions(index_url=index_url, installer=installer, use_cache=False)
    with open_package(agent) as pkg:
        upstream = resolve_index(index_url, {})
        base = engine.require_image(base_image_for(pkg.manifest.python), hint="run scripts/setup.sh")
        split, rendered, context, _ = prepare(pkg, options, upstream.url, base.id,
                                              tool_pip=tool_pip and bool(base.labels.get(TOOL_PIP_LABEL)))
        with IndexProxy(upstream, DownloadCache(cache_dir)) as proxy:
            outcome = engine.build(context=context.data, buildargs={"http_proxy": proxy.address},
                                   timeout=300, nocache=nocache)
            stats = proxy.stats
    return outcome, rendered, split, stats


def run_case(engine: Engine, agent: Path, index, which: str, runtime: str, installer: str, work: Path,
             built: list[str], tool_pip: bool = False):
    """Point the build at the index WHICH describes and build AGENT once."""
    work.mkdir(parents=True)
    good = index.url_for("alice")
    url = good
    if which == "bad-password":
        url = index.url.replace("http://", "http://alice:wrong-password-7777@")
    elif which == "nothing":
        url = f"http://127.0.0.1:{free_port()}/simple/"
    elif which == "down":
        # an index that worked (so uv's tools layer is cached), then went away
        pkgs = work / "down" / "packages"
        shutil.copytree(index.root, pkgs)
        url, down = start_pypiserver(pkgs)
        good = url
    try:
        if which in ("bad-password", "down") and installer == "uv":
            # build the tools layer for this index identity right before, so the failure reaches uv
            warm = make_agent(work / "warm", "bl-warmup", requirements="sharedlib==1.0\n", runtime=runtime)
            o, *_ = build_once(engine, warm, good, installer, work / "cache-warm")
            assert o.image_id, o.lines[-20:]
            built.append(o.image_id)
    finally:
        if which == "down":
            down.terminate()
            down.wait(10)
    started = time.monotonic()
    # a healthy index: build every step, so a success logs its installs even when an
    # earlier variant built the same layers (the failing cases need uv's tools layer cached)
    outcome, rendered, split, stats = build_once(engine, agent, url, installer, work / "cache",
                                                 nocache=which == "ok", tool_pip=tool_pip)
    return outcome, rendered, split, stats, url, time.monotonic() - started


def record(variant: str, names: list[str], engine: Engine, index, work: Path, built: list[str]) -> None:
    runtime, installer, whole_lines, tool_pip = VARIANTS[variant]
    if not whole_lines:
        engine = RawChunkEngine()
    out_dir = HERE / variant
    out_dir.mkdir(exist_ok=True)
    version = installer_version(engine, runtime, installer, tool_pip)
    cases = {**CASES, **(UV_ONLY if installer == "uv" else {}), **(PY39_ONLY if runtime == "python3.9" else {})}
    sha = hashlib.sha256(next(index.root.glob("tinyreq-1.0-*.whl")).read_bytes()).hexdigest()
    for name in names or list(cases):
        if name not in cases:
            continue
        case = cases[name]
        reqs = case["requirements"].replace("{tinyreq_sha}", sha) if case["requirements"] else None
        agent_root = Path(tempfile.mkdtemp(dir=work))
        extra = {"setup.py": case["setup_py"]} if "setup_py" in case else None
        agent = make_agent(agent_root, f"bl-{name.replace('_', '-')}", requirements=reqs, runtime=runtime,
                           install_requires=case.get("install_requires", ()), extra=extra)
        which = case.get("index", "ok")
        for attempt in range(3):
            outcome, rendered, split, stats, url, took = run_case(engine, agent, index, which, runtime, installer,
                                                                  work / f"{variant}-{name}-{attempt}", built, tool_pip)
            step = rendered.step_name(outcome.failed_step or 0) if outcome.error else None
            if step:  # as builder.api names it: the install after the code says which of the seed's installs failed
                step = marked_step(step_lines(outcome.lines, outcome.failed_step), step)[0]
            # uv's tools layer was not cached after all (someone pruned the engine): again
            if not (installer == "uv" and which != "nothing" and step == "tools"):
                break
        ok = outcome.image_id is not None and outcome.error is None
        (out_dir / f"{name}.log").write_text("".join(f"{ln}\n" for ln in outcome.lines))
        side = {
            "case": name, "variant": variant, "runtime": runtime, "installer": version, "index": which,
            "ok": ok, "step": step, "failed_step": None if ok else outcome.failed_step,
            "error": outcome.error or "", "requirements_txt": reqs,
            "requirements_file_lines": [asdict(ln) for ln in logical_lines(reqs)] if reqs else [],
            "deps": [asdict(ln) for ln in split.deps],
            "install_requires": list(case.get("install_requires", ())),
            "setup_py": case.get("setup_py"),
            "auth_failures": list(stats.auth_failures), "unreachable": list(stats.unreachable),
            "proxy_not_found": list(stats.not_found),  # index pages/files the proxy got a 404 for
            "engine": type(engine).__name__,
            "build_seconds": round(took, 1),
        }
        (out_dir / f"{name}.json").write_text(json.dumps(side, indent=2) + "\n")
        print(f"{variant:12} {name:20} ok={ok} step={step} error={outcome.error!r:.80} ({took:.0f}s)", flush=True)
        if outcome.image_id:
            built.append(outcome.image_id)  # removed at the end: its layers cache uv's tools step meanwhile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", choices=list(VARIANTS))
    ap.add_argument("--case", action="append", default=[])
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    engine = Engine()
    engine.ping()
    with tempfile.TemporaryDirectory(prefix="buildlogs-") as tmp:
        work = Path(tmp)
        house = fill_wheelhouse(work / "wheelhouse", work / "src")
        extra_sdists(house, work / "src")
        index = start_index(work / "index", house)
        built: list[str] = []
        try:
            for variant in args.variant or list(VARIANTS):
                record(variant, args.case, engine, index, work, built)
        finally:
            for image_id in built:
                subprocess.run(["docker", "rmi", "-f", image_id], capture_output=True)
            index.proc.terminate()
            index.proc.wait(5)


if __name__ == "__main__":
    main()
