"""Per-image scores of a trained model: which images are typical, which unusual, which from
elsewhere. The out-of-distribution metrics built on them are in vaelab.detection, the
images' codes in vaelab.codes.

One row per image, every score computed from the same k importance samples z_s ~ q(z|x),
with noise tied to (image, seed) so that any chunking or number of processes gives the same
numbers. With log-weights w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x):

- ``elbo``: the mean of w_s (nats); ``log_px``: log (1/k) sum_s exp(w_s), the importance-
  sampled estimate of log p(x) (Burda et al. 2016); ``bits_per_dim``: -log_px / (D log 2).
- ``recon``: the mean of log p(x|z_s); ``kl``: the mean of log q(z_s|x) - log p(z_s) (per
  layer for hierarchical models: ``kl_1`` next to the data ... ``kl_L`` at the top).
- ``mse``: the squared error of the reconstruction (decoder mean at the posterior mean).
- ``llr_k`` (hierarchical models, Havtorn et al. 2021): log p(x) - L^{>k}, where L^{>k} is the
  same importance-sampled estimate with the k lowest layers taken from the conditional prior
  p(z_{<=k} | z_{>k}) (its mean, as their code does) instead of the posterior, and the layers
  above from q(z_{>k} | x): for ``hvae`` it reads the data through the posterior means of the
  layers below (their supplement); the ladder's top-down posterior needs nothing from below.
  A large ratio says the image is likely only through its low-level features.
- ``complexity_corrected`` (Serra et al. 2020): -log2 p(x) - L(x), L(x) the size in bits of
  the image as the model sees it, compressed losslessly as PNG; ``png_bits`` is L(x).

Density likelihoods (logistic, Gaussian) are scored on the discrete scale, as evaluate does:
log p(x) - D log 256.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.batches import SplitInputs, model_inputs, read_rows
from vaelab.checkpoint import loaded, run_device
from vaelab.config import ConfigError, did_you_mean
from vaelab.data import DataError, Dataset
from vaelab.distributions import GaussianChain
from vaelab.evaluate import decode_rows
from vaelab.files import atomic_path, settings_tag, slug
from vaelab.images import file_names
from vaelab.noise import ExampleNoise
from vaelab.options import ScoreOptions, options_of
from vaelab.runtime import Dist, ProgressLine, distributed, progress_bar, rebalance_threads, tune_malloc
from vaelab.sources import distinct_names, is_path, load_configured

__all__ = ["score", "Table", "write_table", "top_figure", "SCORES", "Score", "ScoreContext", "score_batch",
           "model_traits", "complexity_corrected", "png_bits"]

# images of a folder or array file are read from the disk cache chunk by chunk, never held
# whole: memory stays flat in the number of images
STREAM = 0


def direction(column: str) -> Score:
    """The Score a column belongs to (``kl_2`` -> kl, ``llr_1`` -> llr, ``png_bits`` ->
    complexity_corrected)."""
    return SCORES[score_of(column)]


def score_of(column: str) -> str:
    """The name of the score that writes `column`: the column itself, the name before its
    suffix (``kl_2`` -> ``kl``), or the score that writes it aside (``png_bits``)."""
    if column in SCORES:
        return column
    for name, s in SCORES.items():
        if column in s.aside or column.startswith(name + "_"):
            return name
    raise KeyError(column)


def label(column: str) -> str:
    """How figures and the explorer page name a score column: 'log p(x)', 'KL of layer 2',
    'LLR>1'; a column of no registered score by its own name."""
    try:
        name = score_of(column)
    except KeyError:
        return column
    s = SCORES[name]
    if column == name:
        return s.label
    return column if column in s.aside else s.level_label.format(column[len(name) + 1 :])


def anomaly(column: str, values: np.ndarray) -> np.ndarray:
    """Values of a score column turned so that larger means more unusual."""
    return -values if direction(column).typical_high else values


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """Columns of equal length, one row per image, and what they were made from.

    What [score][vaelab.scores.score] and [encode][vaelab.codes.encode] return. Jupyter shows
    it as a DataFrame; ``table["log_px"]`` is a column.

    Attributes:
        columns: name -> numpy array of shape (N,) or (N, D): ``split``, ``index``, ``file``
            (folders), ``label`` (labelled data: class names as text, in the order of
            ``data.classes``) and the scores or codes.
        info: how the table was made (run, data, k, seed, ...).
        data: the dataset whose images the rows index, when known.

    Examples:
        >>> import numpy as np
        >>> from vaelab.scores import Table
        >>> t = Table({"index": np.arange(4), "log_px": np.array([-90.0, -120.0, -85.0, -300.0])})
        >>> t.sorted("log_px")["index"]        # most unusual first: the lowest log p(x)
        array([3, 1, 0, 2])
        >>> len(t), t.scores
        (4, ['log_px'])
    """

    columns: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    data: Dataset | None = field(default=None, repr=False)  # the images the rows index

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; the columns are {', '.join(self.columns)}")
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def scores(self) -> list[str]:
        """The score columns (not split, index, file, label)."""
        return [c for c in self.columns if c not in ("split", "index", "file", "label")]

    def take(self, rows: np.ndarray) -> Table:
        """The rows `rows` (integer indices of shape (M,) or a boolean mask of shape (N,)), in that
        order, as a new table.
        """
        return Table({k: v[rows] for k, v in self.columns.items()}, dict(self.info), self.data)

    def sorted(self, by: str, unusual_first: bool = True) -> Table:
        """Rows ordered by score `by`, most unusual first (or most typical first)."""
        order = np.argsort(anomaly(by, self[by]), kind="stable")
        return self.take(order[::-1] if unusual_first else order)

    def to_pandas(self):
        """A pandas DataFrame, one row per image; an (N, D) column such as ``mean`` becomes D
        columns ``mean_0`` ... (needs pandas)."""
        import json

        import pandas as pd

        frame = pd.DataFrame(_flat(self.columns))
        frame.attrs = json.loads(json.dumps(self.info, default=str))  # kept by .parquet files
        return frame

    def __repr__(self) -> str:
        head = self.take(np.arange(min(len(self), 8)))
        cols = list(self.columns)
        cells = [[_cell(head[c][i]) for c in cols] for i in range(len(head))]
        widths = [max(len(c), *(len(r[j]) for r in cells)) if cells else len(c) for j, c in enumerate(cols)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(lines) + f"\n[{len(self)} rows x {len(cols)} columns]"

    def _repr_html_(self) -> str:
        try:
            return self.to_pandas()._repr_html_()
        except ImportError:
            return f"<pre>{self!r}</pre>"


def _flat(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Columns of shape (N,) as they are, (N, D) as D columns key_0 ..., (N, S, D) as key_s_d."""
    flat: dict[str, np.ndarray] = {}
    for key, v in columns.items():
        if v.ndim == 1:
            flat[key] = v
        elif v.ndim == 2:
            flat.update({f"{key}_{d}": v[:, d] for d in range(v.shape[1])})
        else:
            flat.update({f"{key}_{s}_{d}": v[:, s, d] for s in range(v.shape[1]) for d in range(v.shape[2])})
    return flat


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def write_table(table: Table, path: str | Path) -> Path:
    """Write a table atomically as .csv, .npz (loads with numpy alone) or .parquet (needs
    pandas and pyarrow), chosen by the file's suffix.

    Args:
        table: the table to write.
        path: where, ending in .csv, .npz or .parquet.

    Returns:
        The path written.

    Examples:
        >>> import numpy as np
        >>> from vaelab.scores import Table, write_table
        >>> path = write_table(Table({"index": np.arange(3), "elbo": np.zeros(3)}), tmp + "/t.npz")
        >>> sorted(np.load(path))
        ['elbo', 'index']
    """
    path = Path(path)
    kind = check_table_path(path)
    if kind == ".parquet":
        frame = table.to_pandas()
    with atomic_path(path, suffix=kind) as tmp:
        if kind == ".csv":
            _write_csv(table, tmp)
        elif kind == ".npz":
            _write_npz(table.columns, tmp)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def check_table_path(path: str | Path, kinds: tuple[str, ...] = (".csv", ".npz", ".parquet")) -> str:
    """The format of table file `path` (its suffix), refused in one line, before any work, when
    it is not one of `kinds` or when .parquet lacks pandas or pyarrow."""
    import importlib.util

    kind = Path(path).suffix.lower()
    if kind not in kinds:
        raise ConfigError(f"{path}: write {', '.join(kinds[:-1])} or {kinds[-1]} (got {kind or 'no suffix'})")
    if kind == ".parquet" and not all(importlib.util.find_spec(m) for m in ("pandas", "pyarrow")):
        others = " or ".join(k for k in kinds if k != ".parquet")
        raise ConfigError(f"writing .parquet needs pandas and pyarrow: pip install 'vaelab[scores]', or write {others}")
    return kind


def _write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """An .npz as numpy.savez writes it (which cannot take an array named 'file')."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)


def _write_csv(table: Table, path: Path) -> None:
    import csv

    cols = list(table.columns)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i in range(len(table)):
            w.writerow([_csv_cell(table[c][i]) for c in cols])


def _csv_cell(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return v.item() if isinstance(v, np.generic) else v


# ----------------------------------------------------------------------------- data


def scoring_data(cfg, spec: str | Dataset | None, model, progress: bool = True, *, convert: bool = False,
                 name: str | None = None) -> Dataset:
    """`spec` read exactly as the run read its training data (the same --image-size, --channels,
    --background and test fraction); None: the run's own data. With `convert`, other data are
    read at the model's size and channels instead (grey repeated into RGB, RGB to grey by
    luminance, resized and centre-cropped). A folder or array file may have an empty split
    (the split asked for is checked by splits_of). `name`: the data's name in tables, printouts
    and figures. Refuses data whose images then differ in shape from the model's in one line."""
    if isinstance(spec, Dataset):
        data = spec
    else:
        d = cfg.data
        if spec is not None and spec != d.dataset:
            path = is_path(spec)
            if path and not Path(spec).expanduser().exists():
                raise DataError(f"{spec} does not exist; give a named dataset, an image folder or an .npy/.npz file")
            d = replace(d, dataset=spec, data_dir=None if path else d.data_dir, conditions=None, fingerprint=None)
            if convert:
                c, h, w = model.image_shape
                d = replace(d, image_size=(h, w), channels=c)
        data = load_configured(d, progress=progress, whole=True)
    if data.image_shape != model.image_shape:
        c, h, w = data.image_shape
        mc, mh, mw = model.image_shape
        hint = ("read them at that shape with --convert (convert=True in Python), or give images of that shape"
                if not isinstance(spec, Dataset) else "give a dataset of that shape")
        raise DataError(f"{data.source}: its images are {c}x{h}x{w}, the model takes {mc}x{mh}x{mw}; {hint}")
    if model.conditional and data.cond_dim != model.cond_dim:
        raise DataError(f"{data.source}: the {model.cfg.model} model is conditioned on {model.cond_dim} classes, "
                        f"these data have {data.cond_dim}; score with a model that takes no condition")
    return replace(data, name=name) if name else data


