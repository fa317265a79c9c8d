"""What one build asked of the index proxy (builder/build/proxy/server.py), reported in its result."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """What one build asked of the index. Reported in the build result."""
    upstream_requests: int = 0
    upstream_bytes: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    auth_failures: list[int] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)   # upstream answers not passed on (caps, redirects)
    denied: int = 0                                     # requests from the build outside the allow-list
    # versions each project page listed (normalised name -> versions): uv names no
    # alternatives when a version is missing, so the error takes them from here
    versions: dict[str, list[str]] = field(default_factory=dict)
    downloaded: list[str] = field(default_factory=list)  # file names fetched from upstream
    reused: list[str] = field(default_factory=list)      # file names served from the cache
    prefetch: dict[str, int] = field(default_factory=dict)  # builder/build/proxy/prefetch.py's counts
    sources: list[str] = field(default_factory=list)     # not a wheel of the index: an sdist (its code runs), another host's

    def as_dict(self) -> dict:
        return {"upstream_requests": self.upstream_requests, "upstream_bytes": self.upstream_bytes,
                "cache_hits": self.cache_hits, "cache_bytes": self.cache_bytes, "denied": self.denied,
                "downloaded": sorted(set(self.downloaded)), "reused": sorted(set(self.reused)),
                "prefetch": dict(self.prefetch)}
