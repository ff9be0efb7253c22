"""The notebook face of vaelab: train or load a run, then look at it in a few calls.

    import vaelab
    run = vaelab.training(dataset="mnist-sample", latent_dim=2, epochs=5)
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
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from vaelab.checkpoint import Run as RunFolder
from vaelab.checkpoint import load_run
from vaelab.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, read_flag
from vaelab.evaluate import posterior_means
from vaelab.scores import Table

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def settings() -> dict[str, str]:
    """Every setting `train` takes -> its config section."""
    return {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)
            if not f.metadata.get("internal")}


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
    known = settings()
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; vaelab train --help lists them as flags"
            raise ConfigError(f"unknown setting {name!r}{hint}")
        sections[known[name]][name] = _value(known[name], name, value)
    return Config().replace(**sections)


def train(dataset: str = "mnist-sample", *, out: str | Path | None = None, progress: bool = True,
          quiet: bool = False, overwrite: bool = False, **options: Any) -> Run:
    """Train a model on `dataset` into run folder `out` (default runs/<dataset>-<model>-<time>)
    and return it as a :class:`Run`. `options` are config fields: ``model="hvae"``,
    ``latent_dim=20``, ``epochs=10``, ``lr=1e-3``, ... Settings left unset are chosen from the
    data as on the command line. Interrupting the kernel stops at the end of a step; the last
    completed epoch's checkpoint is kept and the run is returned (continue it with
    ``vaelab train --resume``).

    Example: ``run = vaelab.training(dataset="mnist-sample", latent_dim=2, epochs=5)``
    """
    from vaelab.training import TrainingStopped, default_run_dir
    from vaelab.training import train as train_folder

    cfg = config_of(dataset=dataset, **options)
    folder = Path(out) if out is not None else default_run_dir(cfg)
    try:
        folder = train_folder(cfg, folder, progress=progress, quiet=quiet, overwrite=overwrite)
    except (KeyboardInterrupt, TrainingStopped):
        if RunFolder(folder).checkpoint_epoch is None:
            raise
        print(f"interrupted: {folder} keeps epoch {RunFolder(folder).checkpoint_epoch}", file=sys.stderr)
    return Run(folder)


def load(path: str | Path) -> Run:
    """The run in folder `path` (written by ``vaelab train`` or :func:`train`).

    Example: ``run = vaelab.load("runs/mnist"); run.sample(16).shape``
    """
    run = Run(path)
    run.config  # noqa: B018  (a folder without a run is refused here, in one line)
    return run


class Run:
    """A trained run: its folder, config, model, metrics and figures.

    Example: ``run = vaelab.load("runs/mnist"); run.config.model.latent_dim``
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.path, self.device = Path(path), device
        self._folder = RunFolder(self.path)

    def __repr__(self) -> str:
        return f"vaelab.Run({str(self.path)!r})"

    @property
    def config(self) -> Config:
        return self._folder.config

    @cached_property
    def model(self) -> torch.nn.Module:
        """The trained model in eval mode (an ``nn.Module``: encode, decode, sample, log_weights).

        Example: ``run.model.encode(run.images("test", 4)).mean.shape  # (4, D)``
        """
        return load_run(self.path, self.device)[1]

    @property
    def metrics(self) -> Table:
        """One row per epoch (losses, test ELBO, KL, active units, seconds); ``.to_pandas()``.

        Example: ``run.metrics["test_elbo"][-1]``
        """
        import numpy as np

        records = self._folder.metrics()
        keys = list(dict.fromkeys(k for r in records for k in r))
        return Table({k: np.asarray([r.get(k, np.nan) for r in records], dtype=float) for k in keys},
                     {"run": str(self.path)})

    def images(self, split: str = "test", n: int | None = None) -> torch.Tensor:
        """The first `n` images of a split of the run's data as the model sees them (binarised
        once, or grey levels in [0, 1]): (n, C, H, W).

        Example: ``x = run.images("test", 16)  # (16, 1, 28, 28) for MNIST``
        """
        from vaelab.batches import model_inputs
        from vaelab.images import load_configured

        if split not in ("train", "test"):
            raise ConfigError(f"split is train or test, not {split!r}")
        data = load_configured(self.config.data, progress=False)
        part = getattr(data, split).head(n)
        return model_inputs(self.model, self.config, part, len(data.classes), self.device).rows(0, len(part))[0]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means of images x (N, C, H, W) in [0, 1]: (N, D).

        Example: ``z = run.encode(run.images("test", 8))  # (8, latent_dim)``
        """
        return posterior_means(self.model, x.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean at each image's posterior mean: (N, C, H, W) in [0, 1].

        Example: ``x_hat = run.reconstruct(run.images("test", 8))  # same shape as the images``
        """
        return self.model.decode(self.encode(x)).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int = 16, seed: int = 0) -> torch.Tensor:
        """Decoder means of n codes drawn from the prior: (n, C, H, W) in [0, 1].

        Example: ``images = run.sample(16, seed=1)  # (16, C, H, W)``
        """
        g = torch.Generator(device=self.device).manual_seed(seed)
        return self.model.sample(n, generator=g).mean.clamp(0, 1)

    def evaluate(self, k: int | None = None, n: int | None = None, progress: bool = True,
                 **options: Any) -> dict[str, Any]:
        """Test ELBO, importance-sampled -log p(x) with k samples on the first n test images,
        and the diagnostics, as ``vaelab evaluate`` (and, like it, written to RUN/eval.json).

        Example: ``run.evaluate(k=1000)["nll"]  # nats``
        """
        from vaelab.evaluate import evaluate

        return evaluate(self.path, n=n, k=k, device=self.device, progress=progress, **options)

    def plot(self, what: str = "recon", seed: int = 0, **options: Any):
        """One of the figures of ``vaelab plot`` (recon, samples, manifold, interpolate, ...),
        as a matplotlib Figure, which Jupyter shows inline; nothing is written.

        Example: ``run.plot("manifold", span=3.0, steps=15)``
        """
        from vaelab.explore import FIGURE_OPTIONS, FIGURES, Explorer

        if what not in FIGURES:
            raise ConfigError(f"unknown figure {what!r}; choose from {', '.join(FIGURES)}")
        unknown = set(options) - set(FIGURE_OPTIONS.get(what, ()))
        if unknown:
            raise ConfigError(f"the {what} figure takes no {', '.join(sorted(unknown))}")
        ex = Explorer.from_run(self.path, seed=seed, device=self.device)
        return FIGURES[what](ex, **options)[0]
