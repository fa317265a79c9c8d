"""Issue 29: which sandboxes a sweep may remove, on an engine many builder hosts share."""

from __future__ import annotations

import os
import subprocess
import time

from builder.build.sandbox import LIFETIME_S, host_identity, owner_alive, process_started, sandbox_labels
from builder.core.labels import SANDBOX_LABEL as LABEL


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_this_builders_own_sandbox_is_alive_until_it_expires():
    labels = sandbox_labels(now=1000.0)
    assert labels[f"{LABEL}.host"] == host_identity() and labels[f"{LABEL}.pid"] == str(os.getpid())
    assert labels[f"{LABEL}.expires"] == str(int(1000 + LIFETIME_S))
    assert owner_alive(labels, now=1000.0 + LIFETIME_S - 1)
    assert not owner_alive(labels, now=1000.0 + LIFETIME_S + 1)


def test_a_dead_builder_on_this_host_is_gone_at_once():
    labels = {**sandbox_labels(), f"{LABEL}.pid": str(_dead_pid()), f"{LABEL}.started": "1"}
    assert not owner_alive(labels)


def test_another_hosts_sandbox_is_left_alone_until_it_expires():
    """Its pid means nothing here (another machine, or another CI job's pid namespace on this one)."""
    now = time.time()
    labels = {**sandbox_labels(now=now), f"{LABEL}.pid": str(_dead_pid()), f"{LABEL}.started": "1",
              f"{LABEL}.host": "runner-7-0123456789ab"}
    assert owner_alive(labels, now=now + 60)
    assert not owner_alive(labels, now=now + LIFETIME_S + 1)
    # one from before expiry labels (or a builder that set none): never another host's to remove
    old = {k: v for k, v in labels.items() if not k.endswith(".expires")}
    assert owner_alive(old, now=now + 10 * LIFETIME_S)


def test_the_host_identity_is_stable_and_names_the_host():
    assert host_identity() == host_identity()
    assert host_identity().startswith(os.uname().nodename[:40])
    assert process_started(os.getpid()) != ""


def test_a_sandbox_left_on_this_host_by_the_previous_version_is_still_swept():
    """atk29: before issue 29 a sandbox was labelled with the bare hostname and no expiry, and its
    forwarder never exits by itself (it holds the bind-mounted socket for ever). Its builder died
    before the upgrade: the old sweep removed it; the new one takes it for another host's and
    keeps it for ever (no expiry label either)."""
    import socket
    old = {LABEL: "1", f"{LABEL}.pid": str(_dead_pid()), f"{LABEL}.started": "1",
           f"{LABEL}.host": socket.gethostname()}
    assert not owner_alive(old)
