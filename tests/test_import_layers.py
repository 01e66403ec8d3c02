"""The package's layers import one way (docs/design.md, "Layers"): every ``import`` of a ``chatrex`` module,
at the top of a file or inside a function, must go to the importer's own area or to one below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chatrex"

#: area -> the other areas it may import (its own is always allowed)
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "upn": {"utils"},
    "mllm": {"utils"},
    "grounding": {"utils"},
    "data": {"upn", "mllm", "grounding", "utils"},
    "training": {"data", "upn", "mllm", "grounding", "utils"},
    "evaluation": {"data", "upn", "mllm", "grounding", "utils"},
    "interfaces": {"training", "evaluation", "data", "upn", "mllm", "grounding", "utils"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def chatrex_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a ``chatrex`` module in ``path`` (relative ones resolved)."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "chatrex" or name.startswith("chatrex.")]


def layer_violations(root: Path) -> list[str]:
    """One line per import that goes up or sideways against :data:`ALLOWED`."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = module_name(path, root).split(".")
        if len(parts) < 2:
            continue  # the package's own __init__ only re-exports
        area = parts[1]
        if area not in ALLOWED:
            bad.append(f"{path.relative_to(root.parent)}: '{area}' is not an area of docs/design.md's layers")
            continue
        for line, target in chatrex_imports(path, root):
            other = target.split(".")[1] if "." in target else ""
            if other != area and other not in ALLOWED[area]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {area} imports {target}")
    return bad


def test_every_area_is_named():
    areas = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert areas == set(ALLOWED)


def test_layers_import_one_way():
    assert layer_violations(PACKAGE) == []


def test_upn_checkpoint_does_not_import_the_model():
    assert [t for _, t in chatrex_imports(PACKAGE / "upn" / "checkpoint.py", PACKAGE) if t == "chatrex.upn.model"] == []


@pytest.mark.parametrize("area,source,expected", [
    ("data", "from chatrex.training.sampler import split_index\n", "data imports chatrex.training.sampler"),
    ("evaluation", "def f():\n    from chatrex.interfaces.pipeline import batch_to\n",
     "evaluation imports chatrex.interfaces.pipeline"),
    ("upn", "import chatrex.mllm.tokens\n", "upn imports chatrex.mllm.tokens"),
    ("data/engine", "from ...interfaces import pipeline\n", "data imports chatrex.interfaces"),
])
def test_the_check_catches_an_upward_import(tmp_path, area, source, expected):
    root = tmp_path / "chatrex"
    (root / area).mkdir(parents=True)
    (root / "__init__.py").write_text("")
    for name in ALLOWED:
        (root / name).mkdir(exist_ok=True)
        (root / name / "__init__.py").write_text("")
    (root / area / "__init__.py").write_text("")
    (root / area / "mod.py").write_text(source)
    assert [v.split(": ", 1)[1] for v in layer_violations(root)] == [expected]
