"""Each Python's base, side by side: its size, and the example agent's time to ready on it.

    bash scripts/setup.sh                      # the bases: agent-image/base:py3.9, py3.11, py3.13
    .venv/bin/python bench/pythons.py          # about a minute; --reps N (default 5)

For every base the engine has (agent-image/base:pyX.Y for each Python in builder/core/pythons.py;
3.12 only when built with `agent-image base --python 3.12 --from IMAGE`), it builds
examples/hello-agent with `runtime: pythonX.Y` (python3.13 through AGENT_IMAGE_PREVIEW_RUNTIMES),
then starts the image as its ECS task runs it (`--read-only --tmpfs /tmp --user 10001`, port on
loopback, on the host's network with REST_PORT free) REPS times and times `docker run` until
`GET /health` = 200. It prints one table, the
ratios against 3.11 measured in the same run, and the ready time the build recorded in the image's
label. Packages come from the default index (PIP_INDEX_URL, else PyPI) through the build's proxy.
Nothing is asserted: the numbers are for reading.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.core.defaults import base_image_for  # noqa: E402
from builder.core.labels import READY_LABEL  # noqa: E402
from builder.core.pythons import PREVIEW_ENV, PREVIEW_RUNTIMES, PYTHONS, python_image  # noqa: E402

HELLO = ROOT / "examples" / "hello-agent"
PREFIX = "agent-image-bench-pythons"  # the bench's images and their dependency images: removed at the end
AS_A_TASK = ["--read-only", "--tmpfs", "/tmp:rw,size=64m", "--user", "10001"]


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout.strip()


def size_mb(ref: str) -> float | None:
    out = docker("image", "inspect", "--format", "{{.Size}}", ref, check=False)
    return int(out) / 1e6 if out.isdigit() else None


def build(python: str, work: Path) -> tuple[str, float]:
    """The example agent built on PYTHON's base: (image, build seconds)."""
    agent = shutil.copytree(HELLO, work / f"hello-{python}")
    text = (agent / "agent.yaml").read_text().replace("runtime: python3.11", f"runtime: python{python}")
    (agent / "agent.yaml").write_text(text)
    env = {**os.environ, PREVIEW_ENV: ",".join(PREVIEW_RUNTIMES), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "builder.cli.main", "build", str(agent), "--repository",
                          f"{PREFIX}/py{python.replace('.', '')}"], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"building on {python} failed:\n{out.stderr[-2000:]}")
    return out.stdout.split()[0], time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_ready(image: str) -> float:
    """docker run (as a task) until GET /health is 200, in seconds. The host's network with REST_PORT
    on a free port: no port mapping to wait for (ECS's awsvpc has none either)."""
    port = free_port()
    started = time.monotonic()
    cid = docker("run", "-d", *AS_A_TASK, "--network", "host", "-e", f"REST_PORT={port}",
                 "-e", "OPENAI_API_KEY=sk-bench", image)
    try:
        while time.monotonic() - started < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"{image} was not ready in 60 s")
    finally:
        docker("rm", "-f", "-v", cid, check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="agent-image-bench-pythons-") as tmp:
        for version in PYTHONS:
            base = base_image_for(version)
            if size_mb(base) is None:
                print(f"(no {base}: skipped)", file=sys.stderr)
                continue
            image, build_s = build(version, Path(tmp))
            label = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{READY_LABEL}"}}}}', image)
            time_to_ready(image)  # once unmeasured: the page cache warm for each image alike
            samples = [time_to_ready(image) for _ in range(args.reps)]
            rows.append({"python": version, "eol": PYTHONS[version].end_of_life.isoformat(),
                         "python_mb": size_mb(python_image(version)), "base_mb": size_mb(base),
                         "agent_mb": size_mb(image), "build_s": build_s, "label_s": float(label or "nan"),
                         "ready_s": statistics.median(samples), "ready_min": min(samples),
                         "ready_max": max(samples)})
    tags = [t for t in docker("images", "--format", "{{.Repository}}:{{.Tag}}").splitlines()
            if t.startswith(f"{PREFIX}/")]
    if tags:
        docker("rmi", *tags, check=False)
    ref = next((r for r in rows if r["python"] == "3.11"), rows[0])
    print(f"{'python':<7}{'end of life':<13}{'python img':>11}{'base':>9}{'agent':>9}{'build':>8}"
          f"{'import (label)':>16}{'ready median':>14}{'min-max':>15}{'ready vs 3.11':>15}{'base vs 3.11':>14}")
    for r in rows:
        python_mb = f"{r['python_mb']:.0f} MB" if r["python_mb"] else "-"
        print(f"{r['python']:<7}{r['eol']:<13}{python_mb:>11}{r['base_mb']:>6.0f} MB{r['agent_mb']:>6.0f} MB"
              f"{r['build_s']:>7.1f}s{r['label_s']:>15.3f}s{r['ready_s']:>13.3f}s"
              f"{r['ready_min']:>8.3f}-{r['ready_max']:.3f}s{r['ready_s'] / ref['ready_s']:>14.2f}x"
              f"{r['base_mb'] / ref['base_mb']:>13.2f}x")
    print(f"\nready = `docker run {' '.join(AS_A_TASK)} --network host` until GET /health = 200, "
          f"median of {args.reps}; sizes as `docker image inspect` reports them (uncompressed)")


if __name__ == "__main__":
    main()
