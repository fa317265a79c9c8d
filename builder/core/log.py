"""structlog set-up: small composable processors, JSON off a TTY unless told (the CLI tells: --progress).

``redact_secrets`` sits in the chain once, so no log line anywhere can carry
an index token, a URL password or a registered .env value.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from builder.core.redact import redact


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    return value


def redact_secrets(logger: Any, method: str, event_dict: dict) -> dict:
    return {k: _scrub(v) for k, v in event_dict.items()}


class _CurrentStderr:
    """sys.stderr as it is at each write, not as it was when logging was set up
    (a caller, or pytest, may swap and close the stream in between)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(*, json_output: bool | None = None, verbose: bool = False, stream=None, progress=None) -> None:
    """Logs go to stderr (stdout carries the result). JSON when not a TTY or when asked.

    PROGRESS (a builder.cli.progress.BuildProgress on a terminal) sees every event,
    debug included, after redaction, and decides which ones reach the screen.
    """
    stream = stream or _CurrentStderr()
    if json_output is None:
        json_output = not stream.isatty()
    renderer = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            *([progress.processor] if progress else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose or progress else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
