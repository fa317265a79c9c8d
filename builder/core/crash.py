"""An unexpected exception becomes ``InternalError`` (exit 99), never a traceback.

The full traceback goes to a file under the cache dir, passed through the
same redaction as every log line; the user sees one line naming the
exception class and that file.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path

from builder.core.errors import InternalError
from builder.core.redact import redact


def _candidates(cache_dir: Path | None) -> list[Path]:
    dirs = [Path(cache_dir)] if cache_dir else []
    try:
        from builder.core.defaults import DEFAULT_CACHE_DIR
        dirs.append(DEFAULT_CACHE_DIR)
    except Exception:  # the crash may be in importing the pipeline itself
        pass
    return dirs + [Path(tempfile.gettempdir()) / "agent-image"]


def write_traceback(exc: BaseException, cache_dir: Path | None = None) -> str | None:
    """Write EXC's redacted traceback under the first writable cache dir; return its path."""
    text = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    name = f"crash-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.txt"
    for folder in _candidates(cache_dir):
        try:
            (folder / "crashes").mkdir(parents=True, exist_ok=True)
            path = folder / "crashes" / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return None


def internal_error(exc: BaseException, cache_dir: Path | None = None) -> InternalError:
    where = write_traceback(exc, cache_dir)
    cls = type(exc)
    qualname = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    detail = " ".join(str(exc).split())[:200]
    return InternalError(
        f"this is a bug in agent-image: unexpected {qualname}" + (f" ({detail})" if detail else "")
        + (f"; the full traceback is in {where}" if where else "; no traceback file could be written")
        + ". Please report it with that file.", traceback_file=where)
