"""A config's data section -> the dataset it names: a named dataset, a factor dataset, an
image folder or an array file.

``load_configured`` is the data layer's one entry point, as training, evaluation, scoring and
the explorer read data; ``is_path`` tells a file or folder from a dataset's name, and
``distinct_names`` names several sources apart in printouts and file names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vaelab.arrays import load_array
from vaelab.config import DataConfig, background_rgb, did_you_mean
from vaelab.data import DATASETS, DataError, Dataset, Split, attach_conditions, load_dataset
from vaelab.factors import FACTOR_DATASETS, load_factor_dataset
from vaelab.images import Transform, convert_chunk, load_folder

__all__ = ["load_configured"]


def is_path(dataset: str) -> bool:
    """A dataset name that is a file or folder rather than a named dataset."""
    return dataset not in DATASETS and ("/" in dataset or os.sep in dataset or Path(dataset).exists()
                                        or dataset.endswith((".npy", ".npz")))


def distinct_names(sources: list[str]) -> list[str]:
    """Names that tell data sets apart in printouts, figures and file names: a named dataset's
    name; for a folder or array file, the shortest end of its path that no other source in
    `sources` ends with (``emoji-a/64`` and ``emoji-b/64``, not ``64`` twice). Sources that are
    the same path keep the same name."""
    paths = [None if not is_path(s) else Path(s).expanduser().resolve().parts for s in sources]
    names = []
    for i, (s, parts) in enumerate(zip(sources, paths)):
        if parts is None:
            names.append(s)
            continue
        others = [p for j, p in enumerate(paths) if j != i and p is not None and p != parts]
        plain = {sources[j] for j, p in enumerate(paths) if p is None}
        m = 1
        while m < len(parts) and ("/".join(parts[-m:]) in plain or any(p[-m:] == parts[-m:] for p in others)):
            m += 1
        names.append("/".join(parts[-m:]).lstrip("/") or str(s))
    return names


def load_configured(d: DataConfig, progress: bool = True, whole: bool = False) -> Dataset:
    """Load the dataset a config's data section names: a named dataset, an image folder or an array file.

    The data layer's one entry point, as training and evaluation read data: folders and
    array files go through ``load_folder`` and ``load_array`` with the section's
    image size, channels, background and test fraction; named datasets are resized,
    converted to the section's channels and laid on its background when it asks. The section's conditions file, if any, is attached.

    Args:
        d: The ``data`` section of a config (``vaelab.config.DataConfig``), e.g.
            ``run.config.data``.
        progress: Show progress bars while a cache is built.
        whole: The images are to be taken whole (scored or encoded, not trained on): a
            folder or array file may then have an empty train or test split.

    Returns:
        A ``vaelab.data.Dataset``; images (N, C, H, W) uint8.

    Raises:
        vaelab.data.DataError: No such named dataset, file or folder, or it cannot be read.

    Examples:
        >>> from vaelab.config import DataConfig
        >>> from vaelab.sources import load_configured
        >>> data = load_configured(DataConfig(dataset="mnist-sample"))
        >>> data.name, data.image_shape, len(data.train)
        ('mnist-sample', (1, 28, 28), 2000)
        >>> load_configured(DataConfig(dataset="mnist-smaple"))
        Traceback (most recent call last):
        ...
        vaelab.data.DataError: unknown dataset 'mnist-smaple': not a named dataset (...) and no ...; did you mean mnist-sample?
    """
    if d.subset and d.dataset not in FACTOR_DATASETS:
        raise DataError(f"--subset is for the factor datasets ({', '.join(FACTOR_DATASETS)}), not {d.dataset}; "
                        "leave it at 0")
    if d.dataset in FACTOR_DATASETS:
        if d.image_size or d.channels or d.conditions:
            raise DataError(f"{d.dataset} is drawn at its own size and channels, without side information; leave "
                            "--image-size, --channels and --conditions unset")
        return load_factor_dataset(d.dataset, d.data_dir, d.subset)
    if is_path(d.dataset):
        t = Transform(tuple(d.image_size) if d.image_size else None, d.channels, d.background, d.test_fraction)
        path = Path(d.dataset).expanduser()
        if not path.exists():
            raise DataError(f"{path} does not exist; give a named dataset ({', '.join(DATASETS)}), an image folder "
                            "or an .npy/.npz file")
        if path.is_dir():
            data = load_folder(path, t, skip_bad=d.skip_bad_images, progress=progress, whole=whole)
        elif path.suffix in (".npy", ".npz"):
            data = load_array(path, t, progress=progress, whole=whole)
        else:
            raise DataError(f"{path}: not an image folder or an .npy/.npz array file; give one of those or a named "
                            f"dataset ({', '.join(DATASETS)})")
    else:
        if d.dataset not in DATASETS:
            names = [*DATASETS, *FACTOR_DATASETS]
            raise DataError(f"unknown dataset {d.dataset!r}: not a named dataset ({', '.join(names)}) "
                            f"and no such file or folder{did_you_mean(d.dataset, names)}")
        data = load_dataset(d.dataset, d.data_dir, d.download)
        if d.image_size or d.channels:
            data = _reshape_named(data, d)
    return attach_conditions(data, d.conditions) if d.conditions else data


def _reshape_named(data: Dataset, d: DataConfig) -> Dataset:
    """--image-size / --channels applied to an in-memory named dataset."""
    c0, h0, w0 = data.image_shape
    shape = (d.channels or c0, *(d.image_size or (h0, w0)))
    out = []
    for split in (data.train, data.test):
        x = split.images.numpy()
        conv = np.concatenate([convert_chunk(x[i : i + 4096], shape, background_rgb(d.background))
                               for i in range(0, len(x), 4096)])
        out.append(Split(torch.from_numpy(conv), split.labels, factors=split.factors))
    return Dataset(data.name, out[0], out[1], data.classes, data.source,
                   f"{data.fingerprint}:{'x'.join(map(str, shape))}", data.skipped, data.binary_benchmark)
