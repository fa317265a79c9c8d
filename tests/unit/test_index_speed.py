"""Issue 14: what the index proxy does so pip in the build waits less, without changing what pip picks.

Pages lose the links to wheels the base's interpreter can never install
(builder/build/proxy/wheeltags.py). The upstream is a real HTTP server on loopback
(tests/support/httpserver.Server); pip is the real pip of this checkout.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import zipfile

from packaging import tags as host_tags

from builder.build.proxy.wheeltags import target
from tests.support.httpserver import SHA
from tests.support.indexproxy import ask, make
from tests.support.packages import wheel_bytes as wheel

HOST_PY = f"distro=debian:12;python=3.{sys.version_info.minor}"


FOREIGN = [
    "pkg-1.0-cp311-cp311-win_amd64.whl", "pkg-1.0-cp311-cp311-macosx_11_0_arm64.whl",
    "pkg-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "pkg-1.0-cp311-cp311-manylinux_2_17_aarch64.whl",
    "pkg-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "pkg-1.0-pp310-pypy310_pp73-manylinux_2_17_x86_64.whl",
    "pkg-1.0-cp313-abi3-manylinux_2_17_x86_64.whl", "pkg-1.0-py2-none-any.whl",
]
OURS = [
    "pkg-1.0-py3-none-any.whl", "pkg-1.0-py2.py3-none-any.whl", "pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
    "pkg-1.0-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", "pkg-1.0-cp38-abi3-manylinux1_x86_64.whl",
    "pkg-1.0-cp311-cp311-linux_x86_64.whl", "pkg-1.0-1-cp311-none-any.whl",
    # newer than the base's glibc: pip rejects it itself, so it may stay
    "pkg-1.0-cp311-cp311-manylinux_2_39_x86_64.whl",
    # not ours to judge: pip decides about sources and names that are not wheels
    "pkg-1.0.tar.gz", "pkg-1.0.zip", "not-a-valid-wheel-name.whl",
]


def test_every_wheel_pip_here_accepts_is_kept():
    """The tests run on CPython 3.x, x86_64, glibc, like the base: every tag pip accepts on this
    interpreter (packaging's sys_tags) must pass the filter, or a build could lose its only wheel."""
    t = target(HOST_PY, "amd64")
    accepted = [f"pkg-1.0-{tag}.whl" for tag in host_tags.sys_tags()]
    assert len(accepted) > 100
    assert [n for n in accepted if not t.keeps(n)] == []


def test_wheels_for_other_platforms_and_pythons_are_dropped_and_ours_kept():
    t = target("distro=debian:12;python=3.11;venv=/opt/venv", "amd64")
    assert [n for n in FOREIGN if t.keeps(n)] == []
    assert [n for n in OURS if not t.keeps(n)] == []
    arm = target("distro=ubuntu:24.04;python=3.11", "arm64")
    assert arm.keeps("pkg-1.0-cp311-cp311-manylinux_2_17_aarch64.whl")
    assert not arm.keeps("pkg-1.0-cp311-cp311-manylinux_2_17_x86_64.whl")


def test_an_unknown_target_filters_nothing():
    assert target(None, "amd64") is None
    assert target("distro=debian:12;python=3.11", "s390x") is None
    assert target("distro=debian:12", "amd64") is None
    assert target("distro=debian:12;python=2.7", "amd64") is None
    assert target("python=3.11", "amd64") is None                        # which C library? unknown
    assert target("distro=alpine:3.20;python=3.12", "amd64") is None    # musl: musllinux wheels are its own


def test_the_build_sees_a_page_without_foreign_wheels_and_pip_still_picks_the_same(a, tmp_path):
    files = FOREIGN + OURS
    body = "".join(f'<a href="/files/{n}#sha256={SHA}" data-requires-python="&gt;=3.8">{n}</a><br/>\n'
                   for n in files)
    a.routes["/simple/pkg/"] = (200, {"Content-Type": "text/html"}, f"<html><body>{body}</body></html>".encode())
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        status, page = ask(proxy, "/simple/pkg/")
        assert status == 200
        served = re.findall(r">([^<]+)</a>", page.decode())
        assert served == OURS
        assert proxy.stats.versions["pkg"] == ["1.0"]  # the error messages still see every version
    with make(a.base + "/simple/", tmp_path) as whole:
        assert re.findall(r">([^<]+)</a>", ask(whole, "/simple/pkg/")[1].decode()) == files


def test_pip_installs_the_only_wheel_for_its_platform_through_a_filtered_page(a, tmp_path):
    """A real project page with wheels for five platforms: pip through the proxy downloads the one
    this interpreter takes (cp3X manylinux), never sees the others, and installs it."""
    py = f"cp3{sys.version_info.minor}"
    names = [f"tiny-2.0-{py}-{py}-win_amd64.whl", f"tiny-2.0-{py}-{py}-macosx_11_0_arm64.whl",
             f"tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl", f"tiny-2.0-{py}-{py}-musllinux_1_2_x86_64.whl",
             "tiny-1.0-py3-none-any.whl"]
    hrefs = []
    for n in names:
        a.file(f"/files/{n}", wheel(n, f"PLATFORM = {n!r}\n"))
        hrefs.append(f"/files/{n}")
    a.page("/simple/tiny/", hrefs)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "http_proxy": proxy.address}
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                            "--trusted-host", "agent-image-index.invalid", "-i", "http://agent-image-index.invalid/simple/",
                            "--target", str(tmp_path / "t"), "tiny"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert proxy.stats.downloaded == [f"tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl"]
    assert "manylinux_2_17_x86_64" in (tmp_path / "t" / "tiny.py").read_text()
    fetched = [p for p in a.paths() if p.startswith("/files/")]
    assert fetched == [f"/files/tiny-2.0-{py}-{py}-manylinux_2_17_x86_64.whl"]


