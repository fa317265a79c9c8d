"""Review of issue 24 (branch atk24): setup.py files the static reader (builder/build/editable.py) accepts as
literal where the package step's real `pip install -e /app` (pip 23.0.1, setuptools 66.1.1, Python 3.11.2 in
agent-image/base:py3.11) does something else. Each test fails today; the expected behaviour is a refusal (a
reason string: the engine builds), or exactly setuptools' output. The real outputs quoted here were read from
the base with tests/integration/test_assemble_oracle.py, which runs the same cases through real pip."""

from __future__ import annotations

import pytest

from builder.build import editable

SITE = "/opt/venv/lib/python3.11/site-packages"
TOOLS = {"pip": "23.0.1", "setuptools": "66.1.1", "python": "3.11", "site_packages": SITE}


def _setup(args: str, head: str = "") -> bytes:
    return f'{head}from setuptools import setup\nsetup({args})\n'.encode()


# -- 1. a coding declaration: Python decodes setup.py with it, the static reader with UTF-8 ----------------------

@pytest.mark.parametrize("head", [
    # UTF-7: "+AAo-" is a newline, so the "comment" is a statement when Python runs the file
    "# -*- coding: utf-7 -*-\n# +AAo-open(+ACI-/opt/venv/lib/python3.11/site-packages/evil.pth+ACI-,+ACI-w+ACI-)"
    ".write(+ACI-import os+ACI-)\n",
    # unicode_escape: a backslash-n in a comment is a newline
    "# coding: unicode_escape\n# \\nimport os\n",
], ids=["utf-7", "unicode_escape"])
def test_a_setup_py_whose_coding_cookie_hides_code_is_not_literal(head):
    got = editable.plan({"setup.py": _setup('name="a", version="1.0"', head)}, deps_text="", **TOOLS)
    assert isinstance(got, str), "Python runs code in this setup.py; the static reader called it literal"


def test_a_latin1_setup_py_is_read_as_python_reads_it():
    """Sibling: a legal latin-1 cookie changes the literals themselves (the Summary setuptools writes)."""
    head = "# -*- coding: latin-1 -*-\n"
    got = editable.plan({"setup.py": _setup('name="a", version="1.0", description="caf\u00e9"', head)},
                        deps_text="", **TOOLS)
    if not isinstance(got, str):  # Python reads the two UTF-8 bytes of é as two latin-1 characters
        assert b"Summary: caf\xc3\x83\xc2\xa9\n" in got.files["/app/a.egg-info/PKG-INFO"]


# -- 2. python_requires is checked against 3.11.0, pip checks the interpreter (3.11.2) ----------------------------

@pytest.mark.parametrize("spec", ["<=3.11.0", "==3.11.0", "<3.11.1", "!=3.11.2"])
def test_python_requires_that_excludes_the_bases_python_is_refused(spec):
    # real pip: "ERROR: Package 'a' requires a different Python: 3.11.2 not in '<=3.11.0'" (the engine's build fails)
    got = editable.plan({"setup.py": _setup(f'name="a", version="1.0", python_requires="{spec}"')},
                        deps_text="", **TOOLS)
    assert isinstance(got, str), f"python_requires {spec} excludes Python 3.11.2; the static reader accepted it"


# -- 3. no file-system limits: a name setuptools cannot write -----------------------------------------------------

def test_a_name_too_long_for_a_file_name_is_refused():
    # real setuptools: "[Errno 36] File name too long: 'aaa...a.egg-info'"; the assembled layer carries
    # a 259-byte path component no engine can extract, pushed under an immutable version tag
    got = editable.plan({"setup.py": _setup(f'name="{"a" * 250}", version="1.0"')}, deps_text="", **TOOLS)
    if not isinstance(got, str):
        too_long = [p for p in got.files if any(len(part.encode()) > 255 for part in p.split("/"))]
        assert not too_long, too_long


# -- 4. the tools are the dependency image's, not the base's ABI label's -----------------------------------------

@pytest.mark.parametrize("deps", ["setuptools==75.8.0\n", "pip==26.3\n", "setuptools>=80\n"])
def test_dependency_lines_that_replace_pip_or_setuptools_are_refused(deps):
    # real: with setuptools 75.8.0 in the venv the same setup.py gets "Metadata-Version: 2.2" (66.1.1 writes 2.1);
    # setuptools >= 80 makes `develop` a PEP 660 install (no egg-link at all). The label still says 66.1.1.
    got = editable.plan({"setup.py": _setup('name="a", version="1.0"')}, deps_text=deps, **TOOLS)
    assert isinstance(got, str), f"the dependency layer installs {deps.strip()}; the static output assumes 66.1.1"


# -- 5. SOURCES.txt: setuptools lists more of what the package step sees than the model does ---------------------

