"""Every command's options, each declared once, and the command line's parser built from them.

A command's options are a frozen dataclass whose fields are declared with `option`, as
the config's are with `setting`: the default, the help text of the flag, how the command
line reads it. The parser, ``--help`` and docs/cli.md are built from these classes and, for
train, from the config's fields; the library function of a command takes one of them, or
its fields as keywords (``vaelab.score(run, k=10)`` is
``score(run, options=ScoreOptions(k=10))``).

A ``*Options`` class holds what the library function reads; its ``*Command`` subclass adds
what only the command line reads (the run folder, where to write, --quiet). This module
imports only vaelab.config (and the version), so that ``--help`` never loads torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vaelab.config import (
    AUTO,
    DEVICES,
    NOISE_KINDS,
    RECIPE_FIELDS,
    Config,
    ConfigError,
    Flag,
    comma_list,
    did_you_mean,
    field_problem,
    read_flag,
    setting,
)
from vaelab.config import load as load_config_file

__all__ = ["EvaluateOptions", "ScoreOptions", "OodOptions", "EncodeOptions", "ProbeOptions", "CompareOptions",
           "options_of"]

SPLITS = (AUTO, "test", "train", "all")
# what evaluate measures (--metrics), here so that --help needs no torch; vaelab.evaluate and
# vaelab.disentangle read them from here
DISENTANGLEMENT_METRICS = ("mig", "dci", "sap", "factorvae", "betavae")
METRICS = ("nll", "fd", "fid", *DISENTANGLEMENT_METRICS)


def option(default: Any, help: str | None, flag: Flag | None = None, *, choices: tuple | None = None,
           within: str | None = None, internal: str | None = None) -> Any:
    """A command's option: a `setting` (help written whole, as --help shows it) whose `Flag`
    may also give what argparse needs besides: aliases (more names of the flag), default
    (where the command line's default differs from the Python function's: ``auto`` devices),
    a positional argument, nargs, required, and exclusive, a group of which the command line
    needs exactly one. The flag's parse names how the command line reads the text
    (`PARSERS`); numbers with a range are read and checked as config fields are."""
    g = flag or Flag()
    f = setting(default, help, Flag(g.name, g.metavar, g.parse), choices=choices, within=within, internal=internal)
    extra = {"aliases": g.aliases, "cli_default": g.default, "positional": g.positional, "nargs": g.nargs,
             "required": g.required, "exclusive": g.exclusive}
    return dataclasses.field(default=default, metadata={**f.metadata, **extra})


def _device(cli: str = AUTO, default: str | None = None) -> Any:
    """A device option: on the command line `cli`; in Python `default`, where None is a loaded
    vaelab.Run's own device (the CPU for a run folder)."""
    return option(default, f"(default {cli})", Flag(default=cli), choices=DEVICES)


def _seed(help: str = "(default 0)") -> Any:
    return option(0, help)


