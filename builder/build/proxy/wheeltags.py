"""Which wheels on an index page the build's interpreter could ever install.

A project page on PyPI lists every file of every release: pydantic-core's is
4.3 MB of 15,000 links, nearly all for Windows, macOS, musl, other CPUs and
other Pythons. pip in the build parses every one of them (0.6 s for that
page alone) and rewriting them costs the index proxy as much again, one page
at a time, while the resolver waits. The proxy drops the links whose tags
the target can never match, so pip sees the page it would have filtered to
anyway.

The target is the base image: its Python (the ABI label) and its CPU (the
image's architecture). The tags kept are a superset of what pip accepts
there (any glibc version of manylinux for that CPU: pip itself then rejects
a manylinux newer than the base's glibc), so nothing pip could have chosen
goes missing. Source distributions, files that are not wheels and names
that do not parse as wheels are always kept: pip decides about those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from packaging import tags as _tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from builder.core.labels import parse_abi

# Docker's architecture names -> the platform tag's
_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
# distributions (the ABI label's distro=ID:VERSION, from os-release) whose C library is glibc:
# manylinux wheels are theirs; Alpine's musl takes musllinux ones, which the filter would drop
_GLIBC = {"debian", "ubuntu", "fedora", "centos", "rhel", "rocky", "almalinux", "amzn", "ol"}
_GLIBC_MINORS = range(99, 4, -1)  # every manylinux_2_X the tag format can name in practice
_LEGACY = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


@dataclass
class Target:
    """The interpreter a build installs into: CPython 3.MINOR on glibc Linux for ARCH."""
    minor: int
    arch: str
    supported: frozenset = field(repr=False, default=frozenset())
    ranks: dict = field(repr=False, default_factory=dict)  # tag -> pip's preference (0 first)
    _seen: dict[str, bool] = field(repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        plats = [f"manylinux_2_{m}_{self.arch}" for m in _GLIBC_MINORS]
        plats += [f"{name}_{self.arch}" for name in _LEGACY] + [f"linux_{self.arch}"]
        version = (3, self.minor)
        ordered = [*_tags.cpython_tags(version, [f"cp3{self.minor}"], plats),
                   *_tags.compatible_tags(version, f"cp3{self.minor}", plats)]
        self.supported = frozenset(ordered)
        for i, tag in enumerate(ordered):
            self.ranks.setdefault(tag, i)

    def keeps(self, filename: str) -> bool:
        """Could pip on this target install FILENAME (a wheel), or is it not ours to judge?"""
        if not filename.endswith(".whl"):
            return True
        # the tag triple repeats across a project's releases: decide each once
        triple = filename[:-4].rsplit("-", 3)[-3:]
        key = "-".join(triple)
        known = self._seen.get(key)
        if known is None:
            try:
                _, _, _, file_tags = parse_wheel_filename(filename)
            except InvalidWheelFilename:
                return True
            known = self._seen[key] = not file_tags.isdisjoint(self.supported)
        return known

    def rank(self, filename: str) -> int:
        """How much pip prefers wheel FILENAME here (lower first; an unusable one last)."""
        try:
            file_tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return len(self.ranks)
        return min((self.ranks.get(t, len(self.ranks)) for t in file_tags), default=len(self.ranks))


def target(abi_label: str | None, architecture: str) -> Target | None:
    """The target a base image describes, or None (filter nothing) when it is not one we know:
    no ABI label, a Python that is not 3.x, a distribution not known to use glibc, a CPU
    without a wheel platform name here. (The label's Python is the venv's, which `python3 -m
    venv` makes from the distribution's default build, not a free-threaded one.)"""
    fields = parse_abi(abi_label)
    major, _, minor = fields.get("python", "").partition(".")
    arch = _ARCH.get(architecture, "")
    distro = fields.get("distro", "").split(":", 1)[0].lower()
    if major != "3" or not minor.isdigit() or not arch or distro not in _GLIBC:
        return None
    return Target(int(minor), arch)
