"""Issue 10: `agent-image doctor` passes on the sandbox, fails on an open set-up, and sweeps stale sandboxes.

Targets are always given (--target): a listener this test opens on a
link-local alias of this machine (169.254.77.1, never the metadata
address) and pypi.org:443 as the internet.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from builder.build.sandbox import HOST_NETWORK_ENV, host_identity, process_started
from builder.core.defaults import base_image_for
from builder.core.labels import SANDBOX_LABEL as LABEL
from tests.support.cli import AGENT_IMAGE
from tests.support.hosts import Counting


def doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT_IMAGE, "doctor", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_doctor_passes_in_the_sandbox_and_fails_on_the_host_network(link_local):
    trap = Counting(link_local)
    try:
        targets = ["--target", f"{link_local}:{trap.port}", "--target", "pypi.org:443"]
        ok = doctor(*targets, "--json")
        assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
        report = json.loads(ok.stdout)
        assert report["ok"] is True and report["network_mode"] == "container"
        by_target = {c["target"]: c for c in report["checks"]}
        assert by_target["proxy"]["reached"] is True
        assert by_target[f"{link_local}:{trap.port}"]["reached"] is False
        assert [c["target"] for c in report["checks"] if c["reached"]] == ["proxy"]
        assert trap.accepts == 0
        text = doctor(*targets)
        assert text.returncode == 0 and "ok: a build reaches the index proxy and nothing else" in text.stdout

        # the test-only open set-up: the probe builds on the host network
        bad = doctor(*targets, "--json", env={HOST_NETWORK_ENV: "1"})
        assert bad.returncode == 52, bad.stdout + bad.stderr[-2000:]
        report = json.loads(bad.stdout)
        assert report["ok"] is False and report["error"]["class"] == "SandboxError"
        by_target = {c["target"]: c for c in report["checks"]}
        assert by_target[f"{link_local}:{trap.port}"]["reached"] is True
        assert by_target["host listeners (accepts counted on the host)"]["reached"] is True
        assert trap.accepts >= 1
    finally:
        trap.close()


def test_doctor_removes_sandboxes_left_by_a_dead_builder(engine, docker_client):
    """This host's sandbox whose builder is gone, and any host's past its expiry, are removed; a
    running builder's, and another host's before it expires (a shared remote engine), are not."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    mine = {LABEL: "1", f"{LABEL}.pid": str(os.getpid()), f"{LABEL}.started": process_started(os.getpid()),
            f"{LABEL}.host": host_identity(), f"{LABEL}.expires": str(int(time.time() + 3600))}
    dead = {**mine, f"{LABEL}.pid": str(gone.pid), f"{LABEL}.started": "1"}
    other_host = {**dead, f"{LABEL}.host": "ai29-another-builder-0123456789ab"}
    other_expired = {**other_host, f"{LABEL}.expires": str(int(time.time() - 1))}
    sleep = ["python3", "-c", "import time; time.sleep(300)"]
    started = {name: engine.start_attached(base_image_for("3.11"), command=sleep, labels=labels)[0]
               for name, labels in (("stale", dead), ("live", mine), ("other", other_host),
                                    ("other_expired", other_expired))}
    try:
        res = doctor("--target", "pypi.org:443", "--json")
        assert res.returncode == 0, res.stdout + res.stderr[-2000:]
        assert json.loads(res.stdout)["stale_sandboxes_removed"] >= 2
        left = {c["Id"] for c in docker_client.api.containers(all=True, filters={"label": LABEL})}
        assert {name for name, cid in started.items() if cid in left} == {"live", "other"}
    finally:
        for cid in started.values():
            engine.remove_container(cid)
