"""Trust, round 3, real builds with pip and with uv: a line pip and uv would read
differently is refused before the engine, and no installer configuration the package
brings (uv.toml, [tool.uv] in pyproject.toml) or its code leaves behind at build time
(a pip.conf in the venv) steers an install."""

from __future__ import annotations

import pytest

from builder.core.errors import IndexPolicyError
from tests.support.cli import build_json
from tests.support.engine import run_in_image

OUTSIDE = "/usr/share/python-wheels/setuptools-66.1.1-py3-none-any.whl"
OTHER_SETUP = "from setuptools import setup\nsetup(name='other', version='1.0', install_requires=['tinydep'])\n"
# pip reads a pip.conf in the venv at every start: the package step runs this, the install step after it reads it
PLANT_PIP_CONF = ("import os\n"
                  "open(os.path.join(os.environ.get('VIRTUAL_ENV', '/opt/venv'), 'pip.conf'), 'w')"
                  ".write('[global]\\nno-index = true\\n')\n")


@pytest.mark.parametrize("installer", ["pip", "uv"])
@pytest.mark.parametrize("line", [f"--no-index {OUTSIDE}", f"--prefer-binary {OUTSIDE}",
                                  "tinyreq==1.0 --no-index", "-r 'more reqs.txt'"])
def test_lines_pip_and_uv_read_differently_are_refused_before_the_engine(installer, line, agent_factory,
                                                                         index_url):
    agent = agent_factory(f"agree-{installer}", requirements=f"tinydep\n{line}\n",
                          extra={"more reqs.txt": "tinyreq\n"})
    code, out, _ = build_json(agent, "--index-url", index_url, "--installer", installer)
    assert code == IndexPolicyError.exit_code and out["error"]["class"] == "IndexPolicyError"
    assert "requirements.txt:2" in out["error"]["message"] and out["error"]["line"] == 2


@pytest.mark.parametrize("installer, config", [
    ("uv", {"uv.toml": "[pip]\nno-index = true\n"}),
    ("uv", {"pyproject.toml": "[tool.uv.pip]\nno-index = true\n"}),
    ("pip", {}),   # (the package's setup.py plants /opt/venv/pip.conf while the package step runs)
])
def test_no_installer_configuration_steers_an_install(installer, config, agent_factory, index_url,
                                                     docker_client, cleanup_images):
    """The requirements' local package needs tinydep from the index; the configuration says
    'no index'. Honoured, the install step would fail; the build must install from the index."""
    name = f"cfg-{installer}-{len(config) and next(iter(config)).split('.')[0]}"
    cleanup_images(f"agents/{name}")
    agent = agent_factory(name, requirements="./other\n",
                          extra={"other/setup.py": OTHER_SETUP, **config})
    if installer == "pip":
        setup = agent / "setup.py"
        setup.write_text(PLANT_PIP_CONF + setup.read_text())
    code, out, logs = build_json(agent, "--index-url", index_url, "--installer", installer)
    assert code == 0, (out, logs[-3000:])
    listing = run_in_image(docker_client, out["image"], ["python", "-m", "pip", "list", "--format=freeze"])
    assert "tinydep==1.0" in listing and "other==1.0" in listing


# --- the generator: for every text the policy accepts, pip and uv read the file the build
# writes alike, and neither installs from outside the index or the package -----------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from builder.core.errors import PackageValidationError  # noqa: E402
from builder.package.piplines import written_as_read_text  # noqa: E402
from builder.package.requirements import read_requirements  # noqa: E402

UV = str(Path(sys.executable).parent / "uv")
LIB_SETUP = "from setuptools import setup\nsetup(name='lib', version='1.0')\n"
_REQ = st.builds(lambda n, s, t: f"{n}{s}{t}", st.sampled_from(["tinyreq", "tinydep", "sharedlib", "Tiny.Req"]),
                 st.sampled_from(["", "==1.0", "<2", ">=1.1", " == 1.1", ";python_version>='3'"]),
                 st.sampled_from(["", "  # note", " # note \\", " \\"]))
