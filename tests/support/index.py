"""The tests' private index: a wheelhouse (fixture projects plus real public wheels, cached
on disk) served by pypiserver on loopback, with htpasswd users or open."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from builder.plan.dockerfile import UV_VERSION
from tests.support.net import free_port, wait_http
from tests.support.packages import build_wheel, make_project
from tests.support.paths import BIN, WHEEL_CACHE

# real wheels from PyPI that the tests' private index serves (downloaded once, kept on disk)
# (fastapi/uvicorn/watchdog: what the `pixell init` scaffold's requirements ask for)
# (uv: what `--installer uv` installs into the image's tools venv; keep in step with dockerfile.UV_VERSION)
PUBLIC_WHEELS = ["requests==2.32.3", "structlog==24.4.0", "setuptools==75.8.0", "wheel==0.45.1",
                 "fastapi", "uvicorn", "watchdog", f"uv=={UV_VERSION}"]

# the same for Python 3.13 (the py3.13 base: tests/integration/test_pythons.py): the host's pip picks
# cp311 wheels above, and pydantic-core, charset-normalizer and the like have no pure-Python one
PUBLIC_WHEELS_313 = ["requests==2.32.3", "structlog==24.4.0", "setuptools==75.8.0", "wheel==0.45.1",
                     "fastapi", "uvicorn", "watchdog"]
CP313_ARGS = ["--python-version", "3.13", "--implementation", "cp", "--abi", "cp313", "--abi", "abi3", "--abi", "none",
              *(a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
                for a in ("--platform", p))]

FIXTURE_PROJECTS = [
    # (name, version, install_requires)
    ("tinyreq", "1.0", []), ("tinyreq", "1.1", []), ("tinyreq", "2.0", []),
    ("tinydep", "1.0", ["tinyreq<2"]),
    ("sharedlib", "1.0", []),
]


def fill_wheelhouse(house: Path, src: Path) -> Path:
    """Wheels for the private index: fixture projects plus real public ones (cached on disk)."""
    house.mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    marker = WHEEL_CACHE / ".complete"
    if not marker.is_file() or marker.read_text() != repr(PUBLIC_WHEELS):
        subprocess.run([str(BIN / "pip"), "download", "-q", "--only-binary=:all:", "-d", str(WHEEL_CACHE),
                        *PUBLIC_WHEELS], check=True)
        marker.write_text(repr(PUBLIC_WHEELS))
    marker_313 = WHEEL_CACHE / ".complete-cp313"
    if not marker_313.is_file() or marker_313.read_text() != repr(PUBLIC_WHEELS_313):
        subprocess.run([str(BIN / "pip"), "download", "-q", "--only-binary=:all:", *CP313_ARGS, "-d", str(WHEEL_CACHE),
                        *PUBLIC_WHEELS_313], check=True)
        marker_313.write_text(repr(PUBLIC_WHEELS_313))
    for whl in WHEEL_CACHE.glob("*.whl"):
        shutil.copy(whl, house)
    for name, version, deps in FIXTURE_PROJECTS:
        build_wheel(make_project(src, name, version, deps=deps), house)
    # an sdist that needs a compiler the base image does not have
    cproj = src / "needscc-1.0"
    cproj.mkdir()
    (cproj / "needscc.c").write_text("#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "
                                     "\"needscc\"};\nPyMODINIT_FUNC PyInit_needscc(void){return PyModule_Create(&m);}\n")
    (cproj / "setup.py").write_text("from setuptools import setup, Extension\n"
                                    "setup(name='needscc', version='1.0', ext_modules=[Extension('needscc', ['needscc.c'])])\n")
    # an sdist whose build hangs: for the wall-clock timeout
    sproj = src / "slowpkg-1.0"
    sproj.mkdir()
    (sproj / "setup.py").write_text("import os, time\nif os.environ.get('SLOW_SKIP') != '1':\n    time.sleep(600)\n"
                                    "from setuptools import setup\nsetup(name='slowpkg', version='1.0')\n")
    for proj in (cproj, sproj):
        subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(house)], cwd=proj, check=True,
                       capture_output=True, env={**os.environ, "SLOW_SKIP": "1"})
    return house


class Index:
    def __init__(self, url: str, root: Path, proc: subprocess.Popen, users: dict[str, str]):
        self.url, self.root, self.proc, self.users = url, root, proc, users

    def url_for(self, user: str) -> str:
        host = self.url.split("://", 1)[1]
        return f"http://{user}:{self.users[user]}@{host}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def start_pypiserver(packages: Path, htpasswd: Path | None = None) -> tuple[str, subprocess.Popen]:
    """pypiserver on 127.0.0.1 serving PACKAGES (htpasswd auth, or none): (its /simple/ URL, the process)."""
    port = free_port()
    args = [str(BIN / "pypi-server"), "run", "-p", str(port), "-i", "127.0.0.1", "--disable-fallback",
            "--log-file", str(packages.parent / f"pypiserver-{port}.log")]
    if htpasswd:
        args += ["-P", str(htpasswd), "-a", "download,list,update"]
    else:
        args += ["-P", ".", "-a", "."]
    proc = subprocess.Popen(args + [str(packages)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/simple/"
    wait_http(url)
    return url, proc


def start_index(root: Path, wheelhouse: Path) -> Index:
    """A private pypiserver on 127.0.0.1 with htpasswd auth (two users: token rotation)."""
    from passlib.apache import HtpasswdFile
    pkgs = root / "packages"
    shutil.copytree(wheelhouse, pkgs, dirs_exist_ok=True)
    users = {"alice": "s3cret-token-ALPHA-1111", "bob": "s3cret-token-BRAVO-2222"}
    ht = HtpasswdFile(str(root / "htpasswd"), new=True)
    for user, pw in users.items():
        ht.set_password(user, pw)
    ht.save()
    url, proc = start_pypiserver(pkgs, root / "htpasswd")
    return Index(url, pkgs, proc, users)
