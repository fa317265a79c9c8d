"""The near twin's dependency step, run INSIDE the build sandbox by builder/build/delta.py.

Not imported by the builder (only its pure ``choose`` is, by the tests): the file itself goes
into the build context and runs there as ``python -I`` with the base's venv, started before
anything is installed. No code of what it installs runs in the step: the proxy serves it wheels
alone (an sdist's build would run its code; pip fails instead, and the image is built whole),
installing a wheel runs none, and no interpreter starts after the install (a .pth would run).

1. pip (the step's own pip, same flags) resolves the lines with ``--dry-run --report``: the
   reading of the program that would install them decides what the set is.
2. Of the pushed dependency images of this family (same base, index, installer, builder),
   the one whose every distribution is in that set at the same version, requested the same
   way, and which holds the most of it, is the sibling (``choose``).
3. Only what the sibling lacks is installed, ``--no-deps`` at the resolved versions, and
   compiled as the dependency step compiles; the new distributions must not change what the
   package step sees (builder/core/depsenv.py's record, taken before and after).
4. Their files, the merged listing and requested names, and the lines' files go into one tar
   (OUT/layer.tar, real mtimes: the .pyc files name their sources' times); OUT/result.json
   says which sibling. Anything else: result.json says why not, and nothing is installed.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile

SPEC = "/opt/agent-image/delta/spec.json"
OUT = "/opt/agent-image/delta-out"
DEPS_DIR = "/opt/agent-image/deps"
VENV = "/opt/venv/"


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def choose(want: dict[str, tuple[str, bool]], hashes: dict[str, str], base: dict[str, str],
           siblings: list[dict]) -> tuple[dict | None, dict[str, str]]:
    """The sibling holding the most of WANT ({name: (version, requested)}, from wheels HASHES
    {name: sha256}), and its own distributions ({name: version}, the base's left out); (None, {})
    when none fits. A sibling fits when each of its distributions is wanted at its version, from
    the same wheel, and requested as it was."""
    best: tuple[dict | None, dict[str, str]] = (None, {})
    for sib in siblings:
        own = {canon(k): v for k, v in sib["dists"].items() if base.get(canon(k)) != v}
        requested, theirs = {canon(n) for n in sib["requested"]}, {canon(k): v for k, v in sib["hashes"].items()}
        if not own or any(k in base for k in own):
            continue  # nothing of the set, or it replaced a distribution of the base
        if set(theirs) != set(own):
            continue  # it installed a wheel its listing does not show (one that rewrote its own metadata)
        if any(want.get(k) is None or want[k][0] != v or want[k][1] != (k in requested) or theirs[k] != hashes[k]
               for k, v in own.items()):
            continue
        if len(own) > len(best[1]):
            best = (sib, own)
    return best


def _run_text(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<agent-image>", "exec"), {"__name__": "__agent_image__"})  # noqa: S102 (ours)
    return out.getvalue()


def _dists() -> dict[str, str]:
    from importlib import metadata
    return {canon(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def _files(name: str) -> list[str]:
    """Every file distribution NAME installed (its RECORD), under the venv, absolute."""
    from importlib import metadata
    dist = metadata.distribution(name)
    paths = []
    for f in dist.files or []:
        p = os.path.normpath(str(dist.locate_file(f)))
        if not p.startswith(VENV):
            raise ValueError(f"{name} installs {p}, outside {VENV}")
        paths.append(p)
    return paths


def _unrequest(name: str) -> None:
    """pip marks every name it is given REQUESTED (the file, and its RECORD line); the whole set's own
    pass marks only the lines' names: a distribution they pulled in loses both."""
    from importlib import metadata
    dist = metadata.distribution(name)
    for f in dist.files or []:
        if f.name == "REQUESTED" and f.parent.name.endswith(".dist-info"):
            record = dist.locate_file(f.parent / "RECORD")
            lines = open(record, newline="").read().splitlines(keepends=True)
            with open(record, "w", newline="") as out:
                out.writelines(ln for ln in lines if not ln.startswith(f"{f.as_posix()},"))
            os.unlink(dist.locate_file(f))


def _say(result: dict) -> int:
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(result, f)
    print("agent-image delta:", result.get("why") or f"on {result['sibling']}, {len(result['new'])} new")
    return 0


def main() -> int:
    spec = json.load(open(SPEC))
    base, before = _dists(), _run_text(spec["fingerprint"])
    report_path = "/tmp/.agent-image-delta-report.json"
    cmd = f"{spec['install']} --dry-run --quiet --report {report_path} {spec['args']}"
    if subprocess.run(["sh", "-c", cmd]).returncode != 0:
        return _say({"why": "pip could not resolve the lines (the full step will say why)"})
    want: dict[str, tuple[str, bool]] = {}
    hashes: dict[str, str] = {}
    for item in json.load(open(report_path)).get("install") or []:
        name, info = canon(item["metadata"]["name"]), item.get("download_info") or {}
        url = (info.get("url") or "").split("#", 1)[0]
        if item.get("is_direct") or "archive_info" not in info or not url.endswith(".whl"):
            return _say({"why": f"{name} is not a wheel from the index"})
        if name in base:
            return _say({"why": f"{name} replaces the base's own"})
        digest = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256", "")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return _say({"why": f"pip's report gives no sha256 for {name}'s wheel"})
        want[name], hashes[name] = (item["metadata"]["version"], bool(item.get("requested"))), digest
    sibling, own = choose(want, hashes, base, spec["siblings"])
    if sibling is None:
        return _say({"why": "no pushed dependency image holds a part of this set"})
    new = sorted(set(want) - set(own))
    if new:  # each the very file the resolve chose: pinned by its hash (pip checks every one then)
        pins = "/tmp/.agent-image-delta-pins.txt"
        with open(pins, "w") as f:
            f.writelines(f"{n}=={want[n][0]} --hash=sha256:{hashes[n]}\n" for n in new)
        if subprocess.run(["sh", "-c", f"{spec['install']} --quiet --no-deps --only-binary :all: -r {pins}"]).returncode:
            return _say({"why": "pip could not install the new distributions"})
    if _dists() != {**base, **{n: want[n][0] for n in new}}:  # (a wheel may carry another's dist-info)
        return _say({"why": "the venv does not hold exactly the base and the new distributions"})
    if _run_text(spec["fingerprint"]) != before:
        return _say({"why": "a new distribution changes what the package step sees (tools, .pth, hooks)"})
    for name in new:
        if not want[name][1]:
            _unrequest(name)
    files: set[str] = set()
    for name in new:
        for path in _files(name):
            if path.endswith(".py") and path.startswith(VENV + "lib/"):
                compileall.compile_file(path, quiet=2)
                cached = importlib.util.cache_from_source(path)
                if os.path.exists(cached):
                    files.add(cached)
            if os.path.lexists(path):
                files.add(path)
    listing = {canon(e[0]): e for e in sibling["listing"]}
    listing.update({canon(e[0]): e for e in json.loads(_run_text(spec["list_code"]))})
    # as the dependency step writes it (REQUESTED_CODE): this venv's, and the sibling's own
    requested = sorted(set(json.loads(_run_text(spec["requested_code"])))
                       | {k for k in own if want[k][1]})
    os.makedirs(OUT, exist_ok=True)
    with tarfile.open(os.path.join(OUT, "layer.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path in files:
            parent = os.path.dirname(path)
            while parent not in ("/", ""):
                dirs.add(parent)
                parent = os.path.dirname(parent)
        for path in sorted(dirs | files):
            tar.add(path, arcname=path.lstrip("/"), recursive=False)
        opaque = tarfile.TarInfo(DEPS_DIR.lstrip("/") + "/.wh..wh..opq")  # the sibling's lines go
        tar.addfile(opaque, io.BytesIO(b""))
        for name in sorted(os.listdir(DEPS_DIR)):
            tar.add(os.path.join(DEPS_DIR, name), arcname=f"{DEPS_DIR.lstrip('/')}/{name}")
        for path, data in ((spec["dists_path"], json.dumps(sorted(listing.values()))),
                           (spec["requested_path"], json.dumps(requested)),
                           (spec["wheels_path"], json.dumps(dict(sorted(hashes.items()))))):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data.encode()), 0o644
            tar.addfile(info, io.BytesIO(data.encode()))
    return _say({"sibling": sibling["ref"], "new": [f"{n}=={want[n][0]}" for n in new],
                 "kept": len(own)})


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 (the full step runs instead, and says what is wrong)
        sys.exit(_say({"why": f"{type(exc).__name__}: {str(exc)[:300]}"}))
