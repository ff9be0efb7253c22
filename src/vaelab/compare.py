"""Comparing variants: named flag sets x seeds, at equal epochs or equal training time.

``vaelab compare --out DIR NAME="flags" NAME2="flags" ...`` trains every variant for every
seed, one run after another, each as ``vaelab train`` in its own process (a crash or a
divergence in one run is recorded and the others go on), evaluates each finished run, and
writes a table of mean +- std over seeds per metric (DIR/compare.md, .csv, .json), a
figure (DIR/compare.png) and the variants' prior samples side by side (DIR/samples.png).
With ``--probe-layers``, a probe also reads the label from each run's codes, and
DIR/tradeoff.png draws its accuracy against the reconstruction MSE, one point per variant.
Runs live in DIR/NAME/seed-S; running the same command again resumes: finished and
evaluated runs are kept, interrupted ones continue from their last checkpoint.

Equal time (``minutes``): a run first trains one epoch and, when the budget holds at least
three of those, a second; the second epoch's time (the first also pays one-time costs) sets
how many more epochs fit in the budget, and the run continues (an exact resume) to that many
epochs, so every variant gets the same training time, not the same number of epochs.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import shlex
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.catalogue import train_config
from vaelab.checkpoint import RunError, read_eval, read_metrics
from vaelab.config import ConfigError
from vaelab.evaluate import RESULT_KEYS
from vaelab.files import atomic_write, ensure_dir, write_json
from vaelab.options import CompareOptions, options_of
from vaelab.runtime import ProgressLine, clock_time, progress_lines

__all__ = ["compare", "Variant", "parse_variant"]

METRICS = ("test_elbo", "nll", "gap", "fd", "epochs", "train_seconds")  # compare.csv has these columns always
# the other metrics an evaluation can hold (Inception FID, disentanglement), and a probe's: columns where measured
FINE = ("probe_accuracy", "recon_mse")  # shown with 4 decimals: they live in [0, 1]
MEASURED = (*(key for keys in RESULT_KEYS.values() for key in keys if key not in METRICS), *FINE)
COLUMNS = (*METRICS[:4], *MEASURED, *METRICS[4:])
DISENTANGLEMENT = tuple(key for key in MEASURED if key not in ("fid", *FINE))
LOWER_IS_BETTER = {"nll": True, "gap": True, "fd": True, "fid": True, "test_elbo": False}


@dataclass(frozen=True)
class Variant:
    """One variant of a comparison: a name and the ``vaelab train`` flags that make it.

    Usually made from text by [parse_variant][vaelab.compare.parse_variant]. Its runs live in
    ``OUT/NAME/seed-S``.

    Attributes:
        name: the variant's name (letters, digits, ``-``, ``_``, ``.``), also its folder's.
        flags: ``vaelab train`` flags, one string each, added after the comparison's base flags.

    Examples:
        >>> from vaelab.compare import Variant
        >>> v = Variant("wide", ("--hidden", "512,256"))
        >>> v.name, " ".join(v.flags)
        ('wide', '--hidden 512,256')
    """

    name: str
    flags: tuple[str, ...]


def parse_variant(spec: str) -> Variant:
    """A variant from its text, as ``vaelab compare`` takes it: ``NAME="--flag value ..."``.

    The flags are split as a shell would split them. Flags that compare sets itself for
    every run (``--out``, ``--seed``, ``--epochs``, ``--resume``, ``--overwrite``) are refused.

    Args:
        spec: ``NAME=FLAGS``, NAME of letters, digits, ``-``, ``_`` and ``.``.

    Returns:
        The [Variant][vaelab.compare.Variant].

    Raises:
        ValueError: a malformed spec or a reserved flag; the message names what is wrong.

    Examples:
        >>> from vaelab.compare import parse_variant
        >>> parse_variant("beta4=--beta 4 --kl-warmup 2")
        Variant(name='beta4', flags=('--beta', '4', '--kl-warmup', '2'))
        >>> parse_variant("long=--epochs 50")
        Traceback (most recent call last):
        ...
        ValueError: variant long: --epochs is set by compare, leave it out
    """
    name, sep, flags = spec.partition("=")
    name = name.strip()
    if not sep or not name or not all(ch.isalnum() or ch in "-_." for ch in name):
        raise ValueError(f"a variant is NAME=\"flags\" with NAME of letters, digits, - _ . (got {spec!r})")
    try:
        parts = tuple(shlex.split(flags))
    except ValueError as e:
        raise ValueError(f"variant {name}: cannot split its flags ({e})") from None
    for reserved in ("--out", "--seed", "--epochs", "--resume", "--overwrite"):
        if reserved in parts:
            raise ValueError(f"variant {name}: {reserved} is set by compare, leave it out")
    return Variant(name, parts)


def check_variant(variant: Variant, base: tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming the variant, flags that `vaelab train` would refuse:
    unknown flags, bad values, out-of-range settings and a data path that does not exist, so
    that nothing is trained when one variant cannot be."""
    from vaelab.sources import is_path

    what = f"variant {variant.name}"
    cfg = train_config(what, [*base, *variant.flags])
    if is_path(cfg.data.dataset) and not Path(cfg.data.dataset).expanduser().exists():
        raise ConfigError(f"{what}: --dataset {cfg.data.dataset} does not exist")


