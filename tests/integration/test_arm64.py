"""Issue 28: linux/arm64 images (Graviton) and multi-platform indexes, built on this amd64 host.

The example agent and an agent with compiled wheels (pydantic-core) are built for
linux/amd64 and linux/arm64 in one command, pushed as one OCI image index to a real
registry on loopback, pulled back platform by platform, and the arm64 image runs under
QEMU emulation until /health answers. The dependency image's compiled wheels are
aarch64; ecs-task-def says ARM64; a platform the image lacks is exit 65.

Needs QEMU user emulation (binfmt_misc with Debian's qemu-aarch64 handler) and the arm64
base, which scripts/setup.sh makes: without them these tests fail, naming the command
(the `qemu_arm64` fixture, tests/integration/conftest.py).
The aarch64 wheels the private index serves are downloaded once and kept on disk.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import urllib.request

import pytest

from builder.core.defaults import base_image_for
from builder.ship.client import OCI_INDEX, RegistryClient
from tests.support.cli import build_json, run_cli
from tests.support.index import start_index
from tests.support.net import free_port
from tests.support.packages import make_agent
from tests.support.paths import BIN, CACHE, ROOT

AARCH64_WHEELS = ["charset_normalizer==3.5.3", "pydantic_core==2.50.5"]
AARCH64_CACHE = CACHE / "test-wheels-aarch64"
# ELF e_machine of each .so under site-packages, read by the image's own Python
ELF_MACHINES = ("import pathlib, struct, sys; print(json.dumps(sorted({struct.unpack('<H', p.read_bytes()[18:20])[0] "
                "for p in pathlib.Path(sys.argv[1]).rglob('*.so')})))")
EM_X86_64, EM_AARCH64 = 62, 183
SITE = "/opt/venv/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def arm_index(wheelhouse, tmp_path_factory):
    """The tests' private index, plus the aarch64 builds of its compiled wheels."""
    AARCH64_CACHE.mkdir(parents=True, exist_ok=True)
    marker = AARCH64_CACHE / ".complete"
    if not marker.is_file() or marker.read_text() != repr(AARCH64_WHEELS):
        subprocess.run([str(BIN / "pip"), "download", "-q", "--no-deps", "--only-binary=:all:", "--implementation",
                        "cp", "--python-version", "3.11", "--abi", "cp311", "--platform", "manylinux2014_aarch64",
                        "--platform", "manylinux_2_28_aarch64", "-d", str(AARCH64_CACHE), *AARCH64_WHEELS], check=True)
        marker.write_text(repr(AARCH64_WHEELS))
    house = tmp_path_factory.mktemp("arm-house")
    shutil.copytree(wheelhouse, house, dirs_exist_ok=True)
    for whl in AARCH64_CACHE.glob("*.whl"):
        shutil.copy(whl, house)
    idx = start_index(tmp_path_factory.mktemp("arm-index"), house)
    yield idx
    idx.stop()


def cli_json(*args: str, timeout: float = 300) -> tuple[int, dict]:
    proc = run_cli(*args, "--json", timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout or proc.stderr.strip().splitlines()[-1])


def build_both(agent, registry, index) -> tuple[str, dict]:
    prefix = f"{registry.host}/arm64-{secrets.token_hex(3)}"
    code, out, log = build_json(agent, "--platform", "linux/amd64,linux/arm64", "--registry", prefix, "--push",
                                "--index-url", index.url_for("alice"), timeout=900)
    assert code == 0, (out, log[-3000:])
    return prefix, out


def index_platforms(registry, repo: str, tag: str) -> dict[str, str]:
    """{platform: manifest digest} of the index under REPO:TAG, each entry's config checked against its platform."""
    client = RegistryClient(registry.host, auth={})
    data, media, _ = client.manifest(repo, tag)
    assert media == OCI_INDEX
    out = {}
    for entry in json.loads(data)["manifests"]:
        plat = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        manifest = json.loads(client.manifest(repo, entry["digest"])[0])
        config = json.loads(client.blob(repo, manifest["config"]["digest"]))
        assert f"{config['os']}/{config['architecture']}" == plat  # the manifest is what the index says
        out[plat] = entry["digest"]
    return out


