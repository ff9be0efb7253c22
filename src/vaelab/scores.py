"""Per-image scores of a trained model: which images are typical, which unusual, which from
elsewhere; and the images' codes.

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
  above from q(z_{>k} | x), which reads the data through the posterior means of the layers
  below (their supplement). A large ratio says the image is likely only through its
  low-level features.
- ``complexity_corrected`` (Serra et al. 2020): -log2 p(x) - L(x), L(x) the size in bits of
  the image as the model sees it, compressed losslessly as PNG; ``png_bits`` is L(x).

Density likelihoods (logistic, Gaussian) are scored on the discrete scale, as evaluate does:
log p(x) - D log 256.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.batches import SplitInputs, model_inputs, read_rows
from vaelab.checkpoint import load_run
from vaelab.config import ConfigError
from vaelab.data import DataError, Dataset
from vaelab.distributions import GaussianChain
from vaelab.evaluate import decode_rows
from vaelab.files import atomic_path
from vaelab.images import file_names, is_path, load_configured
from vaelab.noise import ExampleNoise
from vaelab.runtime import Dist, distributed, progress_bar, tune_malloc

# images of a folder or array file are read from the disk cache chunk by chunk, never held
# whole: memory stays flat in the number of images
STREAM = 0


@dataclass(frozen=True)
class Score:
    """A score's meaning: `typical_high` says whether larger values mean a more typical image;
    `needs`: what the model must have (density, hierarchy or nothing)."""

    help: str
    typical_high: bool
    needs: str = ""


SCORES: dict[str, Score] = {
    "elbo": Score("the ELBO, nats: a lower bound on log p(x)", True, "density"),
    "log_px": Score("log p(x) by importance sampling with k samples, nats", True, "density"),
    "bits_per_dim": Score("-log p(x) / (D log 2), D = pixels x channels", False, "density"),
    "recon": Score("E_q log p(x|z), nats (an autoencoder: log p(x | z = f(x)))", True),
    "kl": Score("KL(q(z|x) || p(z)) by Monte Carlo, nats; kl_1 ... per layer for hvae", False, "density"),
    "mse": Score("mean squared error of the reconstruction, pixels in [0, 1]", False),
    "llr": Score("the likelihood ratio LLR>k = log p(x) - L>k of a hierarchical model (Havtorn et al. 2021)",
                 False, "hierarchy"),
    "complexity_corrected": Score("-log2 p(x) - PNG bits of the image (Serra et al. 2020)", False, "density"),
}


def direction(column: str) -> Score:
    """The Score a column belongs to (``kl_2`` -> kl, ``llr_1`` -> llr)."""
    base = column if column in SCORES else column.rsplit("_", 1)[0]
    if base not in SCORES and column != "png_bits":
        raise KeyError(column)
    return SCORES.get(base, Score("PNG size of the image in bits", False))


def anomaly(column: str, values: np.ndarray) -> np.ndarray:
    """Values of a score column turned so that larger means more unusual."""
    return -values if direction(column).typical_high else values


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    """Columns of equal length, one row per image (numpy arrays, (N,) or (N, D)), and what
    they were made from (`info`). ``to_pandas()`` gives a DataFrame; ``table["log_px"]`` a column.

    Example: ``t = vaelab.score(run); t.sorted("log_px").take(range(5))["index"]``
    """

    columns: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)
    data: Dataset | None = field(default=None, repr=False)  # the images the rows index

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def scores(self) -> list[str]:
        """The score columns (not split, index, file, label)."""
        return [c for c in self.columns if c not in ("split", "index", "file", "label")]

    def take(self, rows: np.ndarray) -> Table:
        """The rows `rows` (indices or a mask), in that order."""
        return Table({k: v[rows] for k, v in self.columns.items()}, dict(self.info), self.data)

    def sorted(self, by: str, unusual_first: bool = True) -> Table:
        """Rows ordered by score `by`, most unusual first (or most typical first)."""
        order = np.argsort(anomaly(by, self[by]), kind="stable")
        return self.take(order[::-1] if unusual_first else order)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.columns)

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


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def write_table(table: Table, path: str | Path) -> Path:
    """Write a table atomically as .csv, .npz (loads with numpy alone) or .parquet (pandas and
    pyarrow).

    Example: ``write_table(vaelab.score(run), "scores.parquet")``
    """
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".csv", ".npz", ".parquet"):
        raise ConfigError(f"{path}: write .csv, .npz or .parquet (got {kind or 'no suffix'})")
    if kind == ".parquet":
        try:
            frame = table.to_pandas()
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("writing .parquet needs pandas and pyarrow: pip install 'vaelab[scores]', "
                              "or write .csv or .npz") from None
    with atomic_path(path, suffix=kind) as tmp:
        if kind == ".csv":
            _write_csv(table, tmp)
        elif kind == ".npz":
            _write_npz(table.columns, tmp)
        else:
            frame.to_parquet(tmp, index=False)
    return path


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


def scoring_data(cfg, spec: str | Dataset | None, model, progress: bool = True) -> Dataset:
    """`spec` read exactly as the run read its training data (the same --image-size, --channels,
    --background and test fraction); None: the run's own data. Refuses data whose images then
    differ in shape from the model's, or an empty dataset, in one line."""
    if isinstance(spec, Dataset):
        data = spec
    else:
        d = cfg.data
        if spec is not None and spec != d.dataset:
            path = is_path(spec)
            if path and not Path(spec).expanduser().exists():
                raise DataError(f"{spec} does not exist; give a named dataset, an image folder or an .npy/.npz file")
            d = replace(d, dataset=spec, data_dir=None if path else d.data_dir, conditions=None, fingerprint=None)
        data = load_configured(d, progress=progress)
    if data.image_shape != model.image_shape:
        c, h, w = data.image_shape
        mc, mh, mw = model.image_shape
        raise DataError(f"{data.source}: its images are {c}x{h}x{w}, the model takes {mc}x{mh}x{mw}; "
                        "give images of that shape (or train a model on them)")
    if model.conditional and data.cond_dim != model.cond_dim:
        raise DataError(f"{data.source}: the {model.cfg.model} model is conditioned on {model.cond_dim} classes, "
                        f"these data have {data.cond_dim}; score with a model that takes no condition")
    return data


