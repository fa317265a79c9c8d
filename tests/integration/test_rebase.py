"""Issue 13: `agent-image rebase` swaps the base under agent images in a real registry.

Everything is real: Debian's docker-registry on loopback, bases built and pushed
by `agent-image base --push`, agents built and pushed by `agent-image build`.
The registry is read over its HTTP API here (urllib, not the code under test).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from tests.support.cli import AGENT_IMAGE
from tests.support.net import free_port, wait_http
from tests.support.registry import Registry

PREFIX = "rebase-test"  # every local tag these tests make starts with it (or with the registry host)
ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.oci.image.manifest.v1+json")
PATCH_FILE = "/etc/agent-image-patch"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([AGENT_IMAGE, *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def manifest(host: str, repo: str, ref: str) -> tuple[str, dict]:
    """(digest, manifest) of REPO:REF as the registry holds it."""
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    with urllib.request.urlopen(req) as resp:
        return resp.headers["Docker-Content-Digest"], json.loads(resp.read())


def config(host: str, repo: str, man: dict) -> dict:
    with urllib.request.urlopen(f"http://{host}/v2/{repo}/blobs/{man['config']['digest']}") as resp:
        return json.loads(resp.read())


def stored_files(reg: Registry) -> set[str]:
    """Every file in the registry's storage: nothing pushed means this does not change."""
    root = reg.root / "data"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bases(registry, docker_client):
    """The base pushed as REGISTRY/agent-image.base:py3.11, a patched one (a new file in
    the Python image under it: new base layers, as a Debian update gives), and py3.9."""
    made = []
    old = cli("base", "--registry", registry.host, "--push").stdout.split()[-1]
    made.append(f"{registry.host}/agent-image.base:py3.11")
    docker_client.images.build(fileobj=_dockerfile(f"FROM agent-image/python:3.11\n"
                                                   f"RUN echo CVE-2026-0001 fixed > {PATCH_FILE}\n"),
                               tag=f"{PREFIX}/python-patched:3.11", rm=True)
    new = cli("base", "--from", f"{PREFIX}/python-patched:3.11", "--tag", f"{PREFIX}/base-patched:py3.11",
              "--registry", f"{registry.host}/patched", "--push").stdout.split()[-1]
    made += [f"{PREFIX}/python-patched:3.11", f"{PREFIX}/base-patched:py3.11",
             f"{registry.host}/patched/agent-image.base:py3.11"]
    py39 = cli("base", "--python", "3.9", "--registry", f"{registry.host}/py39", "--push").stdout.split()[-1]
    made.append(f"{registry.host}/py39/agent-image.base:py3.9")
    yield {"old": old, "new": new, "py39": py39}
    for tag in made:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.APIError:
            pass


def _dockerfile(text: str):
    import io
    return io.BytesIO(text.encode())


def build_on(agent: Path, base: str, registry_prefix: str, index_url: str, *extra: str) -> dict:
    out = cli("build", str(agent), "--json", "--index-url", index_url, "--base-image", base,
              "--registry", registry_prefix, "--push", *extra)
    return json.loads(out.stdout)