def held_out_only(spec, cfg) -> bool:
    """Whether `auto` means the test split: for the run's own data and for a named dataset
    (its official test split); a folder or array file of other images is scored whole."""
    return spec is None or (isinstance(spec, str) and (spec == cfg.data.dataset or not is_path(spec)))


def check_split(split: str) -> None:
    if split not in ("auto", "test", "train", "all"):
        raise ConfigError(f"unknown split {split!r}; choose auto, test, train or all")


def splits_of(data: Dataset, split: str, own: bool) -> list[str]:
    if split == "auto":
        split = "test" if own else "all"
    if split not in ("test", "train", "all"):
        raise ConfigError(f"unknown split {split!r}; choose test, train or all")
    names = [s for s in ("train", "test") if len(getattr(data, s))] if split == "all" else [split]
    if not sum(len(getattr(data, s)) for s in names):
        total = len(data.train) + len(data.test)
        if split == "all" or not total:
            raise DataError(f"{data.source}: no images")
        raise DataError(f"{data.source}: no images in the {split} split (of {total}); take every image with "
                        "--split all (split='all' in Python)")
    return names


def data_names(cfg, specs: list) -> list[str]:
    """Display names of data sets `specs` (None: the run's own data), told apart from each
    other and from the run's own data (see vaelab.sources.distinct_names)."""
    own = cfg.data.dataset
    texts = [(s.source if s.cache else s.name) if isinstance(s, Dataset) else own if s is None else str(s)
             for s in specs]
    return distinct_names([own, *texts])[1:]


# ----------------------------------------------------------------------------- scoring


def model_traits(model) -> frozenset[str]:
    """What a model is, for the scores: its declared ``traits`` (``hierarchical``,
    ``conditional``, ``autoencoder``, ...), with ``density`` exactly when it has a density
    (``has_density``, which a module of one's own declares). A score applies to the models
    whose traits include its ``needs``.

    Args:
        model: a model, or a model class.

    Returns:
        frozenset: the trait names.

    Examples:
        >>> from vaelab.models import MODELS
        >>> from vaelab.scores import model_traits
        >>> sorted(model_traits(MODELS["hvae"])), sorted(model_traits(MODELS["ae"]))
        (['density', 'hierarchical'], ['autoencoder'])
    """
    declared = set(getattr(model, "traits", ())) - {"density"}
    return frozenset(declared | ({"density"} if getattr(model, "has_density", False) else set()))


def levels(model) -> int:
    """The latent layers of a hierarchical model (its ``sizes``, z_1 first); 0 for one code."""
    return len(getattr(model, "sizes", ()))


