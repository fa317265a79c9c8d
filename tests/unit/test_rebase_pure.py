"""Issue 13: the rebase itself is a pure function of manifests and configs (no registry here)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from builder.core.errors import RebaseError, RegistryError
from builder.core.labels import ABI_LABEL, TOP_LAYER_LABEL, abi_label, base_labels, parse_abi
from builder.ship.client import DOCKER_MANIFEST, OCI_MANIFEST, parse_ref
from builder.ship.dockerconfig import docker_config_auth
from builder.ship.rebase import ImageDoc, rebase

ABI = {"distro": "debian:12", "python": "3.11", "venv": "/opt/venv", "uid": "10001", "pip": "23.0.1",
       "setuptools": "66.1.1"}


def h(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def image(layers: list[str], history: list[tuple[str, bool]], labels: dict, media=DOCKER_MANIFEST,
          layer_type="application/vnd.docker.image.rootfs.diff.tar.gzip") -> ImageDoc:
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["AGENT_NAME=a"], "Cmd": ["python", "serve.py"], "User": "agent", "Labels": labels},
              "rootfs": {"type": "layers", "diff_ids": [h("diff-" + x) for x in layers]},
              "history": [{"created_by": c, **({"empty_layer": True} if e else {})} for c, e in history]}
    manifest = {"schemaVersion": 2, "mediaType": media, "config": {"digest": h(json.dumps(config)), "size": 1},
                "layers": [{"mediaType": layer_type, "digest": h("blob-" + x), "size": 10} for x in layers]}
    return ImageDoc(manifest=manifest, config=config, digest=h(json.dumps(manifest)))


BASE_HISTORY = [("debootstrap", False), ("RUN venv", False), ("LABEL venv", True), ("COPY shim", False),
                ("ENV LANG", True), ("WORKDIR /app", True)]


def old_base(**abi) -> ImageDoc:
    return image(["py", "venv", "shim"], BASE_HISTORY, {ABI_LABEL: abi_label({**ABI, **abi})})


def agent(**abi) -> ImageDoc:
    base = old_base(**abi)
    return image(["py", "venv", "shim", "deps", "code"],
                 BASE_HISTORY + [("ENV VIRTUAL_ENV", True), ("RUN pip install deps", False), ("LABEL agent", True),
                                 ("COPY app", False), ("USER agent", True)],
                 {**base.labels, "io.pixell.agent.name": "a", "io.pixell.agent-image.builder": "0.1.0",
                  "io.pixell.agent-image.input-digest": "abc", TOP_LAYER_LABEL: h("diff-shim")})


def new_base(**abi) -> ImageDoc:
    return image(["py2", "patch", "venv2", "shim2"], [("debootstrap", False), ("RUN patch", False)] + BASE_HISTORY[1:],
                 {ABI_LABEL: abi_label({**ABI, "pip": "24.0", **abi})})


def test_rebase_swaps_the_base_and_keeps_everything_of_the_agent():
    orig, base = agent(), new_base()
    out = rebase(orig, base, image_ref="r/a:1", base_ref="r/base@x", base_name="r/base")
    manifest, config = json.loads(out.manifest), json.loads(out.config)
    assert [x["digest"] for x in manifest["layers"]] == [h("blob-" + x) for x in ["py2", "patch", "venv2", "shim2",
                                                                                   "deps", "code"]]
    assert config["rootfs"]["diff_ids"] == [h("diff-" + x) for x in ["py2", "patch", "venv2", "shim2", "deps", "code"]]
    assert manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "size": len(out.config), "digest": out.config_digest}
    assert out.layers_kept == 2 and out.digest == "sha256:" + hashlib.sha256(out.manifest).hexdigest()
    # the agent's env, cmd and user are kept; labels say the new base; the old input digest is gone
    assert config["config"]["Env"] == ["AGENT_NAME=a"] and config["config"]["User"] == "agent"
    labels = config["config"]["Labels"]
    assert labels[TOP_LAYER_LABEL] == h("diff-shim2") and labels["org.opencontainers.image.base.digest"] == base.digest
    assert labels["org.opencontainers.image.base.name"] == "r/base" and "pip=24.0" in labels[ABI_LABEL]
    assert "io.pixell.agent-image.input-digest" not in labels and labels["io.pixell.agent.name"] == "a"
    assert labels["io.pixell.agent-image.rebased-from"] == orig.digest
    # history: the new base's, then the agent's own (the base's trailing ENV/WORKDIR not repeated)
    assert [e["created_by"] for e in config["history"]] == [
        "debootstrap", "RUN patch", "RUN venv", "LABEL venv", "COPY shim", "ENV LANG", "WORKDIR /app",
        "ENV VIRTUAL_ENV", "RUN pip install deps", "LABEL agent", "COPY app", "USER agent"]
    assert sum(not e.get("empty_layer") for e in config["history"]) == len(config["rootfs"]["diff_ids"])
    assert out.changes["base layers"] == ("3", "4")


def test_an_oci_base_under_a_docker_manifest_gets_docker_layer_types():
    base = image(["x", "y", "z"], BASE_HISTORY, {ABI_LABEL: abi_label(ABI)}, media=OCI_MANIFEST,
                 layer_type="application/vnd.oci.image.layer.v1.tar+gzip")
    out = json.loads(rebase(agent(), base, image_ref="a", base_ref="b", base_name="b").manifest)
    assert {x["mediaType"] for x in out["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}


@pytest.mark.parametrize("key,value", [("distro", "debian:11"), ("python", "3.9"), ("venv", "/venv"),
                                       ("uid", "1000")])
def test_an_abi_difference_is_refused_naming_the_field_and_both_values(key, value):
    with pytest.raises(RebaseError) as info:
        rebase(agent(), new_base(**{key: value}), image_ref="r/a:1", base_ref="r/base:new", base_name="r/base")
    err = info.value
    assert err.exit_code == 63 and err.field == f"{ABI_LABEL}:{key}"
    assert f"{key} is {ABI[key]!r} in the image, {value!r} in the new base" in err.message


def labels_of(doc: ImageDoc) -> dict:
    return doc.config["config"]["Labels"]


@pytest.mark.parametrize("change,field,words", [
    (lambda a, b: labels_of(a).pop("io.pixell.agent-image.builder"), "io.pixell.agent-image.builder",
     "not built by agent-image"),
    (lambda a, b: labels_of(a).pop(TOP_LAYER_LABEL), TOP_LAYER_LABEL, "base is unknown"),
    (lambda a, b: labels_of(b).pop(ABI_LABEL), ABI_LABEL, "new base r/base:new has no"),
    (lambda a, b: labels_of(a).pop(ABI_LABEL), ABI_LABEL, "its base had no"),
    (lambda a, b: labels_of(a).update({TOP_LAYER_LABEL: h("diff-other")}), TOP_LAYER_LABEL, "not among its layers"),
    (lambda a, b: b.config.update({"architecture": "arm64"}), "architecture", "'amd64'"),
    (lambda a, b: a.manifest["layers"].pop(), "rootfs.diff_ids", "manifest has 4 layers, its config 5"),
])
def test_each_refusal(change, field, words):
    a, b = agent(), new_base()
    change(a, b)
    with pytest.raises(RebaseError) as info:
        rebase(a, b, image_ref="r/a:1", base_ref="r/base:new", base_name="r/base")
    assert info.value.field == field and words in info.value.message, info.value.message


def test_abi_label_round_trip_and_base_labels():
    assert parse_abi(abi_label(ABI)) == ABI
    labels = base_labels("127.0.0.1:5000/agent-image.base:py3.11",
                         ("127.0.0.1:5000/agent-image.base@sha256:" + "a" * 64, "other/repo@sha256:" + "b" * 64),
                         ("sha256:1", "sha256:2"))
    assert labels == {"org.opencontainers.image.base.name": "127.0.0.1:5000/agent-image.base:py3.11",
                      "org.opencontainers.image.base.digest": "sha256:" + "a" * 64, TOP_LAYER_LABEL: "sha256:2"}
    pinned = base_labels("r:5/b@sha256:" + "c" * 64, (), ("sha256:9",))
    assert pinned["org.opencontainers.image.base.name"] == "r:5/b"
    assert pinned["org.opencontainers.image.base.digest"] == "sha256:" + "c" * 64


def test_parse_ref():
    r = parse_ref("127.0.0.1:5000/agents/a:1.0")
    assert (r.host, r.repo, r.tag, r.digest, r.reference) == ("127.0.0.1:5000", "agents/a", "1.0", None, "1.0")
    d = parse_ref("reg.example/x/agent-image.base@sha256:" + "0" * 64)
    assert d.tag is None and d.reference == d.digest and d.with_digest("sha256:1") == "reg.example/x/agent-image.base@sha256:1"
    assert parse_ref("localhost/a").tag == "latest"
    for bad in ("agents/a:1", "a", "127.0.0.1:5000/a@sha256:zz"):
        with pytest.raises(RegistryError):
            parse_ref(bad)


def test_docker_config_credentials(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "reg.example:5000": {"auth": base64.b64encode(b"ci:pa:ss").decode()},
        "https://other.example": {"username": "u", "password": "p"}}}))
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert docker_config_auth("reg.example:5000", env) == {"username": "ci", "password": "pa:ss"}
    assert docker_config_auth("other.example", env) == {"username": "u", "password": "p"}
    assert docker_config_auth("nobody.example", env) is None


def test_the_tag_list_is_read_page_by_page_on_this_host_only():
    """A registry pages a long tag list (Link rel="next"): every page is read, so a near twin sees every
    dependency image; a next link to another host or another list is not followed."""
    from builder.ship.client import RegistryClient
    from tests.support.httpserver import Server

    def page(tags, nxt=None):
        return (200, {"Content-Type": "application/json", **({"Link": f'<{nxt}>; rel="next"'} if nxt else {})},
                json.dumps({"name": "r", "tags": tags}).encode())

    srv = Server()
    try:
        host = srv.base.split("://", 1)[1]
        srv.routes["/v2/r/tags/list"] = page(["b", "a"], "/v2/r/tags/list?last=b&n=2")
        srv.routes["/v2/r/tags/list?last=b&n=2"] = page(["c", "d"], f"http://{host}/v2/r/tags/list?last=d&n=2")
        srv.routes["/v2/r/tags/list?last=d&n=2"] = page(["e"], "http://elsewhere.example/v2/r/tags/list?last=e")
        srv.routes["/v2/s/tags/list"] = page(["x"], "/v2/r/tags/list?last=b&n=2")  # another list: not followed
        client = RegistryClient(host, auth={})
        assert client.tags("r") == ["a", "b", "c", "d", "e"]
        assert client.tags("s") == ["x"]
        assert client.tags("r", pages=2) == ["a", "b", "c", "d"]
        assert client.tags("none") == []
    finally:
        srv.close()
    assert not [p for p in srv.paths() if "elsewhere" in p]
