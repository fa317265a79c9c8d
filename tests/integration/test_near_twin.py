"""Issue 24's near twin: one line added to a pushed agent's lines. Its dependency image is the
pushed sibling's install plus what it lacks (builder/build/delta.py), written in the registry,
and the agent appended there; what a user runs is what the engine would have built: the same
files (content, mode, owner), `pip list`, REQUESTED marks, listing and config."""

from __future__ import annotations

import dataclasses
import subprocess

from structlog.testing import capture_logs

from builder.api import BuildOptions, build_image
from builder.core.labels import DEPS_DELTA_LABEL, READY_LABEL
from tests.integration.test_assemble import REQS, _drop
from tests.support.engine import engine_tags

NEAR = REQS + "requests==2.32.3\n"  # four more distributions, one with a console script
# every file of the venv and of agent-image's own folder: path, mode, owner, size, link; the contents but
# bytecode's (its header holds its source's mtime); what pip and python say; the REQUESTED marks
FILES = ("find /opt/venv /opt/agent-image /app -printf '%p %m %u:%g %s %l\\n' | sort; "
         "find /opt/venv /opt/agent-image /app -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 md5sum; "
         "pip list --disable-pip-version-check; ls /opt/venv/lib/python3.11/site-packages/*/REQUESTED; "
         "python -c 'import requests, charset_normalizer, src.main; print(\"imports ok\")'; "
         # bytecode that names another time than its source's is stale: recompiled (and not kept) at each start
         "python -I -c 'import glob, os, struct, importlib.util as u; c = u.cache_from_source; "
         "py = glob.glob(\"/opt/venv/lib/python3.11/site-packages/**/*.py\", recursive=True); "
         "print(\"stale\", sum(1 for p in py if os.path.exists(c(p)) and "
         "struct.unpack(\"<4xII\", open(c(p), \"rb\").read(12))[1] != int(os.stat(p).st_mtime) & 0xFFFFFFFF), "
         "\"without\", sum(1 for p in py if not os.path.exists(c(p))))'")


def _inside(image: str) -> str:
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", FILES],
                          capture_output=True, text=True, check=True, timeout=120).stdout


def _labels(docker_client, image: str) -> dict:
    cfg = docker_client.images.get(image).attrs["Config"]
    return {k: v for k, v in (cfg.get("Labels") or {}).items() if k not in (READY_LABEL, DEPS_DELTA_LABEL)}


def test_a_near_twin_builds_on_its_pushed_sibling_and_runs_as_the_engine_would_build_it(
        agent_factory, index_url, registry, docker_client, cleanup_images, tmp_path):
    prefix = f"{registry.host}/ai24near"
    cleanup_images(prefix)
    cleanup_images("ai24-near-engine/")
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    first = build_image(agent_factory("near-one", requirements=REQS), opts)
    assert first.deps_origin == "built", first
    near = agent_factory("near-two", requirements=NEAR)
    # the engine's image of the near twin, its dependency image built whole (not pushed)
    engine_built = build_image(near, BuildOptions(index_url=index_url, registry=prefix, cache_dir=tmp_path / "e"))
    assert engine_built.deps_origin == "built", engine_built
    docker_client.images.get(engine_built.image_id).tag("ai24-near-engine/near-two", "0.1.0")
    _drop(docker_client, prefix)  # an empty runner

    with capture_logs() as logs:
        made = build_image(near, dataclasses.replace(opts, cache_dir=tmp_path / "n"))
    events = [e["event"] for e in logs]
    assert made.deps_origin == "near twin", [e for e in logs if "twin" in e["event"] or "Not" in e["event"]]
    wrote = next(e for e in logs if e["event"].startswith("Wrote the near twin's dependency image"))
    assert {n.split("==")[0] for n in wrote["new"]} == {"requests", "certifi", "idna", "urllib3",
                                                         "charset-normalizer"}, wrote  # only what the sibling lacks
    assert wrote["sibling"].startswith(f"{prefix}/agent-image.deps@sha256:"), wrote
    assert "Building the dependency image" not in events, "nothing was built whole"
    assert not [t for t in engine_tags(docker_client) if t.startswith(prefix)], "the agent was appended in the registry"

    docker_client.images.pull(made.digest_ref)
    ours, theirs = _inside(made.digest_ref), _inside("ai24-near-engine/near-two:0.1.0")
    assert "imports ok" in ours and "/requests-2.32.3.dist-info/REQUESTED" in ours, ours
    assert "stale 0 without 0" in ours, ours[-300:]
    assert "/certifi-" not in "".join(ln for ln in ours.splitlines() if ln.endswith("/REQUESTED")), \
        "a distribution the lines only pulled in is not marked requested"
    assert ours == theirs
    assert _labels(docker_client, made.digest_ref) == _labels(docker_client, "ai24-near-engine/near-two:0.1.0")
    layers = docker_client.images.get(made.digest_ref).attrs["RootFS"]["Layers"]
    assert len(layers) == len(docker_client.images.get("ai24-near-engine/near-two:0.1.0").attrs["RootFS"]["Layers"])


def test_a_near_twin_whose_agent_steps_need_the_engine_builds_from_its_pulled_dependency_image(
        agent_factory, index_url, registry, docker_client, cleanup_images, tmp_path):
    """A setup.cfg beside setup.py: the registry assembly leaves the agent's steps to the engine. The
    near twin's dependency image, written in the registry, is what the engine builds the agent FROM:
    pulled, not built whole again."""
    prefix = f"{registry.host}/ai24near2"
    cleanup_images(prefix)
    opts = BuildOptions(index_url=index_url, registry=prefix, push=True, cache_dir=tmp_path / "c")
    assert build_image(agent_factory("near-one", requirements=REQS), opts).deps_origin == "built"
    near = agent_factory("near-cfg", requirements=NEAR, extra={"setup.cfg": "[metadata]\nname = near-cfg\n"})
    _drop(docker_client, prefix)  # an empty runner
    with capture_logs() as logs:
        made = build_image(near, dataclasses.replace(opts, cache_dir=tmp_path / "n"))
    events = [e["event"] for e in logs]
    assert any(e.startswith("Wrote the near twin's dependency image") for e in events), events
    assert made.deps_origin == "pulled" and "Building the dependency image" not in events, (made, events)
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", made.image_id,
                          "-c", "import requests, tinyreq, src.main; print('imports ok')"],
                         capture_output=True, text=True, timeout=120)
    assert "imports ok" in out.stdout, out.stderr[-2000:]
