""".env files: which paths of a package are one, and the values they hold.

A package's `.env` may hold real secrets (the `pixell build` kit copies it
in). Every file or folder named `.env` or `.env.*`, at any depth, stays out of
the build context unless `--include-env` asks for it; their values are what
the build's redactor hides (builder/core/errors.py decides which ones qualify).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath


def is_env_name(name: str) -> bool:
    name = name.lower()  # `.ENV` is the same file on a case-insensitive disk
    return name == ".env" or name.startswith(".env.")


def is_env_path(rel: str) -> bool:
    """Is REL (relative to the package root) a .env file, or inside a folder named like one?"""
    return any(is_env_name(part) for part in PurePosixPath(rel).parts)


def env_paths(root: Path) -> list[str]:
    """Every .env path under ROOT (a folder named like one is listed, not its contents), sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            if is_env_name(name):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
        dirnames[:] = sorted(d for d in dirnames if not is_env_name(d))
    return sorted(out)


def env_aliases(root: Path, paths: list[str]) -> list[str]:
    """Files under ROOT, not named like .env, that hold a .env file's bytes: the same file
    (st_dev, st_ino) as a regular file among PATHS or inside one of them (a hard link under
    another name), or the file (or folder's files) a `.env` symlink points at. (A zip has no
    hard links, and its symlinks are refused.)"""
    secret: set[tuple[int, int]] = set()
    for rel in paths:
        for path in [root / rel] + sorted((root / rel).rglob("*")) if (root / rel).is_dir() else [root / rel]:
            st = _lstat(path)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                secret.add((st.st_dev, st.st_ino))
            elif st is not None and stat.S_ISLNK(st.st_mode):  # `.env -> config/prod.env`: the target is the secret
                secret.update(_targets(root, path))
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root) if secret else ():
        dirnames[:] = sorted(d for d in dirnames if not is_env_name(d))
        for name in sorted(filenames):
            st = _lstat(Path(dirpath) / name)
            if (not is_env_name(name) and st is not None and stat.S_ISREG(st.st_mode)
                    and (st.st_dev, st.st_ino) in secret):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def _targets(root: Path, link: Path) -> set[tuple[int, int]]:
    """The (st_dev, st_ino) of the regular files LINK leads to inside ROOT (a file, or a folder's files)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError):
        return set()
    if root.resolve() not in target.parents:
        return set()  # (a link out of the package is refused by the reader)
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {(st.st_dev, st.st_ino) for st in map(_lstat, files) if st is not None and stat.S_ISREG(st.st_mode)}


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _value(raw: str) -> str:
    raw = raw.strip()
    if raw[:1] in "'\"" and raw.endswith(raw[:1]) and len(raw) > 1:
        return raw[1:-1]
    return raw.split(" #", 1)[0].strip()  # an unquoted value ends at an inline comment


def env_values(root: Path, paths: list[str]) -> list[str]:
    """The values of KEY=VALUE lines in the regular .env files among PATHS."""
    values: list[str] = []
    for rel in paths:
        path = root / rel
        try:  # a `.env` that is a link to a file in the package holds that file's values
            if path.is_symlink() and root.resolve() in path.resolve().parents:
                path = path.resolve()
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("export "):
                line = line[7:]
            if "=" in line and not line.startswith("#"):
                values.append(_value(line.split("=", 1)[1]))
    return [v for v in values if v]
