"""The import contract of builder/, read from the source with ast (no builder code is imported).

The layers, lowest first: builder.core < builder.package < builder.plan <
builder.build (builder.build.proxy inside it) < builder.ship < builder.api <
builder.cli (builder.testing beside it). A module imports its own layer or lower ones, never a higher one;
builder.shim (copied into images) imports nothing from builder; builder/__init__.py
holds the version and the docs only. Besides: no import cycle between modules;
only builder/build/engine.py imports docker (or requests, which docker-py brings);
no module imports another module's _private name; a module is at most 400 lines
and a function at most 80.

Every check reads imports anywhere in a module (inside functions too: a late import
is still a dependency). Each failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

BUILDER = ROOT / "builder"
LAYERS = ["builder.core", "builder.package", "builder.plan", "builder.build", "builder.ship", "builder.api",
          "builder.cli"]
# packages that sit on a layer beside its own: builder.testing (the test container, the pytest plugin,
# `agent-image test`) is at the cli level, so cli and testing may import each other's modules
BESIDE = {"builder.testing": "builder.cli"}
ENGINE_ONLY = {"docker", "requests"}
ENGINE_MODULE = "builder.build.engine"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Known violations of the size rules, allowed by name and nothing else: (file, function) ->
# its length. None is left; the test fails while an entry is no longer needed, so the list
# can only shrink.
SIZE_ALLOWED: dict[tuple[str, str | None], int] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(BUILDER.rglob("*.py"))}


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against MODULE)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[int, str, str | None]]:
    """(line, imported module, name imported from it or None) for every import in MODULE."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, path, node)
            for alias in node.names:
                # `from builder.plan import dockerfile` imports the module builder.plan.dockerfile
                sub = f"{source}.{alias.name}"
                out.append((node.lineno, sub, None) if sub in MODULES else (node.lineno, source, alias.name))
    return out


