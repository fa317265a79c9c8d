"""Issue 29: builds where the engine is not on this host (GitLab's docker:dind, a remote DOCKER_HOST).

A real dockerd in a container (tests/support/dind.py) reached over tcp://,
plain and with TLS. Against it: the hostile-package probe (listeners on the
builder's host and on the dind container's own addresses and loopback, a
canary file on each side: none reached), `agent-image doctor`, a build and
--push to a registry the remote engine reaches, a `run` answering /health,
and nothing of the sandbox's left in the engine after each.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from builder.core.defaults import base_image_for
from builder.core.labels import CONTENT_LABEL, SANDBOX_LABEL
from tests.support.cli import AGENT_IMAGE
from tests.support.dind import DindNetwork, RemoteEngine, make_certs
from tests.support.hostile import assert_confined, hostile_agent, hostile_index, requests_to_try
from tests.support.hosts import Counting
from tests.support.net import free_port
from tests.support.registry import Registry

SYSTEM_CAS = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
# counts what it accepts, inside the dind container (the remote engine's host): one line per accept
INNER_LISTENER = textwrap.dedent("""
    import socket, sys, threading
    lis = socket.socket()
    lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lis.bind(("0.0.0.0", int(sys.argv[1])))
    lis.listen(64)
    while True:
        conn, _ = lis.accept()
        with open("/tmp/accepts", "a") as fh:
            fh.write("accepted\\n")
        conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\nlistener-answered\\n")
        conn.close()
""")


@pytest.fixture(scope="module")
def dind_net(docker_client):
    """The dind engines' own bridge network (tests/support/dind.py says why not docker0)."""
    with DindNetwork() as net:
        yield net


@pytest.fixture(scope="module")
def remote_registry(tmp_path_factory, dind_net):
    """A registry on this host's address on the dind network only (not 0.0.0.0), where the dind
    engine reaches it; https with a test CA, as a registry off loopback must be for the builder."""
    root = tmp_path_factory.mktemp("registry")
    address = dind_net.gateway
    reg = Registry(root, free_port(), address=address, tls_dir=make_certs(root / "tls", address))
    reg.start()
    # the builder (urllib3, default context) trusts the system's CAs and this one
    bundle = root / "ca-bundle.pem"
    bundle.write_bytes(Path(SYSTEM_CAS).read_bytes() + (reg.tls_dir / "ca.pem").read_bytes())
    reg.ca_bundle = bundle
    yield reg
    reg.stop()


def _engine(net: DindNetwork, tls: bool, registry: Registry):
    eng = RemoteEngine.start(net, tls=tls)
    try:
        eng.trust_registry(registry.host, (registry.tls_dir / "ca.pem").read_bytes())
        eng.load(base_image_for("3.11"))
    except BaseException:
        eng.stop()
        raise
    return eng


@pytest.fixture(scope="module")
def dind(dind_net, remote_registry):
    """tcp://<the dind container's address>:2375, no TLS."""
    eng = _engine(dind_net, False, remote_registry)
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def dind_tls(dind_net, remote_registry):
    """tcp://<the dind container's address>:2376 with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH."""
    eng = _engine(dind_net, True, remote_registry)
    yield eng
    eng.stop()


def env_for(eng: RemoteEngine, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
    env.update({k: v for k, v in eng.env.items() if v})
    env.update(extra)
    return env


def leftovers(eng: RemoteEngine, timeout: float = 20.0) -> list[str]:
    """Every container and volume in the dind engine (only these tests use it), once the
    sandboxes had time to go (the engine auto-removes them)."""
    client = eng.client()
    deadline = time.monotonic() + timeout
    while True:
        found = [f"{c['Names'][0]} {c['Labels'].get(SANDBOX_LABEL + '.pid', '')}"
                 for c in client.api.containers(all=True)]
        found += [v["Name"] for v in client.api.volumes().get("Volumes") or []]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def sandboxes(eng: RemoteEngine, pid: int) -> list[str]:
    return [c["Id"] for c in eng.client().api.containers(all=True, filters={"label": f"{SANDBOX_LABEL}.pid={pid}"})]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "builder-killed"])
