"""Issue 27: what `agent-image prune` removes, decided from an engine inventory (pure: no engine)."""

from __future__ import annotations

import pytest

from builder.build.prune import FAILED_KIND, Item, Policy, plan
from builder.core.labels import ABI_LABEL, AGENT_NAME_LABEL, DEPS_LABEL, INPUT_LABEL
from builder.core.units import parse_bytes, parse_duration
from builder.ship.pushpull import tag_refused

MB = 1024 * 1024
NOW = 1_000_000.0


def img(id_, parent="", size=0, tags=(), labels=None, created=0):
    return {"id": f"sha256:{id_}", "parent": f"sha256:{parent}" if parent else "", "size": size,
            "created": created, "labels": dict(labels or {}), "tags": list(tags)}


def engine_of(*extra):
    """base (100 MB) <- deps (+30 MB, tagged) <- agent a1 (+2), agent a2 (+3); another team's image on the base."""
    base_labels = {ABI_LABEL: "distro=debian:12"}
    deps = {**base_labels, DEPS_LABEL: "k1"}
    return [
        img("base", size=100 * MB, tags=["agent-image/base:py3.11"], labels=base_labels, created=1),
        img("d0", "base", 110 * MB, labels=base_labels),                       # the deps build's COPY step
        img("deps", "d0", 130 * MB, tags=["reg/t/agent-image.deps:deps-k1"], labels=deps, created=10),
        img("a1", "deps", 132 * MB, tags=["reg/t/one:1", "reg/t/one:latest"],
            labels={**deps, INPUT_LABEL: "i1", AGENT_NAME_LABEL: "one"}, created=20),
        img("a2", "deps", 133 * MB, tags=["reg/t/two:1"],
            labels={**deps, INPUT_LABEL: "i2", AGENT_NAME_LABEL: "two"}, created=30),
        img("other", "base", 150 * MB, tags=["someone/else:1"], labels={**base_labels, INPUT_LABEL: "x"}, created=5),
        *extra,
    ]


def run(images, policy=Policy(scope=("reg/t/",)), in_use=(), leases=(), stamps=None, files=(), protect=()):
    return plan(images, set(in_use), list(leases), stamps or {}, list(files), policy, now=NOW, protect=set(protect))


def ids(outcome):
    return [i.id.split(":", 1)[-1] if i.id.startswith("sha256:") else i.id for i in outcome.removed]


def test_everything_in_scope_goes_least_recently_used_first_and_parents_after_their_children():
    out = run(engine_of())
    assert ids(out) == ["a1", "a2", "deps"], "the dependency image waits for the agents built on it"
    # the scope's own bytes: the deps image's layers (30 MB, COPY step included) and each agent's
    assert out.usage_before == 35 * MB and out.usage_after == 0
    assert [i.bytes for i in out.removed] == [2 * MB, 3 * MB, 30 * MB]


def test_the_base_and_other_scopes_are_never_candidates():
    out = run(engine_of(), policy=Policy())  # no scope: every agent-image image, still never the base
    assert "base" not in ids(out) and "d0" not in ids(out)
    assert set(ids(out)) == {"a1", "a2", "deps", "other"}
    scoped = run(engine_of())
    assert "other" not in ids(scoped)


def test_a_budget_stops_once_under_it():
    out = run(engine_of(), policy=Policy(max_bytes=31 * MB, scope=("reg/t/",)))
    assert ids(out) == ["a1", "a2"] and out.usage_after == 30 * MB
    # the agents' bytes alone do not bring it under 29 MB: the dependency image goes too
    assert ids(run(engine_of(), policy=Policy(max_bytes=29 * MB, scope=("reg/t/",)))) == ["a1", "a2", "deps"]


def test_last_use_comes_from_stamps_before_creation_time():
    stamps = {"sha256:a1": (500.0, {"refs": ["reg/t/one:1"]})}
    out = run(engine_of(), policy=Policy(max_bytes=33 * MB, scope=("reg/t/",)), stamps=stamps)
    assert ids(out) == ["a2"], "a1 was used after a2 was built"