def _vaelab(args: list[str], echo=None) -> subprocess.CompletedProcess:
    """`vaelab ARGS` in a process of its own, its output captured; with `echo`, each line it
    prints on stdout is also passed to `echo` as it comes (its progress lines reach the log)."""
    command = [sys.executable, "-m", "vaelab", *args]
    if echo is None:
        return subprocess.run(command, capture_output=True, text=True)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        err: list[str] = []
        reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # a full pipe would block
        reader.start()
        out = []
        for line in proc.stdout:
            out.append(line)
            if line.strip() and not line.startswith("run folder:"):
                echo(line.rstrip("\n"))
        reader.join()
        code = proc.wait()
    return subprocess.CompletedProcess(command, code, "".join(out), "".join(err))


def _records(run: Path) -> list[dict[str, Any]]:
    """A variant's finished epochs; a run whose metrics are unreadable trains again."""
    try:
        return read_metrics(run)
    except RunError:
        return []


@dataclass(frozen=True)
class _Job:
    """One run of a comparison: its variant and seed, its folder, and how its commands run."""

    variant: Variant
    seed: int
    run: Path
    base: tuple[str, ...]
    quiet: tuple[str, ...]
    echo: Callable[[str], None] | None

    def train(self, epochs: int) -> list[str]:
        """``vaelab train``'s arguments to bring the run to `epochs` epochs: a resume once it
        has a checkpoint, else a fresh run."""
        if (self.run / "checkpoint").exists():
            return ["train", "--resume", str(self.run), "--epochs", str(epochs)]
        return ["train", *self.base, *self.variant.flags, "--seed", str(self.seed), "--epochs", str(epochs),
                "--out", str(self.run)]

    def vaelab(self, args: list[str]) -> str | None:
        """Run ``vaelab ARGS``; its error line if it failed, else None."""
        r = _vaelab([*args, *self.quiet], self.echo)
        return _last_line(r) if r.returncode else None


def run_one(variant: Variant, seed: int, out: Path, options: CompareOptions, log=print, echo=None) -> dict[str, Any]:
    """Train (or finish) and evaluate one run; returns its row (with 'error' if it failed). With
    `echo`, the commands run without --quiet and `echo` gets each line they print."""
    job = _Job(variant, seed, out / variant.name / f"seed-{seed}", tuple(options.base), () if echo else ("--quiet",),
               echo)
    row: dict[str, Any] = {"variant": variant.name, "seed": seed, "run": str(job.run)}
    done = _records(job.run)
    target, error = (options.epochs, None) if options.minutes is None else _budget_epochs(job, options.minutes, done)
    done = _records(job.run)
    if error is None and len(done) < target:
        log(f"{variant.name} seed {seed}: training to {target} epochs" + (" (resumed)" if len(done) else ""))
        error = job.vaelab(job.train(target))
        done = _records(job.run)
    if error is not None:
        return {**row, "error": error}
    row.update(epochs=len(done), train_seconds=round(sum(d["seconds"] for d in done), 1))
    if "test_elbo" in done[-1]:
        row["test_elbo"] = done[-1]["test_elbo"]
    ev, error = _evaluation(job, options, log)
    if error is not None:
        return {**row, "error": error}
    return {**row, **eval_row(ev)}


