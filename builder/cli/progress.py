"""Build progress for a person at a terminal (rich): step, live line, summary.

Used with --progress tty (what auto picks when stderr is a TTY and --json is
off); everywhere else the log is plain or JSON lines (builder/cli/ciout.py). It learns what happens from the
structlog events the pipeline already emits (named in builder/core/events.py:
each step, the debug build-log lines, ...) through one processor, so the
pipeline does not know it exists. Without -v the processor keeps the screen to
the progress and warnings; with -v every log line is printed above it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from builder.core import events

# build-log lines that are the engine's bookkeeping, not the step's own output
_ENGINE_LINES = ("Step ", "--->", "Removing intermediate container", "Successfully built", "Successfully tagged",
                 "Looking in indexes:")  # (pip's: it names the build's own index proxy, nothing the user chose)


# 'Downloading http://agent-image-index.invalid/_f/.../requests-2.32.3-py3-none-any.whl' -> the file name
_URL_PATH = re.compile(r"\b[a-z][a-z0-9+.-]*://\S*/(?=[^/\s]+)")


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:.1f} MiB"


def _instruction(text: str) -> str:
    """'RUN pip install ...' reads as 'pip install ...'; other instructions keep their keyword.
    The base's own pip (PYTHONPATH=... python -m pip) reads as pip too, and the bytecode
    stamp a step touches first is left out: the line has room for the rest."""
    text = " ".join(text.split())
    text = text[4:] if text.startswith("RUN ") else text
    text = re.sub(r"^touch /tmp/\.agent-image-stamp && ", "", text)
    return re.sub(r"^PYTHONPATH=\S+ python -m (pip )", r"\1", text)


class BuildProgress:
    """A live view of one build on a rich Console (stderr). Use as a context manager."""

    def __init__(self, console: Console | None = None, *, verbose: bool = False, pushing: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.verbose, self.pushing = verbose, pushing
        self.started = time.monotonic()
        self.phase = "opening the package"
        self.runtime: str | None = None
        self.activity = ""  # the live line: what the current step printed last
        self.step: dict[str, Any] | None = None
        self.cached_steps = 0
        self._spinner = Spinner("dots")
        self._live = Live(self, console=self.console, refresh_per_second=8, transient=True,
                          redirect_stdout=False, redirect_stderr=True)

    # -- the screen --------------------------------------------------------------------
    @staticmethod
    def _row(mark, step: dict, *tail) -> Table:
        """One step on one line: the instruction gives way (ellipsis) so times stay visible."""
        row = Table.grid(padding=(0, 1), expand=True)
        row.add_column(no_wrap=True)
        row.add_column(no_wrap=True)
        row.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for _ in tail:
            row.add_column(no_wrap=True)
        row.add_row(mark, f"[{step['n']}/{step['total']}] {step['name']}:", step["instruction"], *tail)
        return row

    def __rich__(self) -> Group:
        now = time.monotonic()
        if self.step:
            head = self._row(self._spinner, self.step, Text(f"{now - self.step['started']:.1f}s / "
                                                            f"{now - self.started:.1f}s", style="dim"))
        else:
            head = Table.grid(padding=(0, 1))
            head.add_row(self._spinner, self.phase, Text(f"{now - self.started:.1f}s", style="dim"))
        lines = [head]
        if self.activity:
            lines.append(Text(f"  {self.activity}", style="dim", no_wrap=True, overflow="ellipsis"))
        return Group(*lines)

    def __enter__(self) -> BuildProgress:
        self._live.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish_step(None, failed=exc_type is not None)
        self._live.stop()

    def _finish_step(self, following: dict | None, *, failed: bool = False) -> None:
        """Print the current step for good and make FOLLOWING current (the live view never sees no step)."""
        step, self.step, self.activity = self.step, following, ""
        if not step:
            return
        self.cached_steps += step["cached"]
        mark = Text("✘", style="red") if failed else Text("✔", style="green")
        self.console.print(self._row(mark, step, Text(f"{time.monotonic() - step['started']:.1f}s", style="dim"),
                                     Text("cached" if step["cached"] else "      ", style="cyan")))

    # -- events (a structlog processor) --------------------------------------------------
    def processor(self, logger: Any, method: str, event_dict: dict) -> dict:
        event = event_dict.get("event")
        if event == events.STEP:
            n, _, total = str(event_dict.get("step", "")).partition("/")
            self._finish_step({"n": n, "total": total, "name": event_dict.get("name", ""), "cached": False,
                               "instruction": _instruction(str(event_dict.get("instruction", ""))),
                               "started": time.monotonic()})
        elif event == events.LINE:
            line = str(event_dict.get("line", "")).strip()
            if line == "---> Using cache" and self.step:
                self.step["cached"] = True
            elif line and not line.startswith(_ENGINE_LINES):
                first, self.activity = not self.activity, _URL_PATH.sub("", line)
                if first:  # a fast step may print and end between two timed refreshes: show its first line now
                    self._live.refresh()
        elif event == events.OPENED:
            self.runtime = event_dict.get("runtime")
            self.phase = f"checking {event_dict.get('agent')} {event_dict.get('version')}"
        elif event == events.REUSED_IMAGE:
            self.phase = "inputs unchanged: reusing the image"
        elif event in (events.INSTALLING, events.BUILDING):
            self.phase = "starting the build"
        elif event == events.DEPS_REUSED:  # its steps are not in this build: one line for them
            self.console.print(Text.assemble(("✔ ", "green"), f"deps: {event_dict.get('image')} "
                                             f"({event_dict.get('origin')}) ", ("cached", "cyan")), soft_wrap=True)
        elif event == events.DEPS_BUILDING:
            self.phase = "building the dependency image"
        elif event == events.READY:
            self._finish_step(None)
            self.phase = "pushing to the registry" if self.pushing else "done"
        elif event == events.PUSHED:
            self.console.print(Text.assemble(("✔ ", "green"), f"pushed {event_dict.get('digest_ref')}"),
                               soft_wrap=True)
        if self.verbose or event_dict.get("level") == "warning":
            return event_dict
        raise structlog.DropEvent  # the CLI reports errors itself; the rest is on screen

    # -- the end -----------------------------------------------------------------------
    def summary(self, result: dict, sizes: tuple[int, int, str] | None) -> None:
        """Print what was built. SIZES: (image bytes, base bytes, base ref), or None if unknown."""
        rows = [("image", result["image"]), ("id", result["image_id"])]
        if result.get("digest_ref"):
            rows.append(("digest", result["digest_ref"]))
        if sizes:
            size, base_size, base = sizes
            rows.append(("size", f"{_mib(size)}, {_mib(size - base_size)} unique to this agent "
                                 f"(base {base}: {_mib(base_size)})"))
        if result.get("cached"):
            rows.append(("cached", "inputs unchanged: the existing image, nothing rebuilt"))
        else:
            names = ", ".join(result.get("steps_cached") or []) or "none"
            rows.append(("cached", f"{self.cached_steps}/{result.get('steps_total', 0)} steps ({names})"))
        if result.get("installed"):
            rows.append(("installed", ", ".join(result["installed"])))
        rows += [("warning", w) for w in result.get("warnings") or []]
        self.console.print(Text.assemble(("Built ", "bold green"), result["image"],
                                         f" in {result['duration_s']:.1f}s"))
        for label, value in rows:
            # soft wrap: the terminal folds a long line, so a copied reference stays whole
            self.console.print(Text.assemble((f"{label:<10} ", "bold"), value), soft_wrap=True)
