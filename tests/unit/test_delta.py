"""A near twin's pure parts (builder/build/delta.py, deltarun.py, builder/ship/deltaimage.py): which
sibling it builds on, which layer it may push, and the manifest it writes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from builder.build import delta, depsimage
from builder.build.deltarun import choose
from builder.build.image import image_from
from builder.core.labels import DEPS_DELTA_LABEL, DEPS_DISTS_LABEL, DEPS_LABEL, DEPS_WHEELS_LABEL
from builder.ship import deltaimage
from builder.ship.rebase import ImageDoc

BASE = {"pip": "23.0.1", "setuptools": "66.1.1"}


def _sib(ref: str, dists: dict[str, str], requested: list[str], hashes: dict[str, str] | None = None) -> dict:
    return {"ref": ref, "dists": {**BASE, **dists}, "requested": requested, "listing": [],
            "hashes": hashes if hashes is not None else {k: f"{k}-{v}" for k, v in dists.items()}}


def test_the_sibling_is_the_largest_whose_every_distribution_is_in_the_set_as_it_is():
    want = {"requests": ("2.32.3", True), "idna": ("3.10", False), "certifi": ("2025.1.31", False),
            "python-dotenv": ("1.0.1", True)}
    small = _sib("r@small", {"idna": "3.10"}, [])
    big = _sib("r@big", {"requests": "2.32.3", "idna": "3.10", "certifi": "2025.1.31"}, ["requests"])
    older = _sib("r@older", {"requests": "2.31.0", "idna": "3.10", "certifi": "2025.1.31", "x": "1"}, ["requests"])
    hashes = {k: f"{k}-{v}" for k, (v, _) in want.items()}
    assert choose(want, hashes, BASE, [small, older, big]) == (big, {"requests": "2.32.3", "idna": "3.10",
                                                            "certifi": "2025.1.31"})
    # a distribution the set does not hold, or holds at another version: not a sibling (its files would stay)
    assert choose(want, hashes, BASE, [older])[0] is None
    # the same version from another wheel (a file added to the release later, a private index's re-upload)
    assert choose(want, hashes, BASE, [_sib("r@other", {"idna": "3.10"}, [], {"idna": "another"})])[0] is None
    # it installed a wheel its listing does not show (one that rewrote its own METADATA, and another's files)
    hidden = _sib("r@hidden", {"idna": "3.10"}, [], {"idna": "idna-3.10", "zhide": "h"})
    assert choose(want, hashes, BASE, [hidden])[0] is None
    # a distribution the set does not hold, with a version that matches the missing one's default: no error
    assert choose(want, hashes, BASE, [_sib("r@odd", {"foo": ""}, [], {"foo": "x"}), small])[0] is small
    # requested otherwise: its REQUESTED marks would be wrong for this set
    assert choose(want, hashes, BASE, [_sib("r@req", {"idna": "3.10"}, ["idna"])])[0] is None
    # one that replaced a distribution of the base, or holds nothing of the set
    assert choose(want, hashes, BASE, [_sib("r@pip", {"idna": "3.10", "pip": "26.0"}, [])])[0] is None
    assert choose(want, hashes, BASE, [_sib("r@none", {}, [])])[0] is None
    # names compare as pip normalises them
    assert choose({"typing-extensions": ("4.0", False)}, {"typing-extensions": "h"}, BASE,
                  [_sib("r@t", {"Typing_Extensions": "4.0"}, [], {"Typing_Extensions": "h"})])[0]["ref"] == "r@t"


def _tar(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == tarfile.DIRTYPE:
                info.type = tarfile.DIRTYPE
            elif kind == tarfile.SYMTYPE:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out.getvalue()


def test_the_layer_from_the_sandbox_holds_only_what_the_step_writes():
    ok = _tar([("opt", tarfile.DIRTYPE, b""), ("opt/venv/lib/x.py", None, b"x"),
               ("opt/agent-image/dists.json", None, b"[]"), ("opt/agent-image/deps/.wh..wh..opq", None, b"")])
    assert delta.checked(ok) is None
    for bad, why in ((("etc/cron.d/x", None, b"x"), "outside"), (("opt/venv/../../etc/x", None, b"x"), "names"),
                     (("opt/venv/bin/x", tarfile.SYMTYPE, b""), "not a file"),
                     (("opt/agent-image/serve.py", None, b"x"), "outside"),
                     (("opt/agent-image", tarfile.SYMTYPE, b""), "not a file"),
                     # a wheel's file named as a whiteout would delete the sibling's files in the image
                     (("opt/venv/lib/python3.11/site-packages/.wh.requests", None, b""), "delete"),
                     (("opt/venv/lib/python3.11/site-packages/.wh..wh..opq", None, b""), "delete"),
                     (("opt/agent-image/dists.json.x", None, b""), "outside")):
        assert why in (delta.checked(_tar([bad])) or ""), bad
    assert "not a tar" in delta.checked(b"garbage" * 100)


def test_the_install_command_is_the_dependency_steps_own_or_none():
    from builder.plan.dockerfile import COMPILE_START, parse_steps
    run = ("#> step deps\nRUN touch /tmp/.agent-image-stamp && " + COMPILE_START +
           "PYTHONPATH=/opt/agent-image/tools/pip python -m pip install --no-compile -r "
           "/opt/agent-image/deps/requirements-deps.txt; r=$?\n")
    steps, instructions = parse_steps(run)
    rendered = delta.Rendered(text=run, steps=steps, instructions=instructions)
    assert delta.install_command(rendered) == "PYTHONPATH=/opt/agent-image/tools/pip python -m pip install --no-compile"
    uv = run.replace("python -m pip install", "/opt/agent-image/tools/bin/uv pip install")
    steps, instructions = parse_steps(uv)
    assert delta.install_command(delta.Rendered(text=uv, steps=steps, instructions=instructions)) is None


def _layer(n: int) -> dict:
    return {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": n, "digest": f"sha256:{n:064x}"}


def test_the_near_twins_manifest_keeps_the_base_and_the_siblings_install_and_puts_its_layer_before_the_record():
    base = image_from({"Id": "sha256:b", "RootFS": {"Layers": ["sha256:d1", "sha256:d2"]}})
    # the sibling built whole: base (2), COPY of its lines, the install, the environment record
    sib_history = [{"created_by": "base 1"}, {"created_by": "base 2"}, {"created_by": "ARG", "empty_layer": True},
                   {"created_by": "COPY lines"}, {"created_by": "RUN install"}, {"created_by": "RUN record"},
                   {"created_by": "LABEL", "empty_layer": True}]
    doc = ImageDoc(manifest={"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                             "config": {"mediaType": "x", "size": 1, "digest": "sha256:c"},
                             "layers": [_layer(i) for i in range(1, 6)]},
                   config={"rootfs": {"type": "layers", "diff_ids": ["sha256:d1", "sha256:d2", "sha256:copy",
                                                                      "sha256:install", "sha256:record"]},
                           "history": sib_history, "config": {"Labels": {DEPS_LABEL: "old", "keep": "me"}}},
                   digest="sha256:sib")
    cand = deltaimage.Candidate(delta.Sibling("r@sha256:sib", {}, [], [], {}), doc, "r")
    plan = depsimage.Plan(dockerfile=None, key="new", repo="h:5000/r", ref="h:5000/r:deps-new", layers=3, family="f")
    made = delta.Delta(sibling="r@sha256:sib", new=["python-dotenv==1.0.1"], layer=_tar([("opt", tarfile.DIRTYPE, b"")]),
                       listing='[["python-dotenv", "1.0.1"]]', requested='["python-dotenv"]',
                       hashes='{"python-dotenv": "' + "a" * 64 + '"}')
    manifest, media, config, blob = deltaimage.compose(cand, plan, base, made)
    m, c = json.loads(manifest), json.loads(config)
    assert [x["size"] for x in m["layers"]] == [1, 2, 4, len(blob), 5], "base, install, near twin, record"
    assert c["rootfs"]["diff_ids"][:3] == ["sha256:d1", "sha256:d2", "sha256:install"]
    assert c["rootfs"]["diff_ids"][4] == "sha256:record"
    assert len([h for h in c["history"] if not h.get("empty_layer")]) == len(c["rootfs"]["diff_ids"])
    assert c["history"][-1]["created_by"] == "RUN record"
    labels = c["config"]["Labels"]
    assert labels[DEPS_LABEL] == "new" and labels[DEPS_DELTA_LABEL] == "1" and labels[DEPS_WHEELS_LABEL] == "1"
    assert labels[DEPS_DISTS_LABEL] == '[["python-dotenv", "1.0.1"]]' and labels["keep"] == "me"
    assert m["config"]["digest"] == "sha256:" + hashlib.sha256(config).hexdigest()
    # as many layers over the base as one built whole: the dependency image's checks take it
    image = image_from({"Id": "x", "RootFS": {"Layers": c["rootfs"]["diff_ids"]}, "Config": {"Labels": labels}})
    assert depsimage.refusal(image, "new", base, 3) is None
    # its own near twin keeps all of it but the record (no COPY to drop): one layer more, and the count says so
    doc2 = ImageDoc(manifest=m, config=c, digest="sha256:two")
    m2, _, c2, _ = deltaimage.compose(deltaimage.Candidate(cand.sibling, doc2, "r"), plan, base, made)
    m2, c2 = json.loads(m2), json.loads(c2)
    assert len(m2["layers"]) == 6 and c2["config"]["Labels"][DEPS_DELTA_LABEL] == "2"
    image2 = image_from({"Id": "y", "RootFS": {"Layers": c2["rootfs"]["diff_ids"]},
                         "Config": {"Labels": c2["config"]["Labels"]}})
    assert depsimage.refusal(image2, "new", base, 3) is None
    assert "layers over the base" in depsimage.refusal(image2, "new", base, 2)


def test_the_first_siblings_distributions_are_expected_pinned_and_only_those_that_read_as_names():
    """Their pages come while the sandbox starts: the resolve then finds them here. A sibling's labels are
    another build's words: what does not read as a name and a version is not asked for."""
    from builder.build import agentbuild
    first = delta.Sibling(ref="r@first", dists={"requests": "2.32.3", "idna": "3.10", "evil; os_name": "1",
                                                "x": "1 ; python_version>'0'", "../p": "1"},
                          requested=[], listing=[], hashes={})
    other = delta.Sibling(ref="r@other", dists={"numpy": "2.2.6"}, requested=[], listing=[], hashes={})
    step = agentbuild.near_twin(None, None, None, [first, other], "pip install")
    assert step.hints == ["requests==2.32.3", "idna==3.10"]
    assert agentbuild.near_twin(None, None, None, [], "pip install").hints == []
    many = delta.Sibling(ref="r@many", dists={f"p{i}": "1" for i in range(5000)}, requested=[], listing=[], hashes={})
    assert len(agentbuild.near_twin(None, None, None, [many], "pip install").hints) == agentbuild.MAX_HINTS
