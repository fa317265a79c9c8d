"""The classic builder's JSON stream as lines, steps and a result. Pure: no engine.

``rejoin_lines`` re-cuts the stream at newlines; ``consume`` folds each chunk
into a ``BuildOutcome`` (the neutral result ``Engine.build`` returns) and
reports steps and lines as they pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from builder.core.redact import redact

# the classic builder paints a RUN step's stderr red; the log parser wants plain text
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class BuildOutcome:
    image_id: str | None
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    failed_step: int | None = None
    cached: set[int] = field(default_factory=set)  # step numbers the layer cache served
    committed: list[str] = field(default_factory=list)  # short ids of the images the steps that ran made
    total_steps: int = 0
    duration_s: float = 0.0


def rejoin_lines(stream: Iterator[dict]) -> Iterator[dict]:
    """Re-cut the build stream at newlines. A RUN's output reaches us in
    whatever pieces the process wrote (uv writes one line in several
    writes), and the classifiers read whole lines."""
    partial = ""
    for chunk in stream:
        if "stream" in chunk:
            whole, newline, partial = (partial + chunk["stream"]).rpartition("\n")
            if newline:
                yield {"stream": whole + "\n"}
            continue
        if partial:
            yield {"stream": partial}
            partial = ""
        yield chunk
    if partial:
        yield {"stream": partial}

_STEP_IMAGE = re.compile(r"\s*---> [0-9a-f]{12}")  # the image a step committed (not "---> Running in ...")


def consume(chunk: dict, outcome: BuildOutcome, on_line, on_step) -> None:
    if "stream" in chunk:
        for line in chunk["stream"].splitlines():
            # kept as the engine wrote them: the classifiers read the log's own words,
            # and every way out (log processor, errors, the result) redacts
            line = _ANSI.sub("", line).rstrip()
            if not line:
                continue
            outcome.lines.append(line)
            if line.startswith("Step ") and "/" in line.split(" : ")[0]:
                head, _, instr = line.partition(" : ")
                n, _, m = head[5:].partition("/")
                if n.isdigit() and m.isdigit():
                    outcome.failed_step, outcome.total_steps = int(n), int(m)
                    if on_step:
                        on_step(int(n), int(m), instr)
            elif line.strip() == "---> Using cache" and outcome.failed_step:
                outcome.cached.add(outcome.failed_step)
            elif outcome.failed_step and outcome.failed_step not in outcome.cached and _STEP_IMAGE.fullmatch(line):
                outcome.committed.append(line.split()[-1])
            if on_line:
                on_line(line)
    elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
        outcome.image_id = chunk["aux"]["ID"]
    elif "error" in chunk:
        outcome.error = redact(chunk.get("error") or str(chunk.get("errorDetail")))
        outcome.image_id = None
    if outcome.image_id:
        outcome.failed_step = None if outcome.error is None else outcome.failed_step