def _budget_epochs(job: _Job, minutes: float, done: list[dict[str, Any]]) -> tuple[int, str | None]:
    """The epochs that fit a run's time budget, fixed by its first epochs (trained here as
    probes, then kept in compare_epochs.json); and the error line of a probe that failed."""
    plan = job.run / "compare_epochs.json"
    if plan.exists():
        return json.loads(plan.read_text())["epochs"], None
    budget = minutes * 60
    for probe in (1, 2):  # the first epoch pays one-time costs; a second one is the steady pace
        if len(done) >= probe or (probe == 2 and not second_probe(budget, done[0]["seconds"])):
            continue
        error = job.vaelab(job.train(probe))
        if error is not None:
            return 0, error
        done = _records(job.run)
    seconds = [d["seconds"] for d in done[:2]]
    target = planned_epochs(budget, seconds)
    write_json(plan, {"epochs": target, "probe_epoch_seconds": seconds, "minutes": minutes})
    return target, None


def _evaluation(job: _Job, options: CompareOptions, log) -> tuple[dict[str, Any], str | None]:
    """The run's evaluation with the comparison's metrics, k and n: read back, or made by
    ``vaelab evaluate`` when it lacks a metric; and the error line if that failed."""
    want, k, n = list(options.metrics), options.k, options.n
    ev = read_eval(job.run, k=k, n=n, metrics=want)
    if want and not all(key in ev for m in want for key in RESULT_KEYS[m]):
        log(f"{job.variant.name} seed {job.seed}: evaluating ({','.join(want)})")
        error = job.vaelab(["evaluate", str(job.run), "--metrics", ",".join(want), *(["--k", str(k)] if k else []),
                            *(["--n", str(n)] if n else [])])
        if error is not None:
            return {}, error
        ev = read_eval(job.run, k=k, n=n, metrics=want)
    return ev, None


def eval_row(ev: dict[str, Any]) -> dict[str, Any]:
    """A row's numbers from an evaluation: -log p(x), the ELBO and their gap (with k and n),
    and the headline number of every other metric it holds."""
    row: dict[str, Any] = {}
    if "nll" in ev:
        row.update(nll=ev["nll"], elbo_is=ev["elbo"], gap=-ev["elbo"] - ev["nll"], k=ev["k"], n=ev["n"])
    row.update({key: ev[key] for keys in RESULT_KEYS.values() for key in keys if key != "nll" and key in ev})
    return row


def second_probe(budget: float, first: float) -> bool:
    """Whether a budget of `budget` seconds has room for a second probe epoch after a first
    one of `first` seconds (at least three such epochs fit)."""
    return budget >= 3 * first


