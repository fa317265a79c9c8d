"""Issue 14, the dependency image, without an engine: its key (what shapes the layer and who
may read it), its Dockerfile, its repository name, and when an image under its tag is refused.

Builds, pulls and pushes of it are in tests/integration/test_depsimage.py.
"""

from __future__ import annotations

import pytest

from builder.build import depsimage
from builder.build.image import Image
from builder.core.labels import DEPS_LABEL
from builder.package.manifest import parse_manifest
from builder.package.requirements import read_requirements
from builder.plan.dockerfile import Rendered, deps_dockerfile, render
from tests.support.packages import make_agent


def _plan(tmp_path, reqs: str, *, index: str = "https://pypi.example/simple/", installer: str = "pip") -> Rendered:
    agent = make_agent(tmp_path / "k", "keyed", requirements=reqs)
    manifest = parse_manifest((agent / "agent.yaml").read_text())
    return render(manifest, base_image="agent-image/base:py3.11", index_identity=index, deps=True, editable=True,
                  requirements=True, installer=installer, base_has_uv=True)


def test_the_key_separates_what_shapes_the_layer_and_who_reads_it(tmp_path):
    split = read_requirements(make_agent(tmp_path / "s", "s", requirements="tinyreq==1.0\n"), frozenset())
    head = deps_dockerfile(_plan(tmp_path, "tinyreq==1.0\n").text)
    base = "sha256:" + "a" * 64
    k = depsimage.key(head, split, base, reader="alice", repo="r.example/t1/agent-image.deps")
    assert k == depsimage.key(head, split, base, reader="alice", repo="r.example/t1/agent-image.deps")
    others = [
        depsimage.key(head, split, base, reader="bob", repo="r.example/t1/agent-image.deps"),     # another account
        depsimage.key(head, split, base, reader="alice", repo="r.example/t2/agent-image.deps"),   # another tenant
        depsimage.key(head, split, "sha256:" + "b" * 64, reader="alice", repo="r.example/t1/agent-image.deps"),
        depsimage.key(deps_dockerfile(_plan(tmp_path, "tinyreq==1.0\n", index="https://other.example/simple/").text),
                      split, base, reader="alice", repo="r.example/t1/agent-image.deps"),
        depsimage.key(deps_dockerfile(_plan(tmp_path, "tinyreq==1.0\n", installer="uv").text),
                      split, base, reader="alice", repo="r.example/t1/agent-image.deps"),
    ]
    assert k not in others and len(set(others)) == len(others)
    # the token is not part of it (a rotation keeps the image); the user is
    basic = lambda user, token: "Basic " + __import__("base64").b64encode(f"{user}:{token}".encode()).decode()  # noqa
    assert depsimage.index_user(basic("alice", "t1")) == depsimage.index_user(basic("alice", "t2")) == "alice"
    assert depsimage.index_user(None) == ""


def test_the_dependency_dockerfile_names_no_agent_and_adds_three_layers(tmp_path):
    text = _plan(tmp_path, "tinyreq==1.0\n").text
    head = deps_dockerfile(text)
    assert "keyed" not in head.text and "COPY app/" not in head.text and ".agent-image/meta" not in head.text
    assert head.steps[0] == "base" and head.steps[-1] == "deps" and depsimage.layer_count(head) == 3  # COPY, RUN, the record (depsenv)
    with pytest.raises(ValueError):
        deps_dockerfile(text.replace("#> step deps", "#> step other"))


def test_an_image_with_the_key_but_not_the_shape_is_refused():
    base = Image(id="b", tags=(), labels={}, size=0, layers=("l1", "l2"))
    ok = Image(id="d", tags=(), labels={DEPS_LABEL: "k"}, size=0, layers=("l1", "l2", "d1", "d2"))
    assert depsimage.refusal(ok, "k", base, 2) is None
    cases = {
        "its deps-key label differs": ok.__class__(**{**ok.__dict__, "labels": {DEPS_LABEL: "other"}}),
        "agent's image": ok.__class__(**{**ok.__dict__, "labels": {DEPS_LABEL: "k",
                                                                   "io.pixell.agent.name": "x"}}),
        "not built on this base": ok.__class__(**{**ok.__dict__, "layers": ("l0", "l2", "d1", "d2")}),
        "adds 3 layers": ok.__class__(**{**ok.__dict__, "layers": ("l1", "l2", "d1", "d2", "code")}),
    }
    for why, image in cases.items():
        assert why in (depsimage.refusal(image, "k", base, 2) or ""), why


def test_the_dependency_repository_is_no_agent_name():
    assert depsimage.repository("reg:5000/t1/my-agent", "reg:5000/t1") == "reg:5000/t1/agent-image.deps"
    assert depsimage.repository("agents/my-agent", None) == "agents/agent-image.deps"
    assert depsimage.repository("solo", None) == "agent-image.deps"
    from builder.package.manifest import NAME_RE
    assert not NAME_RE.match(depsimage.REPOSITORY_NAME)
    assert depsimage.ref("r/agent-image.deps", "f" * 64) == "r/agent-image.deps:deps-" + "f" * 48
