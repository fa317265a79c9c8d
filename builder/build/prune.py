"""`agent-image prune`: bound what builds leave on a runner, least recently used first.

What it may remove, and only that (its scope is explicit):
- agent images (the ``input-digest`` label) and dependency images (the
  ``deps-key`` label), with every tag they carry; the images a failed build
  committed (a stamp says so); with ``scope`` prefixes, only images whose
  every reference starts with one of them;
- the download cache's files, crash files, partial downloads of dead builds,
  and build sandboxes whose builder is gone.

What it never removes: a base image (no agent-image label of its own), an
image any container uses (running or stopped), an image a build in progress
leased (builder/build/usage.py), an image with other images built on it (it
goes once they are gone: Docker removes an untagged parent with its last
child), the ``keep`` most recently used images of each agent.

The bytes are counted as Docker stores them: each image's own layers are its
size minus its parent's (the classic builder records the parent), and a layer
shared with an image outside the scope (the base, another team's) is not
ours to count or to free. An image pulled from a registry has no parent: its
own bytes are estimated as its size minus its base's.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import structlog

from builder.build.engine import Engine
from builder.build.proxy.cache import DownloadCache
from builder.build.sandbox import remove_stale
from builder.build.usage import STAMPS, lease_lock, live_leases, read_stamps, stamp_of
from builder.core.errors import PackageLoadError
from builder.core.labels import ABI_LABEL, AGENT_NAME_LABEL, DEPS_LABEL, INPUT_LABEL

log = structlog.get_logger("agent_image.prune")

FAILED_KIND = "failed-build"  # usage.touch_used(kind=...) for what a failed build committed


@dataclass
class Item:
    """One thing prune may remove."""
    kind: str                 # agent-image | deps-image | failed-build | download | crash
    id: str                   # image id, or file path
    refs: list[str]
    last_used: float
    bytes: int = 0            # what removing it freed (or would free, in a dry run)
    agent: str = ""
    on: list[str] = field(default_factory=list)  # an orphan layer: the references of the image it stands on


@dataclass
class Outcome:
    dry_run: bool
    removed: list[Item] = field(default_factory=list)
    usage_before: int = 0
    usage_after: int = 0
    # what no budget could free at that moment: images in use, leased or protected, those --keep or
    # --older-than keep, and what they stand on. After a prune, usage_after <= max(max_bytes, this).
    protected_bytes: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # why things stayed: in-use, leased, keep, recent, parent
    failed: list[str] = field(default_factory=list)
    sandboxes_removed: int = 0
    partial_downloads_removed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["freed_bytes"] = sum(i.bytes for i in self.removed)
        return d


@dataclass(frozen=True)
class Policy:
    max_bytes: int | None = None     # stop once the scope's bytes are at most this
    keep: int = 0                    # each agent's most recently used images that stay
    older_than: float | None = None  # seconds: only what was last used before now - this
    scope: tuple[str, ...] = ()      # reference prefixes; empty: every agent-image image on the engine


def _in_scope(refs: list[str], scope: tuple[str, ...]) -> bool:
    return not scope or (bool(refs) and all(any(r.startswith(p) for p in scope) for r in refs))


def _kind(img: dict, stamp: dict | None) -> str | None:
    labels = img["labels"]
    if INPUT_LABEL in labels:
        return "agent-image"
    if DEPS_LABEL in labels:
        return "deps-image"
    if stamp is not None and stamp.get("kind") == FAILED_KIND and ABI_LABEL not in labels:
        return FAILED_KIND
    return None  # a base, or nothing of ours


def _leased(img: dict, leases: list[dict], on: list[str] = ()) -> bool:
    for lease in leases:
        if any(r in lease.get("refs", ()) or r.rsplit(":", 1)[0] in lease.get("repos", ()) for r in on):
            return True
        if img["id"] in lease.get("ids", ()) or any(t in lease.get("refs", ()) for t in img["tags"]):
            return True
        if any(t.rsplit(":", 1)[0] in lease.get("repos", ()) for t in img["tags"]):
            return True
    return False


class _Graph:
    """The engine's images as Docker deletes them: a tag goes, then an image with no tag and no child,
    then its parent if that leaves it with neither."""

    def __init__(self, images: list[dict], in_use: set[str]) -> None:
        self.nodes = {i["id"]: i for i in images}
        self.tags = {i["id"]: set(i["tags"]) for i in images}
        self.children = {i["id"]: 0 for i in images}
        for i in images:
            if i["parent"] in self.nodes:
                self.children[i["parent"]] += 1
        self.in_use = in_use
        bases = sorted((i["size"] for i in images if ABI_LABEL in i["labels"]
                        and INPUT_LABEL not in i["labels"] and DEPS_LABEL not in i["labels"]), reverse=True)
        self._bases = bases

    def own(self, node_id: str) -> int:
        img = self.nodes[node_id]
        parent = self.nodes.get(img["parent"])
        if parent is not None:
            return max(0, img["size"] - parent["size"])
        below = next((b for b in self._bases if b <= img["size"]), 0)  # pulled: above its base
        return max(0, img["size"] - below)

    def chain(self, node_id: str) -> list[str]:
        out = []
        while node_id in self.nodes and node_id not in out:
            out.append(node_id)
            node_id = self.nodes[node_id]["parent"]
        return out

    def remove(self, node_id: str) -> dict[str, int]:
        """Untag NODE_ID and delete what Docker would: {deleted id: its own bytes}."""
        self.tags[node_id] = set()
        gone = {}
        while (node_id in self.nodes and not self.tags[node_id] and self.children[node_id] == 0
               and node_id not in self.in_use):
            gone[node_id] = self.own(node_id)
            parent = self.nodes.pop(node_id)["parent"]
            if parent not in self.nodes:
                break
            self.children[parent] -= 1
            node_id = parent
        return gone


def plan(images: list[dict], in_use: set[str], leases: list[dict], stamps: dict[str, tuple[float, dict]],
         files: list[Item], policy: Policy, *, now: float, protect: set[str] = frozenset(),
         dry_run: bool = True) -> Outcome:
    """What goes (in order) and what it frees: a pure function of the engine's inventory, the
    leases, the stamps and the cache's files."""
    out = Outcome(dry_run=dry_run)
    graph = _Graph(images, in_use)
    ours, kept = {}, out.kept
    for img in images:
        stamp = stamp_of(stamps, img["id"])
        kind = _kind(img, stamp[1] if stamp else None)
        refs = img["tags"] or (stamp[1].get("refs", []) if stamp else [])
        if kind is None or not _in_scope(refs, policy.scope) or (not img["tags"] and graph.children[img["id"]]):
            continue  # not ours, out of scope, or an intermediate image (it goes with its children)
        ours[img["id"]] = Item(kind=kind, id=img["id"], refs=sorted(refs),
                               last_used=stamp[0] if stamp else float(img["created"]),
                               agent=f"{refs[0].rsplit(':', 1)[0] if refs else ''}|"
                                     f"{img['labels'].get(AGENT_NAME_LABEL, '')}")
    _orphans(images, graph, ours)
    shared = {n for i in images if i["id"] not in ours and (i["tags"] or graph.children[i["id"]] == 0)
              for n in graph.chain(i["id"])}
    mine = {n for i in ours for n in graph.chain(i)} - shared
    usage = sum(graph.own(n) for n in mine) + sum(f.bytes for f in files)
    out.usage_before = usage
    candidates = []
    by_agent: dict[str, list[Item]] = {}
    for item in ours.values():
        img = graph.nodes[item.id]
        why = ("in-use" if item.id in in_use or item.id in protect else
               "leased" if _leased(img, leases, item.on) else None)
        if why:
            kept[why] = kept.get(why, 0) + 1
            continue
        if item.kind == "agent-image":
            by_agent.setdefault(item.agent, []).append(item)
        else:
            candidates.append(item)
    for group in by_agent.values():
        group.sort(key=lambda i: i.last_used, reverse=True)
        if policy.keep:
            kept["keep"] = kept.get("keep", 0) + len(group[:policy.keep])
        candidates += group[policy.keep:]
    candidates += files
    if policy.older_than is not None:
        recent = [c for c in candidates if c.last_used > now - policy.older_than]
        if recent:
            kept["recent"] = len(recent)
        candidates = [c for c in candidates if c.last_used <= now - policy.older_than]
    candidates.sort(key=lambda c: c.last_used)
    # the floor: what is left once every candidate went (a copy of the graph and of the items)
    out.protected_bytes = _choose(_Graph(images, in_use), [replace(c) for c in candidates], mine, usage, Policy(),
                                  Outcome(dry_run=True))
    usage = _choose(graph, candidates, mine, usage, policy, out)
    out.usage_after = usage
    return out


