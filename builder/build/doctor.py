"""`agent-image doctor`: what can a build step on this engine reach?

It builds a probe image exactly as an agent build runs (same sandbox, same
index proxy) whose one RUN step tries every door: listeners the doctor opens
on each of the host's addresses and on 0.0.0.0 (their accepts are counted on
the host, so a connection cannot hide), the TARGETS (by default the cloud
metadata addresses and the internet), DNS, the index proxy, and the proxy
as an open proxy to another host. It passes only when the proxy is reached
and nothing else is.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.build.proxy.cache import DownloadCache
from builder.build.proxy.server import IndexProxy
from builder.build.proxy.upstream import PUBLIC_INDEX, Upstream
from builder.build.sandbox import Sandbox, remove_stale
from builder.core.errors import SandboxError
from builder.core.labels import DOCTOR_LABEL
from builder.plan.context import build_context

log = structlog.get_logger("agent_image.doctor")

# what an operator checks on a new CI runner: the instance role (EC2, ECS) and the internet
DEFAULT_TARGETS = ("169.254.169.254:80", "169.254.170.2:80", "pypi.org:443")
MARK = "AGENT-IMAGE-PROBE "

PROBE = r"""
import json, os, socket
CFG = json.loads(%r)
def say(**kw):
    print(%r + json.dumps(kw), flush=True)
def tcp(target):
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.close()
        return True, "connected"
    except Exception as exc:
        return False, "%%s: %%s" %% (type(exc).__name__, str(exc)[:80])
def via_proxy(request):
    proxy = os.environ.get("http_proxy", "")
    host, _, port = proxy.split("//", 1)[-1].rstrip("/").rpartition(":")
    try:
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(request.encode())
        status = s.makefile("rb").readline().decode("latin-1").strip()
        s.close()
        return status
    except Exception as exc:
        return "%%s: %%s" %% (type(exc).__name__, str(exc)[:80])
for target in CFG["targets"]:
    ok, detail = tcp(target)
    say(target=target, kind="tcp", reached=ok, detail=detail)
try:
    socket.getaddrinfo("pypi.org", 443)
    say(target="dns", kind="dns", reached=True, detail="pypi.org resolved")
except Exception as exc:
    say(target="dns", kind="dns", reached=False, detail=str(exc)[:80])
status = via_proxy("GET http://agent-image-index.invalid/_sandbox/ready HTTP/1.0\r\n\r\n")
say(target="proxy", kind="proxy", reached=" 200 " in status + " ", detail=status)
status = via_proxy("GET http://pypi.org/simple/ HTTP/1.0\r\nHost: pypi.org\r\n\r\n")
say(target="proxy->pypi.org", kind="open-proxy", reached=status[9:10] in ("2", "3"), detail=status)
status = via_proxy("CONNECT pypi.org:443 HTTP/1.0\r\n\r\n")
say(target="proxy CONNECT", kind="open-proxy", reached=status[9:10] == "2", detail=status)
"""


@dataclass
class Listener:
    """A TCP listener on the builder's host that counts the connections it accepts."""
    address: str
    port: int = 0
    accepts: int = 0
    _sock: socket.socket | None = field(default=None, repr=False)

    def __enter__(self) -> "Listener":
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self._sock = socket.socket(family)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.address, self.port))
        self.port = self._sock.getsockname()[1]
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepts += 1
            conn.close()

    def __exit__(self, *exc) -> None:
        self._sock.close()


def host_addresses() -> list[str]:
    """Every address of this host's interfaces (loopback and link-local v6 aside, which need a scope)."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
    addrs = ["127.0.0.1"]
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 3 and parts[2] in ("inet", "inet6"):
            addr = parts[3].split("/", 1)[0]
            if addr not in addrs and not addr.startswith("fe80") and addr != "::1":
                addrs.append(addr)
    return addrs


def resolved(target: str) -> str:
    """HOST:PORT with a name resolved here, on the builder's host: the probe
    then tests the route to it, not only the sandbox's missing DNS."""
    host, _, port = target.rpartition(":")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, host.strip("[]"))
        return target
    except OSError:
        pass
    try:
        addr = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, ValueError):
        return target  # unresolvable here too: the probe tries the name
    return f"{addr}:{port}"


