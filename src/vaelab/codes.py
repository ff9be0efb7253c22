"""The codes of a dataset's images under a trained run: means and standard deviations of the
posterior q(z|x), and codes drawn from it, as a table (``vaelab encode``).

The images are read as ``vaelab score`` reads them (the run's own data, a named dataset, a
folder or an array file); samples draw noise tied to (image, seed), so any chunking or number
of processes gives the same codes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.batches import SplitInputs, model_inputs
from vaelab.checkpoint import loaded, run_device
from vaelab.config import ConfigError
from vaelab.data import Dataset
from vaelab.distributions import GaussianChain
from vaelab.noise import ExampleNoise
from vaelab.options import EncodeOptions, options_of
from vaelab.runtime import Dist, ProgressLine, distributed, progress_bar, rebalance_threads
from vaelab.scores import (
    STREAM,
    Table,
    _flat,
    _key,
    check_split,
    check_table_path,
    data_names,
    joined,
    key_columns,
    scoring_data,
    splits_of,
    write_table,
)

__all__ = ["encode", "write_codes", "split_levels"]

CHUNK = 1000  # images per encoder call


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


def encode(run, data=None, options: EncodeOptions | None = None, *, progress: bool = True, **settings: Any) -> Table:
    """The posterior of every image of a dataset: means and standard deviations of q(z|x).

    Args:
        run: a run folder or a [Run][vaelab.api.Run].
        data: as in [score][vaelab.scores.score]; None: the run's own data.
        options: an [EncodeOptions][vaelab.options.EncodeOptions], or its fields as keywords:
        split: ``"auto"`` and ``"all"``: every image, training and test alike (the ``split``
            column says which is which); ``"test"`` or ``"train"``: that split only.
        samples: S > 0 also draws S codes per image from q(z|x), with noise tied to each image.
        n: only the first n images of each split.
        seed: the noise seed of the samples.
        device: ``"cpu"`` or ``"cuda"``; None: a loaded [Run][vaelab.api.Run]'s own device,
            else the CPU.
        progress: show a progress bar.
        convert: as in [score][vaelab.scores.score]: other data read at the model's size and
            channels.

    Returns:
        A [Table][vaelab.scores.Table] with ``split``, ``index``, ``file`` (folders), ``label``
        (labelled data: class names as text; their indices are
        ``[codes.data.classes.index(v) for v in codes["label"]]``), ``mean`` of shape (N, D) and
        ``std`` of shape (N, D) and, with samples, ``samples`` of shape (N, S, D). A hierarchical
        model's levels sit side by side, z_1 first (``info["levels"]`` gives their sizes and
        ``info["level_shapes"]`` their shapes, [split_levels][vaelab.codes.split_levels] cuts
        them apart): ``hvae``'s each given the mean of the level below, the ladder's each given
        the means of the levels above; with flows, ``std`` is the base Gaussian's; an
        autoencoder has its code as ``mean`` and no std.

    Examples:
        >>> codes = vaelab.encode(run, n=10, progress=False)   # the first 10 of each split
        >>> codes["mean"].shape, codes["std"].shape, sorted(set(codes["split"].tolist()))
        ((20, 2), (20, 2), ['test', 'train'])
        >>> list(codes.to_pandas().columns)
        ['split', 'index', 'label', 'mean_0', 'mean_1', 'std_0', 'std_1']
    """
    o = options_of(EncodeOptions, options, **settings)
    split, samples, n, seed, device, convert = o.split, o.samples, o.n, o.seed, o.device, o.convert
    if samples < 0:
        raise ConfigError(f"samples must be 0 or more, got {samples}")
    check_split(split)
    dist, dev = distributed(run_device(run, device))
    cfg, model = loaded(run, dev)
    model.eval()
    if samples and not model.has_density:
        raise ConfigError(f"the {cfg.model.model} model has one code per image and no posterior to sample; drop --samples")
    ds = scoring_data(cfg, data, model, progress and dist.main, convert=convert,
                      name=None if isinstance(data, Dataset) else data_names(cfg, [data])[0])
    splits = splits_of(ds, "all" if split == "auto" else split, False)
    show = progress and dist.main
    bar = progress_bar(total=sum(len(getattr(ds, s)) for s in splits), desc="encoding", show=show, unit="img")
    parts = []
    for s in splits:
        inputs = model_inputs(model, cfg, getattr(ds, s).head(n), len(ds.classes), dev, STREAM)
        line = ProgressLine(f"encoding {ds.name} {s}", len(inputs), show=show, bar=bar)
        parts.append({**key_columns(ds, s, len(inputs)), **_encode_split(model, inputs, samples, seed, dist, line)})
    bar.close()
    return joined(parts, ds, {"data": ds.source, "dataset": ds.name, "split": "+".join(splits),
                              "model": cfg.model.model, "levels": list(getattr(model, "sizes", (model.latent_dim,))),
                               "level_shapes": [list(s) for s in level_shapes(model)]})


def level_shapes(model) -> tuple[tuple[int, ...], ...]:
    """The shape of each latent level of `model`, z_1 first: (C, H, W) for a spatial level, (D,)
    for a vector; one (D,) for a model of one code."""
    return tuple(getattr(model, "level_shapes", None) or ((d,) for d in getattr(model, "sizes", (model.latent_dim,))))


def split_levels(codes: Table, key: str = "mean") -> list[np.ndarray]:
    """A code column of [encode][vaelab.codes.encode]'s table cut into its levels, each in its
    own shape, z_1 (next to the data) first.

    Args:
        codes: the table of codes (its ``info["level_shapes"]`` gives the levels' shapes).
        key: ``"mean"``, ``"std"`` or ``"samples"``.

    Returns:
        One array per level: (N, *shape) for ``mean`` and ``std``, (N, S, *shape) for
        ``samples``; a spatial level's shape is (C, H, W), a vector's (D,).

    Examples:
        >>> from vaelab.codes import split_levels
        >>> codes = vaelab.encode(run, split="test", n=5, progress=False)
        >>> codes.info["level_shapes"], [v.shape for v in split_levels(codes)]
        ([[2]], [(5, 2)])
    """
    shapes = [tuple(s) for s in codes.info["level_shapes"]]
    values = codes[key]
    cuts = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return [v.reshape(*v.shape[:-1], *s) for v, s in zip(np.split(values, cuts, axis=-1), shapes)]


def _encode_split(model, inputs: SplitInputs, samples: int, seed: int, dist: Dist, line) -> dict[str, np.ndarray]:
    """The code columns of one split (``mean``, ``std``, ``samples``), each process encoding its
    share in chunks, gathered in order."""
    first, last = dist.shard(len(inputs))
    keys = ["mean", "std", "samples"] if model.has_density else ["mean"]
    keys = keys if samples else keys[:2]
    width = {"mean": (model.latent_dim,), "std": (model.latent_dim,), "samples": (samples, model.latent_dim)}
    got = {key: np.empty((last - first, *width[key]), dtype=np.float32) for key in keys}  # filled in place
    for i in range(first, last, CHUNK):
        x, c, _ = inputs.rows(i, min(last, i + CHUNK))
        for key, v in _codes(model, x, c, inputs.index(i, min(last, i + CHUNK)), samples, seed).items():
            got[key][i - first : i - first + len(x)] = v.float().cpu().numpy()
        line.update(len(x) * dist.world)
        rebalance_threads()  # follow this process's share of the CPUs
    return {key: dist.gather_rows(torch.from_numpy(got[key]).to(inputs.device), len(inputs)).cpu().numpy()
            for key in keys}


CODE_FORMATS = (".npz", ".parquet")


def write_codes(table: Table, path: str | Path) -> Path:
    """Write codes from [encode][vaelab.codes.encode] as .npz (arrays as they are, plus
    ``levels``, the levels' sizes, and ``level_shapes``, their shapes written as ``--levels``
    takes them: ``"8x14x14"``, ``"16"``) or .parquet (one column per dimension: ``mean_0``, ...,
    ``std_0``, ...; the table's ``info``, levels and shapes included, in the file's metadata,
    which pandas reads back as ``frame.attrs``).

    Args:
        table: the codes.
        path: where, ending in .npz or .parquet.

    Returns:
        The path written.

    Examples:
        >>> import numpy as np
        >>> from vaelab.codes import write_codes
        >>> path = write_codes(vaelab.encode(run, split="test", n=5, progress=False), tmp + "/codes.npz")
        >>> np.load(path)["mean"].shape, np.load(path)["levels"].tolist(), np.load(path)["level_shapes"].tolist()
        ((5, 2), [2], ['2'])
    """
    path = Path(path)
    if check_table_path(path, CODE_FORMATS) == ".npz":
        shapes = np.asarray(["x".join(map(str, s)) for s in table.info.get("level_shapes", [])], dtype=str)
        return write_table(Table({**table.columns, "levels": np.asarray(table.info["levels"]), "level_shapes": shapes},
                                 table.info), path)
    return write_table(Table(_flat(table.columns), table.info), path)

