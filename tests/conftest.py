import os
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
