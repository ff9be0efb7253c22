"""Command line: parse -> config -> call one library function. Nothing else lives here."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

from vaelab import __version__
from vaelab.config import (
    AUTO,
    DEVICES,
    NOISE_KINDS,
    RECIPE_FIELDS,
    Config,
    ConfigError,
    comma_list,
    did_you_mean,
    read_flag,
)
from vaelab.config import load as load_config_file

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


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v
















def _run_dir(s: str) -> Path:
    p = Path(s)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"run folder {s} does not exist")
    if not (p / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{s} is not a vaelab run folder (no config.json)")
    return p


AUTO_HELP = "default: chosen from the data"


def flag_name(f: dataclasses.Field) -> str:
    """A config field's flag: its name with dashes (--no-NAME for a switch that is on by
    default), unless its `setting` names an alias."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    off = str(f.type) == "bool" and f.default is True
    return ("--no-" if off else "--") + f.name.replace("_", "-")


def registry_names(path: str) -> list[str]:
    """The names in registry "module:NAME": the live registry when its module is loaded (so
    what a user registered counts), else the keys written in the module's source, read
    without importing it (or torch), so that --help stays fast."""
    module, name = path.split(":")
    if module in sys.modules:
        return list(getattr(sys.modules[module], name))
    source = Path(importlib.util.find_spec(module).origin).read_text()
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            items = node.value.keys if isinstance(node.value, ast.Dict) else node.value.elts
            return [ast.literal_eval(k) for k in items]
    raise LookupError(f"{path}: no literal registry {name} in {module}")


