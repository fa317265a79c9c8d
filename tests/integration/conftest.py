"""Fixtures of the integration tier: the real engine, a real private index, a real
registry, a link-local address on this machine. Helpers are in tests/support.

Nothing here mocks the engine, the index or the registry. A test that needs
the engine and cannot reach it fails (it does not skip): run
scripts/setup.sh first, as scripts/test.sh does. Nothing connects at import:
the engine is first asked when a test asks for `docker_client`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.engine import remove_tags
from tests.support.hosts import link_local_address
from tests.support.index import fill_wheelhouse, start_index
from tests.support.net import free_port
from tests.support.registry import Registry

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


@pytest.fixture(scope="session")
def docker_client():
    import docker

    from builder.core.defaults import base_image_for
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
def qemu_arm64(docker_client):
    """QEMU for arm64 and the arm64 base, or a loud failure with the command that fixes it
    (never a skip: a runner without them would silently stop testing arm64 builds)."""
    import docker

    from builder.core.defaults import base_image_for
    from builder.core.platforms import EMULATION_FIX, emulation_ready
    if not emulation_ready("linux/arm64"):
        pytest.fail("arm64 builds need QEMU user emulation on this host: run as root "
                    f"{EMULATION_FIX.format(machine='aarch64')}", pytrace=False)
    base = base_image_for("3.11", "linux/arm64")
    try:
        docker_client.images.get(base)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{base} is missing: run scripts/setup.sh (it makes agent-image/python:3.11-arm64 and the "
                    "arm64 base)", pytrace=False)


@pytest.fixture(scope="session")
def engine(docker_client):
    from builder.build.engine import Engine
    return Engine()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    return fill_wheelhouse(tmp_path_factory.mktemp("wheelhouse"), tmp_path_factory.mktemp("fixture-src"))


@pytest.fixture(scope="session")
def index(wheelhouse, tmp_path_factory):
    idx = start_index(tmp_path_factory.mktemp("index"), wheelhouse)
    yield idx
    idx.stop()


@pytest.fixture
def index_url(index) -> str:
    return index.url_for("alice")


@pytest.fixture
def cleanup_images(docker_client):
    """Remove images a test tagged (by repository prefix) when it ends."""
    repos: list[str] = []
    yield repos.append
    remove_tags(docker_client, repos)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("registry"), free_port())
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture
def link_local():
    """169.254.77.1 on this machine for the test's length (root: it adds an address)."""
    with link_local_address() as address:
        yield address
