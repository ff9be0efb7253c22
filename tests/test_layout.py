"""The layout rules of docs/architecture.md, checked on the source: imports only run
downward in the written module order (lazy imports inside functions too), no module is
missing from the order, and the code passes the linter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vaelab"


def module_order() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- module order[^>]*-->\n(.*?)<!-- end module order -->", text, re.S)
    assert block, "docs/architecture.md has lost its module-order block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def vaelab_imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(module, line) for every import of a vaelab module in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "vaelab":
                continue
            if len(parts) > 1:
                found.append((parts[1], node.lineno))
            else:  # from vaelab import x: a module, or a name of the package itself
                found += [(a.name if a.name in modules else "__init__", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], node.lineno) for a in node.names
                      if a.name.startswith("vaelab.")]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # from . import x / from .x import y
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            found += [(n if n in modules else "__init__", node.lineno) for n in names]
    return found


def test_every_module_is_in_the_written_order():
    order = module_order()
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert sorted(order) == sorted(set(order)), "a module is listed twice"
    assert modules - set(order) == set(), "modules missing from docs/architecture.md's order"
    assert set(order) - modules == set(), "docs/architecture.md lists modules that do not exist"


def test_imports_only_run_downward():
    order = module_order()
    modules = set(order)
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        me = path.stem
        for target, line in vaelab_imports(path, modules):
            if target != me and order.index(target) > order.index(me):
                upward.append(f"{path.name}:{line} imports {target}, which comes after {me}")
    assert upward == []


def test_the_import_checker_sees_lazy_and_relative_imports(tmp_path):
    code = "def f():\n    from vaelab.training import train\n    import vaelab.cli\nfrom . import nets\n"
    (tmp_path / "m.py").write_text(code)
    assert sorted(vaelab_imports(tmp_path / "m.py", {"training", "cli", "nets"})) == [("cli", 3), ("nets", 4),
                                                                                 ("training", 2)]


def test_the_code_passes_the_linter():
    """ruff, with the rule set in pyproject.toml (installed by the test extra), on the code and
    on the tutorials' cells."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "benchmarks", "docs"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_package_names_its_public_functions_lazily():
    """vaelab/__init__.py comes first and imports nothing of vaelab; it names the public
    functions by module and attribute, and each of those must exist."""
    import importlib

    import vaelab

    order = module_order()
    for name, module in vaelab._LAZY.items():
        assert module.split(".")[1] in order, module
        assert callable(getattr(importlib.import_module(module), name)), name
        assert getattr(vaelab, name) is getattr(importlib.import_module(module), name)
