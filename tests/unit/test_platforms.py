"""Issue 28, the pure parts of multi-platform images: platform names and per-platform tags,
the dependency image whose wheels are fetched on the host's CPU, the OCI index, the
emulation check. (runtimePlatform per architecture: tests/unit/test_ecs_taskdef.py.) The builds themselves (under
QEMU) are in tests/integration/test_arm64.py."""

from __future__ import annotations

import json

import pytest

from builder.build.depsimage import layer_count
from builder.core import platforms
from builder.core.defaults import base_image_for
from builder.core.errors import EmulationMissingError, PackageValidationError, RegistryError
from builder.plan.cross import CrossTarget, cross_dockerfile, needs_emulation
from builder.plan.dockerfile import Rendered, deps_dockerfile, parse_steps
from builder.ship.index import index_document, platforms_of


def test_platform_names_and_defaults(monkeypatch):
    monkeypatch.setattr(platforms._platform, "machine", lambda: "x86_64")
    assert platforms.parse_platforms("linux/amd64, arm64,linux/arm64/v8") == ("linux/amd64", "linux/arm64")
    assert platforms.parse_platforms("") == ("linux/amd64",)  # the host's
    with pytest.raises(PackageValidationError, match="linux/riscv64.*builds linux/amd64, linux/arm64"):
        platforms.parse_platforms("linux/amd64,linux/riscv64")
    # one tag per architecture: the host's keeps its old name
    assert base_image_for("3.11") == base_image_for("3.11", "linux/amd64") == "agent-image/base:py3.11"
    assert base_image_for("3.11", "linux/arm64") == "agent-image/base:py3.11-arm64"
    assert platforms.platform_tag("1.0.0", "linux/arm64", True) == "1.0.0-arm64"
    assert platforms.platform_tag("latest", "linux/amd64", True) == "latest-amd64"
    assert platforms.platform_tag("1.0.0", "linux/arm64", False) == "1.0.0"


