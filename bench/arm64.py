#!/usr/bin/env python3
"""arm64 (under QEMU) against amd64 builds on this amd64 runner, side by side in one run (issue 28):

    PYTHONPATH=. .venv/bin/python bench/arm64.py [--set hello|seed] [--reps 1] [--push]

For each repetition, three ways (the order alternates between repetitions): amd64; arm64 in a
multi-platform build (after the amd64 image, as `build --platform linux/amd64,linux/arm64` builds it);
arm64 alone (`--platform linux/arm64`). Each:
  cold       `build_image` with --no-cache (the dependency image rebuilt too) and an empty
             download cache
  code-only  one line of src/main.py changed, built again (the agent's own layer cache)
Prints medians and the ratios arm64/amd64 (goals: cold <= 2x, code-only <= 1.5x), where the
arm64 cold build's seconds went (per build step), and writes bench/results-arm64.json.

--set seed is bench/real.py's seed agent (langchain-openai, fastapi, uvicorn, structlog,
requests) from the public index; --set hello is examples/hello-agent from the public index.
--push then also pushes the agent for both platforms as one index to a registry on loopback,
pulls the arm64 image back and runs it under emulation until /health answers (the issue's
"done when"), and reports each step's seconds. Needs scripts/setup.sh (QEMU, the arm64 base)
and https://pypi.org/simple/; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real import CA, MAIN_PY, PYPI, SETS, reachable  # noqa: E402
from timeline import TimedEngine, breakdown  # noqa: E402

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.core.platforms import emulation_ready  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

PREFIX = "ai28-bench-arm64"  # every image we tag lives under it; cleanup removes exactly those
RESULTS = Path(__file__).resolve().parent / "results-arm64.json"
PLATFORMS = ("linux/amd64", "linux/arm64")


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def make(which: str, tmp: Path, name: str) -> Path:
    if which == "hello":
        return shutil.copytree(ROOT / "examples" / "hello-agent", tmp / name)
    reqs, imports = SETS[which]
    return make_agent(tmp, name, requirements="".join(f"{r}\n" for r in reqs), install_requires=["structlog"],
                      extra={"src/main.py": MAIN_PY.format(imports=imports, revision=1)})


def change_code(agent: Path, revision: int) -> None:
    main = agent / "src" / "main.py"
    main.write_text(main.read_text() + f"\nCODE_REVISION_BENCH = {revision}\n")


def build(engine: TimedEngine, agent: Path, platform: str, cache: Path, *, nocache: bool,
          host_deps: str = "") -> tuple[float, dict]:
    opts = BuildOptions(repository=f"{PREFIX}/{agent.name}", index_url=PYPI, ca_bundle=CA, cache_dir=cache,
                        nocache=nocache, timeout=1800, platform=platform, platform_tags=True,
                        host_deps_image=host_deps)
    engine.timelines = []
    t = time.monotonic()
    result = build_image(agent, opts, engine=engine)
    took = time.monotonic() - t
    steps = [row for tl in engine.timelines for row in breakdown(tl) if row[0].startswith("step")]
    return took, {"deps_origin": result.deps_origin, "deps_image": result.deps_image,
                  "steps_cached": result.steps_cached, "steps": steps}


# the ways an image is built here: amd64; arm64 inside a multi-platform build (after the amd64 image of
# the same agent, as `build --platform linux/amd64,linux/arm64` does: its editable install may run on the
# host's CPU FROM the amd64 dependency image); arm64 alone (`--platform linux/arm64`: that install emulated)
WAYS = ("amd64", "arm64", "arm64-alone")


def measure(which: str, reps: int, tmp: Path) -> dict:
    engine = TimedEngine(api_timeout=1800)
    samples: dict[str, dict[str, list[float]]] = {w: {"cold": [], "code": []} for w in WAYS}
    details: dict[str, dict] = {}
    for rep in range(reps):
        order = WAYS if rep % 2 == 0 else ("arm64-alone", "amd64", "arm64")  # arm64 always after its amd64
        host_deps = ""
        for way in order:
            platform = "linux/amd64" if way == "amd64" else "linux/arm64"
            agent = make(which, tmp / f"r{rep}-{way}", f"{which}-{way}-r{rep}")
            cache = tmp / f"cache-{way}-r{rep}"  # empty: a cold runner
            extra = host_deps if way == "arm64" else ""
            took, info = build(engine, agent, platform, cache, nocache=True, host_deps=extra)
            samples[way]["cold"].append(took)
            details[f"{way} cold r{rep}"] = info
            host_deps = info["deps_image"] if way == "amd64" else host_deps
            say(f"{way} cold {took:.1f} s (deps image {info['deps_origin']})")
            change_code(agent, 2)
            took, info = build(engine, agent, platform, cache, nocache=False, host_deps=extra)
            samples[way]["code"].append(took)
            details[f"{way} code-only r{rep}"] = info
            say(f"{way} code-only {took:.2f} s")
    med = {w: {case: statistics.median(v) for case, v in cases.items()} for w, cases in samples.items()}
    ratios = {w: {case: med[w][case] / med["amd64"][case] for case in ("cold", "code")} for w in WAYS[1:]}
    return {"set": which, "reps": reps, "samples": samples, "medians": med, "ratios": ratios, "details": details}


def push_both(which: str, tmp: Path) -> dict:
    """The agent for both platforms as one index, the arm64 image pulled back and run (emulated)."""
    reg = Registry(tmp / "registry", free_port())
    (tmp / "registry").mkdir()
    reg.start()
    out: dict = {}
    try:
        agent = make(which, tmp / "push", f"{which}-multi")
        cli = [sys.executable, "-m", "builder.cli.main"]
        prefix = f"{reg.host}/{PREFIX}"
        steps = [("build+push", ["build", str(agent), "--platform", ",".join(PLATFORMS), "--registry", prefix,
                                 "--push", "--index-url", PYPI, "--ca-bundle", CA, "--timeout", "1800"]),
                 ("pull arm64", ["pull", "{image}", "--platform", "linux/arm64"])]
        image, pulled = "", ""
        for name, args in steps:
            t = time.monotonic()
            proc = subprocess.run(cli + [a.format(image=image) for a in args] + ["--json"], capture_output=True,
                                  text=True, cwd=ROOT)
            took = time.monotonic() - t
            result = json.loads(proc.stdout) if proc.stdout.strip() else {"stderr": proc.stderr[-2000:]}
            image = image or result.get("image", "")  # the index's tag, REGISTRY/PREFIX/NAME:VERSION
            pulled = result.get("image_id", "") if name == "pull arm64" else pulled
            out[name] = {"seconds": round(took, 1), "exit": proc.returncode, "result": result}
            say(f"{name}: exit {proc.returncode} in {took:.1f} s")
            if proc.returncode:
                say(proc.stderr[-2000:])
                return out
        out["run arm64 until /health"] = serve(pulled)
    finally:
        reg.stop()
    return out


def serve(image_id: str) -> dict:
    """The pulled arm64 image started (QEMU runs it), timed until GET /health is 200. On the host's
    network with its own REST_PORT: this runner's docker0 bridge may be gone (another engine
    on the host), and `agent-image run` publishes the port on it."""
    port, name = free_port(), f"{PREFIX}-serve-{time.time_ns()}"
    t = time.monotonic()
    subprocess.run(["docker", "run", "-d", "--name", name, "--network", "host", "-e", f"REST_PORT={port}",
                    image_id], check=True, capture_output=True)
    try:
        while time.monotonic() - t < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        body = json.loads(resp.read())
                        took = time.monotonic() - t
                        say(f"arm64 image healthy in {took:.1f} s: {body}")
                        return {"seconds": round(took, 1), "exit": 0, "health": body}
            except OSError:
                time.sleep(0.5)
        return {"seconds": None, "exit": 1, "logs": subprocess.run(["docker", "logs", name], capture_output=True,
                                                                    text=True).stderr[-2000:]}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def cleanup() -> None:
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    ours = [t for t in tags if PREFIX in t]
    if ours:
        subprocess.run(["docker", "rmi", "-f", *ours], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["hello", *SETS], default="seed")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--push", action="store_true", help="also push both platforms as one index and run arm64")
    args = ap.parse_args()
    why = reachable()
    if why:
        say(f"the public index is not reachable ({why}); nothing measured")
        return 0
    if not emulation_ready("linux/arm64"):
        say("no QEMU for arm64 here: run scripts/setup.sh first")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="ai28-bench-arm64-"))
    try:
        report = measure(args.set, args.reps, tmp)
        if args.push:
            report["push"] = push_both(args.set, tmp)
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    med, ratios = report["medians"], report["ratios"]
    print(f"\n{args.set} agent, {args.reps} rep(s), medians in seconds (this amd64 runner, arm64 under QEMU)")
    print(f"{'case':<10} {'amd64':>8} {'arm64':>8} {'ratio':>7} {'alone':>8} {'ratio':>7}  goal")
    for case, goal in (("cold", 2.0), ("code", 1.5)):
        r, ra = ratios["arm64"][case], ratios["arm64-alone"][case]
        print(f"{case:<10} {med['amd64'][case]:8.2f} {med['arm64'][case]:8.2f} {r:6.2f}x "
              f"{med['arm64-alone'][case]:8.2f} {ra:6.2f}x  <= {goal}x {'met' if r <= goal else 'MISSED'}"
              f" ({'met' if ra <= goal else 'missed'} alone)")
    for way in ("arm64", "arm64-alone"):
        cold = report["details"].get(f"{way} cold r0", {}).get("steps", [])
        print(f"\n{way} cold build, slowest steps:")
        for name, secs in sorted(cold, key=lambda r: -r[1])[:6]:
            print(f"  {secs:6.2f} s  {name}")
    for name, step in report.get("push", {}).items():
        print(f"push: {name}: exit {step['exit']}, {step['seconds']} s")
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
