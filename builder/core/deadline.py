"""The command's wall-clock deadline (``--timeout``), checked by the work done
before the engine is asked anything: extracting the package, reading its
requirements. The engine's own build gets what is left of it."""

from __future__ import annotations

import time

from builder.core.errors import BuildTimeoutError


def check_deadline(deadline: float | None, doing: str) -> None:
    """Raise BuildTimeoutError when DEADLINE (time.monotonic()) has passed; None: no deadline."""
    if deadline is not None and time.monotonic() > deadline:
        raise BuildTimeoutError(f"--timeout passed while {doing}, before the engine was asked anything; "
                                "nothing was built", hint="Raise --timeout, or make the package smaller.")