def _held_out_only(spec, cfg) -> bool:
    """Whether `auto` means the test split: for the run's own data and for a named dataset
    (its official test split); a folder or array file of other images is scored whole."""
    return spec is None or (isinstance(spec, str) and (spec == cfg.data.dataset or not is_path(spec)))


def _splits(data: Dataset, split: str, own: bool) -> list[str]:
    if split == "auto":
        split = "test" if own else "all"
    if split not in ("test", "train", "all"):
        raise ConfigError(f"unknown split {split!r}; choose test, train or all")
    names = ["train", "test"] if split == "all" else [split]
    if not sum(len(getattr(data, s)) for s in names):
        raise DataError(f"{data.source}: no images in the {split} split")
    return names


# ----------------------------------------------------------------------------- scoring


def applicable(model) -> list[str]:
    """The scores `model` defines."""
    have = {"", "density"} if model.has_density else {""}
    if model.has_density and isinstance(model.prior(), GaussianChain):
        have.add("hierarchy")
    return [n for n, s in SCORES.items() if s.needs in have]


def _chosen(model, scores, skip_levels) -> tuple[list[str], tuple[int, ...]]:
    ok = applicable(model)
    names = list(ok) if not scores else list(dict.fromkeys(scores))
    for n in names:
        if n not in SCORES:
            raise ConfigError(f"unknown score {n!r}; choose from {', '.join(SCORES)}")
        if n not in ok:
            raise ConfigError(f"the {model.cfg.model} model has no {n} score ({SCORES[n].help}); "
                              f"it has: {', '.join(ok)}")
    levels = len(getattr(model, "sizes", ()))
    if "llr" not in names:
        return names, ()
    skip = tuple(skip_levels) if skip_levels else tuple(range(1, levels))
    bad = [s for s in skip if not 1 <= s < levels]
    if bad:
        raise ConfigError(f"--skip-levels {bad[0]} is out of range: this model has {levels} layers, so 1 to {levels - 1}")
    return names, skip


