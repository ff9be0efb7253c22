"""The notebook face of vaelab: train or load a run, then look at it in a few calls.

    import vaelab
    run = vaelab.train(dataset="mnist-sample", latent_dim=2, epochs=5)
    run.plot("manifold")                  # a matplotlib figure, shown inline in Jupyter
    run.evaluate(k=100)["nll"]
    run.reconstruct(run.images("test", 8))

Keyword names are the config's field names (``vaelab train --help`` lists them as flags),
checked as the command line checks them. These are the command line's functions: a run
trained here is a run folder like any other.
"""

from __future__ import annotations

import difflib
import sys
import warnings
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from vaelab.checkpoint import RunError, checkpoint_epoch, load_run, read_eval, read_metrics
from vaelab.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, did_you_mean, read_flag
from vaelab.evaluate import posterior_means
from vaelab.scores import Table

__all__ = ["train", "load", "Run"]

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def settings() -> dict[str, str]:
    """Every setting `train` takes -> its config section."""
    return {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)
            if not f.metadata.get("internal")}


def aliases() -> dict[str, str]:
    """Flag names that differ from their field's name, as keywords -> the field (``scale`` ->
    ``likelihood_scale``, ``lambda_`` and ``lam`` alike), so that what ``vaelab train --help``
    shows also works from Python."""
    found = {}
    for cls in SECTIONS.values():
        for f in fields(cls):
            flag = f.metadata.get("flag")
            if flag and not f.metadata.get("internal"):
                name = flag.lstrip("-").replace("-", "_")
                found[name] = found[name + "_"] = f.name
    return found


def _value(section: str, name: str, value: Any) -> Any:
    """A keyword's value as the config holds it: a field the command line parses from text
    (image_size, hidden, memory_budget_mb, denoise, ...) also takes that text or a single
    number (``image_size=32``, ``hidden="512,256"``)."""
    field = next(f for f in fields(SECTIONS[section]) if f.name == name)
    if field.metadata.get("parse") and isinstance(value, (str, int)) and not isinstance(value, bool):
        return read_flag(field, str(value))
    return list(value) if isinstance(value, tuple) else value


