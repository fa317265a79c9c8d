#!/usr/bin/env python3
"""What the SBOM, provenance and signature cost a build (issue 25), side by side in one run:

    .venv/bin/python bench/supply.py [--reps 3]

For the example agent (examples/hello-agent) and the seed's real agent (bench/real.py's
"seed" set: langchain-openai, fastapi, uvicorn, structlog, requests), built and pushed
to a loopback registry (Debian's docker-registry: the referrers tag schema), signed with
a fresh PEM key. Each rep changes the agent's code and builds with --push twice, in
turn with and without the attachments (without: builder/ship/supply.py's two entry
points replaced by no-ops in this process, which is main before this issue). Reported:
the whole command's seconds each way and their difference, the "supply" phase (reading
the image's listing, making and validating the SBOM, the statement, the pushes, the
signature), and the bytes it pushed. Goal: under 0.3 s and 50 KB per build.

Needs https://pypi.org/simple/ (through the host's CA bundle); when it is not reachable
the bench says so and exits 0. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from real import CA, PYPI, SETS, reachable, say  # noqa: E402

import builder.ship.supply as supply  # noqa: E402
from builder.api import BuildOptions, build_image  # noqa: E402
from builder.build.engine import Engine  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.packages import make_agent  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

PREFIX = "ai25-bench"
RESULTS = Path(__file__).resolve().parent / "results-supply.json"


def key_file(folder: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    path = folder / "sign.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


def agents(tmp: Path) -> dict[str, Path]:
    hello = tmp / "hello-agent"
    shutil.copytree(ROOT / "examples" / "hello-agent", hello)
    reqs, imports = SETS["seed"]
    seed = make_agent(tmp, "ai25-seed-agent", requirements="".join(f"{r}\n" for r in reqs),
                      install_requires=["structlog"],
                      extra={"src/main.py": f"{imports}\nCODE_REVISION = 0\n\ndef handler(context):\n    return {{}}\n"})
    return {"hello-agent": hello, "seed": seed}


def change_code(agent: Path, revision: int) -> None:
    """A code-only change: the next build re-runs no install and pushes a new image."""
    for main in agent.glob("src/**/*.py"):
        text = main.read_text()
        if "CODE_REVISION" in text:
            main.write_text(re.sub(r"CODE_REVISION = \d+", f"CODE_REVISION = {revision}", text))
        else:
            main.write_text(text + f"\nCODE_REVISION = {revision}\n")
        return


class Without:
    """builder/ship/supply.py's entry points as no-ops: a push as it was before the attachments."""

    def __enter__(self):
        from concurrent.futures import Future
        self.saved = supply.prepare, supply.attach_build
        done = Future()
        done.set_result(None)
        supply.prepare = lambda *a, **k: done
        supply.attach_build = lambda *a, **k: {}
        return self

    def __exit__(self, *exc):
        supply.prepare, supply.attach_build = self.saved


def run(reps: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="ai25-bench-supply-"))
    reg = Registry(tmp, free_port())
    reg.start()
    engine, out = Engine(api_timeout=900), {}
    try:
        prefix = f"{reg.host}/{PREFIX}"
        opts = BuildOptions(registry=prefix, push=True, index_url=PYPI, ca_bundle=CA, timeout=1200, overwrite=True,
                            cache_dir=tmp / "cache", sign_key=key_file(tmp))
        for name, agent in agents(tmp).items():
            say(f"{name}: first build (dependencies; not timed)")
            first = build_image(agent, opts, engine=engine)
            rows = {"with": [], "without": [], "supply_s": [], "bytes": [], "sbom_components": 0}
            revision = 0
            for rep in range(reps):
                for way in (("with", "without") if rep % 2 == 0 else ("without", "with")):
                    revision += 1
                    change_code(agent, revision)
                    if way == "without":
                        with Without():
                            r = build_image(agent, opts, engine=engine)
                    else:
                        r = build_image(agent, opts, engine=engine)
                        rows["supply_s"].append(r.phases["supply"])
                        rows["bytes"].append(r.supply["bytes_pushed"])
                        rows.setdefault("waited_s", []).append(r.supply["waited_s"])
                        assert r.supply["signed"], r.supply
                    rows[way].append(r.duration_s)
                    say(f"{name} rep {rep} {way}: {r.duration_s:.2f} s {r.phases}")
            rows["first_build_supply"] = {"seconds": first.phases.get("supply"), "bytes": first.supply["bytes_pushed"]}
            rows["dists"] = len(supply.sbom.dists_of(engine, first.image_id))
            out[name] = rows
        return out
    finally:
        reg.stop()
        for img in engine.api.images():
            if any(t.startswith(f"{reg.host}/{PREFIX}") for t in img.get("RepoTags") or []):
                try:
                    engine.api.remove_image(img["Id"], force=True)
                except Exception:  # noqa: BLE001 gone already
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict, reps: int) -> str:
    med = statistics.median
    lines = [f"bench/supply.py: code-only rebuild + push, {reps} rep(s) each way, medians",
             "| agent | dists | without s | with s | added s | supply phase s | of which waiting for the SBOM s "
             "| bytes pushed by it |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['dists']} | {med(r['without']):.2f} | {med(r['with']):.2f} | "
                     f"{med(r['with']) - med(r['without']):+.2f} | {med(r['supply_s']):.3f} | {med(r['waited_s']):.3f} | "
                     f"{int(med(r['bytes']))} |")
    lines.append("(first build with a cold dependency layer: " + ", ".join(
        f"{n} supply {r['first_build_supply']['seconds']} s, {r['first_build_supply']['bytes']} B"
        for n, r in res.items()) + ")")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    why = reachable()
    if why:
        say(f"SKIPPED: the public index {PYPI} is not reachable from here ({why})")
        return 0
    from builder.core.log import configure
    log_file = open(Path(__file__).resolve().parent / "last-run-supply.log", "w")
    configure(json_output=False, stream=log_file)
    load = os.getloadavg()
    res = run(args.reps)
    text = report(res, args.reps)
    print(text)
    RESULTS.write_text(json.dumps({"reps": args.reps, "loadavg_start": load, "loadavg_end": os.getloadavg(),
                                   "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "results": res, "table": text},
                                  indent=1) + "\n")
    log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