def _reader(f: dataclasses.Field):
    def read(text: str):
        try:
            return read_flag(f, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    read.__name__ = f.name  # argparse names the type in some messages
    return read


def _add_setting(group, section: str, f: dataclasses.Field, default) -> None:
    """The flag of one config field: its name, type, choices and help come from the field."""
    meta = f.metadata
    dest = f"{section}.{f.name}"
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
    metavar = meta.get("metavar") or (None if meta.get("registry") or meta.get("choices") else f.name.upper())
    kwargs: dict = {"dest": dest, "metavar": metavar, "help": help_text}
    if meta.get("registry"):
        kwargs["choices"] = [AUTO] * (default == AUTO) + registry_names(meta["registry"])
    elif meta.get("choices") is not None:
        kinds = {type(c) for c in meta["choices"]}
        kwargs["choices"] = [c for c in meta["choices"] if not (c == 0 and kinds == {int})]  # 0 = auto: not typed
        kwargs["type"] = int if kinds == {int} else None
    else:
        kwargs["type"] = _reader(f)
    group.add_argument(flag_name(f), **{k: v for k, v in kwargs.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    """The `vaelab` argument parser: one subcommand per command, the train flags read from the config."""
    p = _Parser(prog="vaelab", description="Train, evaluate and explore variational autoencoders.")
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_train_args, _evaluate_args, _score_args, _ood_args, _encode_args, _sample_args, _probe_args,
                _plot_args, _compare_args, _serve_args):
        add(sub)
    for name, command in sub.choices.items():
        if name != "train":  # train's --threads is a config field
            _threads_arg(command, name)
    return p


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


@contextlib.contextmanager
def _threads(args: argparse.Namespace):
    """The command's share of the CPUs while it runs (see vaelab.runtime.ThreadPolicy), said
    once. train chooses its own (a config field, so that vaelab.train gets it too); compare
    only waits on its runs, which count themselves and get --threads through the environment;
    serve counts only while it answers requests."""
    threads = getattr(args, "threads", None)
    if args.command == "train" or threads is None:
        yield
        return
    if args.command == "compare":
        before = os.environ.get("OMP_NUM_THREADS")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            yield
        finally:
            if threads and before is None:
                del os.environ["OMP_NUM_THREADS"]
            elif threads:
                os.environ["OMP_NUM_THREADS"] = before
        return
    from vaelab.runtime import ThreadPolicy

    with ThreadPolicy(threads, on_demand=args.command == "serve") as policy:
        # serve's first line is the page's address, and its share changes request by request
        quiet = getattr(args, "quiet", False) or args.command == "serve"
        if _rank0() and not quiet and getattr(args, "device", "cpu") != "cuda":
            print(policy.choice.line(), flush=True)
        yield


def _train_args(sub) -> None:
    d = Config()
    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model. Flags override --config, which overrides the defaults.")
    t.add_argument("--config", metavar="FILE", help="JSON or TOML config (sections data/model/train)")
    t.add_argument("--resume", metavar="RUN_DIR", type=_run_dir,
                   help="continue this run from its last checkpoint (up to --epochs in total)")
    t.add_argument("--out", metavar="DIR", type=_path_text,
                   help="run folder to create (default runs/<dataset>-<model>-<time>)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint, metrics and pictures) instead of refusing")
    for section, title in SECTIONS.items():
        group = t.add_argument_group(title)
        for f in dataclasses.fields(getattr(d, section)):
            if not f.metadata.get("internal"):
                _add_setting(group, section, f, getattr(getattr(d, section), f.name))
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar; the one-line epoch summaries still print (the bar is drawn only when "
                        "stderr is a terminal or in Jupyter, so logs never fill with its redraws)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines or notes; warnings and errors still print")


def _evaluate_args(sub) -> None:
    e = sub.add_parser("evaluate", help="test ELBO and importance-sampled -log p(x)",
                       description="Evaluate a run on its test set; writes RUN_DIR/eval.json for the default "
                                   "settings, and a file named by the settings that differ otherwise (eval-k10.json, "
                                   "eval-n500-fd.json), so that no evaluation replaces another.")
    e.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    e.add_argument("--n", "--n-images", dest="n", type=_positive_int,
                   help="evaluate the first N test images (default all); under torchrun write --n-images, "
                        "since torchrun takes --n as an abbreviation of its own options")
    e.add_argument("--k", type=_positive_int,
                   help="importance samples per image (default 1000 for images of up to 1,024 values, such as "
                        "MNIST; 100 for larger ones)")
    e.add_argument("--metrics", type=_metrics, default=("nll",), metavar="M[,M]",
                   help="nll: ELBO and IS estimate of -log p(x); fd: Frechet distance of prior samples to the test "
                        "images in the features of a classifier vaelab trains on the dataset's labels (cached; "
                        "not comparable to Inception FID); fid: Inception-v3 FID through torchmetrics, needs the "
                        "vaelab[inception] extra and its weights; mig, dci, sap, factorvae, betavae: disentanglement "
                        "of the codes on a factor dataset (dsprites, xyobject), needs the vaelab[scores] extra "
                        "(default nll)")
    e.add_argument("--out", metavar="FILE.json", type=_path_text,
                   help="write the results here instead (default RUN_DIR/eval.json, or eval-SETTINGS.json)")
    e.add_argument("--device", choices=DEVICES, default="auto", help="(default auto)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar (drawn only when stderr is a terminal or in Jupyter) and no progress "
                        "lines (printed every 30 s when stdout is a log); the results still print")
    e.add_argument("--quiet", action="store_true",
                   help="no progress bar or lines, as --no-progress (evaluate has no per-epoch lines); the "
                        "results, warnings and errors still print")


def _scoring_args(p, what: str) -> None:
    """The options score, ood and encode share."""
    p.add_argument("--n", "--n-images", dest="n", type=_positive_int,
                   help=f"{what} the first N images of each split (default all)")
    p.add_argument("--seed", type=int, default=0, help="the noise of the samples, tied to each image (default 0)")
    p.add_argument("--convert", action="store_true",
                   help="read other data at the model's image size and channels: grey repeated into RGB, RGB to "
                        "grey by luminance, resized and centre-cropped (default: as the run read its own data)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default auto)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no progress lines (printed every 30 s when stdout is a log); results, "
                        "warnings and errors still print")


def _score_options(p) -> None:
    names = registry_names("vaelab.scores:SCORES")
    p.add_argument("--scores", type=_names(names), metavar="S[,S]",
                   help=f"scores to compute, from {', '.join(names)} (default every score the model has)")
    p.add_argument("--k", type=_positive_int, default=100,
                   help="importance samples per image: log p(x), LLR and the ELBO average over them (default 100; "
                        "--k 1 for a fast single-sample ELBO)")
    p.add_argument("--skip-levels", type=_ints, metavar="K[,K]",
                   help="hierarchical models: the k of LLR>k, the number of lowest layers drawn from the prior "
                        "(default every level, 1 to layers-1)")


def _score_args(sub) -> None:
    s = sub.add_parser("score", help="per-image scores: ELBO, log p(x), KL, bits/dim, reconstruction error, LLR",
                       description="Score every image of DATA under a trained run: one row per image, written to "
                                   "--out (.csv, .npz or .parquet). Same seed, same numbers, for any number of "
                                   "processes.")
    s.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    s.add_argument("data", metavar="DATA", nargs="?",
                   help="a named dataset, an image folder or an .npy/.npz file, read as the run read its own "
                        "data (default: the run's own data)")
    s.add_argument("--out", metavar="FILE", type=_path_text,
                   help="table to write: .csv, .npz or .parquet (default RUN_DIR/scores-DATA.csv, with the settings "
                        "that differ from the defaults in the name, e.g. scores-mnist-k10.csv)")
    s.add_argument("--split", choices=["auto", "test", "train", "all"], default="auto",
                   help="auto: the test split of the run's own data and of a named dataset, every image of a "
                        "folder or array file (default auto)")
    _score_options(s)
    s.add_argument("--top", type=_positive_int, metavar="N",
                   help="also write the N most typical and N most unusual images as a PNG grid beside --out")
    s.add_argument("--rank-by", metavar="SCORE",
                   help="the score --top ranks by (default LLR at level 1 for hierarchical models, else log p(x), "
                        "else the reconstruction error)")
    _scoring_args(s, "score")


def _ood_args(sub) -> None:
    o = sub.add_parser("ood", help="out-of-distribution detection: AUROC, AUPRC, FPR per score; the typicality test",
                       description="Score the in-distribution test images and each --out-of set with every score "
                                   "the model has; report AUROC, AUPRC and FPR at 80%/95% TPR per score and the "
                                   "batch typicality test. Writes RUN_DIR/ood-IN-vs-OUT.md, .json and .png, named "
                                   "by the data compared (and the settings that differ from the defaults), or "
                                   "--out. The other data are never used for training or for choosing a setting.")
    o.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    o.add_argument("--in", dest="inside", metavar="DATA",
                   help="in-distribution data, scored on its test split (default the run's own data)")
    o.add_argument("--out-of", dest="outside", metavar="DATA", nargs="+", required=True,
                   help="one or more other datasets (named, folder or array file)")
    o.add_argument("--out", metavar="PREFIX", type=_path_text,
                   help="where to write: an existing folder (or a path ending in /) gets the default names; else "
                        "PREFIX.md, PREFIX.json and PREFIX.png (default RUN_DIR)")
    o.add_argument("--split", choices=["auto", "test", "train", "all"], default="auto",
                   help="the split of the --out-of sets; auto: a named dataset's test split, every image of a "
                        "folder or array file (default auto)")
    _score_options(o)
    _scoring_args(o, "score")


def _encode_args(sub) -> None:
    e = sub.add_parser("encode", help="export posterior means and standard deviations (codes) of images",
                       description="Write the codes of every image of DATA, training and test split alike: means "
                                   "and standard deviations of q(z|x) (every layer for hvae), splits, labels and file "
                                   "names, in the order of DATA. The .npz "
                                   "loads with numpy alone: np.load(FILE)['mean'].")
    e.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    e.add_argument("data", metavar="DATA", nargs="?", help="as for score (default: the run's own data)")
    e.add_argument("--out", metavar="FILE", type=_path_text, required=True, help="codes.npz or codes.parquet")
    e.add_argument("--split", choices=["auto", "test", "train", "all"], default="auto",
                   help="auto and all: every image, training and test (the split column says which); test or "
                        "train: that split only (default auto)")
    e.add_argument("--samples", type=int, default=0, metavar="S",
                   help="also write S codes per image drawn from q(z|x) (default 0)")
    _scoring_args(e, "encode")


def _sample_args(sub) -> None:
    s = sub.add_parser("sample", help="draw images from the prior",
                       description="Decode z ~ N(0, I) and write the images as a PNG grid.")
    s.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    s.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    s.add_argument("--out", metavar="FILE.png", help="output file (default RUN_DIR/prior_samples.png)")
    s.add_argument("--mode", choices=["mean", "sample"], default="mean",
                   help="mean: decoder means (pixel probabilities); sample: draws x ~ p(x|z) (default mean)")
    s.add_argument("--seed", type=int, default=0, help="(default 0)")
    s.add_argument("--device", choices=DEVICES, default="auto", help="(default auto)")


def _probe_args(sub) -> None:
    pr = sub.add_parser("probe", help="how much the codes know about the class (invariance)",
                        description="Train a fresh classifier on the training set's posterior means to predict "
                                    "the label; report its test accuracy, the majority-class rate and the "
                                    "reconstruction MSE. Writes RUN_DIR/probe.json.")
    pr.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    pr.add_argument("--probe-layers", type=int, choices=[0, 1, 2, 3], default=1,
                    help="hidden layers of the probe classifier, 0 = logistic regression (default 1)")
    pr.add_argument("--probe-hidden", type=_positive_int, default=256, help="probe layer width (default 256)")
    pr.add_argument("--probe-epochs", type=_positive_int, default=30, help="(default 30)")
    pr.add_argument("--seed", type=int, default=0, help="(default 0)")
    pr.add_argument("--device", choices=DEVICES, default="auto", help="(default auto)")


def _plot_args(sub) -> None:
    pl = sub.add_parser("plot", help="figures of a trained model (PNG + JSON numbers)",
                        description="Write NAME.png, and NAME.json with the numbers behind it, for each figure.")
    pl.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    pl.add_argument("--what", default="recon,samples,curves",
                    help="comma-separated: recon, samples, posterior, manifold, latents, interpolate, combine, "
                         "denoise, curves, scale, transfer (default recon,samples,curves)")
    pl.add_argument("--out", metavar="DIR", type=_path_text, help="output folder (default RUN_DIR/plots)")
    pl.add_argument("--seed", type=int, default=0, help="(default 0)")
    pl.add_argument("--noise", choices=NOISE_KINDS, help="denoise: noise kind")
    pl.add_argument("--levels", type=_levels, help="denoise: comma-separated noise levels, e.g. 0.1,0.3,0.5")
    pl.add_argument("--against", type=_run_dirs, metavar="RUN[,RUN...]",
                    help="denoise: more runs on the same test images, drawn side by side with RUN_DIR (e.g. a "
                         "model trained with --denoise next to a plain one); each gets a reconstruction row, a "
                         "PSNR curve and a table in denoise.json")
    pl.add_argument("--span", type=_positive_float, help="manifold: grid half-width (default 3)")
    pl.add_argument("--steps", type=_positive_int, help="manifold/interpolate: points per axis or path")
    pl.add_argument("--dims", type=_dims, help="manifold: two latent dims, e.g. 0,1 (default: top PCA directions)")
    pl.add_argument("--weights", type=_levels, help="combine: weights of the codes, e.g. 0.5,0.5")
    pl.add_argument("--device", choices=DEVICES, default="auto", help="(default auto)")


def _compare_args(sub) -> None:
    cp = sub.add_parser("compare", help="train and evaluate named variants x seeds, then a table and a figure",
                        description="Train every variant (NAME=\"flags for vaelab train\") for every seed, one run "
                                    "after another, evaluate each, and write OUT/compare.md, .csv, .json and .png "
                                    "(mean +- std over seeds). Every variant's flags are checked as vaelab train checks "
                                    "them before the first run. Running the same command again resumes. Example: "
                                    "vaelab compare --out runs/hidden --epochs 10 --base \"--dataset mnist\" "
                                    "h256=\"--hidden 256,256\" h512=\"--hidden 512,512\"")
    cp.add_argument("variants", nargs="+", metavar="NAME=FLAGS", help='e.g. iwae="--objective iwae --samples 5"')
    cp.add_argument("--out", required=True, metavar="DIR", help="folder for the runs (DIR/NAME/seed-S) and tables")
    budget = cp.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=_positive_int, help="equal epochs: every run trains this many")
    budget.add_argument("--minutes", type=_positive_float,
                        help="equal training time: each run's first epoch sets how many epochs fit in this many minutes")
    cp.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="comma-separated seeds (default 0,1,2)")
    cp.add_argument("--base", default="", metavar="FLAGS", help='flags every variant shares, e.g. "--dataset mnist"')
    cp.add_argument("--metrics", type=_metrics, default=("nll",), metavar="M[,M]",
                    help="what evaluate measures per run: nll, fd (default nll)")
    cp.add_argument("--k", type=_positive_int,
                    help="importance samples for nll (default: as vaelab evaluate, 1000 for MNIST-sized images, "
                         "100 for larger ones)")
    cp.add_argument("--n", type=_positive_int, help="evaluate the first N test images (default all)")


