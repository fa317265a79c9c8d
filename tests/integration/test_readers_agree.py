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
