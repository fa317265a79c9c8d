"""`agent-image prune`, and the budget `build` applies after each build (--prune-max-bytes)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from builder.core.units import parse_bytes, parse_duration

MAX_BYTES_ENV = "AGENT_IMAGE_PRUNE_MAX_BYTES"
SCOPE_ENV = "AGENT_IMAGE_PRUNE_SCOPE"


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 20G, 500M, 1000000)") from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 7d, 12h, 30m, 90)") from None


def _keep(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return int(text)


def _env_size():
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return None
    try:
        return parse_bytes(value)
    except ValueError:
        sys.exit(f"agent-image: error: {MAX_BYTES_ENV}={value!r} is not a size (e.g. 20G)")


def _env_scope() -> list[str]:
    return [p.strip() for p in os.environ.get(SCOPE_ENV, "").split(",") if p.strip()]


SCOPE_HELP = ("only images whose every reference starts with PREFIX (repeatable; default $AGENT_IMAGE_PRUNE_SCOPE, "
              "comma-separated, else every image agent-image built on this engine)")


def add_budget_options(b: argparse.ArgumentParser) -> None:
    g = b.add_argument_group("disk budget (docs/usage.md#prune)")
    g.add_argument("--prune-max-bytes", type=_size, default=None, metavar="SIZE",
                   help=f"after the build (success, failure or Ctrl-C), prune agent images, dependency images, download "
                        f"cache entries and crash files, least recently used first, until they take at most SIZE; "
                        f"what is protected (this build's image, builds in progress' leases, images in use) stays "
                        f"even above SIZE (default ${MAX_BYTES_ENV}; unset: no pruning)")
    g.add_argument("--prune-scope", action="append", default=None, metavar="PREFIX", help=SCOPE_HELP)


def budget(args) -> dict:
    """BuildOptions' prune_max_bytes and prune_scope from the options, else the environment."""
    max_bytes = args.prune_max_bytes if args.prune_max_bytes is not None else _env_size()
    return {"prune_max_bytes": max_bytes, "prune_scope": tuple(args.prune_scope or _env_scope())}


def add_prune(sub, add_common) -> None:
    p = sub.add_parser(
        "prune", help="remove what builds left on this runner, least recently used first",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Remove agent images, dependency images, download-cache entries, crash files, partial "
                    "downloads and stale build sandboxes, least recently used first. Never a base image, an image "
                    "a container uses or a build in progress leased, nor an image others are built on (it goes "
                    "with them). Without --max-bytes and --older-than, everything else in scope goes.\n\n"
                    "The budget (--max-bytes) counts everything in scope, protected or not; what may go goes, "
                    "least recently used first, until the total is at most SIZE. Afterwards the total is at most "
                    "max(SIZE, protected bytes): the only excess is what no prune may take at that moment (in use, "
                    "leased by a build in progress, kept by --keep/--older-than, and what those stand on); both "
                    "numbers are in the output (usage_after, protected_bytes).")
    p.add_argument("--max-bytes", type=_size, metavar="SIZE", help="stop once what is left takes at most SIZE "
                   "(K, M, G, T: powers of 1024)")
    p.add_argument("--keep", type=_keep, default=0, metavar="N",
                   help="keep each agent's N most recently used images (default 0)")
    p.add_argument("--older-than", type=_duration, metavar="AGE",
                   help="remove only what was last used more than AGE ago (90, 30m, 12h, 7d, 2w)")
    p.add_argument("--scope", action="append", default=None, metavar="PREFIX", help=SCOPE_HELP)
    p.add_argument("--dry-run", action="store_true", help="list what would go and the bytes it frees; remove nothing")
    p.add_argument("--cache-dir", type=Path, help="the cache folder builds use (default $AGENT_IMAGE_CACHE or "
                                                  "~/.cache/agent-image)")
    add_common(p)


def cmd_prune(args, engine_factory) -> dict:
    from builder.build.prune import Policy, prune
    from builder.core.defaults import DEFAULT_CACHE_DIR
    policy = Policy(max_bytes=args.max_bytes, keep=args.keep, older_than=args.older_than,
                    scope=tuple(args.scope or _env_scope()))
    out = prune(engine_factory(), args.cache_dir or DEFAULT_CACHE_DIR, policy, dry_run=args.dry_run).to_dict()
    if not args.json:
        for item in out["removed"]:
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item["last_used"]))
            what = ", ".join(item["refs"]) or item["id"]
            print(f"{'would remove' if args.dry_run else 'removed'} {item['kind']} {what} "
                  f"({_human(item['bytes'])}, last used {when})")
        print(f"{'would free' if args.dry_run else 'freed'} {_human(out['freed_bytes'])}: "
              f"{_human(out['usage_before'])} -> {_human(out['usage_after'])} "
              f"(protected {_human(out['protected_bytes'])})"
              + (f"; kept: {', '.join(f'{k} {v}' for k, v in sorted(out['kept'].items()))}" if out["kept"] else ""))
    return {"ok": True, **out}


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
