"""Every ``from chatrex... import ...`` that the README and docs/ show must work as written."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMPORT = re.compile(r"^\s*from (chatrex[\w.]*) import ([\w, ]+)$", re.M)


def documented_imports():
    found = []
    for doc in DOCS:
        for m in IMPORT.finditer(doc.read_text()):
            names = [n.strip() for n in m.group(2).split(",") if n.strip()]
            found += [(doc.name, m.group(1), n) for n in names]
    return found


def test_the_docs_show_imports():
    names = {(mod, n) for _, mod, n in documented_imports()}
    assert ("chatrex.upn", "UPNWrapper") in names and ("chatrex", "parse_grounded") in names


@pytest.mark.parametrize("doc,module,name", documented_imports())
def test_documented_import_resolves(doc, module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{doc} shows `from {module} import {name}`, which fails"
