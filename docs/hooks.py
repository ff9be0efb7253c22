"""The site's docstring check, run by ``mkdocs build`` (a hook) and by the test suite.

Every public name (``__all__``) of the modules the reference renders has its own docstring
with an example (a ``>>>`` line), and anything that takes or returns a tensor gives its shape;
public methods and properties of those classes have docstrings with shapes. Under
``mkdocs build --strict`` each miss is a warning, so the build fails.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent

# "(B, D)", "(B,)", "(N, C, H, W)", "(B, K, D)"; the word "shape" also counts ("the same shape as x").
SHAPE = re.compile(r"\((?:[A-Z][A-Za-z0-9_]*|\d+)(?:\s*,\s*[A-Za-z0-9_*.+/ ]+)*\s*,?\s*\)|\bshape\b")


def reference_modules(docs: Path = DOCS) -> list[str]:
    """The modules the site renders whole: the Python API page's and every reference page's."""
    found = []
    for page in [docs / "api.md", *sorted((docs / "reference").glob("*.md"))]:
        for m in re.findall(r"^::: (vaelab\.\w+)", page.read_text(), re.M):
            module = m if m.count(".") == 1 else None
            if module and module not in found:
                found.append(module)
    return found


def own_doc(obj) -> str:
    """The object's own docstring: not one inherited (inspect.getdoc climbs the class tree) nor
    the signature a dataclass writes for itself."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not doc or (inspect.isclass(obj) and doc.startswith(obj.__name__ + "(")):
        return ""
    return inspect.cleandoc(doc)


def takes_tensors(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    annotations = [p.annotation for p in sig.parameters.values()] + [sig.return_annotation]
    return any("Tensor" in str(a) for a in annotations if a is not inspect.Parameter.empty)


def problems(module: str) -> list[str]:
    """What the reference is missing for `module`, one line each."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if not names:
        return [f"{module} has no __all__: the reference renders exactly the names listed there"]
    found = []
    for name in names:
        obj = getattr(mod, name, None)
        if obj is None:
            found.append(f"{module}.{name}: listed in __all__ but not defined")
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # a registry or constant: documented where it is declared
        doc = own_doc(obj)
        if not doc:
            found.append(f"{module}.{name}: no docstring")
            continue
        if ">>>" not in doc:
            found.append(f"{module}.{name}: no example (a '>>>' line)")
        if inspect.isfunction(obj) and takes_tensors(obj) and not SHAPE.search(doc):
            found.append(f"{module}.{name}: takes or returns tensors but gives no shape")
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                target = member.fget if isinstance(member, property) else member
                if isinstance(target, (staticmethod, classmethod)):
                    target = target.__func__
                if not inspect.isfunction(target):
                    continue
                mdoc = own_doc(target)
                if not mdoc:
                    found.append(f"{module}.{name}.{attr}: no docstring")
                elif takes_tensors(target) and not SHAPE.search(mdoc):
                    found.append(f"{module}.{name}.{attr}: takes or returns tensors but gives no shape")
    return found


def on_pre_build(config) -> None:
    """mkdocs hook: each missing docstring, example or shape is a warning (an error under --strict)."""
    log = logging.getLogger("mkdocs.hooks.docstrings")
    for module in reference_modules(Path(config["docs_dir"])):
        for problem in problems(module):
            log.warning(f"reference: {problem}")


SCORES_MARK = "<!-- scores table: written from vaelab.scores.SCORES by docs/hooks.py -->"


def scores_table() -> str:
    """The table of every score in ``vaelab.scores.SCORES``: its columns (for a model of three
    layers scored with skip levels 1 and 2), what it is, when an image is unusual, what it needs."""
    from types import SimpleNamespace

    from vaelab.scores import SCORES, column_names

    three_layers = SimpleNamespace(sizes=(8, 6, 4))
    rows = ["| score | columns | what it is | unusual when | needs |", "|---|---|---|---|---|"]
    for name, s in SCORES.items():
        cols = ", ".join(f"`{c}`" for c in column_names(three_layers, [name], (1, 2)))
        needs = ", ".join(f"`{t}`" for t in s.needs) or "every model"
        cells = [f"`{name}`", cols, s.help.replace("|", "\\|"), "low" if s.typical_high else "high", needs]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs hook: the scores page's table, written from the registry."""
    return markdown.replace(SCORES_MARK, scores_table()) if SCORES_MARK in markdown else markdown
