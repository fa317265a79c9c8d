"""Issue 24, the pure parts of assembling in the registry: reading a setup.py without running it,
the files `pip install -e` leaves, the agent's steps interpreted from its Dockerfile, the
appended manifest and config. (tests/integration/test_assemble.py compares with the engine.)"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from builder.build import codelayer, editable
from builder.plan.context import build_context
from builder.plan.dockerfile import parse_steps, Rendered
from builder.ship.append import compose
from builder.ship.rebase import ImageDoc

SITE = "/opt/venv/lib/python3.11/site-packages"
PIXELL = '''#!/usr/bin/env python3
"""
Auto-generated setup.py for agent package installation.
"""

from setuptools import setup

setup(
    name="my-agent",
    version="0.2.0",
    description="An agent",
    packages=[
        'src',
        'src.tools',
    ],
    package_dir={"": "."},
    install_requires=['structlog >= 24', "requests"],  # Populated from requirements.txt
    python_requires=">=3.9",
    include_package_data=True,
)
'''
META = {"setup.py": PIXELL.encode(), "requirements.txt": b"structlog==24.4.0\nrequests\n",
        "src/__init__.py": b"", "src/tools/__init__.py": b""}
TOOLS = {"pip": "23.0.1", "setuptools": "66.1.1", "python": "3.11", "site_packages": SITE}


def test_pixells_setup_py_gives_the_files_setuptools_66_writes():
    got = editable.plan(META, deps_text="structlog==24.4.0\nrequests\n", **TOOLS)
    assert isinstance(got, editable.Editable), got
    f = {k: v.decode() for k, v in got.files.items()}
    assert f["/app/my_agent.egg-info/PKG-INFO"] == ("Metadata-Version: 2.1\nName: my-agent\nVersion: 0.2.0\n"
                                                    "Summary: An agent\nRequires-Python: >=3.9\n")
    assert f["/app/my_agent.egg-info/requires.txt"] == "requests\nstructlog>=24\n"  # (as egg_info sorts them)
    assert f["/app/my_agent.egg-info/top_level.txt"] == "src\n"
    assert f["/app/my_agent.egg-info/dependency_links.txt"] == "\n"
    assert f["/app/my_agent.egg-info/SOURCES.txt"].split("\n") == [
        "setup.py", "./src/__init__.py", "./src/tools/__init__.py", "my_agent.egg-info/PKG-INFO",
        "my_agent.egg-info/SOURCES.txt", "my_agent.egg-info/dependency_links.txt", "my_agent.egg-info/requires.txt",
        "my_agent.egg-info/top_level.txt"]
    assert f[f"{SITE}/my-agent.egg-link"] == "/app\n." and f[f"{SITE}/easy-install.pth"] == "/app\n"


@pytest.mark.parametrize("source, why", [
    ("import os\nfrom setuptools import setup\nsetup(name='a', version=os.environ['V'])\n", "more than one setup()"),
    ("from setuptools import setup\nsetup(name='a', version=VERSION)\n", "more than one setup()"),
    ("from setuptools import setup, find_packages\nsetup(name='a', version='1')\n", "more than one setup()"),
    ("from setuptools import setup\nsetup(name='a', version='1', entry_points={})\n", "entry_points"),
    ("from setuptools import setup\nsetup(name='a', version='1.0rc1')\n", "version"),
    ("from setuptools import setup\nsetup(name='a_b', version='1')\n", "name"),
    ("from setuptools import setup\nsetup(name='a', version='1', package_dir={'': 'src'})\n", "package_dir"),
    ("from setuptools import setup\nsetup(name='a', version='1', packages=['lib'])\n", "no __init__.py"),
    ("from setuptools import setup\nsetup(name='a', version='1', install_requires=['numpy'])\n", "index"),
    ("from setuptools import setup\nsetup(name='a', version='1', install_requires=['structlog>=25'])\n",
     "not known to be satisfied"),
    ("from setuptools import setup\nsetup(name='a', version='1', install_requires=['x; python_version<\"3\"'])\n",
     "marker"),
    ("from setuptools import setup\nsetup(name='a', version='1', python_requires='<3.10')\n", "excludes"),
])
def test_anything_only_running_it_would_tell_goes_to_the_engine(source, why):
    got = editable.plan({**META, "setup.py": source.encode()}, deps_text="structlog==24.4.0\n", **TOOLS)
    assert isinstance(got, str) and why in got, got


def test_other_tools_or_a_build_backend_go_to_the_engine():
    assert "not a pair" in editable.plan(META, deps_text="", **{**TOOLS, "pip": "25.0"})
    assert "pyproject.toml" in editable.plan({**META, "pyproject.toml": b""}, deps_text="", **TOOLS)


def test_words_read_the_templates_quoting_and_refuse_substitution():
    assert codelayer.pairs('A="x y" B=1 C="q\\"\\\\\\$"') == [("A", "x y"), ("B", "1"), ("C", 'q"\\$')]
    assert codelayer.words('A="a\\nb" C=x\\ y') == ["A=a\\nb", "C=x y"]  # Docker keeps \n in quotes
    for refused in ("PATH=/x:$PATH", "A='x'", 'A="open'):
        with pytest.raises(ValueError):
            codelayer.words(refused)


DOCKERFILE = """FROM sha256:deps
ARG X=1
ENV AGENT_NAME="my-agent" REST_PORT=8080
LABEL io.pixell.agent.name="my-agent"
#> step package
COPY .agent-image/meta/ /app/
{package_run}
#> step source
COPY app/ /app/
#> step install
RUN if [ -e /opt/agent-image/installed-after-code ]; then pip install -e /app; fi
#> step runtime
USER agent
""".format(package_run=codelayer.PACKAGE_RUNS[1])
DEPS_LISTING = json.dumps([["requests", "2.32.3", "Apache-2.0", [], None, SITE],
                           ["structlog", "24.4.0", "", ["License :: OSI Approved :: MIT License"], None, SITE]])
ABI = {"io.pixell.agent-image.abi": "distro=debian:12;python=3.11;venv=/opt/venv;uid=10001;pip=23.0.1;"
                                    "setuptools=66.1.1"}


def _rendered(text: str) -> Rendered:
    return Rendered(text, *parse_steps(text))


def _context(tmp_path) -> bytes:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "main.py").write_text("X = 1\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    meta = {f".agent-image/meta/{k}": v for k, v in META.items() if k != "src/tools/__init__.py"}
    meta[".agent-image/meta/setup.py"] = PIXELL.replace("'src.tools',", "").encode()
    return build_context(tmp_path, {"Dockerfile": b"", **meta}).data


def test_the_agents_steps_become_layers_and_config(tmp_path):
    out = codelayer.assemble(_rendered(DOCKERFILE), _context(tmp_path), base_env=["PATH=/opt/venv/bin:/bin",
                             "REST_PORT=1"], base_labels=ABI, deps_text="structlog==24.4.0\nrequests\n",
                             deps_listing=DEPS_LISTING)
    assert isinstance(out, codelayer.Assembly), out
    assert out.env == ["PATH=/opt/venv/bin:/bin", "REST_PORT=8080", "AGENT_NAME=my-agent"]  # replaced in place
    assert out.labels["io.pixell.agent.name"] == "my-agent" and out.user == "agent"
    assert len(out.layers) == 3 and out.editable == "my-agent==0.2.0"
    assert [h.get("empty_layer", False) for h in out.history] == [True, True, True, False, False, False, True, True]
    code = tarfile.open(fileobj=io.BytesIO(out.layers[2].tar))
    modes = {m.name: (oct(m.mode), m.uid, m.gid, m.type) for m in code.getmembers()}
    assert modes["app"] == ("0o755", 0, 0, tarfile.DIRTYPE) and modes["app/src"][0] == "0o755"
    assert modes["app/run.sh"][:3] == ("0o755", 0, 0) and modes["app/src/main.py"][0] == "0o644"
    pkg = tarfile.open(fileobj=io.BytesIO(out.layers[1].tar))
    assert "opt/venv/lib/python3.11/site-packages/easy-install.pth" in pkg.getnames()
    assert "app/my_agent.egg-info/PKG-INFO" in pkg.getnames()
    # the listing LIST_DISTS writes after the install: the dependency image's rows and the agent's, sorted
    written = pkg.extractfile("opt/agent-image/dists.json").read().decode()
    assert written == out.dists and json.loads(written) == sorted([*json.loads(DEPS_LISTING),
                                                                   ["my-agent", "0.2.0", "", [], None, "/app"]])
    # the same input, the same bytes (a retry on another runner uploads nothing new)
    (tmp_path / "again").mkdir()
    again = codelayer.assemble(_rendered(DOCKERFILE), _context(tmp_path / "again"), base_env=[], base_labels=ABI,
                               deps_text="structlog==24.4.0\nrequests\n",
                             deps_listing=DEPS_LISTING)
    assert [la.tar for la in again.layers] == [la.tar for la in out.layers]


@pytest.mark.parametrize("line", ["RUN cat a b > c", "WORKDIR /x", "COPY --chown=1 app/ /app/",
                                  "ENV PATH=/x:$PATH"])
def test_a_step_only_the_engine_can_run_is_refused(tmp_path, line):
    text = DOCKERFILE.replace("USER agent", line)
    got = codelayer.assemble(_rendered(text), _context(tmp_path), base_env=[], base_labels=ABI,
                             deps_text="structlog==24.4.0\nrequests\n",
                             deps_listing=DEPS_LISTING)
    assert isinstance(got, str), got


def test_compose_appends_layers_and_keeps_the_dependency_images(tmp_path):
    deps_config = {"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "Labels": {"x": "1"}},
                   "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]}, "history": [{"created_by": "b"}],
                   "container_config": {"Cmd": ["secret"]}}
    deps = ImageDoc(manifest={"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                              "config": {"digest": "sha256:" + "c" * 64, "size": 1},
                              "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                          "digest": "sha256:" + "2" * 64, "size": 10}]},
                    config=deps_config, digest="sha256:" + "d" * 64)
    asm = codelayer.Assembly(layers=[codelayer.Layer.of(b"tar-bytes", "COPY")], env=["A=1", "B=2"], labels={"x": "1"},
                             user="agent", history=[{"created_by": "COPY"}])
    made = compose(deps, asm, extra_labels={"in": "d"}, created="2026-01-01T00:00:00Z")
    manifest, config = json.loads(made.manifest), json.loads(made.config)
    assert [la["digest"] for la in manifest["layers"]][0] == "sha256:" + "2" * 64
    assert manifest["layers"][1]["digest"] == "sha256:" + hashlib.sha256(made.blobs[0]).hexdigest()
    assert gzip.decompress(made.blobs[0]) == b"tar-bytes"
    assert config["rootfs"]["diff_ids"][-1] == "sha256:" + hashlib.sha256(b"tar-bytes").hexdigest()
    assert config["config"] == {"Env": ["A=1", "B=2"], "Labels": {"x": "1", "in": "d"}, "User": "agent"}
    assert "container_config" not in config and manifest["config"]["digest"] == made.config_digest


@pytest.mark.parametrize("requirements", [True, False])
def test_the_package_step_is_recognised_exactly_as_the_template_renders_it(requirements):
    from builder.package.manifest import parse_manifest
    from builder.plan.dockerfile import render
    from tests.unit.test_pure import YAML

    def package_run(**kw):
        r = render(parse_manifest(YAML), base_image="x", index_identity="i", deps=True, editable=True,
                   requirements=requirements, deps_image="sha256:d", **kw)
        return next(t for s, t in zip(r.steps, r.instructions) if s == "package" and t.startswith("RUN"))
    assert package_run(pip_report=True) in codelayer.PACKAGE_RUNS
    assert package_run(pip_report=True).replace(" -e /app", " -e /app -U") not in codelayer.PACKAGE_RUNS
    assert package_run(installer="uv", base_has_uv=True) not in codelayer.PACKAGE_RUNS
    if requirements:  # one pass for both (a pip without --report): not modelled
        assert package_run(pip_report=False) not in codelayer.PACKAGE_RUNS


def test_the_listing_gets_the_agents_row_as_list_dists_writes_it():
    got = codelayer.listed(DEPS_LISTING, "my-agent", "0.2.0")
    assert got == json.dumps(sorted([*json.loads(DEPS_LISTING), ["my-agent", "0.2.0", "", [], None, "/app"]]))
    with pytest.raises(ValueError, match="Structlog is a distribution of the dependency image too"):
        codelayer.listed(DEPS_LISTING, "Structlog", "1.0")


@pytest.mark.parametrize("error", [MemoryError(), RecursionError("deep"), KeyError("config"), UnicodeError("x")])
def test_an_unforeseen_failure_of_the_shortcut_is_a_build_with_the_engine(error):
    """atk24 F7: the registry assembly only saves work; whatever it did not foresee leaves the build to the engine
    (logged with its reason), never a traceback. TagExistsError still ends the build, as the engine's would."""
    from structlog.testing import capture_logs

    from builder.core.errors import TagExistsError
    from builder.ship import assemble

    def local(ref):
        raise error
    job = assemble.Inputs(pkg=None, options=None, repo="r", ref="r:1", upstream_url="", auth_header=None,
                          split=None, added={}, replace={}, base_image="agent-image/base:py3.11")
    with capture_logs() as logs:
        assert assemble.build(job, local) is None
    assert any(type(error).__name__ in e.get("reason", "") and "building with the engine" in e["event"] for e in logs)

    def taken(ref):
        raise TagExistsError("r:1 holds other content")
    with pytest.raises(TagExistsError):
        assemble.build(job, taken)


