"""Open an agent package (an .apkg zip or a folder) safely and check it.

Everything here runs before the engine sees a byte: entry names, types,
counts and sizes are checked while extracting, so a hostile upload ends in a
``PackageValidationError`` naming the entry, with nothing written outside
the staging folder.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath

from builder.core.deadline import check_deadline
from builder.core.errors import PackageValidationError
from builder.core.pythons import preview_runtimes
from builder.package.dotenv import env_aliases, env_paths, is_env_path
from builder.package.manifest import MAX_YAML_BYTES, Manifest, parse_manifest


@dataclass(frozen=True)
class Limits:
    """Bounds on what a package may hold. All are CLI options (see --help)."""
    max_entries: int = 10_000
    max_total_bytes: int = 512 * 1024 * 1024
    max_file_bytes: int = 256 * 1024 * 1024
    max_ratio: int = 200  # uncompressed/compressed, for entries past 1 MiB


DEFAULT_LIMITS = Limits()

# what zipfile raises for an entry it cannot decode (bad CRC, header/name
# mismatch, truncated data, encryption, unknown method): the upload's fault,
# so a PackageValidationError naming the entry, not a traceback
_UNREADABLE = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
               NotImplementedError, ValueError)
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# control characters in a file name: a newline splits every listing and log line that shows it,
# a CR hides what precedes it on a terminal; no agent needs one (NUL is refused on its own)
_NAME_CONTROL = re.compile(r"[\x01-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass
class Package:
    """A package opened into a folder: ``root`` holds its files."""
    root: Path
    manifest: Manifest
    source: Path
    source_kind: str  # "apkg" | "folder"
    files: list[str] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None

    @cached_property
    def env_paths(self) -> list[str]:
        """Every .env file or folder in the package (one walk, whatever asks)."""
        return env_paths(self.root)

    @cached_property
    def env_aliases(self) -> list[str]:
        """Files under other names that are hard links to a .env file: kept out with them."""
        return env_aliases(self.root, self.env_paths)

    def kept_out(self, rel: str) -> bool:
        """Is REL (from the root) a .env path or the same file as one? (--include-env aside)"""
        return is_env_path(rel) or rel in self.env_aliases

    @property
    def has_setup(self) -> bool:
        return (self.root / "setup.py").is_file() or (self.root / "pyproject.toml").is_file()

    @property
    def requirements_path(self) -> Path | None:
        path = self.root / "requirements.txt"
        return path if path.is_file() else None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Package":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _bad(message: str, entry: str, hint: str | None = None) -> PackageValidationError:
    return PackageValidationError(message, field=entry, hint=hint)


def _check_scheme_like(rel: str, shown: str | None = None) -> None:
    """A first folder named like a URL scheme ('http:', 'https:', 'file:') is refused: pip takes an
    index or link URL for a path when that path exists (its build_source looks first), so
    'http:/agent-image-index.invalid/simple/' in the package would be the build's index."""
    first = rel.split("/", 1)[0]
    if first.endswith(":"):
        raise _bad(f"package entry {shown or rel!r} starts with {first!r}, a folder named like a URL scheme: pip "
                   "would read an index URL as this path", shown or rel, "Rename the folder (no ':' at the end of its name).")


def _check_name(name: str) -> str:
    """Return the normalised relative path of a zip entry or raise."""
    if not name or "\x00" in name:
        raise _bad(f"package entry {name!r} has an empty or NUL-containing name", name)
    if _NAME_CONTROL.search(name):
        raise _bad(f"package entry {name!r} has a control character in its name", name,
                   "Rename the file (printable characters only) and rebuild the package.")
    if "\\" in name:
        raise _bad(f"package entry {name!r} uses backslashes", name, "Rebuild the package with `pixell build`.")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _bad(f"package entry {name!r} has an absolute path", name,
                   "Entries must be relative to the package root.")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _bad(f"package entry {name!r} climbs out of the package with '..'", name)
    # a component the filesystem cannot hold would fail as a bare OSError at extraction
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts) or len(name) > 1024:
        raise _bad(f"package entry {name[:80]!r}... has a name too long for a file system", name)
    clean = "/".join(p for p in parts if p not in ("", "."))
    if not clean:
        raise _bad(f"package entry {name!r} names the package root", name)
    _check_scheme_like(clean, name)
    return clean


