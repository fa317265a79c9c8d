"""Target platforms (``linux/amd64``, ``linux/arm64``): their names, the host's, and the
per-platform names of the images made for them (one home for these facts).

An image is built for one platform; a multi-platform push is one OCI image index
holding each platform's manifest. On a host of another CPU, a platform's build
steps run under QEMU user emulation (binfmt_misc): ``EMULATION_FIX`` says how to
turn it on.
"""

from __future__ import annotations

import os
import platform as _platform
from pathlib import Path

from builder.core.errors import EmulationMissingError, PackageValidationError

# Docker's architecture names (the image config's "architecture") by platform
ARCHES = {"linux/amd64": "amd64", "linux/arm64": "arm64"}
_ALIASES = {"amd64": "linux/amd64", "x86_64": "linux/amd64", "linux/x86_64": "linux/amd64",
            "arm64": "linux/arm64", "aarch64": "linux/arm64", "linux/aarch64": "linux/arm64",
            "linux/arm64/v8": "linux/arm64"}
# the CPU names wheel platform tags and binfmt_misc handlers use
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# glibc (major, minor) of the Debian releases the bases come from (the ABI label's distro)
GLIBC = {"debian:12": (2, 36), "debian:11": (2, 31)}
BINFMT = Path(os.environ.get("AGENT_IMAGE_BINFMT_DIR", "/proc/sys/fs/binfmt_misc"))
EMULATION_FIX = ("apt-get install -y qemu-user-static binfmt-support && "
                 "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
                 "update-binfmts --enable qemu-{machine} (or: bash scripts/setup.sh)")


def normalize(text: str) -> str:
    """One platform, as Docker names it; a PackageValidationError (exit 10) for one we do not build."""
    name = _ALIASES.get(text.strip().lower(), text.strip().lower())
    if name not in ARCHES:
        raise PackageValidationError(f"--platform {text!r}: agent-image builds {', '.join(ARCHES)}",
                                     field="--platform", hint="Pass linux/amd64, linux/arm64 or both, comma-separated.")
    return name


def parse_platforms(text: str | None) -> tuple[str, ...]:
    """``linux/amd64,linux/arm64`` -> each platform once, in the order given; the host's when TEXT is empty."""
    if not text or not text.strip():
        return (host_platform(),)
    out: list[str] = []
    for part in text.split(","):
        name = normalize(part)
        if name not in out:
            out.append(name)
    return tuple(out)


def host_platform() -> str:
    """The builder host's platform (the engine's, for a local engine)."""
    machine = _platform.machine().lower()
    return _ALIASES.get(machine, f"linux/{machine}")


def arch(platform: str) -> str:
    return ARCHES[normalize(platform)]


def is_host(platform: str | None) -> bool:
    return platform is None or normalize(platform) == host_platform()


def tag_suffix(platform: str | None) -> str:
    """'' for the host's platform (its images keep the names they always had), else '-ARCH':
    agent-image/base:py3.11 and agent-image/base:py3.11-arm64 on an amd64 host."""
    return "" if is_host(platform) else f"-{arch(platform)}"


def platform_of(architecture: str, os_name: str = "linux") -> str:
    """An image's platform from its config's os and architecture."""
    return f"{os_name or 'linux'}/{architecture}"


def emulation_ready(platform: str) -> bool:
    """Can this host run PLATFORM's binaries (natively, or through a binfmt_misc handler)?"""
    if is_host(platform):
        return True
    machine = MACHINES[arch(platform)]
    entry = BINFMT / f"qemu-{machine}"
    try:
        return entry.is_file() and entry.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        return False


def require_emulation(platform: str, doing: str) -> None:
    """EmulationMissingError (exit 53) with the command that fixes it, when PLATFORM cannot run here."""
    if emulation_ready(platform):
        return
    machine = MACHINES[arch(platform)]
    raise EmulationMissingError(
        f"{doing} for {platform} needs QEMU user emulation on this {host_platform()} host, and "
        f"{BINFMT}/qemu-{machine} is not registered", field="--platform",
        hint=f"Run as root: {EMULATION_FIX.format(machine=machine)}")


def platform_tag(tag: str, platform: str | None, per_platform: bool) -> str:
    """TAG for one platform's image of a multi-platform push (VERSION-ARCH, latest-ARCH); the index takes TAG."""
    return f"{tag}-{arch(platform or host_platform())}" if per_platform else tag