@dataclass(eq=False)
class ScoreContext:
    """One batch of images to score, and the work its scores share, each part computed once,
    on first use.

    What a score's ``compute`` function receives (see [Score][vaelab.scores.Score]). Shared
    parts: ``q``, the posterior; ``decoded``, the likelihood at the posterior mean; and
    ``importance``, the statistics of the k importance samples behind ``elbo``, ``log_px``,
    ``recon``, ``kl`` and the LLR. Read them under ``torch.inference_mode()``, as
    [score_batch][vaelab.scores.score_batch] does.

    Attributes:
        model: a vaelab model in eval mode.
        x: images, shape (B, C, H, W), values in [0, 1] (binarised if the model was).
        idx: shape (B,), integer keys of the images (their index in the dataset): the noise
            of an image's samples is tied to its key and the seed, not to the batch.
        c: shape (B, K), one-hot conditions for a conditional model, else None.
        k: importance samples per image.
        seed: the noise seed.
        skip: for a hierarchical model, the k of each LLR>k column.
        shift: subtracted from log-densities to put them on the discrete scale; None:
            ``density_shift(model)``, D log 256 for a density likelihood, 0 for a discrete one.
        seen: a function returning the images as the model sees them, uint8 of shape
            (B, C, H, W); None: x * 255, rounded.

    Examples:
        >>> from vaelab.scores import ScoreContext
        >>> batch = ScoreContext(run.model, run.images("test", 4), torch.arange(4), k=10)
        >>> with torch.inference_mode():
        ...     shared = batch.importance
        >>> sorted(shared), shared["log_px"].shape
        (['elbo', 'kl', 'log_px', 'recon'], torch.Size([4]))
    """

    model: Any
    x: torch.Tensor
    idx: torch.Tensor
    c: torch.Tensor | None = None
    k: int = 100
    seed: int = 0
    skip: tuple[int, ...] = ()
    shift: float | None = None
    seen: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.shift is None:
            self.shift = density_shift(self.model)

    @cached_property
    def traits(self) -> frozenset[str]:
        """The model's traits (see [model_traits][vaelab.scores.model_traits])."""
        return model_traits(self.model)

    @cached_property
    def q(self):
        """The posterior q(z|x) of the images: ``.mean`` of shape (B, D)."""
        return self.model.encode(self.x, self.c)

    @cached_property
    def decoded(self):
        """The likelihood p(x | z) at the posterior mean: ``.mean`` of shape (B, C, H, W)."""
        return self.model.decode(self.q.mean, self.c)

    @cached_property
    def chunk(self) -> int:
        """Samples drawn per decoder call: each call decodes about ``decode_rows`` images."""
        return max(1, decode_rows(math.prod(self.x.shape[1:])) // len(self.x))

    @cached_property
    def importance(self) -> dict[str, torch.Tensor]:
        """Per image, shape (B,), from k samples z_s ~ q(z|x) with w_s = log p(x|z_s) +
        log p(z_s) - log q(z_s|x): ``elbo`` (the mean of w_s), ``log_px`` (log-mean-exp of w_s),
        ``recon`` (the mean of log p(x|z_s)), ``kl`` (the mean of log q(z_s|x) - log p(z_s)) and,
        for a hierarchical model, ``kl_1`` ... per layer; log-densities on the discrete scale."""
        model, x, c, k = self.model, self.x, self.c, self.k
        q, prior = self.q, model.prior()
        hier = "hierarchical" in self.traits
        acc: dict[str, torch.Tensor] = {}
        lse = None
        for j in range(0, k, self.chunk):
            n = min(self.chunk, k - j)
            noise = ExampleNoise(self.idx, _key(self.seed, 1), j)
            if hier and hasattr(model, "weights_and_levels"):  # a top-down hierarchy: one pass gives both
                w, kl_levels = model.weights_and_levels(x, n, q, generator=noise)  # (n, B), (L, n, B)
                kl = kl_levels.sum(0)
                _add(acc, {f"kl_{i + 1}": v.sum(0) for i, v in enumerate(kl_levels)})
                _add(acc, {"elbo": w.sum(0), "recon": (w + kl).sum(0), "kl": kl.sum(0)})
                lse = _logaddexp(lse, torch.logsumexp(w, 0))
                continue
            z, log_q = q.rsample_with_log_prob(n, generator=noise)
            log_pxz = model.decode(z, c).log_prob(x)
            if hier:
                kl_levels = q.log_prob_levels(z) - prior.log_prob_levels(z)  # (L, n, B)
                kl = kl_levels.sum(0)
                _add(acc, {f"kl_{i + 1}": v.sum(0) for i, v in enumerate(kl_levels)})
            else:
                kl = log_q - prior.log_prob(z)
            w = log_pxz - kl
            _add(acc, {"elbo": w.sum(0), "recon": log_pxz.sum(0), "kl": kl.sum(0)})
            lse = _logaddexp(lse, torch.logsumexp(w, 0))
        out = {key: v / k for key, v in acc.items()}
        out["elbo"] -= self.shift
        out["recon"] -= self.shift
        out["log_px"] = lse - math.log(k) - self.shift
        return out

    def u8(self) -> np.ndarray:
        """The images as the model sees them, uint8 of shape (B, C, H, W)."""
        if self.seen is not None:
            return self.seen()
        return (self.x * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _key(seed: int, stream: int) -> int:
    """The noise key of one stream of one seed: 0 codes, 1 the samples, 2 + k the upper layers
    of L>k."""
    return seed * 256 + stream


def _add(acc: dict, new: dict) -> None:
    for key, v in new.items():
        acc[key] = v if key not in acc else acc[key] + v


def _logaddexp(a, b):
    return b if a is None else torch.logaddexp(a, b)


def _skip_weights(model, x, c, q: GaussianChain, n: int, s: int, idx, seed: int, first: int):
    """log-weights (n, B) of L^{>s}: the layers above s drawn from q, which reads the data
    through the posterior means of the layers below; layers 1..s set to the conditional
    prior's mean given the layer above, as the reference code of Havtorn et al. does. A
    top-down hierarchy (the ladder) draws them in a pass of its own (``skip_log_weights``),
    its q(z_>s | x) needing nothing from the layers below."""
    noise = ExampleNoise(idx, _key(seed, 2 + s), first)
    if hasattr(model, "skip_log_weights"):
        return model.skip_log_weights(x, n, s, q, generator=noise)
    sizes = model.sizes
    layers = q.layers()  # q(z_j | mean of z_{j-1}), layer order
    upper = GaussianChain(layers[s], q.steps[s:], sizes[s:])
    z_up, log_q = upper.rsample_with_log_prob(n, generator=noise)
    prior = model.prior()
    steps = prior.steps[::-1]  # layer order: steps[j] gives p(z_{j+1} | z_{j+2}), 0-based layers
    parts = [None] * s + list(z_up.split(sizes[s:], -1))
    for j in range(s - 1, -1, -1):
        parts[j] = steps[j](parts[j + 1]).mean
    z = torch.cat(parts, -1)
    log_p = prior.log_prob_levels(z)[s:].sum(0)
    return model.decode(z, c).log_prob(x) + log_p - log_q


# ----------------------------------------------------------------------------- the scores


def _recon(b: ScoreContext) -> torch.Tensor:
    if "density" in b.traits:
        return b.importance["recon"]
    return b.decoded.log_prob(b.x) - b.shift  # an autoencoder: log p(x | z = f(x))


def _kl(b: ScoreContext) -> dict[str, torch.Tensor]:
    return {key: v for key, v in b.importance.items() if key == "kl" or key.startswith("kl_")}


def _kl_columns(model, skip) -> list[str]:
    return ["kl", *(f"kl_{i + 1}" for i in range(levels(model)))]


def _mse(b: ScoreContext) -> torch.Tensor:
    return (b.decoded.mean.clamp(0, 1) - b.x).square().flatten(1).mean(1)


def _llr(b: ScoreContext) -> dict[str, torch.Tensor]:
    out = {}
    for s in b.skip:
        lse = None
        for j in range(0, b.k, b.chunk):
            ws = _skip_weights(b.model, b.x, b.c, b.q, min(b.chunk, b.k - j), s, b.idx, b.seed, j)
            lse = _logaddexp(lse, torch.logsumexp(ws, 0))
        out[f"llr_{s}"] = b.importance["log_px"] - (lse - math.log(b.k) - b.shift)
    return out


def _check_skip(model, skip) -> None:
    n = levels(model)
    bad = [s for s in skip if not 1 <= s < n]
    if bad:
        raise ConfigError(f"--skip-levels {bad[0]} is out of range: this model has {n} latent levels, so give 1 to "
                          f"{n - 1}")


def _complexity(b: ScoreContext) -> dict[str, torch.Tensor]:
    bits = torch.from_numpy(png_bits(b.u8())).to(b.x.device)
    return {"complexity_corrected": complexity_corrected(b.importance["log_px"], bits), "png_bits": bits}


@dataclass(frozen=True)
class Score:
    """One entry of [SCORES][vaelab.scores.SCORES]: how to compute a score from a batch of
    images, which models have it, and how to read it.

    Attributes:
        compute: ``fn(batch)``, batch a [ScoreContext][vaelab.scores.ScoreContext] of B images
            -> the score of each, a tensor of shape (B,); or, for a score of several columns,
            a dict column -> tensor (B,). Work that several scores use (the posterior, the
            importance samples) is read from the batch, which computes it once.
        help: what it is, in one line (the explorer page, messages, docs/scores.md).
        label: its name on figures and on the explorer page.
        typical_high: whether larger values mean a more typical image.
        needs: the model traits it needs (``density``, ``hierarchical``, ``conditional``,
            ``autoencoder``; see [model_traits][vaelab.scores.model_traits]); () for every model.
        columns: ``fn(model, skip)`` -> its columns, each its name or its name, an underscore
            and a suffix (``kl_2``, ``llr_1``); None: one column, named as the score.
        level_label: the label of a column NAME_SUFFIX, ``{}`` standing for the suffix.
        aside: columns it also writes that describe the image and rank nothing (``png_bits``).
        check: ``fn(model, skip)`` raising ConfigError for settings the score cannot use.
        prefer: with no score named, images are ranked by the first column of the present
            score whose ``prefer`` is smallest; None: never by default.
        costly: the explorer page computes it only when it is asked for.

    Examples:
        >>> from vaelab.scores import SCORES, Score
        >>> s = SCORES["log_px"]
        >>> s.label, s.typical_high, s.needs
        ('log p(x)', True, ('density',))
        >>> neg_kl = Score(lambda b: -b.importance["kl"], "minus the KL, nats", "-KL", True, needs=("density",))
        >>> neg_kl.level_label
        '-KL {}'
    """

    compute: Callable[[ScoreContext], torch.Tensor | dict[str, torch.Tensor]]
    help: str
    label: str
    typical_high: bool
    needs: tuple[str, ...] = ()
    columns: Callable[[Any, tuple[int, ...]], list[str]] | None = None
    level_label: str = ""
    aside: tuple[str, ...] = ()
    check: Callable[[Any, tuple[int, ...]], None] | None = None
    prefer: int | None = None
    costly: bool = False

    def __post_init__(self) -> None:
        if not self.level_label:
            object.__setattr__(self, "level_label", self.label + " {}")


SCORES: dict[str, Score] = {
    "elbo": Score(lambda b: b.importance["elbo"], label="ELBO", typical_high=True, needs=("density",), prefer=2,
                  help="the evidence lower bound (ELBO) on log p(x): the mean of the k log-weights, nats"),
    "log_px": Score(lambda b: b.importance["log_px"], label="log p(x)", typical_high=True, needs=("density",),
                    prefer=1, help="log p(x) by importance sampling: the log-mean-exp of the k log-weights "
                                   "(Burda et al. 2016), nats"),
    "bits_per_dim": Score(lambda b: -b.importance["log_px"] / (math.prod(b.x.shape[1:]) * math.log(2)),
                          label="bits/dim", typical_high=False, needs=("density",),
                          help="-log p(x) / (D log 2), D = pixels x channels"),
    "recon": Score(_recon, label="log p(x|z)", typical_high=True,
                   help="the mean of log p(x|z_s) over the k samples, nats; an autoencoder: log p(x | z = f(x))"),
    "kl": Score(_kl, label="KL", typical_high=False, needs=("density",), columns=_kl_columns,
                level_label="KL of layer {}",
                help="KL(q(z|x) || p(z)) by Monte Carlo, nats; a hierarchical model also per layer, kl_1 next to "
                     "the data"),
    "mse": Score(_mse, label="MSE", typical_high=False, prefer=3,
                 help="the squared error of the reconstruction (decoder mean at the posterior mean), pixels in [0, 1]"),
    "llr": Score(_llr, label="LLR", typical_high=False, needs=("density", "hierarchical"),
                 columns=lambda model, skip: [f"llr_{s}" for s in skip], level_label="LLR>{}", check=_check_skip,
                 prefer=0, help="the likelihood ratio LLR>k = log p(x) - L>k (Havtorn et al. 2021), for each k of "
                                "--skip-levels"),
    "complexity_corrected": Score(_complexity, label="complexity-corrected score", typical_high=False,
                                  needs=("density",), columns=lambda model, skip: ["complexity_corrected", "png_bits"],
                                  aside=("png_bits",), costly=True,
                                  help="-log2 p(x) - L(x), L(x) the PNG size of the image in bits (Serra et al. "
                                       "2020); png_bits is L(x)"),
}
"""Every score by name -> its [Score][vaelab.scores.Score]: how it is computed, which models
have it (``needs``), its columns, label and direction (``typical_high``: larger values mean
a more typical image). The names ``vaelab score --scores`` and ``score(scores=...)`` take; the
explorer page, ``vaelab ood`` and docs/scores.md read them from here."""


def applicable(model) -> list[str]:
    """The scores `model` has: those whose ``needs`` are among its traits."""
    have = model_traits(model)
    return [n for n, s in SCORES.items() if set(s.needs) <= have]


def chosen(model, scores=None, skip_levels=None) -> tuple[list[str], tuple[int, ...]]:
    """The score names to compute (`scores`, or every score the model has) and the skip levels
    (`skip_levels`, or 1 to layers - 1), checked against the model in one line each."""
    ok = applicable(model)
    names = list(ok) if not scores else list(dict.fromkeys(scores))
    for n in names:
        if n not in SCORES:
            raise ConfigError(f"unknown score {n!r}; choose from {', '.join(SCORES)}{did_you_mean(n, SCORES)}")
        if n not in ok:
            raise ConfigError(f"the {model.cfg.model} model has no {n} score ({SCORES[n].help}); "
                              f"it has: {', '.join(ok)}")
    skip = tuple(skip_levels) if skip_levels else tuple(range(1, levels(model)))
    for n in ok:  # every score the model has checks the settings, asked for or not: --skip-levels too deep is wrong
        if SCORES[n].check is not None:
            SCORES[n].check(model, skip)
    return names, skip


def column_names(model, names: list[str], skip: tuple[int, ...]) -> list[str]:
    """The table's columns of the score names `names`, in order."""
    return [c for n in names for c in (SCORES[n].columns(model, skip) if SCORES[n].columns else [n])]


@torch.inference_mode()
def score_batch(batch: ScoreContext, scores: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Scores of one batch of images, each computed by its [SCORES][vaelab.scores.SCORES] entry
    from the work they share (one set of k importance samples per image, drawn once).

    The building block of [score][vaelab.scores.score], for a model in hand. Samples are drawn
    in chunks that keep each decoder call near ``decode_rows`` rows, with noise tied to
    (image key, seed), so an image's numbers do not depend on how the images were batched.

    Args:
        batch: the images, the model and the settings (k, seed, skip levels).
        scores: names from SCORES; None: every score the model has.

    Returns:
        dict: column name -> tensor of shape (B,): the columns of each score (``kl_1`` ...
        per layer and ``llr_1`` ... per skip level for a hierarchical model).

    Examples:
        >>> from vaelab.scores import ScoreContext, score_batch
        >>> batch = ScoreContext(run.model, run.images("test", 4), torch.arange(4), k=10)
        >>> s = score_batch(batch, ["log_px", "elbo", "mse"])
        >>> sorted(s)
        ['elbo', 'log_px', 'mse']
        >>> s["log_px"].shape, bool((s["log_px"] >= s["elbo"] - 1e-4).all())  # the bound holds per image
        (torch.Size([4]), True)
    """
    out: dict[str, torch.Tensor] = {}
    for name in applicable(batch.model) if scores is None else scores:
        got = SCORES[name].compute(batch)
        out.update(got if isinstance(got, dict) else {name: got})
    return out


def png_bits(u8: np.ndarray) -> np.ndarray:
    """Lossless PNG size in bits of each image: a measure of its complexity.

    Args:
        u8: images, shape (N, C, H, W), dtype uint8, C 1 or 3.

    Returns:
        numpy.ndarray: shape (N,), bits of each image's PNG file (Pillow, compression level 9).

    Examples:
        >>> import numpy as np
        >>> from vaelab.scores import png_bits
        >>> flat = np.zeros((1, 1, 28, 28), np.uint8)
        >>> noise = np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
        >>> bool(png_bits(flat)[0] < png_bits(noise)[0])
        True
    """
    from PIL import Image

    out = np.empty(len(u8), dtype=np.float64)
    for i, im in enumerate(u8):
        arr = im[0] if im.shape[0] == 1 else np.ascontiguousarray(im.transpose(1, 2, 0))
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell()
    return out


def _as_seen(inputs: SplitInputs, x: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """uint8 images as the model sees them: binarised images as 0/255, grey levels as stored."""
    if inputs.binarization in ("dynamic", "fixed"):
        return (x * 255).round().to(torch.uint8).cpu().numpy()
    return read_rows(inputs.images, idx).cpu().numpy()


def _score_split(model, inputs: SplitInputs, names: list[str], cols: list[str], settings: dict[str, Any],
                 dist: Dist, bar) -> dict[str, np.ndarray]:
    """This split's score columns, computed in chunks by each process on its share, gathered;
    `settings`: k, seed, skip and shift of each ScoreContext."""
    dims = math.prod(model.image_shape)
    k = settings["k"]
    batch = max(1, decode_rows(dims) // min(k, decode_rows(dims))) if model.has_density else 256
    first, last = dist.shard(len(inputs))
    # filled in place: appending a small tensor per chunk would leave long-lived blocks between
    # each chunk's large freed ones, and the heap would grow with the number of images
    parts = {key: np.empty(last - first, dtype=np.float64) for key in cols}
    for i in range(first, last, batch):
        x, c, _ = inputs.rows(i, min(last, i + batch))
        idx = inputs.index(i, min(last, i + batch))
        got = score_batch(ScoreContext(model, x, idx, c, seen=partial(_as_seen, inputs, x, idx), **settings), names)
        for key in cols:
            parts[key][i - first : i - first + len(x)] = got[key].double().cpu().numpy()
        bar.update(len(x) * dist.world)
        rebalance_threads()  # follow this process's share of the CPUs
    return {key: dist.gather_rows(torch.from_numpy(v).to(inputs.device), len(inputs)).cpu().numpy()
            for key, v in parts.items()}


def key_columns(data: Dataset, split: str, n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"split": np.full(n, split), "index": np.arange(n)}
    names = file_names(data, split)
    if names is not None:
        cols["file"] = np.asarray(names[:n], dtype=str)
    if data.labelled:
        labels = getattr(data, split).labels[:n].numpy()
        cols["label"] = np.asarray([data.classes[v] if v >= 0 else "" for v in labels], dtype=str)
    return cols


def score(run, data=None, options: ScoreOptions | None = None, *, progress: bool = True, check=None,
          **settings: Any) -> Table:
    """Score every image of a dataset under a trained run: one row per image.

    Args:
        run: a run folder or a [Run][vaelab.api.Run].
        data: a named dataset, an image folder or an .npy/.npz file, read as the run read its
            own data (same size, channels, background); None: the run's own data.
        options: a [ScoreOptions][vaelab.options.ScoreOptions], or its fields as keywords:
        split: ``"test"``, ``"train"``, ``"all"`` or ``"auto"``: the test split of the run's own
            data and of a named dataset, every image of a folder or array file.
        scores: names from [SCORES][vaelab.scores.SCORES]; None: every score the model has.
        k: importance samples per image (for log p(x) and the LLR).
        skip_levels: for a hierarchical model, the k of each LLR>k (default: every level).
        n: score only the first n images of each split.
        seed: the noise seed; the same seed gives the same numbers for any chunking or number of
            processes.
        device: ``"cpu"`` or ``"cuda"``; None: a loaded [Run][vaelab.api.Run]'s own device,
            else the CPU.
        progress: show a progress bar.
        convert: read other data at the model's image size and channels (grey repeated into
            RGB, RGB to grey by luminance, resized and centre-cropped) instead of as the run
            read its own data; ``vaelab score --convert``.
        check: called with the table's score columns before any image is scored (a caller's own
            checks, such as the column it will rank by, refuse there).

    Returns:
        A [Table][vaelab.scores.Table] keyed by ``split`` and ``index`` (plus ``file`` for
        folders; ``label`` where known, class names as text such as ``"7"``), with the (N,)
        columns of each score (per layer for some, ``kl_1``...; per skip level, ``llr_1``...);
        [SCORES][vaelab.scores.SCORES] says which models have which score.

    Raises:
        DataError: data whose images differ in shape from the model's, or whose conditions do
            not fit it.
        ConfigError: an unknown score or split, or k < 1.

    Examples:
        >>> t = vaelab.score(run, k=10, n=20, progress=False)
        >>> len(t), t.scores[:2], t["log_px"].shape
        (20, ['elbo', 'log_px'], (20,))
        >>> unusual = t.sorted("log_px").take(range(3))   # the three least likely images
        >>> len(unusual), bool(unusual["log_px"][0] == t["log_px"].min())
        (3, True)
    """
    o = options_of(ScoreOptions, options, **settings)
    split, scores, k, skip_levels, n, seed, device = o.split, o.scores, o.k, o.skip_levels, o.n, o.seed, o.device
    convert = o.convert
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    check_split(split)
    tune_malloc()
    dist, dev = distributed(run_device(run, device))
    progress = progress and dist.main
    cfg, model = loaded(run, dev)
    model.eval()
    names, skip = chosen(model, scores, skip_levels)  # before the data: a bad choice is refused at once
    cols = column_names(model, names, skip)
    if check is not None:
        check(cols)
    own = held_out_only(data, cfg)
    ds = scoring_data(cfg, data, model, progress, convert=convert,
                      name=None if isinstance(data, Dataset) else data_names(cfg, [data])[0])
    shift = density_shift(model)
    settings = {"k": k, "seed": seed, "skip": skip, "shift": shift}
    splits = splits_of(ds, split, own)
    sizes = {s: len(getattr(ds, s)) if n is None else min(n, len(getattr(ds, s))) for s in splits}
    bar = progress_bar(total=sum(sizes.values()), desc=f"scoring (k={k})", show=progress, unit="img")
    parts = []
    for s in splits:
        inputs = model_inputs(model, cfg, getattr(ds, s).head(sizes[s]), len(ds.classes), dev, STREAM)
        line = ProgressLine(f"scoring {ds.name} {s}", sizes[s], show=progress, bar=bar)  # the bar spans the splits
        got = _score_split(model, inputs, names, cols, settings, dist, line)
        parts.append({**key_columns(ds, s, sizes[s]), **got})
    bar.close()
    return joined(parts, ds, {"run": str(getattr(run, "path", run)) if not isinstance(run, tuple) else "",
                               "data": ds.source, "dataset": ds.name, "split": "+".join(splits), "k": k,
                               "seed": seed, "binarization": cfg.data.binarization, "model": cfg.model.model})


def joined(parts: list[dict[str, np.ndarray]], ds: Dataset, info: dict[str, Any]) -> Table:
    """One table from the columns of each split; every image of a folder in file-name order."""
    columns = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    table = Table(columns, info, ds)
    if "file" in columns and len(parts) > 1:
        table = table.take(np.argsort(columns["file"], kind="stable"))
    return table


def default_rank(columns: list[str]) -> str:
    """The score column to rank by when none is named: the first column of the score with the
    smallest ``prefer`` (LLR at the lowest skip level, else log p(x), else the ELBO, else the
    reconstruction error), else the first column."""
    prefer = [(_known(c).prefer, i) for i, c in enumerate(columns) if _known(c) and _known(c).prefer is not None]
    return columns[min(prefer)[1]] if prefer else columns[0]


def ranked(columns: list[str]) -> list[str]:
    """The score columns that rank images (not those a score writes aside, such as png_bits)."""
    return [c for c in columns if not (_known(c) and c in _known(c).aside)]


def _known(column: str) -> Score | None:
    """The Score that writes `column`, or None for a column of no registered score."""
    try:
        return direction(column)
    except KeyError:
        return None


def density_shift(model) -> float:
    """What log-densities lose to be put on the discrete scale: D log 256 for a density
    likelihood over D values in [0, 1], 0 for a discrete one."""
    return 0.0 if model.likelihood.discrete else math.prod(model.image_shape) * math.log(256)


def complexity_corrected(log_px: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Serra et al. (2020)'s complexity-corrected score: -log2 p(x) - L(x), in bits.

    A likelihood model gives simple images high density whatever it was trained on; subtracting
    the image's compressed size L(x) leaves what the model knows beyond a generic compressor.
    Larger means more unusual.

    Args:
        log_px: shape (N,), log p(x) in nats (tensor or array).
        bits: shape (N,), L(x) in bits (see [png_bits][vaelab.scores.png_bits]).

    Returns:
        Shape (N,), in bits.

    Examples:
        >>> import math
        >>> from vaelab.scores import complexity_corrected
        >>> complexity_corrected(torch.tensor([-100 * math.log(2)]), torch.tensor([60.0]))
        tensor([40.])
    """
    return -log_px / math.log(2) - bits


def top_images(table: Table, by: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (n, C, H, W) in [0, 1] of the n most typical and of the n most unusual rows,
    as stored (before any binarisation)."""
    if by not in table:
        raise ConfigError(f"{by}: not a score of this table; choose from {', '.join(table.scores)}")
    order = np.argsort(anomaly(by, table[by]), kind="stable")

    def images(rows) -> torch.Tensor:
        out = [read_rows(getattr(table.data, str(table["split"][r])).images, torch.tensor([int(table["index"][r])]))
               for r in rows]
        return torch.cat(out).float() / 255 if out else torch.empty(0, *table.data.image_shape)

    return images(order[:n]), images(order[::-1][:n])


def top_figure(table: Table, n: int, by: str | None = None):
    """A figure of the `n` most typical and the `n` most unusual images of a scored table.

    Args:
        table: a table from [score][vaelab.scores.score] (it keeps the images its rows index).
        n: images per row.
        by: the score to rank by (default: LLR>1 for a hierarchical model, else log p(x), else
            the reconstruction error ``mse``).

    Returns:
        A matplotlib Figure with two rows of n images, the global backend untouched.

    Examples:
        >>> from vaelab.scores import top_figure
        >>> fig = top_figure(vaelab.score(run, k=5, n=40, progress=False), 8, by="log_px")
        >>> type(fig).__name__
        'Figure'
    """
    from vaelab.plots import image_rows

    by = by or default_rank(table.scores)
    typical, unusual = top_images(table, by, n)
    return image_rows([typical, unusual], ["most typical", "most unusual"],
                      f"{table.info.get('dataset', '')} ranked by {label(by)}", inch=min(0.9, max(0.25, 14 / n)))


SCORE_DEFAULTS = {"split": "auto", "k": 100, "seed": 0}


def table_path(run_dir: str | Path, table: Table, options: ScoreOptions) -> Path:
    """Where ``vaelab score`` writes a table by default: RUN_DIR/scores-DATA.csv, with the
    settings that differ from the defaults in the name (scores-mnist-k10.csv)."""
    settings = {"split": options.split, "k": options.k, "n": options.n, "seed": options.seed,
                "scores": options.scores, "skip": options.skip_levels}
    return Path(run_dir) / f"scores-{slug(table.info['dataset'])}{settings_tag(settings, SCORE_DEFAULTS)}.csv"
