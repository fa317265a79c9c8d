"""Review of issue 24 (branch atk24), end to end: a setup.py with a UTF-7 coding declaration reads as one literal
setup() call to builder/build/editable.py (it decodes UTF-8), but Python decodes it as UTF-7, where "+AAo-" is a
newline: the "comment" is a statement that the engine's package step runs. The image assembled in the registry
must be the engine's (tests/integration/test_assemble.py's comparison); today it lacks what the code wrote."""

from __future__ import annotations

from builder.api import BuildOptions, build_image
from tests.integration.test_assemble import PIXELL_SETUP, REQS, _drop, _inside

SITE = "/opt/venv/lib/python3.11/site-packages"
HIDDEN = ("# -*- coding: utf-7 -*-\n"
          f"# +AAo-open(+ACI-{SITE}/atk24-hidden.pth+ACI-,+ACI-w+ACI-).write(+ACI-import sys+ACI-)\n")


def test_a_utf7_setup_py_gives_the_registry_the_engines_image(agent_factory, index_url, registry, docker_client,
                                                               cleanup_images, tmp_path):
    prefix = f"{registry.host}/atk24asm"
    cleanup_images(prefix)
    cleanup_images("atk24-asm-engine/")
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    first = build_image(agent_factory("asm-one", requirements=REQS, install_requires=["structlog"]), opts)
    assert first.deps_origin == "built", first
    twin = agent_factory("asm-two", requirements=REQS)
    body = PIXELL_SETUP.split('"""\n', 2)[2]  # the literal form, after pixell's shebang and docstring
    (twin / "setup.py").write_text(HIDDEN + body)
    engine_built = build_image(twin, BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "c"))
    docker_client.images.get(engine_built.image_id).tag("atk24-asm-engine/asm-two", "0.1.0")
    _drop(docker_client, prefix)

    made = build_image(twin, opts)
    docker_client.images.pull(made.digest_ref)
    ours, theirs = _inside(made.digest_ref), _inside("atk24-asm-engine/asm-two:0.1.0")
    assert "atk24-hidden.pth" in theirs, "the engine ran the code Python reads in the UTF-7 setup.py"
    assert made.deps_origin != "registry" or ours == theirs, \
        f"assembled in the registry without the code's effect:\n{made}\nengine has atk24-hidden.pth, ours does not"