def test_rebase_keeps_agent_layers_and_serves_on_the_new_base(bases, registry, agent_factory, index_url,
                                                              docker_client, cleanup_images):
    host, prefix = registry.host, f"{registry.host}/rb"
    cleanup_images(prefix)
    agents = [agent_factory(f"rb-agent-{i}", requirements="tinyreq==1.1\n") for i in range(2)]
    built = [build_on(a, bases["old"], prefix, index_url) for a in agents]
    before = {b["agent"]["name"]: manifest(host, f"rb/{b['agent']['name']}", "0.1.0") for b in built}
    old_cfg = config(host, "rb/rb-agent-0", before["rb-agent-0"][1])
    labels = old_cfg["config"]["Labels"]
    # images know their base
    assert labels["org.opencontainers.image.base.name"] == f"{host}/agent-image.base"
    assert labels["org.opencontainers.image.base.digest"] == bases["old"].split("@")[1]
    base_cfg = config(host, "agent-image.base", manifest(host, "agent-image.base", bases["old"].split("@")[1])[1])
    base_layers = base_cfg["rootfs"]["diff_ids"]
    assert old_cfg["rootfs"]["diff_ids"][:len(base_layers)] == base_layers
    assert labels["io.pixell.agent-image.base.top-layer"] == base_layers[-1]
    assert "python=3.11" in labels["io.pixell.agent-image.abi"] and "uid=10001" in labels["io.pixell.agent-image.abi"]

    refs = [f"{prefix}/rb-agent-{i}:0.1.0" for i in range(2)]
    dry = cli("rebase", *refs, "--base", bases["new"], "--dry-run")
    assert "dry run: nothing pushed" in dry.stdout
    assert all(manifest(host, f"rb/{n}", "0.1.0")[0] == d for n, (d, _) in before.items()), "dry run moved a tag"

    proc = cli("rebase", *refs, "--base", bases["new"], "--json")
    out = json.loads(proc.stdout)
    assert out["ok"] and [r["image"] for r in out["results"]] == refs
    _, new_base_man = manifest(host, "patched/agent-image.base", bases["new"].split("@")[1])
    for result in out["results"]:
        name = result["image"].split("/")[-1].split(":")[0]
        old_digest, old_man = before[name]
        new_digest, new_man = manifest(host, f"rb/{name}", "0.1.0")
        # the tag moved to what the command printed; the input-digest tag did not
        assert result["digest_ref"] == f"{prefix}/{name}@{new_digest}" != result["from"]
        assert result["from"] == f"{prefix}/{name}@{old_digest}"
        inputs = [b for b in built if b["agent"]["name"] == name][0]["input_digest"][:20]
        assert manifest(host, f"rb/{name}", f"in-{inputs}")[0] == old_digest
        # the agent's layers are the same blobs; under them, the new base's
        kept = result["layers_kept"]
        assert kept >= 2 and [x["digest"] for x in new_man["layers"][-kept:]] == \
            [x["digest"] for x in old_man["layers"][-kept:]]
        assert [x["digest"] for x in new_man["layers"][:-kept]] == [x["digest"] for x in new_base_man["layers"]]
        # only the new config and manifest go up, no layer (the config carries the labels, the
        # dependency listing among them: its size is the measure, not a fixed number)
        assert result["bytes_uploaded"] <= new_man["config"]["size"] + len(json.dumps(new_man)) + 2_048, result
    # the runtime side: pull the new digest, run it, /health answers, the fix is there
    ref = out["results"][0]["digest_ref"]
    pulled = cli("pull", ref, "--expect-name", "rb-agent-0", "--expect-version", "0.1.0")
    assert docker_client.containers.run(ref, ["cat", PATCH_FILE], remove=True).decode().strip() == "CVE-2026-0001 fixed"
    rebased = docker_client.images.get(ref)
    assert rebased.id == pulled.stdout.strip()
    assert rebased.attrs["Config"]["User"] == "agent"
    assert any(e.startswith("AGENT_NAME=rb-agent-0") for e in rebased.attrs["Config"]["Env"])
    assert rebased.labels["io.pixell.agent-image.base.top-layer"] == rebased.attrs["RootFS"]["Layers"][-kept - 1]
    port = free_port()
    run = cli("run", ref, "--port", str(port), "--name", f"{PREFIX}-health")
    try:
        with urllib.request.urlopen(run.stdout.strip() + "/health", timeout=5) as resp:
            assert json.loads(resp.read())["agent"] == "rb-agent-0"
        with urllib.request.urlopen(urllib.request.Request(
                run.stdout.strip() + "/invoke", data=b'{"imports": ["tinyreq"]}', method="POST",
                headers={"Content-Type": "application/json"}), timeout=5) as resp:
            assert json.loads(resp.read())["modules"] == {"tinyreq": "1.1"}
    finally:
        docker_client.containers.get(f"{PREFIX}-health").remove(force=True, v=True)
    # once more onto the same base: nothing to do, nothing pushed
    again = json.loads(cli("rebase", refs[0], "--base", bases["new"], "--json").stdout)["results"][0]
    assert again["unchanged"] and again["bytes_uploaded"] == 0 and again["digest_ref"] == ref


