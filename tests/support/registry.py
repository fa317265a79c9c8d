"""A real registry on loopback (Debian's docker-registry, no auth), started and stopped by the caller.
With TLS_DIR (tests/support/dind.make_certs: ca.pem, server-cert.pem, server-key.pem) it serves
https on ADDRESS: what a registry off loopback must do for the builder to push to it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.net import wait_http

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: {level}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {address}:{port}
"""
TLS_CONFIG = """\
  tls:
    certificate: {cert}
    key: {key}
"""


class Registry:
    def __init__(self, root: Path, port: int, level: str = "warn", address: str = "127.0.0.1",
                 tls_dir: Path | None = None):
        # (address: a remote engine in a container reaches this host on its docker0 address, not loopback)
        self.root, self.port, self.level, self.address, self.tls_dir = root, port, level, address, tls_dir
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        cfg = self.root / "config.yml"
        text = REGISTRY_CONFIG.format(root=self.root / "data", address=self.address, port=self.port, level=self.level)
        if self.tls_dir:
            text += TLS_CONFIG.format(cert=self.tls_dir / "server-cert.pem", key=self.tls_dir / "server-key.pem")
        cfg.write_text(text)
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "registry.log", "ab"))
        if self.tls_dir:
            import ssl
            wait_http(f"https://{self.host}/v2/", context=ssl.create_default_context(cafile=self.tls_dir / "ca.pem"))
        else:
            wait_http(f"http://{self.host}/v2/")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
