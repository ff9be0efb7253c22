"""What every benchmark script shares: running vaelab's command line in a fresh process,
reading its run folders, and describing the machine a result came from.

    from common import Run, machine, vaelab

    vaelab("train", "--dataset", "mnist", "--epochs", "2", "--out", str(run))
    seconds = [r["seconds"] for r in Run(run).records()]
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from vaelab.api import Run
from vaelab.runtime import cpu_name

__all__ = ["Run", "machine", "pythae_epoch_clock", "vaelab", "VaelabFailed", "noise_and_constant"]


class VaelabFailed(RuntimeError):
    """A vaelab command exited non-zero; the message holds its command and its last lines."""


def vaelab(*args: object, quiet: bool = True, env: dict[str, str] | None = None, threads: int | None = None,
           check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m vaelab ARGS` in a fresh process (so each run pays its own start-up, as a
    user's does). quiet: `--quiet` for train/evaluate and stdout discarded; threads: sets
    OMP_NUM_THREADS; capture: keep stdout and stderr in the result. With check, a failure
    raises VaelabFailed with the command's last lines of output."""
    cmd = [sys.executable, "-m", "vaelab", *map(str, args)]
    if quiet and cmd[3] in ("train", "evaluate") and "--quiet" not in cmd:
        cmd.append("--quiet")
    full_env = {**os.environ, **(env or {})}
    if threads:
        full_env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run(cmd, env=full_env, text=True,
                       stdout=subprocess.PIPE if capture else (subprocess.DEVNULL if quiet else None),
                       stderr=subprocess.PIPE if capture or check else None)
    if check and p.returncode:
        tail = "\n".join((p.stderr or p.stdout or "").strip().splitlines()[-5:])
        raise VaelabFailed(f"{' '.join(cmd[2:])} exited with {p.returncode}:\n{tail}")
    return p


def chosen_parts(p, what: str, parts) -> list[str]:
    """The parts a benchmark's first argument names (comma-separated, or "all"); an unknown one
    ends the command with argparse's error, naming the choices."""
    chosen = list(parts) if what == "all" else what.split(",")
    if set(chosen) - set(parts):
        p.error(f"unknown part {sorted(set(chosen) - set(parts))[0]}; choose from {', '.join(parts)} or all")
    return chosen


def machine() -> dict[str, object]:
    """The host a figure was measured on: CPU and its bf16 units, cores, threads, load, versions."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags, "load_average": load,
            "torch": torch.__version__, "python": platform.python_version()}


def median_epoch_seconds(run: str | Path, skip: int = 1) -> float:
    """The median `seconds` of a run's epochs after the first `skip` (which pay one-time costs)."""
    import statistics

    seconds = [r["seconds"] for r in Run(run).records()]
    return statistics.median(seconds[skip:] or seconds)


def pythae_epoch_clock():
    """A pythae training callback that records the time at each epoch's start and at the end
    of training (`.starts`), for images/s per epoch (needs pythae)."""
    import time

    from pythae.trainers.training_callbacks import TrainingCallback

    class Clock(TrainingCallback):
        def __init__(self):
            self.starts = []

        def on_epoch_begin(self, training_config, **kw):
            self.starts.append(time.perf_counter())

        def on_train_end(self, training_config, **kw):
            self.starts.append(time.perf_counter())

    return Clock()


def noise_and_constant(folder: Path, n: int) -> dict[str, Path]:
    """Uniform noise (every pixel uniform in 0..255) and constant images (each one grey level,
    uniform in 0..255), 28x28, seed 0, as array files in `folder` (made once): n test images
    and 16 training images, which nothing uses (an array file with both splits is scored on
    its test split like a named dataset)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    made = {"noise": rng.integers(0, 256, (n + 16, 28, 28), dtype=np.uint8),
            "constant": np.broadcast_to(rng.integers(0, 256, n + 16, dtype=np.uint8)[:, None, None],
                                        (n + 16, 28, 28)).copy()}
    paths = {}
    for name, images in made.items():
        paths[name] = folder / f"{name}.npz"
        if not paths[name].exists():
            np.savez(paths[name], train=images[:16], test=images[16:])
    return paths
