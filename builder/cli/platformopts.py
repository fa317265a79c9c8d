"""--platform, as each command reads it (builder/core/platforms.py names the platforms)."""

from __future__ import annotations

import argparse

HELP = {
    "build": "build for these platforms, e.g. linux/amd64,linux/arm64 (default: the host's, one image as before); "
             "each is tagged VERSION-ARCH and --push puts one OCI image index over them at VERSION and latest; "
             "another CPU's steps run under QEMU emulation (scripts/setup.sh registers it)",
    "base": "linux/amd64, linux/arm64 or both, comma-separated (default the host's); another CPU's base is FROM "
            "agent-image/python:X.Y-ARCH, tagged agent-image/base:pyX.Y-ARCH, and its steps run under QEMU emulation; "
            "several with --push: each as REGISTRY/agent-image.base:pyX.Y-ARCH and one index at pyX.Y (a --base for "
            "rebase of multi-platform agents)",
    "pull": "that platform's image of a multi-platform index (linux/amd64, linux/arm64; exit 65 when it has none); "
            "default the host's",
    "run": "run that platform's image (pulled from its index when the engine lacks it; another CPU's runs under "
           "QEMU emulation); exit 65 when there is none",
    "ecs-task-def": "the task's platform: linux/arm64 gives runtimePlatform ARM64 (Graviton) from that platform's "
                    "image of the index; exit 65 when it has none",
    "rebase": "for a multi-platform index: rebase that platform's image onto the base's image of the same platform "
              "and move the index (default: every platform the index holds); exit 65 when the image or the base "
              "lacks it",
}


def add_platform(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("--platform", metavar="OS/ARCH[,...]" if command in ("build", "base") else "OS/ARCH",
                   help=HELP[command])
