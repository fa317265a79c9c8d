"""Issue 14: what the index proxy does so pip in the build waits less, without changing what pip picks.

Pages lose the links to wheels the base's interpreter can never install
(builder/wheeltags.py). The upstream is a real HTTP server on loopback
(tests/test_indexproxy.Server); pip is the real pip of this checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys

from packaging import tags as host_tags

from builder.wheeltags import target
from tests.test_indexproxy import SHA, WHEEL, a, ask, make  # noqa: F401 (fixture)

HOST_PY = f"python=3.{sys.version_info.minor}"
FOREIGN = [
    "pkg-1.0-cp311-cp311-win_amd64.whl", "pkg-1.0-cp311-cp311-macosx_11_0_arm64.whl",
    "pkg-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "pkg-1.0-cp311-cp311-manylinux_2_17_aarch64.whl",
    "pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "pkg-1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl",
    "pkg-1.0-cp313-abi3-manylinux_2_17_x86_64.whl", "pkg-1.0-py2-none-any.whl",
]
OURS = [
    "pkg-1.0-py3-none-any.whl", "pkg-1.0-py2.py3-none-any.whl", "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    "pkg-1.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "pkg-1.0-cp38-abi3-manylinux1_x86_64.whl",
    "pkg-1.0-cp311-cp311-linux_x86_64.whl", "pkg-1.0-1-cp311-none-any.whl",
    # newer than the base's glibc: pip rejects it itself, so it may stay
    "pkg-1.0-cp311-cp311-manylinux_2_39_x86_64.whl",
    # not ours to judge: pip decides about sources and names that are not wheels
    "pkg-1.0.tar.gz", "pkg-1.0.zip", "not-a-valid-wheel-name.whl",
]


def test_every_wheel_pip_here_accepts_is_kept():
    """The tests run on CPython 3.x, x86_64, glibc, like the base: every tag pip accepts on this
    interpreter (packaging's sys_tags) must pass the filter, or a build could lose its only wheel."""
    t = target(HOST_PY, "amd64")
    accepted = [f"pkg-1.0-{tag}.whl" for tag in host_tags.sys_tags()]
    assert len(accepted) > 100
    assert [n for n in accepted if not t.keeps(n)] == []


def test_wheels_for_other_platforms_and_pythons_are_dropped_and_ours_kept():
    t = target("distro=debian:12;python=3.11;venv=/opt/venv", "amd64")
    assert [n for n in FOREIGN if t.keeps(n)] == []
    assert [n for n in OURS if not t.keeps(n)] == []
    arm = target("python=3.11", "arm64")
    assert arm.keeps("pkg-1.0-cp311-cp311-manylinux_2_17_aarch64.whl")
    assert not arm.keeps("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")


def test_an_unknown_target_filters_nothing():
    assert target(None, "amd64") is None
    assert target("python=3.11", "s390x") is None
    assert target("distro=debian:12", "amd64") is None
    assert target("python=2.7", "amd64") is None


def test_the_build_sees_a_page_without_foreign_wheels_and_pip_still_picks_the_same(a, tmp_path):  # noqa: F811
    files = FOREIGN + OURS
    body = "".join(f'<a href="/files/{n}#sha256={SHA}" data-requires-python="&gt;=3.8">{n}</a><br/>\n'
                   for n in files)
    a.routes["/simple/pkg/"] = (200, {"Content-Type": "text/html"}, f"<html><body>{body}</body></html>".encode())
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        status, page = ask(proxy, "/simple/pkg/")
        assert status == 200
        served = re.findall(r">([^<]+)</a>", page.decode())
        assert served == OURS
        assert proxy.stats.versions["pkg"] == ["1.0"]  # the error messages still see every version
    with make(a.base + "/simple/", tmp_path) as whole:
        assert re.findall(r">([^<]+)</a>", ask(whole, "/simple/pkg/")[1].decode()) == files


def test_pip_installs_the_only_wheel_for_its_platform_through_a_filtered_page(a, tmp_path):  # noqa: F811
    """A real project page with wheels for five platforms: pip through the proxy downloads the one
    this interpreter takes (cp3X manylinux), never sees the others, and installs it."""
    import zipfile
    py = f"cp3{sys.version_info.minor}"
    names = [f"tiny-2.0-{py}-{py}-win_amd64.whl", f"tiny-2.0-{py}-{py}-macosx_11_0_arm64.whl",
             f"tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl", f"tiny-2.0-{py}-{py}-musllinux_1_2_x86_64.whl",
             "tiny-1.0-py3-none-any.whl"]
    hrefs = []
    for n in names:
        version = n.split("-")[1]
        path = tmp_path / n
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("tiny.py", f"PLATFORM = {n!r}\n")
            z.writestr(f"tiny-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: tiny\nVersion: {version}\n")
            z.writestr(f"tiny-{version}.dist-info/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {n[:-4].split('-', 2)[2]}\n")
            z.writestr(f"tiny-{version}.dist-info/RECORD", "")
        a.file(f"/files/{n}", path.read_bytes())
        hrefs.append(f"/files/{n}")
    a.page("/simple/tiny/", hrefs)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "http_proxy": proxy.address}
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                            "--trusted-host", "agent-image-index.invalid", "-i", "http://agent-image-index.invalid/simple/",
                            "--target", str(tmp_path / "t"), "tiny"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert proxy.stats.downloaded == [f"tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl"]
    assert "manylinux_2_17_x86_64" in (tmp_path / "t" / "tiny.py").read_text()
    fetched = [p for p in a.paths() if p.startswith("/files/")]
    assert fetched == [f"/files/tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl"]