def config_of(**options: Any) -> Config:
    """The Config of keyword settings (``latent_dim=2, epochs=5``), as the command line makes
    it from flags; an unknown name is refused with the closest known ones."""
    known, alias = settings(), aliases()
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, value in options.items():
        name = alias.get(name, name) if name not in known else name
        if name not in known:
            close = difflib.get_close_matches(name, [*known, *alias], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; vaelab train --help lists them as flags"
            raise ConfigError(f"unknown setting {name!r}{hint}")
        sections[known[name]][name] = _value(known[name], name, value)
    return Config().replace(**sections)


def train(dataset: str = "mnist-sample", *, out: str | Path | None = None, progress: bool = True,
          quiet: bool = False, overwrite: bool = False, **options: Any) -> Run:
    """Train a model on a dataset into a run folder and return it as a [Run][vaelab.api.Run].

    Settings left unset are chosen from the data, as on the command line. Interrupting the
    kernel stops at the end of a step; the last completed epoch's checkpoint is kept and the
    run is returned (continue it with ``vaelab train --resume RUN``).

    Args:
        dataset: a named dataset (``mnist``, ``fashion-mnist``, ``cifar10``, the shipped
            ``mnist-sample``), a folder of images or an array file, as ``vaelab train --dataset``.
        out: the run folder; None makes ``runs/<dataset>-<model>-<time>``.
        progress: show a progress bar (a notebook bar in Jupyter).
        quiet: print no per-epoch lines.
        overwrite: replace a run already in `out` (without it, a folder holding a run is
            refused; continue that run with [Run.resume][vaelab.api.Run.resume]).
        **options: config fields by name, checked as the command line checks its flags:
            ``model="hvae"``, ``latent_dim=20``, ``epochs=10``, ``lr=1e-3``,
            ``likelihood="logistic"``, ``image_size=32``, ``hidden="512,256"``, ...
            The names are the last column of ``vaelab train --help``'s table in cli.md
            (``--image-size`` is ``image_size``); a flag named otherwise works too
            (``scale="pixel"`` for ``likelihood_scale``, ``lambda_`` for ``lam``).

    Returns:
        The trained run, on the device named by ``device=`` (else the CPU).

    Raises:
        ConfigError: an unknown setting or a value out of range, in one line naming the fix.

    Examples:
        >>> run = vaelab.train("mnist-sample", latent_dim=2, epochs=1, hidden=[32],
        ...                    out=tmp + "/first", progress=False, quiet=True)
        >>> run.config.model.latent_dim, run.sample(4).shape
        (2, torch.Size([4, 1, 28, 28]))
        >>> vaelab.train("mnist-sample", latnet_dim=2)
        Traceback (most recent call last):
        ...
        vaelab.config.ConfigError: unknown setting 'latnet_dim'; did you mean latent_dim, latent_hidden?
    """
    from vaelab.training import RunExists, default_run_dir
    from vaelab.training import train as train_folder

    cfg = config_of(dataset=dataset, **options)
    folder = Path(out) if out is not None else default_run_dir(cfg)
    try:
        return _interruptible(folder, lambda: train_folder(cfg, folder, progress=progress, quiet=quiet,
                                                          overwrite=overwrite), options.get("device", "cpu"))
    except RunExists:
        raise RunError(f"{folder} already holds a run; continue it with vaelab.load({str(folder)!r}).resume(), "
                       "replace it with overwrite=True, or choose another out") from None


def _interruptible(folder: Path, work, device: str = "cpu", precision: str = "fp32") -> Run:
    """Run `work` (training into `folder`); the stop button keeps the last checkpoint and
    returns the run rather than a traceback."""
    from vaelab.training import TrainingStopped

    try:
        work()
    except (KeyboardInterrupt, TrainingStopped):
        if checkpoint_epoch(folder) is None:
            raise
        print(f"interrupted: {folder} keeps epoch {checkpoint_epoch(folder)}", file=sys.stderr)
    return Run(folder, device, precision)


def load(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Run:
    """The run in a folder written by ``vaelab train`` or [train][vaelab.api.train].

    Args:
        path: the run folder.
        device: where its model runs (``"cpu"``, ``"cuda"``, ``"auto"``); every verb of the
            run ([score][vaelab.api.Run.score], [evaluate][vaelab.api.Run.evaluate], ...) runs there.
        precision: the networks' precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast; the
            densities stay fp32) or ``"auto"`` (as ``vaelab train --precision auto`` chooses).

    Returns:
        The run; its model is read on first use, without executing code from the checkpoint,
        and kept: every verb uses that one model.

    Raises:
        RunError: the folder holds no readable run (one line naming what is missing).
        ConfigError: an unknown precision.

    Examples:
        >>> again = vaelab.load(run.path)
        >>> again.sample(16).shape
        torch.Size([16, 1, 28, 28])
        >>> again.codes(again.images("test", 4)).device
        device(type='cpu')
    """
    run = Run(path, device, precision)
    run.config  # noqa: B018  (a folder without a run is refused here, in one line)
    return run


class Run:
    """A run folder: its config, model, metrics and results, and what can be done with it.

    The one class for a run, whether trained just now or long ago: made by
    [train][vaelab.api.train] or [load][vaelab.api.load] (or ``Run(path)``). Reading is
    lazy and afresh each time (a run that is still training shows its new epochs), except
    the model, which is read once, on the run's device and at its precision, and then used by
    every verb: [evaluate][vaelab.api.Run.evaluate], [score][vaelab.api.Run.score],
    [ood][vaelab.api.Run.ood], [encode][vaelab.api.Run.encode], [plot][vaelab.api.Run.plot],
    [sample][vaelab.api.Run.sample] and [resume][vaelab.api.Run.resume]. ``vaelab.score(run)``,
    ``vaelab.encode(run)`` and ``vaelab.ood(run)`` are the same verbs.

    Images go in and come out as float tensors of shape (N, C, H, W) with values in [0, 1];
    codes have shape (N, D).

    Args:
        path: the run folder.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"auto"``).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (see [load][vaelab.api.load]).

    Attributes:
        path: the run folder (a ``Path``).
        device: where the model runs (``"cpu"``, ``"cuda"``).
        precision: the networks' precision.

    Examples:
        >>> run.config.data.dataset, run.config.model.latent_dim, run.checkpoint_epoch
        ('mnist-sample', 2, 1)
        >>> x = run.images("test", 8)
        >>> run.codes(x).shape, run.reconstruct(x).shape
        (torch.Size([8, 2]), torch.Size([8, 1, 28, 28]))
        >>> run.encode(split="test", n=8, progress=False)["mean"].shape   # a table, as vaelab.encode gives
        (8, 2)
        >>> fig = run.plot("samples")
        >>> type(fig).__name__
        'Figure'
    """

    def __init__(self, path: str | Path, device: str = "cpu", precision: str = "fp32") -> None:
        from vaelab.runtime import PRECISIONS, resolve_device

        if precision not in PRECISIONS:
            raise ConfigError(f"precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.path, self.device, self.precision = Path(path), str(resolve_device(str(device))), precision

    def __repr__(self) -> str:
        where = "" if self.device == "cpu" else f", device={self.device!r}"
        how = "" if self.precision == "fp32" else f", precision={self.precision!r}"
        return f"vaelab.Run({str(self.path)!r}{where}{how})"

    # ------------------------------------------------------------------ reading the folder

    @property
    def config(self) -> Config:
        """The run's settings: ``.data``, ``.model`` and ``.train`` sections, as in config.json."""
        from vaelab.checkpoint import load_config

        return load_config(self.path)

    @property
    def checkpoint_epoch(self) -> int | None:
        """The epoch of the last completed checkpoint, or None before the first."""
        return checkpoint_epoch(self.path)

    def records(self, upto: int | None = None) -> list[dict[str, Any]]:
        """The per-epoch records of ``metrics.jsonl`` as dicts, in order (``epoch``, ``step``,
        ``lr``, ``train_loss``, ``test_elbo``, ..., ``seconds``); with `upto`, epochs 1..upto
        only. [] before the first epoch. A torn line is skipped; a file with no good line
        raises RunError. [metrics][vaelab.api.Run.metrics] is the same as a table."""
        return read_metrics(self.path, upto)

    @property
    def metrics(self) -> Table:
        """One row per epoch: losses, test ELBO, KL, active units, seconds; ``.to_pandas()``
        makes it a DataFrame, ``run.metrics["test_elbo"]`` is a column (a numpy array)."""
        import numpy as np

        records = self.records()
        keys = list(dict.fromkeys(k for r in records for k in r))

        def column(key: str) -> np.ndarray:
            values = [r.get(key) for r in records]
            if all(type(v) is int for v in values):  # epoch, step, active units stay integers
                return np.asarray(values, dtype=np.int64)
            return np.asarray([np.nan if v is None else v for v in values], dtype=float)

        return Table({k: column(k) for k in keys}, {"run": str(self.path)})

    def evaluation(self, k: int | None = None, n: int | None = None, metrics=None) -> dict[str, Any]:
        """The results [evaluate][vaelab.api.Run.evaluate] (or ``vaelab evaluate``) wrote with these
        settings, read back without evaluating: {} when there are none (or the file is damaged).
        With no settings, ``eval.json``: the default settings; `k`, `n` and `metrics` name
        another, as they were given to evaluate (see [eval_path][vaelab.checkpoint.eval_path])."""
        return read_eval(self.path, k, n, metrics)

    @cached_property
    def model(self) -> torch.nn.Module:
        """The trained model in eval mode, on the run's device and at its precision, read once: an
        ``nn.Module`` whose ``encode(x)`` gives the posterior distribution over codes (``.mean``
        of shape (N, D)), ``decode(z)`` the likelihood over images (``.mean``,
        ``.log_prob(x)``, ``.sample()``), ``sample(n)`` the likelihood at n codes drawn from
        the prior, ``log_weights(x, k)`` k importance log-weights per image (nats), shape (k, N),
        and ``forward(x)`` runs the training objective. Its outputs carry gradients: wrap calls
        in ``torch.no_grad()`` to only look. Conditional models take ``c`` (one-hot, (N, K))."""
        from vaelab.runtime import autocast_dtype

        model = load_run(self.path, self.device)[1]
        if self.precision != "fp32":  # "auto" chooses as training does: conv nets (the ladder among them)
            conv = self.config.model.net != "mlp" or getattr(model, "convolutional", False)
            model.set_precision(autocast_dtype(self.precision, torch.device(self.device), conv=conv))
        return model

    @cached_property
    def _data(self):
        """The run's dataset, read once per Run (the disk cache makes rereads cheap, not free)."""
        from vaelab.sources import load_configured

        return load_configured(self.config.data, progress=False)

    def images(self, split: str = "test", n: int | None = None) -> torch.Tensor:
        """The first `n` images (all when None) of the run's ``"train"`` or ``"test"`` split as
        the model sees them (binarised once, or levels in [0, 1]): shape (n, C, H, W), on the
        run's device."""
        from vaelab.batches import model_inputs

        if split not in ("train", "test"):
            raise ConfigError(f"split is train or test, not {split!r}")
        data = self._data
        part = getattr(data, split).head(n)
        return model_inputs(self.model, self.config, part, len(data.classes), self.device).rows(0, len(part))[0]

    # ------------------------------------------------------------------ the verbs

    def evaluate(self, k: int | None = None, n: int | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """Test ELBO, importance-sampled -log p(x) with `k` samples on the first `n` test images
        (all when None), and the diagnostics, as ``vaelab evaluate``: a dict with ``"nll"``
        (nats), ``"elbo"``, ``"active_units"``, ... Like it, written to RUN/eval.json for the
        default settings and to a file named by the settings otherwise (``eval-k10.json``), so
        an evaluation with other settings never replaces one the command line wrote; read
        them back with [evaluation][vaelab.api.Run.evaluation] (``run.evaluation(k=10)``).
        ``options`` are [vaelab.evaluate.evaluate][vaelab.evaluate.evaluate]'s, e.g.
        ``metrics=["fd"]`` or ``out="elsewhere.json"``."""
        from vaelab.evaluate import evaluate

        return evaluate(self, n=n, k=k, progress=progress, **options)  # on the run's device unless told

    def score(self, data=None, **options: Any) -> Table:
        """Per-image scores (ELBO, log p(x), KL, LLR>k, ...) of `data` (None: the run's own test
        split): a table, exactly as [vaelab.score(run, data)][vaelab.scores.score], whose
        keywords (``k``, ``n``, ``scores``, ``split``, ...) ``options`` are."""
        from vaelab.scores import score

        return score(self, data, **options)

    def ood(self, inside=None, outside=(), **options: Any) -> dict[str, Any]:
        """How well each score tells this run's kind of image from the sets in `outside`: a dict,
        exactly as [vaelab.ood(run, inside, outside)][vaelab.detection.ood], whose keywords ``options``
        are (written to RUN/ood.json unless ``write=False``)."""
        from vaelab.detection import ood

        return ood(self, inside, outside, **options)

    def encode(self, data=None, **options: Any) -> Table:
        """The posterior of every image of `data` (None: the run's own): a table with ``mean`` and
        ``std`` of shape (N, D), exactly as [vaelab.encode(run, data)][vaelab.codes.encode],
        whose keywords (``n``, ``split``, ``samples``, ...) ``options`` are. For the posterior
        means of a tensor of images, use [codes][vaelab.api.Run.codes]; ``run.model.encode(x)``
        is the posterior distribution itself."""
        from vaelab.codes import encode

        if torch.is_tensor(data):  # what encode took before it meant the same as vaelab.encode
            warnings.warn("run.encode(x) of a tensor is now run.codes(x); run.encode(data) gives a table as "
                          "vaelab.encode does", FutureWarning, stacklevel=2)
            return self.codes(data)
        return encode(self, data, **options)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means of images `x` of shape (N, C, H, W) in [0, 1]: shape (N, D), D the
        latent size (all layers side by side for a hierarchical model), on the run's device."""
        return posterior_means(self.model, x.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at each image's posterior mean: images (N, C, H, W) in [0, 1] in,
        the same shape out."""
        return self.model.decode(self.codes(x)).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int = 16, seed: int = 0, label: int | str | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Decoder means of `n` codes drawn from the prior with `seed`: images of shape
        (n, C, H, W), in [0, 1] (``run.model.sample(n)`` is the likelihood they are the means
        of). A conditional model draws every image of class `label` (an index or a class name
        such as ``7`` or ``"7"``), or, without one, the classes in turn. `temperature` T >= 0
        multiplies the prior's standard deviation, as ``vaelab sample --temperature`` does: the
        ladder model's every level, or the N(0, I) prior (``explore.prior_samples``)."""
        from vaelab.explore import prior_samples

        g = torch.Generator(device=self.device).manual_seed(seed)
        c = self._conditions(n, label) if self.model.conditional else None
        if label is not None and c is None:
            raise ConfigError(f"{self.path} is not a conditional model: sample(n) draws without a label")
        return prior_samples(self.model, n, temperature, g, c).mean.clamp(0, 1)

    def _conditions(self, n: int, label: int | str | None) -> torch.Tensor:
        """One-hot conditions (n, K) of class `label`, or of the classes in turn."""
        classes = list(self._data.classes)
        if self.config.data.conditions or len(classes) != self.model.cond_dim:
            raise ConfigError(f"{self.path} is conditioned on side information, not on classes: call "
                              "run.model.sample(n, c=...) with conditions of shape (n, "
                              f"{self.model.cond_dim})")
        if label is None:
            index = torch.arange(n) % len(classes)
        elif str(label) in classes:
            index = torch.full((n,), classes.index(str(label)))
        elif isinstance(label, int) and 0 <= label < len(classes):
            index = torch.full((n,), label)
        else:
            raise ConfigError(f"no class {label!r}; the classes are {', '.join(classes)}")
        return torch.nn.functional.one_hot(index, len(classes)).float().to(self.device)

    def resume(self, epochs: int | None = None, minutes: float | None = None, progress: bool = True,
               quiet: bool = False) -> Run:
        """Continue training this run up to `epochs` epochs in total (default: as configured),
        exactly as ``vaelab train --resume`` does; the stop button keeps the last checkpoint.
        Returns the run read afresh (a new model), on the same device and precision."""
        from vaelab.training import Limits, resume

        return _interruptible(self.path, lambda: resume(self.path, Limits(epochs, minutes), progress=progress,
                                                        quiet=quiet), self.device, self.precision)

    def plot(self, what: str = "recon", seed: int = 0, **options: Any):
        """One of the figures of ``vaelab plot`` (recon, samples, posterior, manifold, latents,
        interpolate, combine, denoise, curves, scale, transfer, traversal, mi-matrix, resample) as a
        matplotlib Figure, which Jupyter shows inline; nothing is written and the global backend
        is untouched.

        ``options`` are the figure's own: manifold ``steps``, ``span``, ``dims``; interpolate
        ``steps``; combine ``weights``; denoise ``kind`` (``vaelab plot --noise``), ``levels``,
        ``against``; samples ``temperature`` (one, or several for a row each); traversal ``rows``,
        ``images``, ``steps``, ``span``; resample ``images``, ``temperature``. For example
        ``run.plot("manifold", span=3.0, steps=15)`` or ``run.plot("samples", temperature=(0.6, 0.8, 1.0))``."""
        from vaelab.explore import FIGURE_OPTIONS, FIGURES, Explorer

        if what not in FIGURES:
            raise ConfigError(f"unknown figure {what!r}; choose from {', '.join(FIGURES)}{did_you_mean(what, FIGURES)}")
        takes = FIGURE_OPTIONS.get(what, ())
        unknown = set(options) - set(takes)
        if unknown:
            raise ConfigError(f"the {what} figure takes no {', '.join(sorted(unknown))}; "
                              + (f"it takes {', '.join(takes)}" if takes else "it takes no options"))
        ex = Explorer.from_run(self, seed=seed, device=self.device)
        return FIGURES[what](ex, **options)[0]
