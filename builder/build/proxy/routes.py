"""What a build may ask the index proxy for (builder/build/proxy/server.py): its routes.

An allow-list of request paths, each mapped to a kind; everything else is
refused with a one-line reason before the proxy does any work.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import urlsplit

from builder.plan.proxied import PIP_INDEX_HOST

READY_PATH = "/_sandbox/ready"  # the sandbox's forwarder says hello here once it listens
PROJECT_NAME = r"[a-z0-9]+(?:-[a-z0-9]+)*"  # a PEP 503 normalised project name, nothing else
_ROUTES = [
    ("page", re.compile(rf"/simple/({PROJECT_NAME})/?")),
    ("file", re.compile(r"/_f/([0-9a-f]{32})/([^/?#]+)")),
    ("xpage", re.compile(rf"/_x/([A-Za-z0-9_-]+=*)/({PROJECT_NAME})/?")),
    ("links", re.compile(r"/_l/([A-Za-z0-9_-]+=*)/?")),
    ("direct", re.compile(r"/_d/([A-Za-z0-9_-]+=*)/([^/?#]+)")),
]


class Denied(Exception):
    """A request from the build that the allow-list does not name."""

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason
        super().__init__(reason)


def unb64(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise Denied(404, "not an index URL this proxy issued") from None


def route(target: str) -> tuple[str, tuple[str, ...]]:
    """A request target -> (kind, groups). Absolute-form only for the index's own host."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        if parts.scheme != "http" or parts.hostname != PIP_INDEX_HOST or parts.port not in (None, 80):
            raise Denied(403, "this proxy serves the package index only")
        target = parts.path or "/"
    path = target.split("?", 1)[0].split("#", 1)[0]
    if path == READY_PATH:
        return "ready", ()
    for kind, pattern in _ROUTES:
        m = pattern.fullmatch(path)
        if m:
            return kind, m.groups()
    raise Denied(404, "not an index path: only /simple/<normalised-name>/ and the files its pages link")
