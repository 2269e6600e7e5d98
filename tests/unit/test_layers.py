"""The package's layers: dependencies point one way, cli -> daemon -> exporters ->
collector/bpf, with errors and safe_text beneath them all; and no module reaches
for another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "aiobpf"
# Lower layers first; a module may import its own layer and those below it.
LAYERS = (
    ("aiobpf", "aiobpf.errors", "aiobpf.safe_text"),
    # errors.translate names the collector's exceptions: it sits just above them.
    ("aiobpf.bpf", "aiobpf.collector", "aiobpf.errors.translate"),
    ("aiobpf.exporters",),
    ("aiobpf.daemon",),
    ("aiobpf.cli", "aiobpf.__main__"),
)


def _layer(module: str) -> int:
    """The layer of a module: that of the longest package prefix listed."""
    best, found = -1, ""
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(found):
                best, found = level, prefix
    assert best >= 0, module
    return best


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """Every import of an aiobpf module, at any depth (functions' too): the module and
    the names taken from it."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(module, names) for module, names in found
            if module == "aiobpf" or module.startswith("aiobpf.")]


def test_the_layers_are_known() -> None:
    assert _layer("aiobpf.daemon.budget.cost") == 3
    assert _layer("aiobpf.errors") == 0
    assert _layer("aiobpf.collector.layouts.tables") == 1


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{name} imports {module}"
              for name, tree in _modules().items()
              for module, _ in _imports(tree)
              if _layer(module) > _layer(name)]
    assert upward == []


def test_no_module_imports_another_modules_private_names() -> None:
    """No private names of other modules; a module may import its own compiled part
    (``x`` imports ``_x``, the C module beside it)."""
    private = [f"{name} imports {module}.{imported}"
               for name, tree in _modules().items()
               for module, names in _imports(tree) if module != name
               for imported in names if imported.startswith("_") and not imported.startswith("__")
               and f"{module}.{imported}" != _compiled_part(name)]
    assert private == []


def _compiled_part(name: str) -> str:
    package, _, module = name.rpartition(".")
    return f"{package}._{module}"


def test_relative_imports_are_not_used() -> None:
    """Absolute imports only: the graph above sees every edge."""
    relative = [name for name, tree in _modules().items()
                for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert relative == []


def _module_aliases(tree: ast.Module, known: set[str]) -> dict[str, str]:
    """Names bound to aiobpf modules in ``tree`` (``from aiobpf import errors``,
    ``import aiobpf.x as y``) -> the module."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in known:
                    aliases[alias.asname] = alias.name
    return aliases


def test_no_module_reaches_for_a_private_name_through_a_module() -> None:
    """``errors._has_capability`` is as private as importing it by name."""
    modules = _modules()
    reached = []
    for name, tree in modules.items():
        aliases = _module_aliases(tree, set(modules))
        reached += [f"{name} uses {aliases[node.value.id]}.{node.attr}"
                    for node in ast.walk(tree)
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != name
                    and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert reached == []