def test_each_refusal_names_the_field_and_pushes_nothing(bases, registry, agent_factory, index_url, docker_client,
                                                         engine, cleanup_images):
    host, prefix = registry.host, f"{registry.host}/refuse"
    cleanup_images(prefix)
    good = build_on(agent_factory("ok-agent", requirements=None), bases["old"], prefix, index_url)
    ours = f"{prefix}/ok-agent:0.1.0"
    # an image not built by agent-image (the base itself, in an app's repository)
    foreign = f"{prefix}/foreign:1"
    docker_client.images.get(bases["old"]).tag(foreign)
    engine.push(foreign)
    # one built by an older agent-image: its base is unknown
    unknown = f"{prefix}/old-agent:1"
    docker_client.images.build(fileobj=_dockerfile(
        f"FROM {bases['old']}\nLABEL io.pixell.agent.name=old-agent io.pixell.agent-image.builder=0.0.1\n"),
        tag=unknown, rm=True)
    engine.push(unknown)
    # a base without the ABI label: the plain Python image
    noabi = f"{prefix}/python:3.11"
    docker_client.images.get("agent-image/python:3.11").tag(noabi)
    engine.push(noabi)

    cases = [  # (refs, base, field, words the message must hold)
        ([ours], bases["py39"], "io.pixell.agent-image.abi:distro,python",
         ["python is '3.11' in the image, '3.9' in the new base", "'debian:12'", "'debian:11'"]),
        ([foreign], bases["new"], "io.pixell.agent-image.builder", ["not built by agent-image"]),
        ([unknown], bases["new"], "io.pixell.agent-image.base.top-layer", ["base is unknown"]),
        ([ours], noabi, "io.pixell.agent-image.abi", ["has no io.pixell.agent-image.abi", "python=3.11"]),
    ]
    for refs, base, field, words in cases:
        stored = stored_files(registry)
        proc = cli("rebase", *refs, "--base", base, "--json", check=False)
        out = json.loads(proc.stdout)
        assert proc.returncode == 63, (field, proc.stdout, proc.stderr[-1000:])
        err = out["error"]
        assert err["class"] == "RebaseError" and err["field"] == field
        assert all(w in err["message"] for w in words), err["message"]
        assert stored_files(registry) == stored, f"{field}: a refusal wrote to the registry"
    assert manifest(host, "refuse/ok-agent", "0.1.0")[0] == good["digest_ref"].split("@")[1]

    # several refs: each on its own; the exit code is the first failure's
    proc = cli("rebase", foreign, ours, "--base", bases["new"], "--json", check=False)
    out = json.loads(proc.stdout)
    assert proc.returncode == 63 and not out["ok"]
    first, second = out["results"]
    assert not first["ok"] and first["error"]["exit_code"] == 63
    assert second["ok"] and manifest(host, "refuse/ok-agent", "0.1.0")[0] == second["digest_ref"].split("@")[1]


class _Cutter(BaseHTTPRequestHandler):
    """A loopback forwarder to the registry that stops the registry when the manifest
    PUT (the write that moves the tag) arrives: a registry that goes away halfway."""
    registry: Registry
    seen: list

    def _forward(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        if self.command == "PUT" and "/manifests/" in self.path:
            self.registry.stop()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.registry.port, timeout=10)
            conn.request(self.command, self.path, body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.close_connection = True  # no answer at all, as from a registry that died
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v.replace(f"127.0.0.1:{self.registry.port}", self.headers["Host"]))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

    def log_message(self, *args) -> None:
        pass