def _extract_zip(path: Path, dest: Path, limits: Limits, deadline: float | None = None) -> list[str]:
    try:
        zf = zipfile.ZipFile(path)
    except UnicodeDecodeError as exc:  # an entry flagged UTF-8 whose name is not
        raise _bad(f"{path.name} has an entry whose name is flagged UTF-8 but is not ({exc.object[:60]!r})",
                   path.name, "Rebuild it with `pixell build`.") from None
    except OSError as exc:
        raise _bad(f"cannot read {path}: {exc.strerror}", str(path)) from None
    except _UNREADABLE:  # the central directory lies (offsets, sizes) in ways zipfile does not name
        raise _bad(f"{path.name} is not a zip archive (an .apkg is a zip written by `pixell build`)",
                   path.name, "Rebuild it with `pixell build` or pass the agent folder.") from None
    with zf:
        infos = zf.infolist()
        if not infos:
            raise _bad(f"{path.name} is an empty zip", path.name, "Rebuild it with `pixell build`.")
        if len(infos) > limits.max_entries:
            raise _bad(f"{path.name} holds {len(infos)} entries, more than the limit of {limits.max_entries}",
                       path.name, "Raise --max-entries if this package is genuine.")
        seen: set[str] = set()
        names: dict[str, str] = {}  # entry name -> its checked, normalised path
        declared = 0
        for info in infos:
            if "\x00" in info.orig_filename:  # zipfile cuts the name there: 'a.txt\0anything' would read 'a.txt'
                raise _bad(f"package entry {info.orig_filename!r} has a NUL in its name", info.orig_filename)
            clean = names[info.filename] = _check_name(info.filename)
            if clean in seen:
                raise _bad(f"package entry {info.filename!r} appears twice", info.filename)
            seen.add(clean)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise _bad(f"package entry {info.filename!r} is a symlink; symlinks are not allowed in a package",
                           info.filename, "Replace the link with the file it points to.")
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise _bad(f"package entry {info.filename!r} is a device, pipe or socket", info.filename)
            if info.flag_bits & 0x1:
                raise _bad(f"package entry {info.filename!r} is encrypted", info.filename,
                           "Rebuild the package with `pixell build` (no password).")
            if info.compress_type not in _METHODS:
                raise _bad(f"package entry {info.filename!r} uses unsupported compression method "
                           f"{info.compress_type}", info.filename, "Rebuild the package with `pixell build`.")
            if info.file_size > limits.max_file_bytes:
                raise _bad(f"package entry {info.filename!r} is {info.file_size} bytes, over the "
                           f"{limits.max_file_bytes}-byte file limit", info.filename)
            if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise _bad(f"package entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x "
                           f"(limit {limits.max_ratio}x): refusing a likely zip bomb", info.filename)
            declared += info.file_size
            if declared > limits.max_total_bytes:
                raise _bad(f"{path.name} expands past the {limits.max_total_bytes}-byte limit at entry "
                           f"{info.filename!r}", info.filename, "Raise --max-total-bytes if this package is genuine.")
        # 'src' as a file and 'src/main.py' would crash extraction with FileExistsError/NotADirectoryError
        regular = {names[i.filename] for i in infos if not i.is_dir()}
        for info in infos:
            for parent in PurePosixPath(names[info.filename]).parents:
                if str(parent) in regular:
                    raise _bad(f"package entry {info.filename!r} is inside {str(parent)!r}, which is a file",
                               info.filename, "Rebuild the package with `pixell build`.")
        written = 0
        files = []
        for info in infos:
            clean = names[info.filename]
            target = dest / clean
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # headers can lie about sizes: count what is really written
            with open(target, "wb") as out:
                for chunk in _entry_chunks(zf, info):
                    check_deadline(deadline, f"extracting {path.name}")
                    written += len(chunk)
                    if written > limits.max_total_bytes:
                        raise _bad(f"{path.name} expands past the {limits.max_total_bytes}-byte limit at entry "
                                   f"{info.filename!r}", info.filename)
                    out.write(chunk)
            os.chmod(target, _file_mode(info))
            files.append(clean)
    return files


def _file_mode(info: zipfile.ZipInfo) -> int:
    """0o755 for an entry a Unix zip marks executable (by anyone), else 0o644.

    Scripts keep +x; setuid, setgid, sticky and group/other write never reach
    the staging folder, so never the build context (which maps modes the same way).
    """
    unix = info.create_system == 3
    return 0o755 if unix and (info.external_attr >> 16) & 0o111 else 0o644


