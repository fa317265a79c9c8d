"""Issue 10: untrusted package code at build time reaches the index proxy and nothing else.

A hostile agent (its setup.py) and a hostile sdist dependency on the test
index try every door from inside a real build: listeners on the builder's
host (127.0.0.1, 0.0.0.0, every host address, a link-local alias on a dummy
interface; accepts counted on the host), a direct internet connect, DNS,
absolute-form and CONNECT requests through the proxy, and each proxy trick
of the issue, with a canary file and a canary environment variable on the
builder host. The build must still succeed and no canary may appear in any
response, layer or log line. Nothing here sends a packet off this machine
except the tries at pypi.org, which the sandbox stops before they leave.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import threading
import time

import pytest

from builder.core.labels import SANDBOX_LABEL as LABEL
from tests.support.cli import AGENT_IMAGE
from tests.support.engine import image_holds
from tests.support.hostile import assert_confined, hostile_agent, hostile_index, requests_to_try
from tests.support.hosts import Counting


@pytest.fixture
def listeners(link_local):
    from builder.build.doctor import host_addresses
    opened = [Counting("0.0.0.0"), Counting("127.0.0.1"), Counting(link_local)]
    opened += [Counting(a) for a in host_addresses() if ":" not in a and a != "127.0.0.1"]
    yield opened
    for lst in opened:
        lst.close()


# and under arm64 (issue 28): the dependency's sdist and the agent's setup.py then run under QEMU emulation
@pytest.mark.parametrize("platform", [None, "linux/arm64"], ids=["host", "arm64"])
def test_hostile_agent_and_dependency_reach_only_the_index(tmp_path, wheelhouse, listeners, docker_client,
                                                           cleanup_images, agent_factory, platform, request):
    if platform:
        request.getfixturevalue("qemu_arm64")
    canary_file = f"CANARY-FILE-{secrets.token_hex(8)}"
    canary_env = f"CANARY-ENV-{secrets.token_hex(8)}"
    canary_path = tmp_path / "canary" / "secret.txt"
    canary_path.parent.mkdir()
    canary_path.write_text(canary_file)
    port = listeners[0].port  # the 0.0.0.0 listener: every host address answers on it
    targets = [f"{a}:{lst.port}" for lst in listeners for a in
               ([lst.address] if lst.address != "0.0.0.0" else [x.address for x in listeners[1:]])]
    try:  # pypi.org's address, resolved here, tried straight from the build (skipping DNS and the proxy)
        targets.append(f"{socket.gethostbyname('pypi.org')}:443")
    except OSError:
        targets.append("151.101.0.223:443")
    cfg = {"env_name": "AGENT_IMAGE_CANARY", "canary_path": str(canary_path), "targets": targets,
           "requests": requests_to_try(str(canary_path), port)}

    # the hostile sdist dependency, on its own copy of the test index
    index = hostile_index(tmp_path, wheelhouse, cfg)
    try:
        agent = hostile_agent(agent_factory, cfg)
        repo = f"agent-image-test10/hostile-{secrets.token_hex(3)}"
        cleanup_images(repo)
        env = {**os.environ, "AGENT_IMAGE_CANARY": canary_env}
        proc = subprocess.Popen([AGENT_IMAGE, "build", str(agent), "--json", "-v", "--no-cache",
                                 "--index-url", index.url_for("alice"), "--repository", repo,
                                 "--cache-dir", str(tmp_path / "cache"),
                                 *(["--platform", platform] if platform else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        index.proc.terminate()
        index.proc.wait(5)
    out = stdout + stderr
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(stdout)
    result = result["platforms"][platform] if platform else result  # --platform: one image per platform
    ref = result["image"]
    if platform:
        assert docker_client.images.get(ref).attrs["Architecture"] == platform.split("/")[1]

    # nothing on the builder's host saw a connection
    assert {f"{lst.address}:{lst.port}": lst.accepts for lst in listeners} == \
        {f"{lst.address}:{lst.port}": 0 for lst in listeners}
    # (docker-py's containers.run now and then returns a quick container's output empty: use the CLI)
    reports = {where: json.loads(subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "cat",
                                                 f"/hostile-{where}.json"],
                                                capture_output=True, text=True, check=True).stdout)
               for where in ("agent", "dep")}
    assert_confined(reports, (canary_file,))
    # the canaries are in no layer, no config, no history and no log line
    assert image_holds(docker_client, ref, [canary_file.encode(), canary_env.encode()]) == []
    assert canary_file not in out and canary_env not in out
    # every trick but CONNECT (which http.server refuses itself) counted, from both runs at least
    assert result["index"]["denied"] >= 2 * (len(cfg["requests"]) - 2)
    # and the sandbox is gone with the build
    assert mine_gone(docker_client, proc.pid)


def mine_gone(docker_client, pid: int | None = None, timeout: float = 10.0) -> bool:
    """Wait until no sandbox of PID (default this process) is left: the builder kills it and
    the engine removes it (auto-remove) a moment later."""
    deadline = time.monotonic() + timeout
    while docker_client.api.containers(all=True, filters={"label": f"{LABEL}.pid={pid or os.getpid()}"}):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class SandboxWatch:
    """Polls the engine for this process's sandboxes (engine events are a 256-entry ring
    buffer that the other builds on a shared engine overrun)."""

    def __init__(self, docker_client) -> None:
        self.client, self.seen, self.stop = docker_client, set(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            found = self.client.api.containers(all=True, filters={"label": f"{LABEL}.pid={os.getpid()}"})
            self.seen |= {c["Id"] for c in found}

    def phase(self) -> set[str]:
        """Sandboxes seen since the last call, once the engine has removed them all."""
        assert mine_gone(self.client)
        time.sleep(0.2)
        seen, self.seen = self.seen, set()
        return seen

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_sandbox_lives_exactly_as_long_as_a_build(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    """Started for a build, removed after success, failure and timeout; never for a no-op build."""
    from builder.api import BuildOptions, build_image
    from builder.core.errors import BuildTimeoutError, DependencyError
    cleanup_images("agents/sbx-life")
    opts = dict(index_url=index_url, cache_dir=tmp_path / "c")
    agent = agent_factory("sbx-life", requirements="tinyreq==1.0\n")
    watch = SandboxWatch(docker_client)
    try:
        assert build_image(agent, BuildOptions(**opts)).ok
        assert len(watch.phase()) == 1
        assert build_image(agent, BuildOptions(**opts)).cached
        assert watch.phase() == set()   # the no-op build started none
        with pytest.raises(DependencyError):
            build_image(agent_factory("sbx-life-bad", requirements="tinyreq==9.9\n"), BuildOptions(**opts))
        assert len(watch.phase()) == 1
        with pytest.raises(BuildTimeoutError):
            build_image(agent_factory("sbx-life-slow", requirements="slowpkg==1.0\n"),
                        BuildOptions(**opts, timeout=15))
        assert len(watch.phase()) == 1
    finally:
        watch.close()
    assert mine_gone(docker_client)  # each went with its build


def _build_with_a_second_index(tmp_path, index_url, agent, project: str, version: str, requirements) -> object:
    """Build AGENT (REQUIREMENTS(second index's URL as 'localhost') -> requirements.txt) with
    --allow-index-host localhost, while a second pypiserver serves PROJECT==VERSION alone."""
    from builder.api import BuildOptions, build_image
    from tests.support.index import start_pypiserver
    from tests.support.packages import build_wheel, make_project
    house = tmp_path / "extra-packages"
    build_wheel(make_project(tmp_path / "src", project, version), house)
    url, proc = start_pypiserver(house)
    try:
        (agent / "requirements.txt").write_text(requirements(url.replace("127.0.0.1", "localhost")), encoding="utf-8")
        return build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "c",
                                               allow_index_hosts=frozenset({"localhost"})))
    finally:
        proc.terminate()
        proc.wait(5)


def test_an_allowed_extra_index_is_served_through_the_proxy(agent_factory, index_url, tmp_path, cleanup_images):
    """--allow-index-host HOST: requirements may name HOST's index, and the build still reaches only the proxy."""
    cleanup_images("agents/sbx-extra")
    # (after a UTF-8 byte-order mark, which pip reads past: the rewrite must too)
    result = _build_with_a_second_index(
        tmp_path, index_url, agent_factory("sbx-extra", requirements=None), "extraonly", "3.1",
        lambda extra: f"\ufeff--extra-index-url {extra}\nextraonly==3.1\ntinyreq==1.0\n")
    assert "extraonly-3.1" in result.installed and "tinyreq-1.0" in result.installed
    assert "extraonly-3.1-py3-none-any.whl" in result.index["downloaded"]  # through the proxy
    # (that the index's credential never goes to the extra host: test_indexproxy, with a recording server)


def test_a_direct_reference_on_an_allowed_host_is_fetched_through_the_proxy(
        agent_factory, index_url, tmp_path, cleanup_images):
    """`name @ https://HOST/file` with --allow-index-host HOST: that file reaches the build through the proxy."""
    cleanup_images("agents/sbx-direct")
    result = _build_with_a_second_index(
        tmp_path, index_url, agent_factory("sbx-direct", requirements=None), "directonly", "2.0",
        lambda extra: f"directonly @ {extra.replace('/simple/', '/packages/')}directonly-2.0-py3-none-any.whl\n"
                      "tinyreq==1.0\n")
    assert "directonly-2.0" in result.installed and "tinyreq-1.0" in result.installed
    assert "directonly-2.0-py3-none-any.whl" in result.index["downloaded"]  # through the proxy


def test_a_file_over_the_download_cap_fails_the_build_naming_it(agent_factory, index_url, tmp_path):
    from builder.api import BuildOptions, build_image
    from builder.core.errors import IndexResponseError
    agent = agent_factory("sbx-cap", requirements="tinyreq==1.0\n")
    with pytest.raises(IndexResponseError) as info:
        build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "c", download_max_bytes=100,
                                        nocache=True))
    assert info.value.exit_code == 33
    assert "tinyreq-1.0-py3-none-any.whl" in str(info.value) and "cap of 100 bytes" in str(info.value)
    assert not list((tmp_path / "c" / "downloads" / "v2" / "sha256").iterdir())  # not kept


def test_the_next_build_removes_a_dead_builders_sandbox(agent_factory, index_url, engine, docker_client,
                                                        cleanup_images, tmp_path):
    from builder.api import BuildOptions, build_image
    from builder.build.sandbox import host_identity
    from builder.core.defaults import base_image_for
    gone = subprocess.Popen(["true"])
    gone.wait()
    labels = {LABEL: "1", f"{LABEL}.pid": str(gone.pid), f"{LABEL}.started": "1", f"{LABEL}.host": host_identity()}
    stale = engine.start_attached(base_image_for("3.11"), command=["python3", "-c", "import time; time.sleep(300)"],
                                  labels=labels)[0]
    try:
        cleanup_images("agents/sbx-sweep")
        assert build_image(agent_factory("sbx-sweep"), BuildOptions(index_url=index_url, cache_dir=tmp_path / "c")).ok
        assert mine_gone(docker_client, gone.pid)
    finally:
        engine.remove_container(stale)