def _orphans(images: list[dict], graph: _Graph, ours: dict[str, Item]) -> None:
    """Layers an interrupted or killed build committed on one of OURS (a dependency image): untagged,
    nothing built on them, no stamp. They belong to the scope of the image they stand on (and stay
    while it is leased: a build in progress commits such layers between its steps)."""
    for img in images:
        if img["tags"] or img["id"] in ours or graph.children[img["id"]]:
            continue
        for above in graph.chain(img["id"])[1:]:
            if graph.nodes[above]["tags"]:
                if above in ours:
                    owner = ours[above]
                    ours[img["id"]] = Item(kind=FAILED_KIND, id=img["id"], refs=[], last_used=float(img["created"]),
                                           agent=owner.agent, on=owner.refs)
                break


def _choose(graph: _Graph, candidates: list[Item], mine: set[str], usage: int, policy: Policy,
            out: Outcome) -> int:
    """Least recently used first; an image with images on it waits for them (more passes)."""
    pending, progress = list(candidates), True
    while pending and progress:
        progress, waiting = False, []
        for item in pending:
            if policy.max_bytes is not None and usage <= policy.max_bytes:
                return usage
            if item.kind in ("download", "crash"):
                usage -= item.bytes
            elif graph.children.get(item.id, 0):
                waiting.append(item)
                continue
            else:
                item.bytes = sum(size for n, size in graph.remove(item.id).items() if n in mine)
                usage -= item.bytes
            out.removed.append(item)
            progress = True
        pending = waiting
    if pending:
        out.kept["parent"] = len(pending)
    return usage