def test_compose_refuses_a_manifest_kind_it_does_not_write():
    deps = ImageDoc(manifest={"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                              "layers": []}, config={}, digest="sha256:" + "d" * 64)
    with pytest.raises(ValueError, match="index"):
        compose(deps, codelayer.Assembly(), extra_labels={})


def test_a_dependency_image_whose_lines_changed_the_package_steps_environment_is_not_assembled_on():
    """atk24 F3/F4: the record of the dependency image's last layer (builder/core/depsenv.py) must be a clean
    base's; anything else (another setuptools, a .pth, a sitecustomize, the mark, no record) is the engine's."""
    from builder.core import depsenv
    clean = {"customize": [], "entry_points": [], "mark": False, "pth": [],
             "tools": [["pip", "23.0.1"], ["setuptools", "66.1.1"]]}
    drifts = [{"mark": True}, {"tools": [["pip", "23.0.1"], ["setuptools", "75.8.0"]]},
              {"pth": [["evil.pth", "0" * 64]]}, {"customize": [["/opt/venv/lib/sitecustomize.py", "1" * 64]]},
              {"entry_points": [["x", "egg_info.writers", "w", "x:w"]]}]
    for drift in drifts:
        assert depsenv.refusal(json.dumps({**clean, **drift}).encode()), drift
    assert "mark" in depsenv.refusal(json.dumps({**clean, "mark": True}).encode())
    assert "older builder" in depsenv.refusal(None)
    assert "not JSON" in depsenv.refusal(b"{")
    assert "'" not in depsenv.COMMAND.split("-c '", 1)[1].rsplit("' >", 1)[0]  # one shell word
