"""Issue 24, hostile inputs end to end (found in review, branch atk24): the image assembled in the registry must
be the engine's, or the engine builds it.

1. a setup.py with a UTF-7 coding declaration reads as one literal
setup() call to builder/build/editable.py (it decodes UTF-8), but Python decodes it as UTF-7, where "+AAo-" is a
newline: the "comment" is a statement that the engine's package step runs. The image assembled in the registry
must be the engine's (tests/integration/test_assemble.py's comparison); it lacked what the code wrote.

2. the registry assembly assumes the dependency image leaves the package step
alone ("the mark is never left by a package step made here"), but the dependency layer is written by the
requirement lines' own build code. An sdist among them that creates /opt/agent-image/installed-after-code makes
the engine's install step run `pip install -e /app` again after the code is copied (SOURCES.txt then lists the
package's modules); the assembled image skipped it. Sibling: a setuptools/pip the lines install, a .pth,
sitecustomize.py or egg_info.writers entry point in the dependency image (tests/unit/test_assemble_hostile.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from tests.integration.test_assemble import PIXELL_SETUP, REQS, _drop, _inside, own_pulls  # noqa: F401 (fixture)
from tests.support.index import start_index

SITE = "/opt/venv/lib/python3.11/site-packages"
HIDDEN = ("# -*- coding: utf-7 -*-\n"
          f"# +AAo-open(+ACI-{SITE}/atk24-hidden.pth+ACI-,+ACI-w+ACI-).write(+ACI-import sys+ACI-)\n")


def test_a_utf7_setup_py_gives_the_registry_the_engines_image(agent_factory, index_url, registry, docker_client,
                                                               cleanup_images, own_pulls, tmp_path):
    prefix = f"{registry.host}/fx24asm"
    cleanup_images(prefix)
    cleanup_images("fx24-asm-engine/")
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    first = build_image(agent_factory("asm-one", requirements=REQS, install_requires=["structlog"]), opts)
    assert first.deps_origin == "built", first
    twin = agent_factory("asm-two", requirements=REQS)
    body = PIXELL_SETUP.split('"""\n', 2)[2]  # the literal form, after pixell's shebang and docstring
    (twin / "setup.py").write_text(HIDDEN + body)
    made, ours, theirs = _engine_built_both_ways(twin, opts, "fx24-asm-engine", docker_client, own_pulls, tmp_path,
                                                 because="more than one setup() call of literals")
    assert "atk24-hidden.pth" in theirs, "the engine ran the code Python reads in the UTF-7 setup.py"
    assert made.deps_origin != "registry" or ours == theirs, \
        f"assembled in the registry without the code's effect:\n{made}\nengine has atk24-hidden.pth, ours does not"


MARK = "/opt/agent-image/installed-after-code"


def _marking_sdist(wheelhouse, src) -> None:
    proj = src / "atk24mark-1.0"
    proj.mkdir(parents=True, exist_ok=True)
    (proj / "setup.py").write_text(
        "import os\nif os.environ.get('ATK24_SKIP') != '1':\n"
        f"    os.makedirs('/opt/agent-image', exist_ok=True); open({MARK!r}, 'w').close()\n"
        "from setuptools import setup\nsetup(name='atk24mark', version='1.0')\n")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(wheelhouse)], cwd=proj, check=True,
                   capture_output=True, env={**os.environ, "ATK24_SKIP": "1"})


def test_a_dependency_that_leaves_the_mark_gives_the_registry_the_engines_image(
        agent_factory, wheelhouse, registry, docker_client, cleanup_images, own_pulls, tmp_path):
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    _marking_sdist(house, tmp_path / "src")
    idx = start_index(tmp_path / "idx", house)  # an index of its own: the session's lists its files once
    try:
        _check(idx.url_for("alice"), agent_factory, registry, docker_client, cleanup_images, own_pulls, tmp_path)
    finally:
        idx.stop()


def _check(index_url, agent_factory, registry, docker_client, cleanup_images, own_pulls, tmp_path):
    reqs = REQS + "atk24mark==1.0\n"
    prefix = f"{registry.host}/fx24mark"
    cleanup_images(prefix)
    cleanup_images("fx24-mark-engine/")
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    first = build_image(agent_factory("asm-one", requirements=reqs, install_requires=["structlog"]), opts)
    assert first.deps_origin == "built", first
    twin = agent_factory("asm-two", requirements=reqs)
    (twin / "setup.py").write_text(PIXELL_SETUP)
    made, ours, theirs = _engine_built_both_ways(twin, opts, "fx24-mark-engine", docker_client, own_pulls, tmp_path,
                                                 because="installed-after-code mark")
    assert "src/main.py" in theirs, "the engine's install step ran again after the code (SOURCES.txt lists it)"
    assert made.deps_origin != "registry" or ours == theirs, "assembled without the install step the engine ran"


def _engine_built_both_ways(twin, opts: BuildOptions, engine_repo: str, docker_client, own_pulls, tmp_path, *,
                            because: str):
    """TWIN built by the engine alone (tagged ENGINE_REPO/asm-two:0.1.0, not pushed), then with OPTS' --push
    once the engine holds nothing of the registry's: that build must leave the registry path BECAUSE of
    the reason given. (the pushed build, the files in its image, the files in the engine-only image)."""
    engine_built = build_image(twin, BuildOptions(index_url=opts.index_url, registry=opts.registry,
                                                  cache_dir=tmp_path / "c"))
    docker_client.images.get(engine_built.image_id).tag(f"{engine_repo}/asm-two", "0.1.0")
    _drop(docker_client, opts.registry)

    with capture_logs() as logs:
        made = build_image(twin, opts)
    why = [e.get("reason", "") for e in logs if e["event"].startswith("Not assembling in the registry")]
    assert made.deps_origin != "registry", made  # the engine built it, for the reason found:
    assert any(because in w for w in why), why
    own_pulls(made.digest_ref)
    docker_client.images.pull(made.digest_ref)
    return made, _inside(made.digest_ref), _inside(f"{engine_repo}/asm-two:0.1.0")