_OTHER = st.sampled_from(["./lib", "lib/", "-e ./lib", "--only-binary :all:", "--no-index", "# comment",
                          f"--no-index {OUTSIDE}", "../lib", "/opt/x.whl", "--pre ./lib", "tinyreq --no-index",
                          "-r 'x y.txt'", "--index-url INDEX", "-i INDEX", "--extra-index-url INDEX",
                          "-f http://127.0.0.1:9/x/", "\\"])


def _readings(pkg: Path, text: str, index: str) -> dict:
    """What pip (its dry-run report) and uv (its resolution) make of requirements TEXT in PKG:
    {installer: (ok, sorted 'name==version' or 'name @ location')}."""
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    (pkg / "req.txt").write_text(text)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", "-", "--index-url", index, "-r", "req.txt"], cwd=pkg, env=env,
                         capture_output=True, text=True, timeout=120)
    got = {}
    if pip.returncode == 0:
        report = json.loads(pip.stdout)
        got["pip"] = (True, sorted(_where(i["metadata"]["name"], i["metadata"]["version"], i["download_info"]["url"],
                                          pkg, index) for i in report["install"]))
    else:
        got["pip"] = (False, [])
    uv = subprocess.run([UV, "pip", "compile", "--no-header", "--no-annotate", "--no-cache", "--index-url", index,
                         "--python-version", "3.11", "req.txt"], cwd=pkg, env=env, capture_output=True, text=True,
                        timeout=120)
    if uv.returncode == 0:
        pins = [ln.strip() for ln in uv.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        got["uv"] = (True, sorted(_uv_pin(p, pkg, index) for p in pins))
    else:
        got["uv"] = (False, [])
    return got


def _where(name: str, version: str, url: str, pkg: Path, index: str) -> str:
    if url.startswith("file://"):
        path = Path(url[len("file://"):]).resolve()
        assert path == pkg.resolve() or pkg.resolve() in path.parents, f"{name} from outside the package: {url}"
        return f"@ {path.relative_to(pkg.resolve())}"  # (uv names a path by itself, pip by the project's name)
    host = index.split("@")[-1].split("/")[0]
    assert host in url, f"{name} from outside the index: {url}"
    return f"{name.lower()}=={version}"


def _uv_pin(pin: str, pkg: Path, index: str) -> str:
    pin = pin.removeprefix("-e ")
    name, at, where = pin.partition(" @ ")
    if not at and "==" not in pin:  # a path, as the file wrote it
        name, at, where = "", " @ ", pin
    if at:
        return _where(name, "", where, pkg, index) if where.startswith("file://") else \
            _where(name, "", (pkg / where).resolve().as_uri(), pkg, index)
    name, _, version = pin.partition("==")
    return f"{name.lower()}=={version}"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(_REQ, _OTHER), min_size=1, max_size=4))
def test_pip_and_uv_read_what_the_build_writes_alike(lines, tmp_path_factory, index):
    url = index.url_for("alice")
    text = "\n".join(lines).replace("INDEX", url) + "\n"
    pkg = tmp_path_factory.mktemp("gen")
    (pkg / "lib").mkdir()
    (pkg / "lib" / "setup.py").write_text(LIB_SETUP)
    (pkg / "requirements.txt").write_text(text)
    try:
        read_requirements(pkg, allowed_hosts=frozenset({"127.0.0.1"}))
    except (IndexPolicyError, PackageValidationError):
        event("refused by the policy")
        return
    # (_readings asserts that nothing either installer would install comes from outside the
    # index or the package; where one of them fails and the other does not, e.g. pip only
    # warns about a find-links page it cannot reach, there is no second reading to compare)
    readings = _readings(pkg, written_as_read_text(text, "requirements.txt"), url)
    event(f"pip {'read' if readings['pip'][0] else 'failed'}, uv {'read' if readings['uv'][0] else 'failed'}")
    if readings["pip"][0] and readings["uv"][0]:
        assert readings["pip"] == readings["uv"], (text, readings)
