"""Things to build from: agent folders as `pixell build` lays them out, tiny setuptools
projects and their wheels, and installable wheels made from bytes."""

from __future__ import annotations

import io
import subprocess
import textwrap
import zipfile
from pathlib import Path

from tests.support.paths import BIN

AGENT_YAML = """\
version: "1.0"
name: {name}
display_name: {display}
description: A test agent
author: Tests
license: MIT
entrypoint: src.main:handler
runtime: {runtime}
metadata:
  version: {version}
"""

MAIN_PY = """\
def handler(context):
    import importlib
    mods = {}
    for name in context.get("imports", []):
        m = importlib.import_module(name)
        mods[name] = getattr(m, "__version__", "?")
    return {"ok": True, "echo": context, "modules": mods}
"""


def make_agent(root: Path, name: str = "test-agent", *, version: str = "0.1.0", requirements: str | None = None,
               setup_py: bool = True, install_requires: list[str] = (), runtime: str = "python3.11",
               extra: dict[str, str] | None = None, env_file: str | None = "OPENAI_API_KEY=sk-not-a-real-key-1234\n"
               ) -> Path:
    """Write an agent folder as `pixell build` lays it out."""
    agent = root / name
    (agent / "src").mkdir(parents=True, exist_ok=True)
    (agent / "agent.yaml").write_text(AGENT_YAML.format(name=name, display=name.title(), runtime=runtime,
                                                        version=version))
    (agent / "src" / "__init__.py").write_text("")
    (agent / "src" / "main.py").write_text(MAIN_PY)
    if setup_py:
        (agent / "setup.py").write_text(
            "from setuptools import setup\n"
            f"setup(name={name!r}, version={version!r}, packages=['src'], package_dir={{'': '.'}}, "
            f"install_requires={list(install_requires)!r})\n")
    if requirements is not None:
        (agent / "requirements.txt").write_text(requirements)
    if env_file is not None:
        (agent / ".env").write_text(env_file)
    for rel, text in (extra or {}).items():
        (agent / rel).parent.mkdir(parents=True, exist_ok=True)
        (agent / rel).write_text(text)
    return agent


def make_project(root: Path, name: str, version: str, *, deps: list[str] = (), module: str | None = None,
                 body: str = "") -> Path:
    """A tiny setuptools project NAME==VERSION whose module records its version."""
    module = module or name.replace("-", "_")
    proj = root / f"{name}-{version}"
    (proj / module).mkdir(parents=True, exist_ok=True)
    (proj / module / "__init__.py").write_text(f"__version__ = {version!r}\n{body}")
    (proj / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import setup
        setup(name={name!r}, version={version!r}, packages=[{module!r}], install_requires={list(deps)!r})
    """))
    return proj


def build_wheel(project: Path, out: Path) -> Path:
    """The wheel of PROJECT (built by this venv's pip, no isolation) in OUT."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(project)], check=True, capture_output=True)
    name = project.name.split("-")[0].replace("-", "_")
    return sorted(out.glob(f"{name}-*.whl"))[-1]


def wheel_bytes(filename: str, code: str = "", requires: tuple[str, ...] = ()) -> bytes:
    """A real, installable wheel named FILENAME whose METADATA lists REQUIRES."""
    name, version, tag = filename[:-4].split("-", 2)
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"{name}.py", code or f"VERSION = {version!r}\n")
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta + "\nA description: Requires-Dist: not-a-dependency\n")
        z.writestr(f"{name}-{version}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return out.getvalue()
