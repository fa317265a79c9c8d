"""The agent's own layers and config, made without an engine, from the Dockerfile FROM its dependency image.

A CI runner starts with an empty engine. When the registry already holds the
dependency image for this agent's lines, the agent image is that image plus
the agent's steps (templates/agent.Dockerfile.j2 after ``#> step config``):
ENV, LABEL, USER and VOLUME (config only), ``COPY`` of files from the build context,
and two RUN steps. This module interprets that rendered Dockerfile (the one
the engine would build) step by step and refuses anything it cannot produce
exactly: the package step's ``pip install -e /app`` only in the cases
builder/build/editable.py knows, the install step only when it is the
``if [ -e <mark> ]`` no-op (the package step here never leaves the mark, and the
caller has checked the dependency image's record that its lines did not),
any other RUN never. A refusal is a reason; the caller then builds with the
engine in the sandbox, as before.

Layers are uncompressed tars as the engine's COPY and RUN would diff them:
owner 0:0, the context's modes (files 0644/0755, directories 0755), parents
included. The registry side (builder/ship/append.py) compresses and pushes them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import re
import tarfile
from dataclasses import dataclass, field

from builder.build import editable
from builder.core.labels import ABI_LABEL, parse_abi
from builder.plan.dockerfile import DISTS_PATH, LIST_DISTS, Rendered

MARK = "/opt/agent-image/installed-after-code"
_STAMP, _REPORT = "/tmp/.agent-image-stamp", "/tmp/.agent-image-report.json"
_COMPILE = (f" && {{ find /opt/venv/lib -name '*.py' -newer {_STAMP} -print0 | xargs -0 -r -n 256 -P 4 "
            f"python -m compileall -qq || :; }} && rm -f {_STAMP}")
_ONLY_APP = ("python -c \"import json, sys; sys.exit(any(i['download_info']['url'] != 'file:///app' for i in "
             f"json.load(open('{_REPORT}'))['install']))\"")


def _package_run(early: str) -> str:
    return (f"RUN touch {_STAMP} && if {early}; then :; else echo \"agent-image: this package needs its code to "
            f"install; installing after the code\"; touch {MARK}; fi{_COMPILE} && {LIST_DISTS}")


# The package step exactly as templates/agent.Dockerfile.j2 renders it with pip, in the two forms
# whose effect editable.plan knows: the package alone, and the package then requirements.txt
# skipped because the first pass installed nothing else (editable.plan requires every
# install_requires to be among the dependency lines). Any other text (a changed template, uv,
# one pass for both) is refused: the engine runs it. (tests/unit/test_assemble_pure.py renders
# the template and checks both are recognised.)
PACKAGE_RUNS = (
    _package_run("pip install --no-compile -e /app"),
    _package_run(f"pip install --no-compile -e /app --report {_REPORT} && {{ {_ONLY_APP} || "
                 f"pip install --no-compile -r /app/requirements.txt; }} && rm -f {_REPORT}"),
)
INSTALL_RUN = f"RUN if [ -e {MARK} ]; then "
META = ".agent-image/meta/"


@dataclass
class Layer:
    blob: bytes          # the gzipped tar, as uploaded
    diff_id: str         # sha256 of the uncompressed tar
    created_by: str

    @classmethod
    def of(cls, tar: bytes, created_by: str) -> "Layer":
        return cls(gzip.compress(tar, compresslevel=6, mtime=0), "sha256:" + hashlib.sha256(tar).hexdigest(),
                   created_by)

    @property
    def tar(self) -> bytes:
        """The uncompressed tar (for reading; the layer is kept compressed)."""
        return gzip.decompress(self.blob)


class _Sink(io.RawIOBase):
    """Where a layer's tar is written: hashed (the diff_id) and gzipped as it goes, never held whole."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.sha = hashlib.sha256()
        self.gz = gzip.GzipFile(fileobj=self.out, mode="wb", compresslevel=6, mtime=0)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        self.gz.write(data)
        return len(data)


class _View(io.RawIOBase):
    """A file's bytes in the build context, read in pieces (no copy of the whole file)."""

    def __init__(self, data) -> None:
        self.data, self.pos = memoryview(data), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out, self.pos = bytes(self.data[self.pos:end]), end
        return out