def cache_files(cache_dir: Path) -> list[Item]:
    """The download cache's blobs and the crash files, with their sizes and last use (mtime)."""
    out = []
    for kind, folder in (("download", Path(cache_dir) / "downloads" / "v2" / "sha256"),
                         ("crash", Path(cache_dir) / "crashes")):
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if entry.is_file():
                out.append(Item(kind=kind, id=entry.path, refs=[], last_used=st.st_mtime, bytes=st.st_size))
    return out


def prune(engine: Engine, cache_dir: Path, policy: Policy, *, dry_run: bool = False,
          protect: set[str] = frozenset(), now: float | None = None) -> Outcome:
    """Decide and remove under the lease lock: no build can start using an image in between."""
    now = time.time() if now is None else now
    parts = 0
    if not dry_run and (Path(cache_dir) / "downloads").is_dir():
        parts = DownloadCache(Path(cache_dir) / "downloads").parts_removed  # (it cleans them as it opens)
    with lease_lock():
        leases = live_leases(remove_dead=not dry_run)
        listed = time.time()
        images, in_use = engine.inventory()
        out = plan(images, in_use, leases, read_stamps(cache_dir), cache_files(cache_dir), policy, now=now,
                   protect=set(protect), dry_run=dry_run)
        if not dry_run:
            _execute(engine, out)
    out.partial_downloads_removed = parts
    if not dry_run:
        gone = {i.id for i in out.removed}
        _forget_gone(cache_dir, {i["id"] for i in images if i["id"] not in gone}, listed)
        if not policy.scope:  # (with a scope, only what the scope names is touched)
            out.sandboxes_removed = remove_stale(engine)
    log.info("Pruned" if not dry_run else "Prune (dry run)", removed=len(out.removed),
             freed_bytes=sum(i.bytes for i in out.removed), usage_before=out.usage_before,
             usage_after=out.usage_after, protected_bytes=out.protected_bytes, max_bytes=policy.max_bytes,
             kept=out.kept)
    return out


def _execute(engine: Engine, out: Outcome) -> None:
    done = []
    for item in out.removed:
        try:
            if item.kind in ("download", "crash"):
                Path(item.id).unlink(missing_ok=True)
            else:
                for ref in item.refs:
                    now_at = engine.image(ref)
                    if now_at is not None and now_at.id == item.id:  # (a stamp's ref may have moved on)
                        engine.remove_image(ref)
                if engine.image(item.id) is not None:
                    engine.remove_image(item.id)
            done.append(item)
        except (OSError, PackageLoadError) as exc:  # in use after all, or gone: it stays, reported
            out.failed.append(f"{item.id}: {str(exc)[:200]}")
    out.usage_after += sum(i.bytes for i in out.removed if i not in done)
    out.removed = done


def _forget_gone(cache_dir: Path, ids: set[str], listed: float) -> None:
    """Stamps and fences of images the engine no longer has (IDS: those it had when LISTED; a file
    written since may be a build's that finished after: it stays)."""
    present = {i.split(":", 1)[-1] for i in ids}
    present |= {f"short-{p[:12]}" for p in present}
    for sub in (STAMPS, "fences"):
        folder = Path(cache_dir) / sub
        for entry in os.scandir(folder) if folder.is_dir() else ():
            if not entry.name.startswith(".") and entry.name not in present and entry.stat().st_mtime < listed:
                Path(entry.path).unlink(missing_ok=True)


def after_build(engine: Engine, options, reached: list[str], leases=()) -> Outcome | None:
    """The budget applied after a build (BuildOptions.prune_max_bytes, --prune-max-bytes) that
    reached the engine (REACHED not empty), a cancelled one too, keeping the image it made or reused.
    The build's LEASES are narrowed to that image first (its repository's other images become
    prunable) and released by the caller after: its images are never unleased and unpruned at once.
    Never fails the build."""
    if options is None or options.prune_max_bytes is None or not reached:
        return None
    mine = [i for i in reached if i]
    for lease in leases:
        lease.narrow(ids=mine)
    try:
        return prune(engine, options.cache_dir, Policy(max_bytes=options.prune_max_bytes, scope=options.prune_scope),
                     protect=set(mine))
    except (OSError, PackageLoadError) as exc:
        log.warning("could not apply the prune budget after the build", reason=str(exc)[:300])
        return None
