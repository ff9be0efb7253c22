"""What a training run records beside its checkpoint, and what it says while it trains.

The run folder's ``metrics.jsonl`` (one record per epoch) and ``run.json`` (provenance: what
made the run, one entry more per resume), the picture grids ``recon.png`` and ``samples.png``,
TensorBoard events when tensorboard is installed, the progress lines of a long epoch when no
bar can be drawn, and the one-line summaries. training.py decides when; this module writes.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import threading
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from vaelab import __version__
from vaelab.config import Config
from vaelab.files import atomic_write, write_json
from vaelab.plots import image_grid, save_png
from vaelab.runtime import Dist, ProgressLine, active_threads, clock_time, cpu_name

# ----------------------------------------------------------------------------- run.json and metrics.jsonl


def provenance(device: torch.device, dist: Dist = Dist()) -> dict[str, Any]:
    """What made this run: versions, the source's git commit, the machine and the command."""
    here = Path(__file__).resolve().parent
    commit = None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit = out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    choice = active_threads()
    return {"vaelab_version": __version__, "git_commit": commit, "torch_version": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "device": f"{device.type}: {name}", "threads": torch.get_num_threads(), "processes": dist.world,
            "thread_choice": choice.record() if choice is not None else None, "command": sys.argv,
            "started": datetime.now().isoformat(timespec="seconds")}


def record_start(run_dir: Path, device: torch.device, dist: Dist) -> None:
    """run.json of a new run: its provenance."""
    write_json(run_dir / "run.json", provenance(device, dist))


def record_resume(run_dir: Path, device: torch.device, dist: Dist, from_epoch: int) -> None:
    """Add this session, resumed from `from_epoch`, to run.json's ``resumed`` list (a missing or
    damaged run.json starts afresh)."""
    try:
        prov = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        prov = {}
    prov = prov if isinstance(prov, dict) else {}
    prov.setdefault("resumed", []).append({**provenance(device, dist), "from_epoch": from_epoch})
    write_json(run_dir / "run.json", prov)


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """metrics.jsonl: the records of every epoch so far, one JSON line each, replaced whole."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- pictures

@torch.no_grad()
def write_pictures(model, run_dir: Path, x: torch.Tensor, sample_seed: int,
                   c: torch.Tensor | None = None) -> dict[str, Any]:
    """recon.png: up to 32 test images `x` (spread over the test split) in rows of 8, each
    row above its reconstructed means; samples.png: decoded means of 64 draws from the model's prior, always drawn
    with `sample_seed`, so epochs compare
    (conditional models: row r drawn under the condition of test image r mod n).
    Returns the two uint8 grids, {"recon": ..., "samples": ...}, (H, W) or (H, W, 3)."""
    was_training = model.training
    model.eval()
    recon = model.decode(model.encode(x, c).mean, c).mean.clamp(0, 1)
    width = min(8, len(x))
    blank = torch.ones(width, *x.shape[1:], device=x.device)

    def row(t: torch.Tensor) -> torch.Tensor:  # a row of `width` images, padded with white
        return torch.cat([t, blank[len(t):]])

    rows = torch.cat([torch.cat([row(x[i : i + 8]), row(recon[i : i + 8])]) for i in range(0, len(x), 8)])
    # a learned prior (mog, vamp, hvae) moves during training: draw from the current one
    cs = None if c is None else c[torch.arange(64, device=x.device) // 8 % len(c)]
    samples = model.sample(64, generator=torch.Generator(x.device).manual_seed(sample_seed), c=cs)
    grids = {"recon": image_grid(rows, nrow=width), "samples": image_grid(samples.mean.clamp(0, 1), nrow=8)}
    for name, grid in grids.items():
        save_png(grid, run_dir / f"{name}.png")
    model.train(was_training)
    return grids


# ----------------------------------------------------------------------------- TensorBoard


class Board:
    """TensorBoard events in RUN/tensorboard (so `tensorboard --logdir runs` compares runs),
    when tensorboard is installed (``pip install "vaelab[tensorboard]"``); otherwise nothing.

    Events are stepped by epoch. purge_step = `first_epoch`: TensorBoard hides the events a
    killed run wrote for epochs after its last checkpoint, which this run redoes. The events
    only copy what metrics.jsonl and the pictures hold, so a write that fails (a full disk,
    also inside tensorboard's writer thread) turns them off with one warning instead of
    stopping the run."""

    def __init__(self, run_dir: Path, first_epoch: int) -> None:
        self.writer, self.failed = None, False
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._hook, threading.excepthook = threading.excepthook, self._thread_failed
        self._do(lambda: setattr(self, "writer", SummaryWriter(str(run_dir / "tensorboard"), purge_step=first_epoch)))

    def _thread_failed(self, args) -> None:
        frames = traceback.extract_tb(args.exc_traceback)
        if any("tensorboard" in f.filename for f in frames):
            return  # its writer thread: the error comes back at the next flush, where _do says it
        self._hook(args)

    def _do(self, fn) -> None:
        if self.failed:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - any failure of an optional copy of the metrics
            self.failed, self.writer = True, None
            what = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
            print(f"warning: TensorBoard events are off for this run: writing them failed ({what}); "
                  "metrics.jsonl and the pictures are unaffected", file=sys.stderr)

    def epoch(self, record: dict[str, Any], pictures: dict[str, Any]) -> None:
        if self.writer is not None:
            self._do(lambda: log_epoch(self.writer, record, pictures))

    def hparams(self, cfg: Config, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self._do(lambda: log_hparams(self.writer, cfg, record))

    def close(self) -> None:
        if self.writer is not None:
            self._do(self.writer.close)
        if hasattr(self, "_hook"):
            threading.excepthook = self._hook


def log_epoch(board, record: dict[str, Any], pictures: dict[str, Any]) -> None:
    """An epoch's record at step = epoch: every loss term (train_kl -> train/kl, test_elbo ->
    test/elbo), lr, images_per_s, and the picture grids written this epoch. Flushed, so
    that an epoch's events are on disk before its checkpoint."""
    epoch = record["epoch"]
    for key, value in record.items():
        split, _, term = key.partition("_")
        if split in ("train", "test"):
            board.add_scalar(f"{split}/{term}", value, epoch)
    board.add_scalar("lr", record["lr"], epoch)
    board.add_scalar("images_per_s", record["examples_per_s"], epoch)
    if "active_units" in record:
        board.add_scalar("active_units", record["active_units"], epoch)
    for name, grid in pictures.items():
        board.add_image(name, grid, epoch, dataformats="HW" if grid.ndim == 2 else "HWC")
    board.flush()


