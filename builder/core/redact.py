"""Secrets out of every message: the per-build ``Redactor`` (the values it learned: index and
registry credentials, .env values) over fixed patterns (URL userinfo, token-looking
arguments). Errors pass their messages through ``redact``; so does every log line.

This module imports nothing else of ours.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator

# userinfo in a URL (https://user:TOKEN@host) and token-looking query args
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s:]+(?::[^/@\s]*)?)@")
_SECRET_KV = re.compile(r"(?i)\b(token|password|passwd|secret|authorization)(=|:\s*)(\S+)")

# Words of the build log's own syntax (the engine's, pip's, uv's and ours). A
# .env value equal to one of them is never hidden: `X=Successfully` must not
# blind the classifiers or the reader.
LOG_WORDS = frozenset("""
    step error errors warning warnings successfully collecting downloading installing installed building built
    running requirement requirements already satisfied using cache cached looking indexes obtaining processing
    preparing metadata attempting uninstalling uninstalled removing removed intermediate container sending
    context tagged stored created wheel wheels editable resolved prepared audited downloaded collected packages
    package satisfies matching distribution version versions found could cannot conflict conflicting because
    dependency dependencies resolver subprocess exited failed failure generation setup install uninstall source
    python import module modules return returned command status running notice info debug critical traceback
    recent exception message hint field agent image images layer layers build builds pushed pulled digest latest
    """.split())
MIN_VALUE_CHARS = 6
# a .env value is hidden only as a whole token: not inside a word, a host name,
# a path or a URL (evil.example stays visible in https://evil.example/simple)
_BEFORE = r"(?<![\w.\-/@+%~])"
_AFTER = r"(?![\w\-/@+%~:])(?!\.\w)"


class Redactor:
    """What one build hides in its logs and errors.

    Credentials (index tokens, registry passwords) are hidden wherever they
    occur. Values from the package's .env files are the package's word, so
    they are hidden only as whole tokens, only when at least 6 characters,
    never when they are a word of the log's syntax and never when the package
    shows them itself (in requirements or agent.yaml). Nothing outlives the
    build: each build gets its own (``redaction_scope``).
    """

    def __init__(self, parent: "Redactor | None" = None) -> None:
        self._secrets: set[str] = set(parent._secrets) if parent else set()
        self._values: set[str] = set(parent._values) if parent else set()
        self._pattern: re.Pattern | None = None

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._secrets.add(value)

    def add_value(self, value: str | None, public: str = "") -> bool:
        """Hide a .env VALUE as a whole token, unless the rules above say no; True when taken."""
        value = (value or "").strip()
        words = re.findall(r"\w+", value.lower())
        if (len(value) < MIN_VALUE_CHARS or "\n" in value or all(w in LOG_WORDS for w in words)
                or (public and value in public)):
            return False
        self._values.add(value)
        self._pattern = None
        return True

    def __call__(self, text: Any) -> Any:
        if not isinstance(text, str):
            return text
        out = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
        out = _SECRET_KV.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in out:
                out = out.replace(secret, "***")
        if self._values:
            if self._pattern is None:
                alts = "|".join(re.escape(v) for v in sorted(self._values, key=len, reverse=True))
                self._pattern = re.compile(f"{_BEFORE}(?:{alts}){_AFTER}")
            out = self._pattern.sub("***", out)
        return out


_BASE = Redactor()  # patterns only; it never learns a value
_CURRENT: ContextVar[Redactor] = ContextVar("agent_image_redactor")


def current_redactor() -> Redactor:
    return _CURRENT.get(_BASE)


@contextmanager
def redaction_scope() -> Iterator[Redactor]:
    """A Redactor for one build (or one CLI command), inheriting the enclosing
    scope's secrets; what it learns is gone when the scope ends."""
    redactor = Redactor(parent=_CURRENT.get(None))
    token = _CURRENT.set(redactor)
    try:
        yield redactor
    finally:
        _CURRENT.reset(token)


def register_secret(value: str | None) -> None:
    """Hide a credential for the rest of the current scope. Outside any scope
    there is nowhere to keep it (no process-wide list): the URL-userinfo and
    key=value patterns still apply."""
    redactor = _CURRENT.get(None)
    if redactor is not None:
        redactor.add_secret(value)


def redact(text: Any) -> Any:
    """Hide credentials and the current build's secrets in a string (other types pass)."""
    return current_redactor()(text)
