"""Which registry holds the names a setting or option takes, for the command line.

A config field such as ``model.model`` or an option such as ``score --scores`` takes a name
from a registry that lives far above the config (``vaelab.models.MODELS``,
``vaelab.scores.SCORES``). The config and the options declare no such link: this module,
above every registry, says which field reads which registry, and hands the names to the
parser that ``vaelab.options`` builds. So ``--help`` lists every choice, and the config and
the options know nothing of the modules above them.

A registry's names are read from its module when that module is loaded (so what a user
registered counts), and otherwise from the keys written in the module's source, without
importing it, so that ``--help`` never loads torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys
from pathlib import Path

from vaelab import options

__all__: list[str] = []

# a flag's dest ("section.field" for train's config fields, the field's name for an option)
# -> the registry whose names it takes
HOMES = {
    "model.model": ("vaelab.models", "MODELS"),
    "model.prior": ("vaelab.models", "PRIORS"),
    "model.net": ("vaelab.nets", "NETS"),
    "model.activation": ("vaelab.nets", "ACTIVATIONS"),
    "model.likelihood": ("vaelab.distributions", "LIKELIHOODS"),
    "model.likelihood_scale": ("vaelab.distributions", "SCALES"),
    "model.flow_type": ("vaelab.flows", "FLOWS"),
    "train.optimizer": ("vaelab.training", "OPTIMIZERS"),
    "train.schedule": ("vaelab.training", "SCHEDULES"),
    "train.objective": ("vaelab.objectives", "OBJECTIVES"),
    "scores": ("vaelab.scores", "SCORES"),
    "what": ("vaelab.explore", "FIGURES"),
}


def registry_names(module: str, name: str) -> list[str]:
    """The names in registry `name` of `module`: the live registry when the module is loaded,
    else the keys written in its source, read without importing it."""
    if module in sys.modules:
        return list(getattr(sys.modules[module], name))
    source = Path(importlib.util.find_spec(module).origin).read_text()
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            items = node.value.keys if isinstance(node.value, ast.Dict) else node.value.elts
            return [ast.literal_eval(k) for k in items]
    raise LookupError(f"{module}:{name}: no literal registry {name} in {module}")


def names(dest: str) -> options.Names | None:
    """The names a flag takes, and what one of them is called ("model", "score"), or None for
    a flag that takes no registry's names."""
    if dest not in HOMES:
        return None
    module, name = HOMES[dest]
    return options.Names(name.lower().removesuffix("s"), tuple(registry_names(module, name)))


def build_parser() -> argparse.ArgumentParser:
    """The `vaelab` argument parser (``vaelab.options.build_parser``), its registry choices filled in."""
    return options.build_parser(names)


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md, written from the parser (``vaelab.options.reference``): `parser`, or the
    command line's own."""
    return options.reference(parser or build_parser())


def train_config(what: str, flags: list[str]):
    """The config `vaelab train FLAGS` would train (``vaelab.options.train_config``)."""
    return options.train_config(what, flags, build_parser())
