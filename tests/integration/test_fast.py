"""Issue 5: rebuilds that are nearly free, and concurrent builds that stay correct.

No wall-clock assertions here (bench/ measures time); these tests assert the
mechanisms: which layers were reused, what was skipped, what was fetched.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import subprocess

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from builder.build.engine import Engine
from tests.support.engine import engine_tags
from tests.support.paths import BIN


def _drop_local(docker_client, repo: str) -> None:
    """Make this engine look like a fresh CI runner for REPO: no tag, no layer cache."""
    for tag in engine_tags(docker_client):
        if tag.startswith(repo + ":"):
            docker_client.images.remove(tag, force=True)


def test_code_only_change_rebuilds_only_code_layers(agent_factory, index_url, docker_client, cleanup_images):
    cleanup_images("agents/layered")
    agent = agent_factory("layered", requirements="requests==2.32.3\nstructlog\n")
    first = build_image(agent, BuildOptions(index_url=index_url))
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nX = 1\n")
    second = build_image(agent, BuildOptions(index_url=index_url))
    assert {"index", "deps", "config", "package"} <= set(second.steps_cached), second.steps_cached
    assert "source" not in second.steps_cached
    assert second.installed == [], "nothing is reinstalled: the editable install already points at /app"
    # and the changed code is what runs, through the editable install (from / , not /app)
    out = docker_client.containers.run(second.image_id, ["python", "-c", "import src.main; print(src.main.X)"],
                                       working_dir="/", remove=True).decode().strip()
    assert out == "1"
    layers1 = docker_client.images.get(first.image_id).attrs["RootFS"]["Layers"]
    layers2 = docker_client.images.get(second.image_id).attrs["RootFS"]["Layers"]
    differing = [b for a, b in zip(layers1, layers2) if a != b]
    assert len(layers1) == len(layers2) and 1 <= len(differing) <= 3, "only the source/package/requirements layers"
    # the changed layers are small: the deps layer (the venv's bulk) is not among them
    sizes = {h["Id"]: h["Size"] for h in docker_client.api.history(second.image_id)}
    assert sum(h["Size"] for h in docker_client.api.history(second.image_id)
               if "COPY app/" in h["CreatedBy"] or "pip install -e" in h["CreatedBy"]) < 1_000_000, sizes


def test_requirements_change_invalidates_deps(agent_factory, index_url, cleanup_images):
    cleanup_images("agents/reqchange")
    # (markers no other test's lines have: their dependency images would answer these lines)
    agent = agent_factory("reqchange", requirements='tinyreq==1.0 ; platform_release != "reqchange"\n')
    build_image(agent, BuildOptions(index_url=index_url))
    (agent / "requirements.txt").write_text('tinyreq==1.1 ; platform_release != "reqchange"\n')
    second = build_image(agent, BuildOptions(index_url=index_url))
    assert "deps" not in second.steps_cached
    assert any(p.startswith("tinyreq-1.1") for p in second.installed)


def test_noop_and_cache_from_on_an_empty_runner(agent_factory, index_url, registry, docker_client, cleanup_images):
    repo = f"{registry.host}/fast/runner-agent"
    cleanup_images(repo)
    agent = agent_factory("runner-agent", requirements="requests==2.32.3\n")
    opts = BuildOptions(index_url=index_url, registry=f"{registry.host}/fast", push=True)
    first = build_image(agent, opts)
    # a fresh runner with identical inputs: the registry has the input digest -> no build at all
    _drop_local(docker_client, repo)
    again = build_image(agent, opts)
    assert again.cached and again.image_id == first.image_id and again.digest_ref == first.digest_ref
    # a fresh runner with a code change: the last pushed image is the layer cache
    _drop_local(docker_client, repo)
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nY = 2\n")
    # (same version, new code: an intended overwrite of the immutable version tag)
    changed = build_image(agent, dataclasses.replace(opts, overwrite=True))
    assert not changed.cached and "deps" in changed.steps_cached, changed.steps_cached
    assert changed.index.get("downloaded") == [], "nothing re-downloaded for a code-only change"


def assert_cache_intact(cache_dir) -> None:
    """The shared download cache holds whole files only, each under its own sha256."""
    blobs = list((cache_dir / "downloads" / "v2" / "sha256").iterdir())
    assert blobs, "the builds downloaded through the cache"
    assert not list((cache_dir / "downloads" / "v2" / "tmp").glob(".part-*")), "no partial downloads left behind"
    for blob in blobs:
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_concurrent_builds(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    """Four different agents and one agent twice, at once, sharing the engine and the download cache."""
    cleanup_images("agents/par-")
    # (lines no other test has: their dependency images would leave nothing to download)
    agents = [agent_factory(f"par-{i}", requirements=f"tinyreq==1.{i % 2}\nrequests==2.32.3 ; platform_release != "
                                                      f"\"par\"\n") for i in range(4)]
    jobs = agents + [agents[0]]
    engine = Engine()
    opts = BuildOptions(index_url=index_url, cache_dir=tmp_path / "shared-cache", use_cache=False)
    with cf.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda a: build_image(a, opts, engine=engine), jobs))
    for i, result in enumerate(results):
        want = f"1.{(i % 4) % 2}"
        out = docker_client.containers.run(result.image_id, ["python", "-c",
                                                             "import tinyreq, requests; print(tinyreq.__version__)"],
                                           remove=True).decode().strip()
        assert out == want, (result.image, out)
    assert docker_client.images.get("agents/par-0:0.1.0").id in {results[0].image_id, results[4].image_id}
    assert_cache_intact(tmp_path / "shared-cache")
    # every build counted its own traffic; together they fetched each file at most once per racing build
    fetched = [f for r in results for f in r.index["downloaded"]]
    assert fetched.count("requests-2.32.3-py3-none-any.whl") <= len(jobs)
    assert json.dumps([r.to_dict() for r in results])


def test_concurrent_builds_from_separate_processes(agent_factory, index_url, docker_client, cleanup_images, tmp_path):
    """CI may run one builder process per upload: three CLIs at once (one agent twice) share one cache."""
    cleanup_images("agents/proc-")
    agents = [agent_factory(f"proc-{i}", requirements=f"tinyreq==1.{i}\nrequests==2.32.3\n") for i in range(2)]
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([str(BIN / "agent-image"), "build", str(a), "--json", "--no-cache",
                               "--index-url", index_url, "--cache-dir", str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for a in agents + [agents[0]]]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert [r["ok"] for r in results] == [True] * 3, results
    for i, result in enumerate(results):
        out = docker_client.containers.run(result["image_id"], ["python", "-c", "import tinyreq; print(tinyreq.__version__)"],
                                           remove=True).decode().strip()
        assert out == f"1.{i % 2}", result["image"]
    assert docker_client.images.get("agents/proc-0:0.1.0").id in {results[0]["image_id"], results[2]["image_id"]}
    assert_cache_intact(cache)


def test_package_that_needs_its_code_to_install_still_installs(agent_factory, index_url, docker_client,
                                                                cleanup_images):
    """setup.py reading its version from a data file cannot install from the packaging files
    alone: the install runs after the code arrives, with the same result."""
    cleanup_images("agents/needs-code")
    setup = ("from setuptools import setup\n"
             "setup(name='needs-code', version=open('src/VERSION').read().strip(), packages=['src'],\n"
             "      install_requires=['tinydep==1.0'])\n")
    agent = agent_factory("needs-code", requirements="requests==2.32.3\n",
                          extra={"setup.py": setup, "src/VERSION": "3.1.4\n"})
    first = build_image(agent, BuildOptions(index_url=index_url))
    assert "needs-code-3.1.4" in first.installed and "tinydep-1.0" in first.installed, first.installed
    out = docker_client.containers.run(first.image_id, ["python", "-c",
                                                        "import importlib.metadata as m, tinydep, requests; "
                                                        "print(m.version('needs-code'))"],
                                       working_dir="/", remove=True).decode().strip()
    assert out == "3.1.4"
    # what the install after the code wrote has its bytecode too (that step compiles only its own files)
    out = docker_client.containers.run(first.image_id, ["python", "-c", "import importlib.util as u, pathlib, tinydep; "
                                                        "print(pathlib.Path(u.cache_from_source(tinydep.__file__))"
                                                        ".exists())"], remove=True).decode().strip()
    assert out == "True"
    # a code change re-runs the installs (they need the code): no attempt without the index first
    (agent / "src" / "VERSION").write_text("3.1.5\n")
    with capture_logs() as logs:
        again = build_image(agent, BuildOptions(index_url=index_url))
    assert not any(e["event"].startswith("Only the code changed") for e in logs), [e["event"] for e in logs]
    assert "needs-code-3.1.5" in again.installed, again.installed


def test_a_code_only_rebuild_runs_without_a_network(agent_factory, index_url, docker_client, cleanup_images):
    """Nothing before the code changed: the build needs no index, so it gets no sandbox,
    no proxy and no network; a packaging change goes through the sandbox again."""
    cleanup_images("agents/offline")
    agent = agent_factory("offline", requirements="tinyreq==1.0\n")
    build_image(agent, BuildOptions(index_url=index_url))
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nZ = 3\n")
    with capture_logs() as logs:
        quick = build_image(agent, BuildOptions(index_url=index_url))
    assert any(e["event"] == "Only the code changed: building without a network" for e in logs), logs
    assert quick.index["upstream_requests"] == 0 and {"deps", "package"} <= set(quick.steps_cached)
    out = docker_client.containers.run(quick.image_id, ["python", "-c", "import src.main; print(src.main.Z)"],
                                       working_dir="/", remove=True).decode().strip()
    assert out == "3"
    (agent / "setup.py").write_text((agent / "setup.py").read_text() + "\n# packaging changed\n")
    with capture_logs() as logs:
        full = build_image(agent, BuildOptions(index_url=index_url))
    assert not any(e["event"].startswith("Only the code changed") for e in logs)
    assert "package" not in full.steps_cached


def test_a_failed_offline_attempt_leaves_nothing_in_the_layer_cache(agent_factory, index_url, docker_client,
                                                                   cleanup_images, tmp_path):
    """Should the offline attempt run a step it expected cached (its fence said only the code
    changed), the layers it committed without a network (with the package's 'install after
    the code' mark) are removed: no later build can take them from the layer cache."""
    from builder.build.reuse import fence_file
    cleanup_images("agents/offline-stale")
    agent = agent_factory("offline-stale", requirements="tinyreq==1.0\n")
    first = build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "c"))
    # the packaging changes (a dependency only the index has), but a stale fence says it did not
    setup = agent / "setup.py"
    setup.write_text(setup.read_text().replace("install_requires=[]", "install_requires=['tinydep==1.0']"))
    with capture_logs():
        build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "probe", use_cache=False))
    probe = sorted((tmp_path / "probe" / "fences").iterdir())[0].read_text()  # the new packaging's fence
    fence_file(tmp_path / "c", first.image_id).write_text(probe)
    docker_client.images.remove("agents/offline-stale:0.1.0", force=True)
    docker_client.images.get(first.image_id).tag("agents/offline-stale", "0.1.0")  # the previous image again
    (agent / "src" / "main.py").write_text((agent / "src" / "main.py").read_text() + "\nW = 1\n")
    before = {i["Id"] for i in docker_client.api.images(all=True)}
    with capture_logs() as logs:
        result = build_image(agent, BuildOptions(index_url=index_url, cache_dir=tmp_path / "c"))
    assert any(e["event"] == "Only the code changed: building without a network" for e in logs)
    assert any(e["event"] == "A step needs the index after all: building in the sandbox" for e in logs)
    # every image this build made is in the result's history: the offline attempt's layers are gone
    chain = {h["Id"] for h in docker_client.api.history(result.image_id)}
    kept = {i["Id"] for i in docker_client.api.images(all=True)} - before - chain
    assert not kept, f"the offline attempt's layers were kept: {kept}"
    out = docker_client.containers.run(result.image_id, ["sh", "-c", "test -e /opt/agent-image/installed-after-code "
                                                         "&& echo marked || echo clean; python -c 'import tinydep'"],
                                       remove=True).decode().strip()
    assert out == "clean", "the offline attempt's commit was reused: every later build installs after the code"
