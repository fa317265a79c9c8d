"""Issue 6: faults at the worst moments. Nothing lost, nothing leaked, nothing left behind.

Every fault here is real: the index server and the registry are really
stopped, a second dockerd (on its own socket, so the suite's engine is left
alone) is really killed mid-build.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker
import pytest

from builder.api import BuildOptions, build_image
from builder.build.engine import Engine
from builder.core.defaults import base_image_for
from builder.core.errors import EngineError, IndexUnreachableError, RegistryError
from builder.ship.pushpull import push_image
from tests.support.cli import AGENT_IMAGE
from tests.support.engine import engine_containers, engine_tags
from tests.support.index import start_pypiserver
from tests.support.net import free_port
from tests.support.registry import Registry


def containers(client) -> set[str]:
    return engine_containers(client)


def settle(client, before: set[str], timeout: float = 20) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = containers(client) - before
        if not left:
            return left
        time.sleep(0.5)
    return containers(client) - before


def private_tmp(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose TMPDIR is a fresh folder, to see what a run leaves there."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp)}, tmp


def zip_agent(folder: Path) -> Path:
    """The folder as an .apkg (a zip), so extraction into a temporary folder is exercised."""
    out = folder.parent / f"{folder.name}.apkg"
    shutil.make_archive(str(out.with_suffix("")), "zip", folder)
    return out.with_suffix(".zip").rename(out)


def test_failed_build_never_moves_the_tag(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    cleanup_images("agents/keeper")
    agent = agent_factory("keeper", requirements="tinyreq==1.0\n")
    good = build_image(agent, BuildOptions(index_url=index_url))
    (agent / "requirements.txt").write_text("tinyreq==1.0\nnot-a-real-package==1\n")
    env, tmp = private_tmp(tmp_path)
    code = subprocess.run([AGENT_IMAGE, "build", str(zip_agent(agent)), "--json", "--index-url", index_url],
                          capture_output=True, text=True, env=env).returncode
    assert code == 21
    assert docker_client.images.get("agents/keeper:0.1.0").id == good.image_id
    assert not list(tmp.iterdir()), "the extracted package and build files are removed"


def test_ctrl_c_cancels_cleanly(agent_factory, index_url, docker_client, engine, tmp_path):
    agent = agent_factory("interrupted", requirements="slowpkg==1.0\n")
    before = containers(docker_client)
    tags_before = engine_tags(docker_client)
    env, tmp = private_tmp(tmp_path)
    proc = subprocess.Popen([AGENT_IMAGE, "build", str(zip_agent(agent)), "--json", "--no-cache",
                             "--progress", "json", "--index-url", index_url],  # (the log's events, as JSON)
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # wait until pip is running inside the build
        if '"name": "deps"' in line and "RUN " in line and "pip install" in line:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    result = json.loads(out)
    assert proc.returncode == 42 and result["error"]["class"] == "BuildInterruptedError"
    assert settle(docker_client, before) == set(), "the interrupted build left a container"
    assert engine_tags(docker_client) == tags_before, "no tag written"
    assert not list(tmp.iterdir()), "the extracted package and build files are removed"


@pytest.fixture
def own_index(wheelhouse, tmp_path):
    """An index only this test uses, so it can be stopped and started again."""
    root = tmp_path / "own-index"
    shutil.copytree(wheelhouse, root / "packages")
    state = {}

    def start(port: int | None = None):
        url, proc = start_pypiserver(root / "packages")
        state["proc"] = proc
        return url

    yield start, state
    if state.get("proc"):
        state["proc"].kill()


def test_index_down_mid_install_then_rerun(agent_factory, own_index, tmp_path, docker_client, cleanup_images):
    cleanup_images("agents/index-drop")
    start, state = own_index
    url = start()
    agent = agent_factory("index-drop", requirements="fastapi\nuvicorn\nwatchdog\nrequests==2.32.3\nstructlog\n")
    blobs = tmp_path / "c" / "downloads" / "v2" / "sha256"

    def kill_after_first_file():  # the first file has been fetched: the index goes away
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if blobs.is_dir() and any(not p.name.startswith(".part") for p in blobs.iterdir()):
                state["proc"].kill()
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_after_first_file)
    killer.start()
    before = containers(docker_client)
    with pytest.raises(IndexUnreachableError) as info:
        build_image(agent, BuildOptions(index_url=url, cache_dir=tmp_path / "c", nocache=True))
    killer.join()
    assert "could not be reached" in str(info.value)
    assert settle(docker_client, before) == set()
    # the fault clears (same index, same address is not needed: the URL is an option), the rerun succeeds
    url2 = start()
    result = build_image(agent, BuildOptions(index_url=url2, cache_dir=tmp_path / "c"))
    assert result.ok


def test_registry_down_mid_push_then_rerun(agent_factory, index_url, tmp_path, docker_client, cleanup_images):
    # info level: the registry logs each request, so the test sees the upload start
    reg = Registry(tmp_path / "reg", free_port(), level="info")
    (tmp_path / "reg").mkdir()
    reg.start()
    repo = f"{reg.host}/faults"
    cleanup_images(repo)
    agent = agent_factory("push-drop", requirements="fastapi\nuvicorn\nrequests==2.32.3\n")
    result = build_image(agent, BuildOptions(index_url=index_url, registry=repo))
    engine = Engine()

    def stop_when_uploading():
        deadline = time.monotonic() + 60
        logfile = tmp_path / "reg" / "registry.log"
        while time.monotonic() < deadline:
            if logfile.exists() and "blobs/uploads" in logfile.read_text(errors="replace"):
                break
            time.sleep(0.01)
        reg.stop()

    stopper = threading.Thread(target=stop_when_uploading)
    stopper.start()
    with pytest.raises(RegistryError):
        push_image(engine, result.image, retries=1)
    stopper.join()
    reg.start()
    pinned = push_image(engine, result.image)
    assert pinned.startswith(f"{repo}/push-drop@sha256:")
    reg.stop()


# --- a second engine we may kill -------------------------------------------------------------------

BRIDGE = "aiimg-br0"


class SecondEngine:
    def __init__(self, root: Path):
        self.root = root
        self.sock = f"unix://{root}/docker.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # a killed dockerd's containerd dies with it but leaves its pid file and
        # socket, which would make the restarted dockerd wait for it forever
        for stale in ("containerd.pid", "containerd.sock", "containerd.sock.ttrpc", "containerd-debug.sock"):
            (self.root / "exec" / "containerd" / stale).unlink(missing_ok=True)
        # its own bridge: with --bridge=none dockerd deletes the host's docker0,
        # which would take the suite's engine's container networking with it
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True)
        subprocess.run(["ip", "addr", "add", "10.213.7.1/24", "dev", BRIDGE], capture_output=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        args = ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "docker.pid"), "-H", self.sock, "-b", BRIDGE,
                "--iptables=false", "--ip-masq=false"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.root / "dockerd.log", "ab"),
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                docker.DockerClient(base_url=self.sock).ping()
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"second dockerd did not start: {(self.root / 'dockerd.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL dockerd alone, as a crash would; its containerd lives on and is reused."""
        if self.proc:
            self.proc.kill()
            self.proc.wait(30)
            self.proc = None

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()  # a clean stop also stops its containerd
            self.proc.wait(60)
            self.proc = None
        subprocess.run(["pkill", "-f", str(self.root)], check=False)
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines() if str(self.root) in ln]
        for mnt in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture
def second_engine(docker_client):
    root = Path(tempfile.mkdtemp(prefix="ai-dockerd-", dir="/tmp"))  # short path: unix socket length limit
    eng = SecondEngine(root)
    eng.start()
    # named=True would name it by the image's first tag, which is another one when the
    # base also carries a registry tag (agent-image base --push): name it as the builds ask
    image = b"".join(docker_client.images.get(base_image_for("3.11")).save(named=base_image_for("3.11")))
    docker.DockerClient(base_url=eng.sock).images.load(image)
    yield eng
    eng.close()


def test_engine_killed_mid_build_then_rerun(agent_factory, index_url, second_engine):
    slow = agent_factory("engine-drop", requirements="slowpkg==1.0\n")
    engine = Engine(second_engine.sock)

    def kill_soon():
        time.sleep(8)
        second_engine.kill()

    threading.Thread(target=kill_soon, daemon=True).start()
    with pytest.raises(EngineError) as info:
        build_image(slow, BuildOptions(index_url=index_url, timeout=120), engine=engine)
    assert "dockerd" in str(info.value) or "engine" in str(info.value)
    second_engine.start()
    fine = agent_factory("engine-back", requirements="tinyreq==1.0\n")
    result = build_image(fine, BuildOptions(index_url=index_url), engine=Engine(second_engine.sock))
    assert docker.DockerClient(base_url=second_engine.sock).images.get(result.image).id == result.image_id