def test_a_registry_stopped_halfway_leaves_the_old_tag(bases, registry, agent_factory, index_url, tmp_path,
                                                       docker_client, engine, cleanup_images):
    own = Registry(tmp_path, free_port())
    own.start()
    cleanup_images(f"{own.host}/")
    try:
        base = f"{own.host}/agent-image.base:py3.11"
        docker_client.images.get(bases["new"]).tag(base)
        new_base = f"{own.host}/agent-image.base@{engine.push(base)}"
        built = build_on(agent_factory("halfway", requirements=None), bases["old"], f"{own.host}/hw", index_url)
        old_digest = built["digest_ref"].split("@")[1]
        handler = type("Cutter", (_Cutter,), {"registry": own, "seen": []})
        server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        via = f"127.0.0.1:{server.server_address[1]}"
        try:
            proc = cli("rebase", f"{via}/hw/halfway:0.1.0", "--base", new_base.replace(own.host, via), "--json",
                       check=False)
        finally:
            server.shutdown()
        out = json.loads(proc.stdout)
        assert proc.returncode == 60 and out["error"]["class"] == "RegistryError", proc.stdout
        assert any(s.startswith("PUT /v2/hw/halfway/blobs/uploads/") for s in handler.seen), "the config went up first"
        own.start()  # the same storage, back up: the tag still holds the old image
        wait_http(f"http://{own.host}/v2/")
        assert manifest(own.host, "hw/halfway", "0.1.0")[0] == old_digest
    finally:
        own.stop()


