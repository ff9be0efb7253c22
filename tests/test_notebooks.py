"""The tutorials in docs/tutorials run top to bottom (on the shipped sample, with the budget
of their parameter cell set small), and are kept in the repository without outputs."""

import os
import time
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


def _run_cell(kc, code: str, timeout: float = 600) -> tuple[dict, str]:
    """Execute `code` in the kernel; its shell reply and everything it printed."""
    return _reply(kc, kc.execute(code), timeout)


def _reply(kc, msg_id: str, timeout: float = 600) -> tuple[dict, str]:
    """The shell reply to request `msg_id` and everything the cell printed (tracebacks too)."""
    printed = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"], "".join(printed)


def test_interrupting_the_kernel_stops_training_and_returns_the_run(tmp_path):
    """The Jupyter stop button (SIGINT to the kernel) during vaelab.train: the cell returns the
    run with its last checkpoint, and the kernel goes on."""
    jupyter_client = pytest.importorskip("jupyter_client.manager")
    from vaelab.api import Run as RunFolder

    km, kc = jupyter_client.start_new_kernel(kernel_name="python3", cwd=str(tmp_path),
                                             env={**os.environ, "MPLBACKEND": "Agg"})
    try:
        msg_id = kc.execute("import vaelab\nrun = vaelab.train('mnist-sample', out='r', epochs=100000, latent_dim=2, "
                            "hidden=[32], quiet=True, progress=False)\nprint('returned', len(run.metrics))")
        # the stop button is pressed once the first epoch's checkpoint has landed; the wait is
        # for an event (not a speed budget): 10 minutes for one epoch of 2,000 images
        for _ in range(6000):
            if RunFolder(tmp_path / "r").checkpoint_epoch:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first epoch did not finish")
        km.interrupt_kernel()
        reply, out = _reply(kc, msg_id)
        assert reply["status"] == "ok" and "returned" in out and "interrupted" in out and "Traceback" not in out, out
        reply, out = _run_cell(kc, "print(run.config.model.latent_dim, run.sample(3).shape[0])")
        assert reply["status"] == "ok" and out.split() == ["2", "3"], out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    epochs = RunFolder(tmp_path / "r").checkpoint_epoch
    assert epochs and epochs < 100000
