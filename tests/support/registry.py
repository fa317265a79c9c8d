"""A real registry on loopback (Debian's docker-registry, no auth), started and stopped by the caller."""

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
  addr: 127.0.0.1:{port}
"""


class Registry:
    def __init__(self, root: Path, port: int, level: str = "warn"):
        self.root, self.port, self.level = root, port, level
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cfg = self.root / "config.yml"
        cfg.write_text(REGISTRY_CONFIG.format(root=self.root / "data", port=self.port, level=self.level))
        exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "registry.log", "ab"))
        wait_http(f"http://{self.host}/v2/")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
