"""The layout rules of docs/architecture.md, checked on the source: imports only run
downward in the written module order (lazy imports inside functions too), no module is
missing from the order, no public function takes more than six parameters, and the code
passes the linter."""

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


# the modules that may run vaelab's command line in a process of their own (docs/architecture.md):
# compare, which trains each run as a fresh `python -m vaelab train`, beside the API and the CLI
LAUNCHERS = {"compare"}
RUNNERS = {"subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
           "os": {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execlp", "spawnv", "spawnvp",
                  "posix_spawn", "posix_spawnp"}}


def _words(node: ast.AST) -> list[str]:
    """The text a command is made of: the strings of a list or tuple (sys.executable as
    'python'), or a string split on spaces."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split()
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str)
                else "python" if ast.unparse(e) == "sys.executable" else "?" for e in node.elts]
    return []


def _module_run(words: list[str]) -> bool:
    """Whether a command runs vaelab as a module: `python -m vaelab ...`, `sys.executable -m vaelab.cli`."""
    return any(a == "-m" and (w == "vaelab" or w.startswith("vaelab.")) for a, w in zip(words, words[1:]))


def vaelab_launches(path: Path) -> list[int]:
    """Lines of `path` that run vaelab in another process: a command list or tuple with
    ``-m vaelab`` anywhere in the module (so that one built first and run later is seen), and
    a subprocess or os call whose command is ``vaelab ...`` or ``... -m vaelab ...``, as a list
    or a string."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.List, ast.Tuple)) and _module_run(_words(node)):
            found.add(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if node.func.attr in RUNNERS.get(node.func.value.id, set()) and node.args:
                words = _words(node.args[0])
                if _module_run(words) or words[:1] == ["vaelab"]:
                    found.add(node.lineno)
    return sorted(found)


def test_only_the_allowed_modules_run_vaelab_in_a_process():
    ran = {path.stem: vaelab_launches(path) for path in sorted(PACKAGE.glob("*.py"))}
    assert {m for m, lines in ran.items() if lines} - LAUNCHERS == set(), ran
    assert ran["compare"], "the checker no longer sees compare's own command"


def test_the_launch_checker_sees_commands_built_any_way(tmp_path):
    code = ("import os, subprocess, sys\n"
            "def f(args):\n"
            "    command = [sys.executable, '-m', 'vaelab', *args]\n"
            "    subprocess.run(command)\n"
            "    os.system('python3 -m vaelab evaluate run')\n"
            "    subprocess.Popen(['vaelab', 'train'])\n"
            "    subprocess.run((sys.executable, '-m', 'vaelab.cli'))\n"
            "    subprocess.run(['git', 'status'])\n")
    (tmp_path / "m.py").write_text(code)
    assert vaelab_launches(tmp_path / "m.py") == [3, 5, 6, 7]


REGISTRY = re.compile(r"^(?:vaelab\.)?(\w+):([A-Z][A-Z0-9_]*)$")  # "vaelab.models:MODELS", "models:MODELS"


def registry_names_by_string(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(module, line) for every string in `path` that names a vaelab module's registry
    ("vaelab.scores:SCORES"): a way to reach a module's names without importing it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = REGISTRY.match(node.value)
            if m and m.group(1) in modules:
                found.append((m.group(1), node.lineno))
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            m = REGISTRY.match(":".join(e.value for e in node.elts))  # ("vaelab.models", "MODELS")
            if m and m.group(1) in modules:
                found.append((m.group(1), node.lineno))
    return found


def test_no_module_names_a_higher_modules_registry_by_string():
    order = module_order()
    upward = [f"{path.name}:{line} names {target}'s registry, which comes after {path.stem}"
              for path in sorted(PACKAGE.glob("*.py"))
              for target, line in registry_names_by_string(path, set(order))
              if order.index(target) > order.index(path.stem)]
    assert upward == []


def test_the_registry_checker_sees_names_written_as_strings(tmp_path):
    code = ('x = setting("adam", "the optimiser", registry="vaelab.training:OPTIMIZERS")\n'
            'y = registry_names("scores:SCORES")\n'
            'w = {"model.net": ("vaelab.nets", "NETS")}\n'
            'z = "see vaelab.scores.score; time: 12:00"\n')
    (tmp_path / "m.py").write_text(code)
    assert sorted(registry_names_by_string(tmp_path / "m.py", {"training", "scores", "nets"})) == [
        ("nets", 3), ("scores", 2), ("training", 1)]


MAX_PARAMETERS = 6  # more settings than that travel together as one options object
PARAMETERS_ALLOWED: dict[str, set[str]] = {}


def too_many_parameters(source: str) -> list[str]:
    """'name count' for each public function or method (of a public class; ``__init__``
    included) with more than MAX_PARAMETERS parameters: self and cls not counted, *args and
    **kwargs one each."""
    found = []

    def walk(node: ast.AST, prefix: str) -> None:
        for n in ast.iter_child_nodes(node):
            if isinstance(n, ast.ClassDef) and not n.name.startswith("_"):
                walk(n, f"{prefix}{n.name}.")
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if n.name.startswith("_") and n.name != "__init__":
                    continue
                a = n.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                if count > MAX_PARAMETERS:
                    found.append(f"{prefix}{n.name} {count}")

    walk(ast.parse(source), "")
    return found


def test_no_public_function_takes_more_than_six_parameters():
    found = [f"{path.name}: {where}" for path in sorted(PACKAGE.glob("*.py"))
             for where in too_many_parameters(path.read_text())
             if where.split()[0] not in PARAMETERS_ALLOWED.get(path.name, set())]
    assert found == [], "group settings that travel together into an options object (a frozen dataclass)"


def test_the_parameter_checker_counts_as_written():
    source = """
def seven(a, b, c, d, e, f, g): ...
def _private(a, b, c, d, e, f, g): ...
def six(a, b, c, *args, d, **kwargs): ...
def stars(a, b, c, d, *args, e, **kwargs): ...
def only(a, /, b, *, c, d, e, f, g): ...
class Thing:
    def __init__(self, a, b, c, d, e, f, g): ...
    def method(self, a, b, c, d, e, f): ...
    @classmethod
    def make(cls, a, b, c, d, e, f, g): ...
    class Inner:
        def deep(self, a, b, c, d, e, f, g): ...
class _Hidden:
    def method(self, a, b, c, d, e, f, g): ...
"""
    assert too_many_parameters(source) == ["seven 7", "stars 7", "only 7", "Thing.__init__ 7", "Thing.make 7",
                                           "Thing.Inner.deep 7"]


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
