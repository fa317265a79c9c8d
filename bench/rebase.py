#!/usr/bin/env python3
"""Patching the base under N agent images: `agent-image rebase` vs. a warm rebuild.

    .venv/bin/python bench/rebase.py --agents 50     # prints a table, writes bench/rebase-results.json

Started here and removed at the end: a pypiserver with the tests' wheelhouse, a
docker-registry on 127.0.0.1, the images tagged under the registry's host and
under bench-rebase/. Steps: push the base (`agent-image base --push`); build and
push N agents on it; make a patched base (a new file in the Python image under
it, so every base layer is new, as a Debian update gives) and push it; then

- **rebase**: one `agent-image rebase REF... --base NEW --json` for all N
  (process start included), per-image seconds and bytes from its JSON, and the
  registry's blob-store growth;
- **rebuild**: `build_image` of each agent on the new base with warm caches (the
  engine's layers and the download cache from the first builds) and `--push
  --overwrite`, which is what moving N agents to a new base costs today.

Nothing is asserted; the numbers are for reading (bench/README.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.api import BuildOptions, build_image  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "rebase-results.json"
LOG = Path(__file__).resolve().parent / "last-rebase.log"  # the builder's log lines (not committed)
LOCAL = "bench-rebase"


def cli(*args: str) -> str:
    proc = subprocess.run([str(BIN / "agent-image"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"agent-image {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")
    return proc.stdout


def store_bytes(reg: Registry) -> int:
    return sum(p.stat().st_size for p in (reg.root / "data").rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=50, help="how many agent images (default 50)")
    args = ap.parse_args()
    n = args.agents
    from builder.core.log import configure
    configure(json_output=False, stream=open(LOG, "w"))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-rebase-"))
    engine = Engine()
    index = start_index(work / "index", fill_wheelhouse(work / "wheels", work / "src"))
    reg = Registry(work / "registry", free_port())
    (work / "registry").mkdir()
    reg.start()
    index_url = index.url_for("alice")
    try:
        old_base = cli("base", "--registry", reg.host, "--push").split()[-1]
        agents = [make_agent(work / "agents", f"rb-{i:03d}", requirements="tinyreq==1.1\nrequests==2.32.3\n",
                             env_file=None) for i in range(n)]
        opts = BuildOptions(index_url=index_url, registry=f"{reg.host}/rb", push=True, base_image=old_base,
                            cache_dir=work / "cache")
        t0 = time.monotonic()
        first = [build_image(a, opts) for a in agents]
        setup_build_s = time.monotonic() - t0
        for _ in engine.api.build(fileobj=io.BytesIO(b"FROM agent-image/python:3.11\n"
                                                     b"RUN echo CVE-2026-0001 fixed > /etc/agent-image-patch\n"),
                                  tag=f"{LOCAL}/python-patched:3.11", rm=True, decode=True):
            pass
        new_base = cli("base", "--from", f"{LOCAL}/python-patched:3.11", "--tag", f"{LOCAL}/base:py3.11",
                       "--registry", f"{reg.host}/patched", "--push").split()[-1]

        refs = [r.image for r in first]
        before = store_bytes(reg)
        t0 = time.monotonic()
        out = json.loads(cli("rebase", *refs, "--base", new_base, "--json"))
        rebase_wall = time.monotonic() - t0
        rebase_growth = store_bytes(reg) - before
        results = out["results"]
        assert out["ok"] and len(results) == n
        per = [r["duration_s"] for r in results]
        sent = [r["bytes_uploaded"] for r in results]

        rebuild_opts = BuildOptions(index_url=index_url, registry=f"{reg.host}/rb", push=True, base_image=new_base,
                                    cache_dir=work / "cache", overwrite=True)
        before = store_bytes(reg)
        times = []
        for a in agents:
            t1 = time.monotonic()
            r = build_image(a, rebuild_opts)
            assert not r.cached
            times.append(time.monotonic() - t1)
        rebuild_wall = sum(times)
        rebuild_growth = store_bytes(reg) - before

        row = {
            "agents": n,
            "rebase_wall_s": round(rebase_wall, 3),
            "rebase_s_per_image_wall": round(rebase_wall / n, 4),
            "rebase_s_per_image_median": round(statistics.median(per), 4),
            "rebase_s_per_image_max": round(max(per), 4),
            "rebase_bytes_uploaded_per_image": round(statistics.mean(sent)),
            "rebase_bytes_uploaded_max": max(sent),
            "rebase_registry_growth_per_image": round(rebase_growth / n),
            "rebuild_wall_s": round(rebuild_wall, 3),
            "rebuild_s_per_image": round(rebuild_wall / n, 3),
            "rebuild_registry_growth_per_image": round(rebuild_growth / n),
            "ratio_rebuild_over_rebase": round(rebuild_wall / rebase_wall, 1),
            "layers_kept": sorted({r["layers_kept"] for r in results}),
            "first_builds_s": round(setup_build_s, 1),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "total_bench_s": round(time.monotonic() - started, 1),
            "docker": engine.ping(),
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        RESULTS.write_text(json.dumps(row, indent=2) + "\n")
        print(f"| {n} agents | wall s | s/image | bytes uploaded/image | registry growth/image |")
        print("|---|---|---|---|---|")
        print(f"| rebase (one `agent-image rebase` call) | {row['rebase_wall_s']} | {row['rebase_s_per_image_wall']} "
              f"(median {row['rebase_s_per_image_median']}, max {row['rebase_s_per_image_max']}) | "
              f"{row['rebase_bytes_uploaded_per_image']:,} (max {row['rebase_bytes_uploaded_max']:,}) | "
              f"{row['rebase_registry_growth_per_image']:,} |")
        print(f"| warm rebuild + push | {row['rebuild_wall_s']} | {row['rebuild_s_per_image']} | - | "
              f"{row['rebuild_registry_growth_per_image']:,} |")
        print(f"\nrebuild / rebase: {row['ratio_rebuild_over_rebase']}x; agent layers kept per image: "
              f"{row['layers_kept']}; load average {row['load_average'][0]} at start, {row['load_average'][1]} at end; "
              f"total {row['total_bench_s']} s")
    finally:
        reg.stop()
        index.proc.terminate()
        index.proc.wait(10)
        for image in engine.api.images():
            for tag in image.get("RepoTags") or []:
                if tag.startswith((f"{reg.host}/", f"{LOCAL}/")):
                    try:
                        engine.api.remove_image(tag, force=True)
                    except Exception:
                        pass
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
