"""Where a build's seconds go: the engine's lines timestamped as they stream
(TimedEngine), then cut into instructions and, inside pip/uv steps, the
phases their own lines delimit (breakdown). Used by bench/real.py."""

from __future__ import annotations

import re
import time

from builder.build.engine import Engine


class TimedEngine(Engine):
    """The same engine seam; build() also records (seconds since start, line)."""

    def build(self, **kw):
        self.timeline: list[tuple[float, str]] = []
        # every build of one build_image call (the dependency image's, then the agent's)
        self.timelines: list[list[tuple[float, str]]] = getattr(self, "timelines", [])
        self.timelines.append(self.timeline)
        t0 = time.monotonic()
        inner = kw.get("on_line")

        def on_line(line: str) -> None:
            self.timeline.append((time.monotonic() - t0, line))
            if inner:
                inner(line)
        kw["on_line"] = on_line
        return super().build(**kw)


def breakdown(timeline: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """Where a build's seconds went, from its log: per instruction, and inside
    each pip/uv step the phases its own lines delimit."""
    rows: list[tuple[str, float]] = []
    steps: list[tuple[float, str, list[tuple[float, str]]]] = []
    for t, line in timeline:
        if re.match(r"^Step \d+/\d+ : ", line):
            steps.append((t, line.split(" : ", 1)[1][:70], []))
        elif steps:
            steps[-1][2].append((t, line))
    end = timeline[-1][0] if timeline else 0.0
    for i, (t, instr, lines) in enumerate(steps):
        nxt = steps[i + 1][0] if i + 1 < len(steps) else end
        rows.append((f"step {i + 1}: {instr}", nxt - t))
        out = [(lt, ln) for lt, ln in lines if not ln.startswith((" ---> ", "Removing intermediate"))]
        running = next((lt for lt, ln in lines if ln.startswith(" ---> Running in")), None)
        removing = next((lt for lt, ln in lines if ln.startswith("Removing intermediate")), None)
        if running is not None:
            rows.append(("    container create+start (Step -> Running in)", running - t))
        if out and removing is not None:
            rows.append(("    after the last output line: bytecode (compileall) + exit + layer commit",
                         removing - out[-1][0]))
        first = lambda pat: next((lt for lt, ln in out if re.search(pat, ln)), None)  # noqa: E731
        last = lambda pat: next((lt for lt, ln in reversed(out) if re.search(pat, ln)), None)  # noqa: E731
        coll0, coll1 = first(r"^Collecting |^Obtaining "), last(r"^Collecting |^Obtaining ")
        inst0, done = first(r"^Installing collected packages"), last(r"^Successfully installed")
        comp0, comp1 = first(r"^--- agent-image: compiling bytecode"), last(r"^--- agent-image: bytecode done")
        if coll0 is not None and coll1 is not None:
            rows.append(("    pip resolve (first -> last Collecting)", coll1 - coll0))
        if coll1 is not None and inst0 is not None:
            rows.append(("    pip download rest (last Collecting -> Installing)", inst0 - coll1))
        if inst0 is not None and done is not None:
            rows.append(("    pip unpack+install (Installing -> Successfully)", done - inst0))
        uv = {k: first(rf"^{k}\b") for k in ("Resolved", "Prepared", "Installed", "Bytecode compiled")}
        if uv["Resolved"] is not None and running is not None:
            rows.append(("    uv resolve (start -> Resolved)", uv["Resolved"] - running))
        if uv["Prepared"] is not None and uv["Resolved"] is not None:
            rows.append(("    uv download+unpack (Resolved -> Prepared)", uv["Prepared"] - uv["Resolved"]))
        if uv["Installed"] is not None and uv["Prepared"] is not None:
            rows.append(("    uv install (Prepared -> Installed)", uv["Installed"] - uv["Prepared"]))
        if uv["Bytecode compiled"] is not None and uv["Installed"] is not None:
            rows.append(("    uv bytecode (Installed -> Bytecode compiled)", uv["Bytecode compiled"] - uv["Installed"]))
        if comp0 is not None and comp1 is not None:
            rows.append(("    bytecode, parallel compileall", comp1 - comp0))
    return rows