def test_a_remote_sandbox_goes_when_its_builder_stops_mid_build(dind, index_url, agent_factory, tmp_path, how):
    """Ctrl-C cleans up; a builder killed outright (nothing of it runs any more) leaves nothing
    either: the attach connection closes, the forwarder sees EOF and the engine removes the sandbox."""
    agent = agent_factory(f"ai29-slow-{how.name.lower()}", requirements="slowpkg==1.0\n")
    proc = subprocess.Popen([AGENT_IMAGE, "build", str(agent), "--json", "--no-cache", "--index-url", index_url,
                             "--repository", "ai29-remote/slow", "--cache-dir", str(tmp_path / "c")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for(dind))
    try:
        deadline = time.monotonic() + 120
        while not sandboxes(dind, proc.pid):  # the build is under way: its sandbox runs
            assert proc.poll() is None and time.monotonic() < deadline, "the build never started a sandbox"
            time.sleep(0.2)
        time.sleep(3)  # into the slow RUN step
        proc.send_signal(how)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert leftovers(dind, timeout=30) == []


def test_hostile_build_on_a_remote_engine_reaches_only_the_proxy(dind, tmp_path, wheelhouse, link_local,
                                                                 agent_factory):
    canary_file, canary_inner = f"CANARY-FILE-{secrets.token_hex(8)}", f"CANARY-DIND-{secrets.token_hex(8)}"
    canary_env = f"CANARY-ENV-{secrets.token_hex(8)}"
    canary_path = tmp_path / "canary" / "secret.txt"
    canary_path.parent.mkdir()
    canary_path.write_text(canary_file)
    # the same path on the engine's side, another secret: a build must read neither
    dind.host_exec("sh", "-c", f"mkdir -p {canary_path.parent} && printf %s {canary_inner} > {canary_path}")
    from builder.build.doctor import host_addresses
    outer = [Counting("0.0.0.0"), Counting("127.0.0.1"), Counting(link_local)]
    outer += [Counting(a) for a in host_addresses() if ":" not in a and a != "127.0.0.1"]
    inner_port = free_port()
    dind.host_exec("python3", "-c", INNER_LISTENER, str(inner_port), detach=True)
    inner_targets = [f"{a}:{inner_port}" for a in dind.inner_addresses()]  # its loopback and every address
    assert f"127.0.0.1:{inner_port}" in inner_targets and f"{dind.address}:{inner_port}" in inner_targets
    targets = [f"{a}:{lst.port}" for lst in outer for a in
               ([lst.address] if lst.address != "0.0.0.0" else [x.address for x in outer[1:]])]
    targets += inner_targets
    try:
        targets.append(f"{socket.gethostbyname('pypi.org')}:443")
    except OSError:
        targets.append("151.101.0.223:443")
    cfg = {"env_name": "AGENT_IMAGE_CANARY", "canary_path": str(canary_path), "targets": targets,
           "requests": requests_to_try(str(canary_path), outer[0].port)}
    index = hostile_index(tmp_path, wheelhouse, cfg)
    try:
        agent = hostile_agent(agent_factory, cfg)
        proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "-v", "--no-cache",
                               "--index-url", index.url_for("alice"), "--repository", "ai29-remote/hostile",
                               "--cache-dir", str(tmp_path / "cache")],
                              capture_output=True, text=True, timeout=600,
                              env=env_for(dind, AGENT_IMAGE_CANARY=canary_env))
    finally:
        index.proc.terminate()
        index.proc.wait(5)
        for lst in outer:
            lst.close()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    ref = json.loads(proc.stdout)["image"]

    # no listener on either side saw a connection
    assert {f"{lst.address}:{lst.port}": lst.accepts for lst in outer} == \
        {f"{lst.address}:{lst.port}": 0 for lst in outer}
    assert dind.host_exec("cat", "/tmp/accepts", check=False).stdout == ""
    reports = {where: json.loads(dind.docker("run", "--rm", ref, "cat", f"/hostile-{where}.json").stdout)
               for where in ("agent", "dep")}
    assert_confined(reports, (canary_file, canary_inner))
    saved = subprocess.run(["docker", "save", ref], capture_output=True, env=env_for(dind)).stdout
    assert saved and all(c.encode() not in saved for c in (canary_file, canary_inner, canary_env))
    assert canary_file not in out and canary_env not in out and canary_inner not in out
    assert leftovers(dind) == []
    dind.docker("rmi", "-f", ref, check=False)


