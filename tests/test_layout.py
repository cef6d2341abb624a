"""The tree's shape, checked: every module says what it exports (`__all__`, each name
defined), and `projections/` is a pure core that imports of ultra only the event schema,
naming and the defaults (docs/glossary.md; issue 16)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PURE_CORE_MAY_IMPORT = {"ultra", "ultra.events", "ultra.naming", "ultra.defaults"}


def _modules(*packages: str) -> list[tuple[str, Path]]:
    out = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__main__.py":
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def _public_definitions(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_every_module_that_defines_public_names_lists_them_in_all():
    missing, wrong = [], []
    for name, path in _modules("ultra", "projections"):
        if not _public_definitions(ast.parse(path.read_text())):
            continue  # a package marker or a script
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            missing.append(name)
            continue
        wrong += [f"{name}.{n}" for n in exported if not hasattr(module, n)]
    assert missing == [] and wrong == []


def test_projections_import_only_the_event_schema_naming_and_defaults_of_ultra():
    found = set()
    for name, path in _modules("projections"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
    ours = {m for m in found if m == "ultra" or m.startswith("ultra.")}
    assert ours and ours <= PURE_CORE_MAY_IMPORT, sorted(ours - PURE_CORE_MAY_IMPORT)


def test_no_module_is_over_400_lines():
    """A module that outgrows 400 lines is doing two jobs: split it by job (issue 16)."""
    long = {name: n for name, path in _modules("ultra", "projections")
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