def _skip_weights(model, x, c, q: GaussianChain, n: int, s: int, idx, seed: int, first: int):
    """log-weights (n, B) of L^{>s}: the layers above s drawn from q, which reads the data
    through the posterior means of the layers below; layers 1..s set to the conditional
    prior's mean given the layer above, as the reference code of Havtorn et al. does."""
    sizes = model.sizes
    layers = q.layers()  # q(z_j | mean of z_{j-1}), layer order
    upper = GaussianChain(layers[s], q.steps[s:], sizes[s:])
    z_up, log_q = upper.rsample_with_log_prob(n, generator=ExampleNoise(idx, _key(seed, 2 + s), first))
    prior = model.prior()
    steps = prior.steps[::-1]  # layer order: steps[j] gives p(z_{j+1} | z_{j+2}), 0-based layers
    parts = [None] * s + list(z_up.split(sizes[s:], -1))
    for j in range(s - 1, -1, -1):
        parts[j] = steps[j](parts[j + 1]).mean
    z = torch.cat(parts, -1)
    log_p = prior.log_prob_levels(z)[s:].sum(0)
    return model.decode(z, c).log_prob(x) + log_p - log_q


@torch.inference_mode()
def score_batch(model, x: torch.Tensor, idx: torch.Tensor, c: torch.Tensor | None = None, k: int = 100,
                seed: int = 0, skip: tuple[int, ...] = (), shift: float = 0.0) -> dict[str, torch.Tensor]:
    """Every score of images x (B, C, H, W) with keys `idx` (B,) -> {column: (B,)}, from k
    samples per image in chunks that keep the decoder near `decode_rows` rows a call.
    `shift`: subtracted from log-densities (D log 256 for density likelihoods)."""
    q = model.encode(x, c)
    out = {"mse": _mse(model, q, x, c)}
    if not model.has_density:
        out["recon"] = model.decode(q.mean, c).log_prob(x) - shift
        return out
    hier = isinstance(q, GaussianChain)
    chunk = max(1, decode_rows(math.prod(x.shape[1:])) // len(x))
    prior = model.prior()
    acc: dict[str, torch.Tensor] = {}
    lse = {"w": None, **{f"s{s}": None for s in skip}}
    for j in range(0, k, chunk):
        n = min(chunk, k - j)
        z, log_q = q.rsample_with_log_prob(n, generator=ExampleNoise(idx, _key(seed, 1), j))
        log_pxz = model.decode(z, c).log_prob(x)
        if hier:
            kl_levels = q.log_prob_levels(z) - prior.log_prob_levels(z)  # (L, n, B)
            kl = kl_levels.sum(0)
            _add(acc, {f"kl_{i + 1}": v.sum(0) for i, v in enumerate(kl_levels)})
        else:
            kl = log_q - prior.log_prob(z)
        w = log_pxz - kl
        _add(acc, {"elbo": w.sum(0), "recon": log_pxz.sum(0), "kl": kl.sum(0)})
        lse["w"] = _logaddexp(lse["w"], torch.logsumexp(w, 0))
        for s in skip:
            ws = _skip_weights(model, x, c, q, n, s, idx, seed, j)
            lse[f"s{s}"] = _logaddexp(lse[f"s{s}"], torch.logsumexp(ws, 0))
    out.update({key: v / k for key, v in acc.items()})
    out["elbo"] -= shift
    out["recon"] -= shift
    log_k = math.log(k)
    out["log_px"] = lse["w"] - log_k - shift
    for s in skip:
        out[f"llr_{s}"] = out["log_px"] - (lse[f"s{s}"] - log_k - shift)
    out["bits_per_dim"] = -out["log_px"] / (math.prod(x.shape[1:]) * math.log(2))
    return out


def _key(seed: int, stream: int) -> int:
    """The noise key of one stream of one seed: 0 codes, 1 the samples, 2 + k the upper layers
    of L>k."""
    return seed * 256 + stream


def _add(acc: dict, new: dict) -> None:
    for key, v in new.items():
        acc[key] = v if key not in acc else acc[key] + v


def _logaddexp(a, b):
    return b if a is None else torch.logaddexp(a, b)


def _mse(model, q, x, c) -> torch.Tensor:
    recon = model.decode(q.mean, c).mean.clamp(0, 1)
    return (recon - x).square().flatten(1).mean(1)


def png_bits(u8: np.ndarray) -> np.ndarray:
    """Lossless PNG size in bits of each image (N, C, H, W) uint8 (Pillow, compression level 9)."""
    from PIL import Image

    out = np.empty(len(u8), dtype=np.float64)
    for i, im in enumerate(u8):
        arr = im[0] if im.shape[0] == 1 else np.ascontiguousarray(im.transpose(1, 2, 0))
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell()
    return out


def column_names(model, names: list[str], skip: tuple[int, ...]) -> list[str]:
    """The table's score columns for the chosen score names, in order."""
    cols = []
    for n in names:
        if n == "kl" and isinstance(model.prior(), GaussianChain):
            cols += ["kl", *(f"kl_{i + 1}" for i in range(len(model.sizes)))]
        elif n == "llr":
            cols += [f"llr_{s}" for s in skip]
        elif n == "complexity_corrected":
            cols += ["complexity_corrected", "png_bits"]
        else:
            cols.append(n)
    return cols


def _as_seen(inputs: SplitInputs, x: torch.Tensor, idx: torch.Tensor) -> np.ndarray:
    """uint8 images as the model sees them: binarised images as 0/255, grey levels as stored."""
    if inputs.binarization in ("dynamic", "fixed"):
        return (x * 255).round().to(torch.uint8).cpu().numpy()
    return read_rows(inputs.images, idx).cpu().numpy()


def _score_split(model, inputs: SplitInputs, cols: list[str], skip, k, seed, shift, dist: Dist,
                 bar) -> dict[str, np.ndarray]:
    """This split's score columns, computed in chunks by each process on its share, gathered."""
    dims = math.prod(model.image_shape)
    batch = max(1, decode_rows(dims) // min(k, decode_rows(dims))) if model.has_density else 256
    first, last = dist.shard(len(inputs))
    # filled in place: appending a small tensor per chunk would leave long-lived blocks between
    # each chunk's large freed ones, and the heap would grow with the number of images
    parts = {key: np.empty(last - first, dtype=np.float64) for key in cols}
    for i in range(first, last, batch):
        x, c, _ = inputs.rows(i, min(last, i + batch))
        idx = inputs.index(i, min(last, i + batch))
        got = score_batch(model, x, idx, c, k, seed, skip, shift)
        if "png_bits" in cols:
            bits = torch.from_numpy(png_bits(_as_seen(inputs, x, idx))).to(x.device)
            got["png_bits"] = bits
            got["complexity_corrected"] = complexity_corrected(got["log_px"], bits)
        for key in cols:
            parts[key][i - first : i - first + len(x)] = got[key].double().cpu().numpy()
        bar.update(len(x) * dist.world)
    return {key: dist.gather_rows(torch.from_numpy(v).to(inputs.device), len(inputs)).cpu().numpy()
            for key, v in parts.items()}


def _load(run, device: str):
    """(config, model) of a run folder, or of an already loaded (config, model) pair."""
    if isinstance(run, tuple):
        return run
    return load_run(getattr(run, "path", run), device)  # a folder, or a vaelab.Run


def _key_columns(data: Dataset, split: str, n: int) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"split": np.full(n, split), "index": np.arange(n)}
    names = file_names(data, split)
    if names is not None:
        cols["file"] = np.asarray(names[:n], dtype=str)
    if data.labelled:
        labels = getattr(data, split).labels[:n].numpy()
        cols["label"] = np.asarray([data.classes[v] if v >= 0 else "" for v in labels], dtype=str)
    return cols


def score(run, data=None, *, split: str = "auto", scores: list[str] | None = None, k: int = 100,
          skip_levels: tuple[int, ...] | None = None, n: int | None = None, seed: int = 0, device: str = "cpu",
          progress: bool = True) -> Table:
    """Score every image of `data` under the trained run `run` (a run folder) -> Table.

    `data`: a named dataset, an image folder or an .npy/.npz file, read as the run read its
    own data; None: the run's own data. `split`: test, train, all, or auto (the test split of
    the run's own data and of a named dataset, every image of a folder or array file).
    `scores`: names from SCORES (default:
    every score the model has). `k`: importance samples per image. `skip_levels`: the k of
    LLR>k for hierarchical models (default every level). `n`: the first n images of each split.
    Rows are keyed by split and index (and the file, for folders; the label where known);
    the same seed gives the same numbers for any chunking or number of processes.

    Example: ``vaelab.score("runs/mnist", "mnist", k=10).sorted("log_px").head()``
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    tune_malloc()
    dist, dev = distributed(device)
    progress = progress and dist.main
    cfg, model = _load(run, dev)
    model.eval()
    ds = scoring_data(cfg, data, model, progress)
    own = _held_out_only(data, cfg)
    names, skip = _chosen(model, scores, skip_levels)
    cols = column_names(model, names, skip)
    shift = density_shift(model)
    splits = _splits(ds, split, own)
    sizes = {s: len(getattr(ds, s)) if n is None else min(n, len(getattr(ds, s))) for s in splits}
    bar = progress_bar(total=sum(sizes.values()), desc=f"scoring (k={k})", show=progress, unit="img")
    parts = []
    for s in splits:
        inputs = model_inputs(model, cfg, getattr(ds, s).head(sizes[s]), len(ds.classes), dev, STREAM)
        got = _score_split(model, inputs, cols, skip, k, seed, shift, dist, bar)
        parts.append({**_key_columns(ds, s, sizes[s]), **got})
    bar.close()
    return _joined(parts, ds, {"run": str(getattr(run, "path", run)) if not isinstance(run, tuple) else "",
                               "data": ds.source, "dataset": ds.name, "split": "+".join(splits), "k": k,
                               "seed": seed, "binarization": cfg.data.binarization, "model": cfg.model.model})


def _joined(parts: list[dict[str, np.ndarray]], ds: Dataset, info: dict[str, Any]) -> Table:
    """One table from the columns of each split; every image of a folder in file-name order."""
    columns = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    table = Table(columns, info, ds)
    if "file" in columns and len(parts) > 1:
        table = table.take(np.argsort(columns["file"], kind="stable"))
    return table


def default_rank(columns: list[str]) -> str:
    """The score column to rank by when none is named: LLR at the lowest skip level, else
    log p(x), else the reconstruction error."""
    for name in ("llr_1", "log_px", "elbo", "mse"):
        if name in columns:
            return name
    return columns[0]


def ranked(columns: list[str]) -> list[str]:
    """The score columns that rank images (png_bits is a size of the image, not a score)."""
    return [c for c in columns if c != "png_bits"]


def density_shift(model) -> float:
    """What log-densities lose to be put on the discrete scale: D log 256 for a density
    likelihood over D values in [0, 1], 0 for a discrete one."""
    return 0.0 if model.likelihood.discrete else math.prod(model.image_shape) * math.log(256)


def complexity_corrected(log_px: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Serra et al. (2020)'s score: -log2 p(x) - L(x), L(x) the compressed size in bits; log p(x)
    (N,) in nats and L(x) (N,), tensors or arrays alike."""
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
    """A figure of the n most typical and n most unusual images by score `by` (default
    `default_rank`): two rows of n images (C, H, W) each.

    Example: ``top_figure(vaelab.score(run, "my_folder/"), 16, by="log_px")``
    """
    from vaelab.plots import image_rows

    by = by or default_rank(table.scores)
    typical, unusual = top_images(table, by, n)
    return image_rows([typical, unusual], ["most typical", "most unusual"],
                      f"{table.info.get('dataset', '')} ranked by {by}", inch=min(0.9, max(0.25, 14 / n)))


# ----------------------------------------------------------------------------- codes


@torch.inference_mode()
def _codes(model, x, c, idx, samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Posterior means and standard deviations (B, D) of images x, and `samples` codes (B, S, D)."""
    q = model.encode(x, c)
    if isinstance(q, GaussianChain):  # each layer at the mean of the layer below
        layers = q.layers()
        out = {"mean": torch.cat([g.mean for g in layers], -1), "std": torch.cat([g.std for g in layers], -1)}
    elif hasattr(q, "std"):
        out = {"mean": q.mean, "std": q.std}
    elif hasattr(q, "base"):  # flows: the base Gaussian's spread; the mean is pushed through the flows
        out = {"mean": q.mean, "std": q.base.std}
    else:  # an autoencoder's code
        out = {"mean": q.mean}
    if samples and "std" in out:
        out["samples"] = q.rsample(samples, generator=ExampleNoise(idx, _key(seed, 0))).transpose(0, 1)
    return out


def encode(run, data=None, *, split: str = "auto", samples: int = 0, n: int | None = None, seed: int = 0,
           device: str = "cpu", progress: bool = True) -> Table:
    """The codes of every image of `data` (as in `score`) -> Table with columns split, index,
    file (folders), label (labelled data), ``mean`` (N, D) and ``std`` (N, D) of q(z|x) (for
    hierarchical models every layer, z_1 first: ``info["levels"]`` gives the sizes; an
    autoencoder has its code as ``mean`` and no std), and with `samples` S, ``samples``
    (N, S, D) drawn from q(z|x) with noise tied to each image.

    Example: ``codes = vaelab.encode("runs/mnist", "mnist"); codes["mean"].shape``
    """
    if samples < 0:
        raise ConfigError(f"samples must be 0 or more, got {samples}")
    dist, dev = distributed(device)
    cfg, model = _load(run, dev)
    model.eval()
    if samples and not model.has_density:
        raise ConfigError(f"the {cfg.model.model} model has one code per image and no posterior to sample; drop --samples")
    ds = scoring_data(cfg, data, model, progress and dist.main)
    own = _held_out_only(data, cfg)
    splits = _splits(ds, split, own)
    parts = []
    bar = progress_bar(total=sum(len(getattr(ds, s)) for s in splits), desc="encoding", show=progress and dist.main,
                       unit="img")
    for s in splits:
        inputs = model_inputs(model, cfg, getattr(ds, s).head(n), len(ds.classes), dev, STREAM)
        first, last = dist.shard(len(inputs))
        keys = ["mean", "std", "samples"] if model.has_density else ["mean"]
        keys = keys if samples else keys[:2]
        width = {"mean": (model.latent_dim,), "std": (model.latent_dim,), "samples": (samples, model.latent_dim)}
        got = {key: np.empty((last - first, *width[key]), dtype=np.float32) for key in keys}  # filled in place
        for i in range(first, last, 1000):
            x, c, _ = inputs.rows(i, min(last, i + 1000))
            for key, v in _codes(model, x, c, inputs.index(i, min(last, i + 1000)), samples, seed).items():
                got[key][i - first : i - first + len(x)] = v.float().cpu().numpy()
            bar.update(len(x) * dist.world)
        cols = {key: dist.gather_rows(torch.from_numpy(got[key]).to(dev), len(inputs)).cpu().numpy() for key in keys}
        parts.append({**_key_columns(ds, s, len(inputs)), **cols})
    bar.close()
    return _joined(parts, ds, {"data": ds.source, "dataset": ds.name, "split": "+".join(splits),
                               "model": cfg.model.model, "levels": list(getattr(model, "sizes", (model.latent_dim,)))})


def write_codes(table: Table, path: str | Path) -> Path:
    """Codes as .npz (arrays as they are, plus ``levels``) or .parquet (one column per
    dimension: mean_0 ..., std_0 ...)."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return write_table(Table({**table.columns, "levels": np.asarray(table.info["levels"])}, table.info), path)
    if path.suffix.lower() != ".parquet":
        raise ConfigError(f"{path}: codes are written as .npz or .parquet (got {path.suffix or 'no suffix'})")
    flat: dict[str, np.ndarray] = {}
    for key, v in table.columns.items():
        if v.ndim == 1:
            flat[key] = v
        elif v.ndim == 2:
            flat.update({f"{key}_{d}": v[:, d] for d in range(v.shape[1])})
        else:
            flat.update({f"{key}_{s}_{d}": v[:, s, d] for s in range(v.shape[1]) for d in range(v.shape[2])})
    return write_table(Table(flat, table.info), path)


# ----------------------------------------------------------------------------- out-of-distribution detection

OOD_NOTE = ("No out-of-distribution data were used to train the model or to set any score: the model saw only "
            "its own training images, each score's direction (which way is unusual) is fixed by its definition, "
            "and the other data are only scored. (Whoever chose the model's settings should not have looked at "
            "these results to do it.)")


def detection(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    """AUROC, AUPRC and the false-positive rate at 80% and 95% true-positive rate of anomaly
    scores (larger = more unusual), with the out-of-distribution images as the positive class
    (scikit-learn; the FPR is the share of in-distribution images flagged at that threshold),
    and the number of images whose score was infinite or not a number."""
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


def typicality(train_nll: np.ndarray, inside: np.ndarray, outside: np.ndarray, sizes=(1, 2, 5, 10, 25),
               alpha: float = 0.99, resamples: int = 1000, seed: int = 0) -> list[dict[str, float]]:
    """The typicality test of Nalisnick et al. (2019b) for batches of M images: the statistic
    |mean of -log p(x) over the batch - H|, H the mean over training images; the threshold is
    the `alpha` quantile of the statistic over `resamples` batches drawn with replacement from
    the training images. For each M: the share of in- and out-of-distribution test batches
    (disjoint, in a seeded order) flagged, and the AUROC of the statistic."""
    rng = np.random.default_rng(seed)
    train_nll = train_nll[np.isfinite(train_nll)]
    h = float(train_nll.mean())
    rows = []
    for m in sizes:
        if m > min(len(inside), len(outside)):
            continue
        boot = np.abs(rng.choice(train_nll, (resamples, m)).mean(1) - h)
        eps = float(np.quantile(boot, alpha))
        stat = [np.abs(rng.permutation(v)[: len(v) // m * m].reshape(-1, m).mean(1) - h) for v in (inside, outside)]
        rows.append({"batch": m, "threshold": eps, "flagged_in": float((stat[0] > eps).mean()),
                     "flagged_out": float((stat[1] > eps).mean()), **{"auroc": detection(*stat)["auroc"]}})
    return rows


def ood(run, inside=None, outside=(), *, split: str = "auto", scores: list[str] | None = None, k: int = 100,
        skip_levels: tuple[int, ...] | None = None, n: int | None = None, train_n: int = 2000,
        batch_sizes=(1, 2, 5, 10, 25), seed: int = 0, device: str = "cpu", progress: bool = True,
        write: bool = True) -> dict[str, Any]:
    """Out-of-distribution detection with every score of the model -> a result dict; with
    `write`, RUN/ood.json, ood.md and ood.png (score histograms per set).

    `inside`: the in-distribution data (None: the run's own), scored on its test split;
    `outside`: one or more datasets scored on `split` (auto: a named dataset's test split,
    every image of a folder or array file). Per score and outside set: AUROC,
    AUPRC, FPR at 80% and 95% TPR (`detection`); and the batch typicality test on log p(x),
    whose mean is taken over `train_n` training images.

    Example: ``vaelab.ood("runs/fashion", outside=["mnist"])["results"]["mnist"]["llr_1"]``
    """
    if isinstance(outside, (str, Dataset)):
        outside = [outside]
    if not outside:
        raise ConfigError("give at least one out-of-distribution dataset (--out-of DATA)")
    dist, dev = distributed(device)
    loaded = _load(run, dev)
    common = {"scores": scores, "k": k, "skip_levels": skip_levels, "n": n, "seed": seed, "device": device,
              "progress": progress}
    tables = {"in": score(loaded, inside, split="test", **common)}
    for spec in outside:
        t = score(loaded, spec, split=split, **common)
        tables[_set_name(spec, tables)] = t
    result: dict[str, Any] = {"in": tables["in"].info, "out": {name: t.info for name, t in tables.items() if name != "in"},
                              "k": k, "n": n, "note": OOD_NOTE, "positive": "out-of-distribution", "results": {}}
    cols = ranked(tables["in"].scores)
    for name, t in tables.items():
        if name != "in":
            result["results"][name] = {c: detection(anomaly(c, tables["in"][c]), anomaly(c, t[c])) for c in cols}
    if "log_px" in cols:
        train = score(loaded, inside, split="train", scores=["log_px"], k=k, n=train_n, seed=seed, device=device,
                      progress=progress)
        result["typicality"] = {name: typicality(-train["log_px"], -tables["in"]["log_px"], -t["log_px"],
                                                 batch_sizes, seed=seed)
                                for name, t in tables.items() if name != "in"}
    result["best"] = {name: max(r, key=lambda c: r[c]["auroc"]) for name, r in result["results"].items()}
    if write and dist.main and not isinstance(run, tuple):
        write_ood(Path(getattr(run, "path", run)), result, tables)
    return result


def name_of(result: dict[str, Any]) -> str:
    """The first out-of-distribution set of an `ood` result."""
    return next(iter(result["results"]))


def _set_name(spec, taken: dict) -> str:
    name = spec.name if isinstance(spec, Dataset) else Path(str(spec)).name or str(spec)
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


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


def write_ood(folder: Path, result: dict[str, Any], tables: dict[str, Table]) -> None:
    """RUN/ood.json, ood.md and ood.png, each written atomically."""
    from vaelab.files import atomic_write, write_json
    from vaelab.plots import save_figure, score_histograms

    write_json(folder / "ood.json", result)
    atomic_write(folder / "ood.md", ood_markdown(result))
    shown = {f"{result['in']['dataset']} (in)" if name == "in" else name: t for name, t in tables.items()}
    fig = score_histograms({c: {name: t[c] for name, t in shown.items()} for c in result["results"][name_of(result)]},
                           f"scores of {result['in']['dataset']} (in) and other data")
    save_figure(fig, folder / "ood.png")
