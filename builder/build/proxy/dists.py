"""A distribution file's project and version, from its name (wheel or sdist), as installers read them."""

from __future__ import annotations

from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, canonicalize_name, parse_sdist_filename, \
    parse_wheel_filename


def name_version(file_name: str) -> tuple[str, str] | None:
    """(normalised name, version) of a wheel or sdist file name; None for anything else."""
    try:
        if file_name.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(file_name)
        else:
            name, version = parse_sdist_filename(file_name)
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return canonicalize_name(name), str(version)