def probe_context(targets: list[str], base_image: str) -> bytes:
    script = PROBE % (json.dumps({"targets": targets}), MARK)
    files = {"Dockerfile": f"FROM {base_image}\nCOPY probe.py /probe.py\nRUN python3 /probe.py\n".encode(),
             "probe.py": script.encode()}
    return build_context(Path("/nonexistent"), files).data


def run_doctor(engine: Engine, *, base_image: str, targets: list[str] | None = None,
               cache_dir=None, timeout: float = 180.0) -> dict:
    """Build the probe; return {"ok", "checks": [...]} (raises nothing for an open set-up)."""
    stale = remove_stale(engine)
    checks: list[dict] = []
    with Listener("0.0.0.0") as anyaddr:
        listeners = []
        for addr in host_addresses():
            try:
                listeners.append(Listener(addr).__enter__())
            except OSError:  # an address we cannot bind (tentative v6): skip it
                continue
        try:
            probe_targets = [f"{lst.address}:{lst.port}" if ":" not in lst.address
                             else f"[{lst.address}]:{lst.port}" for lst in listeners]
            probe_targets += [f"{a}:{anyaddr.port}" for a in host_addresses() if ":" not in a]
            named = {resolved(t): t for t in (targets if targets else DEFAULT_TARGETS)}
            probe_targets += list(named)
            context = probe_context(probe_targets, base_image)
            with tempfile.TemporaryDirectory() as tmp, Sandbox(engine, base_image) as sandbox, \
                    IndexProxy(Upstream.parse(PUBLIC_INDEX), DownloadCache(cache_dir or tmp),
                               unix_path=sandbox.socket_path) as proxy:
                sandbox.wait(proxy.ready)
                outcome = engine.build(context=context, buildargs={"http_proxy": sandbox.proxy_url(proxy)},
                                       network_mode=sandbox.network_mode, nocache=True, timeout=timeout,
                                       labels={DOCTOR_LABEL: "1"})
                mode = sandbox.network_mode.split(":", 1)[0]
            if outcome.image_id:
                engine.remove_image(outcome.image_id, force=True)
        finally:
            for lst in listeners:
                lst.__exit__()
    for line in outcome.lines:
        if line.startswith(MARK):
            check = json.loads(line[len(MARK):])
            if named.get(check["target"], check["target"]) != check["target"]:  # a name resolved here
                check["target"] = f"{named[check['target']]} ({check['target']})"
            checks.append(check)
    if not checks:
        raise SandboxError("the doctor's probe build produced no result: "
                           f"{outcome.error or (outcome.lines[-1] if outcome.lines else 'no output')}",
                           log_tail=outcome.lines[-20:], hint="Check the engine and the base image.")
    accepts = anyaddr.accepts + sum(lst.accepts for lst in listeners)
    checks.append({"target": "host listeners (accepts counted on the host)", "kind": "listener",
                   "reached": accepts > 0, "detail": f"{accepts} connection(s) accepted"})
    for check in checks:
        check["expected"] = check["kind"] == "proxy"
    ok = all(c["reached"] == c["expected"] for c in checks)
    return {"ok": ok, "network_mode": mode, "stale_sandboxes_removed": stale, "checks": checks}


def render(report: dict) -> str:
    lines = [f"agent-image doctor: what a build step on this engine reaches (network: {report['network_mode']})"]
    for c in report["checks"]:
        verdict = "reached" if c["reached"] else "blocked"
        flag = "ok  " if c["reached"] == c["expected"] else "FAIL"
        lines.append(f"  {flag} {verdict:8} {c['target']:<40} {c['detail']}")
    lines.append("ok: a build reaches the index proxy and nothing else" if report["ok"]
                 else "FAIL: a build reaches more than the index proxy (or not the proxy)")
    return "\n".join(lines) + "\n"
