"""Training: one explicit loop, a run folder, checkpoints every epoch, exact resume.

``train(cfg, out)`` trains from scratch into folder `out`; ``resume(run_dir, Limits(epochs=N))``
continues a run from its last checkpoint. With the same seed on CPU a resumed run
logs the same losses as an uninterrupted one: the data order, dynamic binarisation
and reparameterisation noise all come from RNG states saved in the checkpoint, and
the default learning-rate schedule does not depend on the total number of epochs.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from vaelab.batches import TRAIN_KEY, Batches, Feed, Loading, SplitInputs, binarization_key, memory_budget, model_inputs
from vaelab.checkpoint import RunError, checkpoint_epoch, load_checkpoint, load_config, read_metrics, save_checkpoint
from vaelab.config import Config, ConfigError, TrainConfig, choose, parse_denoise, resolve
from vaelab.corruption import corrupt
from vaelab.files import RunLock, atomic_write, ensure_dir, write_json
from vaelab.models import active_units, bind_objective, build_model, check_config, check_data_fit
from vaelab.noise import ExampleNoise, keep_noise_out_of_compile
from vaelab.objectives import Schedule
from vaelab.runlog import (
    Board,
    ProgressLog,
    print_choices,
    print_epoch,
    record_resume,
    record_start,
    write_metrics,
    write_pictures,
)
from vaelab.runtime import (
    Dist,
    StopSignals,
    ThreadPolicy,
    autocast_dtype,
    cpu_bf16,
    distributed,
    progress_bar,
    progress_lines,
    rebalance_threads,
    tune_malloc,
)
from vaelab.sources import is_path, load_configured

__all__ = ["train", "resume", "Limits", "learning_rate", "kl_weight", "TrainingDiverged", "TrainingStopped", "RunExists"]


def _fused(cls):
    """The optimizer with its fused (single-kernel) step where this PyTorch has one:
    at batch 128 on a 2-core CPU it makes training ~30% faster than the foreach step."""

    def make(params, lr: float) -> torch.optim.Optimizer:
        params = list(params)
        try:
            return cls(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return cls(params, lr=lr)

    return make


OPTIMIZERS = {
    "adam": _fused(torch.optim.Adam),
    "rmsprop": _fused(torch.optim.RMSprop),  # RMSProp: the optimiser of many VAE tutorials
}
SCHEDULES = ("exp", "cosine", "constant")
# A training set smaller than this many batches trains with smaller batches instead: with
# 200 images and batch 128 an epoch would be 2 steps, and 25 epochs too few to learn.
MIN_STEPS_PER_EPOCH = 16


def effective_batch_size(batch_size: int, n_train: int) -> int:
    """`batch_size`, or ceil(n_train / MIN_STEPS_PER_EPOCH) when that is smaller."""
    return max(1, min(batch_size, -(-n_train // MIN_STEPS_PER_EPOCH)))


class TrainingDiverged(RuntimeError):
    """Training stopped because the loss or its gradient stopped being a finite number.

    Raised after 10 steps in a row with a NaN or infinite loss or gradient (single bad steps
    are skipped and counted in the epoch's ``skipped_steps``), or when every step of an epoch
    was bad. The last good checkpoint is kept, so the run can be resumed, for instance with a
    lower learning rate or gradient clipping. The message says which epoch and step.

    Examples:
        >>> from vaelab.config import Config
        >>> from vaelab.training import TrainingDiverged, train
        >>> cfg = Config().replace(data={"dataset": "mnist-sample"}, model={"hidden": [16]},
        ...                        train={"epochs": 1, "lr": 1e30})
        >>> try:
        ...     train(cfg, tmp + "/diverged", progress=False, quiet=True)
        ... except TrainingDiverged as e:
        ...     print(e)
        the loss was not finite for 10 steps in a row (epoch 1, step 11); stopped. No epoch had finished, ...
    """


class RunExists(RunError):
    """The output folder already holds a run, and neither resuming nor overwriting it was asked.

    Nothing in the folder is changed. Continue the run with [resume][vaelab.training.resume],
    replace it with ``train(..., overwrite=True)`` or train into another folder. It is a
    [RunError][vaelab.checkpoint.RunError].

    Examples:
        >>> from vaelab.checkpoint import load_config
        >>> from vaelab.training import train
        >>> train(load_config(run.path), run.path)
        Traceback (most recent call last):
        ...
        vaelab.training.RunExists: ... already holds a run; continue it with --resume ..., replace it ...
    """


class TrainingStopped(RuntimeError):
    """Ctrl-C (SIGINT) or SIGTERM stopped training at a safe point, between two steps.

    No file is left half written: the checkpoint of the last finished epoch is kept and the
    run continues from it with [resume][vaelab.training.resume]. A second Ctrl-C interrupts at
    once (``KeyboardInterrupt``).

    Attributes:
        exit_code: 128 + the signal's number, the exit status ``vaelab train`` ends with
            (130 for SIGINT, 143 for SIGTERM).

    Examples:
        >>> import signal
        >>> from vaelab.training import TrainingStopped
        >>> e = TrainingStopped("SIGTERM received: stopped after step 40", signal.SIGTERM)
        >>> e.exit_code, isinstance(e, RuntimeError)
        (143, True)
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def _stop_if_asked(stop: StopSignals, dist: Dist, device: torch.device, run_dir: Path, epoch: int,
                   step: int) -> None:
    """Raise TrainingStopped if any process got SIGINT or SIGTERM (a collective: every process
    calls it at the same step)."""
    if not stop.requested(dist, device):
        return
    kept = (f"the checkpoint of epoch {epoch} is kept; continue with: vaelab train --resume {run_dir}"
            if epoch else "no epoch had finished, so there is no checkpoint yet; start the run again")
    raise TrainingStopped(f"{stop.name} received: stopped after step {step}; {kept}", stop.signum)


PACE_EPOCHS = 5


def _spent_and_pace(records: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of training so far (all sessions) and the slowest of the last PACE_EPOCHS epochs."""
    return sum(r["seconds"] for r in records), max((r["seconds"] for r in records[-PACE_EPOCHS:]), default=0.0)


def _out_of_time(t: TrainConfig, records: list[dict[str, Any]], dist: Dist, device: torch.device) -> bool:
    """Whether another epoch would likely take the run past its budget of `t.minutes`.
    Rank 0 decides for every process (their clocks differ), so all stop together."""
    spent, pace = _spent_and_pace(records)
    return dist.any(dist.main and bool(t.minutes) and bool(records) and spent + pace > t.minutes * 60, device)


def _budget_note(t: TrainConfig, records: list[dict[str, Any]], epoch: int) -> str:
    spent, pace = _spent_and_pace(records)
    return (f"time budget: {spent / 60:.1f} of {t.minutes:g} minutes trained and an epoch takes up to {pace:.0f} s, "
            f"so training stops after epoch {epoch} of {t.epochs} (--resume with a larger --minutes continues)")


def _kept(run_dir: Path, epoch: int) -> str:
    if epoch == 0:
        return "No epoch had finished, so no checkpoint was written"
    return f"The last good checkpoint (epoch {epoch}) is kept in {run_dir}/checkpoint"


def learning_rate(t: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate training uses at a step: a linear warm-up, then the schedule.

    The warm-up lasts ``t.warmup_steps`` steps, at most one epoch (so that a small dataset
    with few steps per epoch is not held near 0 for many epochs). The schedules: ``exp``
    multiplies ``t.lr`` by ``t.lr_decay`` every epoch (smoothly, step by step, and
    independent of the total number of epochs, so a resumed run follows the same curve);
    ``cosine`` falls from ``t.lr`` to 0 over ``t.epochs``; ``constant`` stays at ``t.lr``.

    Args:
        t: the training settings; ``lr`` must be set (a run's config has it filled in).
        step: the optimiser step, counted from 0 over the whole run.
        steps_per_epoch: batches in one epoch.

    Returns:
        The learning rate of that step.

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> from vaelab.training import learning_rate
        >>> t = TrainConfig(lr=1e-3, warmup_steps=10, schedule="exp", lr_decay=0.5)
        >>> [round(learning_rate(t, step, 100), 6) for step in (0, 50, 100, 200)]
        [0.0001, 0.000707, 0.0005, 0.00025]
        >>> t = TrainConfig(lr=1e-3, warmup_steps=0, schedule="cosine", epochs=10)
        >>> [round(learning_rate(t, step, 100), 6) for step in (0, 500, 1000)]
        [0.001, 0.0005, 0.0]
    """
    warmup = min(t.warmup_steps, steps_per_epoch)
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if t.schedule == "exp":
        return t.lr * warm * t.lr_decay ** (step / steps_per_epoch)
    if t.schedule == "cosine":
        total = t.epochs * steps_per_epoch
        return t.lr * warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    return t.lr * warm


def kl_weight(t: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The weight of the KL term at a training step, with KL annealing.

    The weight rises linearly from 0 to ``t.beta`` over the first ``t.kl_warmup`` epochs and
    then stays there (Bowman et al. 2016; Sønderby et al. 2016); with ``kl_warmup`` 0 it is
    ``t.beta`` from the start. The test bound is always computed with the full ``beta``.
    Training hands the objective this step's ``vaelab.objectives.Schedule``, whose
    ``kl_scale`` is this weight's share of beta.

    Args:
        t: the training settings.
        step: the optimiser step, counted from 0 over the whole run.
        steps_per_epoch: batches in one epoch.

    Returns:
        The KL weight of that step.

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> from vaelab.training import kl_weight
        >>> t = TrainConfig(beta=1.0, kl_warmup=2)
        >>> [kl_weight(t, step, 100) for step in (0, 50, 100, 200, 300)]
        [0.0, 0.25, 0.5, 1.0, 1.0]
    """
    return t.beta * Schedule.at(t, step, steps_per_epoch).kl_scale


def gradient_norm(model: torch.nn.Module, clip: float) -> torch.Tensor:
    """The global gradient norm, after clipping it to `clip` when that is not 0."""
    if clip:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), clip).detach()
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


class SkippedSteps:
    """Counts the steps skipped for a non-finite loss or gradient (``epoch_count``) and, with
    --skip-grad, for a gradient norm above it (``large_count``, as VDVAE skips outlier updates,
    Child 2021); MAX_IN_A_ROW skipped in a row stop the run as diverged (the last checkpoint is kept)."""

    MAX_IN_A_ROW = 10

    def __init__(self) -> None:
        self.in_a_row, self.epoch_count, self.large_count = 0, 0, 0

    def skip(self, epoch: int, step: int, run_dir: Path, large: bool = False) -> None:
        self.in_a_row += 1
        if large:
            self.large_count += 1
        else:
            self.epoch_count += 1
        if self.in_a_row >= self.MAX_IN_A_ROW:
            what, fix = (("the gradient norm was above --skip-grad", "a higher --skip-grad") if large else
                         ("the loss was not finite", "--clip-grad"))
            raise TrainingDiverged(f"{what} for {self.in_a_row} steps in a row (epoch {epoch + 1}, "
                                   f"step {step + 1}); stopped. {_kept(run_dir, epoch)}. Try a lower --lr or "
                                   f"{fix}.")

    def took(self) -> None:
        self.in_a_row = 0


def default_run_dir(cfg: Config) -> Path:
    """The folder a run goes to when none is given: ``runs/<dataset>-<model>-<date-time>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(cfg.data.dataset).stem if is_path(cfg.data.dataset) else cfg.data.dataset
    return Path("runs") / f"{name}-{cfg.model.model}-{stamp}"


TEST_NOISE_KEY = -1  # the test bound's per-image noise; training keys are (seed << 32) + step


def noise_key(seed: int, step: int) -> int:
    """The key of a training step's per-image noise: the run's seed and the step in one integer."""
    return (seed << 32) + step


@torch.no_grad()
def test_elbo(model, inputs: SplitInputs, batch_size: int = 2000, seed: int = 0,
              dist: Dist = Dist()) -> dict[str, float]:
    """Mean per-image terms of the model's bound objective over a split's inputs, with noise
    tied to each image
    (`seed`): the same value whatever the number of processes sharing the rows. The rows
    go in chunks, each split over the processes as a training batch is, so batch-level
    terms (icvae's) see the same chunks on any number of processes."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    # chunks of at most 2000 images and about 4M input values (activations grow with them)
    batch_size = max(1, min(batch_size, max(128, (1 << 22) // math.prod(inputs.images.shape[1:]))))
    for chunk in range(0, len(inputs), batch_size):
        size = min(len(inputs) - chunk, batch_size)
        a, b = dist.shard(size)
        i, j = chunk + a, chunk + b
        x, c, _ = inputs.rows(i, j)
        noise = ExampleNoise(inputs.index(i, j), noise_key(seed, TEST_NOISE_KEY))
        terms = model(x, c, generator=noise, peers=dist.batch_peers(size))
        for k, v in terms.items():
            sums[k] = sums.get(k, 0) + v.double().sum()
    keys = sorted({*model.objective.terms, *sums})  # with a hierarchy's KL per level (kl_1, ...)
    total = dist.sum_(torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64, device=inputs.device)
                                   for k in keys]))
    model.train(was_training)
    return {k: float(v) / len(inputs) for k, v in zip(keys, total)}


def train(cfg: Config, out: str | Path | None = None, *, progress: bool = True, quiet: bool = False, dataset=None,
          overwrite: bool = False) -> Path:
    """Train a model described by a config into a run folder; what ``vaelab train`` runs.

    Settings the config leaves unset are chosen from the data and recorded in the folder's
    ``config.json``. Every epoch appends a line to ``metrics.jsonl`` and replaces the
    checkpoint, so a run stopped at any moment resumes from its last finished epoch;
    ``recon.png`` and ``samples.png`` are redrawn every ``image_every`` epochs and at the end.
    The folder is locked while training runs in it. With tensorboard installed, events also
    go to ``RUN/tensorboard``. For notebooks, [vaelab.train][vaelab.api.train] takes keyword
    settings and returns a ``vaelab.Run``.

    Launched by torchrun, every process trains on its slice of each global batch with
    DistributedDataParallel (gloo on CPU, NCCL on CUDA) and only rank 0 writes. Data order,
    binarisation and noise are drawn per global batch or per image, so N processes log what
    one process logs, and a checkpoint resumes on any number of processes.

    Args:
        cfg: the run's settings (a [Config][vaelab.config.Config]).
        out: the run folder; None makes ``runs/<dataset>-<model>-<date-time>``. A run already
            there is continued by [resume][vaelab.training.resume], which reads its config.
        progress: show progress bars (drawn only on a terminal or in Jupyter).
        quiet: also hide the one-line epoch summaries and notes (warnings still print).
        dataset: an already loaded [Dataset][vaelab.data.Dataset] to train on instead of
            loading ``cfg.data`` from disk.
        overwrite: replace a previous run in `out` (only a folder that holds a vaelab run).

    Returns:
        The run folder.

    Raises:
        ConfigError: an invalid setting, or one that does not fit the data.
        RunExists: `out` already holds a run and `overwrite` was not given.
        TrainingDiverged: the loss stopped being finite; the last good checkpoint is kept.
        TrainingStopped: Ctrl-C or SIGTERM; the last finished epoch's checkpoint is kept.

    Examples:
        >>> from vaelab.checkpoint import checkpoint_epoch
        >>> from vaelab.config import Config
        >>> from vaelab.training import train
        >>> cfg = Config().replace(data={"dataset": "mnist-sample"}, model={"latent_dim": 2, "hidden": [16]},
        ...                        train={"epochs": 1})
        >>> folder = train(cfg, tmp + "/small", progress=False, quiet=True)
        >>> folder.name, checkpoint_epoch(folder), (folder / "config.json").is_file()
        ('small', 1, True)
    """
    return _session(cfg, out, False, progress, quiet, dataset, overwrite)


def _session(cfg: Config, out: str | Path | None, resume: bool, progress: bool, quiet: bool, dataset,
             overwrite: bool) -> Path:
    """`train`'s work, and `resume`'s: a new run in `out`, or the run there continued."""
    check_config(cfg)  # before a folder is made or a process group joined
    dist, device = distributed(cfg.train.device)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    if dist.active and out is None:
        raise ConfigError("under torchrun pass --out (each process would otherwise name its own run folder)")
    _check_out_of_data(cfg, run_dir)
    made = dist.main and not run_dir.exists()
    try:
        # this process's share of the CPUs for the call; a notebook kernel gets its own setting back after
        with ThreadPolicy(cfg.train.threads) as threads:
            if dist.main and not quiet and device.type == "cpu":
                print(threads.choice.line(), flush=True)
            return _train_in_folder(cfg, run_dir, resume, progress, quiet, dataset, overwrite, dist, device)
    except BaseException:
        if made and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".lock"}:
            shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves no empty folder behind
        raise


def _check_out_of_data(cfg: Config, run_dir: Path) -> None:
    """A run folder inside the image folder it trains on would add its own pictures to the data."""
    if not is_path(cfg.data.dataset):
        return
    data = Path(cfg.data.dataset).expanduser().resolve()
    if data.is_dir() and run_dir.resolve().is_relative_to(data):
        raise ConfigError(f"--out {run_dir} is inside the data folder {data}: its pictures would become training "
                          "images; choose an --out outside it")


def _train_in_folder(cfg: Config, run_dir: Path, resume: bool, progress: bool, quiet: bool, dataset,
                     overwrite: bool, dist: Dist, device: torch.device) -> Path:
    with ExitStack() as stack:

        def open_run_folder() -> None:
            ensure_dir(run_dir, "run folder")
            stack.enter_context(RunLock(run_dir))
            holds_run = any((run_dir / d).exists() for d in ("checkpoint", "checkpoint.old"))
            if not resume and holds_run and overwrite:
                _clear_run(run_dir)
            elif not resume and holds_run:
                raise RunExists(f"{run_dir} already holds a run; continue it with --resume {run_dir}, replace it "
                               "with --overwrite, or choose another --out")

        _rank0_first(dist, device, open_run_folder, "open the run folder")
        stop = stack.enter_context(StopSignals())
        verbose = dist.main and not quiet
        return _train(cfg, run_dir, resume, progress and verbose, verbose, dataset, stop, stack, dist, device)


def _clear_run(run_dir: Path) -> None:
    """Remove a previous run's files (for --overwrite); refuse a folder that is not a run."""
    if not (run_dir / "config.json").is_file():
        raise RunError(f"{run_dir} has a checkpoint but no config.json: not a vaelab run folder, so --overwrite "
                       "will not delete it; choose another --out")
    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _rank0_first(dist: Dist, device: torch.device, fn, what: str):
    """Run `fn` on rank 0 only; if it raised, every process raises (rank 0 its own error),
    so that no process waits forever in a collective the failed one never reaches."""
    result, problem = None, None
    if dist.main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - raised below, after telling the other processes
            problem = e
    if dist.any(problem is not None, device):
        raise problem if problem is not None else RunError(f"rank 0 could not {what} (see its message)")
    return result


def _load_data(cfg: Config, progress: bool, dist: Dist, device: torch.device):
    """Every process loads the data; rank 0 first, so that only it builds an image cache."""
    data = _rank0_first(dist, device, lambda: load_configured(cfg.data, progress=progress), "load the data")
    return data if dist.main else load_configured(cfg.data, progress=False)


@dataclass
class Session:
    """What one training call sets up once and its loop reads: the resolved config, the
    model (and `step_model`, the DDP- or compile-wrapped module the steps call), optimiser,
    batches, the test inputs, and where the run stands (epoch, step, records)."""

    cfg: Config
    run_dir: Path
    dist: Dist
    device: torch.device
    model: Any
    step_model: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    batches: Batches
    test_inputs: SplitInputs
    info: dict[str, Any]
    records: list[dict[str, Any]]
    epoch: int
    step: int
    verbose: bool
    denoise: tuple[str, float, float] | None
    skips: SkippedSteps = field(default_factory=SkippedSteps)


def _train(cfg: Config, run_dir: Path, resume: bool, progress: bool, verbose: bool, dataset, stop: StopSignals,
           stack: ExitStack, dist: Dist, device: torch.device) -> Path:
    s = _setup(cfg, run_dir, resume, progress, verbose, dataset, dist, device)
    t = s.cfg.train
    first_epoch = s.epoch + 1
    board = Board(run_dir, first_epoch) if dist.main else None
    if board is not None:
        stack.callback(board.close)  # flushes on every way out
    x_show, c_show, _ = s.test_inputs.spread(32)  # across the test split: its first files are often alike
    log = ProgressLog(t.epochs, len(s.batches), s.batches.batch_size, show=progress and progress_lines())
    stopping = s.epoch >= t.epochs or _out_of_time(t, s.records, dist, device)
    while not stopping:
        start = time.perf_counter()
        sums, n_used, lr = _run_epoch(s, stop, log, progress)
        record = end_of_epoch(s, sums, n_used, lr, start)
        stopping = s.epoch >= t.epochs or _out_of_time(t, s.records, dist, device)
        if dist.main:
            pictures = {}
            if s.epoch % t.image_every == 0 or stopping:
                pictures = write_pictures(s.model, run_dir, x_show, t.seed, c_show)
            # metrics first, then the checkpoint: a kill in between leaves a record for an epoch
            # the checkpoint does not have, which resuming drops and recomputes identically
            # (and TensorBoard hides, by the resumed writer's purge_step)
            write_metrics(run_dir, s.records)
            if board is not None:
                board.epoch(record, pictures)
            # the data generators are all of a run's random state: model noise is tied to (step, image)
            save_checkpoint(run_dir, s.model, s.optimizer, {**s.info, "epoch": s.epoch, "step": s.step},
                            rng=s.batches.rng_state())
        if verbose:
            print_epoch(record, s.model.latent_dim, dist)
        dist.barrier()  # nobody starts the next epoch before rank 0's checkpoint is on disk
        _stop_if_asked(stop, dist, device, run_dir, s.epoch, s.step)
    if s.epoch < t.epochs and verbose:  # the loop ended early: the time budget is spent
        print(_budget_note(t, s.records, s.epoch), flush=True)
    if board is not None and s.epoch >= first_epoch:  # this call trained: the final metrics are new
        board.hparams(s.cfg, s.records[-1])
    return run_dir


def _setup(cfg: Config, run_dir: Path, resume: bool, progress: bool, verbose: bool, dataset, dist: Dist,
           device: torch.device) -> Session:
    """Load the data, fill the recipe, build model, optimiser and batches, and start the run
    folder (or read where a resumed run stands)."""
    tune_malloc()
    torch.manual_seed(cfg.train.seed)
    make_optimizer = choose(OPTIMIZERS, cfg.train.optimizer, "optimizer")
    choose(SCHEDULES, cfg.train.schedule, "schedule")
    data = dataset or _load_data(cfg, progress, dist, device)
    cfg, chosen = _configure(cfg, data, resume, verbose, dist)
    check_data_fit(cfg.model, cfg.data.binarization)
    model = build_model(cfg.model, data.image_shape, cond_dim=data.cond_dim).to(device)
    cfg, amp = _precision(cfg, model, device, resume, verbose)
    t = cfg.train
    # what forward runs, in training and in the test pass; before the optimiser, which also steps the
    # networks an objective trains beside the model (FactorVAE's discriminator)
    bind_objective(model, t)
    optimizer = make_optimizer(model.parameters(), t.lr)
    # a batch size replaced is said even under --quiet when it was asked for
    note = dist.main and not resume and (verbose or "train.batch_size" not in chosen)
    batches, budget = _batches(cfg, data, model, device, dist, note)
    if dist.main and not resume and t.warmup_steps > len(batches) and t.warmup_steps != TrainConfig().warmup_steps:
        print(f"note: --warmup-steps {t.warmup_steps} is longer than an epoch ({len(batches)} steps): the "
              "learning-rate warm-up lasts one epoch", file=sys.stderr)  # asked for: said under --quiet too
    s = Session(cfg=cfg, run_dir=run_dir, dist=dist, device=device, model=model, step_model=model,
                optimizer=optimizer, scaler=torch.amp.GradScaler(device.type, enabled=amp == torch.float16),
                batches=batches, test_inputs=model_inputs(model, cfg, data.test, len(data.classes), device, budget),
                records=[], epoch=0, step=0, verbose=verbose,
                denoise=parse_denoise(t.denoise) if t.denoise else None,
                info={"image_shape": list(data.image_shape), "cond_dim": model.cond_dim, "dataset": data.name,
                      "data_source": data.source, "batch_size": batches.batch_size, "classes": list(data.classes)})
    if resume:
        _resume_state(s)
    else:
        _start_run_folder(s, data, budget)
    # DDP synchronises gradients only for work inside the wrapped module's forward: the
    # model's forward runs the whole objective (models.py)
    if dist.active:
        s.step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        keep_noise_out_of_compile()
        s.step_model = torch.compile(s.step_model)
    return s


def _configure(cfg: Config, data, resume: bool, verbose: bool, dist: Dist) -> tuple[Config, dict[str, str]]:
    """The run's config: the recipe filled from the data (said once), the data's identity
    recorded; and the settings chosen from the data."""
    facts = data.facts()
    cfg, chosen = resolve(cfg, facts)
    if verbose and not resume:
        print_choices(chosen, facts)
        if cfg.data.binarization != "none" and not facts.binary:
            print(f"note: binarising 8-bit images as asked ({cfg.data.binarization}): each pixel becomes 0 or 1 "
                  "with probability pixel/255; leave --binarization unset to model the 256 levels",
                  file=sys.stderr)
    if resume and cfg.data.fingerprint and data.fingerprint and data.fingerprint != cfg.data.fingerprint \
            and dist.main:
        print(f"warning: the data in {data.source} changed since this run started "
              f"(fingerprint {data.fingerprint}, was {cfg.data.fingerprint})", file=sys.stderr)
    if not resume:  # record where the data came from and what it was
        where = str(Path(cfg.data.dataset).expanduser().resolve()) if is_path(cfg.data.dataset) else cfg.data.dataset
        cfg = cfg.replace(data={"dataset": where, "fingerprint": data.fingerprint or None})
    return cfg, chosen


def _precision(cfg: Config, model, device: torch.device, resume: bool, verbose: bool):
    """(config with the precision used recorded, autocast dtype or None) and the model set to it."""
    t = cfg.train
    conv = cfg.model.net != "mlp" or getattr(model, "convolutional", False)  # the ladder is conv whatever --net
    # a run resumed with "auto" was started by a version that kept CPUs in fp32: it stays there
    amp = autocast_dtype(t.precision, device, conv and not resume)
    if t.precision == "auto" and not resume:  # recorded, so that the config reruns the same way
        cfg = cfg.replace(train={"precision": {None: "fp32", torch.bfloat16: "bf16"}[amp]})
        if verbose and amp is not None and device.type == "cpu":
            print(f"precision: bf16 autocast for the networks, as this CPU has {cpu_bf16()} instructions "
                  "(densities and the optimiser stay fp32; --precision fp32 turns it off)", flush=True)
    model.set_precision(amp, channels_last=conv)
    return cfg, amp


def _batches(cfg: Config, data, model, device: torch.device, dist: Dist, note: bool) -> tuple[Batches, int]:
    """The training batches (the global batch split over the processes) and the memory budget."""
    t = cfg.train
    budget = memory_budget(cfg.data, device)
    cond = data.train.conditions(len(data.classes)) if model.conditional else None
    batch_size = effective_batch_size(t.batch_size, len(data.train))
    if batch_size < t.batch_size and note:  # the steps as Batches counts them: the last batch may be short
        n, asked = len(data.train), t.batch_size
        steps, before = -(-n // batch_size), -(-n // asked)
        why = (f"so that an epoch has {steps} steps, not {before}" if steps != before else
               f"so that the epoch's {steps} steps are of near-equal size (its last batch of {asked} would "
               f"hold {n - (before - 1) * asked} images)")
        print(f"note: {n} training images: batches of {batch_size} instead of {asked}, {why}", file=sys.stderr)
    if batch_size < dist.world:
        raise ConfigError(f"a global batch of {batch_size} cannot be split over {dist.world} processes; "
                          "raise --batch-size or use fewer processes")
    feed = Feed(cfg.data.binarization, dequantize=not model.likelihood.discrete)
    loading = Loading(seed=t.seed, budget=budget, fixed_key=binarization_key(cfg.data.binarization_seed, TRAIN_KEY),
                      rank=dist.rank, world=dist.world)
    batches = Batches(data.train, batch_size, feed, device, cond=cond, loading=loading)
    return batches, budget


def _resume_state(s: Session) -> None:
    """Load the checkpoint into the session and add this session to the run's provenance."""
    info, rng = load_checkpoint(s.run_dir, s.model, s.optimizer)
    s.epoch, s.step = info["epoch"], info["step"]
    s.batches.set_rng_state(rng)
    s.records = read_metrics(s.run_dir, upto=s.epoch)
    if s.dist.main:
        record_resume(s.run_dir, s.device, s.dist, s.epoch)
        write_json(s.run_dir / "config.json", s.cfg.to_dict())  # resume() may have changed the epochs


def _start_run_folder(s: Session, data, budget: int) -> None:
    if s.dist.main:
        write_json(s.run_dir / "config.json", s.cfg.to_dict())
        record_start(s.run_dir, s.device, s.dist)
        write_metrics(s.run_dir, s.records)
        if data.skipped:
            atomic_write(s.run_dir / "skipped_images.txt", "\n".join(data.skipped) + "\n")
            print(f"skipped {len(data.skipped)} unreadable image(s); listed in "
                  f"{s.run_dir / 'skipped_images.txt'}", file=sys.stderr)
    if s.verbose and not s.batches.resident:
        print(f"streaming {len(data.train)} training images from {data.source} "
              f"({data.train.nbytes / 2**20:.0f} MiB > budget {budget / 2**20:.0f} MiB)", file=sys.stderr)


def _run_epoch(s: Session, stop: StopSignals, log: ProgressLog, progress: bool):
    """One pass over the training batches: (per-term sums, images of the steps taken, last lr)."""
    t, dist = s.cfg.train, s.dist
    s.model.train()
    sums: dict[str, torch.Tensor] = {}
    steps_per_epoch = len(s.batches)
    bar = progress_bar(s.batches, desc=f"epoch {s.epoch + 1}/{t.epochs}", show=progress, leave=False)
    log.start_epoch(s.epoch + 1)
    _follow_threads(s, force=True)
    n_used, lr = 0, learning_rate(t, s.step, steps_per_epoch)  # images of the steps taken
    for i, batch in enumerate(bar):
        lr = learning_rate(t, s.step, steps_per_epoch)
        terms, value = train_step(s, batch, lr)
        if terms is not None:
            n_used += len(terms["loss"])  # this process's rows
            with torch.no_grad():
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v.detach().double().sum()
        periodic = i % 25 == 0 or i == steps_per_epoch - 1
        if periodic and terms is not None:
            bar.set_postfix(loss=f"{value:.2f}", lr=f"{lr:.2e}")
        if periodic or not dist.active:  # one process: after every step; several: all at the same steps
            _stop_if_asked(stop, dist, s.device, s.run_dir, s.epoch, s.step)
        if terms is not None:
            log.step(i + 1, terms)
        _follow_threads(s)
    bar.close()
    return sums, n_used, lr


def _follow_threads(s: Session, force: bool = False) -> None:
    """Take this process's new share of the CPUs when other vaelab processes started or ended
    (a clock read between counts; see runtime.ThreadPolicy), and say so."""
    changed = rebalance_threads(force)
    if changed is not None and s.verbose and s.device.type == "cpu":
        print(changed.line(), flush=True)


def train_step(s: Session, batch, lr: float):
    """One optimiser step on one batch: (its per-example terms, the loss as a number), or
    (None, loss) when the loss or gradient is not finite and the step is skipped."""
    t, dist = s.cfg.train, s.dist
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    # denoising: the encoder sees the batch (after binarisation) corrupted with noise tied to
    # (seed, step, image), the likelihood scores the clean batch
    key = noise_key(t.seed, s.step)
    x_in = None if s.denoise is None else corrupt(batch.x, batch.idx, s.denoise, key)
    # the KL warm-up's share of beta at this step (the test pass runs without a schedule: full beta)
    terms = s.step_model(batch.x, batch.cond, schedule=Schedule.at(t, s.step, len(s.batches)),
                         generator=ExampleNoise(batch.idx, key), x_in=x_in, peers=dist.batch_peers(batch.size))
    # the global batch mean: DDP averages the processes' gradients, so each contributes its
    # sum scaled by world / global batch size
    loss = terms["loss"].sum() * (dist.world / batch.size)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.optimizer)
    norm = gradient_norm(s.model, t.clip_grad)
    value, norm = torch.stack([loss.detach() / dist.world, norm.to(loss.dtype)]).tolist()  # one sync
    # a step whose loss or gradient is not finite is skipped, not taken (as VDVAE skips outlier
    # updates); a run of them means divergence. fp16's scaler skips on its own.
    bad = not (math.isfinite(value) and math.isfinite(norm))
    if not s.scaler.is_enabled() and dist.any(bad, s.device):
        s.skips.skip(s.epoch, s.step, s.run_dir)
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        return None, value
    if t.skip_grad and norm > t.skip_grad:  # the norm is the same in every process (after DDP's all-reduce)
        s.skips.skip(s.epoch, s.step, s.run_dir, large=True)
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        return None, value
    s.skips.took()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.step += 1
    return terms, value


def end_of_epoch(s: Session, sums: dict[str, torch.Tensor], n_used: int, lr: float, start: float) -> dict[str, Any]:
    """The epoch's record: the training terms reduced over the processes, the test pass, KL
    and active units, timing; appended to the session's records."""
    dist, device, t = s.dist, s.device, s.cfg.train
    if dist.sum_(torch.tensor(float(n_used), device=device)) == 0:
        large = " or a gradient norm above --skip-grad" if s.skips.large_count else ""
        raise TrainingDiverged(f"every step of epoch {s.epoch + 1} had a non-finite loss or gradient{large}; "
                               f"stopped. {_kept(s.run_dir, s.epoch)}. Try a lower --lr or --clip-grad.")
    keys = sorted(sums)
    totals = dist.sum_(torch.stack([sums[k] for k in keys] + [torch.tensor(float(n_used), dtype=torch.float64,
                                                                           device=device)]))
    train_terms = {f"train_{k}": float(v) / float(totals[-1]) for k, v in zip(keys, totals)}
    if not all(math.isfinite(v) for v in train_terms.values()):
        raise TrainingDiverged(f"a loss term became non-finite during epoch {s.epoch + 1}; stopped. "
                               f"{_kept(s.run_dir, s.epoch)}. Try a lower --lr.")
    test_terms = {f"test_{k}": v for k, v in test_elbo(s.model, s.test_inputs, seed=t.seed, dist=dist).items()}
    if s.model.has_density:
        if hasattr(s.model, "level_shapes"):  # a ladder: the units of each level too, bottom first
            per_level = active_units(s.model, s.test_inputs, dist, levels=s.model.sizes)
            test_terms["active_units"], test_terms["active_units_levels"] = sum(per_level), per_level
        else:
            test_terms["active_units"] = active_units(s.model, s.test_inputs, dist)
    s.epoch += 1
    seconds = time.perf_counter() - start
    n_seen = s.batches.n  # the training images
    record: dict[str, Any] = {"epoch": s.epoch, "step": s.step, "batch_size": s.batches.batch_size, "lr": lr,
                              **train_terms, **test_terms,
                              "seconds": round(seconds, 3), "examples_per_s": round(n_seen / seconds, 1),
                              "threads": torch.get_num_threads()}
    if s.skips.epoch_count:
        record["skipped_steps"] = s.skips.epoch_count
        if s.verbose:
            print(f"note: epoch {s.epoch} skipped {s.skips.epoch_count} step(s) whose loss or gradient was not "
                  "finite", file=sys.stderr)
        s.skips.epoch_count = 0
    if s.skips.large_count:
        record["skipped_large_grad"] = s.skips.large_count
        if s.verbose:
            print(f"note: epoch {s.epoch} skipped {s.skips.large_count} step(s) whose gradient norm was above "
                  f"--skip-grad {t.skip_grad:g}", file=sys.stderr)
        s.skips.large_count = 0
    s.records.append(record)
    return record


@dataclass(frozen=True)
class Limits:
    """What a resumed run may change ([resume][vaelab.training.resume]); None keeps the
    run's configured value, and the new values are written back to its ``config.json``.

    Attributes:
        epochs: train up to this many epochs in total (not this many more).
        minutes: the time budget for all sessions of the run together (0: none).
        threads: the CPU threads (0: this process's share, see [TrainConfig][vaelab.config.TrainConfig]).

    Examples:
        >>> from vaelab.training import Limits
        >>> Limits(epochs=20).minutes is None
        True
    """

    epochs: int | None = None
    minutes: float | None = None
    threads: int | None = None


def resume(run_dir: str | Path, limits: Limits | None = None, *, progress: bool = True, quiet: bool = False,
           dataset=None) -> Path:
    """Continue a run from its last checkpoint, exactly as ``vaelab train --resume`` does.

    The settings come from the run's ``config.json``; only the number of epochs, the time
    budget and the threads can change (`limits`). On CPU with the same seed a resumed run
    logs the same losses as one that was never interrupted.

    Args:
        run_dir: the run folder.
        limits: the epochs in total, the time budget and the threads (a ``Limits``); None, or
            a field left None, keeps the configured value.
        progress: show progress bars, as for [train][vaelab.training.train].
        quiet: hide the epoch summaries and notes, as for [train][vaelab.training.train].
        dataset: an already loaded [Dataset][vaelab.data.Dataset] to train on instead of
            loading the run's data from disk.

    Returns:
        The run folder.

    Raises:
        RunError: `run_dir` holds no readable run.
        ConfigError: `epochs` is fewer than the epochs already trained.

    Examples:
        >>> from vaelab.checkpoint import checkpoint_epoch, read_metrics
        >>> from vaelab.config import Config
        >>> from vaelab.training import Limits, resume, train
        >>> cfg = Config().replace(data={"dataset": "mnist-sample"}, model={"latent_dim": 2, "hidden": [16]},
        ...                        train={"epochs": 1})
        >>> folder = train(cfg, tmp + "/longer", progress=False, quiet=True)
        >>> folder = resume(folder, Limits(epochs=2), progress=False, quiet=True)
        >>> checkpoint_epoch(folder), [r["epoch"] for r in read_metrics(folder)]
        (2, [1, 2])
    """
    limits = limits or Limits()
    epochs = limits.epochs
    cfg = load_config(run_dir)
    done = checkpoint_epoch(run_dir)
    if epochs is not None and done is not None and epochs < done:
        raise ConfigError(f"{run_dir} has already trained {done} epochs; the epochs asked for are the total "
                          f"(--epochs, or epochs=), so give more than {done} to continue it (nothing was changed)")
    changed = {k: v for k, v in vars(limits).items() if v is not None and v != getattr(cfg.train, k)}
    if changed:
        cfg = cfg.replace(train=changed)  # rank 0 writes it, under the run lock
    return _session(cfg, run_dir, True, progress, quiet, dataset, False)

