"""The dependency image for another CPU with as little emulation as possible. Pure: text in, text out.

On an amd64 runner an arm64 image's RUN steps run under QEMU user emulation,
several times slower than native. Installing wheels needs no CPU of the target:
pip on the host's base (the same Debian release and Python) fetches the
target's wheels (``--platform manylinux_2_X_aarch64 --only-binary=:all:``) into
a folder, and compiles their bytecode there (a ``.pyc`` depends on the Python
version, not on the CPU; ``-p`` names the path the files will have, and
``unchecked-hash`` pycs do not depend on the copy's file times). The target's
stage then only COPYs that folder into its venv.

When that cannot work (a requirement with only a source distribution, whose
build must run on the target's CPU; a resolver failure) the first stage leaves
a mark instead, and the target's stage installs the same lines the usual way,
emulated. Either way the image has the same number of layers, so the dependency
image's shape does not depend on which path ran.

Known limit: pip evaluates environment markers (``platform_machine``) against
the interpreter running it, not ``--platform``; lines whose text names a
platform marker take the emulated path (``needs_emulation``), transitive ones
cannot be seen here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.plan.dockerfile import COMPILE_START, Rendered, parse_steps

CROSS = "/opt/agent-image/cross"
MARK = ".agent-image-emulate"
# left by the first stage and removed by the target's RUN, so that RUN always writes a layer: the
# classic builder records no layer for a RUN that changes nothing, and the dependency image must have
# the same number of layers whichever path ran (builder/build/depsimage.py refusal)
SEEN = ".agent-image-cross"
REQUIREMENTS = "/opt/agent-image/deps/requirements-deps.txt"
_MARKER_RE = re.compile(r"platform[._]machine|platform_system|sys_platform", re.I)


@dataclass(frozen=True)
class CrossTarget:
    """Where the wheels are fetched (the host's base) and for what (the target's CPU, glibc, Python)."""
    host_base: str       # the host's shared base image (same distro release and Python as the target's)
    host_base_id: str
    machine: str         # aarch64
    glibc: tuple[int, int]
    python: str          # "3.11"

    def platforms(self) -> list[str]:
        """pip's --platform values, most preferred first (pip does not widen manylinux_2_X itself)."""
        major, minor = self.glibc
        out = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 16, -1)]
        return out + [f"manylinux2014_{self.machine}", f"linux_{self.machine}"]


def needs_emulation(deps_text: str) -> bool:
    """Lines whose markers pip would read against the host's CPU, not the target's."""
    return bool(_MARKER_RE.search(deps_text))


def cross_dockerfile(deps: Rendered, target: CrossTarget) -> Rendered | None:
    """DEPS (the dependency image's Dockerfile) with its install done by a host-CPU stage;
    None when the Dockerfile is not the shape this knows (then the install runs emulated)."""
    text = deps.text
    # the dependency step: touch STAMP && [COMPILE_START]INSTALL -r REQUIREMENTS REST
    m = re.search(r"^RUN touch (\S+) && (" + re.escape(COMPILE_START) + r")?(.+?) -r " + re.escape(REQUIREMENTS)
                  + r"(.*)$", text, re.M)
    index = re.search(r"^#> step index\n(.*?)(?=^#> step )", text, re.M | re.S)
    copy = re.search(r"^COPY \.agent-image/deps/ /opt/agent-image/deps/$", text, re.M)
    if not m or not index or not copy or "uv pip install" in m.group(3):
        return None
    install = m.group(3)
    site = f"/opt/venv/lib/python{target.python}/site-packages"
    abi = "cp" + target.python.replace(".", "")
    platforms = " ".join(f"--platform {p}" for p in target.platforms())
    fetch = (f"{install} --only-binary=:all: --implementation cp --python-version {target.python} --abi {abi} "
             f"{platforms} --target {CROSS}/site -r {REQUIREMENTS}"
             f" && python -m compileall -qq -j 0 --invalidation-mode unchecked-hash -s {CROSS}/site -p {site} "
             f"{CROSS}/site >/dev/null && {{ [ ! -d {CROSS}/site/bin ] || mv {CROSS}/site/bin {CROSS}/bin; }}")
    fallback = (f"echo 'agent-image: not every requirement has a {target.machine} wheel; installing under emulation'"
                f" && rm -rf {CROSS} && mkdir -p {CROSS}/site && touch {CROSS}/site/{MARK}")
    stage = (f"#> step wheels\n"
             f"# The target's wheels, fetched and compiled on the host's CPU ({target.host_base_id})\n"
             f"FROM {target.host_base} AS wheels\n"
             f"{index.group(1)}"
             f"{copy.group(0)}\n"
             f"RUN {{ {fetch}; }} || {{ {fallback}; }}; mkdir -p {CROSS}/bin && touch {CROSS}/site/{SEEN}\n")
    run = (f"COPY --from=wheels {CROSS}/site/ {site}/\n"
           f"COPY --from=wheels {CROSS}/bin/ /opt/venv/bin/\n"
           f"RUN if [ -e {site}/{MARK} ]; then rm -f {site}/{MARK} && touch {m.group(1)} && {m.group(2) or ''}{install} -r "
           f"{REQUIREMENTS}{m.group(4)}; fi && rm -f {site}/{SEEN}")
    body = text[:m.start()] + run + text[m.end():]
    full = stage + body
    steps, instructions = parse_steps(full)
    return Rendered(text=full, steps=steps, instructions=instructions)