# -- prefetch: pages and wheels fetched ahead of pip (builder/build/proxy/prefetch.py) -------------------------

def serve_index(a, projects: dict[str, list[tuple[str, tuple[str, ...], str]]]) -> None:
    """PROJECTS {name: [(wheel file, requires, extra anchor attributes)]} on upstream A."""
    for project, files in projects.items():
        anchors = []
        for filename, requires, attrs in files:
            a.file(f"/files/{filename}", wheel(filename, requires=requires))
            anchors.append(f'<a href="/files/{filename}" {attrs}>{filename}</a><br/>')
        a.routes[f"/simple/{project}/"] = (200, {"Content-Type": "text/html"},
                                           f"<html><body>{''.join(anchors)}</body></html>".encode())


TRICKY = {
    "top": [("top-1.0-py3-none-any.whl", ("dep-a", "dep_B>=2", "dep-c; python_version < '3'",
                                          "dep-x; extra == 'x'"), "")],
    "dep-a": [("dep_a-1.0-py3-none-any.whl", ("leaf",), "")],
    "dep-b": [("dep_b-1.0-py3-none-any.whl", (), ""), ("dep_b-2.0-py3-none-any.whl", (), ""),
              ("dep_b-2.5-py3-none-any.whl", (), 'data-yanked=""'),
              ("dep_b-2.7-py3-none-any.whl", (), 'data-requires-python="&lt;3"'),
              ("dep_b-3.0rc1-py3-none-any.whl", (), "")],
    "leaf": [("leaf-1.0-py3-none-any.whl", (), "")],
}


def pip_install(proxy, target_dir, *reqs: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PIP_CONFIG_FILE": "/dev/null", "http_proxy": proxy.address}
    return subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
                           "--trusted-host", "agent-image-index.invalid", "-i", "http://agent-image-index.invalid/simple/",
                           "--target", str(target_dir), *reqs], env=env, capture_output=True, text=True)


def installed(target_dir) -> list[str]:
    return sorted(p.name for p in target_dir.glob("*.dist-info"))


def test_pages_and_the_wheels_pip_takes_are_fetched_before_it_asks(a, tmp_path):
    serve_index(a, TRICKY)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.expect(["top"])
        r = pip_install(proxy, tmp_path / "t", "top")
        assert r.returncode == 0, r.stdout + r.stderr
    assert installed(tmp_path / "t") == ["dep_a-1.0.dist-info", "dep_b-2.0.dist-info", "leaf-1.0.dist-info",
                                         "top-1.0.dist-info"]
    # every page and every wheel pip used was there before it asked, each fetched once:
    # the guesses skipped the yanked, the pre-release and the Python-2-only releases
    assert proxy.stats.prefetch == {"pages": 4, "page_hits": 4, "files": 4, "file_hits": 4, "metadata": 0,
                                    "metadata_hits": 0}
    assert sorted(a.paths()) == sorted(["/simple/top/", "/simple/dep-a/", "/simple/dep-b/", "/simple/leaf/",
                                        "/files/top-1.0-py3-none-any.whl", "/files/dep_a-1.0-py3-none-any.whl",
                                        "/files/dep_b-2.0-py3-none-any.whl", "/files/leaf-1.0-py3-none-any.whl"])


