"""Readers of parsed options that several commands share."""

from __future__ import annotations

import os

from builder.package.reader import Limits


def registry_auth(args) -> dict | None:
    """Registry credentials from options + environment; None means the Docker config's."""
    user = getattr(args, "registry_username", None)
    if not user:
        return None
    from builder.core.redact import register_secret
    password = os.environ.get("AGENT_IMAGE_REGISTRY_PASSWORD", "")
    register_secret(password)
    return {"username": user, "password": password}


def platform_of(args) -> str | None:
    """--platform of pull, run, rebase and ecs-task-def: one platform, checked (exit 10), or None."""
    from builder.core.platforms import normalize
    return normalize(args.platform) if getattr(args, "platform", None) else None


def limits(args) -> Limits:
    return Limits(max_entries=args.max_entries, max_total_bytes=args.max_total_bytes, max_ratio=args.max_ratio)