def log_hparams(board, cfg: Config, record: dict[str, Any]) -> None:
    """The config (flattened: model.latent_dim, train.lr...) with the final test metrics
    (hparam/test_elbo...), for TensorBoard's HPARAMS tab.

    run_name "." writes them into the run's own tensorboard folder, so the tab has one row
    per run folder, next to its curves (torch's default is a new timestamped subfolder per
    call). TensorBoard keeps the first hyperparameters a folder records, so train.epochs,
    which --resume may raise, is the metric hparam/epochs instead."""
    hparams = {f"{section}.{name}": ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
               for section, values in cfg.to_dict().items() for name, value in values.items()
               if (section, name) != ("train", "epochs")}
    metrics = {f"hparam/{k}": v for k, v in record.items() if k.startswith("test_")}
    metrics["hparam/epochs"] = record["epoch"]
    board.add_hparams(hparams, metrics, run_name=".", global_step=record["epoch"])


# ----------------------------------------------------------------------------- what training prints


class ProgressLog(ProgressLine):
    """When stdout goes to a log (a file, CI, nohup) or no bar can be drawn, print a line every
    LINE_S seconds of a long epoch (the first FIRST_LINE_S seconds in): step, images/s, the mean
    loss and KL so far, and the time left in the epoch and in the run. The timing and the
    replaceable `clock` are ProgressLine's, so tests need no real waiting."""

    def __init__(self, epochs: int, steps_per_epoch: int, batch_size: int, show: bool) -> None:
        super().__init__("training", steps_per_epoch, "steps", show)
        self.epochs, self.steps, self.batch = epochs, steps_per_epoch, batch_size
        self.epoch, self.sums, self.count = 0, {}, 0
        self.run_start = self.start
        self.steps_done = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.sums, self.count = epoch, {}, 0
        self.restart()

    def step(self, i: int, terms: dict[str, torch.Tensor]) -> None:
        """After step i (1-based) of the epoch, with its per-example terms."""
        self.steps_done += 1
        if not self.show:
            return
        for k in ("loss", "kl"):
            if k in terms:
                self.sums[k] = self.sums.get(k, 0.0) + float(terms[k].detach().sum())
        self.count += len(terms["loss"])
        if i == self.steps:
            return
        now = self.due()
        if now is None:
            return
        elapsed = max(now - self.start, 1e-9)
        per_step = max(now - self.run_start, 1e-9) / self.steps_done
        left_epoch = (self.steps - i) * elapsed / i
        left_run = left_epoch + (self.epochs - self.epoch) * self.steps * per_step
        kl = f"  KL {self.sums['kl'] / self.count:.2f}" if "kl" in self.sums else ""
        print(f"epoch {self.epoch}/{self.epochs}  step {i}/{self.steps}  loss {self.sums['loss'] / self.count:.2f}"
              f"{kl}  {i * self.batch / elapsed:.0f} images/s  epoch left {clock_time(left_epoch)}  "
              f"run left ~{clock_time(left_run)}", flush=True)


def print_choices(chosen: dict[str, str], facts) -> None:
    """One line naming every setting chosen from the data (config.json records them all)."""
    if not chosen:
        return
    c, h, w = facts.image_shape
    kind = "binary" if facts.binary else ("8-bit grey" if c == 1 else "8-bit colour")
    parts = ", ".join(f"{name.split('.', 1)[1]} {value}" for name, value in chosen.items())
    print(f"chosen from the data ({facts.n_train} {kind} training images of {c}x{h}x{w}): {parts}", flush=True)


def print_epoch(record: dict[str, Any], latent_dim: int, dist: Dist) -> None:
    """The one-line summary of an epoch on stdout."""
    if "test_elbo" in record:
        shown, label = record["test_elbo"], "test ELBO"
    else:
        shown, label = -record["test_loss"], "test log p(x|z)"
    procs = f" ({dist.world} processes)" if dist.active else ""
    latent = ""
    if "test_kl" in record:
        latent = f"  KL {record['test_kl']:7.2f}  active units {record['active_units']}/{latent_dim}"
    print(f"epoch {record['epoch']:3d}  train loss {record['train_loss']:8.2f}  {label} {shown:8.2f}{latent}  "
          f"{record['examples_per_s']:8.0f} images/s{procs}", flush=True)
