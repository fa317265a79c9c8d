"""Shared fixtures: the real engine, a real private index, real fixture packages.

Nothing here mocks the engine, the index or the registry. A test that needs
the engine and cannot reach it fails (it does not skip): run
scripts/setup.sh first, as scripts/test.sh does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from builder.core.defaults import base_image_for
from builder.plan.dockerfile import UV_VERSION

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))
WHEEL_CACHE = CACHE / "test-wheels"
BIN = Path(sys.executable).parent
# real wheels from PyPI that the tests' private index serves (downloaded once, kept on disk)
# (fastapi/uvicorn/watchdog: what the `pixell init` scaffold's requirements ask for)
# (uv: what `--installer uv` installs into the image's tools venv; keep in step with dockerfile.UV_VERSION)
PUBLIC_WHEELS = ["requests==2.32.3", "structlog==24.4.0", "setuptools==75.8.0", "wheel==0.45.1",
                 "fastapi", "uvicorn", "watchdog", f"uv=={UV_VERSION}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, ok=(200, 401)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # fail loudly: these tests need the real engine
        pytest.fail(f"the Docker engine is not reachable ({exc}); run scripts/setup.sh first", pytrace=False)
    for tag in (base_image_for("3.11"),):
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound:
            pytest.fail(f"{tag} is missing; run scripts/setup.sh first", pytrace=False)
    return client


@pytest.fixture(scope="session")
def engine(docker_client):
    from builder.build.engine import Engine
    return Engine()


# --- fixture packages built into wheels ---------------------------------------------

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
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(project)], check=True, capture_output=True)
    name = project.name.split("-")[0].replace("-", "_")
    return sorted(out.glob(f"{name}-*.whl"))[-1]


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


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    return fill_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), tmp_path_factory.mktemp("fixture-src"))


class Index:
    def __init__(self, url: str, root: Path, proc: subprocess.Popen, users: dict[str, str]):
        self.url, self.root, self.proc, self.users = url, root, proc, users

    def url_for(self, user: str) -> str:
        host = self.url.split("://", 1)[1]
        return f"http://{user}:{self.users[user]}@{host}"


def _start_pypiserver(packages: Path, htpasswd: Path | None = None) -> tuple[str, subprocess.Popen]:
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
    url, proc = _start_pypiserver(pkgs, root / "htpasswd")
    return Index(url, pkgs, proc, users)


@pytest.fixture(scope="session")
def index(wheelhouse, tmp_path_factory):
    idx = start_index(tmp_path_factory.mktemp("index"), wheelhouse)
    yield idx
    idx.proc.terminate()
    idx.proc.wait(5)


@pytest.fixture
def index_url(index) -> str:
    return index.url_for("alice")


# --- agent packages -----------------------------------------------------------------

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


@pytest.fixture
def agent_factory(tmp_path):
    return lambda *a, **kw: make_agent(tmp_path, *a, **kw)


def engine_tags(client) -> set[str]:
    """Every tag the engine holds, in one API call.

    (``images.list()`` inspects each image in turn, which races with any other
    build or cleanup removing an image in between.)"""
    return {t for image in client.api.images() for t in (image.get("RepoTags") or []) if t != "<none>:<none>"}


def engine_containers(client) -> set[str]:
    """Ids of every container, running or not, in one API call (see engine_tags)."""
    return {c["Id"] for c in client.api.containers(all=True)}


@pytest.fixture
def cleanup_images(docker_client):
    """Remove images a test tagged (by repository prefix) when it ends."""
    repos: list[str] = []
    yield repos.append
    for tag in engine_tags(docker_client):
        if any(tag.startswith(r) for r in repos):
            try:
                docker_client.images.remove(tag, force=True)
            except docker.errors.APIError:
                pass


def run_in_image(docker_client, image: str, command: list[str]) -> str:
    out = docker_client.containers.run(image, command, remove=True, stderr=True)
    return out.decode()


# --- a real registry on loopback (Debian's docker-registry, no auth) ---------------------

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: {level}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


class Registry:
    def __init__(self, root: Path, port: int, level: str = "warn"):
        self.root, self.port, self.level = root, port, level
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cfg = self.root / "config.yml"
        cfg.write_text(REGISTRY_CONFIG.format(root=self.root / "data", port=self.port, level=self.level))
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "registry.log", "ab"))
        wait_http(f"http://{self.host}/v2/")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"), free_port())
    reg.start()
    yield reg
    reg.stop()


def image_holds(docker_client, ref: str, needles: list[bytes]) -> list[str]:
    """Where in `docker save` of REF (every layer, config, manifest) any needle occurs."""
    import io
    import tarfile
    found = []
    blob = b"".join(docker_client.images.get(ref).save(named=True))
    with tarfile.open(fileobj=io.BytesIO(blob)) as outer:
        for member in outer.getmembers():
            if not member.isfile():
                continue
            data = outer.extractfile(member).read()
            found += [member.name for n in needles if n in data]
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    for entry in layer.getmembers():
                        if any(n in entry.name.encode() for n in needles):
                            found.append(f"{member.name}:{entry.name}")
    return found
