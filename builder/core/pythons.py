"""The Pythons agent-image knows, in one table: end of life, and the Debian suite that ships each.

pixell-kit decides which ``runtime`` an agent may name (package/manifest.py
SUPPORTED_RUNTIMES); this table says what agent-image can build a base for
(`agent-image base --python`), when each version stops getting security fixes
(https://devguide.python.org/versions/: the fifth October after its release), and
where scripts/setup.sh gets its interpreter (debootstrap of that Debian suite).
A version with no suite (3.12: no current Debian suite ships it) needs
`agent-image base --from IMAGE`.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Python:
    version: str                  # major.minor
    end_of_life: dt.date          # upstream's last security release month (the month's end)
    debian_suite: str | None      # the Debian suite whose python3 it is, for setup.sh's debootstrap


PYTHONS: dict[str, Python] = {p.version: p for p in (
    Python("3.9", dt.date(2025, 10, 31), "bullseye"),
    Python("3.11", dt.date(2027, 10, 31), "bookworm"),
    Python("3.12", dt.date(2028, 10, 31), None),
    Python("3.13", dt.date(2029, 10, 31), "trixie"),
)}

# runtimes pixell-kit does not allow yet, which a build accepts only when asked by name:
# AGENT_IMAGE_PREVIEW_RUNTIMES=python3.13 (comma-separated). The day the kit allows one,
# it moves to manifest.SUPPORTED_RUNTIMES and nothing else changes (its base is built already).
PREVIEW_RUNTIMES = {f"python{v}": v for v in ("3.12", "3.13")}
PREVIEW_ENV = "AGENT_IMAGE_PREVIEW_RUNTIMES"


def python_image(version: str) -> str:
    """The Python image scripts/setup.sh imports for VERSION (what `base` builds FROM by default)."""
    return f"agent-image/python:{version}"


def end_of_life(version: str, today: dt.date | None = None) -> dt.date | None:
    """VERSION's end-of-life date when it has passed (by TODAY), else None."""
    known = PYTHONS.get(version)
    today = today or dt.date.today()
    return known.end_of_life if known and known.end_of_life < today else None


def eol_warning(version: str, instead: list[str], today: dt.date | None = None) -> str | None:
    """The sentence a build of a VERSION agent warns with (INSTEAD: the runtimes it may move to),
    or None while VERSION is supported."""
    eol = end_of_life(version, today)
    if eol is None:
        return None
    others = [f"{r} (until {PYTHONS[r.removeprefix('python')].end_of_life:%B %Y})" for r in instead
              if r.removeprefix("python") in PYTHONS and not end_of_life(r.removeprefix("python"), today)]
    return (f"runtime python{version} is past its end of life: Python {version} has had no security fixes since "
            f"{eol:%B %Y}. Set 'runtime' in agent.yaml to a supported one"
            + (f": {', '.join(others)}" if others else "") + ".")


def preview_runtimes(environ: os._Environ | dict | None = None) -> dict[str, str]:
    """The preview runtimes this process was told to accept (runtime -> Python), from PREVIEW_ENV."""
    asked = (environ if environ is not None else os.environ).get(PREVIEW_ENV, "")
    names = {n.strip() for n in asked.split(",") if n.strip()}
    return {n: PREVIEW_RUNTIMES[n] for n in sorted(names) if n in PREVIEW_RUNTIMES}
