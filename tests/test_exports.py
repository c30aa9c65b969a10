"""Check each layer's ``__all__`` and that imports only point down the layers.

Layers, bottom to top: memory < hw < link < devices < remote < qemu < machine
< cli. ``memexpose.errors`` may be imported from anywhere; ``memexpose.bench``
sits beside ``cli`` and may import anything. Files outside the layer folders
(``memexpose/__init__.py``, ``errors.py``) may import only ``errors``. A layer
imports another layer only through its package (``from memexpose.memory import
X``), never through a submodule, and exports only what it defines itself.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import memexpose

LAYERS = ["memory", "hw", "link", "devices", "remote", "qemu", "machine", "cli"]
RANK = {name: i for i, name in enumerate(LAYERS)} | {"bench": len(LAYERS) - 1}
PKG_DIR = Path(memexpose.__file__).resolve().parent
SUBPACKAGES = [name for name in RANK if (PKG_DIR / name / "__init__.py").is_file()]


@pytest.mark.parametrize("modname", ["memexpose", *(f"memexpose.{n}" for n in SUBPACKAGES)])
def test_all_is_sound(modname: str) -> None:
    module = importlib.import_module(modname)
    assert hasattr(module, "__all__"), f"{modname} must define __all__"
    names = list(module.__all__)
    dups = sorted({n for n in names if names.count(n) > 1})
    assert not dups, f"{modname}.__all__ lists {dups} more than once"
    unresolved = [n for n in names if not hasattr(module, n)]
    assert not unresolved, f"{modname}.__all__ names {unresolved}, which the module lacks"


@pytest.mark.parametrize("layer", [n for n in SUBPACKAGES if n in LAYERS])
def test_layer_exports_only_its_own(layer: str) -> None:
    module = importlib.import_module(f"memexpose.{layer}")
    foreign = []
    for name in module.__all__:
        origin = getattr(getattr(module, name), "__module__", None) or ""
        parts = origin.split(".")
        if parts[0] == "memexpose" and len(parts) > 1 and parts[1] in RANK and parts[1] != layer:
            foreign.append(f"{name} (from {origin})")
    assert not foreign, (
        f"memexpose.{layer} re-exports {foreign}; each name is exported once, by the layer "
        "that defines it: import it from there instead"
    )


def _layer_of(path: Path) -> str | None:
    rel = path.relative_to(PKG_DIR).parts
    return rel[0] if len(rel) > 1 else None


def _module_parts(path: Path) -> list[str]:
    rel = path.relative_to(PKG_DIR.parent).with_suffix("").parts
    return list(rel[:-1]) if rel[-1] == "__init__" else list(rel)


def _imported_modules(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """Return ``(line, absolute module name)`` for each import in ``tree``."""
    package = _module_parts(path)
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "memexpose":
                # from memexpose import memory -> memexpose.memory; __version__ stays.
                found += [
                    (node.lineno, f"memexpose.{a.name}" if a.name in RANK else "memexpose")
                    for a in node.names
                ]
            else:
                found.append((node.lineno, target))
    return found


def _violation(importer: str | None, target: str) -> str | None:
    parts = target.split(".")
    if parts[0] != "memexpose" or len(parts) == 1:
        return None
    dest = parts[1]
    if dest == "errors":
        return None
    if importer is None:
        return "files outside the layer folders may import only memexpose.errors"
    if importer not in RANK:
        return f"folder memexpose/{importer} is no layer; move it into one or add it to RANK"
    if dest not in RANK:
        return f"{target} belongs to no layer; put it in one or add it to RANK"
    if importer == "bench" or dest == importer:
        return None
    if RANK[dest] > RANK[importer]:
        return f"layer {importer} must not import the higher layer {dest}"
    if len(parts) > 2 and importer != "bench":
        return f"import from the package memexpose.{dest}, not its submodule {target}"
    return None


def test_imports_point_down_the_layers() -> None:
    problems = []
    for path in sorted(PKG_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        importer = _layer_of(path)
        for line, target in _imported_modules(path, tree):
            why = _violation(importer, target)
            if why:
                problems.append(f"{path.relative_to(PKG_DIR.parent)}:{line}: {target}: {why}")
    assert not problems, "layering violations:\n" + "\n".join(problems)
