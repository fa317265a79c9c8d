"""Issue 27: `agent-image prune` and the budget after each build, against the real engine.

Every image here is built under this test's own prefix (ai27-prune-<uid>/...), and
every prune runs with --scope that prefix: other images on the shared engine are
never candidates, and the tests check the base is never one either.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from builder.api import BuildOptions, build_image
from builder.build.usage import LEASE_DIR, Lease
from builder.core.defaults import base_image_for
from builder.core.labels import SANDBOX_LABEL
from tests.support.cli import AGENT_IMAGE, run_cli
from tests.support.engine import engine_tags

# lines no other test has: this file's dependency image is its own
REQS = 'tinyreq==1.0 ; platform_release != "ai27-prune"\n'


@pytest.fixture
def prefix(cleanup_images):
    p = f"ai27-prune-{uuid.uuid4().hex[:8]}"
    cleanup_images(p + "/")
    return p


def build(agent, index_url, prefix, cache, **kw):
    return build_image(agent, BuildOptions(index_url=index_url, registry=prefix, cache_dir=cache, **kw))


def prune_json(prefix, cache, *args) -> dict:
    proc = run_cli("prune", "--scope", f"{prefix}/", "--cache-dir", cache, "--json", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def our_tags(docker_client, prefix) -> set[str]:
    return {t for t in engine_tags(docker_client) if t.startswith(prefix + "/")}


def test_dry_run_lists_and_a_budget_removes_least_recently_used_first(agent_factory, index_url, prefix, tmp_path,
                                                                        docker_client):
    cache = tmp_path / "cache"
    old = build(agent_factory("ai27-old", requirements=REQS), index_url, prefix, cache)
    new = build(agent_factory("ai27-new", requirements=REQS), index_url, prefix, cache)
    base_id = docker_client.images.get(base_image_for("3.11")).id
    before = our_tags(docker_client, prefix)
    assert f"{prefix}/ai27-old:0.1.0" in before and any("agent-image.deps:deps-" in t for t in before)

    listed = prune_json(prefix, cache, "--dry-run")
    assert listed["dry_run"] and our_tags(docker_client, prefix) == before, "a dry run removes nothing"
    kinds = [(i["kind"], i["id"]) for i in listed["removed"] if i["kind"].endswith("image")]
    assert kinds[:2] == [("agent-image", old.image_id), ("agent-image", new.image_id)], kinds
    assert kinds[2][0] == "deps-image", "the dependency image goes after the agents built on it"
    assert listed["freed_bytes"] == listed["usage_before"] > 0 and listed["usage_after"] == 0
    assert {i["kind"] for i in listed["removed"]} >= {"agent-image", "deps-image", "download"}
    assert all(i["bytes"] >= 0 and i["refs"] or i["kind"] == "download" for i in listed["removed"])

    # a budget just below the total without the downloads (used first, during the first build):
    # they go, then the least recently used agent, nothing else
    downloads = sum(i["bytes"] for i in listed["removed"] if i["kind"] == "download")
    budget = listed["usage_before"] - downloads - 1
    done = prune_json(prefix, cache, "--max-bytes", str(budget))
    assert [i["id"] for i in done["removed"] if i["kind"] != "download"] == [old.image_id]
    assert done["usage_after"] <= budget
    left = our_tags(docker_client, prefix)
    assert f"{prefix}/ai27-old:0.1.0" not in left and f"{prefix}/ai27-new:0.1.0" in left
    assert docker_client.images.get(base_image_for("3.11")).id == base_id, "the base is never pruned"


def test_in_use_and_leased_images_stay_and_the_rest_goes(agent_factory, index_url, prefix, tmp_path, docker_client):
    cache = tmp_path / "cache"
    used = build(agent_factory("ai27-used", requirements=REQS), index_url, prefix, cache)
    leased = build(agent_factory("ai27-leased", requirements=REQS), index_url, prefix, cache)
    free = build(agent_factory("ai27-free"), index_url, prefix, cache)
    container = docker_client.containers.run(used.image_id, ["sleep", "60"], detach=True, entrypoint=[],
                                             name=f"{prefix}-runner", healthcheck={"test": ["NONE"]},
                                             network_mode="none")
    try:
        with Lease(repos=[f"{prefix}/ai27-leased"]):
            out = prune_json(prefix, cache)  # everything in scope that may go
        gone = {i["id"] for i in out["removed"]}
        assert free.image_id in gone and used.image_id not in gone and leased.image_id not in gone
        assert out["kept"]["in-use"] == 1 and out["kept"]["leased"] == 1
        left = our_tags(docker_client, prefix)
        assert f"{prefix}/ai27-used:0.1.0" in left and f"{prefix}/ai27-leased:0.1.0" in left
        assert f"{prefix}/ai27-free:0.1.0" not in left
        # the dependency image both stand on stays: it goes with the last image built on it
        assert any("agent-image.deps:deps-" in t for t in left)
    finally:
        container.remove(force=True)
    out = prune_json(prefix, cache)
    assert our_tags(docker_client, prefix) == set(), out
    assert docker_client.images.get(base_image_for("3.11")), "the base is never pruned"


def test_keep_and_older_than(agent_factory, index_url, prefix, tmp_path, docker_client):
    cache = tmp_path / "cache"
    agent = agent_factory("ai27-kept")
    first = build(agent, index_url, prefix, cache)
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nX = 2\n")
    (agent / "agent.yaml").write_text((agent / "agent.yaml").read_text().replace("0.1.0", "0.2.0"))
    second = build(agent, index_url, prefix, cache)
    assert prune_json(prefix, cache, "--older-than", "1h")["removed"] == [], "both were used just now"
    time.sleep(1.1)
    out = prune_json(prefix, cache, "--keep", "1", "--older-than", "1")
    assert [i["id"] for i in out["removed"] if i["kind"] == "agent-image"] == [first.image_id]
    assert docker_client.images.get(second.image_id) and out["kept"]["keep"] == 1


def test_the_budget_after_each_build_keeps_the_new_image(agent_factory, index_url, prefix, tmp_path, docker_client):
    cache = tmp_path / "cache"
    budget = {"prune_max_bytes": 0, "prune_scope": (f"{prefix}/",)}
    first = build(agent_factory("ai27-b1", requirements=REQS), index_url, prefix, cache, **budget)
    assert docker_client.images.get(first.image_id), "the build's own image is kept, whatever the budget"
    second = build(agent_factory("ai27-b2"), index_url, prefix, cache, **budget)
    left = our_tags(docker_client, prefix)
    assert f"{prefix}/ai27-b1:0.1.0" not in left and f"{prefix}/ai27-b2:0.1.0" in left, left
    assert not any("agent-image.deps" in t for t in left), "the first agent's dependency image went with it"
    assert docker_client.images.get(second.image_id)
    # the CLI: the budget from the environment, a failed build pruned after too
    bad = agent_factory("ai27-bad", requirements="ai27-no-such-package==1.0\n")
    proc = run_cli("build", bad, "--json", "--index-url", index_url, "--registry", prefix, "--cache-dir", cache,
                   env={**os.environ, "AGENT_IMAGE_PRUNE_MAX_BYTES": "0",
                        "AGENT_IMAGE_PRUNE_SCOPE": f"{prefix}/"})
    assert proc.returncode == 21, proc.stdout  # DependencyNotFoundError
    assert '"event": "Pruned"' in proc.stderr or "Pruned" in proc.stderr
    assert our_tags(docker_client, prefix) == set(), "the budget after the failed build removed the rest"


def test_concurrent_cli_builds_with_a_budget_all_succeed_and_leave_nothing(agent_factory, index_url, prefix,
                                                                          tmp_path, docker_client):
    """Four processes at once (two of one agent), each pruning to 0 bytes after its build: no build
    loses what it uses to another's prune (its lease), and no lease or sandbox is left."""
    cache = tmp_path / "cache"
    agents = [agent_factory(f"ai27-par{i}", requirements=f'tinyreq==1.{i % 2} ; platform_release != "ai27-par"\n')
              for i in range(3)]
    procs = [subprocess.Popen([AGENT_IMAGE, "build", str(a), "--json", "--index-url",
                               index_url, "--registry", prefix, "--cache-dir", str(cache), "--prune-max-bytes", "0",
                               "--prune-scope", f"{prefix}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for a in agents + [agents[0]]]
    outs = [p.communicate(timeout=600) for p in procs]
    results = [json.loads(o[0]) for o in outs]
    assert [r["ok"] for r in results] == [True] * 4, [o[1][-1500:] for o in outs]
    pids = {str(p.pid) for p in procs}
    assert not [p for p in LEASE_DIR.glob("*.json") if p.name.split("-")[0] in pids], "a lease was left"
    sandboxes = docker_client.api.containers(all=True, filters={"label": "io.pixell.agent-image.sandbox"})
    assert not [c for c in sandboxes if c["Labels"].get("io.pixell.agent-image.sandbox.pid") in pids]
    folders = [p for p in Path(tempfile.gettempdir()).glob("agent-image-sbx-*") if p.name.split("-")[3] in pids]
    assert not folders, "a sandbox's socket folder was left"
    assert not list((cache / "downloads" / "v2" / "tmp").iterdir()), "a partial download was left"


def test_concurrent_api_builds_in_threads_with_a_budget(agent_factory, index_url, prefix, tmp_path, docker_client):
    """The same through the Python API: four threads, one Engine, two of one agent, each pruning after."""
    import concurrent.futures as cf

    from builder.build.engine import Engine
    cache = tmp_path / "cache"
    agents = [agent_factory(f"ai27-thr{i}", requirements=f'tinyreq==1.{i % 2} ; platform_release != "ai27-thr"\n')
              for i in range(3)]
    engine = Engine()
    opts = BuildOptions(index_url=index_url, registry=prefix, cache_dir=cache, use_cache=False,
                        prune_max_bytes=0, prune_scope=(f"{prefix}/",))
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda a: build_image(a, opts, engine=engine), agents + [agents[0]]))
    assert all(r.ok for r in results)
    assert not [p for p in LEASE_DIR.glob(f"{os.getpid()}-*.json")], "a lease was left"
    # the last prune ran after every build ended: at most the images the last builds kept are left
    assert len([t for t in our_tags(docker_client, prefix) if ":0.1.0" in t]) <= 3


def test_a_cancelled_build_applies_the_budget_too(agent_factory, index_url, prefix, tmp_path, docker_client):
    """A build in progress leases what it uses, so other builds' prunes leave it; once it is cancelled its
    lease goes and, on an idle runner, no other prune follows: its own prune is what brings the scope
    back within the budget (before the fix a cancelled build skipped it and the excess stayed)."""
    cache = tmp_path / "cache"
    build(agent_factory("ai27b-idle", requirements=REQS), index_url, prefix, cache)  # no budget: it stays
    assert our_tags(docker_client, prefix)
    agent = agent_factory("ai27b-cancelled", requirements="slowpkg==1.0\n")
    proc = subprocess.Popen([AGENT_IMAGE, "build", str(agent), "--json", "--no-cache", "--index-url", index_url,
                             "--registry", prefix, "--cache-dir", str(cache), "--prune-max-bytes", "0",
                             "--prune-scope", f"{prefix}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not docker_client.api.containers(all=True, filters={"label": f"{SANDBOX_LABEL}.pid={proc.pid}"}):
            assert proc.poll() is None and time.monotonic() < deadline, "the build never started a sandbox"
            time.sleep(0.2)
        time.sleep(2)  # into the slow RUN step
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 or json.loads(out)["error"]["class"] == "BuildInterruptedError", (out, err[-2000:])
    assert our_tags(docker_client, prefix) == set(), "the cancelled build left the scope over its budget of 0"
    assert prune_json(prefix, cache, "--dry-run")["usage_before"] == 0