def _serve_args(sub) -> None:
    sv = sub.add_parser("serve", help="explore a trained model in the browser",
                        description="Serve a local web page for a run: the latent map (hover to decode), "
                                    "drawing or uploading an image to see its code, per-dimension sliders, "
                                    "interpolation, the noise-removal experiment, class swaps and prior samples. "
                                    "Needs the serve extra: pip install 'vaelab[serve]'.")
    sv.add_argument("run_dir", metavar="RUN_DIR", type=_run_dir)
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; another address warns, "
                         "since the page has no login)")
    sv.add_argument("--port", type=_port, default=8000, help="(default 8000; 0 picks a free port)")
    sv.add_argument("--n-map", type=_positive_int, default=2000, metavar="N",
                    help="test images shown on the latent map (default 2000)")
    sv.add_argument("--device", choices=DEVICES, default="cpu", help="(default cpu)")


def _path_text(s: str) -> str:
    """A folder to create: its name must be printable (UTF-8), as it is written in messages,
    config.json and run.json."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        shown = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise argparse.ArgumentTypeError(f"{shown} is not a valid UTF-8 name; choose a name in UTF-8") from None
    return s


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = -1
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {s!r}")
    return v


def _run_dirs(s: str) -> tuple[Path, ...]:
    return tuple(_run_dir(p.strip()) for p in s.split(",") if p.strip())


def _metrics(s: str) -> tuple[str, ...]:
    from vaelab.evaluate import METRICS

    names = tuple(dict.fromkeys(v.strip() for v in s.split(",") if v.strip()))
    if not names or any(v not in METRICS for v in names):
        raise argparse.ArgumentTypeError(f"expected metrics from {', '.join(METRICS)} such as nll,fd, got {s!r}")
    return names


def _names(choices: list[str]):
    def read(s: str) -> list[str]:
        got = [p.strip() for p in s.split(",") if p.strip()]
        bad = [g for g in got if g not in choices]
        if bad or not got:
            hint = did_you_mean(bad[0], choices) if bad else ""
            raise argparse.ArgumentTypeError(f"unknown score {', '.join(bad) or '(none)'}; "
                                             f"choose from {', '.join(choices)}{hint}")
        return got
    return read


def _comma_list(convert, what: str, example: str):
    """A flag's parser for comma-separated values, e.g. 0.1,0.3 or 1,2 (config's reader, with
    argparse's one-line error)."""
    parse = comma_list(convert, what, example)

    def read(s: str) -> tuple:
        try:
            return parse(s)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return read


