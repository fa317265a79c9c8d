"""The one retry policy for a registry reached through the engine (push and pull
of agent, dependency and base images): a few attempts with a growing pause, and
none for what another attempt cannot change (credentials refused, no such image).
The registry HTTP client (builder/ship/client.py) retries inside urllib3 instead."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import structlog

from builder.core.errors import EngineError, RegistryError

T = TypeVar("T")
ATTEMPTS = 3
# what the engine or registry says when trying again cannot help
PERMANENT = ("unauthorized", "authentication required", "denied", "not found", "manifest unknown")

log = structlog.get_logger("agent_image.registry")


def permanent(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in PERMANENT)


def with_retries(action: Callable[[], T], *, doing: str, attempts: int = ATTEMPTS,
                 sleep: Callable[[float], None] = time.sleep, **context) -> T:
    """Run ACTION; on a transient RegistryError/EngineError try again, pausing 0.5 s, 1 s, ...
    The last error, or a permanent one, is raised as it came."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (RegistryError, EngineError) as exc:
            if attempt == attempts or permanent(exc):
                raise
            log.warning(f"{doing} failed, retrying", attempt=attempt, error=str(exc), **context)
            sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