HOST = "/opt/agent-image/host"
_PACKAGE_RE = (r"^(COPY \.agent-image/meta/ /app/)\nRUN (touch (\S+) && if (pip install --no-compile -e /app --report "
               r"(\S+)) && \{ (python -c .+?) \|\| .+?; \} && rm -f \S+; then :; else .+)$")


def package_on_host(agent: Rendered, host_deps_image: str) -> Rendered | None:
    """AGENT (the agent's Dockerfile FROM its dependency image, for another CPU) with the seed's
    `pip install -e /app` run on the host's CPU, FROM HOST_DEPS_IMAGE (the host's dependency image
    of the same lines, from the same multi-platform build), when that install is CPU-free: it
    installed the package alone (pip's report) and built no extension module. Its files (the
    egg-link or editable finder, the .egg-info or .dist-info, scripts, the pth line, their
    bytecode; the folders above them keep the modes and owners they have in the image) are copied into the target's venv and /app; otherwise the target installs as
    before, emulated. None when the Dockerfile is not the shape this knows (uv, hashes, no package)."""
    text = agent.text
    m = re.search(_PACKAGE_RE, text, re.M)
    index = re.search(r"^#> step index\n(.*?)(?=^#> step )", text, re.M | re.S)
    if not m or not index:
        return None
    copy, body, stamp, install, report, only_app = m.groups()
    fresh = f"find /app /opt/venv -newer {stamp}"
    host = (f"touch {stamp} && mkdir -p {HOST} && if {install} && {only_app} && rm -f {report} "
            f"&& [ -z \"$({fresh} -name '*.so' -print -quit)\" ]; then "
            f"{{ find /opt/venv/lib -name '*.py' -newer {stamp} -print0 | xargs -0 -r python -m compileall -qq "
            f"--invalidation-mode unchecked-hash || :; }} && {fresh} \\( -type f -o -type l \\) -print0 "
            f"| tar --null --no-recursion -cf - -T - 2>/dev/null | tar -xpf - -C {HOST} && (cd {HOST} && find . "
            f"-mindepth 1 -type d -exec sh -c 'for d; do [ ! -e \"/$d\" ] || {{ chmod --reference=\"/$d\" \"$d\" "
            f"&& chown --reference=\"/$d\" \"$d\"; }}; done' _ {{}} +); "
            f"else echo 'agent-image: the package install is not CPU-free here; installing under emulation' "
            f"&& touch {HOST}/{MARK}; fi; touch {HOST}/{SEEN}")
    stage = (f"#> step package-host\n"
             f"# The seed's `pip install -e /app`, on the host's CPU when the result is the same for every CPU\n"
             f"FROM {host_deps_image} AS package\n{index.group(1)}{copy}\nRUN {host}\n")
    target = (f"{copy}\nCOPY --from=package {HOST}/ /\n"
              f"RUN if [ -e /{MARK} ]; then rm -f /{MARK} && {body}; fi && rm -f /{SEEN}")
    full = stage + text[:m.start()] + target + text[m.end():]
    steps, instructions = parse_steps(full)
    return Rendered(text=full, steps=steps, instructions=instructions)
