import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Real MNIST from the shared read-only copy when it is there (CI, developer machines).
# Set at import, before the skip markers below are evaluated.
if "VAELAB_DATA" not in os.environ and (SHARED / "mnist").is_dir():
    os.environ["VAELAB_DATA"] = str(SHARED)


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    # a fixed count for vaelab here and in the processes the tests start: the automatic one
    # follows the other vaelab processes on the machine, and a count that changed between a
    # run and its resumed twin would change their rounding (tests/test_threads.py unsets it)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (its folder on sys.path, for its `common`)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def have_mnist() -> bool:
    from vaelab.data import DATASETS, _complete, candidate_dirs

    return any(_complete(d, DATASETS["mnist"]) for d in candidate_dirs(DATASETS["mnist"], None))


requires_mnist = pytest.mark.skipif(not have_mnist(), reason="full MNIST not available offline")


TIMING = ("seconds", "examples_per_s")


def metrics(run, timing: bool = True) -> list[dict]:
    """The per-epoch records of a run folder, read by vaelab's one class for run folders
    (``vaelab.Run``); ``timing=False`` leaves out the wall-clock fields, the only ones that
    differ between two runs that otherwise match exactly."""
    from vaelab.api import Run

    records = Run(run).records()
    path = Path(run) / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    assert len(records) == len(lines), f"{path} has lines that are not epoch records"  # none skipped
    return records if timing else [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture
def tiny_cfg():
    from vaelab.config import Config

    return Config().replace(data={"dataset": "mnist-sample"},
                            model={"hidden": [32], "decoder_hidden": None, "latent_dim": 4},
                            train={"epochs": 2, "batch_size": 250, "warmup_steps": 0})


@pytest.fixture
def compare_in_process(monkeypatch):
    """compare's `vaelab ...` commands run in this process, through the same command line
    (``vaelab.cli.main``), their output and exit code handed back as a finished process's
    are: for the tests of planning, resuming, probing and tabulating, which are not about the
    process boundary (a process each costs seconds of start-up). Tests that keep real processes
    (tests/test_compare.py, tests/test_progress.py): a failure's error line read from a child's
    stderr, the environment a child inherits, a child's progress lines passed on as they come."""
    from vaelab import compare
    from vaelab.cli import main

    def run(args, echo=None):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's refusals, as a process's exit status
                code = e.code if isinstance(e.code, int) else 2
        for line in out.getvalue().splitlines() if echo else ():
            if line.strip() and not line.startswith("run folder:"):
                echo(line)
        return subprocess.CompletedProcess([sys.executable, "-m", "vaelab", *args], code, out.getvalue(),
                                           err.getvalue())

    monkeypatch.setattr(compare, "_vaelab", run)
