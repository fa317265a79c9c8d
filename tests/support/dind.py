"""A remote engine for tests: dockerd in a container, reached over TCP (plain, or TLS).

That is how GitLab's `services: docker:dind`, CircleCI's remote Docker and a
dind sidecar look to a build job: ``DOCKER_HOST=tcp://ADDRESS:2375`` (or
``:2376`` with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), and no path on the
builder's disk means anything to that engine.

The image is the project's Debian base plus Debian's ``docker.io`` (apt in a
build step: no image comes from Docker Hub here), built once and kept in the
outer engine; ``docker save`` of it is cached on disk (``$AGENT_IMAGE_CACHE``,
default ``~/.cache/agent-image``) so a machine whose engine lost it loads it
back without apt. ``--privileged`` fails on this host (no CAP_SYS_RESOURCE),
so the container gets the flags of REFERENCE.md "Remote engines".

Use: ``with DindNetwork() as net, RemoteEngine.start(net, tls=True) as dind:``
then ``dind.env`` (DOCKER_HOST and friends for a subprocess), ``dind.client()``
(docker-py), ``dind.load(image)`` (outer engine -> dind, by save | load).
Everything it creates is named with ``PREFIX`` and removed on exit.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = os.environ.get("AGENT_IMAGE_DIND_PREFIX", "ai29-")
FROM = "agent-image/python:3.11"   # scripts/setup.sh imports it from debootstrap (bookworm)
DOCKERFILE = f"""\
FROM {FROM}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
      docker.io iptables iproute2 ca-certificates >/dev/null \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