def test_pip_picks_the_same_with_and_without_prefetch_when_a_guess_is_wrong(a, tmp_path):
    """mid narrows dep-b below the release the guess fetched: pip backtracks as it would anyway."""
    serve_index(a, {**TRICKY, "top": [("top-1.0-py3-none-any.whl", ("dep-b", "mid"), "")],
                    "mid": [("mid-1.0-py3-none-any.whl", ("dep-b<2",), "")]})
    results = {}
    for mode in (True, False):
        with make(a.base + "/simple/", tmp_path / str(mode), target=target(HOST_PY, "amd64"), prefetch=mode) as proxy:
            proxy.expect(["top"])
            r = pip_install(proxy, tmp_path / f"t{mode}", "top")
            assert r.returncode == 0, r.stdout + r.stderr
        results[mode] = installed(tmp_path / f"t{mode}")
    assert results[True] == results[False] == ["dep_b-1.0.dist-info", "mid-1.0.dist-info", "top-1.0.dist-info"]


def test_a_failed_prefetch_leaves_the_error_to_pip(a, tmp_path):
    serve_index(a, {"top": [("top-1.0-py3-none-any.whl", ("gone>=1",), "")]})
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.expect(["top"])
        r = pip_install(proxy, tmp_path / "t", "top")
    assert r.returncode != 0
    assert "No matching distribution found for gone>=1" in r.stderr
    # pip's own request went upstream and met the 404: the build's error sees it
    assert proxy.stats.not_found == [a.base + "/simple/gone/"]
    assert a.paths().count("/simple/gone/") == 2  # the forgotten prefetch, then pip's own


def test_prefetch_reads_only_names_and_stops_at_its_caps(monkeypatch):
    import builder.build.proxy.prefetch as prefetch
    import builder.build.proxy.wheelmeta as wheelmeta
    asked: list[str] = []

    def page(name):
        asked.append(name)
        return b"", []

    monkeypatch.setattr(prefetch, "MAX_PAGES", 10)
    p = prefetch.Prefetcher(page, lambda key, cap, reserve: 0, target(HOST_PY, "amd64"))
    p.expect(["../../admin", "a b", "http://evil/x", "x @ https://evil/x.whl", "Ok_Name[extra]>=1",
              "win-only; sys_platform == 'win32'", *(f"pkg{i}" for i in range(50))])
    for _ in range(100):
        if len(asked) >= 10:
            break
        threading.Event().wait(0.05)
    p.close()
    assert asked[0] == "ok-name" and len(asked) == 10 and "win-only" not in asked
    # pages are held until pip asks, within a byte budget, and let go once served
    monkeypatch.setattr(prefetch, "PAGE_BYTES", 4500)
    p = prefetch.Prefetcher(lambda name: (name.encode() * 1000, []), lambda key, cap, reserve: 0, target(HOST_PY, "amd64"))
    p.expect(["aa", "bb"])
    for _ in range(100):
        if p.page_bytes == 4000:
            break
        threading.Event().wait(0.05)
    p.expect(["cc"])
    for _ in range(100):
        if p._pages["cc"].done():
            break
        threading.Event().wait(0.05)
    assert p.page("aa", 5) == b"aa" * 1000
    assert p.page("aa", 5) is None          # the next request goes upstream
    assert p.page("bb", 5) == b"bb" * 1000
    assert p.page("cc", 5) is None          # would go over the budget: fetched, not kept
    assert p.page_bytes == 0
    p.close()
    assert wheelmeta.requires_dist("Name: x\nRequires-Dist: a>=1\nrequires-dist:b\n\nRequires-Dist: body") == ["a>=1", "b"]