def _entry_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    """The entry's bytes; only reading is guarded (a failing write to staging is not the upload's fault)."""
    try:
        with zf.open(info) as src:
            while chunk := src.read(1 << 20):
                yield chunk
    except _UNREADABLE as exc:
        raise _bad(f"package entry {info.filename!r} cannot be read: {exc}", info.filename,
                   "The zip is corrupt; rebuild it with `pixell build`.") from None


def _walk_folder(root: Path, limits: Limits, deadline: float | None = None) -> list[str]:
    root_real = root.resolve()
    files: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            check_deadline(deadline, f"reading {root}")
            _check_scheme_like(rel)
            if _NAME_CONTROL.search(name):  # (as in a zip: these names reach the image and every listing)
                raise _bad(f"{rel!r} has a control character in its name", rel,
                           "Rename the file (printable characters only).")
            if re.search(r"[\udc80-\udcff]", name):  # bytes os.walk could not decode: no UTF-8 for the context's tar
                raise _bad(f"{rel!r} has a name that is not UTF-8", rel.encode("utf-8", "replace").decode(),
                           "Rename the file (a zip holds UTF-8 names only).")
            try:
                st = full.lstat()
            except OSError as exc:  # gone or unreadable since the walk listed it
                raise _bad(f"{rel!r} cannot be read: {exc.strerror}", rel) from None
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = full.resolve()
                except (RuntimeError, OSError):  # a symlink loop: Path.resolve raises RuntimeError on 3.11
                    raise _bad(f"{rel} is a symlink that cannot be resolved (a loop)", rel,
                               "Replace the link with the file it points to.") from None
                if target != root_real and root_real not in target.parents:
                    raise _bad(f"{rel} is a symlink pointing outside the package ({os.readlink(full)})", rel,
                               "Copy the file into the package instead of linking to it.")
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise _bad(f"{rel} is a device, pipe or socket", rel)
            if stat.S_ISREG(st.st_mode):
                files.append(rel)
                total += st.st_size
                # checked per file so the message names the folder and the file that crossed the limit
                if len(files) > limits.max_entries:
                    raise _bad(f"{root} holds more than {limits.max_entries} files (at {rel})", rel,
                               "Raise --max-entries if this package is genuine.")
                if total > limits.max_total_bytes:
                    raise _bad(f"{root} holds more than {limits.max_total_bytes} bytes (at {rel})", rel,
                               "Raise --max-total-bytes if this package is genuine.")
    return files


def read_manifest_text(root: Path) -> str:
    path = root / "agent.yaml"
    if not path.is_file():
        raise _bad("the package has no agent.yaml at its root", "agent.yaml",
                   "Add agent.yaml at the package root (`pixell init`, from the pixell-kit package, writes "
                   "one), then rebuild the .apkg with `pixell build`.")
    try:  # no more than the manifest's own cap and a byte (parse_manifest refuses more)
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise _bad(f"agent.yaml cannot be read: {exc.strerror}", "agent.yaml") from None
    if len(data) > MAX_YAML_BYTES:
        raise _bad(f"agent.yaml is larger than {MAX_YAML_BYTES // 1024} KiB", "agent.yaml")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"agent.yaml is not UTF-8 (byte {exc.start})", "agent.yaml", "Save it as UTF-8.") from None


def open_package(source: str | os.PathLike, limits: Limits = DEFAULT_LIMITS, deadline: float | None = None) -> Package:
    """Open SOURCE (an .apkg file or a folder holding agent.yaml) and validate it.

    The caller closes the returned Package (it may own a staging folder). DEADLINE
    (time.monotonic(), the command's --timeout) ends the reading with BuildTimeoutError.
    """
    src = Path(source)
    if not src.exists():
        raise _bad(f"{src} does not exist", str(src), "Pass an .apkg file or a folder with agent.yaml.")
    if src.is_dir():
        files = _walk_folder(src, limits, deadline)
        manifest = parse_manifest(read_manifest_text(src), preview_runtimes())
        return Package(root=src, manifest=manifest, source=src, source_kind="folder", files=files)
    if not src.is_file():  # a FIFO would block zipfile's open forever, a device would be read as a zip
        raise _bad(f"{src} is neither a file nor a folder", str(src), "Pass an .apkg file or a folder with agent.yaml.")
    tmp = tempfile.TemporaryDirectory(prefix="agent-image-pkg-")
    try:
        root = Path(tmp.name)
        files = _extract_zip(src, root, limits, deadline)
        manifest = parse_manifest(read_manifest_text(root), preview_runtimes())
    except BaseException:
        tmp.cleanup()
        raise
    return Package(root=root, manifest=manifest, source=src, source_kind="apkg", files=files, _tmp=tmp)