def elf_machines(docker_client, image: str) -> list[int]:
    out = docker_client.containers.run(image, ["python3", "-c", "import json; " + ELF_MACHINES, SITE],
                                       entrypoint=[], remove=True, user="0", network_mode="none")
    return json.loads(out.decode().strip().splitlines()[-1])


def test_example_agent_for_amd64_and_arm64(qemu_arm64, arm_index, registry, docker_client, cleanup_images, tmp_path):
    agent = shutil.copytree(ROOT / "examples" / "hello-agent", tmp_path / "hello-agent")
    prefix, out = build_both(agent, registry, arm_index)
    cleanup_images(prefix)
    repo = f"{prefix}/hello-agent"
    assert out["image"] == f"{repo}:1.0.0" and out["digest_ref"].startswith(f"{repo}@sha256:")
    built = out["platforms"]
    assert set(built) == {"linux/amd64", "linux/arm64"}
    assert built["linux/arm64"]["image"] == f"{repo}:1.0.0-arm64"
    # one index per pushed tag, each platform's manifest in it
    held = index_platforms(registry, repo.split("/", 1)[1], "1.0.0")
    assert held == {p: r["digest_ref"].split("@")[1] for p, r in built.items()}
    assert index_platforms(registry, repo.split("/", 1)[1], "latest") == held

    # the arm64 dependency image: its wheels are aarch64, fetched and compiled without emulation
    arm_deps = built["linux/arm64"]["deps_image"]
    assert docker_client.images.get(arm_deps).attrs["Architecture"] == "arm64"
    assert elf_machines(docker_client, arm_deps) == [EM_AARCH64]  # charset_normalizer's extension modules
    assert elf_machines(docker_client, built["linux/amd64"]["deps_image"]) == [EM_X86_64]

    # each platform pulled back from the one index
    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        code, pulled = cli_json("pull", f"{repo}:1.0.0", "--platform", platform, "--expect-name", "hello-agent")
        assert code == 0, pulled
        assert docker_client.images.get(pulled["image_id"]).attrs["Architecture"] == arch

    # the arm64 image serves under emulation
    port = free_port()
    code, ran = cli_json("run", f"{repo}:1.0.0", "--platform", "linux/arm64", "--port", str(port), "--wait", "120")
    try:
        assert code == 0, ran
        with urllib.request.urlopen(f"{ran['url']}/health", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["ok"] is True
        assert docker_client.containers.get(ran["container"]).image.attrs["Architecture"] == "arm64"
    finally:
        if code == 0:
            docker_client.containers.get(ran["container"]).remove(force=True)

    # ECS on Graviton
    code, task = cli_json("ecs-task-def", f"{repo}:1.0.0", "--platform", "linux/arm64", "--secrets-prefix",
                          "arn:aws:secretsmanager:us-east-1:123456789012:secret:agents/", "--execution-role-arn",
                          "arn:aws:iam::123456789012:role/ecs-exec")
    assert code == 0, task
    assert task["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
    assert task["containerDefinitions"][0]["image"] == f"{repo}@{held['linux/arm64']}"

    # a platform the image does not have: exit 65, naming it
    code, missing = cli_json("pull", f"{repo}:1.0.0-amd64", "--platform", "linux/arm64")
    assert code == 65 and missing["error"]["class"] == "PlatformMissingError", missing
    assert "linux/arm64" in missing["error"]["message"]

    # rebase: each platform's image onto the patched base of its platform, and the index moved
    base_index = patched_bases(prefix, tmp_path)
    code, rebased = cli_json("rebase", f"{repo}:1.0.0", "--base", base_index)
    assert code == 0, rebased
    moved = index_platforms(registry, repo.split("/", 1)[1], "1.0.0")
    assert set(moved) == {"linux/amd64", "linux/arm64"} and moved != held
    client = RegistryClient(registry.host, auth={})
    bases = index_platforms(registry, f"{prefix.split('/', 1)[1]}/agent-image.base", "py3.11")
    for platform, digest in moved.items():
        config = json.loads(client.blob(repo.split("/", 1)[1], json.loads(
            client.manifest(repo.split("/", 1)[1], digest)[0])["config"]["digest"]))
        assert config["config"]["Labels"]["org.opencontainers.image.base.digest"] == bases[platform]
        assert config["architecture"] == platform.split("/")[1]


def patched_bases(prefix: str, tmp_path) -> str:
    """Each platform's base plus a file (a COPY: nothing runs emulated), pushed per platform and as
    one index (builder/ship/index.py); returns the index's tag."""
    from builder.ship.index import push_index
    (tmp_path / "patch").mkdir()
    (tmp_path / "patch" / "patch.txt").write_text("patched\n")
    pinned = []
    for platform in ("linux/amd64", "linux/arm64"):
        arch = platform.split("/")[1]
        (tmp_path / "patch" / "Dockerfile").write_text(f"FROM {base_image_for('3.11', platform)}\n"
                                                       "COPY patch.txt /etc/agent-image-patch.txt\n")
        tag = f"{prefix}/agent-image.base:py3.11-{arch}"
        subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path / "patch")], check=True,
                       capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        subprocess.run(["docker", "push", tag], check=True, capture_output=True)
        digest = subprocess.run(["docker", "image", "inspect", tag, "--format", "{{index .RepoDigests 0}}"],
                                check=True, capture_output=True, text=True).stdout.strip()
        pinned.append(digest)
    push_index(pinned, ["py3.11"], auth={})
    return f"{prefix}/agent-image.base:py3.11"