def test_the_guess_is_the_newest_final_release_pip_can_install_here():
    from packaging.specifiers import SpecifierSet

    from builder.build.proxy.prefetch import Offer, Prefetcher
    p = Prefetcher(lambda n: (b"", []), lambda k, cap, reserve: 0, target("distro=debian:12;python=3.11", "amd64"))
    offers = [Offer("k1", "x-1.0-py3-none-any.whl", None, False),
              Offer("k2", "x-2.0-cp311-cp311-win_amd64.whl", None, False),
              Offer("k3", "x-2.0.tar.gz", None, False),
              Offer("k4", "x-1.5-py3-none-any.whl", ">=3.12", False),
              Offer("k5", "x-1.4-cp311-cp311-manylinux_2_17_x86_64.whl", None, False),
              Offer("k6", "x-1.4-py3-none-any.whl", None, False),
              Offer("k7", "x-1.6-py3-none-any.whl", None, True)]
    assert p.choose(offers, SpecifierSet()) is None                      # 2.0 has only a source here: pip builds it
    assert p.choose(offers, SpecifierSet("<2")).key == "k5"              # 1.6 yanked, 1.5 needs 3.12; best tag of 1.4
    assert p.choose(offers, SpecifierSet("<1.4")).key == "k1"
    assert p.choose(offers, SpecifierSet(">3")) is None
    pre = [Offer("f", "x-1.0-py3-none-any.whl", None, False), Offer("r", "x-2.0rc1-py3-none-any.whl", None, False)]
    assert p.choose(pre, SpecifierSet(">=0.5")).key == "f"              # pip skips pre-releases...
    assert p.choose(pre, SpecifierSet(">=2.0rc1")).key == "r"           # ...unless the specifier names one
    p.close()


def test_prefetch_threads_end_with_the_proxy(a, tmp_path):
    serve_index(a, TRICKY)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.expect(["top", "dep-a", "dep-b", "leaf"])
        assert pip_install(proxy, tmp_path / "t", "top").returncode == 0
    for _ in range(100):
        if not [t for t in threading.enumerate() if t.name == "index-prefetch"]:
            break
        threading.Event().wait(0.05)
    assert [t for t in threading.enumerate() if t.name == "index-prefetch"] == []


def test_a_large_file_is_never_a_guess_pip_fetches_it_itself(a, tmp_path, monkeypatch):
    import builder.build.proxy.prefetch as prefetch
    monkeypatch.setattr(prefetch, "GUESS_FILE_BYTES", 100)  # every wheel here is larger
    serve_index(a, TRICKY)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.expect(["top"])
        r = pip_install(proxy, tmp_path / "t", "top")
        assert r.returncode == 0, r.stdout + r.stderr
    assert proxy.stats.prefetch["file_hits"] == 0 and proxy.stats.refused == []
    assert len(installed(tmp_path / "t")) == 4
    # each refused guess asked only for its headers; pip then fetched each wheel once
    assert sorted(p for p in a.paths() if p.startswith("/files/")) == sorted(
        ["/files/top-1.0-py3-none-any.whl", "/files/dep_a-1.0-py3-none-any.whl", "/files/dep_b-2.0-py3-none-any.whl",
         "/files/leaf-1.0-py3-none-any.whl"] * 2)


def test_a_queued_prefetch_is_given_up_to_pips_request_at_once(monkeypatch):
    """Eight slow fetches hold every worker: pip's request for a page still queued behind them
    is answered from upstream at once (it never waits on the queue), and the queued job is dropped."""
    import time

    import builder.build.proxy.prefetch as prefetch
    release, asked = threading.Event(), []

    def page(name):
        asked.append(name)
        if name.startswith("slow"):
            release.wait(10)
        return name.encode(), []

    p = prefetch.Prefetcher(page, lambda key, cap, reserve: 0, target(HOST_PY, "amd64"))
    p.expect([f"slow{i}" for i in range(prefetch.WORKERS)] + ["wanted"])
    started = time.monotonic()
    assert p.page("wanted") is None and time.monotonic() - started < 1
    release.set()
    assert p.page("slow0") == b"slow0"
    p.close()
    assert "wanted" not in asked


