"""Where the files agent-image reads at run time live, in either layout.

A checkout (and an editable install) keeps ``templates/`` and
``Dockerfile.base`` at the top of the repository; a wheel carries them inside
the package as ``builder/_data/`` (setup.py copies them there). Every reader
asks ``resource(NAME)`` with the repository-relative name.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_root() -> Path:
    packaged = Path(str(files("builder") / "_data"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2]


def resource(name: str) -> Path:
    """Path of NAME ('templates', 'Dockerfile.base') as the repository lays it out."""
    return data_root() / name
