"""The tutorials in docs/tutorials run top to bottom (on the shipped sample, with the budget
of their parameter cell set small), and are kept in the repository without outputs."""

from pathlib import Path

import pytest

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "docs" / "tutorials").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat")


def quick(nb) -> None:
    """Set QUICK = True in the parameter cell (the first code cell, which starts '# Parameters')."""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert cell.source.startswith("# Parameters") and "QUICK = False" in cell.source, "no parameter cell"
    cell.source = cell.source.replace("QUICK = False", "QUICK = True")


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_the_tutorial_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_the_tutorial_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    quick(nb)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in shown), "no figure was shown"


def test_there_are_tutorials():
    assert TUTORIALS
