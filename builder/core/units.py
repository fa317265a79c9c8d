"""Sizes and durations as people type them on a command line or in an environment variable."""

from __future__ import annotations


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '12h', '7d', '2w' -> seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    value = float(t[:-1] if scale else t)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value * (scale or 1)


def parse_bytes(text: str) -> int:
    """'500000000', '500M', '2G', '1.5GiB', '800MB' -> bytes (K, M, G, T: powers of 1024); ValueError otherwise."""
    t = text.strip().upper()
    t = t[:-1] if t.endswith("B") else t
    t = t[:-1] if t.endswith("I") else t
    scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}.get(t[-1:], 1)
    value = float(t[:-1] if scale > 1 else t)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return int(value * scale)
