"""A deterministic build context: the same inputs give the same tar bytes.

Entries are sorted, with fixed owner, mode and mtime, so the engine's layer
cache keeps hitting across machines and checkouts (repo2docker's lesson).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

EPOCH = 0  # fixed mtime for every entry


@dataclass(frozen=True)
class Context:
    data: bytes
    digest: str  # sha256 of the tar: identifies exactly what the engine saw

    @property
    def size(self) -> int:
        return len(self.data)


def _info(name: str, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def package_files(root: Path, exclude: set[str]) -> list[str]:
    """Relative paths of every file and symlink under ROOT, sorted, minus EXCLUDE."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in exclude and not any(rel.startswith(e.rstrip("/") + "/") for e in exclude):
                out.append(rel)
    return sorted(out)


def build_context(root: Path | None, generated: dict[str, bytes], *, exclude: set[str] = frozenset(),
                  prefix: str = "app", replace: dict[str, bytes] | None = None) -> Context:
    """Tar ROOT's files under PREFIX/ plus GENERATED {path: bytes} at the top;
    REPLACE {relative path: bytes} stands in for those package files' content.
    ROOT None: GENERATED alone (the dependency image sees no package file)."""
    replace = replace or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(generated):
            data = generated[name]
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        if root is not None:
            tar.addfile(_info(f"{prefix}/", mode=0o755, kind=tarfile.DIRTYPE))
        for rel in package_files(root, set(exclude)) if root is not None and root.is_dir() else []:
            path = root / rel
            st = path.lstat()
            arc = f"{prefix}/{rel}"
            if stat.S_ISLNK(st.st_mode):
                info = _info(arc, kind=tarfile.SYMTYPE)
                info.linkname = os.readlink(path)
                tar.addfile(info)
                continue
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            if rel in replace:
                tar.addfile(_info(arc, len(replace[rel]), mode), io.BytesIO(replace[rel]))
                continue
            with open(path, "rb") as fh:
                tar.addfile(_info(arc, st.st_size, mode), fh)
    data = buf.getvalue()
    return Context(data=data, digest="sha256:" + hashlib.sha256(data).hexdigest())


def files_digest(root: Path, generated: dict[str, bytes], *, exclude: set[str] = frozenset(),
                 prefix: str = "app") -> str:
    """sha256 over what build_context would pack (names, modes, link targets, contents),
    streamed file by file: the package's content identity needs no second tar in memory."""
    h = hashlib.sha256()
    for name in sorted(generated):
        h.update(f"{name}\0{len(generated[name])}\0".encode() + hashlib.sha256(generated[name]).digest())
    for rel in package_files(root, set(exclude)) if root.is_dir() else []:
        path = root / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            h.update(f"{prefix}/{rel}\0link\0{os.readlink(path)}\0".encode())
            continue
        fh_hash = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                fh_hash.update(chunk)
        h.update(f"{prefix}/{rel}\0{0o755 if st.st_mode & 0o111 else 0o644:o}\0".encode() + fh_hash.digest())
    return "sha256:" + h.hexdigest()