_ints = _comma_list(int, "integers", "1,2")
_levels = _comma_list(float, "numbers", "0.1,0.3")
_integer_seeds = _comma_list(int, "integer seeds", "0,1,2")


def _seeds(s: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(_integer_seeds(s)))  # each seed once


def _dims(s: str) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in s.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 0:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {s!r}")
    return dims  # type: ignore[return-value]


def _config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config() if args.config is None else load_config_file(args.config)
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for dest, value in _given(args).items():
        section, name = dest.split(".")
        sections[section][name] = value
    model = sections["model"]
    if "hidden" in model and "decoder_hidden" not in model:
        model["decoder_hidden"] = None  # --hidden alone: the decoder mirrors it
    return cfg.replace(**sections)


def _given(args: argparse.Namespace) -> dict[str, object]:
    """The config fields set by flags ("section.field" -> value); unset flags keep the config's."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def _rank0() -> bool:
    """Whether this process prints: the only one, or rank 0 of a torchrun job."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> None:
    """`vaelab train`: a new run from flags or --config, or --resume of one; prints the run folder."""
    from vaelab.training import resume, train

    if args.resume is not None:
        flags = {f"{s}.{f.name}": flag_name(f) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))}
        given = [flags[k] for k in _given(args) if k not in ("train.epochs", "train.minutes", "train.threads")]
        if given or args.config or args.out or args.overwrite:
            raise ConfigError(
                f"--resume continues a run with its saved config; only --epochs, --minutes and --threads may change "
                f"(got {', '.join(given) or '--config/--out'})"
            )
        run = resume(args.resume, epochs=getattr(args, "train.epochs"), minutes=getattr(args, "train.minutes"),
                     threads=getattr(args, "train.threads"), progress=not args.no_progress, quiet=args.quiet)
    else:
        run = train(_config_from_args(args), args.out, progress=not args.no_progress, quiet=args.quiet,
                    overwrite=args.overwrite)
    if _rank0():
        print(f"run folder: {run}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """`vaelab evaluate`: test ELBO, IS-NLL and diagnostics of a run, printed and written to eval.json
    (or a file named by the settings, or --out)."""
    from vaelab.checkpoint import eval_path
    from vaelab.evaluate import evaluate, format_result
    from vaelab.files import FileError, writable, write_json

    if args.out:  # refused before the evaluation, not after
        if Path(args.out).suffix.lower() != ".json":
            raise ConfigError(f"--out {args.out}: the results are written as .json")
        writable(args.out)
    r = evaluate(args.run_dir, n=args.n, k=args.k, device=args.device, progress=not (args.no_progress or args.quiet),
                 metrics=args.metrics, write=False, out=args.out)
    if not _rank0():
        return
    print(format_result(r))  # before writing: a run folder that cannot be written still shows its results
    path = Path(args.out) if args.out else eval_path(args.run_dir, **r["settings"])
    try:
        write_json(path, r)
    except FileError as e:
        raise FileError(f"{e} (the results above were not saved)") from None
    print(f"(+- is the standard error over test images; written to {path})")


def cmd_score(args: argparse.Namespace) -> None:
    """`vaelab score`: a table of per-image scores written to --out, with an optional top/bottom grid."""
    from vaelab.files import ensure_dir, settings_tag, slug, writable
    from vaelab.scores import SCORE_DEFAULTS, check_table_path, default_rank, score, write_table

    if args.out:  # the file's format, its libraries and its folder: refused before any image is scored
        check_table_path(args.out)
        writable(args.out)
    elif _rank0():
        ensure_dir(args.run_dir, "run folder")

    def check(columns: list[str]) -> None:
        if args.rank_by and args.rank_by not in columns:
            raise ConfigError(f"--rank-by {args.rank_by}: not a score column of this model; choose from "
                              f"{', '.join(columns)}{did_you_mean(args.rank_by, columns)}")

    table = score(args.run_dir, args.data, split=args.split, scores=args.scores, k=args.k, n=args.n,
                  skip_levels=args.skip_levels, seed=args.seed, device=args.device, progress=not args.quiet,
                  convert=args.convert, check=check)
    if not _rank0():
        return
    settings = {"split": args.split, "k": args.k, "n": args.n, "seed": args.seed, "scores": args.scores,
                "skip": args.skip_levels}
    out = Path(args.out) if args.out else \
        Path(args.run_dir) / f"scores-{slug(table.info['dataset'])}{settings_tag(settings, SCORE_DEFAULTS)}.csv"
    write_table(table, out)
    print(f"{len(table)} images of {table.info['dataset']} ({table.info['split']}) scored, k={args.k}: {out}")
    if args.top:
        from vaelab.plots import save_figure
        from vaelab.scores import top_figure

        path = out.with_name(out.stem + "-top.png")
        save_figure(top_figure(table, args.top, args.rank_by), path)
        print(f"the {args.top} most typical and most unusual images by {args.rank_by or default_rank(table.scores)}: {path}")


def cmd_ood(args: argparse.Namespace) -> None:
    """`vaelab ood`: out-of-distribution metrics per score, written as a report, numbers and histograms."""
    from vaelab.scores import ood

    r = ood(args.run_dir, args.inside, args.outside, split=args.split, scores=args.scores, k=args.k, n=args.n,
            skip_levels=args.skip_levels, seed=args.seed, device=args.device, progress=not args.quiet,
            out=args.out, convert=args.convert)
    if not _rank0():
        return
    for name, rows in r["results"].items():
        print(f"{r['in']['dataset']} (in) vs {name} (out): AUROC per score")
        for col, m in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"]):
            print(f"  {col:<22} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}  FPR80 {m['fpr80']:.3f}  "
                  f"FPR95 {m['fpr95']:.3f}")
    files = r["files"]
    print(f"written to {files['md']} (and {Path(files['json']).name}, {Path(files['png']).name})")


def cmd_encode(args: argparse.Namespace) -> None:
    """`vaelab encode`: the posterior means and standard deviations of a dataset, written to --out."""
    from vaelab.files import writable
    from vaelab.scores import CODE_FORMATS, check_table_path, encode, write_codes

    check_table_path(args.out, CODE_FORMATS)
    writable(args.out)
    table = encode(args.run_dir, args.data, split=args.split, samples=args.samples, n=args.n, seed=args.seed,
                   device=args.device, progress=not args.quiet, convert=args.convert)
    if _rank0():
        write_codes(table, args.out)
        splits = {s: int((table["split"] == s).sum()) for s in ("train", "test") if (table["split"] == s).any()}
        which = " and ".join(f"{v} {s}" for s, v in splits.items())
        print(f"codes of {len(table)} images of {table.info['dataset']} ({which}; "
              f"{table['mean'].shape[1]} dimensions): {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    """`vaelab sample`: a grid of decoded prior samples written as a PNG."""
    import torch

    from vaelab.checkpoint import load_run
    from vaelab.files import ensure_dir
    from vaelab.plots import image_grid, save_png
    from vaelab.runtime import resolve_device

    _, model = load_run(args.run_dir, resolve_device(args.device))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    with torch.no_grad():
        dist = model.sample(args.n, generator=gen)
        images = dist.mean if args.mode == "mean" else dist.sample(generator=gen)
    out = Path(args.out) if args.out else Path(args.run_dir) / "prior_samples.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    ensure_dir(out.parent, "output folder")
    save_png(image_grid(images), out)
    print(f"wrote {out}")


def cmd_probe(args: argparse.Namespace) -> None:
    """`vaelab probe`: how much of the class a linear or MLP probe reads from a run's codes."""
    from vaelab.evaluate import probe

    r = probe(args.run_dir, layers=args.probe_layers, hidden=args.probe_hidden, epochs=args.probe_epochs,
              seed=args.seed, device=args.device)
    rows = [("model", f"{r['model']} on {r['dataset']}"),
            (f"probe accuracy ({r['probe_layers']} hidden layers)", f"{r['accuracy']:.4f}"),
            ("majority-class rate", f"{r['majority']:.4f}"),
            ("reconstruction MSE", f"{r['recon_mse']:.5f}")]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    print(f"(written to {Path(args.run_dir) / 'probe.json'})")


def cmd_plot(args: argparse.Namespace) -> None:
    """`vaelab plot`: the named figures of a run written to RUN/plots (or --out)."""
    from vaelab.explore import FIGURES, plot
    from vaelab.runtime import resolve_device

    what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}"
                          f"{did_you_mean(unknown[0], FIGURES)}")
    options = {"kind": args.noise, "levels": args.levels, "span": args.span, "steps": args.steps,
               "dims": args.dims, "weights": args.weights, "against": args.against}
    try:
        written = plot(args.run_dir, what, args.out, seed=args.seed, device=str(resolve_device(args.device)),
                       **options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for path in written:
        print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace) -> None:
    """`vaelab compare`: variants x seeds trained at equal epochs or equal time, with tables and a figure."""
    import shlex

    from vaelab.compare import compare, parse_variant

    try:
        variants = [parse_variant(v) for v in args.variants]
        base = tuple(shlex.split(args.base))
        for v in variants:  # every variant's flags read as vaelab train reads them, before the first run
            _check_train_flags(f"variant {v.name}", [*base, *v.flags])
        result = compare(variants, args.out, seeds=args.seeds, epochs=args.epochs, minutes=args.minutes, base=base,
                         k=args.k, n=args.n, metrics=args.metrics)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print((Path(args.out) / "compare.md").read_text(), end="")
    failed = sum("error" in r for r in result["rows"])
    if failed == len(result["rows"]):
        from vaelab.checkpoint import RunError

        raise RunError(f"every run failed (the first: {result['rows'][0]['error']}); see "
                       f"{Path(args.out) / 'compare.json'}")
    print(f"wrote {Path(args.out) / 'compare.md'}, compare.csv, compare.json, compare.png"
          + (f"; {failed} run(s) failed (see compare.json)" if failed else ""))