def test_in_use_leased_and_kept_images_stay():
    out = run(engine_of(), in_use={"sha256:a1"}, leases=[{"repos": ["reg/t/two"], "refs": [], "ids": []}])
    assert ids(out) == [] and out.kept == {"in-use": 1, "leased": 1, "parent": 1}
    out = run(engine_of(), leases=[{"repos": [], "refs": ["reg/t/agent-image.deps:deps-k1"], "ids": []}])
    assert ids(out) == ["a1", "a2"] and out.kept["leased"] == 1
    out = run(engine_of(), policy=Policy(keep=1, scope=("reg/t/",)))
    assert ids(out) == [] and out.kept["keep"] == 2
    assert ids(run(engine_of(), protect={"sha256:a2"})) == ["a1"]


def test_older_than_keeps_what_was_used_recently():
    images = engine_of()
    stamps = {"sha256:a2": (NOW - 60, {"refs": []})}
    out = run(images, policy=Policy(older_than=3600, scope=("reg/t/",)), stamps=stamps)
    assert ids(out) == ["a1"] and out.kept["recent"] == 1


def test_a_layer_another_scope_shares_is_not_counted_or_freed():
    # another team's image built on our dependency image's chain: the chain is theirs too
    extra = img("theirs", "deps", 140 * MB, tags=["someone/else:2"], labels={INPUT_LABEL: "y"})
    out = run(engine_of(extra))
    assert out.usage_before == 5 * MB and ids(out) == ["a1", "a2"]
    assert out.kept["parent"] == 1


def test_files_and_failed_builds_take_their_place_in_the_order():
    failed = img("f1", "base", 101 * MB, labels={})
    stamps = {"short:f1": (15.0, {"refs": ["reg/t/one:1"], "kind": FAILED_KIND})}
    blob = Item(kind="download", id="/c/downloads/v2/sha256/x", refs=[], last_used=25.0, bytes=4 * MB)
    out = run(engine_of(failed), stamps=stamps, files=[blob])
    assert ids(out) == ["f1", "a1", "/c/downloads/v2/sha256/x", "a2", "deps"]
    assert out.usage_before == 40 * MB


def test_sizes_durations_and_immutable_tag_errors_parse():
    assert parse_bytes("150M") == 150 * MB and parse_bytes("2GiB") == 2 * 1024 ** 3 and parse_bytes("1000") == 1000
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90") == 90
    for bad in ("lots", "-1", "inf"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert tag_refused("tag invalid: The image tag '0.1.0' already exists in the 'team/agent' repository and cannot "
                       "be overwritten because the repository is immutable.")
    assert tag_refused("An error occurred (ImageTagAlreadyExistsException) when calling the PutImage operation")
    assert not tag_refused("denied: requested access to the resource is denied")
    assert not tag_refused("blob upload unknown")



def test_layers_an_interrupted_build_left_on_a_dependency_image_go_with_its_scope():
    orphan = img("o1", "deps", 131 * MB, created=12)  # a step an interrupted build committed: no tag, no label
    out = run(engine_of(orphan))
    assert ids(out) == ["o1", "a1", "a2", "deps"] and out.removed[0].bytes == MB
    # while a build in progress leases the dependency image, such layers may be its own steps: they stay
    leased = run(engine_of(orphan), leases=[{"repos": [], "refs": ["reg/t/agent-image.deps:deps-k1"], "ids": []}])
    assert "o1" not in ids(leased) and leased.kept["leased"] == 2
    # on the base (another scope's, or nobody's): never
    assert "o2" not in ids(run(engine_of(img("o2", "base", 101 * MB)), policy=Policy()))


def test_protected_bytes_are_the_floor_no_budget_goes_below():
    """What is leased or in use, and what it stands on, is the floor; a budget below it ends there."""
    leased = [{"refs": ["reg/t/one:1"]}]
    out = run(engine_of(), policy=Policy(max_bytes=0, scope=("reg/t/",)), leases=leased)
    assert out.protected_bytes == 32 * MB, "the leased agent (2 MB) and the dependency image it stands on (30 MB)"
    assert out.usage_after == 32 * MB and ids(out) == ["a2"]
    roomy = run(engine_of(), policy=Policy(max_bytes=34 * MB, scope=("reg/t/",)), leases=leased)
    assert roomy.protected_bytes == 32 * MB and roomy.usage_after == 32 * MB  # (a2 had to go: 35 > 34)
    free = run(engine_of(), policy=Policy(max_bytes=40 * MB, scope=("reg/t/",)))
    assert free.protected_bytes == 0 and free.removed == [] and free.usage_after == 35 * MB
