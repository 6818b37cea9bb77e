"""The package's layering and its declared dependencies, read from the source itself.

Data flows one way: models -> lens -> store -> analyses (describe, experiments,
groundtruth, segment, attack) -> the bundled model (tiny) -> atlas -> demo -> commands ->
cli. ``errors`` and the synthetic world (``synth``, a leaf that imports nothing else of
solens) sit below all of them: any layer may use them.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "solens"
PYPROJECT = SRC.parents[1] / "pyproject.toml"

LAYERS: list[set[str]] = [
    {"_lazy", "errors", "synth"},
    {"models"},
    {"lens"},
    {"store"},
    {"describe"},
    {"experiments"},
    {"groundtruth"},
    {"segment"},
    {"attack"},
    {"tiny"},
    {"atlas"},
    {"demo"},
    {"commands"},
    {"cli", "__main__"},
]
"""Rooms (first component under ``solens``), lowest first. A room may import its own
modules and rooms of lower layers, never higher ones."""
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
LEAVES = {"_lazy", "errors", "synth"}  # import nothing of solens but themselves


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement."""
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    for node in tree.body:  # statements nested in module-level if/try count as top
        if isinstance(node, ast.If | ast.Try):
            top |= {id(n) for n in ast.walk(node)}
    out = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((name, node.lineno, id(node) in top))
            if node.module is None or name == "solens":  # from solens import x
                out += [(f"{name}.{a.name}", node.lineno, id(node) in top) for a in node.names]
    return out


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "solens" else None


def test_every_room_is_in_a_layer() -> None:
    rooms = {room(m) for m, _ in modules()} - {None}
    assert rooms <= set(RANK), f"rooms without a layer: {sorted(rooms - set(RANK))}"


def test_imports_point_one_way() -> None:
    wrong = []
    for module, path in modules():
        src = room(module)
        if src is None:  # the package root: lazy names only, checked below
            continue
        for name, line, _ in imports(path, module):
            dst = room(name)
            if dst is None or dst not in RANK:
                continue
            if src in LEAVES and dst != src:
                wrong.append(f"{path.relative_to(SRC)}:{line} {module} -> {name} ({src} is a leaf)")
            elif RANK[dst] > RANK[src]:
                wrong.append(f"{path.relative_to(SRC)}:{line} {module} -> {name}")
    assert not wrong, "wrong-way imports:\n" + "\n".join(wrong)


def test_package_root_imports_nothing_of_solens_eagerly() -> None:
    code = "import solens, sys; print(sorted(m for m in sys.modules if m.startswith('solens.')))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['solens._lazy']"


LAZY_ROOMS = {"commands", "cli"}
"""The command line imports the API inside each command, so that ``solens --help`` and
argument errors answer without loading torch."""


def test_solens_imports_sit_at_module_top() -> None:
    """Imports of solens modules are never hidden in functions (they would hide the
    layering), except in the command line shell; heavy third-party packages may be
    imported lazily."""
    lazy = [f"{path.relative_to(SRC)}:{line} {name}" for module, path in modules()
            for name, line, top in imports(path, module)
            if not top and name.startswith("solens") and room(module) not in LAZY_ROOMS]
    assert not lazy, "function-local solens imports:\n" + "\n".join(lazy)


def test_lazy_subpackages() -> None:
    import solens

    assert solens.synth.sample(1)[0].label in solens.synth.CLASSES
    with pytest.raises(AttributeError):
        _ = solens.not_a_subpackage


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in requirements}


def test_declared_dependencies_are_what_the_code_imports() -> None:
    """pyproject's runtime dependencies = the third-party distributions that src/ imports;
    a distribution of an optional extra may be imported inside a function (lazily)."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = _names(project["dependencies"])
    extras = _names([d for ds in project.get("optional-dependencies", {}).values() for d in ds])
    dists = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}
    for module, path in modules():
        for name, line, top_level in imports(path, module):
            top = name.split(".")[0]
            if not top or top == "solens" or top in sys.stdlib_module_names:
                continue
            for dist in dists.get(top, [top]):
                if not top_level and _normalise(dist) in extras - declared:
                    continue
                imported.setdefault(_normalise(dist), f"{path.relative_to(SRC)}:{line}")
    assert sorted(set(imported) - declared) == [], f"imported, undeclared: {imported}"
    assert sorted(declared - set(imported)) == [], "declared, never imported"