def planned_epochs(budget: float, probe_seconds: list[float]) -> int:
    """Epochs that fit `budget` seconds: the probe epochs, then as many more as fit at the
    pace of the last probe (the first pays one-time costs)."""
    n = len(probe_seconds)
    return max(n, n + int((budget - sum(probe_seconds)) // probe_seconds[-1]))


def _last_line(r: subprocess.CompletedProcess) -> str:
    """A failed run's error: from vaelab's own error line to the end (a message may go on over
    several lines, such as the places searched for a dataset), else the last line."""
    lines = [line for line in (r.stderr or r.stdout or "").strip().splitlines() if line.strip()]
    if not lines:
        return f"exit code {r.returncode}"
    starts = [i for i, line in enumerate(lines) if line.startswith("vaelab ")]
    return " ".join(line.strip() for line in lines[starts[-1]:]) if starts else lines[-1]


def summarise(rows: list[dict[str, Any]], variants: list[Variant]) -> list[dict[str, Any]]:
    """Per variant: mean, std (sample, over seeds that finished) and count for each metric."""
    table = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name and "error" not in r]
        entry: dict[str, Any] = {"variant": v.name, "flags": " ".join(v.flags), "seeds": len(mine),
                                 "failed": [r["seed"] for r in rows if r["variant"] == v.name and "error" in r]}
        for m in COLUMNS:
            values = [r[m] for r in mine if m in r]
            if values:
                entry[m] = {"mean": statistics.fmean(values),
                            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], header: str) -> str:
    """The summary table as Markdown (compare.md): `header`, one row per variant, a legend."""
    shown = [m for m in COLUMNS if any(m in t for t in table)]
    columns = ["variant", "flags", "seeds", *shown]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for t in table:
        cells = []
        for m in shown:
            if m not in t:
                cells.append("")
            elif m in ("epochs", "train_seconds"):
                cells.append(f"{t[m]['mean']:.0f}" + (f" +- {t[m]['std']:.0f}" if t[m]["std"] else ""))
            elif m in FINE:
                cells.append(f"{t[m]['mean']:.4f} +- {t[m]['std']:.4f}")
            else:
                places = 3 if m in DISENTANGLEMENT else 2  # scores in [0, 1]
                cells.append(f"{t[m]['mean']:.{places}f} +- {t[m]['std']:.{places}f}")
        failed = f" ({len(t['failed'])} failed: seeds {', '.join(map(str, t['failed']))})" if t["failed"] else ""
        lines.append("| " + " | ".join([t["variant"], f"`{t['flags']}`", f"{t['seeds']}{failed}", *cells]) + " |")
    lines += ["", "mean +- standard deviation over seeds. nll: -log p(x) by importance sampling (nats); gap: -ELBO "
              "- nll, how loose the bound is; fd: Frechet distance of prior samples to the test images in "
              "vaelab's own classifier features (lower is better; not Inception FID)."]
    if "fid" in shown:
        lines[-1] += " fid: Inception-v3 FID (lower is better)."
    if any(m in DISENTANGLEMENT for m in shown):
        lines[-1] += " mig, dci_*, sap, factorvae_score, betavae_score: disentanglement of the codes (higher is better)."
    if any(m in shown for m in FINE):
        lines[-1] += (" probe_accuracy: test accuracy of a fresh classifier reading the label from the codes "
                      "(posterior means); recon_mse: the test images' reconstruction MSE, pixels in [0, 1].")
    return "\n".join(lines) + "\n"


