"""A runner that builds for hours: `.venv/bin/python bench/soak.py [--builds 200] [--lanes 4] [--agents 40]`.

Two phases, side by side in one run, each from a cold start (its own private
base, download cache, registry prefix and lease-free engine state):

1. one lane doing BUILDS/2 builds (the reference);
2. LANES lanes doing BUILDS builds, one `agent-image build` process per build.

Every build pushes to a local registry (Debian's docker-registry) from a local
index (pypiserver), with `--prune-max-bytes BUDGET --prune-scope` this run's
prefix. Agents change their code every build and their requirement lines every
third build; some fail on purpose (a requirement the index lacks), some are
cancelled with SIGINT mid-build, one builder is killed with SIGKILL mid-build.

Reports: builds per hour, failures by class (expected and unexpected), what is
left over (containers, sandboxes, volumes, temp folders, .part files, sockets,
leases), disk (the scope's images and the cache folder) at start and end, the
median build time of the last 20 builds against the first 20, and the ratio of
phase 2's wall time to phase 1's. Writes bench/soak-results.json. Touches only
images, containers and files named with its own prefix (--prefix, default ai27-soak, -HHMMSS).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shutil
import signal
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

import docker  # noqa: E402

from builder.build.engine import Engine  # noqa: E402
from builder.build.prune import Policy, cache_files, prune  # noqa: E402
from builder.build.usage import LEASE_DIR  # noqa: E402
from builder.core.defaults import base_image_for  # noqa: E402
from builder.core.labels import SANDBOX_LABEL  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

BIN = Path(sys.executable).parent
DEPS_SETS = [["tinyreq==1.0"], ["tinyreq==1.1"], ["tinydep==1.0"], ["sharedlib==1.0", "tinyreq==1.0"],
             ["requests==2.32.3"], ["structlog==24.4.0"], ["requests==2.32.3", "structlog==24.4.0"], []]


def job_list(n: int, agents: int, prefix: str, kill_at: int | None) -> list[dict]:
    jobs = []
    for j in range(n):
        i, rev = j % agents, j // agents
        lines = DEPS_SETS[(i + rev // 3) % len(DEPS_SETS)]
        fails = i % 10 == 7
        if fails:
            lines = lines + ["ai27-no-such-package==1.0"]
        signal_ = "SIGKILL" if j == kill_at else "SIGINT" if j % 20 == 11 else None
        jobs.append({"n": j, "agent": f"{prefix}-a{i}", "rev": rev, "lines": lines, "expect_fail": fails,
                     "signal": signal_})
    return jobs


def own_prune(stderr: str) -> dict | None:
    """The build's own prune (its "Pruned" log line): the scope's bytes after it, and what was protected
    then (leased by builds in progress, in use, this build's image and what they stand on)."""
    for line in reversed(stderr.splitlines()):
        if line.startswith("{") and '"Pruned"' in line:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "Pruned":
                return {k: ev.get(k) for k in ("usage_before", "usage_after", "protected_bytes", "max_bytes")}
    return None


def budget_check(results: list[dict], samples: list[dict], budget: int) -> dict:
    """The budget's promise: the only excess over the budget is what is protected at that moment.
    - Each build's own prune (exact: its numbers are taken under the lease lock): afterwards the total is
      at most max(budget, protected), since a prune stops within the budget or when nothing unprotected is left.
    - A sample between builds: the excess over the budget is at most what is protected then
      (total <= budget + protected). The stricter total <= max(budget, protected) holds right after a prune
      only: since then, builds in progress add leased images and download-cache files, and a build that ended
      left its own image (its prune protected it) for the next prune; those samples are counted, not hidden."""
    pruned = [r for r in results if r.get("prune")]
    bad = [r["n"] for r in pruned if r["prune"]["usage_after"] > max(budget, r["prune"]["protected_bytes"])]
    over = [x for x in samples if x["total"] > budget]
    above_max = [x for x in samples if x["total"] > max(budget, x["protected"])]
    violations = [x for x in samples if x["total"] - budget > x["protected"]]
    return {"builds_pruned": len(pruned), "builds_not_pruned": [(r["n"], r["class"]) for r in results
                                                                 if not r.get("prune")],
            "own_prune_violations": bad,
            "own_prune_max_after": max((r["prune"]["usage_after"] for r in pruned), default=0),
            "samples": len(samples), "samples_over_budget": len(over),
            "samples_over_max_budget_protected": above_max,
            "samples_excess_not_protected": violations,
            "max_sample": max(samples, key=lambda x: x["total"], default=None),
            "held": not bad and not violations}


def drift(ok_seconds: list[float]) -> dict:
    """Build times in order: the medians of the first and last 20, the middle, and of every 20."""
    n = len(ok_seconds)
    groups = [round(statistics.median(ok_seconds[i:i + 20]), 2) for i in range(0, n, 20) if ok_seconds[i:i + 20]]
    mid = ok_seconds[n // 2 - 10:n // 2 + 10] if n >= 60 else []
    return {"median_first20_s": round(statistics.median(ok_seconds[:20]), 2) if n else None,
            "median_middle20_s": round(statistics.median(mid), 2) if mid else None,
            "median_last20_s": round(statistics.median(ok_seconds[-20:]), 2) if n else None,
            "medians_per20_s": groups,
            "last_over_first": round(statistics.median(ok_seconds[-20:]) / statistics.median(ok_seconds[:20]), 2)
            if n else None}


class Soak:
    def __init__(self, tmp: Path, index_url: str, registry: str, budget: int, run: str) -> None:
        self.tmp, self.index_url, self.registry, self.budget, self.run = tmp, index_url, registry, budget, run
        self.client = docker.from_env()
        self.engine = Engine()
        self.pids: list[int] = []
        self.lock = threading.Lock()

    def private_base(self, phase: str) -> str:
        """The shared base plus one LABEL: its own image id, so the layer cache chains are this phase's."""
        tag = f"{self.run}-base/py3.11:{phase}"
        self.client.images.build(fileobj=io.BytesIO(
            f'FROM {base_image_for("3.11")}\nLABEL io.agent-image.soak="{self.run}-{phase}"\n'.encode()),
            tag=tag, rm=True)
        return tag

    def one(self, job: dict, base: str, cache: Path, scope: str) -> dict:
        folder = self.tmp / "jobs" / f"{scope.rstrip('/').rsplit('/', 1)[-1]}-{job['n']}"
        agent = make_agent(folder, job["agent"], version=f"0.1.{job['rev']}",
                           requirements="\n".join(job["lines"]) + "\n" if job["lines"] else None)
        main = agent / "src" / "main.py"
        main.write_text(main.read_text() + f"\nREVISION = {job['rev']}\n")
        cmd = [str(BIN / "agent-image"), "build", str(agent), "--json", "--progress", "json",
               "--index-url", self.index_url, "--registry", scope.rstrip("/"), "--push", "--base-image", base,
               "--cache-dir", str(cache), "--prune-max-bytes", str(self.budget), "--prune-scope", scope,
               "--timeout", "600"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with self.lock:
            self.pids.append(proc.pid)
        if job["signal"]:
            threading.Timer(2.5 if job["signal"] == "SIGKILL" else 1.5,
                            lambda: proc.poll() is None and proc.send_signal(getattr(signal, job["signal"]))).start()
        out, err = proc.communicate()
        took = time.monotonic() - started
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res = {"ok": False, "error": {"class": "killed" if proc.returncode == -9 else
                                          "interrupted" if proc.returncode == 130 else "no-json"}}
        cls = None if res.get("ok") else res["error"]["class"]
        expected = (cls is None or (job["expect_fail"] and cls in ("DependencyNotFoundError", "VersionNotFoundError"))
                    or (job["signal"] == "SIGINT" and cls in ("BuildInterruptedError", "interrupted"))
                    or (job["signal"] == "SIGKILL" and cls == "killed"))
        return {"n": job["n"], "agent": job["agent"], "rev": job["rev"], "code": proc.returncode, "class": cls,
                "expected": bool(expected), "signal": job["signal"], "seconds": round(took, 2),
                "cached": res.get("cached"), "deps_origin": res.get("deps_origin"), "prune": own_prune(err),
                "stderr_tail": "" if expected else err[-1500:]}

    def phase(self, name: str, builds: int, lanes: int, agents: int, kill: bool, until: float | None = None) -> dict:
        base = self.private_base(name)
        cache = self.tmp / f"cache-{name}"
        scope = f"{self.registry}/{self.run}-{name}/"
        jobs = job_list(builds, agents, f"{self.run}-{name}", builds // 2 + 1 if kill else None)
        todo: queue.Queue = queue.Queue()
        for job in jobs:
            todo.put(job)
        results: list[dict] = []
        samples: list[dict] = []
        disk_start = self.disk(cache, scope)
        t0 = time.monotonic()

        def lane() -> None:
            while until is None or time.time() < until:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                r = self.one(job, base, cache, scope)
                with self.lock:
                    results.append(r)
                    done = len(results)
                # after each build (and its own prune): the scope's bytes, and what was protected then
                dry = prune(self.engine, cache, Policy(max_bytes=None, scope=(scope,)), dry_run=True)
                kinds: dict[str, int] = {}
                for item in dry.removed:  # (no budget: every unprotected item, by kind)
                    kinds[item.kind] = kinds.get(item.kind, 0) + item.bytes
                with self.lock:
                    samples.append({"after": r["n"], "done": done, "t": round(time.monotonic() - t0, 1),
                                    "total": dry.usage_before, "protected": dry.protected_bytes,
                                    "unprotected_by_kind": kinds, "kept": dry.kept})
                if done % 10 == 0 or not r["expected"]:
                    print(f"  [{name}] {done}/{builds} last {r['agent']} {r['class'] or 'ok'} {r['seconds']}s",
                          flush=True)

        started = time.monotonic()
        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        time.sleep(2)  # auto-removed sandboxes go a moment after their kill
        # the killed builder's leftovers are swept by the next build; after the last build, by this prune
        prune(self.engine, cache, Policy(max_bytes=self.budget, scope=(scope,)))
        out = self.report(name, builds, lanes, wall, results, cache, scope, disk_start, base)
        out["disk_samples"] = samples
        out["disk_max_bytes"] = max((x["total"] for x in samples), default=0)
        out["budget_check"] = budget_check(results, samples, self.budget)
        out["stopped_early"] = len(results) < builds  # --until came first: the rates are over what ran
        out["builds"] = len(results)
        out["builds_per_hour"] = round(len(results) / wall * 3600)
        return out

    def disk(self, cache: Path, scope: str) -> dict:
        out = prune(self.engine, cache, Policy(max_bytes=None, scope=(scope,)), dry_run=True)
        files = sum(i.bytes for i in cache_files(cache)) if cache.is_dir() else 0
        total = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0
        reg = self.tmp / "registry" / "data"  # not budgeted (the registry's own retention): reported
        pushed = sum(f.stat().st_size for f in reg.rglob("*") if f.is_file()) if reg.is_dir() else 0
        st = os.statvfs(tempfile.gettempdir())
        return {"scope_bytes": out.usage_before, "images_bytes": out.usage_before - files, "cache_dir_bytes": total,
                "registry_bytes": pushed, "host_fs_used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize}

    def leftovers(self, cache: Path, scope: str) -> dict:
        pids = set(self.pids)
        sandboxes = [c for c in self.client.api.containers(all=True, filters={"label": SANDBOX_LABEL})
                     if int(c["Labels"].get(f"{SANDBOX_LABEL}.pid", "0")) in pids]
        ours = {i["Id"] for i in self.client.api.images(all=True)
                if any(t.startswith(scope) for t in i.get("RepoTags") or [])}
        containers = [c for c in self.client.api.containers(all=True) if c.get("ImageID") in ours]
        tmpdirs = [p for p in Path(tempfile.gettempdir()).glob("agent-image-sbx-*")
                   if p.name.split("-")[3].isdigit() and int(p.name.split("-")[3]) in pids]
        parts = list((cache / "downloads" / "v2" / "tmp").glob("*")) if cache.is_dir() else []
        sockets = [p for d in tmpdirs for p in d.rglob("*") if p.is_socket()]
        leases = [p for p in LEASE_DIR.glob("*.json") if int(p.name.split("-")[0]) in pids]
        volumes = [v["Name"] for v in (self.client.api.volumes().get("Volumes") or [])
                   if self.run in v["Name"] or any(self.run in str(x) for x in (v.get("Labels") or {}).values())]
        return {"containers": len(containers), "sandboxes": len(sandboxes), "volumes": len(volumes),
                "temp_folders": len(tmpdirs), "part_files": len(parts), "sockets": len(sockets),
                "leases": len(leases)}

    def report(self, name, builds, lanes, wall, results, cache, scope, disk_start, base) -> dict:
        results.sort(key=lambda r: r["n"])
        ok = [r for r in results if r["class"] is None]
        by_class: dict[str, dict[str, int]] = {"expected": {}, "unexpected": {}}
        for r in results:
            if r["class"]:
                side = by_class["expected" if r["expected"] else "unexpected"]
                side[r["class"]] = side.get(r["class"], 0) + 1
        return {"phase": name, "builds": builds, "lanes": lanes, "wall_s": round(wall, 1),
                "builds_per_hour": round(builds / wall * 3600), "ok": len(ok), "failures": by_class,
                "unexpected": [r for r in results if not r["expected"]],
                **drift([r["seconds"] for r in ok]),
                "disk_start": disk_start, "disk_end": self.disk(cache, scope), "budget_bytes": self.budget,
                "leftovers": self.leftovers(cache, scope), "results": results}

    def cleanup(self) -> None:
        """Every image of this run, nothing else: those under its prefixes (and its private bases), and the
        untagged ones built on them (a failed or cancelled build's layers), leaves first: an image with a
        child cannot be deleted (its untag would leave it behind, dangling)."""
        for _ in range(5):
            images = self.client.api.images(all=True)
            parent = {i["Id"]: i.get("ParentId") or "" for i in images}
            named = {i["Id"] for i in images  # (the private bases' label is inherited by what is built on them)
                     if (i.get("Labels") or {}).get("io.agent-image.soak", "").startswith(f"{self.run}-")
                     or any(f"/{self.run}-" in r or r.startswith(f"{self.run}-base/")  # pulled: digests too
                            for r in (i.get("RepoTags") or []) + (i.get("RepoDigests") or []))}

            def depth(image_id: str) -> int:  # its chain's length; -1: nothing of this run in it
                n, at, mine = 0, image_id, False
                while at and n < 1000:
                    mine, at, n = mine or at in named, parent.get(at, ""), n + 1
                return n if mine else -1
            ours = sorted((d, i) for i in parent if (d := depth(i)) >= 0)
            removed = 0
            for _, image_id in reversed(ours):  # the deepest (leaves) first
                try:
                    self.client.api.remove_image(image_id, force=True)
                    removed += 1
                except docker.errors.APIError:
                    pass
            if not removed:
                return


def machine() -> dict:
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "load_at_start": os.getloadavg(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", type=int, default=200, help="builds in the many-lane phase (default 200)")
    ap.add_argument("--lanes", type=int, default=4, help="lanes in the many-lane phase (default 4)")
    ap.add_argument("--agents", type=int, default=40, help="different agents (default 40)")
    ap.add_argument("--budget", default="40M", help="--prune-max-bytes for every build (default 40M)")
    ap.add_argument("--reference-builds", type=int, help="builds in the one-lane phase (default builds/2; 0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "soak-results.json")
    ap.add_argument("--prefix", default="ai27-soak", help="names of everything it makes start with PREFIX-HHMMSS "
                                                          "(default ai27-soak)")
    ap.add_argument("--many-first", action="store_true", help="run the many-lane phase first")
    ap.add_argument("--until", metavar="HH:MM", help="start no build after this UTC time (a phase stopped early "
                                                      "reports what ran; the ratio then compares rates)")
    args = ap.parse_args()
    from builder.core.units import parse_bytes
    import logging
    import structlog  # the dry-run prune after every build would log a line each: warnings only
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run = f"{args.prefix}-{time.strftime('%H%M%S')}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{run}-"))
    info = machine()
    index = start_index(tmp / "index", fill_wheelhouse(tmp / "house", tmp / "src"))
    (tmp / "registry").mkdir()
    reg = Registry(tmp / "registry", free_port())
    reg.start()
    soak = Soak(tmp, index.url_for("alice"), reg.host, parse_bytes(args.budget), run)
    phases: list[dict] = []
    until = None
    if args.until:
        hh, mm = map(int, args.until.split(":"))
        t = time.gmtime()
        until = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, hh, mm, 0, 0, 0, 0)) - time.timezone
    ref = args.builds // 2 if args.reference_builds is None else args.reference_builds
    plan = [("one", ref, 1, False)] if ref else []
    plan.append(("many", args.builds, args.lanes, True))
    if args.many_first:
        plan.reverse()
    try:
        for name, n, lanes, kill in plan:
            print(f"phase {name}: {n} builds in {lanes} lane(s)", flush=True)
            phases.append(soak.phase(name, n, lanes, args.agents, kill=kill, until=until))
            args.out.write_text(json.dumps({"machine": info, "command": " ".join(sys.argv), "phases": phases}))
    finally:
        info["load_at_end"] = os.getloadavg()
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        soak.cleanup()
        index.stop()
        reg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    phases.sort(key=lambda p: p["lanes"])
    one, many = (phases + [None, None])[:2]
    ratio = None
    if one and many:  # the many-lane phase's time for its builds over the one lane's for its own
        ratio = (many["wall_s"] / many["builds"]) / (one["wall_s"] / one["builds"]) * (
            args.builds / (ref or 1)) if (one["stopped_early"] or many["stopped_early"]) else \
            many["wall_s"] / one["wall_s"]
    out = {"machine": info, "command": " ".join(sys.argv), "phases": phases, "ratio_many_vs_one": ratio,
           "ratio_from_rates": bool(one and many and (one["stopped_early"] or many["stopped_early"])),
           "goals": {"unexpected_failures": sum(len(p["unexpected"]) for p in phases),
                     "leftovers": sum(sum(p["leftovers"].values()) for p in phases),
                     "budget_held": all(p["budget_check"]["held"] for p in phases),
                     "last20_over_first20": {p["phase"]: p["last_over_first"] for p in phases},
                     "ratio_under_2": ratio < 2 if ratio else None}}
    args.out.write_text(json.dumps(out, indent=1))
    for p in phases:
        print(f"\n{p['phase']}: {p['builds']} builds, {p['lanes']} lane(s), {p['wall_s']} s, {p['builds_per_hour']}/h, "
              f"ok {p['ok']}, failures {p['failures']}")
        print(f"  median build s: first 20 {p['median_first20_s']}, middle 20 {p['median_middle20_s']}, "
              f"last 20 {p['median_last20_s']} (last/first {p['last_over_first']}); "
              f"per 20: {p['medians_per20_s']}")
        print(f"  disk (scope bytes): start {p['disk_start']['scope_bytes']}, end {p['disk_end']['scope_bytes']}, "
              f"budget {p['budget_bytes']}, largest sample {p['disk_max_bytes']}")
        print(f"  disk (other): start {p['disk_start']}, end {p['disk_end']}")
        bc = p["budget_check"]
        big = bc["max_sample"] or {}
        print(f"  budget held: {'yes' if bc['held'] else 'NO'}: own prunes {bc['builds_pruned']} "
              f"(over max(budget, protected): {bc['own_prune_violations'] or 'none'}; largest after "
              f"{bc['own_prune_max_after']}); not pruned: {bc['builds_not_pruned'] or 'none'}; samples "
              f"{bc['samples']}, over the budget {bc['samples_over_budget']}, excess over the budget not "
              f"protected {len(bc['samples_excess_not_protected'])}, over max(budget, protected) "
              f"{len(bc['samples_over_max_budget_protected'])}; largest sample {big.get('total')} "
              f"(protected then {big.get('protected')})")
        for x in bc["samples_over_max_budget_protected"]:
            print(f"    sample after build {x['after']}: total {x['total']}, protected {x['protected']}, "
                  f"unprotected {x['unprotected_by_kind']}")
        print(f"  leftovers: {p['leftovers']}")
        for r in p["unexpected"][:5]:
            print(f"  UNEXPECTED {r['agent']} rev {r['rev']}: {r['class']} (exit {r['code']})\n{r['stderr_tail'][-600:]}")
    if ratio:
        est = " (from the rates: a phase stopped early)" if one["stopped_early"] or many["stopped_early"] else ""
        print(f"\nwall time: {many['lanes']} lanes x {args.builds} builds / 1 lane x {ref} builds = {ratio:.2f}"
              f"{est} (goal < 2)")
    print(f"goals: {out['goals']}")
    print(f"machine: {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
