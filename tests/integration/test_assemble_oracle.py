"""Review of issue 24 (branch atk24): the static reader of setup.py (builder/build/editable.py) against the
program that acts, real `pip install --no-compile -e /app` in agent-image/base:py3.11 (no network), on hostile
packaging files. For each case the static reader must refuse (the engine builds) or write exactly what pip and
setuptools write, after a pip that succeeded. tests/unit/test_assemble_hostile.py holds the same cases as unit tests."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile

import pytest

from builder.build import editable
from builder.core.defaults import base_image_for

SITE = "/opt/venv/lib/python3.11/site-packages"
TOOLS = {"pip": "23.0.1", "setuptools": "66.1.1", "python": "3.11", "site_packages": SITE}
S = "from setuptools import setup\nsetup({})\n"
CASES = {
    "utf-7": ({"setup.py": "# -*- coding: utf-7 -*-\n# +AAo-open(+ACI-" + SITE + "/evil.pth+ACI-,+ACI-w+ACI-)"
                           ".write(+ACI-import os+ACI-)\n" + S.format('name="a", version="1.0"')}, ""),
    "python_requires": ({"setup.py": S.format('name="a", version="1.0", python_requires="<=3.11.0"')}, ""),
    "long-name": ({"setup.py": S.format(f'name="{"a" * 250}", version="1.0"')}, ""),
    "readme-include": ({"setup.py": S.format('name="a", version="1.0"'), "README.txt": "",
                        "requirements.txt": "-r README.txt\n"}, ""),
    "setuptools-in-deps": ({"setup.py": S.format('name="a", version="1.0"')}, "setuptools==75.8.0\n"),
}


def _real(meta: dict[str, bytes], deps: str, wheels) -> tuple[int, str, dict[str, bytes]]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in meta.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    # the dependency layer's effect: the deps lines installed first (from local wheels; no network)
    pre = f"pip install -q --no-index --find-links /w {deps.strip()} && " if deps else ""
    script = (f"{pre}mkdir -p /app && cd /app && echo {base64.b64encode(buf.getvalue()).decode()} | base64 -d | tar x "
              "&& pip install --no-compile -e /app >/tmp/log 2>&1; echo $? >/tmp/rc; cd / && tar c tmp/log tmp/rc "
              f"$(ls -d app/*.egg-info {SITE[1:]}/*.egg-link {SITE[1:]}/*.pth 2>/dev/null)")
    p = subprocess.run(["docker", "run", "--rm", "--name", "fx24-oracle", "--network", "none", "-u", "0",
                        "-v", f"{wheels}:/w:ro", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1", "-e", "PIP_NO_INPUT=1",
                        "-e", "PIP_CONFIG_FILE=/dev/null", base_image_for("3.11"), "sh", "-c", script],
                       capture_output=True, timeout=180)
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out["/" + m.name] = tar.extractfile(m).read()
    out.pop(f"{SITE}/distutils-precedence.pth", None)  # the base's own
    return int(out.pop("/tmp/rc")), out.pop("/tmp/log").decode(errors="replace"), out


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_static_editable_install_is_pips_or_refused(case, wheelhouse):
    from tests.support.paths import WHEEL_CACHE
    meta, deps = CASES[case]
    meta = {k: v.encode() for k, v in meta.items()}
    static = editable.plan(meta, deps_text=deps, **TOOLS)
    if isinstance(static, str):
        return  # refused: the engine runs pip
    rc, log, files = _real(meta, deps, WHEEL_CACHE)
    assert rc == 0, f"the static reader accepted what pip refuses:\n{log[-800:]}"
    assert static.files == files