def test_missing_emulation_says_the_command_that_fixes_it(monkeypatch, tmp_path):
    monkeypatch.setattr(platforms._platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(platforms, "BINFMT", tmp_path)  # a host with no handler registered
    with pytest.raises(EmulationMissingError) as err:
        platforms.require_emulation("linux/arm64", "building")
    assert err.value.exit_code == 53
    assert "qemu-aarch64 is not registered" in err.value.message
    assert "apt-get install -y qemu-user-static binfmt-support" in err.value.hint
    assert "update-binfmts --enable qemu-aarch64" in err.value.hint
    platforms.require_emulation("linux/amd64", "building")  # the host's own CPU needs none
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    platforms.require_emulation("linux/arm64", "building")


DEPS = """#> step base
FROM agent-image/base:py3.11-arm64
#> step index
ARG AGENT_IMAGE_INDEX="https://pypi.org/simple/" PIP_INDEX_URL="http://agent-image-index.invalid/simple/"
#> step deps
COPY .agent-image/deps/ /opt/agent-image/deps/
RUN touch /tmp/.agent-image-stamp && PYTHONPATH=/opt/agent-image/tools/pip python -m pip install --no-compile \
-r /opt/agent-image/deps/requirements-deps.txt && { find /opt/venv/lib -name '*.py' -newer /tmp/.agent-image-stamp \
-print0 | xargs -0 -r -n 256 -P 4 python -m compileall -qq || :; } && rm -f /tmp/.agent-image-stamp
"""
TARGET = CrossTarget(host_base="agent-image/base:py3.11", host_base_id="sha256:" + "a" * 64, machine="aarch64",
                     glibc=(2, 36), python="3.11")


def rendered(text: str) -> Rendered:
    steps, instructions = parse_steps(text)
    return Rendered(text=text, steps=steps, instructions=instructions)


def test_cross_dependency_image_fetches_the_targets_wheels_on_the_host():
    plain = rendered(DEPS)
    cross = cross_dockerfile(plain, TARGET)
    text = cross.text
    first, last = text.split("\nFROM agent-image/base:py3.11-arm64\n")
    # the first stage runs on the host's base, with the target's tags and no source builds
    assert first.splitlines()[2] == "FROM agent-image/base:py3.11 AS wheels"
    assert TARGET.host_base_id in first  # the host base's id is in the text, so in the deps key
    for flag in ("--only-binary=:all:", "--implementation cp", "--python-version 3.11", "--abi cp311",
                 "--platform manylinux_2_36_aarch64", "--platform manylinux_2_17_aarch64",
                 "--platform manylinux2014_aarch64", "--target /opt/agent-image/cross/site"):
        assert flag in first, flag
    assert "x86_64" not in first
    # bytecode compiled there for the path the files will have, independent of file times
    assert "--invalidation-mode unchecked-hash -s /opt/agent-image/cross/site -p /opt/venv/lib/python3.11/" \
           "site-packages" in first
    # the target's stage copies; it installs (emulated) only when the first stage left its mark
    assert "COPY --from=wheels /opt/agent-image/cross/site/ /opt/venv/lib/python3.11/site-packages/" in last
    assert "RUN if [ -e /opt/venv/lib/python3.11/site-packages/.agent-image-emulate ]; then" in last
    assert "python -m pip install --no-compile -r /opt/agent-image/deps/requirements-deps.txt" in last
    # the image's shape: its last stage adds the same number of layers whichever path ran
    assert layer_count(cross) == 4 and layer_count(plain) == 2
    assert "deps" in cross.steps and cross.steps[0] == "wheels"


def test_cross_is_not_used_where_it_would_be_wrong():
    assert needs_emulation("greenlet; platform_machine == 'aarch64'\n")
    assert needs_emulation("pywin32; sys_platform == 'win32'\n")
    assert not needs_emulation("requests==2.32.3\npydantic>=2\n")
    uv = DEPS.replace("PYTHONPATH=/opt/agent-image/tools/pip python -m pip install --no-compile",
                      "/opt/agent-image/tools/bin/uv pip install --python /opt/venv/bin/python")
    assert cross_dockerfile(rendered(uv), TARGET) is None  # uv's steps stay as they are (emulated)


def test_deps_dockerfile_of_a_real_render_is_crossable():
    from builder.package.manifest import parse_manifest
    from builder.plan.dockerfile import render
    from tests.support.packages import AGENT_YAML
    m = parse_manifest(AGENT_YAML.format(name="demo", display="Demo", runtime="python3.11", version="1.0.0"))
    agent = render(m, base_image="agent-image/base:py3.11-arm64", index_identity="https://pypi.org/simple/",
                   deps=True, editable=True, requirements=True, tool_pip=True, base_has_runtime=True)
    cross = cross_dockerfile(deps_dockerfile(agent.text), TARGET)
    assert cross is not None and "FROM agent-image/base:py3.11 AS wheels" in cross.text


def entry(arch: str, digest: str = "sha256:" + "1" * 64) -> dict:
    return {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest, "size": 10,
            "platform": {"architecture": arch, "os": "linux"}}


def test_index_document_lists_each_platform_once():
    doc = json.loads(index_document([entry("amd64"), entry("arm64", "sha256:" + "2" * 64)]))
    assert doc["mediaType"] == "application/vnd.oci.image.index.v1+json" and doc["schemaVersion"] == 2
    assert platforms_of(json.dumps(doc).encode()) == ["linux/amd64", "linux/arm64"]
    with pytest.raises(RegistryError, match="two images for linux/arm64"):
        index_document([entry("arm64"), entry("arm64", "sha256:" + "2" * 64)])


def test_editable_install_on_the_hosts_cpu_when_it_is_cpu_free():
    from builder.package.manifest import parse_manifest
    from builder.plan.cross import package_on_host
    from builder.plan.dockerfile import render
    from tests.support.packages import AGENT_YAML
    m = parse_manifest(AGENT_YAML.format(name="demo", display="Demo", runtime="python3.11", version="1.0.0"))
    kw = dict(base_image="x", index_identity="https://pypi.org/simple/", deps=True, editable=True, requirements=True,
              tool_pip=True, base_has_runtime=True, deps_image="sha256:" + "b" * 64, pip_report=True)
    text = package_on_host(render(m, **kw), "agents/agent-image.deps:deps-host").text
    host, target = text.split("FROM sha256:" + "b" * 64)
    assert host.startswith("#> step package-host\n") and "FROM agents/agent-image.deps:deps-host AS package" in host
    # on the host only when pip installed the package alone and no extension module was built
    assert "--report /tmp/.agent-image-report.json && python -c" in host and "-name '*.so'" in host
    assert "pip install --no-compile -r /app/requirements.txt" not in host  # that pass never runs on the host
    assert "--invalidation-mode unchecked-hash" in host and "chmod --reference" in host
    # the target copies the files, and installs (emulated) only when the host left its mark
    assert "COPY --from=package /opt/agent-image/host/ /" in target
    assert "RUN if [ -e /.agent-image-emulate ]; then rm -f /.agent-image-emulate && touch" in target
    assert "pip install --no-compile -r /app/requirements.txt" in target  # the seed's pass, as before
    # shapes it does not know stay emulated: uv, hash-checked lines
    assert package_on_host(render(m, **{**kw, "installer": "uv"}), "h") is None
    assert package_on_host(render(m, **{**kw, "require_hashes": True}), "h") is None