def test_guesses_under_way_count_against_the_budget(monkeypatch):
    import builder.build.proxy.prefetch as prefetch
    monkeypatch.setattr(prefetch, "GUESS_BYTES", 1000)
    monkeypatch.setattr(prefetch, "GUESS_FILE_BYTES", 600)
    release, caps = threading.Event(), {}
    lengths = {"k1": 600, "k2": 400, "k3": 300, "k4": None}  # k4: no Content-Length (an eighth of the budget)

    def download(key, cap, reserve):
        caps[key] = reserve(lengths[key], cap)
        if caps[key]:
            release.wait(10)
        return caps[key]

    p = prefetch.Prefetcher(lambda n: (b"", []), download, target(HOST_PY, "amd64"))
    for key in lengths:
        p._want_file(key)
    def refused() -> list[str]:
        return [k for k in lengths if k not in caps and p._files[k].done()]

    for _ in range(100):
        if len(caps) + len(refused()) == len(lengths):
            break
        threading.Event().wait(0.05)
    release.set()
    gone = refused()
    p.close()
    # each guess under way holds its own length of the budget, and never more than 1000 are held: which
    # ones fit is the threads' order (k4 holds an eighth of the budget); a guess that finds the budget
    # held refuses before it opens a connection
    granted = [c for c in caps.values() if c]
    assert len(caps) + len(gone) == 4 and sum(granted) <= 1000 and len(granted) >= 2, (caps, gone)
    assert all(caps[k] in (0, (lengths[k] or 1000 // prefetch.WORKERS)) for k in caps), caps
    for key in (k for k, c in caps.items() if c):
        p._files[key].result(10)
    assert p.guessed_bytes == sum(granted)  # what each held, it fetched


def test_a_wheel_with_a_huge_directory_is_not_opened(monkeypatch, tmp_path):
    import builder.build.proxy.wheelmeta as wheelmeta
    monkeypatch.setattr(wheelmeta, "ZIP_ENTRIES", 10)
    small, big = tmp_path / "small.whl", tmp_path / "big.whl"
    small.write_bytes(wheel("x-1.0-py3-none-any.whl", requires=("dep-a",)))
    with zipfile.ZipFile(big, "w") as z:
        z.writestr("x-1.0.dist-info/METADATA", "Name: x\nRequires-Dist: dep-a\n")
        for i in range(20):
            z.writestr(f"x/f{i}.py", "")
    assert wheelmeta.requires_dist(wheelmeta.wheel_metadata(small)) == ["dep-a"]
    assert wheelmeta.wheel_metadata(big) == ""
    (tmp_path / "junk.whl").write_bytes(b"PK\x05\x06 not a zip")
    assert wheelmeta.wheel_metadata(tmp_path / "junk.whl") == ""


def test_lines_that_name_their_own_index_are_not_prefetched_from_this_one(a, tmp_path):
    """pip never asks the configured index for names whose lines replace it: neither may the proxy."""
    serve_index(a, TRICKY)
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.expect(["--index-url http://agent-image-index.invalid/_x/abc/", "acme-internal-billing"])
        proxy.expect(["-i http://elsewhere/simple/", "acme-internal-secrets"])
        proxy.expect(["--pypi-url=http://elsewhere/simple/", "acme-internal-payroll"])  # pip's alias for -i
        proxy.expect(["--no-index", "acme-internal-wheelhouse"])
        threading.Event().wait(0.5)
    assert a.paths() == []


def test_a_near_twins_resolve_finds_every_metadata_file_here_and_fetches_no_wheel(a, tmp_path):
    """A near twin's step (builder/build/delta.py) resolves the whole set and installs only what is new:
    the guesses are each page's .metadata (PEP 658), not its wheel, and pip reads them from here."""
    projects = {name: [(f, requires, attrs + ' data-core-metadata="true"') for f, requires, attrs in files]
                for name, files in TRICKY.items()}
    serve_index(a, projects)
    for files in projects.values():
        for filename, requires, _ in files:
            name, version = filename.split("-")[:2]
            a.file(f"/files/{filename}.metadata", (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                                   + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode())
    with make(a.base + "/simple/", tmp_path, target=target(HOST_PY, "amd64")) as proxy:
        proxy.prefetch.metadata_first = True
        proxy.expect(["top"])
        r = pip_install(proxy, tmp_path / "t", "--dry-run", "--report", str(tmp_path / "report.json"), "top")
        assert r.returncode == 0, r.stdout + r.stderr
    assert '"name": "dep-b"' in (tmp_path / "report.json").read_text().replace("dep_b", "dep-b")
    assert proxy.stats.prefetch == {"pages": 4, "page_hits": 4, "files": 0, "file_hits": 0, "metadata": 4,
                                    "metadata_hits": 4}
    assert not [p for p in a.paths() if p.endswith(".whl")]
    assert sorted(p for p in a.paths() if p.endswith(".metadata")) == [
        "/files/dep_a-1.0-py3-none-any.whl.metadata", "/files/dep_b-2.0-py3-none-any.whl.metadata",
        "/files/leaf-1.0-py3-none-any.whl.metadata", "/files/top-1.0-py3-none-any.whl.metadata"]


def test_as_many_guesses_as_workers_start_at_once():
    """The pages of a set's lines come in together, and each page's guess with them: every worker's
    guess starts, each holding its own length of the budget (at 256 MiB reserved apiece, the fifth
    failed on the budget and was never retried)."""
    import builder.build.proxy.prefetch as prefetch
    release, caps = threading.Event(), {}

    def download(key, cap, reserve):  # k0 gives no length; k1 is over the cap (its guess is refused)
        caps[key] = reserve({"k0": None, "k1": 300 * 1024 ** 2}.get(key, 5 * 1024 ** 2), cap)
        release.wait(10)
        if not caps[key]:
            raise LookupError("refused")
        return caps[key]

    p = prefetch.Prefetcher(lambda n: (b"", []), download, target(HOST_PY, "amd64"))
    keys = [f"k{i}" for i in range(prefetch.WORKERS)]
    for key in keys:
        p._want_file(key)
    for _ in range(100):
        if len(caps) == len(keys):
            break
        threading.Event().wait(0.05)
    release.set()
    for key in keys[2:]:
        p._files[key].result(10)  # none failed for the budget
    p.close()
    assert sorted(caps) == sorted(keys) and caps["k0"] == prefetch.GUESS_BYTES // prefetch.WORKERS and caps["k1"] == 0
    assert {caps[k] for k in keys[2:]} == {5 * 1024 ** 2}


def test_a_metadata_guess_without_a_file_lets_pip_go_on_at_once_and_guesses_the_wheel():
    """A page that offers no .metadata: pip's request waiting on the guess goes upstream at once, and the
    guess becomes the wheel's (pip's dry run reads the wheel then); one over its cap is not held."""
    import time

    import builder.build.proxy.prefetch as prefetch
    asked, files = [], []

    def metadata(key, max_bytes):
        asked.append((key, max_bytes))
        threading.Event().wait(0.3)
        return None if key == "plain" else b"x" * 10

    p = prefetch.Prefetcher(lambda n: (b"", []), lambda key, cap, reserve: files.append(key) or 1, target(HOST_PY, "amd64"),
                            metadata)
    p.metadata_first = True
    p._want_metadata("plain")
    threading.Event().wait(0.05)
    started = time.monotonic()
    assert p.metadata("plain", timeout=5) is None and time.monotonic() - started < 2
    p._want_metadata("meta")
    assert p.metadata("meta", timeout=5) == b"x" * 10 and p.meta_bytes == 0
    assert p.metadata("meta", timeout=5) is None  # served once
    for _ in range(100):
        if files:
            break
        threading.Event().wait(0.05)
    p.close()
    assert files == ["plain"] and asked == [("plain", prefetch.META_FILE_BYTES), ("meta", prefetch.META_FILE_BYTES)]
    assert p.counts["metadata_hits"] == 1


def test_a_failed_guess_spends_what_it_held():
    """A guess that fetched its file and then failed (a wrong hash, cut short) counts against the
    budget: failing guesses cannot fetch without end."""
    import builder.build.proxy.prefetch as prefetch

    def download(key, cap, reserve):
        reserve(100, cap)
        raise OSError("sha256 is not the one its page gave")

    p = prefetch.Prefetcher(lambda n: (b"", []), download, target(HOST_PY, "amd64"))
    p._want_file("bad")
    try:
        p._files["bad"].result(10)
    except OSError:
        pass
    p.close()
    assert p.guessed_bytes == 100 and p._reserved == 0 and not p._guessed