def _run() -> Any:
    return option(None, None, Flag(metavar="RUN_DIR", parse="run", positional=True))  # no help: RUN_DIR says it


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
        >>> from vaelab.options import EvaluateOptions
        >>> EvaluateOptions(k=10).metrics
        ('nll',)
    """

    n: int | None = option(None, "evaluate the first N test images (default all); under torchrun write --n-images, "
                                 "since torchrun takes --n as an abbreviation of its own options",
                           Flag(aliases=("--n-images",), metavar="N"), within=">= 1")
    k: int | None = option(None, "importance samples per image (default 1000 for images of up to 1,024 values, such "
                                 "as MNIST; 100 for larger ones)", Flag(metavar="K"), within=">= 1")
    metrics: tuple[str, ...] = option(
        ("nll",), "nll: ELBO and IS estimate of -log p(x); fd: Frechet distance of prior samples to the test images in "
                  "the features of a classifier vaelab trains on the dataset's labels (cached; not comparable to "
                  "Inception FID); fid: Inception-v3 FID through torchmetrics, needs the vaelab[inception] extra and "
                  "its weights; mig, dci, sap, factorvae, betavae: disentanglement of the codes on a factor dataset "
                  "(dsprites, xyobject), needs the vaelab[scores] extra (default nll)",
        Flag(metavar="M[,M]", parse="metrics"))
    out: str | None = option(None, "write the results here instead (default RUN_DIR/eval.json, or eval-SETTINGS.json)",
                             Flag(metavar="FILE.json", parse="path"))
    device: str | None = _device()
    fd_classifier_steps: int = option(2000, "training steps of the fd metric's classifier", within=">= 1",
                                      internal="the command line always trains it fully")
    figures: bool = option(True, "write kl_per_dim.png in the run folder", internal="the command line draws it")


@dataclass(frozen=True)
class EvaluateCommand(EvaluateOptions):
    """Evaluate a run on its test set; writes RUN_DIR/eval.json for the default settings, and a file named by the
    settings that differ otherwise (eval-k10.json, eval-n500-fd.json), so that no evaluation replaces another."""

    run_dir: str | None = _run()
    no_progress: bool = option(False, "no progress bar (drawn only when stderr is a terminal or in Jupyter) and no "
                                      "progress lines (printed every 30 s when stdout is a log); the results still print")
    quiet: bool = _quiet("no progress bar or lines, as --no-progress (evaluate has no per-epoch lines); the results, "
                         "warnings and errors still print")


# ----------------------------------------------------------------------------- score, ood, encode

def _n(what: str) -> Any:
    return option(None, f"{what} the first N images of each split (default all)",
                  Flag(aliases=("--n-images",), metavar="N"), within=">= 1")


def _scores() -> Any:
    return option(None, "scores to compute, from {choices} (default every score the model has)",
                  Flag(metavar="S[,S]", parse="names"))


def _k() -> Any:
    return option(100, "importance samples per image: log p(x), LLR and the ELBO average over them (default 100; "
                       "--k 1 for a fast single-sample ELBO)", Flag(metavar="K"), within=">= 1")


def _skip_levels() -> Any:
    return option(None, "hierarchical models: the k of LLR>k, the number of lowest layers drawn from the prior "
                        "(default every level, 1 to layers-1)", Flag(metavar="K[,K]", parse="integers"))


SEED_HELP = "the noise of the samples, tied to each image (default 0)"


def _convert() -> Any:
    return option(False, "read other data at the model's image size and channels: grey repeated into RGB, RGB to grey "
                          "by luminance, resized and centre-cropped (default: as the run read its own data)")


@dataclass(frozen=True)
class ScoreOptions:
    """The options of [score][vaelab.scores.score] (``vaelab score``'s flags).

    Examples:
        >>> from vaelab.options import ScoreOptions
        >>> ScoreOptions(k=10).split
        'auto'
    """

    split: str = option(AUTO, SPLIT_HELP, choices=SPLITS)
    scores: tuple[str, ...] | None = _scores()
    k: int = _k()
    skip_levels: tuple[int, ...] | None = _skip_levels()
    n: int | None = _n("score")
    seed: int = _seed(SEED_HELP)
    convert: bool = _convert()
    device: str | None = _device()


@dataclass(frozen=True)
class ScoreCommand(ScoreOptions):
    """Score every image of DATA under a trained run: one row per image, written to --out (.csv, .npz or
    .parquet). Same seed, same numbers, for any number of processes."""

    run_dir: str | None = _run()
    data: str | None = option(None, DATA_HELP, Flag(metavar="DATA", nargs="?", positional=True))
    out: str | None = option(None, "table to write: .csv, .npz or .parquet (default RUN_DIR/scores-DATA.csv, with the settings "
                                   "that differ from the defaults in the name, e.g. scores-mnist-k10.csv)",
                             Flag(metavar="FILE", parse="path"))
    top: int | None = option(None, "also write the N most typical and N most unusual images as a PNG grid beside "
                                   "--out", Flag(metavar="N"), within=">= 1")
    rank_by: str | None = option(None, "the score --top ranks by (default LLR at level 1 for hierarchical models, "
                                       "else log p(x), else the reconstruction error)", Flag(metavar="SCORE"))
    quiet: bool = _quiet(SCORING_QUIET)


@dataclass(frozen=True)
class OodOptions:
    """The options of [ood][vaelab.detection.ood] (``vaelab ood``'s flags).

    Examples:
        >>> from vaelab.options import OodOptions
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
    convert: bool = _convert()
    device: str | None = _device()
    out: str | None = option(None, "where to write: an existing folder (or a path ending in /) gets the default names; "
                                   "else PREFIX.md, PREFIX.json and PREFIX.png (default RUN_DIR)",
                             Flag(metavar="PREFIX", parse="path"))
    train_n: int = option(2000, "training images that set the typicality test's mean and threshold", within=">= 1",
                          internal="the typicality test's size is fixed on the command line")
    batch_sizes: tuple[int, ...] = option((1, 2, 5, 10, 25), "the typicality test's batch sizes M",
                                          internal="the typicality test's sizes are fixed on the command line")
    write: bool = option(True, "write the report, the numbers and the score histograms",
                         internal="the command line always writes them")


@dataclass(frozen=True)
class OodCommand(OodOptions):
    """Score the in-distribution test images and each --out-of set with every score the model has; report AUROC,
    AUPRC and FPR at 80%/95% TPR per score and the batch typicality test. Writes RUN_DIR/ood-IN-vs-OUT.md, .json and
    .png, named by the data compared (and the settings that differ from the defaults), or --out. The other data are
    never used for training or for choosing a setting."""

    run_dir: str | None = _run()
    inside: str | None = option(None, "in-distribution data, scored on its test split (default the run's own data)",
                                Flag("--in", metavar="DATA"))
    outside: tuple[str, ...] = option((), "one or more other datasets (named, folder or array file)",
                                      Flag("--out-of", metavar="DATA", nargs="+", required=True))
    quiet: bool = _quiet(SCORING_QUIET)


@dataclass(frozen=True)
class EncodeOptions:
    """The options of [encode][vaelab.codes.encode] (``vaelab encode``'s flags).

    Examples:
        >>> from vaelab.options import EncodeOptions
        >>> EncodeOptions(samples=2).samples
        2
    """

    split: str = option(AUTO, "auto and all: every image, training and test (the split column says which); test or "
                              "train: that split only (default auto)", choices=SPLITS)
    samples: int = option(0, "also write S codes per image drawn from q(z|x) (default 0)", Flag(metavar="S"))
    n: int | None = _n("encode")
    seed: int = _seed(SEED_HELP)
    convert: bool = _convert()
    device: str | None = _device()


@dataclass(frozen=True)
class EncodeCommand(EncodeOptions):
    """Write the codes of every image of DATA, training and test split alike: means and standard deviations of
    q(z|x) (every layer for hvae), splits, labels and file names, in the order of DATA. The .npz loads with numpy
    alone: np.load(FILE)['mean']."""

    run_dir: str | None = _run()
    data: str | None = option(None, "as for score (default: the run's own data)",
                              Flag(metavar="DATA", nargs="?", positional=True))
    out: str | None = option(None, "codes.npz or codes.parquet", Flag(metavar="FILE", parse="path", required=True))
    quiet: bool = _quiet(SCORING_QUIET)


# ----------------------------------------------------------------------------- sample, probe, plot

@dataclass(frozen=True)
class SampleCommand:
    """Decode codes drawn from the prior and write the images as a PNG grid."""

    run_dir: str | None = _run()
    n: int = option(64, "number of samples (default 64)", Flag(metavar="N"), within=">= 1")
    out: str | None = option(None, "output file (default RUN_DIR/prior_samples.png)", Flag(metavar="FILE.png"))
    mode: str = option("mean", "mean: decoder means (pixel probabilities); sample: draws x ~ p(x|z) (default mean)",
                       choices=("mean", "sample"))
    temperature: float = option(1.0, "the prior's standard deviation times T: the ladder model's every level, or the "
                                     "N(0, I) prior; below 1 draws nearer the prior's centre, 0 its mean (default 1)",
                                Flag(metavar="T"), within=">= 0")
    seed: int = _seed()
    device: str = _device(default="cpu")


@dataclass(frozen=True)
class ProbeOptions:
    """The options of [probe][vaelab.evaluate.probe] (``vaelab probe``'s flags).

    Examples:
        >>> from vaelab.options import ProbeOptions
        >>> ProbeOptions(layers=0).hidden
        256
    """

    layers: int = option(1, "hidden layers of the probe classifier, 0 = logistic regression (default 1)",
                         Flag("--probe-layers"), choices=(0, 1, 2, 3))
    hidden: int = option(256, "probe layer width (default 256)", Flag("--probe-hidden", metavar="PROBE_HIDDEN"),
                         within=">= 1")
    epochs: int = option(30, "(default 30)", Flag("--probe-epochs", metavar="PROBE_EPOCHS"), within=">= 1")
    seed: int = _seed()
    device: str | None = _device()


@dataclass(frozen=True)
class ProbeCommand(ProbeOptions):
    """Train a fresh classifier on the training set's posterior means to predict the label; report its test
    accuracy, the majority-class rate and the reconstruction MSE. Writes RUN_DIR/probe.json."""

    run_dir: str | None = _run()


@dataclass(frozen=True)
class PlotCommand:
    """Write NAME.png, and NAME.json with the numbers behind it, for each figure."""

    run_dir: str | None = _run()
    what: str = option("recon,samples,curves", "comma-separated figures from {choices} (default recon,samples,curves)",
                       Flag(metavar="NAME[,NAME]", parse="names"))  # a typo is refused before any loading
    out: str | None = option(None, "output folder (default RUN_DIR/plots)", Flag(metavar="DIR", parse="path"))
    seed: int = _seed()
    kind: str | None = option(None, "denoise: noise kind", Flag("--noise"), choices=NOISE_KINDS)
    levels: tuple[float, ...] | None = option(None, "denoise: comma-separated noise levels, e.g. 0.1,0.3,0.5",
                                              Flag(metavar="LEVELS", parse="numbers"))
    against: tuple[str, ...] | None = option(
        None, "denoise: more runs on the same test images, drawn side by side with RUN_DIR (e.g. a model trained "
              "with --denoise next to a plain one); each gets a reconstruction row, a PSNR curve and a table in "
              "denoise.json", Flag(metavar="RUN[,RUN...]", parse="runs"))
    span: float | None = option(None, "manifold: grid half-width; traversal: the largest value (default 3)",
                                Flag(metavar="SPAN"), within="> 0")
    steps: int | None = option(None, "manifold/interpolate/traversal: points per axis, path or row",
                               Flag(metavar="STEPS"), within=">= 1")
    dims: tuple[int, int] | None = option(None, "manifold: two latent dims, e.g. 0,1 (default: top PCA directions)",
                                          Flag(metavar="DIMS", parse="dims"))
    weights: tuple[float, ...] | None = option(None, "combine: weights of the codes, e.g. 0.5,0.5",
                                               Flag(metavar="WEIGHTS", parse="numbers"))
    temperature: tuple[float, ...] | None = option(
        None, "samples, resample: the prior's standard deviation times T (the ladder model's every level, or the "
              "N(0, I) prior); several for samples, e.g. 0.6,0.8,1, draw a row each with the same noise (default 1)",
        Flag(metavar="T[,T...]", parse="numbers"))
    rows: int | None = option(None, "traversal: the most informative latent dimensions shown, one row each "
                                    "(default 10)", Flag(metavar="ROWS"), within=">= 1")
    images: int | None = option(None, "traversal, resample: test images shown (default 3 and 4)", Flag(metavar="N"),
                                within=">= 1")
    device: str = _device(default="cpu")


# ----------------------------------------------------------------------------- compare, serve

@dataclass(frozen=True)
class CompareOptions:
    """The options of [compare][vaelab.compare.compare] (``vaelab compare``'s flags).

    Examples:
        >>> from vaelab.options import CompareOptions
        >>> CompareOptions(epochs=2).seeds
        (0, 1, 2)
    """

    epochs: int | None = option(None, "equal epochs: every run trains this many",
                                Flag(metavar="EPOCHS", exclusive="budget"), within=">= 1")
    minutes: float | None = option(None, "equal training time: each run's first epoch sets how many epochs fit in "
                                         "this many minutes", Flag(metavar="MINUTES", exclusive="budget"), within="> 0")
    seeds: tuple[int, ...] = option((0, 1, 2), "comma-separated seeds (default 0,1,2)",
                                    Flag(metavar="SEEDS", parse="seeds"))
    base: tuple[str, ...] = option((), 'flags every variant shares, e.g. "--dataset mnist"',
                                   Flag(metavar="FLAGS", parse="words"))
    metrics: tuple[str, ...] = option(("nll",), "what evaluate measures per run, as vaelab evaluate --metrics takes "
                                                "them: nll, fd, fid, mig, dci, sap, factorvae, betavae (default nll)",
                                      Flag(metavar="M[,M]", parse="metrics"))
    k: int | None = option(None, "importance samples for nll (default: as vaelab evaluate, 1000 for MNIST-sized "
                                 "images, 100 for larger ones)", Flag(metavar="K"), within=">= 1")
    n: int | None = option(None, "evaluate the first N test images (default all)", Flag(metavar="N"), within=">= 1")
    probe: int | None = option(
        None, "also train a probe with this many hidden layers on each run's codes (as vaelab probe "
        "--probe-layers), add its accuracy and the reconstruction MSE to the table, and draw one against the "
        "other (tradeoff.png): how much a model's codes know about the class, for what reconstruction",
        Flag("--probe-layers", metavar="LAYERS"), choices=(0, 1, 2, 3))


@dataclass(frozen=True)
class CompareCommand(CompareOptions):
    """Train every variant (NAME="flags for vaelab train") for every seed, one run after another, evaluate each,
    and write OUT/compare.md, .csv, .json and .png (mean +- std over seeds). Every variant's flags are checked as vaelab
    train checks them before the first run. Running the same command again resumes. Example: vaelab compare --out
    runs/hidden --epochs 10 --base "--dataset mnist" h256="--hidden 256,256" h512="--hidden 512,512\""""

    variants: tuple[str, ...] = option((), 'e.g. iwae="--objective iwae --samples 5"',
                                       Flag(metavar="NAME=FLAGS", nargs="+", positional=True))
    out: str | None = option(None, "folder for the runs (DIR/NAME/seed-S) and tables",
                             Flag(metavar="DIR", required=True))


@dataclass(frozen=True)
class ServeCommand:
    """Serve a local web page for a run: the latent map (hover to decode), drawing or uploading an image to see its
    code, per-dimension sliders, interpolation, the noise-removal experiment, class swaps and prior samples. Needs
    the serve extra: pip install 'vaelab[serve]'."""

    run_dir: str | None = _run()
    host: str = option("127.0.0.1", "address to listen on (default 127.0.0.1: this machine only; another address "
                                    "warns, since the page has no login)", Flag(metavar="HOST"))
    port: int = option(8000, "(default 8000; 0 picks a free port)", Flag(metavar="PORT", parse="port"))
    n: int = option(2000, "test images shown on the latent map (default 2000)", Flag("--n-map", metavar="N"),
                    within=">= 1")
    device: str = _device("cpu", "cpu")


@dataclass(frozen=True)
class TrainCommand:
    """Train a model. Flags override --config, which overrides the defaults."""

    config: str | None = option(None, "JSON or TOML config (sections data/model/train)", Flag(metavar="FILE"))
    resume: str | None = option(None, "continue this run from its last checkpoint (up to --epochs in total)",
                                Flag(metavar="RUN_DIR", parse="run"))
    out: str | None = option(None, "run folder to create (default runs/<dataset>-<model>-<time>)",
                             Flag(metavar="DIR", parse="path"))
    overwrite: bool = option(False, "replace the run already in --out (its checkpoint, metrics and pictures) instead "
                                    "of refusing")
    no_progress: bool = option(False, "no progress bar; the one-line epoch summaries still print (the bar is drawn "
                                      "only when stderr is a terminal or in Jupyter, so logs never fill with its "
                                      "redraws)")
    quiet: bool = option(False, "no progress bar and no per-epoch lines or notes; warnings and errors still print")


# command -> (its options, the one line of `vaelab --help`); the class's docstring is the
# command's description, and the order is --help's
COMMANDS: dict[str, tuple[type, str]] = {
    "train": (TrainCommand, "train a model into a run folder"),
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
        >>> from vaelab.options import ScoreOptions, options_of
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


# ----------------------------------------------------------------------------- reading the command line

class Names(NamedTuple):
    """The names a flag takes from a registry, and what one of them is called ("model")."""

    noun: str
    choices: tuple[str, ...]


# which registry's names a flag takes (by its dest), None for none: vaelab.catalogue, above
# every registry, answers for the command line; here nothing names a module above
NameLookup = Callable[[str], "Names | None"]


def no_names(dest: str) -> Names | None:
    """A lookup that knows no registry: flags that take names accept any text."""
    return None


def read_run_dir(s: str) -> Path:
    """A run folder that exists."""
    p = Path(s)
    if not p.is_dir():
        raise ConfigError(f"run folder {s} does not exist")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{s} is not a vaelab run folder (no config.json)")
    return p


def read_path(s: str) -> str:
    """A file or folder to create: its name must be printable (UTF-8), as it is written in
    messages, config.json and run.json."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        shown = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(f"{shown} is not a valid UTF-8 name; choose a name in UTF-8") from None
    return s


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = -1
    if not 0 <= v <= 65535:
        raise ConfigError(f"expected a port number in 0..65535, got {s!r}")
    return v


def _metrics(s: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(v.strip() for v in s.split(",") if v.strip()))
    if not names or any(v not in METRICS for v in names):
        raise ConfigError(f"expected metrics from {', '.join(METRICS)} such as nll,fd, got {s!r}")
    return names


def names_in(s: str, names: Names) -> list[str]:
    """Comma-separated names of a registry, or a ConfigError naming the unknown ones and the
    closest known name."""
    choices, noun = names.choices, names.noun
    got = [p.strip() for p in s.split(",") if p.strip()]
    bad = [g for g in got if g not in choices]
    if bad or not got:
        hint = did_you_mean(bad[0], choices) if bad else ""
        raise ConfigError(f"unknown {noun} {', '.join(bad) or '(none)'}; choose from {', '.join(choices)}{hint}")
    return got


def _seeds(s: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(comma_list(int, "integer seeds", "0,1,2")(s)))  # each seed once


def _dims(s: str) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in s.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 0:
        raise ConfigError(f"expected two latent dimensions such as 0,1, got {s!r}")
    return dims  # type: ignore[return-value]


def _words(s: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(s))
    except ValueError as e:
        raise ConfigError(f"{e} in {s!r}") from None


# how the command line reads an option's text, for options whose declaration names one
PARSERS = {"run": read_run_dir, "runs": lambda s: tuple(read_run_dir(p.strip()) for p in s.split(",") if p.strip()),
           "path": read_path, "metrics": _metrics, "integers": comma_list(int, "integers", "1,2"),
           "numbers": comma_list(float, "numbers", "0.1,0.3"), "seeds": _seeds, "dims": _dims, "port": _port, "words": _words}


def read_option(f: dataclasses.Field, text: str, names: NameLookup = no_names) -> Any:
    """The value of an option (or a config field) from its command-line text; a ConfigError
    says what was expected. `names` gives the registry's names of a field that takes them."""
    parse = f.metadata.get("parse")
    if parse == "names":
        known = names(f.name)
        return names_in(text, known) if known else [p.strip() for p in text.split(",") if p.strip()]
    return PARSERS[parse](text) if parse in PARSERS else read_flag(f, text)


# ----------------------------------------------------------------------------- the parser
#
# The command line's parser, --help and docs/cli.md, built from the declarations above and
# the config's (vaelab.cli runs the commands).

SECTIONS = {"data": "data", "model": "model", "train": "training"}  # config section -> flag group


class _Parser(argparse.ArgumentParser):
    """One-line errors that suggest the closest option or choice; no option is taken from a
    prefix of its name (--epoch is refused, not read as --epochs)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command's own parser, which knows the options it has
            sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
            parser = sub.choices[ns.command] if sub and getattr(ns, "command", None) in sub.choices else self
            options = [o for a in parser._actions for o in a.option_strings]
            flags = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
            hint = next((h for f in flags if (h := did_you_mean(f, options))), "")
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns

    def _check_value(self, action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from "
                                                 f"{', '.join(map(str, action.choices))}){did_you_mean(value, action.choices)}")


AUTO_HELP = "default: chosen from the data"


def flag_name(f: dataclasses.Field) -> str:
    """A config field's flag: its name with dashes (--no-NAME for a switch that is on by
    default), unless its `setting` names an alias."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    off = str(f.type) == "bool" and f.default is True
    return ("--no-" if off else "--") + f.name.replace("_", "-")


def _typed(read, name: str):
    """An argparse type of a reader that raises ConfigError."""
    def typed(text: str):
        try:
            return read(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    typed.__name__ = name  # argparse names the type in some messages
    return typed


def _reader(f: dataclasses.Field, names: NameLookup = no_names):
    return _typed(lambda text: read_option(f, text, names), f.name)


def _add_setting(group, section: str, f: dataclasses.Field, default, names: NameLookup) -> None:
    """The flag of one config field: its name, type, choices and help come from the field
    (its choices from `names` when it takes a registry's)."""
    meta = f.metadata
    dest = f"{section}.{f.name}"
    known = names(dest)
    if dest in RECIPE_FIELDS:
        shown = AUTO_HELP
    elif default is None:
        shown = "default: unset"
    else:
        shown = f"default {','.join(map(str, default)) if isinstance(default, tuple) else default}"
    help_text = f"{meta['help']} ({shown})"
    if str(f.type) == "bool":
        group.add_argument(flag_name(f), dest=dest, action="store_const", const=not default, help=meta["help"])
        return
    # the metavar: the setting's own, else its name (argparse would show the dest, DATA.IMAGE_SIZE)
    metavar = meta.get("metavar") or (None if known or meta.get("choices") else f.name.upper())
    kwargs: dict = {"dest": dest, "metavar": metavar, "help": help_text}
    if known:
        kwargs["choices"] = [AUTO] * (default == AUTO) + list(known.choices)
    elif meta.get("choices") is not None:
        kinds = {type(c) for c in meta["choices"]}
        kwargs["choices"] = [c for c in meta["choices"] if not (c == 0 and kinds == {int})]  # 0 = auto: not typed
        kwargs["type"] = int if kinds == {int} else None
    else:
        kwargs["type"] = _reader(f, names)
    group.add_argument(flag_name(f), **{k: v for k, v in kwargs.items() if v is not None})


def build_parser(names: NameLookup = no_names) -> argparse.ArgumentParser:
    """The `vaelab` argument parser: one subcommand per command, its flags read from its
    options class, and train's also from the config; `names` gives the choices of flags that
    take a registry's names (``vaelab.catalogue.build_parser`` passes them)."""
    from vaelab import __version__

    p = _Parser(prog="vaelab", description="Train, evaluate and explore variational autoencoders.")
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (options, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=" ".join(options.__doc__.split()))
        _add_options(command, options, names)
        if name == "train":  # train's --threads is a config field
            _train_args(command, names)
        else:
            _threads_arg(command, name)
    return p


def _add_options(p: argparse.ArgumentParser, options: type, names: NameLookup) -> None:
    """The arguments of a command, one per field of its options class: name, type, choices,
    default and help come from the field's `option` declaration."""
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(options):
        meta = f.metadata
        if meta.get("internal"):
            continue
        kwargs: dict = {"help": meta["help"]}
        known = names(f.name)
        if known:
            kwargs["help"] = meta["help"].format(choices=", ".join(known.choices))
        if str(f.type) == "bool":
            kwargs["action"] = "store_true"
        else:
            kind = str(f.type).removesuffix(" | None")
            kwargs["type"] = (_reader(f, names) if meta.get("parse") or meta.get("range")
                              else {"int": int, "float": float}.get(kind))
            kwargs["choices"] = list(meta["choices"]) if meta.get("choices") else None
            kwargs["metavar"] = meta.get("metavar") or (None if meta.get("choices") else
                                                        flag_name(f).lstrip("-").replace("-", "_").upper())
            kwargs["default"] = f.default if meta.get("cli_default") is None else meta["cli_default"]
            kwargs["nargs"] = meta.get("nargs")
        if meta.get("positional"):
            flags = [f.name]
        else:
            flags = [flag_name(f), *meta.get("aliases", ())]
            kwargs["dest"], kwargs["required"] = f.name, meta.get("required") or None
        group = meta.get("exclusive")
        if group and group not in exclusive:
            exclusive[group] = p.add_mutually_exclusive_group(required=True)
        (exclusive[group] if group else p).add_argument(*flags, **{k: v for k, v in kwargs.items() if v is not None})


def _threads_arg(p, name: str) -> None:
    def count(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = -1
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected a number of threads (0 or more), got {s!r}")
        return v

    whose = "each run it trains and evaluates (passed on as OMP_NUM_THREADS)" if name == "compare" else \
        "this process"
    p.add_argument("--threads", type=count, default=0, metavar="N",
                   help=f"CPU threads of {whose}; 0: its share of the CPUs it may use (affinity, cgroup quota) "
                        "beside the other vaelab processes running, followed as they start and end; an exported "
                        "OMP_NUM_THREADS counts as asked (default 0)")


def _train_args(p: argparse.ArgumentParser, names: NameLookup) -> None:
    """train's flags beyond its options: one per config field, grouped by section."""
    d = Config()
    for section, title in SECTIONS.items():
        group = p.add_argument_group(title)
        for f in dataclasses.fields(getattr(d, section)):
            if not f.metadata.get("internal"):
                _add_setting(group, section, f, getattr(getattr(d, section), f.name), names)


def reference(parser: argparse.ArgumentParser) -> str:
    """docs/cli.md: every command and flag with its help, written from the parser itself
    (``vaelab.catalogue.reference``; tests/test_cli.py checks the file against it)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = ["# Command-line reference", "",
           "Written from vaelab's argument parser: `python -c \"from vaelab.cli import reference; "
           "print(reference(), end='')\" > docs/cli.md` rewrites it, and the test suite fails when it is stale.", ""]
    for name, p in sub.choices.items():
        out += [f"## `vaelab {name}`", "", (p.description or helps.get(name) or "").strip(), ""]
        for group in p._action_groups:
            rows = [a for a in group._group_actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
            if not rows:
                continue
            out += [f"**{group.title}**", "", "| flag | meaning | config field |", "|---|---|---|"]
            for a in rows:
                flag = ", ".join(a.option_strings) or a.dest
                if a.nargs != 0:
                    meta = a.metavar or ("{" + ",".join(map(str, a.choices)) + "}" if a.choices else a.dest.upper())
                    flag += f" {meta}"
                text = (a.help or "") % {"default": a.default, "prog": p.prog}
                flag, text = flag.replace("|", "\\|"), text.replace("|", "\\|")
                key = f"`{a.dest}`" if "." in a.dest else ""
                out.append(f"| `{flag}` | {text} | {key} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"




def config_from_args(args: argparse.Namespace) -> Config:
    """The Config of parsed ``vaelab train`` flags: --config's (or the defaults) with the flags given."""
    cfg = Config() if args.config is None else load_config_file(args.config)
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for dest, value in given(args).items():
        section, name = dest.split(".")
        sections[section][name] = value
    model = sections["model"]
    if "hidden" in model and "decoder_hidden" not in model:
        model["decoder_hidden"] = None  # --hidden alone: the decoder mirrors it
    return cfg.replace(**sections)


def given(args: argparse.Namespace) -> dict[str, object]:
    """The config fields set by flags ("section.field" -> value); unset flags keep the config's."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def train_config(what: str, flags: list[str], parser: argparse.ArgumentParser) -> Config:
    """The config `vaelab train FLAGS` would train, or a one-line ConfigError naming `what`;
    `parser` from ``vaelab.catalogue.build_parser`` (taken over: its errors raise)."""
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]

    def refuse(message: str) -> None:
        raise ConfigError(f"{what}: {message}")

    parser.error = train.error = refuse  # type: ignore[method-assign]
    try:
        return config_from_args(parser.parse_args(["train", *flags]))
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