def test_doctor_passes_on_a_remote_tls_engine(dind_tls):
    proc = subprocess.run([AGENT_IMAGE, "doctor", "--json", "--target", "169.254.169.254:80"],
                          capture_output=True, text=True, timeout=300, env=env_for(dind_tls))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["network_mode"] == "container"
    reached = [c["target"] for c in report["checks"] if c["reached"]]
    assert reached == ["proxy"], report["checks"]
    assert leftovers(dind_tls) == []


class UnixToTcp:
    """A unix socket on this host that leads to a TCP address: what `ssh -L /tmp/docker.sock:...`
    gives for an engine on another machine (a unix:// DOCKER_HOST whose engine is not here)."""

    def __init__(self, path: Path, address: tuple[str, int]) -> None:
        self.path, self.address = path, address
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.address)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def test_doctor_passes_on_a_unix_socket_that_leads_to_a_remote_engine(dind, tmp_path):
    """DOCKER_HOST=unix:// is no promise that the engine is on this host (ssh -L): nothing is mounted."""
    relay = UnixToTcp(tmp_path / "forwarded-docker.sock", (dind.address, dind.port))
    try:
        env = {**env_for(dind), "DOCKER_HOST": f"unix://{relay.path}"}
        proc = subprocess.run([AGENT_IMAGE, "doctor", "--json", "--target", "169.254.169.254:80"],
                              capture_output=True, text=True, timeout=300, env=env)
    finally:
        relay.close()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert [c["target"] for c in json.loads(proc.stdout)["checks"] if c["reached"]] == ["proxy"]
    assert leftovers(dind) == []