def _check_train_flags(what: str, flags: list[str]) -> Config:
    """The config `vaelab train FLAGS` would train, or a one-line ConfigError naming `what`:
    unknown flags, bad values, out-of-range settings and a data path that does not exist are
    refused before anything is trained."""
    parser = build_parser()
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]

    def refuse(message: str) -> None:
        raise ConfigError(f"{what}: {message}")

    parser.error = train.error = refuse  # type: ignore[method-assign]
    try:
        cfg = _config_from_args(parser.parse_args(["train", *flags]))
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
    from vaelab.images import is_path

    if is_path(cfg.data.dataset) and not Path(cfg.data.dataset).expanduser().exists():
        raise ConfigError(f"{what}: --dataset {cfg.data.dataset} does not exist")
    return cfg


def cmd_serve(args: argparse.Namespace) -> None:
    """`vaelab serve`: the local explorer page for a run."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("vaelab serve needs the serve extra: pip install 'vaelab[serve]'") from None
    from vaelab.runtime import resolve_device
    from vaelab.serve import serve

    def ready(url: str) -> None:
        print(f"vaelab serve: open {url} in a browser (Ctrl-C stops)", flush=True)

    try:
        serve(args.run_dir, args.host, args.port, device=str(resolve_device(args.device)), n=args.n_map,
              ready=ready)
    except KeyboardInterrupt:  # Ctrl-C is how the server stops: not an interruption of work
        pass


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md: every command and flag with its help, written from the parser itself
    (tests/test_cli.py checks the file against it)."""
    parser = parser or build_parser()
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


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "score": cmd_score, "ood": cmd_ood, "encode": cmd_encode,
            "sample": cmd_sample, "plot": cmd_plot,
            "probe": cmd_probe, "serve": cmd_serve, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    """The command line's entry point: parse, run one command, and turn known faults into one-line errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _run(args)
    if "torch" in sys.modules:  # a command that never imported torch has no process group
        from vaelab.runtime import leave_process_group

        if leave_process_group():  # a torchrun worker whose work is done and on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


# what gloo and NCCL say when another process of the job is gone
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited", "Socket Timeout")


def _lost_peer(e: RuntimeError) -> bool:
    """Whether `e` is a collective failing because another process of a torchrun job died."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(p in str(e) for p in _PEER_GONE)