@dataclass
class Assembly:
    """What the agent's steps add to the dependency image: layers, and the config they leave."""
    layers: list[Layer] = field(default_factory=list)
    env: list[str] = field(default_factory=list)       # the whole ENV list, Docker's KEY=VALUE order
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    volumes: list[str] = field(default_factory=list)   # VOLUME paths the agent's steps declare (config only)
    history: list[dict] = field(default_factory=list)  # one entry per instruction (empty_layer when none)
    editable: str = ""                                 # the package the package step installs, if any
    dists: str = ""                                    # the image's DISTS_PATH listing (JSON) after these steps


def words(args: str) -> list[str]:
    """A Dockerfile ENV/LABEL argument list as the builder splits it: spaces part words,
    double quotes group, a backslash takes the next character. A bare $ is refused
    (substitution is not modelled; the template escapes every $ it writes)."""
    out, cur, quoted, i, started = [], [], False, 0, False
    while i < len(args):
        ch = args[i]
        if ch == "\\" and i + 1 < len(args):
            # (Docker's lexer: in double quotes only \", \$ and \\ are escapes; elsewhere any character is)
            cur.append(args[i + 1] if not quoted or args[i + 1] in '"$\\' else ch + args[i + 1])
            i, started = i + 2, True
            continue
        if ch == "$":
            raise ValueError("a $ substitution")
        if ch == "'" and not quoted:
            raise ValueError("a single-quoted word")  # (the template quotes every value with ")
        if ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                out.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(ch)
            started = True
        i += 1
    if quoted:
        raise ValueError("an unterminated quote")
    if started:
        out.append("".join(cur))
    return out