def figure(table: list[dict[str, Any]], rows: list[dict[str, Any]], title: str):
    """One panel per metric measured: each variant's mean with its std, and each seed as a dot."""
    from vaelab.plots import new_figure

    shown = [m for m in ("nll", "test_elbo", "gap", "fd", *MEASURED) if any(m in t for t in table)]
    fig = new_figure(3.2 * max(1, len(shown)) + 0.6, 3.6)
    axes = fig.subplots(1, max(1, len(shown)), squeeze=False)[0]
    names = [t["variant"] for t in table]
    for ax, m in zip(axes, shown):
        means = [t[m]["mean"] if m in t else float("nan") for t in table]
        stds = [t[m]["std"] if m in t else 0 for t in table]
        # mean +- std as a marker with error bars (no bars: their length would depend on an
        # arbitrary axis start), each seed as a small dot beside it
        ax.errorbar(range(len(names)), means, yerr=stds, fmt="s", color="#3182bd", capsize=5, ms=7,
                    label="mean +- std")
        for i, name in enumerate(names):
            values = [r[m] for r in rows if r["variant"] == name and m in r]
            ax.plot([i + 0.12] * len(values), values, "o", color="#08306b", ms=3, alpha=0.7)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(names) - 0.5)
        better = "lower is better" if LOWER_IS_BETTER.get(m, False) else "higher is better"
        ax.set_title(f"{m} ({better})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def probe_one(row: dict[str, Any], layers: int, log=print, echo=None) -> dict[str, Any]:
    """A finished run's row with its probe's accuracy, majority-class rate and reconstruction MSE
    added (``vaelab probe RUN --probe-layers LAYERS --seed S``, run unless the run's probe.json
    already holds a probe of that depth and seed); with 'error' if the probe failed."""
    path = Path(row["run"]) / "probe.json"

    def measured() -> dict[str, Any] | None:
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return r if (r.get("probe_layers"), r.get("seed")) == (layers, row["seed"]) else None

    r = measured()
    if r is None:
        log(f"{row['variant']} seed {row['seed']}: probing the codes ({layers} hidden layers)")
        done = _vaelab(["probe", row["run"], "--probe-layers", str(layers), "--seed", str(row["seed"])], echo)
        r = measured()
        if done.returncode or r is None:
            return {**row, "error": _last_line(done)}
    return {**row, "probe_accuracy": r["accuracy"], "majority": r["majority"], "recon_mse": r["recon_mse"]}


def tradeoff_figure(table: list[dict[str, Any]], rows: list[dict[str, Any]], title: str):
    """What the codes know against how well they reconstruct: the probe's accuracy against the
    reconstruction MSE, one point per variant (mean +- std over seeds both ways, each seed a small
    dot), the majority-class rate as a dashed line. Down and left is better for invariance."""
    from vaelab.plots import new_figure

    fig = new_figure(6.0, 4.6)
    ax = fig.subplots()
    shown = [t for t in table if "probe_accuracy" in t and "recon_mse" in t]
    for i, t in enumerate(shown):
        colour = f"C{i % 10}"
        mine = [r for r in rows if r["variant"] == t["variant"] and "probe_accuracy" in r]
        ax.plot([r["recon_mse"] for r in mine], [r["probe_accuracy"] for r in mine], "o", ms=3, alpha=0.5,
                color=colour)
        ax.errorbar(t["recon_mse"]["mean"], t["probe_accuracy"]["mean"], xerr=t["recon_mse"]["std"],
                    yerr=t["probe_accuracy"]["std"], fmt="s", ms=7, capsize=4, color=colour)
        ax.annotate(t["variant"], (t["recon_mse"]["mean"], t["probe_accuracy"]["mean"]), fontsize=8,
                    xytext=(5, 5), textcoords="offset points")
    majority = [r["majority"] for r in rows if "majority" in r]
    if majority:
        ax.axhline(statistics.fmean(majority), ls="--", color="grey", lw=1, label="majority-class rate")
    ax.set_xlabel("reconstruction MSE of the test images (lower is better)")
    ax.set_ylabel("probe accuracy on the codes (lower: less about the label)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def sample_figure(rows: list[dict[str, Any]], variants: list[Variant], title: str, n: int = 36):
    """Each variant's prior samples side by side (decoded means of `n` draws, the same
    generator seed for all), from its first run that finished; None if none did."""
    from vaelab.checkpoint import load_run
    from vaelab.plots import image_panels

    panels = []
    for v in variants:
        run = next((r["run"] for r in rows if r["variant"] == v.name and "error" not in r), None)
        if run is None:
            continue
        _, model = load_run(run)
        c = torch.eye(model.cond_dim)[torch.arange(n) % model.cond_dim] if model.conditional else None
        images = model.sample(n, generator=torch.Generator().manual_seed(0), c=c).mean
        panels.append((v.name, images))
    return image_panels(panels, 6, title) if panels else None


def compare(variants: list[Variant], out: str | Path, options: CompareOptions | None = None, *, log=print,
            **settings: Any) -> dict[str, Any]:
    """Train and evaluate every variant with every seed, then tabulate mean +- std over seeds.

    What ``vaelab compare`` does. Each run is ``vaelab train`` (then ``vaelab evaluate``) in
    a process of its own, so a crash or a divergence in one run is recorded in its row and
    the others go on. The runs live in ``out/NAME/seed-S``; calling again with the same
    arguments resumes: finished runs are kept and interrupted ones continue from their
    checkpoints. Into `out` go ``compare.md``, ``compare.csv`` and ``compare.json`` (the
    table), ``compare.png`` (each metric per variant) and ``samples.png`` (prior samples
    side by side); with `probe`, also ``tradeoff.png`` (probe accuracy against reconstruction
    MSE, one point per variant: a sweep of an invariance weight draws its trade-off).

    Give exactly one budget: `epochs` (equal epochs) or `minutes` (equal training time: the
    first epochs of each run set how many epochs fit in the budget).

    Args:
        variants: the variants, with distinct names (see [parse_variant][vaelab.compare.parse_variant]).
        out: the comparison's folder (not a run folder).
        options: a [CompareOptions][vaelab.options.CompareOptions], or its fields as keywords:
        seeds: the seeds each variant is trained with.
        epochs: epochs per run.
        minutes: training minutes per run.
        base: ``vaelab train`` flags every variant shares, e.g. ``("--dataset", "mnist")``.
        k: importance samples for the ``nll`` metric (None: evaluate's default).
        n: test images to evaluate on (None: all).
        probe: hidden layers of a probe trained on each run's codes (``vaelab probe``), which adds
            ``probe_accuracy`` and ``recon_mse`` to the table; None: no probe.
        metrics: what ``vaelab evaluate`` measures for each run (any of its metrics: ``"nll"``,
            ``"fd"``, ``"fid"``, ``"mig"``, ...); the table has each one's headline numbers. The
            test ELBO, epochs and training time come from training and are always in it.
        log: called with each line of progress (``print`` by default).

    Returns:
        dict: the summary written to ``compare.json``, ``"rows"`` (one dict per run: variant, seed,
        run folder, metrics, or ``"error"``), ``"table"`` (per variant: each metric's
        ``{"mean", "std", "n"}``, ``"seeds"`` finished and ``"failed"``), and the settings.

    Raises:
        ValueError: no budget or both, repeated variant names, or `out` holds a training run.

    Examples:
        >>> from pathlib import Path
        >>> from vaelab.compare import compare, parse_variant
        >>> result = compare([parse_variant("small=--latent-dim 2 --hidden 16")], tmp + "/cmp", seeds=(0,),
        ...                  epochs=1, base=("--dataset", "mnist-sample"), metrics=())
        run 1/1  small seed 0: training to 1 epochs
        ...
        run 1/1  small seed 0: finished (1 of 1 runs done in ..., ETA 0:00)
        >>> row = result["table"][0]
        >>> row["variant"], row["seeds"], row["epochs"]
        ('small', 1, {'mean': 1.0, 'std': 0.0, 'n': 1})
        >>> [m for m in row if isinstance(row[m], dict)]      # the metrics measured
        ['test_elbo', 'epochs', 'train_seconds']
        >>> sorted(p.name for p in Path(tmp, "cmp").iterdir())
        ['compare.csv', 'compare.json', 'compare.md', 'compare.png', 'samples.png', 'small']
    """
    o = options_of(CompareOptions, options, **settings)
    out = _check(variants, out, o)
    if log is print:  # a log file is block-buffered: each line goes out as it is said
        log = functools.partial(print, flush=True)
    rows = _run_all(variants, out, o, log)
    table = summarise(rows, variants)
    # a variant's own --minutes (vaelab train's time budget) can stop its runs earlier
    cut = o.epochs and any(r.get("epochs", o.epochs) < o.epochs for r in rows)
    budget = (f"{'at most ' * bool(cut)}{o.epochs} epoch{'s' * (o.epochs != 1)} each" if o.epochs
              else f"{o.minutes:g} training minutes each")
    header = (f"# vaelab compare: {', '.join(v.name for v in variants)} ({budget}; "
              f"seeds {', '.join(map(str, o.seeds))})")
    result = {"budget": {"epochs": o.epochs, "minutes": o.minutes}, "seeds": list(o.seeds), "base": list(o.base),
              "k": o.k, "n": o.n, "rows": rows, "table": table,
              **({"probe_layers": o.probe} if o.probe is not None else {})}
    _write(out, result, variants, header)
    return result


def _check(variants: list[Variant], out: str | Path, o: CompareOptions) -> Path:
    """The comparison's folder, made, once the budget, the variants' names and the folder are
    checked (one line each)."""
    if (o.epochs is None) == (o.minutes is None):
        raise ValueError("give exactly one of --epochs N (equal epochs) or --minutes M (equal training time)")
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"variant names must be given and distinct, got {', '.join(names) or 'none'}")
    if any((Path(out) / name).exists() for name in ("checkpoint", "checkpoint.old", "metrics.jsonl")):
        raise ValueError(f"{out} holds a training run; give compare a folder of its own with --out")
    return ensure_dir(Path(out), "compare folder")


def _run_all(variants: list[Variant], out: Path, o: CompareOptions, log) -> list[dict[str, Any]]:
    """Every variant x seed run in turn, a line each as it finishes; their rows."""
    # in a log (a file or a pipe, not Jupyter) each run's own lines pass through, prefixed
    # with the run: its epochs, progress lines and results
    through = progress_lines()
    runs = [(v, seed) for v in variants for seed in o.seeds]
    rows = []
    start = ProgressLine.clock()
    for i, (v, seed) in enumerate(runs, 1):
        tag, name = f"run {i}/{len(runs)} ", f"{v.name} seed {seed}"
        echo = (lambda line, name=name: log(f"  {name} | {line}")) if through else None
        rows.append(run_one(v, seed, out, o, lambda text, tag=tag: log(f"{tag} {text}"), echo))
        if o.probe is not None and "error" not in rows[-1]:
            rows[-1] = probe_one(rows[-1], o.probe, lambda text, tag=tag: log(f"{tag} {text}"), echo)
        elapsed = ProgressLine.clock() - start
        done = f"{i} of {len(runs)} runs done in {clock_time(elapsed)}, ETA {clock_time(elapsed / i * (len(runs) - i))}"
        failed = rows[-1].get("error")
        log(f"{tag} {name}: " + (f"FAILED: {failed} ({done})" if failed else f"finished ({done})"))
    return rows


def _write(out: Path, result: dict[str, Any], variants: list[Variant], header: str) -> None:
    """compare.json, .md, .csv and .png, and samples.png when a run finished."""
    from vaelab.plots import save_figure

    table, rows = result["table"], result["rows"]
    write_json(out / "compare.json", result)
    atomic_write(out / "compare.md", markdown(table, header))
    columns = [m for m in COLUMNS if m in METRICS or any(m in t for t in table)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["variant", "flags", "seeds", *[f"{m}_{s}" for m in columns for s in ("mean", "std")]])
    for t in table:
        writer.writerow([t["variant"], t["flags"], t["seeds"],
                         *[f"{t[m][s]:.6g}" if m in t else "" for m in columns for s in ("mean", "std")]])
    atomic_write(out / "compare.csv", buf.getvalue())
    save_figure(figure(table, rows, header.lstrip("# ")), out / "compare.png")
    if "probe_layers" in result:
        title = header.lstrip("# ").split(" (", 1)[1].rstrip(")")  # the budget and the seeds
        title = f"A probe with {result['probe_layers']} hidden layers against reconstruction ({title})"
        save_figure(tradeoff_figure(table, rows, title), out / "tradeoff.png")
    samples = sample_figure(rows, variants, "Prior samples (first finished seed of each variant)")
    if samples is not None:
        save_figure(samples, out / "samples.png")