"""
IMAGE = f"{PREFIX}dind:" + hashlib.sha256(DOCKERFILE.encode()).hexdigest()[:12]
# REFERENCE.md "Remote engines": what works here instead of --privileged
RUN_FLAGS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
             "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
             "--security-opt", "systempaths=unconfined", "--device-cgroup-rule", "a *:* rwm",
             "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/var/lib/docker:exec"]
CERTS_IN = "/certs"
CACHE = Path(os.environ.get("AGENT_IMAGE_CACHE", Path.home() / ".cache" / "agent-image"))


# the outer engine, as this process found it: a caller that later points DOCKER_HOST at a dind
# engine must not make the fixture look for (and fail to remove) its container there
OUTER = {k: os.environ.get(k, "") for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}


def _docker(*args: str, check: bool = True, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full = {**os.environ, **OUTER, **(env or {})}
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check,
                          env={k: v for k, v in full.items() if v != "" or k not in OUTER}, **kw)


class DindNetwork:
    """A bridge network of its own for dind engines and what they must reach on this host.

    Not docker0: a second dockerd started elsewhere on the machine with ``--bridge=none`` deletes
    the host's docker0 (it happens on a shared test machine), and a registry bound to its address
    would go with it. ``gateway`` is this host's address on the network: bind listeners there."""

    def __init__(self) -> None:
        self.name = f"{PREFIX}dind-net-{secrets.token_hex(4)}"
        _docker("network", "create", self.name)
        self.gateway = _docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", self.name
                               ).stdout.strip()

    def remove(self) -> None:
        _docker("network", "rm", self.name, check=False)

    def __enter__(self) -> "DindNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def ensure_image() -> str:
    """The dind image in the outer engine: present, loaded from the disk cache, or built (about a minute)."""
    if _docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return IMAGE
    cached = CACHE / f"{IMAGE.replace('/', '_').replace(':', '-')}.tar"
    if cached.is_file():
        _docker("load", "-i", str(cached))
        return IMAGE
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(DOCKERFILE)
        # apt needs deb.debian.org: the host network, for this test fixture's own image only
        proc = subprocess.run(["docker", "build", "--network", "host", "-q", "-t", IMAGE, ctx],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the dind image failed: {proc.stderr[-2000:]}")
    CACHE.mkdir(parents=True, exist_ok=True)
    _docker("save", "-o", f"{cached}.part", IMAGE)
    os.replace(f"{cached}.part", cached)
    return IMAGE


def make_certs(where: Path, server_ip: str) -> Path:
    """A CA, a server certificate for SERVER_IP and a client certificate, in the
    file names DOCKER_CERT_PATH expects (ca.pem, cert.pem, key.pem) plus server-*.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    where.mkdir(parents=True, exist_ok=True)

    def cert(name, key, issuer, issuer_key, *, ca=False, san=None, usage=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(name, obj):
        data = (obj.public_bytes(serialization.Encoding.PEM) if hasattr(obj, "public_bytes") and not hasattr(obj, "private_bytes")
                else obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        (where / name).write_bytes(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent-image test dind CA")])
    ca = cert("agent-image test dind CA", ca_key, ca_name, ca_key, ca=True)
    srv_key, cli_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    srv = cert("dind", srv_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
               san=[x509.IPAddress(ipaddress.ip_address(server_ip)), x509.DNSName("docker")])
    cli = cert("agent-image test client", cli_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    for name, obj in (("ca.pem", ca), ("server-cert.pem", srv), ("server-key.pem", srv_key),
                      ("cert.pem", cli), ("key.pem", cli_key)):
        write(name, obj)
    for p in where.iterdir():
        p.chmod(0o644)  # dockerd in the container runs as root; the tmp dir itself is private
    return where


@dataclass
class RemoteEngine:
    """One running dind container; ``env`` points a docker client (or agent-image) at it."""
    name: str
    address: str
    tls: bool
    cert_dir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return 2376 if self.tls else 2375

    @property
    def url(self) -> str:
        return f"tcp://{self.address}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {"DOCKER_HOST": self.url, "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": ""}
        if self.tls:
            env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(self.cert_dir))
        return env

    def client(self):
        """docker-py for this engine (not trusting the environment: requests would let
        REQUESTS_CA_BUNDLE replace DOCKER_CERT_PATH's CA)."""
        import docker
        client = docker.DockerClient(**docker.utils.kwargs_from_env(environment=self.env), version="1.41")
        client.api.trust_env = False
        return client

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """The docker CLI against this engine."""
        return _docker(*args, check=check, env=self.env, **kw)

    def host_exec(self, *command: str, detach: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        """Run COMMAND in the dind container itself (the remote engine's host), through the outer engine."""
        return _docker("exec", *(["-d"] if detach else []), self.name, *command, check=check)

    def trust_registry(self, host: str, ca_pem: bytes) -> None:
        """Make the engine trust CA_PEM for the registry HOST[:PORT] (/etc/docker/certs.d, read at each push)."""
        folder = f"/etc/docker/certs.d/{host}"
        self.host_exec("sh", "-c", f"mkdir -p '{folder}' && cat > '{folder}/ca.crt' <<'EOF'\n{ca_pem.decode()}EOF\n")

    def load(self, *images: str) -> None:
        """Copy IMAGES from the outer engine: docker save | docker load (no registry involved)."""
        outer = {k: v for k, v in {**os.environ, **OUTER}.items() if v != "" or k not in OUTER}
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE, env=outer)
        load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, capture_output=True, text=True,
                              env={k: v for k, v in {**os.environ, **self.env}.items() if v != "" or k not in OUTER})
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {images} into {self.name} failed: {load.stderr[-500:]}")

    def inner_addresses(self) -> list[str]:
        """The dind container's own IPv4 addresses, loopback first (what its engine's host is)."""
        out = self.host_exec("ip", "-4", "-o", "addr", "show").stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]

    @classmethod
    def start(cls, network: DindNetwork, *, tls: bool = False, insecure_registries: list[str] = (),
              timeout: float = 60.0) -> "RemoteEngine":
        image = ensure_image()
        name = f"{PREFIX}dind-{secrets.token_hex(4)}"
        tmp = tempfile.TemporaryDirectory(prefix=f"{PREFIX}dind-")
        daemon = ["dockerd", "--cgroup-parent", "/dind", "--host", "unix:///var/run/docker.sock"]
        daemon += [f"--insecure-registry={r}" for r in insecure_registries]
        if tls:
            daemon += ["--tlsverify", f"--tlscacert={CERTS_IN}/ca.pem", f"--tlscert={CERTS_IN}/server-cert.pem",
                       f"--tlskey={CERTS_IN}/server-key.pem", "--host", "tcp://0.0.0.0:2376"]
        else:
            daemon += ["--host", "tcp://0.0.0.0:2375"]
        # the server certificate names the container's address, known only once it runs:
        # dockerd waits for the certificates the test writes after reading that address
        wait = f"while [ ! -s {CERTS_IN}/server-key.pem ]; do sleep 0.1; done; " if tls else ""
        eng = cls(name=name, address="", tls=tls, _tmp=tmp)
        try:
            _docker("run", "-d", "--name", name, "--network", network.name, *RUN_FLAGS, "-v", f"{tmp.name}:{CERTS_IN}:ro", "--entrypoint", "sh",
                    image, "-c", wait + 'exec "$@"', "dind", *daemon)
            eng.address = _docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network.name}\").IPAddress}}}}",
                                  name).stdout.strip()
            if tls:
                eng.cert_dir = make_certs(Path(tmp.name) / "new", eng.address)
                for p in sorted(eng.cert_dir.iterdir(), key=lambda p: p.name == "server-key.pem"):
                    os.replace(p, Path(tmp.name) / p.name)  # the key last: it is what dockerd waits for
                eng.cert_dir.rmdir()
                eng.cert_dir = Path(tmp.name)
            eng._wait(timeout)
        except BaseException:
            eng.stop()
            raise
        return eng

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0:
                return
            if _docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip() != "true":
                break
            time.sleep(0.3)
        logs = _docker("logs", "--tail", "30", self.name, check=False)
        raise RuntimeError(f"the dind engine {self.name} did not come up: {(logs.stdout + logs.stderr)[-2000:]}")

    def stop(self) -> None:
        _docker("rm", "-f", "-v", self.name, check=False)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
