"""Imports go one way: ``beam_pipeline -> transforms -> schemas``, and ``runners`` serves
``beam_pipeline`` only. No module imports one of a higher layer (not even inside a function, nor
by loading its package data), and no modules import each other in a cycle.

The walk reads the source with :mod:`ast` (nothing is imported), so a test that fails names the
file, the line and the import.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "transforms", "runners", "beam_pipeline")
#: What each package may import, besides itself.
ALLOWED = {
    "schemas": set(),
    "transforms": {"schemas"},
    "runners": {"schemas", "transforms"},
    "beam_pipeline": {"schemas", "transforms", "runners"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (one of the walked ones)
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of :data:`PACKAGES` under ``root``."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The walked module that ``name`` (a module or a name in one) belongs to."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(root: Path) -> list[Import]:
    """Every import of a walked module by a walked module, at any depth of the code; plus each
    ``importlib.resources.files("<package>")`` as an import of that package."""
    known = modules(root)
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package of this module
                    package = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*package, *([node.module] if node.module else [])])
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            elif (
                isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "files"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):  # fmt: skip
                names = [node.args[0].value]
            for name in names:
                target = _owner(name, known)
                if target is not None and target != module:
                    found.append(Import(module, target, node.lineno))
    return found


def upward(found: list[Import]) -> list[Import]:
    return [i for i in found
            if (low := i.module.split(".")[0]) != (high := i.target.split(".")[0]) and high not in ALLOWED[low]]


def cycles(found: list[Import]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.module, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_a_higher_layer():
    found = upward(imports(REPO))
    assert not found, "upward imports:\n" + "\n".join(
        f"  {i.module} (line {i.line}) imports {i.target}" for i in found)


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(imports(REPO)) == []


@pytest.fixture
def tree(tmp_path):
    def write(files: dict[str, str]) -> Path:
        for package in PACKAGES:
            (tmp_path / package).mkdir(exist_ok=True)
            (tmp_path / package / "__init__.py").touch()
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        return tmp_path

    return write


def test_the_walk_finds_upward_imports_anywhere_and_package_data_loads(tree):
    root = tree({
        "transforms/a.py": "def f():\n    from beam_pipeline.options import X\n",
        "transforms/b.py": "import importlib.resources\nDATA = importlib.resources.files('beam_pipeline')\n",
        "schemas/c.py": "from transforms import a\n",
        "runners/d.py": "import beam_pipeline\n",
        "beam_pipeline/options.py": "from transforms import a\nfrom runners import d\n",
        "transforms/e.py": "from . import a\nfrom .b import DATA\n",
    })  # fmt: skip
    assert sorted((i.module, i.target, i.line) for i in upward(imports(root))) == [
        ("runners.d", "beam_pipeline", 1),
        ("schemas.c", "transforms.a", 1),
        ("transforms.a", "beam_pipeline.options", 2),
        ("transforms.b", "beam_pipeline", 2),
    ]
    assert {(i.module, i.target) for i in imports(root) if i.module == "transforms.e"} == {
        ("transforms.e", "transforms.a"), ("transforms.e", "transforms.b")}


def test_the_walk_finds_cycles_through_lazy_imports(tree):
    root = tree({
        "transforms/a.py": "from transforms.b import X\n",
        "transforms/b.py": "def f():\n    from transforms import c\n",
        "transforms/c.py": "import transforms.a\n",
        "transforms/d.py": "from transforms import a\n",
    })  # fmt: skip
    assert cycles(imports(root)) == [["transforms.a", "transforms.b", "transforms.c"]]


def stage_of(module: str) -> str:
    """``transforms.sources.replay`` -> ``transforms.sources``; any other module is its own node."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "transforms" and len(parts) > 2 else module


def test_stage_packages_do_not_import_each_other_in_a_cycle():
    collapsed = [Import(stage_of(i.module), stage_of(i.target), i.line) for i in imports(REPO)]
    assert cycles([i for i in collapsed if i.module != i.target]) == []


def _stage_packages() -> list[str]:
    return sorted(p.name for p in (REPO / "transforms").iterdir() if (p / "__init__.py").is_file())


def test_every_stage_package_keeps_its_composites_in_stage_py_and_only_there():
    import apache_beam as beam

    misplaced, empty = [], []
    for package in _stage_packages():
        for path in sorted((REPO / "transforms" / package).glob("*.py")):
            name = f"transforms.{package}.{path.stem}"
            module = importlib.import_module(name)
            composites = [obj for obj in vars(module).values() if isinstance(obj, type)
                          and issubclass(obj, beam.PTransform) and obj.__module__ == name]
            if path.stem != "stage" and composites:
                misplaced += [f"{name}.{c.__name__}" for c in composites]
            if path.stem == "stage" and not composites:
                empty.append(name)
    assert misplaced == [] and empty == []
    assert {"sources", "quotes", "windows", "trades", "products", "sinks", "queue"} <= set(_stage_packages())


def test_the_pipeline_takes_each_composite_from_a_stage_module_in_one_hop():
    import apache_beam as beam

    tree = ast.parse((REPO / "beam_pipeline" / "pipeline.py").read_text(encoding="utf-8"))
    taken = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transforms."):
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name)
                if isinstance(obj, type) and issubclass(obj, beam.PTransform):
                    taken[alias.name] = node.module
    assert taken, "pipeline.py imports no composite at all"
    assert {name: module for name, module in taken.items() if not module.endswith(".stage")} == {}
    assert all(importlib.import_module(module).__dict__[name].__module__ == module
               for name, module in taken.items()), "a composite re-exported, not defined, by a stage module"


def private_imports(root: Path) -> list[str]:
    """``module:line name`` for each ``from <walked module> import _name`` of a walked module: a
    name with a leading underscore is its module's own, so a neighbour needing it needs a public one."""
    known = modules(root)
    found = []
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and _owner(node.module or "", known):
                found += [f"{module}:{node.lineno} {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names(tree):
    assert private_imports(REPO) == []
    root = tree({"transforms/a.py": "_hidden = 1\nshown = 2\n",
                 "transforms/b.py": "from transforms.a import _hidden, shown\n"})
    assert private_imports(root) == ["transforms.b:1 _hidden"]
