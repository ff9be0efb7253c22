"""Every command's options but train's (whose are the config's), each declared once.

A command's options are a frozen dataclass whose fields are declared with `option`, as
the config's are with `setting`: the default, the help text of the flag, how the command
line reads it. The command line builds its parser and docs/cli.md from these classes
(vaelab.cli), and the library function of a command takes one of them, or its fields as
keywords (``vaelab.score(run, k=10)`` is ``score(run, options=ScoreOptions(k=10))``).

A ``*Options`` class holds what the library function reads; its ``*Command`` subclass adds
what only the command line reads (the run folder, where to write, --quiet). This module
imports only vaelab.config, so that ``--help`` never loads torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vaelab.config import AUTO, DEVICES, NOISE_KINDS, ConfigError, did_you_mean, field_problem, setting

__all__ = ["EvaluateOptions", "ScoreOptions", "OodOptions", "EncodeOptions", "ProbeOptions", "CompareOptions",
           "options_of"]

SPLITS = (AUTO, "test", "train", "all")
RUN_DIR_HELP = None  # the run folder: its metavar says it all


def option(default: Any, help: str | None, *, flag: str | None = None, aliases: tuple[str, ...] = (),
           metavar: str | None = None, choices: tuple | None = None, registry: str | None = None,
           low: float | None = None, open_low: bool = False, parse: str | None = None,
           cli_default: Any = None, positional: bool = False, nargs: str | None = None, required: bool = False,
           exclusive: str | None = None, internal: str | None = None) -> Any:
    """A command's option: a `setting` (help written whole, as --help shows it), and what
    its flag needs besides: `aliases` (more names of the flag), `cli_default` (where the
    command line's default differs from the Python function's: ``auto`` devices), a
    `positional` argument, `nargs`, `required`, and `exclusive`, a group of which the
    command line needs exactly one. `parse` names how the command line reads the text
    (vaelab.cli.READERS); numbers with a range are read and checked as config fields are."""
    f = setting(default, help, flag=flag, metavar=metavar, choices=choices, registry=registry, low=low,
                open_low=open_low, parse=parse, internal=internal)
    extra = {"aliases": aliases, "cli_default": cli_default, "positional": positional, "nargs": nargs,
             "required": required, "exclusive": exclusive}
    return dataclasses.field(default=default, metadata={**f.metadata, **extra})


def _device(cli: str = AUTO) -> Any:
    return option("cpu", f"(default {cli})", choices=DEVICES, cli_default=cli)


def _seed(help: str = "(default 0)") -> Any:
    return option(0, help, metavar=None)


def _run() -> Any:
    return option(None, RUN_DIR_HELP, metavar="RUN_DIR", parse="run_dir", positional=True)


def _quiet(help: str) -> Any:
    return option(False, help)


SCORING_QUIET = ("no progress bar and no progress lines (printed every 30 s when stdout is a log); results, "
                 "warnings and errors still print")
SPLIT_HELP = ("auto: the test split of the run's own data and of a named dataset, every image of a folder or array "
              "file (default auto)")
DATA_HELP = ("a named dataset, an image folder or an .npy/.npz file, read as the run read its own data (default: the "
             "run's own data)")


# ----------------------------------------------------------------------------- evaluate

@dataclass(frozen=True)
class EvaluateOptions:
    """The options of [evaluate][vaelab.evaluate.evaluate] (``vaelab evaluate``'s flags).

    Examples:
        >>> EvaluateOptions(k=10).metrics
        ('nll',)
    """

    n: int | None = option(None, "evaluate the first N test images (default all); under torchrun write --n-images, "
                                 "since torchrun takes --n as an abbreviation of its own options",
                           aliases=("--n-images",), low=1, metavar="N")
    k: int | None = option(None, "importance samples per image (default 1000 for images of up to 1,024 values, such "
                                 "as MNIST; 100 for larger ones)", low=1, metavar="K")
    metrics: tuple[str, ...] = option(
        ("nll",), "nll: ELBO and IS estimate of -log p(x); fd: Frechet distance of prior samples to the test images in "
                  "the features of a classifier vaelab trains on the dataset's labels (cached; not comparable to "
                  "Inception FID); fid: Inception-v3 FID through torchmetrics, needs the vaelab[inception] extra and "
                  "its weights (default nll)", metavar="M[,M]", parse="metrics")
    device: str = _device()
    fd_classifier_steps: int = option(2000, "training steps of the fd metric's classifier", low=1,
                                      internal="the command line always trains it fully")
    figures: bool = option(True, "write kl_per_dim.png in the run folder", internal="the command line draws it")


@dataclass(frozen=True)
class EvaluateCommand(EvaluateOptions):
    """Evaluate a run on its test set; writes RUN_DIR/eval.json."""

    run_dir: str | None = _run()
    no_progress: bool = option(False, "no progress bar (drawn only when stderr is a terminal or in Jupyter) and no "
                                      "progress lines (printed every 30 s when stdout is a log); the results still print")
    quiet: bool = _quiet("no progress bar or lines, as --no-progress (evaluate has no per-epoch lines); the results, "
                         "warnings and errors still print")


# ----------------------------------------------------------------------------- score, ood, encode

def _n(what: str) -> Any:
    return option(None, f"{what} the first N images of each split (default all)", aliases=("--n-images",), low=1,
                  metavar="N")


def _scores() -> Any:
    return option(None, "scores to compute, from {choices} (default every score the model has)", metavar="S[,S]",
                  registry="vaelab.scores:SCORES", parse="names")


def _k() -> Any:
    return option(100, "importance samples per image: log p(x), LLR and the ELBO average over them (default 100; "
                       "--k 1 for a fast single-sample ELBO)", low=1, metavar="K")


def _skip_levels() -> Any:
    return option(None, "hierarchical models: the k of LLR>k, the number of lowest layers drawn from the prior "
                        "(default every level, 1 to layers-1)", metavar="K[,K]", parse="ints")


SEED_HELP = "the noise of the samples, tied to each image (default 0)"


@dataclass(frozen=True)
class ScoreOptions:
    """The options of [score][vaelab.scores.score] (``vaelab score``'s flags).

    Examples:
        >>> ScoreOptions(k=10).split
        'auto'
    """

    split: str = option(AUTO, SPLIT_HELP, choices=SPLITS)
    scores: tuple[str, ...] | None = _scores()
    k: int = _k()
    skip_levels: tuple[int, ...] | None = _skip_levels()
    n: int | None = _n("score")
    seed: int = _seed(SEED_HELP)
    device: str = _device()


@dataclass(frozen=True)
class ScoreCommand(ScoreOptions):
    """Score every image of DATA under a trained run: one row per image, written to --out (.csv, .npz or
    .parquet). Same seed, same numbers, for any number of processes."""

    run_dir: str | None = _run()
    data: str | None = option(None, DATA_HELP, metavar="DATA", positional=True, nargs="?")
    out: str | None = option(None, "table to write: .csv, .npz or .parquet (default RUN_DIR/scores.csv)",
                             metavar="FILE", parse="path")
    top: int | None = option(None, "also write the N most typical and N most unusual images as a PNG grid beside "
                                   "--out", low=1, metavar="N")
    rank_by: str | None = option(None, "the score --top ranks by (default LLR at level 1 for hierarchical models, "
                                       "else log p(x), else the reconstruction error)", metavar="SCORE")
    quiet: bool = _quiet(SCORING_QUIET)


@dataclass(frozen=True)
class OodOptions:
    """The options of [ood][vaelab.scores.ood] (``vaelab ood``'s flags).

    Examples:
        >>> OodOptions(k=10).batch_sizes
        (1, 2, 5, 10, 25)
    """

    split: str = option(AUTO, "the split of the --out-of sets; auto: a named dataset's test split, every image of a "
                              "folder or array file (default auto)", choices=SPLITS)
    scores: tuple[str, ...] | None = _scores()
    k: int = _k()
    skip_levels: tuple[int, ...] | None = _skip_levels()
    n: int | None = _n("score")
    seed: int = _seed(SEED_HELP)
    device: str = _device()
    train_n: int = option(2000, "training images that set the typicality test's mean and threshold", low=1,
                          internal="the typicality test's size is fixed on the command line")
    batch_sizes: tuple[int, ...] = option((1, 2, 5, 10, 25), "the typicality test's batch sizes M",
                                          internal="the typicality test's sizes are fixed on the command line")


@dataclass(frozen=True)
class OodCommand(OodOptions):
    """Score the in-distribution test images and each --out-of set with every score the model has; report AUROC,
    AUPRC and FPR at 80%/95% TPR per score and the batch typicality test. Writes RUN_DIR/ood.json, ood.md and
    ood.png. The other data are never used for training or for choosing a setting."""

    run_dir: str | None = _run()
    inside: str | None = option(None, "in-distribution data, scored on its test split (default the run's own data)",
                                flag="--in", metavar="DATA")
    outside: tuple[str, ...] = option((), "one or more other datasets (named, folder or array file)",
                                      flag="--out-of", metavar="DATA", nargs="+", required=True)
    quiet: bool = _quiet(SCORING_QUIET)


@dataclass(frozen=True)
class EncodeOptions:
    """The options of [encode][vaelab.scores.encode] (``vaelab encode``'s flags).

    Examples:
        >>> EncodeOptions(samples=2).samples
        2
    """

    split: str = option(AUTO, "as for score (default auto)", choices=SPLITS)
    samples: int = option(0, "also write S codes per image drawn from q(z|x) (default 0)", metavar="S")
    n: int | None = _n("encode")
    seed: int = _seed(SEED_HELP)
    device: str = _device()


@dataclass(frozen=True)
class EncodeCommand(EncodeOptions):
    """Write the codes of every image of DATA: means and standard deviations of q(z|x) (every layer for hvae),
    labels and file names, in the order of DATA. The .npz loads with numpy alone: np.load(FILE)['mean']."""

    run_dir: str | None = _run()
    data: str | None = option(None, "as for score (default: the run's own data)", metavar="DATA", positional=True,
                              nargs="?")
    out: str | None = option(None, "codes.npz or codes.parquet", metavar="FILE", parse="path", required=True)
    quiet: bool = _quiet(SCORING_QUIET)


# ----------------------------------------------------------------------------- sample, probe, plot

@dataclass(frozen=True)
class SampleCommand:
    """Decode z ~ N(0, I) and write the images as a PNG grid."""

    run_dir: str | None = _run()
    n: int = option(64, "number of samples (default 64)", low=1, metavar="N")
    out: str | None = option(None, "output file (default RUN_DIR/prior_samples.png)", metavar="FILE.png")
    mode: str = option("mean", "mean: decoder means (pixel probabilities); sample: draws x ~ p(x|z) (default mean)",
                       choices=("mean", "sample"))
    seed: int = _seed()
    device: str = _device()


@dataclass(frozen=True)
class ProbeOptions:
    """The options of [probe][vaelab.evaluate.probe] (``vaelab probe``'s flags).

    Examples:
        >>> ProbeOptions(layers=0).hidden
        256
    """

    layers: int = option(1, "hidden layers of the probe classifier, 0 = logistic regression (default 1)",
                         flag="--probe-layers", choices=(0, 1, 2, 3))
    hidden: int = option(256, "probe layer width (default 256)", flag="--probe-hidden", low=1, metavar="PROBE_HIDDEN")
    epochs: int = option(30, "(default 30)", flag="--probe-epochs", low=1, metavar="PROBE_EPOCHS")
    seed: int = _seed()
    device: str = _device()


@dataclass(frozen=True)
class ProbeCommand(ProbeOptions):
    """Train a fresh classifier on the training set's posterior means to predict the label; report its test
    accuracy, the majority-class rate and the reconstruction MSE. Writes RUN_DIR/probe.json."""

    run_dir: str | None = _run()


@dataclass(frozen=True)
class PlotCommand:
    """Write NAME.png, and NAME.json with the numbers behind it, for each figure."""

    run_dir: str | None = _run()
    what: str = option("recon,samples,curves", "comma-separated: recon, samples, posterior, manifold, latents, "
                       "interpolate, combine, denoise, curves, scale, transfer (default recon,samples,curves)")
    out: str | None = option(None, "output folder (default RUN_DIR/plots)", metavar="DIR", parse="path")
    seed: int = _seed()
    kind: str | None = option(None, "denoise: noise kind", flag="--noise", choices=NOISE_KINDS)
    levels: tuple[float, ...] | None = option(None, "denoise: comma-separated noise levels, e.g. 0.1,0.3,0.5",
                                              parse="numbers", metavar="LEVELS")
    against: tuple[str, ...] | None = option(
        None, "denoise: more runs on the same test images, drawn side by side with RUN_DIR (e.g. a model trained "
              "with --denoise next to a plain one); each gets a reconstruction row, a PSNR curve and a table in "
              "denoise.json", metavar="RUN[,RUN...]", parse="run_dirs")
    span: float | None = option(None, "manifold: grid half-width (default 3)", low=0, open_low=True, metavar="SPAN")
    steps: int | None = option(None, "manifold/interpolate: points per axis or path", low=1, metavar="STEPS")
    dims: tuple[int, int] | None = option(None, "manifold: two latent dims, e.g. 0,1 (default: top PCA directions)",
                                          parse="dims", metavar="DIMS")
    weights: tuple[float, ...] | None = option(None, "combine: weights of the codes, e.g. 0.5,0.5", parse="numbers",
                                               metavar="WEIGHTS")
    device: str = _device()


# ----------------------------------------------------------------------------- compare, serve

@dataclass(frozen=True)
class CompareOptions:
    """The options of [compare][vaelab.compare.compare] (``vaelab compare``'s flags).

    Examples:
        >>> CompareOptions(epochs=2).seeds
        (0, 1, 2)
    """

    epochs: int | None = option(None, "equal epochs: every run trains this many", low=1, metavar="EPOCHS",
                                exclusive="budget")
    minutes: float | None = option(None, "equal training time: each run's first epoch sets how many epochs fit in "
                                         "this many minutes", low=0, open_low=True, metavar="MINUTES",
                                   exclusive="budget")
    seeds: tuple[int, ...] = option((0, 1, 2), "comma-separated seeds (default 0,1,2)", parse="seeds",
                                    metavar="SEEDS")
    base: tuple[str, ...] = option((), 'flags every variant shares, e.g. "--dataset mnist"', metavar="FLAGS",
                                   parse="words")
    metrics: tuple[str, ...] = option(("nll",), "what evaluate measures per run: nll, fd (default nll)",
                                      metavar="M[,M]", parse="metrics")
    k: int | None = option(None, "importance samples for nll (default: as vaelab evaluate, 1000 for MNIST-sized "
                                 "images, 100 for larger ones)", low=1, metavar="K")
    n: int | None = option(None, "evaluate the first N test images (default all)", low=1, metavar="N")


@dataclass(frozen=True)
class CompareCommand(CompareOptions):
    """Train every variant (NAME="flags for vaelab train") for every seed, one run after another, evaluate each,
    and write OUT/compare.md, .csv, .json and .png (mean +- std over seeds). Running the same command again
    resumes. Example: vaelab compare --out runs/hidden --epochs 10 --base "--dataset mnist" h256="--hidden 256,256"
    h512="--hidden 512,512\""""

    variants: tuple[str, ...] = option((), 'e.g. iwae="--objective iwae --samples 5"', metavar="NAME=FLAGS",
                                       positional=True, nargs="+")
    out: str | None = option(None, "folder for the runs (DIR/NAME/seed-S) and tables", metavar="DIR", required=True)


@dataclass(frozen=True)
class ServeCommand:
    """Serve a local web page for a run: the latent map (hover to decode), drawing or uploading an image to see its
    code, per-dimension sliders, interpolation, the noise-removal experiment, class swaps and prior samples. Needs
    the serve extra: pip install 'vaelab[serve]'."""

    run_dir: str | None = _run()
    host: str = option("127.0.0.1", "address to listen on (default 127.0.0.1: this machine only; another address "
                                    "warns, since the page has no login)", metavar="HOST")
    port: int = option(8000, "(default 8000; 0 picks a free port)", parse="port", metavar="PORT")
    n: int = option(2000, "test images shown on the latent map (default 2000)", flag="--n-map", low=1, metavar="N")
    device: str = _device("cpu")


# command -> (its options, the one line of `vaelab --help`); the class's docstring is the
# command's description, and the order is --help's
COMMANDS: dict[str, tuple[type, str]] = {
    "evaluate": (EvaluateCommand, "test ELBO and importance-sampled -log p(x)"),
    "score": (ScoreCommand, "per-image scores: ELBO, log p(x), KL, bits/dim, reconstruction error, LLR"),
    "ood": (OodCommand, "out-of-distribution detection: AUROC, AUPRC, FPR per score; the typicality test"),
    "encode": (EncodeCommand, "export posterior means and standard deviations (codes) of images"),
    "sample": (SampleCommand, "draw images from the prior"),
    "probe": (ProbeCommand, "how much the codes know about the class (invariance)"),
    "plot": (PlotCommand, "figures of a trained model (PNG + JSON numbers)"),
    "compare": (CompareCommand, "train and evaluate named variants x seeds, then a table and a figure"),
    "serve": (ServeCommand, "explore a trained model in the browser"),
}


def options_of(cls: type, options: Any = None, **settings: Any) -> Any:
    """An options object of class `cls`: `options` (or the defaults) with the keyword
    `settings` replaced, each checked as its flag is; an unknown keyword is refused with the
    closest name.

    Examples:
        >>> options_of(ScoreOptions, k=10).k
        10
        >>> options_of(ScoreOptions, kk=10)
        Traceback (most recent call last):
        vaelab.config.ConfigError: unknown setting 'kk' of ScoreOptions; did you mean k?
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in settings.items()}
    for name, value in values.items():
        if name not in fields:
            hint = did_you_mean(name, fields) or f"; choose from {', '.join(fields)}"
            raise ConfigError(f"unknown setting {name!r} of {cls.__name__}{hint}")
        problem = field_problem(fields[name], value)
        if problem:
            raise ConfigError(f"{name} {problem}")
    return dataclasses.replace(options if options is not None else cls(), **values)