def test_build_push_and_run_on_a_remote_tls_engine(dind_tls, remote_registry, index_url, agent_factory, tmp_path):
    agent = agent_factory("ai29-remote-agent", requirements="tinyreq==1.0\n")
    env = env_for(dind_tls, SSL_CERT_FILE=str(remote_registry.ca_bundle))
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url,
                           "--registry", f"{remote_registry.host}/ai29", "--push", "--cache-dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    built = json.loads(proc.stdout)
    assert built["digest_ref"].startswith(f"{remote_registry.host}/ai29/") and "@sha256:" in built["digest_ref"]
    # the registry holds it (asked from here, not through the engine)
    import ssl
    import urllib.request
    name, tag = built["image"][len(remote_registry.host) + 1:].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=remote_registry.tls_dir / "ca.pem")
    with urllib.request.urlopen(f"https://{remote_registry.host}/v2/{name}/tags/list", timeout=10, context=ctx) as resp:
        assert tag in json.loads(resp.read())["tags"]
    port = free_port()
    run = subprocess.run([AGENT_IMAGE, "run", built["image"], "--json", "--port", str(port), "--wait", "60",
                          "--name", f"ai29-run-{secrets.token_hex(3)}"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    served = json.loads(run.stdout)
    try:
        assert served["url"] == f"http://{dind_tls.address}:{port}"
        with urllib.request.urlopen(served["url"] + "/health", timeout=10) as resp:
            assert resp.status == 200
    finally:
        dind_tls.docker("rm", "-f", "-v", served["container"], check=False)  # -v: its /tmp volume
    assert leftovers(dind_tls) == []


# -- issue 27: two runners (two engines, no lock shared) pushing one version to one registry at once ----------------

def _registry_get(registry: Registry, path: str, accept: str = "") -> tuple[bytes, dict]:
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=registry.tls_dir / "ca.pem")
    req = urllib.request.Request(f"https://{registry.host}/v2/{path}", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
        return resp.read(), dict(resp.headers)


def held_by(registry: Registry, name: str, reference: str) -> tuple[str, str]:
    """(manifest digest, content-digest label) of what the registry holds under NAME:REFERENCE."""
    accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
    data, headers = _registry_get(registry, f"{name}/manifests/{reference}", accept)
    config, _ = _registry_get(registry, f"{name}/blobs/{json.loads(data)['config']['digest']}")
    return headers["Docker-Content-Digest"], json.loads(config)["config"]["Labels"][CONTENT_LABEL]


def two_runners(engines, agents, registry: Registry, prefix: str, index_url: str, tmp_path: Path) -> list[tuple]:
    """One build per (engine, agent) at once, each its own runner: its own engine, cache and lock folder
    (the machine-wide tag lock is per runner, so nothing serialises them but the registry)."""
    procs = []
    for i, (eng, agent) in enumerate(zip(engines, agents)):
        env = env_for(eng, SSL_CERT_FILE=str(registry.ca_bundle), AGENT_IMAGE_LOCK_DIR=str(tmp_path / f"locks{i}"))
        procs.append(subprocess.Popen([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url,
                                       "--registry", f"{registry.host}/{prefix}", "--push",
                                       "--cache-dir", str(tmp_path / f"cache{i}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, json.loads(o), e) for p, (o, e) in zip(procs, outs)]


def test_two_engines_pushing_one_version_to_one_registry_at_once(dind, dind_tls, remote_registry, index_url,
                                                                 agent_factory, tmp_path):
    """Debian's registry has no immutable tags: what decides is each builder's check before its push and its
    read-back after (builder/ship/pushpull.py). The same package twice: both succeed and the tag holds that
    content. Two packages under one version: the tag holds one of them, whole, and the build whose push it
    holds reports it; the other is refused (TagExistsError) unless its read-back came before the winner's push,
    the window docs/security.md names; then it reports its own digest, which the registry still serves."""
    engines = (dind, dind_tls)
    same = agent_factory("ai27b-two-same")
    runs = two_runners(engines, (same, same), remote_registry, "ai27b-two", index_url, tmp_path / "same")
    assert [code for code, _, _ in runs] == [0, 0], [(c, o.get("error"), e[-1500:]) for c, o, e in runs]
    digest, content = held_by(remote_registry, "ai27b-two/ai27b-two-same", "0.1.0")
    refs = [out["digest_ref"] for _, out, _ in runs]
    assert any(r.endswith("@" + digest) for r in refs), (digest, refs)
    for ref in refs:  # each reported digest is served, and is this package
        assert held_by(remote_registry, "ai27b-two/ai27b-two-same", ref.rsplit("@", 1)[1])[1] == content
    kept = sorted(out["tag_kept"] for _, out, _ in runs)
    assert kept in ([False, True], [False, False]), "a keep needs another's push to keep"
    print(f"same content: tag_kept {kept}, digests {sorted(set(r.rsplit('@', 1)[1][:19] for r in refs))}")

    one = agent_factory("ai27b-two-diff")
    other = tmp_path / "other" / "ai27b-two-diff"
    shutil.copytree(one, other)
    (other / "src" / "main.py").write_text((other / "src" / "main.py").read_text() + "\nOTHER = True\n")
    runs = two_runners(engines, (one, other), remote_registry, "ai27b-two", index_url, tmp_path / "diff")
    digest, content = held_by(remote_registry, "ai27b-two/ai27b-two-diff", "0.1.0")
    winners = [out for code, out, _ in runs if code == 0 and out["digest_ref"].endswith("@" + digest)]
    assert len(winners) == 1, [(c, o.get("digest_ref") or o.get("error")) for c, o, _ in runs]
    (loser_code, loser, loser_err), = [r for r in runs if r[1] is not winners[0]]
    if loser_code == 62:
        assert loser["error"]["class"] == "TagExistsError" and digest in loser["error"]["message"], loser
    else:  # read back before the winner's push landed: its own push, reported as such, still served by digest
        assert loser_code == 0, (loser, loser_err[-1500:])
        theirs = loser["digest_ref"].rsplit("@", 1)[1]
        assert theirs != digest and held_by(remote_registry, "ai27b-two/ai27b-two-diff", theirs)[1] != content
    print(f"different content: loser exit {loser_code}")