def test_agent_with_compiled_wheels_for_amd64_and_arm64(qemu_arm64, arm_index, registry, docker_client, cleanup_images,
                                                        tmp_path):
    agent = make_agent(tmp_path, "pyd-agent", version="2.0.0", requirements="pydantic==2.14.4\n")
    prefix, out = build_both(agent, registry, arm_index)
    cleanup_images(prefix)
    repo = f"{prefix}/pyd-agent"
    built = out["platforms"]
    held = index_platforms(registry, repo.split("/", 1)[1], "2.0.0")
    assert set(held) == {"linux/amd64", "linux/arm64"}
    code, pulled = cli_json("pull", f"{repo}:2.0.0", "--platform", "linux/arm64", "--expect-version", "2.0.0")
    assert code == 0, pulled
    # pydantic-core's extension is aarch64 in the arm64 image, and imports there (emulated)
    assert elf_machines(docker_client, pulled["image_id"]) == [EM_AARCH64]
    got = docker_client.containers.run(pulled["image_id"], ["python", "-c", "import platform, pydantic_core; "
                                       "print(platform.machine(), pydantic_core.__version__)"], entrypoint=[],
                                       remove=True, network_mode="none").decode()
    assert got.split() == ["aarch64", "2.50.5"]
    assert elf_machines(docker_client, built["linux/amd64"]["image_id"]) == [EM_X86_64]

    # a code-only change: the arm64 dependency image is reused as it is, and nothing installs again (the
    # editable install ran on the host's CPU in a first stage, which the layer cache finds too)
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nREVISION = 2\n")
    code, again, log = build_json(agent, "--platform", "linux/amd64,linux/arm64", "--registry", prefix,
                                  "--index-url", arm_index.url_for("alice"))
    assert code == 0, log[-3000:]
    arm = again["platforms"]["linux/arm64"]
    assert arm["deps_origin"] == "local" and arm["deps_image"] == built["linux/arm64"]["deps_image"]
    assert {"deps", "package-host"} <= set(arm["steps_cached"]), arm["steps_cached"]
    assert "installing under emulation" not in log and "not CPU-free" not in log
