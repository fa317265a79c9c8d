"""The Docker config's credentials for a registry host (builder/ship/client.py asks it when a
build names none)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path


def docker_config_auth(host: str, env: dict[str, str] | None = None) -> dict | None:
    """The Docker config's credentials for HOST: auths (``auth`` or username/password),
    then credHelpers/credsStore through their ``docker-credential-*`` program."""
    env = os.environ if env is None else env
    path = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")
    for key in keys:
        entry = (cfg.get("auths") or {}).get(key) or {}
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return {"username": user, "password": password}
        if entry.get("username"):
            return {"username": entry["username"], "password": entry.get("password", "")}
    helper = (cfg.get("credHelpers") or {}).get(host) or cfg.get("credsStore")
    if helper and re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
        try:
            out = subprocess.run([f"docker-credential-{helper}", "get"], input=host, capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            data = json.loads(out)
            return {"username": data["Username"], "password": data["Secret"]}
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            return None
    return None
