"""Usage errors argparse cannot see: every malformed image reference, registry or URL given
as an option is exit 2 at parse time, before a package is read or anything is asked.

A command's own checks (builder/api.py, builder/core/refs.py) stay for Python callers;
here the same readers run on the command line first, so a typo in CI reads as a typo
(exit 2) and never as a bad package (10) or a registry fault (60).
"""

from __future__ import annotations

import argparse

from builder.core.errors import PackageLoadError
from builder.core.redact import redact
from builder.core.refs import REPOSITORY_RE, check_image_ref, parse

# options holding an image reference (dest -> how --help spells it), on whichever command has them
_REFS = {"base_image": "--base-image", "base": "--base", "tag": "--tag", "from_image": "--from",
         "ref": "REF", "refs": "REF"}


def _port_ok(repository: str) -> bool:
    """REPOSITORY_RE takes any digits after a colon in the host; a port is 1-65535."""
    host, _, _ = repository.partition("/")
    port = host.rpartition(":")[2] if ":" in host else None
    return port is None or (port.isdigit() and 0 < int(port) < 65536)


def _check_ref(ref: str, option: str) -> None:
    check_image_ref(ref, option)
    if not _port_ok(parse(ref).repository):
        raise ValueError(f"{ref!r}: the registry port is not 1-65535")


def _check_repository(value: str, what: str, example: str, shown: str | None = None) -> None:
    if not REPOSITORY_RE.match(value) or not _port_ok(value):
        raise ValueError(f"{shown or value!r} is not a valid {what} (lowercase host[:port]/path components, "
                         f"a port of 1-65535; e.g. {example})")


def _check_index_url(url: str) -> None:
    from builder.build.proxy.upstream import Upstream
    Upstream.parse(url)  # the reader a build uses: one URL, one reading


def problems(args) -> list[str]:
    """What is malformed in ARGS (a parsed namespace of any command), one line each, naming the option."""
    checks = []  # (option, check)
    registry = getattr(args, "registry", None)
    if registry:
        # a repository is REGISTRY/NAME: checked with a stand-in name (agent names are the package's to check)
        checks.append(("--registry", lambda: _check_repository(
            f"{registry.rstrip('/')}/agent", "registry", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/agents",
            shown=registry)))
    if getattr(args, "repository", None):
        checks.append(("--repository", lambda: _check_repository(args.repository, "repository",
                                                                  "127.0.0.1:5000/agents/my-agent")))
    if getattr(args, "index_url", None):
        checks.append(("--index-url", lambda: _check_index_url(args.index_url)))
    for dest, option in _REFS.items():
        value = getattr(args, dest, None)
        for v in [value] if isinstance(value, str) and value else value if isinstance(value, list) else []:
            checks.append((option, lambda v=v, o=option: _check_ref(v, o)))
    said = []
    for option, check in checks:
        try:
            check()
        except PackageLoadError as exc:
            said.append(f"{option}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        except ValueError as exc:
            said.append(f"{option}: {redact(str(exc))}")
    return said


def positive(kind):
    """argparse type: a finite number above 0 (a usage error, exit 2, otherwise)."""
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
        return value
    return convert


def port(text: str) -> int:
    value = positive(int)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value
