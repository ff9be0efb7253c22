"""The Python reference: every public name of the modules the site documents has a docstring
that gives tensor shapes and an example, and every example runs as written (doctest).

A module's public names are its ``__all__``; the site renders exactly those (mkdocstrings'
``filters: public``). Examples see a clean namespace holding only ``torch``, ``vaelab``,
``run`` (a small trained run, as the reference page says) and ``tmp`` (an empty folder), so an
example that forgets an import fails here as it would for a reader.
"""

import doctest
import importlib.util
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab.runtime import ProgressLine

spec = importlib.util.spec_from_file_location("docs_hooks", Path(__file__).resolve().parents[1] / "docs" / "hooks.py")
hooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hooks)

# The modules the site renders whole, read from its pages.
REFERENCE = hooks.reference_modules()


def test_the_reference_covers_the_story():
    assert REFERENCE[0] == "vaelab.api"
    for module in ("vaelab.distributions", "vaelab.models", "vaelab.nets", "vaelab.objectives", "vaelab.scores"):
        assert module in REFERENCE, module


@pytest.mark.parametrize("module", REFERENCE)
def test_every_public_name_has_a_docstring_with_shapes_and_an_example(module):
    found = hooks.problems(module)
    assert not found, f"{module}:\n  " + "\n  ".join(found)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return vaelab.train("mnist-sample", out=tmp_path_factory.mktemp("doc") / "run", epochs=1, latent_dim=2,
                        hidden=[32], progress=False, quiet=True)


@pytest.mark.parametrize("module", REFERENCE)
def test_every_example_runs(module, run, tmp_path, monkeypatch):
    mod = importlib.import_module(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # image and classifier caches stay in tmp
    # a stopped clock: no progress line falls due in an example, however loaded the machine
    monkeypatch.setattr(ProgressLine, "clock", staticmethod(lambda: 0.0))
    globs = {"torch": torch, "vaelab": vaelab, "run": run, "tmp": str(tmp_path)}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for test in finder.find(mod, module, globs=dict(globs)):
            test.globs = dict(globs)
            runner.run(test, out=out.append)
    finally:
        torch.set_num_threads(threads)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)[-6000:]
