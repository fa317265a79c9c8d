"""What a build says about the agent's runtime: its Python's end of life (core/pythons.py,
the one table of dates), and whether pixell-kit allows it yet."""

from __future__ import annotations

import datetime as dt

import structlog

from builder.core import events
from builder.core.pythons import PYTHONS, eol_warning, end_of_life
from builder.package.manifest import SUPPORTED_RUNTIMES, Manifest

log = structlog.get_logger("agent_image")


def runtime_facts(m: Manifest, today: dt.date | None = None) -> tuple[dict, str | None]:
    """The build result's ``runtime`` object, and the warning when its Python is past end of life."""
    known = PYTHONS.get(m.python)
    facts = {
        "name": m.runtime,
        "python": m.python,
        "end_of_life": known.end_of_life.isoformat() if known else None,
        "past_end_of_life": end_of_life(m.python, today) is not None,
        "preview": m.runtime not in SUPPORTED_RUNTIMES,  # accepted only through AGENT_IMAGE_PREVIEW_RUNTIMES
    }
    return facts, eol_warning(m.python, [r for r in SUPPORTED_RUNTIMES if r != m.runtime], today)


def warn_about_runtime(m: Manifest) -> None:
    """The log's warning events: a runtime past end of life, or one the kit does not allow yet."""
    facts, warning = runtime_facts(m)
    if warning:
        log.warning(events.RUNTIME_EOL, runtime=m.runtime, python=m.python, end_of_life=facts["end_of_life"],
                    hint=warning)
    if facts["preview"]:
        log.warning(events.RUNTIME_PREVIEW, runtime=m.runtime, python=m.python)
