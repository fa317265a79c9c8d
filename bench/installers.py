"""pip against uv for one agent, side by side: `.venv/bin/python bench/installers.py`.

Each round builds examples/hello-agent with --installer pip and then uv
(order alternating), cold (--no-cache, empty download cache) and then warm
(a code-only change with the layer cache on). Prints medians and the ratio.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from tests.support.engine import engine_tags  # noqa: E402
from tests.support.index import fill_wheelhouse, start_index  # noqa: E402

BIN = Path(sys.executable).parent


def build(agent: Path, installer: str, index_url: str, cache: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run([str(BIN / "agent-image"), "build", str(agent), "--json", "--installer", installer,
                    "--index-url", index_url, "--cache-dir", str(cache),
                    "--repository", f"bench-installers/{installer}", *extra],
                   check=True, capture_output=True)
    return time.monotonic() - started


def main(rounds: int = 3) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="agent-image-installers-"))
    index = start_index(tmp / "index", fill_wheelhouse(tmp / "house", tmp / "src"))
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for r in range(rounds):
            for installer in (("pip", "uv") if r % 2 == 0 else ("uv", "pip")):
                agent = tmp / f"agent-{installer}-{r}"
                shutil.copytree(ROOT / "examples" / "hello-agent", agent)
                cache = tmp / f"cache-{installer}-{r}"
                url = index.url_for("alice")
                times.setdefault((installer, "cold"), []).append(build(agent, installer, url, cache, "--no-cache"))
                main_py = agent / "src" / "main.py"
                main_py.write_text(main_py.read_text() + f"\nROUND = {r}\n")
                times.setdefault((installer, "warm"), []).append(build(agent, installer, url, cache))
    finally:
        index.proc.kill()
        client = docker.from_env()
        for tag in engine_tags(client):
            if tag.startswith("bench-installers/"):
                client.images.remove(tag, force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("| build | pip s | uv s | uv/pip |\n|---|---|---|---|")
    for kind in ("cold", "warm"):
        pip, uv = statistics.median(times[("pip", kind)]), statistics.median(times[("uv", kind)])
        print(f"| {kind} | {pip:.2f} | {uv:.2f} | {uv / pip:.2f} |")
    print(f"medians of {rounds} alternating rounds; samples: "
          + "; ".join(f"{i} {k} {[round(t, 2) for t in v]}" for (i, k), v in times.items()))


if __name__ == "__main__":
    main()
