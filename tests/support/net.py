"""Loopback ports, GET of a JSON URL, and waiting for a URL to answer."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok=(200, 401), context=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def get(url: str) -> tuple[int, dict]:
    """(status, JSON body) of GET URL; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def wait_for(url: str, status: int = 200, timeout: float = 30) -> list[int]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code, _ = get(url)
            seen.append(code)
            if code == status:
                return seen
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered {status}; saw {seen[-5:]}")
