"""Packaging hook: the wheel carries the top-level templates/ and Dockerfile.base
as builder/_data/, so a pip-installed agent-image has every file it reads at run
time while the repository keeps its layout (builder/core/resources.py finds both).
Everything else is declared in pyproject.toml; MANIFEST.in puts the same files
in the sdist, which `python -m build` turns into the wheel."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("templates", "Dockerfile.base")  # keep in step with MANIFEST.in and builder/core/resources.py


class build_py_with_data(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        here = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "builder" / "_data"
        for name in DATA:
            src, dst = here / name, target / name
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": build_py_with_data})