def test_basic_auth_from_options_and_from_the_docker_config(bases, agent_factory, index_url, tmp_path, docker_client,
                                                            engine, cleanup_images):
    """A registry that wants credentials (htpasswd, Basic): from --registry-username +
    AGENT_IMAGE_REGISTRY_PASSWORD, or from the Docker config; never printed."""
    import base64

    from passlib.hash import bcrypt
    password = "pw-Zebra-7781-not-for-logs"
    (tmp_path / "htpasswd").write_text(f"ci:{bcrypt.using(rounds=4).hash(password)}\n")
    own = Registry(tmp_path, free_port())
    own.start()
    (tmp_path / "config.yml").write_text((tmp_path / "config.yml").read_text() + (
        f"auth:\n  htpasswd:\n    realm: test\n    path: {tmp_path / 'htpasswd'}\n"))
    own.stop()
    exe = subprocess.run(["sh", "-c", "command -v docker-registry || echo /usr/bin/docker-registry"],
                         capture_output=True, text=True).stdout.strip()
    own.proc = subprocess.Popen([exe, "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    cleanup_images(f"{own.host}/")
    auth = {"username": "ci", "password": password}
    try:
        wait_http(f"http://{own.host}/v2/")
        refs = {}
        for key, repo in (("old", "agent-image.base"), ("new", "patched/agent-image.base")):
            docker_client.images.get(bases[key]).tag(f"{own.host}/{repo}:py3.11")
            refs[key] = f"{own.host}/{repo}@{engine.push(f'{own.host}/{repo}:py3.11', auth=auth)}"
        env = {**os.environ, "AGENT_IMAGE_REGISTRY_PASSWORD": password}
        agent = agent_factory("authed", requirements=None)
        proc = subprocess.run([AGENT_IMAGE, "build", str(agent), "--json", "--index-url", index_url, "--base-image",
                               bases["old"], "--registry", f"{own.host}/auth", "--push", "--registry-username", "ci"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ref = f"{own.host}/auth/authed:0.1.0"

        anon = subprocess.run([AGENT_IMAGE, "rebase", ref, "--base", refs["new"], "--json"], capture_output=True,
                              text=True, env={**os.environ, "DOCKER_CONFIG": str(tmp_path / "none")})
        assert anon.returncode == 60 and "HTTP 401" in json.loads(anon.stdout)["error"]["message"]

        with_opts = subprocess.run([AGENT_IMAGE, "rebase", ref, "--base", refs["new"], "--json",
                                    "--registry-username", "ci"], capture_output=True, text=True, env=env)
        assert with_opts.returncode == 0, with_opts.stdout + with_opts.stderr[-2000:]
        (tmp_path / "dockercfg").mkdir()
        (tmp_path / "dockercfg" / "config.json").write_text(json.dumps(
            {"auths": {own.host: {"auth": base64.b64encode(f"ci:{password}".encode()).decode()}}}))
        from_config = subprocess.run([AGENT_IMAGE, "rebase", ref, "--base", refs["old"], "--json", "-v"],
                                     capture_output=True, text=True,
                                     env={**os.environ, "DOCKER_CONFIG": str(tmp_path / "dockercfg")})
        assert from_config.returncode == 0, from_config.stdout + from_config.stderr[-2000:]
        assert json.loads(from_config.stdout)["results"][0]["layers_kept"] >= 2
        for p in (proc, anon, with_opts, from_config):
            assert password not in p.stdout + p.stderr
            assert base64.b64encode(f"ci:{password}".encode()).decode() not in p.stdout + p.stderr
    finally:
        own.stop()


def test_a_base_in_another_registry_is_copied(bases, registry, agent_factory, index_url, tmp_path, docker_client,
                                              cleanup_images):
    """No mount across registries: the new base's blobs travel, streamed, then the rebase is as usual."""
    own = Registry(tmp_path, free_port())
    own.start()
    cleanup_images(f"{own.host}/")
    try:
        build_on(agent_factory("elsewhere", requirements=None), bases["old"], f"{own.host}/x", index_url)
        _, base_man = manifest(registry.host, "patched/agent-image.base", bases["new"].split("@")[1])
        missing = sum(x["size"] for x in base_man["layers"] if not _has_blob(own.host, "x/elsewhere", x["digest"]))
        assert missing > 0, "the patched base has layers the other registry lacks"
        proc = cli("rebase", f"{own.host}/x/elsewhere:0.1.0", "--base", bases["new"], "--json")
        result = json.loads(proc.stdout)["results"][0]
        assert missing <= result["bytes_uploaded"] < missing + 20_000, result  # what it lacked went up, no more
        assert all(_has_blob(own.host, "x/elsewhere", x["digest"]) for x in base_man["layers"])
        ref = result["digest_ref"]
        cli("pull", ref, "--expect-name", "elsewhere")
        assert docker_client.containers.run(ref, ["cat", PATCH_FILE], remove=True).decode().strip() == \
            "CVE-2026-0001 fixed"
    finally:
        own.stop()


def _has_blob(host: str, repo: str, digest: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://{host}/v2/{repo}/blobs/{digest}", method="HEAD")):
            return True
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
        return False


def test_build_pulls_a_base_the_engine_lacks(bases, registry, agent_factory, index_url, docker_client,
                                             cleanup_images):
    """An empty runner: `build --base-image REGISTRY/...@digest` pulls it, and the image records it."""
    cleanup_images(f"{registry.host}/pulls")
    name, digest = bases["new"].split("@")
    for ref in (bases["new"], f"{name}:py3.11", f"{PREFIX}/base-patched:py3.11"):
        try:
            docker_client.images.remove(ref)  # our references only: the image may have other tags
        except docker.errors.APIError:
            pass
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(bases["new"])
    proc = subprocess.run([AGENT_IMAGE, "build", str(agent_factory("pulls-base", requirements=None)), "--json",
                           "--index-url", index_url, "--base-image", bases["new"],
                           "--registry", f"{registry.host}/pulls"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Pulled the base image" in proc.stderr
    labels = docker_client.images.get(json.loads(proc.stdout)["image_id"]).labels
    assert labels["org.opencontainers.image.base.name"] == name
    assert labels["org.opencontainers.image.base.digest"] == digest


class _TokenService(BaseHTTPRequestHandler):
    """A real token service for docker-registry's `auth: token` (JWT, RS256, signed with
    openssl): grants the requested scopes to the right Basic credentials, nothing to others."""
    key: Path
    cert_der: bytes
    credentials: str
    asked: list

    def do_GET(self) -> None:
        import base64
        import time
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(self.path).query)
        self.asked.append(query.get("scope", []))
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(self.credentials.encode()).decode():
            self.send_response(401)
            self.end_headers()
            return
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "test-issuer", "sub": "ci", "aud": query["service"][0], "exp": now + 300, "nbf": now - 10,
                  "iat": now - 10, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                             capture_output=True, check=True).stdout
        body = json.dumps({"token": f"{signing}.{b64(sig)}", "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_bearer_token_flow(bases, agent_factory, index_url, tmp_path, docker_client, engine, cleanup_images):
    """A registry behind a token service (the Docker Hub / ECR-style challenge): the
    client takes a token for exactly the scopes it needs, with the caller's credentials."""
    password = "tok-Quokka-5531-not-for-logs"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem"), "-days", "1", "-subj", "/CN=token-issuer"],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    handler = type("Tokens", (_TokenService,), {"key": tmp_path / "key.pem", "cert_der": der,
                                                "credentials": f"ci:{password}", "asked": []})
    tokens = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    own = Registry(tmp_path, free_port())
    own.start()
    own.stop()
    (tmp_path / "config.yml").write_text((tmp_path / "config.yml").read_text() + (
        f"auth:\n  token:\n    realm: http://127.0.0.1:{tokens.server_address[1]}/token\n"
        f"    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {tmp_path / 'cert.pem'}\n"))
    own.proc = subprocess.Popen([shutil_which("docker-registry"), "serve", str(tmp_path / "config.yml")],
                                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "registry.log", "ab"))
    cleanup_images(f"{own.host}/")
    auth = {"username": "ci", "password": password}
    env = {**os.environ, "AGENT_IMAGE_REGISTRY_PASSWORD": password, "DOCKER_CONFIG": str(tmp_path / "none")}
    try:
        wait_http(f"http://{own.host}/v2/")
        docker_client.images.get(bases["new"]).tag(f"{own.host}/agent-image.base:py3.11")
        new_base = f"{own.host}/agent-image.base@{engine.push(f'{own.host}/agent-image.base:py3.11', auth=auth)}"
        proc = subprocess.run([AGENT_IMAGE, "build", str(agent_factory("tokened", requirements=None)), "--json",
                               "--index-url", index_url, "--base-image", bases["old"], "--registry", f"{own.host}/t",
                               "--push", "--registry-username", "ci"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        handler.asked.clear()
        rebased = subprocess.run([AGENT_IMAGE, "rebase", f"{own.host}/t/tokened:0.1.0", "--base", new_base, "--json",
                                  "--registry-username", "ci", "-v"], capture_output=True, text=True, env=env)
        assert rebased.returncode == 0, rebased.stdout + rebased.stderr[-2000:]
        assert ["repository:t/tokened:pull,push", "repository:agent-image.base:pull"] in handler.asked  # the mount
        wrong = subprocess.run([AGENT_IMAGE, "rebase", f"{own.host}/t/tokened:0.1.0", "--base", new_base, "--json",
                                "--registry-username", "ci"], capture_output=True, text=True,
                               env={**env, "AGENT_IMAGE_REGISTRY_PASSWORD": "wrong-password"})
        assert wrong.returncode == 60 and "HTTP 401" in json.loads(wrong.stdout)["error"]["message"]
        for p in (proc, rebased, wrong):
            assert password not in p.stdout + p.stderr and ".eyJ" not in p.stdout + p.stderr  # nor a token
    finally:
        own.stop()
        tokens.shutdown()


def shutil_which(name: str) -> str:
    import shutil
    return shutil.which(name) or f"/usr/bin/{name}"