def pairs(args: str) -> list[tuple[str, str]]:
    out = []
    for word in words(args):
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise ValueError(f"{word!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def context_files(context: bytes) -> dict[str, tuple[tarfile.TarInfo, memoryview]]:
    """The build context's entries by name (files and links; the context has no other kind).
    A file's bytes are a view into CONTEXT (the context is an uncompressed tar): nothing is copied."""
    out = {}
    whole = memoryview(context)
    with tarfile.open(fileobj=io.BytesIO(context), mode="r:") as tar:
        for info in tar.getmembers():
            data = whole[info.offset_data:info.offset_data + info.size] if info.isfile() else whole[:0]
            if len(data) != (info.size if info.isfile() else 0):
                raise ValueError(f"the context's {info.name} is cut short")
            out[info.name.rstrip("/")] = (info, data)
    return out


def write_layer(files: dict[str, tuple[int, bytes, str]], created_by: str) -> Layer:
    """A layer of FILES {absolute path: (mode, bytes, link target or "")}, with every parent
    directory (0755, root); names sorted, owner 0:0, mtime 0: the same input, the same bytes.
    Streamed into gzip and the hash: only the compressed layer is held."""
    dirs = set()
    for path in files:
        parent = posixpath.dirname(path)
        while parent not in ("/", ""):
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted({*dirs, *files}):
            info = tarfile.TarInfo(path.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path in files:
                mode, data, link = files[path]
                if link:
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
                    tar.addfile(info)
                else:
                    info.mode, info.size = mode, len(data)
                    tar.addfile(info, _View(data))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
    sink.gz.close()
    return Layer(sink.out.getvalue(), "sha256:" + sink.sha.hexdigest(), created_by)


def copied(ctx: dict[str, tuple[tarfile.TarInfo, memoryview]], src: str,
           dest: str) -> dict[str, tuple[int, memoryview, str]]:
    """COPY SRC DEST of the context: a folder's contents (SRC ends in /) or one file."""
    out = {}
    if src.endswith("/"):
        for name, (info, data) in ctx.items():
            if name.startswith(src) and not info.isdir():
                out[posixpath.join(dest, name[len(src):])] = (info.mode & 0o7777, data, info.linkname)
    elif src in ctx:
        info, data = ctx[src]
        target = dest if not dest.endswith("/") else posixpath.join(dest, posixpath.basename(src))
        out[target] = (info.mode & 0o7777, data, info.linkname)
    if not out:
        raise ValueError(f"COPY {src}: nothing in the context")
    return out


def listed(deps_listing: str, name: str, version: str) -> str:
    """The listing LIST_DISTS writes after the package step's editable install of NAME==VERSION
    over DEPS_LISTING (the dependency image's): its rows plus the egg-info setuptools left in
    /app (no licence or classifiers, no direct_url.json, located at /app), sorted, as json.dump
    writes them. ValueError when the name is listed already (which row wins is pip's call)."""
    rows = json.loads(deps_listing)
    key = normalised(name)
    if any(normalised(str(r[0])) == key for r in rows):
        raise ValueError(f"{name} is a distribution of the dependency image too")
    return json.dumps(sorted([*rows, [name, version, "", [], None, "/app"]]))


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # (LIST_DISTS's key)


def assemble(rendered: Rendered, context: bytes, *, base_env: list[str], base_labels: dict[str, str],
             deps_text: str, deps_listing: str) -> Assembly | str:
    """The agent's steps of RENDERED (FROM its dependency image, whose listing is DEPS_LISTING)
    over a config with BASE_ENV and BASE_LABELS, or why the engine must build them."""
    abi = parse_abi(base_labels.get(ABI_LABEL))
    if not abi.get("venv") or not abi.get("python"):
        return f"the dependency image has no {ABI_LABEL} label with its venv and Python"
    site = f"{abi['venv']}/lib/python{abi['python']}/site-packages"
    ctx = context_files(context)
    out = Assembly(env=list(base_env), labels=dict(base_labels), dists=deps_listing)
    meta: dict[str, bytes] = {}
    files: dict | None
    try:
        for step, text in list(zip(rendered.steps, rendered.instructions))[1:]:  # after FROM
            op, _, args = text.partition(" ")
            op = op.upper()
            files, created = None, f"/bin/sh -c #(agent-image assemble) {text[:200]}"
            if op == "ARG":
                pass
            elif op == "ENV":
                for key, value in pairs(args):  # replaced where it stands, else appended (Docker's ENV)
                    at = [n for n, e in enumerate(out.env) if e.split("=", 1)[0] == key]
                    if at:
                        out.env[at[0]] = f"{key}={value}"
                    else:
                        out.env.append(f"{key}={value}")
            elif op == "LABEL":
                out.labels.update(pairs(args))
            elif op == "USER" and len(words(args)) == 1:
                out.user = words(args)[0]
            elif op == "VOLUME" and not args.lstrip().startswith("[") and words(args):
                out.volumes += [v for v in words(args) if v not in out.volumes]  # (the template's /tmp)
            elif op == "COPY" and len(args.split()) == 2 and not args.startswith("-"):
                src, dest = args.split()
                files = copied(ctx, src, dest)
                if src == META:
                    meta = {path[len("/app/"):]: bytes(data) for path, (_, data, _) in files.items()}
            elif op == "RUN" and step == "package" and text in PACKAGE_RUNS:
                got = editable.plan(meta, deps_text=deps_text, pip=abi.get("pip", ""),
                                    setuptools=abi.get("setuptools", ""), python=abi["python"], site_packages=site)
                if isinstance(got, str):
                    return f"the package step: {got}"
                out.editable, out.dists = f"{got.name}=={got.version}", listed(out.dists, got.name, got.version)
                files = {path: (0o644, data, "") for path, data in got.files.items()}
                files[DISTS_PATH] = (0o644, out.dists.encode(), "")
            elif op == "RUN" and step == "install" and text.startswith(INSTALL_RUN) and text.endswith("; fi"):
                pass  # no mark: a package step made here leaves none, and the dependency image's record
                # (builder/core/depsenv.py, checked by the caller) says its lines left none either
            else:
                return f"step {step!r} ({text[:60]}...) needs the engine"
            if files is not None:
                out.layers.append(write_layer(files, created))
            out.history.append({"created_by": created, **({} if files is not None else {"empty_layer": True})})
    except ValueError as exc:
        return f"the Dockerfile: {exc}"
    return out
