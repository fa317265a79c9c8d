"""Helpers for tests of the serving shim: a container of an agent image on a
loopback port, its JSON log, raw exchanges on a socket."""

from __future__ import annotations

import http.client
import json
import socket
import time

from tests.support.net import wait_for


class Served:
    def __init__(self, client, image: str, env: dict | None = None, **run):
        """RUN: more of docker-py's run arguments (read_only=True, tmpfs=..., user=... as a task runs it)."""
        self.container = client.containers.run(image, detach=True, environment=env or {},
                                               ports={"8080/tcp": ("127.0.0.1", None)}, **run)
        self.container.reload()
        self.port = int(self.container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        wait_for(f"http://127.0.0.1:{self.port}/health")

    def call(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None,
             timeout: float = 30) -> tuple[int, dict, dict]:
        """(status, lower-cased headers, JSON body)"""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else {}
        finally:
            conn.close()

    def logs(self, until=None, timeout: float = 5) -> list[dict]:
        """The JSON log lines; with UNTIL, wait (bounded) for one it accepts:
        the access line is written once the answer has gone out."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.container.logs(stdout=True, stderr=False).decode().splitlines()
            parsed = [json.loads(ln) for ln in lines if ln.startswith("{")]
            if until is None or any(until(ln) for ln in parsed) or time.monotonic() > deadline:
                return parsed
            time.sleep(0.1)

    def remove(self) -> None:
        self.container.remove(force=True, v=True)


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send DATA on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk
