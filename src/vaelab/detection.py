"""Out-of-distribution detection: how well each per-image score (vaelab.scores) tells a
model's own kind of image from others, as AUROC, AUPRC and the false-positive rates at 80%
and 95% true positives, with the batch typicality test of Nalisnick et al. (2019); and the
report ``vaelab ood`` writes (Markdown, JSON, score histograms).

No out-of-distribution data set anything: each score's direction (which way is unusual) is
fixed by its definition in the SCORES registry, and the other data are only scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.checkpoint import loaded, run_device
from vaelab.config import ConfigError
from vaelab.data import Dataset
from vaelab.files import settings_tag, slug
from vaelab.options import OodOptions, options_of
from vaelab.runtime import distributed
from vaelab.scores import (
    SCORE_DEFAULTS,
    Table,
    anomaly,
    check_split,
    chosen,
    data_names,
    held_out_only,
    ranked,
    score,
    scoring_data,
    splits_of,
)

__all__ = ["ood", "detection", "typicality", "Threshold"]

OOD_NOTE = ("No out-of-distribution data were used to train the model or to set any score: the model saw only "
            "its own training images, each score's direction (which way is unusual) is fixed by its definition, "
            "and the other data are only scored. (Whoever chose the model's settings should not have looked at "
            "these results to do it.)")


def detection(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """How well a score separates in-distribution from out-of-distribution images.

    The out-of-distribution images are the positive class. NaN and +inf scores rank as most
    unusual, -inf as least; all are counted in ``non_finite``. Needs scikit-learn.

    Args:
        inside: shape (N,), anomaly scores (larger = more unusual) of in-distribution images.
        outside: shape (M,), the same score of out-of-distribution images.

    Returns:
        ``auroc``, ``auprc``, ``fpr80`` and ``fpr95`` (the share of in-distribution images flagged
        at the threshold that catches 80% and 95% of the others), and ``non_finite``.

    Examples:
        >>> import numpy as np
        >>> from vaelab.detection import detection
        >>> d = detection(np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.8, 1.0, 2.0]))
        >>> round(d["auroc"], 3), d["fpr95"], d["non_finite"]
        (0.917, 0.25, 0)
    """
    try:
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
    except ImportError:
        raise ConfigError("out-of-distribution metrics need scikit-learn: pip install 'vaelab[scores]'") from None
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    s = np.r_[inside, outside].astype(np.float64)
    # an image can score infinitely unusual (an encoder's scale underflowing on an odd input):
    # it ranks above every finite score; NaN (no score) ranks as most unusual too, and is counted
    bad = int((~np.isfinite(s)).sum())
    big = np.finfo(np.float64).max
    s = np.clip(np.nan_to_num(s, nan=big, posinf=big, neginf=-big), -big, big)
    fpr, tpr, _ = roc_curve(y, s)
    at = {f"fpr{int(100 * t)}": float(fpr[np.searchsorted(tpr, t, side="left")]) for t in (0.8, 0.95)}
    return {"auroc": float(roc_auc_score(y, s)), "auprc": float(average_precision_score(y, s)), **at,
            "non_finite": bad}


@dataclass(frozen=True)
class Threshold:
    """How the typicality test sets its threshold: the `alpha` quantile of the statistic over
    `resamples` batches drawn with replacement from the training images.

    Attributes:
        alpha: the quantile (the share of training batches let through).
        resamples: bootstrap batches per batch size M.

    Examples:
        >>> from vaelab.detection import Threshold
        >>> Threshold(alpha=0.95).resamples
        1000
    """

    alpha: float = 0.99
    resamples: int = 1000


def typicality(train_nll: np.ndarray, inside: np.ndarray, outside: np.ndarray, sizes=(1, 2, 5, 10, 25),
               seed: int = 0, threshold: Threshold | None = None) -> list[dict[str, float]]:
    """The typicality test of Nalisnick et al. (2019) on batches of M images.

    The statistic is |mean -log p(x) over the batch - H|, H the mean over training images; the
    threshold is its alpha quantile over bootstrap batches drawn with replacement from the
    training images (`threshold`). The test batches of each set are disjoint, in a seeded order.

    Args:
        train_nll: shape (T,), -log p(x) of training images.
        inside: shape (N,), -log p(x) of in-distribution test images.
        outside: shape (M,), -log p(x) of out-of-distribution images.
        sizes: the batch sizes M to test.
        seed: the seed of the bootstrap and of the batch order.
        threshold: the quantile and the number of bootstrap batches (a ``Threshold``; None:
            the 0.99 quantile of 1000).

    Returns:
        list: one dict per M, ``batch``, ``threshold``, ``flagged_in`` and ``flagged_out`` (shares of
        batches flagged), and ``auroc`` of the statistic.

    Examples:
        >>> import numpy as np
        >>> from vaelab.detection import typicality
        >>> rng = np.random.default_rng(0)
        >>> train, inside, outside = rng.normal(90, 5, 2000), rng.normal(90, 5, 500), rng.normal(80, 5, 500)
        >>> rows = typicality(train, inside, outside, sizes=(1, 25))
        >>> [r["batch"] for r in rows], rows[1]["flagged_out"] > 0.9, rows[1]["flagged_in"] < 0.1
        ([1, 25], True, True)
    """
    t = threshold or Threshold()
    rng = np.random.default_rng(seed)
    train_nll = train_nll[np.isfinite(train_nll)]
    h = float(train_nll.mean())
    rows = []
    for m in sizes:
        if m > min(len(inside), len(outside)):
            continue
        boot = np.abs(rng.choice(train_nll, (t.resamples, m)).mean(1) - h)
        eps = float(np.quantile(boot, t.alpha))
        stat = [np.abs(rng.permutation(v)[: len(v) // m * m].reshape(-1, m).mean(1) - h) for v in (inside, outside)]
        rows.append({"batch": m, "threshold": eps, "flagged_in": float((stat[0] > eps).mean()),
                     "flagged_out": float((stat[1] > eps).mean()), **{"auroc": detection(*stat)["auroc"]}})
    return rows


def ood(run, inside=None, outside=(), options: OodOptions | None = None, *, progress: bool = True,
        **settings: Any) -> dict[str, Any]:
    """Out-of-distribution detection: how well each of the model's scores tells its own kind of
    image from others, and the batch typicality test.

    Uses no out-of-distribution data to set anything: each score's direction is fixed by its
    definition, and the other sets are only scored. Every data set is read, and every setting
    checked, before the first image is scored.

    Args:
        run: a run folder or a [Run][vaelab.api.Run].
        inside: the in-distribution data (None: the run's own), scored on its test split.
        outside: one or more datasets (names, folders, array files) scored on `split`.
        options: an [OodOptions][vaelab.options.OodOptions], or its fields as keywords:
        split: the split of the outside sets, as in [score][vaelab.scores.score].
        scores: names from [SCORES][vaelab.scores.SCORES]; None: every score the model has.
        k: importance samples per image.
        skip_levels: for a hierarchical model, the k of each LLR>k.
        n: only the first n images of each set.
        train_n: training images that set the typicality test's mean and threshold.
        batch_sizes: the typicality test's batch sizes M.
        seed: the noise and bootstrap seed.
        device: ``"cpu"`` or ``"cuda"``; None: a loaded [Run][vaelab.api.Run]'s own device,
            else the CPU.
        write: write the report, the numbers and the score histograms: by default
            ``RUN/ood-<in>-vs-<out>.md``, ``.json`` and ``.png``, named by the data sets compared
            (and by k, n, seed, split and scores where they differ from the defaults), so that
            another comparison never replaces them. The option ``out`` writes elsewhere: an
            existing folder (or a path ending in ``/``) gets the default names; anything else is
            a prefix, ``out.json``, ``out.md`` and ``out.png``. The option ``convert`` reads the
            data at the model's size and channels, as in [score][vaelab.scores.score].
        progress: show progress bars.

    Returns:
        A dict with ``results`` (outside set -> score -> [detection][vaelab.detection.detection]'s
        metrics), ``typicality`` (outside set -> rows of [typicality][vaelab.detection.typicality]),
        ``files`` (the paths written, by kind) and how it was made. Sets are named by the
        shortest end of their path that tells them apart.

    Examples:
        >>> import numpy as np
        >>> np.save(tmp + "/noise.npy", np.random.default_rng(0).random((50, 28, 28)).astype(np.float32))
        >>> r = vaelab.ood(run, outside=[tmp + "/noise.npy"], k=5, n=50, train_n=100, progress=False, write=False)
        >>> name = next(iter(r["results"]))
        >>> name, r["results"][name]["log_px"]["auroc"] > 0.9
        ('noise.npy', True)
    """
    o = options_of(OodOptions, options, **settings)
    outside = _check(outside, o)
    device = run_device(run, o.device)
    dist, dev = distributed(device)
    cfg, model = pair = loaded(run, dev)
    model.eval()
    chosen(model, o.scores, o.skip_levels)
    names = _set_names(data_names(cfg, [inside, *outside]))
    writes = (o.write or o.out is not None) and dist.main and (o.out is not None or not isinstance(run, tuple))
    tag = {"split": o.split, "k": o.k, "n": o.n, "seed": o.seed, "scores": o.scores, "skip": o.skip_levels}
    folder = Path(getattr(run, "path", run)) if o.out is None else None
    if writes:  # where to write, checked before the data are read
        ood_files(folder, names, o.out, tag)
    # every data set read before the first is scored: a missing or misshapen one is refused at once
    sets, splits = _read_sets(cfg, model, [inside, *outside], names, o, progress and dist.main)
    files = ood_files(folder, names, o.out, tag, [ds.source for ds in sets]) if writes else None
    common = {"scores": o.scores, "k": o.k, "skip_levels": o.skip_levels, "n": o.n, "seed": o.seed, "device": device,
              "progress": progress}
    tables = {name: score(pair, ds, split=spec_split, **common)
              for ds, spec_split, name in zip(sets, splits, ["in", *names[1:]])}
    result = _results(tables, o)
    if "log_px" in ranked(tables["in"].scores):
        train = score(pair, sets[0], split="train", scores=["log_px"], k=o.k, n=o.train_n, seed=o.seed,
                      device=device, progress=progress)
        result["typicality"] = {name: typicality(-train["log_px"], -tables["in"]["log_px"], -t["log_px"],
                                                 o.batch_sizes, seed=o.seed)
                                for name, t in tables.items() if name != "in"}
    result["best"] = {name: max(r, key=lambda c: r[c]["auroc"]) for name, r in result["results"].items()}
    if files:
        result["files"] = {kind: str(path) for kind, path in files.items()}
        write_ood(result, tables, files)
    return result


def _check(outside, o: OodOptions) -> list:
    """The outside sets as a list, and the settings `ood` refuses before any work, one line each."""
    if isinstance(outside, (str, Dataset)):
        outside = [outside]
    if not outside:
        raise ConfigError("give at least one out-of-distribution dataset (--out-of DATA)")
    if o.k < 1:
        raise ConfigError(f"k must be at least 1, got {o.k}")
    check_split(o.split)
    need_sklearn()
    return list(outside)


def _read_sets(cfg, model, specs: list, names: list[str], o: OodOptions, show: bool) -> tuple[list[Dataset], list[str]]:
    """Every data set (in first) read as `score` reads it, and the split each is scored on, each
    checked to hold images there."""
    sets = [scoring_data(cfg, spec, model, show, convert=o.convert, name=name) for spec, name in zip(specs, names)]
    splits = ["test"] + ["test" if o.split == "auto" and held_out_only(spec, cfg) else o.split for spec in specs[1:]]
    for ds, spec_split in zip(sets, splits):
        splits_of(ds, "all" if spec_split == "auto" else spec_split, False)
    return sets, splits


def _results(tables: dict[str, Table], o: OodOptions) -> dict[str, Any]:
    """How the sets were scored and each ranked score's detection metrics, in set against each
    outside set."""
    inside = tables["in"]
    cols = ranked(inside.scores)
    return {"in": inside.info, "out": {name: t.info for name, t in tables.items() if name != "in"}, "k": o.k,
            "n": o.n, "note": OOD_NOTE, "positive": "out-of-distribution",
            "results": {name: {c: detection(anomaly(c, inside[c]), anomaly(c, t[c])) for c in cols}
                        for name, t in tables.items() if name != "in"}}


def need_sklearn() -> None:
    """Refuse at once, in one line, when scikit-learn (the out-of-distribution metrics) is missing."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise ConfigError("out-of-distribution metrics need scikit-learn: pip install 'vaelab[scores]'")


def _set_names(names: list[str]) -> list[str]:
    """`names` with repeats numbered (the same folder given twice), the first (in) kept."""
    out: list[str] = []
    for name in names:
        base, i = name, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out.append(name)
    return out



def ood_files(folder: Path | None, names: list[str], out: str | Path | None, settings: dict[str, Any],
              sources: list[str] | None = None) -> dict[str, Path]:
    """The paths `ood` writes ({"json", "md", "png"}), checked writable before any work. By
    default they are named by the data compared and the settings; when files of that name
    hold a comparison of other data (folders whose paths end alike), a number is added,
    so that they are kept. `sources`: the data's sources, in to out."""
    from vaelab.files import writable

    stem = f"ood-{slug(names[0])}-vs-{'+'.join(slug(x) for x in names[1:])}"
    if len(stem) > 150:  # many sets: a short stable digest stands for the rest
        import hashlib

        stem = stem[:130] + "-" + hashlib.blake2b(stem.encode(), digest_size=6).hexdigest()
    stem += settings_tag(settings, SCORE_DEFAULTS)
    if out is not None:
        text = str(out)
        if Path(text).is_dir() or text.endswith(("/", os.sep)):
            folder = Path(text)
        else:
            prefix = Path(text)
            prefix = prefix.with_suffix("") if prefix.suffix.lower() in (".json", ".md", ".png") else prefix
            folder, stem = prefix.parent, prefix.name
    elif sources is not None:
        base, i = stem, 2
        while (other := _compared(folder / f"{stem}.json")) is not None and other != sources:
            stem, i = f"{base}-{i}", i + 1
    return {kind: writable(folder / f"{stem}.{kind}", "output file") for kind in ("json", "md", "png")}


def _compared(path: Path) -> list[str] | None:
    """The sources of the data an ood result file compared (in first), or None when there is
    no such file; [] when it cannot be read (so it is not replaced)."""
    import json

    try:
        r = json.loads(path.read_text())
        return [r["in"]["data"], *(o["data"] for o in r["out"].values())]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def name_of(result: dict[str, Any]) -> str:
    """The first out-of-distribution set of an `ood` result."""
    return next(iter(result["results"]))


def ood_markdown(result: dict[str, Any]) -> str:
    """The result of `ood` as a Markdown report."""
    inside = result["in"]
    lines = [f"# Out-of-distribution detection: {inside['dataset']} ({inside['split']}) as in-distribution", "",
             f"Model: {inside['model']}; importance samples k = {result['k']}; binarisation: {inside['binarization']}.",
             "The positive class is out-of-distribution; FPR80/FPR95: the share of in-distribution test images "
             "flagged when 80%/95% of the others are.", "", result["note"], ""]
    for name, rows in result["results"].items():
        info = result["out"][name]
        lines += [f"## {name} ({info['split']}, {info['data']})", "",
                  "| score | AUROC | AUPRC | FPR80 | FPR95 |", "|---|---|---|---|---|"]
        for col, m in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"]):
            lines.append(f"| {col} | {m['auroc']:.3f} | {m['auprc']:.3f} | {m['fpr80']:.3f} | {m['fpr95']:.3f} |")
        if result.get("typicality"):
            lines += ["", "Typicality test on batches of M images (-log p(x), threshold at the 99% bootstrap "
                      "quantile over training images):", "", "| M | flagged in | flagged out | AUROC |", "|---|---|---|---|"]
            lines += [f"| {r['batch']} | {r['flagged_in']:.3f} | {r['flagged_out']:.3f} | {r['auroc']:.3f} |"
                      for r in result["typicality"][name]]
        lines.append("")
    return "\n".join(lines)


def write_ood(result: dict[str, Any], tables: dict[str, Table], files: dict[str, Path]) -> None:
    """The report (.md), the numbers (.json) and the score histograms (.png) of an `ood`
    result, each written atomically to the paths in `files`."""
    from vaelab.files import atomic_write, write_json
    from vaelab.plots import save_figure, score_histograms

    write_json(files["json"], result)
    atomic_write(files["md"], ood_markdown(result))
    shown = {f"{result['in']['dataset']} (in)" if name == "in" else name: t for name, t in tables.items()}
    fig = score_histograms({c: {name: t[c] for name, t in shown.items()} for c in result["results"][name_of(result)]},
                           f"scores of {result['in']['dataset']} (in) and other data")
    save_figure(fig, files["png"])