def layer_of(module: str) -> int | None:
    """Index in LAYERS of MODULE's layer; None for builder.shim and builder itself (own rules)."""
    for package, layer in BESIDE.items():
        if module == package or module.startswith(package + "."):
            return LAYERS.index(layer)
    for i, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def internal(target: str) -> str | None:
    """The builder module TARGET is or lies in (a name imported from a module is in that module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def layer_violations() -> list[str]:
    found = []
    for module in MODULES:
        mine = layer_of(module)
        for line, target, name in imports(module):
            if not (target == "builder" or target.startswith("builder.")):
                continue
            what = f"{where(module, line)}: {module} imports {target}{'.' + name if name else ''}"
            if module == "builder":
                found.append(f"{what} (builder/__init__.py holds the version and the docs only)")
            elif module.startswith("builder.shim"):
                if not target.startswith("builder.shim"):
                    found.append(f"{what} (builder.shim imports nothing from builder: it runs in the image)")
            elif target.startswith("builder.shim") or target == "builder":
                continue  # the shim's files are data to the builder; the version is anyone's
            elif layer_of(target) is None or mine is None:
                continue
            elif layer_of(target) > mine:
                found.append(f"{what}, a higher layer ({LAYERS[layer_of(target)]} above {LAYERS[mine]})")
    return found


def init_violations() -> list[str]:
    """builder/__init__.py: a docstring and __version__, nothing else."""
    tree = ast.parse((BUILDER / "__init__.py").read_text())
    found = []
    for node in tree.body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
            and isinstance(node.value.value, str)
        version = isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
        if not (docstring or version):
            found.append(f"builder/__init__.py:{node.lineno}: {type(node).__name__} (only the version and docs)")
    return found


def cycles() -> list[str]:
    """Every import cycle between builder modules, each once, as 'a -> b -> a' with the lines."""
    graph: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for module in MODULES:
        for line, target, _ in imports(module):
            dep = internal(target)
            if dep and dep != module and dep != "builder":
                graph[module].setdefault(dep, line)
    found, seen = [], set()
    index, low, stack, on = {}, {}, [], set()

    def strongly(v: str) -> None:  # Tarjan: each strongly connected component of 2+ is a cycle
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strongly(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                seen.add(frozenset(comp))
                found.append(" -> ".join(f"{m} ({where(m, graph[m][n])})" for m, n in _ring(sorted(comp), graph)))

    for v in graph:
        if v not in index:
            strongly(v)
    return found


def _ring(comp: list[str], graph) -> list[tuple[str, str]]:
    """A path around the component from its first module back to it: (module, next) pairs."""
    start, members = comp[0], set(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for m in frontier:
            for n in graph[m]:
                if n == start:
                    path = paths[m]
                    return list(zip(path, path[1:] + [start]))
                if n in members and n not in paths:
                    paths[n] = paths[m] + [n]
                    nxt.append(n)
        frontier = nxt
    return [(start, start)]


def engine_import_violations() -> list[str]:
    found = []
    for module in MODULES:
        if module == ENGINE_MODULE:
            continue
        for line, target, _ in imports(module):
            if target.split(".")[0] in ENGINE_ONLY:
                found.append(f"{where(module, line)}: {module} imports {target} "
                             f"(only {ENGINE_MODULE} knows Docker)")
    return found


def private_violations() -> list[str]:
    found = []
    for module in MODULES:
        for line, target, name in imports(module):
            private = [p for p in ([name] if name else []) + target.split(".") if p.startswith("_")
                       and not (p.startswith("__") and p.endswith("__"))]
            if private and (target == "builder" or target.startswith("builder.")) and target != module:
                found.append(f"{where(module, line)}: {module} imports {target}{'.' + name if name else ''}, "
                             f"private to {target}")
    return found


def size_violations() -> tuple[list[str], set[tuple[str, str | None]]]:
    """(what is over a limit and not allowed, the allowed entries that were used)."""
    found, used = [], set()
    for module, path in MODULES.items():
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            if (rel, None) in SIZE_ALLOWED:
                used.add((rel, None))
            else:
                found.append(f"{rel}:1: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - start + 1
                if length > MAX_FUNCTION_LINES:
                    if (rel, node.name) in SIZE_ALLOWED:
                        used.add((rel, node.name))
                    else:
                        found.append(f"{rel}:{node.lineno}: {node.name}() is {length} lines "
                                     f"(at most {MAX_FUNCTION_LINES})")
    return found, used


def test_the_modules_are_found():
    assert "builder.build.engine" in MODULES and "builder.cli.main" in MODULES and "builder.api" in MODULES
    assert all(layer_of(m) is not None for m in MODULES if m.startswith("builder.") and
               not m.startswith("builder.shim")), "a module outside every layer: add its package to LAYERS"


def test_no_module_imports_a_higher_layer():
    assert layer_violations() + init_violations() == []


def test_no_import_cycle():
    assert cycles() == []


def test_only_the_engine_module_imports_docker():
    assert engine_import_violations() == []


def test_no_module_imports_another_modules_private_name():
    assert private_violations() == []


def test_modules_and_functions_stay_short():
    found, used = size_violations()
    assert found == []
    assert set(SIZE_ALLOWED) - used == set(), "allowed but no longer over the limit: remove from SIZE_ALLOWED"


@pytest.mark.parametrize("source, want", [
    ("from builder.cli.main import main\n", "builder.cli.main"),            # a higher layer
    ("import docker\n", "imports docker"),                                   # only the engine module
    ("from builder.core.errors import _secret\n", "private to builder.core.errors"),
])
def test_each_rule_names_what_breaks_it(tmp_path, monkeypatch, source, want):
    """The checks above, on a module planted in builder.plan: each one says which import it is."""
    planted = BUILDER / "plan" / "planted_for_test.py"
    monkeypatch.setitem(MODULES, "builder.plan.planted_for_test", planted)
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **kw: source if self == planted else real_read(self, *a, **kw))
    said = "\n".join(layer_violations() + engine_import_violations() + private_violations())
    assert "builder/plan/planted_for_test.py:1" in said and want in said, said
