"""The dependency image's package-step environment, recorded where the registry can serve it cheaply.

The agent's package step (`pip install -e /app`) runs in the dependency
image's venv, and the requirement lines may have changed that venv: another
pip or setuptools, a .pth file, a sitecustomize, setuptools entry points that
write egg-info files or change commands, the installed-after-code mark. The
registry assembly (builder/build/codelayer.py) reproduces the step for the
base's own tools only, so the dependency image ends with one tiny layer, a
file written by FINGERPRINT_SCRIPT (``python -I -S``: no .pth of the venv
runs while it looks), and the assembler reads that layer alone: it assembles
only when the record equals a clean base's (CLEAN_DIGESTS), else the engine
builds. A dependency that rewrites the interpreter itself could still lie to
the script; the record is for honest drift, not a defence.
"""

from __future__ import annotations

import hashlib
import json

PATH = "/opt/agent-image/deps-env.json"
MARK = "/opt/agent-image/installed-after-code"
# groups through which an installed distribution changes what setuptools' egg_info/develop do
GROUPS = ("egg_info.writers", "distutils.setup_keywords", "distutils.commands",
          "setuptools.finalize_distribution_options", "setuptools.file_finders")

# one line, no single quote, no $, no backslash: it goes into the Dockerfile as python -c '...'
FINGERPRINT_SCRIPT = (
    'import glob,hashlib,json,os,sys;from importlib import metadata as m;'
    'S=sorted(glob.glob("/opt/venv/lib/python*/site-packages"));D=list(m.distributions(path=S));'
    'n=lambda d:(d.metadata["Name"] or "");'
    'h=lambda p:hashlib.sha256(open(p,"rb").read()).hexdigest() if os.path.isfile(p) else "not a file";'
    f'G={json.dumps(GROUPS)};'
    'print(json.dumps({'
    '"tools":sorted([n(d).lower(),d.version] for d in D if n(d).lower() in ("pip","setuptools","wheel","distribute")),'
    '"pth":sorted([os.path.basename(p),h(p)] for s in S for p in glob.glob(s+"/*.pth")),'
    '"customize":sorted([p,h(p)] for s in S+sys.path for c in ("sitecustomize","usercustomize")'
    ' for p in glob.glob(os.path.join(s or ".",c)+"*")),'
    '"entry_points":sorted([n(d),e.group,e.name,e.value] for d in D for e in d.entry_points if e.group in G),'
    f'"mark":os.path.lexists("{MARK}")}},sort_keys=True))'
)
# Sets $py for what runs after an install: the system's PATH, and the interpreter the venv's python3 links to
# (a wheel writes files, never links: still a link out of the venv, it is the base's), else the system's
# python3 (a venv of copies, or one a wheel replaced). Not what the venv's bin holds then: a wheel may have
# written console scripts named touch or find, or a data script named python, and what the record
# would print is what it is for (and the dependency step's compile and listings, plan/dockerfile.py)
BASE_PYTHON = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; py=$(readlink -f /opt/venv/bin/python3); "
       'case "$py" in /opt/venv/*|"") py=python3;; esac; ')
COMMAND = f"""{BASE_PYTHON}"$py" -I -S -c '{FINGERPRINT_SCRIPT}' > {PATH}"""

# sha256 of the record of a dependency image whose lines left the package step as the base has it:
# agent-image/base:py3.11 (Debian 12: Python 3.11.2, pip 23.0.1, setuptools 66.1.1). Checked against the
# base by tests/integration/test_assemble.py; a base not listed here is always built with the engine.
CLEAN_DIGESTS = frozenset({
    "fac383168d1d2057ddda9daecbad347be3d94b21df22fba64a27619cdc358926",
})


def digest(record: bytes) -> str:
    return hashlib.sha256(json.dumps(json.loads(record), sort_keys=True).encode()).hexdigest()


def refusal(record: bytes | None) -> str | None:
    """Why the package step in a dependency image with RECORD is not the base's, or None."""
    if record is None:
        return f"the dependency image has no {PATH} (built by an older builder)"
    try:
        data = json.loads(record)
        found = digest(record)
    except ValueError:
        return f"the dependency image's {PATH} is not JSON"
    if found in CLEAN_DIGESTS:
        return None
    if data.get("mark"):
        return "the dependency lines left the installed-after-code mark"
    return (f"the dependency lines changed the package step's environment (tools {data.get('tools')}, "
            f"{len(data.get('pth') or [])} .pth, {len(data.get('customize') or [])} sitecustomize, "
            f"{len(data.get('entry_points') or [])} setuptools entry points)")

assert "'" not in FINGERPRINT_SCRIPT and "$" not in FINGERPRINT_SCRIPT and "\\" not in FINGERPRINT_SCRIPT
