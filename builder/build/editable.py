"""What `pip install -e /app` leaves behind, worked out without running the package's code.

The agent image's package step (templates/agent.Dockerfile.j2) runs the seed's
`pip install -e /app` in the sandbox. For the one shape `pixell build` writes, a
setup.py that is a single ``setup(...)`` call of literals and nothing else, and
the one pip/setuptools pair our base carries (Debian 12's venv: pip 23.0.1,
setuptools 66.1.1, which install such a project with the legacy ``setup.py
develop``), the files that step writes follow from the literals alone:

- ``/app/NAME.egg-info/`` (PKG-INFO, SOURCES.txt, dependency_links.txt,
  requires.txt when there are requirements, top_level.txt), as setuptools 66's
  egg_info writes them for the packaging files the step sees;
- ``site-packages/NAME.egg-link`` and ``site-packages/easy-install.pth``.

``plan`` returns those files, or the reason the engine must run the step: any
other call, argument or value, another pip or setuptools, a pyproject.toml or
setup.cfg (a build backend or configuration could do anything), a requirement
that the dependency lines do not already satisfy (pip would go to the index).
Nothing here executes the package's files: setup.py is parsed with ``ast`` only.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

# the pair whose output this module reproduces (checked against engine-built images: tests)
KNOWN_TOOLS = {("23.0.1", "66.1.1")}
_KWARGS = {"name", "version", "description", "packages", "package_dir", "install_requires", "python_requires",
           "include_package_data"}
_NAME = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")          # safe_name leaves it as it is
_VERSION = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # packaging leaves it as it is
_PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
_LICENSE = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE|AUTHORS)")
# installs that change the tools doing the package step (the base's pair is what KNOWN_TOOLS names)
_TOOLS = {"pip", "setuptools", "wheel", "distribute"}


@dataclass(frozen=True)
class Editable:
    """The files the package step writes: path in the image -> bytes."""
    files: dict[str, bytes]
    name: str
    version: str


def literal_setup(source: bytes) -> dict | None:
    """The keyword arguments of a setup.py that is only ``from setuptools import setup`` and one
    ``setup(...)`` call of literals (a docstring and a shebang allowed), else None. Only a UTF-8
    file is read: a coding declaration (utf-7, unicode_escape, latin-1) makes Python read other
    text than a UTF-8 reader sees, so the bytes are parsed as Python parses them, and only then."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
        if encoding not in ("utf-8", "utf-8-sig"):
            return None
        tree = ast.parse(source)  # bytes: Python's own decoding (BOM, cookie), as `python setup.py` reads it
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # (MemoryError: the parser's "too complex")
        return None
    body = list(tree.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if len(body) != 2:
        return None
    imp, call = body
    if not (isinstance(imp, ast.ImportFrom) and imp.module == "setuptools" and imp.level == 0
            and [(a.name, a.asname) for a in imp.names] == [("setup", None)]):
        return None
    if not (isinstance(call, ast.Expr) and isinstance(call.value, ast.Call) and isinstance(call.value.func, ast.Name)
            and call.value.func.id == "setup" and not call.value.args):
        return None
    kwargs = {}
    for kw in call.value.keywords:
        if kw.arg is None or kw.arg in kwargs:
            return None
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return kwargs


def pinned(deps_text: str) -> dict[str, str | None]:
    """The dependency lines by canonical name: the version a line pins with ==, else None.
    Lines with a marker or that are not plain requirements are left out (not known installed)."""
    out: dict[str, str | None] = {}
    for line in deps_text.splitlines():
        line = line.strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None or req.url:
            continue
        specs = list(req.specifier)
        exact = specs[0].version if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version \
            and "+" not in specs[0].version else None  # (a local version: pip's matching of it is not modelled)
        out[canonicalize_name(req.name)] = exact
    return out


def _requirement(text: object, installed: dict[str, str | None]) -> str:
    """setuptools' written form of one install_requires entry, or raise ValueError(why not)."""
    if not isinstance(text, str) or not _PRINTABLE.match(text):
        raise ValueError("an install_requires entry is not a one-line string")
    try:
        req = Requirement(text)
    except InvalidRequirement:
        raise ValueError(f"install_requires entry {text!r} is not a plain requirement") from None
    if req.marker is not None or req.url or req.extras:
        raise ValueError(f"install_requires entry {text!r} has a marker, URL or extras")
    name = canonicalize_name(req.name)
    if name not in installed:
        raise ValueError(f"{req.name} is not among the dependency lines: pip would go to the index")
    if any("+" in spec.version for spec in req.specifier):
        raise ValueError(f"install_requires entry {text!r} names a local version")
    if req.specifier:
        version = installed[name]
        if version is None or not req.specifier.contains(version, prereleases=True):
            raise ValueError(f"{text!r} is not known to be satisfied by the dependency lines")
    return str(req)


def plan(meta: dict[str, bytes], *, deps_text: str, pip: str, setuptools: str, python: str,
         site_packages: str) -> Editable | str:
    """The files `pip install -e /app` writes, from the packaging files META (path under /app ->
    bytes, what the package step sees), or why they cannot be known without running it."""
    if (pip, setuptools) not in KNOWN_TOOLS:
        return f"pip {pip} / setuptools {setuptools} is not a pair whose editable install is known"
    for other in ("pyproject.toml", "setup.cfg"):
        if other in meta:
            return f"{other} is present (a build backend or its configuration decides the install)"
    if any(_LICENSE.match(path) for path in meta if "/" not in path):
        return "a top-level file setuptools would list as a license file"
    tools = sorted(set(pinned(deps_text)) & _TOOLS)
    if tools or any(_names_tool(line) for line in deps_text.splitlines()):
        return f"the dependency lines install {', '.join(tools) or 'pip/setuptools/wheel'} (the package step's tools)"
    source = meta.get("setup.py")
    if source is None:
        return "setup.py is missing"
    kwargs = literal_setup(source)
    if kwargs is None:
        return "setup.py is more than one setup() call of literals (or not UTF-8)"
    if set(kwargs) - _KWARGS:
        return f"setup() takes {sorted(set(kwargs) - _KWARGS)}, whose effect is not modelled"
    try:
        return _files(kwargs, meta, pinned(deps_text), python, site_packages)
    except ValueError as exc:
        return str(exc)


def _names_tool(line: str) -> bool:
    """A dependency line pinned() leaves out (a marker, a URL, an option) that may still install a tool."""
    line = line.split("#", 1)[0].strip().lower()
    return bool(line) and any(re.search(rf"(^|[^a-z0-9_.-]){t}([^a-z0-9_.-]|$)", line) for t in _TOOLS)


def python_excluded(spec: str, python: str) -> bool | None:
    """Does SPEC exclude Python PYTHON (X.Y)? pip checks the interpreter's full X.Y.Z, which the
    ABI label does not carry: the answer only when it is the same for every micro version, else None."""
    answers = {SpecifierSet(spec).contains(f"{python}.{micro}", prereleases=True) for micro in range(100)}
    return (not answers.pop()) if len(answers) == 1 else None


def _files(kw: dict, meta: dict[str, bytes], installed: dict[str, str | None], python: str,
           site_packages: str) -> Editable:
    name, version = kw.get("name"), kw.get("version")
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:  # (NAME.egg-info: at most 255 bytes)
        raise ValueError("setup() name is absent or not a plain name")
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError("setup() version is absent or not a plain release number")
    description = kw.get("description")
    if description is not None and (not isinstance(description, str) or not _PRINTABLE.match(description)):
        raise ValueError("setup() description is not a one-line string")
    if kw.get("package_dir", {"": "."}) != {"": "."}:
        raise ValueError("setup() package_dir is not {'': '.'}")
    prefix = "./" if "package_dir" in kw else ""
    packages = kw.get("packages", [])
    if not isinstance(packages, (list, tuple)) or not all(isinstance(p, str) and _PACKAGE.match(p) for p in packages):
        raise ValueError("setup() packages is not a list of package names")
    if not isinstance(kw.get("include_package_data", False), bool):
        raise ValueError("setup() include_package_data is not a bool")
    requires = kw.get("install_requires", [])
    if not isinstance(requires, (list, tuple)):
        raise ValueError("setup() install_requires is not a list")
    written = [_requirement(r, installed) for r in requires]
    python_requires = kw.get("python_requires")
    if python_requires is not None:
        try:
            excluded = python_excluded(python_requires, python) if isinstance(python_requires, str) else True
        except InvalidSpecifier:
            raise ValueError(f"python_requires {python_requires!r} is not a specifier") from None
        if excluded is None:
            raise ValueError(f"python_requires {python_requires!r} depends on Python {python}'s micro version")
        if excluded:
            raise ValueError(f"python_requires {python_requires!r} excludes Python {python}")
    sources = ["setup.py"]
    inits = set()
    for package in packages:
        init = package.replace(".", "/") + "/__init__.py"
        if init not in meta:  # setuptools would fail or warn before the code is there: the engine decides
            raise ValueError(f"package {package} has no __init__.py among the packaging files")
        sources.append(prefix + init)
        inits.add(init)
    # SOURCES.txt lists what setuptools finds among the files the step sees (a README, a package's
    # modules, test/test*.py, ...): only the set whose listing is known is modelled
    others = sorted(set(meta) - {"setup.py", "requirements.txt"} - inits)
    if others:
        raise ValueError(f"packaging files {others[:3]} would change SOURCES.txt")
    egg = name.replace("-", "_") + ".egg-info"
    info = {"PKG-INFO": _pkg_info(name, version, description, python_requires),
            "dependency_links.txt": "\n",
            "top_level.txt": "".join(f"{t}\n" for t in sorted({p.split(".")[0] for p in packages})) or "\n"}
    if written:
        info["requires.txt"] = "".join(f"{r}\n" for r in sorted(written))  # (egg_info sorts them)
    info["SOURCES.txt"] = ""
    sources += [f"{egg}/{f}" for f in info]
    info["SOURCES.txt"] = "\n".join(sorted(set(sources), key=lambda p: tuple(p.rsplit("/", 1)) if "/" in p
                                           else ("", p)))
    files = {f"/app/{egg}/{f}": text.encode() for f, text in sorted(info.items())}
    files[f"{site_packages}/{name}.egg-link"] = b"/app\n."
    files[f"{site_packages}/easy-install.pth"] = b"/app\n"
    return Editable(files=files, name=name, version=version)


def _pkg_info(name: str, version: str, description: str | None, python_requires: str | None) -> str:
    """setuptools 66's write_pkg_file for the fields a literal setup() of _KWARGS can set."""
    out = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if description:
        out += f"Summary: {description}\n"
    if python_requires is not None:
        out += f"Requires-Python: {python_requires}\n"
    return out