def _lost_peer_message(args: argparse.Namespace) -> str:
    """One line: which process was lost, what is kept, and how to go on."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if args.command != "train" or not run:
        return f"lost {lost} of this torchrun job ({world} processes: killed or crashed); run the command again"
    from vaelab.checkpoint import checkpoint_epoch

    epoch = checkpoint_epoch(run)
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch was saved yet"
    return (f"lost {lost} of this torchrun job ({world} processes: killed or crashed); {kept}; continue with "
            f"torchrun --nproc_per_node {world} -m vaelab train --resume {run}")


def _run(args: argparse.Namespace) -> int:
    """Run one command; errors become one line on stderr and an exit code."""
    from vaelab.checkpoint import RunError
    from vaelab.data import DataError
    from vaelab.files import FileError, describe
    from vaelab.runtime import DeviceError
    from vaelab.training import TrainingDiverged, TrainingStopped

    # the same on every process of a torchrun job (the settings, or a check reduced across
    # processes): rank 0 alone says it; other errors may differ by process (or machine)
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        with _threads(args):
            COMMANDS[args.command](args)
    except ConfigError as e:
        if rank0:
            print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (RunError, DataError, DeviceError, FileError) as e:
        print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # anything the layers above did not name: still one line
        print(f"vaelab {args.command}: error: {describe(e, 'file system error')}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        if rank0:
            print(f"vaelab train: stopped: {e}", file=sys.stderr)
        return 1
    except TrainingStopped as e:
        if rank0:
            print(f"\nvaelab {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        print(f"vaelab {args.command}: error: {_lost_peer_message(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvaelab {args.command}: interrupted; a run's last completed epoch's checkpoint is kept "
              "(continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