REAL_SOURCES = {  # read from setuptools 66.1.1 in agent-image/base:py3.11
    "readme": "README.txt\nsetup.py\na.egg-info/PKG-INFO\na.egg-info/SOURCES.txt\na.egg-info/dependency_links.txt\n"
              "a.egg-info/top_level.txt",
    "module": "setup.py\na.egg-info/PKG-INFO\na.egg-info/SOURCES.txt\na.egg-info/dependency_links.txt\n"
              "a.egg-info/top_level.txt\nsrc/__init__.py\nsrc/reqs.py",
    "test": "setup.py\na.egg-info/PKG-INFO\na.egg-info/SOURCES.txt\na.egg-info/dependency_links.txt\n"
            "a.egg-info/top_level.txt\ntest/test_reqs.py",
}
META = {  # a requirements include (-r FILE) is copied into the package step's /app as a packaging file
    "readme": {"setup.py": _setup('name="a", version="1.0"'), "README.txt": b"", "requirements.txt": b"-r README.txt\n"},
    "module": {"setup.py": _setup('name="a", version="1.0", packages=["src"]'), "src/__init__.py": b"",
               "src/reqs.py": b"", "requirements.txt": b"-r src/reqs.py\n"},
    "test": {"setup.py": _setup('name="a", version="1.0"'), "test/test_reqs.py": b"",
             "requirements.txt": b"-r test/test_reqs.py\n"},
}


@pytest.mark.parametrize("case", sorted(META))
def test_sources_txt_is_setuptools_or_the_engine_decides(case):
    got = editable.plan(META[case], deps_text="", **TOOLS)
    if not isinstance(got, str):
        assert got.files["/app/a.egg-info/SOURCES.txt"].decode() == REAL_SOURCES[case]


# -- 6. a tiny setup.py that crashes the builder ------------------------------------------------------------------

@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_a_deeply_nested_setup_py_is_a_refusal_not_a_crash(depth):
    # ast.parse raises MemoryError ("too complex") for a 10 kB file; literal_setup catches only SyntaxError and
    # ValueError, so the build dies with a traceback where the engine's build would have reported the package
    source = 'from setuptools import setup\nsetup(name="a", version="1.0", description=' + "-" * depth + "1)\n"
    got = editable.plan({"setup.py": source.encode()}, deps_text="", **TOOLS)
    assert isinstance(got, str)


# -- 7. memory: the agent's files are held four times over --------------------------------------------------------

def test_assembling_the_code_layer_holds_the_package_at_most_twice():
    """context_files copied every file out of the context, layer_tar wrote them into a new tar, gzip a third
    copy: about 4.2x the package on top of the context (269 MiB for 64 MiB), 2+ GiB for a package at the
    512 MiB --max-total-bytes. Now the layer is streamed from the context into gzip: only the blob is held."""
    import hashlib
    import io
    import os
    import tarfile
    import tracemalloc

    from builder.build import codelayer
    size = 16 * 1024 * 1024
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/big.bin")
        info.size = size
        payload = os.urandom(size)
        tar.addfile(info, io.BytesIO(payload))
    want = hashlib.sha256(payload).hexdigest()
    del payload
    context = buf.getvalue()
    del buf
    tracemalloc.start()
    try:
        layer = codelayer.write_layer(codelayer.copied(codelayer.context_files(context), "app/", "/app/"), "COPY")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * size, f"peak {peak >> 20} MiB for a {size >> 20} MiB package"
    with tarfile.open(fileobj=io.BytesIO(layer.tar)) as tar:  # and it is the same file
        assert hashlib.sha256(tar.extractfile("app/big.bin").read()).hexdigest() == want


# -- 8. local versions: pip's matching of "+cpu" against a specifier is not modelled --------------------------------

@pytest.mark.parametrize("deps, requires", [
    ("tinyreq==1.0+cpu\n", "tinyreq!=1.0+cpu"),   # the sibling found in review: accepted, pip says otherwise
    ("tinyreq==1.0+cpu\n", "tinyreq>=1.0"),
    ("tinyreq==1.0\n", "tinyreq==1.0+cpu"),
])
def test_a_local_version_in_the_pins_or_install_requires_is_refused(deps, requires):
    got = editable.plan({"setup.py": _setup(f'name="a", version="1.0", install_requires=["{requires}"]')},
                        deps_text=deps, **TOOLS)
    assert isinstance(got, str), (deps, requires)


def test_a_micro_independent_python_requires_and_plain_pins_are_still_assembled():
    """The refusals above leave the shape pixell writes alone."""
    got = editable.plan({"setup.py": _setup('name="a", version="1.0", install_requires=["tinyreq>=1.0"], '
                                            'python_requires=">=3.9"'), "requirements.txt": b"tinyreq==1.0\n"},
                        deps_text="tinyreq==1.0\n", **TOOLS)
    assert not isinstance(got, str), got
    assert b"Requires-Python: >=3.9\n" in got.files["/app/a.egg-info/PKG-INFO"]
