"""A wheel's core metadata, read by the index proxy (builder/build/proxy/prefetch.py) to fetch what
pip will ask for next: its Requires-Dist."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

METADATA_BYTES = 1024 ** 2       # a wheel's METADATA larger than this is not read
ZIP_ENTRIES = 100_000            # a wheel with more files, or a larger directory, is not opened here:
ZIP_DIRECTORY = 32 * 1024 ** 2   # zipfile builds the whole directory in memory first


def requires_dist(metadata: str) -> list[str]:
    """The Requires-Dist values of a core-metadata text (its header: the body is the description)."""
    header = metadata.replace("\r\n", "\n").split("\n\n", 1)[0]
    return [value.strip() for key, _, value in (line.partition(":") for line in header.split("\n"))
            if key.strip().lower() == "requires-dist" and value.strip()]


def _small_zip(blob: Path) -> bool:
    """Is BLOB a zip whose central directory is small enough to read (its end record says)?"""
    with open(blob, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 65557))  # the end record (22 bytes) and a comment of at most 64 KiB
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return False
    entries, directory = struct.unpack("<HI", tail[at + 10:at + 16])
    # 0xFFFF / 0xFFFFFFFF: a zip64 directory, which no wheel small enough to read here needs
    return entries < min(ZIP_ENTRIES, 0xFFFF) and directory < ZIP_DIRECTORY


def wheel_metadata(blob: Path) -> str:
    """The METADATA of a wheel file, or '' (not a zip, no single dist-info, too large)."""
    try:
        if not _small_zip(blob):
            return ""
        with zipfile.ZipFile(blob) as z:
            found = [i for i in z.infolist() if i.filename.count("/") == 1
                     and i.filename.endswith(".dist-info/METADATA")]
            if len(found) != 1 or found[0].file_size > METADATA_BYTES:
                return ""
            with z.open(found[0]) as fh:
                return fh.read(METADATA_BYTES).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, RuntimeError, NotImplementedError):
        return ""
