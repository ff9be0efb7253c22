"""Datasets -> tensors.

Images are kept as one uint8 tensor (N, C, H, W) per split, labels as int64 (N,).
Batches are gathered from an index permutation on the training device: no per-item
Python, no DataLoader workers (MNIST fits in 50 MB).

Where files are looked for, in order (first hit wins):

1. an explicit ``data_dir`` (``--data-dir``), and only there if it is given;
2. ``$VAELAB_DATA/<name>``;
3. a system directory (Debian's ``dataset-fashion-mnist`` package for Fashion-MNIST);
4. the user cache, ``$XDG_CACHE_HOME/vaelab/<name>`` (default ``~/.cache/vaelab/<name>``);
5. a download of the official files, checked against their MD5 and written atomically
   into the user cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from vaelab.config import DataConfig


class DataError(RuntimeError):
    """Data could not be found or read; the message names the file and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    files: dict[str, tuple[str, str]]  # split -> (images file, labels file)
    md5: dict[str, str]  # official .gz file -> MD5
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...]
    classes: tuple[str, ...]
    attribution: str
    embedded: bool = False  # shipped inside the package


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        files=_MNIST_FILES,
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        system_dirs=(),
        classes=tuple(str(i) for i in range(10)),
        attribution="MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0",
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        files=_MNIST_FILES,
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        classes=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        attribution="Fashion-MNIST by Zalando Research, MIT licence",
    ),
    # 2,000 training and 500 test digits of MNIST shipped with vaelab, so that the demo
    # and the tests run without a network (see vaelab/_data/README.md).
    "mnist-sample": DatasetInfo(
        name="mnist-sample",
        files=_MNIST_FILES,
        md5={},
        mirrors=(),
        system_dirs=(),
        classes=tuple(str(i) for i in range(10)),
        attribution="first 2,000 train / 500 test images of MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0",
        embedded=True,
    ),
}


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into an array, validating it.

    The format is a 4-byte magic number (0, 0, dtype code, ndim), ndim big-endian
    uint32 dimensions, then the data. Anything that does not match raises
    :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); delete it so vaelab fetches a fresh copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: file {what}: header says shape {dims} ({expected} bytes of data), "
            f"found {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _load_pair(images_path: Path, labels_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; "
            "the image and label files are from different datasets or splits"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{labels_path}: labels outside 0..{n_classes - 1}")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------- finding files


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab"


def _find_in(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path, info: DatasetInfo) -> bool:
    return all(_find_in(directory, f) for pair in info.files.values() for f in pair)


def candidate_dirs(info: DatasetInfo, data_dir: str | Path | None) -> list[Path]:
    """Directories searched for `info`'s files, in look-up order."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get("VAELAB_DATA")
    if env:
        dirs.append(Path(env) / info.name)
    dirs += [Path(d) for d in info.system_dirs]
    dirs.append(cache_dir() / info.name)
    return dirs


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(info: DatasetInfo, target: Path, timeout: float = 30.0) -> None:
    """Fetch the official ``.gz`` files into `target`, verifying each MD5.

    Each file is written to a temporary name in `target` and renamed into place only
    after its checksum matches, so an interrupted download never leaves a bad file.
    """
    target.mkdir(parents=True, exist_ok=True)
    for fname, md5 in info.md5.items():
        dest = target / fname
        if dest.is_file() and _md5(dest) == md5:
            continue
        errors = []
        for mirror in info.mirrors:
            fd, tmp = tempfile.mkstemp(dir=target, prefix=fname + ".", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + fname, timeout=timeout) as r:
                    while chunk := r.read(1 << 20):
                        out.write(chunk)
                got = _md5(Path(tmp))
                if got != md5:
                    raise DataError(f"MD5 mismatch (got {got}, expected {md5})")
                os.replace(tmp, dest)
                break
            except Exception as e:  # noqa: BLE001 - any failure means: try the next mirror
                errors.append(f"{mirror}{fname}: {e}")
                Path(tmp).unlink(missing_ok=True)
        else:
            raise DataError("download failed:\n  " + "\n  ".join(errors))


def locate(name: str, data_dir: str | Path | None = None, allow_download: bool = True) -> Path:
    """Return the directory holding dataset `name`'s four files (see module docstring)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    info = DATASETS[name]
    if info.embedded and data_dir is None:
        return Path(str(resources.files("vaelab") / "_data" / name))
    if data_dir is not None:
        # An explicit directory is the user's intent: no silent fallback elsewhere.
        if _complete(Path(data_dir), info):
            return Path(data_dir)
        wanted = ", ".join(f for pair in info.files.values() for f in pair)
        raise DataError(f"--data-dir {data_dir} does not hold {name}'s files ({wanted}, optionally .gz)")
    searched = candidate_dirs(info, None)
    for d in searched:
        if _complete(d, info):
            return d
    problem = "downloads are disabled"
    if allow_download and info.mirrors:
        try:
            download(info, searched[-1])
            return searched[-1]
        except DataError as e:
            problem = str(e)
    raise DataError(
        f"{name} not found. Looked in: {', '.join(map(str, searched))}; {problem}.\n"
        f"Fix: put the four IDX files ({', '.join(info.md5)}) in one of those directories "
        f"or pass --data-dir DIR"
        + (", or `apt-get install dataset-fashion-mnist`" if name == "fashion-mnist" else "")
    )


# ----------------------------------------------------------------------------- tensors


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    cond: torch.Tensor | None = None  # (N, C') float side information; None: one-hot labels

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device),
                     None if self.cond is None else self.cond.to(device))

    def head(self, n: int | None) -> Split:
        if n is None:
            return self
        return Split(self.images[:n], self.labels[:n], None if self.cond is None else self.cond[:n])

    def conditions(self, n_classes: int) -> torch.Tensor:
        """The condition vectors c: user-supplied side information, or one-hot labels (N, n_classes)."""
        if self.cond is not None:
            return self.cond
        return torch.nn.functional.one_hot(self.labels, n_classes).float()


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    source: str  # where the files were read from

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    @property
    def cond_dim(self) -> int:
        return len(self.classes) if self.train.cond is None else self.train.cond.shape[1]


def attach_conditions(data: Dataset, path: str | Path) -> Dataset:
    """Replace the one-hot label conditions by user side information from an .npz file
    holding float arrays ``train`` (N_train, C') and ``test`` (N_test, C')."""
    path = Path(path)
    try:
        arrays = np.load(path, allow_pickle=False)
        train, test = arrays["train"], arrays["test"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: cannot read conditions ({e}); expected an .npz with arrays 'train' and 'test'") from None
    for name, arr, split in (("train", train, data.train), ("test", test, data.test)):
        if arr.ndim != 2 or len(arr) != len(split):
            raise DataError(f"{path}: '{name}' must have shape ({len(split)}, C'), got {arr.shape}")
    if train.shape[1] != test.shape[1]:
        raise DataError(f"{path}: 'train' and 'test' conditions differ in width ({train.shape[1]} vs {test.shape[1]})")
    tr = torch.from_numpy(train.astype(np.float32))
    te = torch.from_numpy(test.astype(np.float32))
    return Dataset(data.name, Split(data.train.images, data.train.labels, tr),
                   Split(data.test.images, data.test.labels, te), data.classes, data.source)


def load_configured(d: DataConfig) -> Dataset:
    """The dataset a config's data section names, with its custom conditions if it has any."""
    data = load_dataset(d.dataset, d.data_dir, d.download)
    return attach_conditions(data, d.conditions) if d.conditions else data


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load dataset `name` as uint8 tensors (see module docstring for where it looks)."""
    directory = locate(name, data_dir, allow_download=download)
    info = DATASETS[name]
    splits = {}
    for split, (img, lab) in info.files.items():
        images, labels = _load_pair(_find_in(directory, img), _find_in(directory, lab), len(info.classes))
        splits[split] = Split(torch.from_numpy(images.copy()), torch.from_numpy(labels))
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise DataError(f"{directory}: train and test images differ in shape")
    return Dataset(name, splits["train"], splits["test"], info.classes, str(directory))


# ----------------------------------------------------------------------------- binarisation


def binarize(images: torch.Tensor, mode: str, generator: torch.Generator | None = None,
             dequantize: bool = False) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1].

    ``dynamic`` and ``fixed`` draw x ~ Bernoulli(pixel / 255) with `generator` (the
    difference is only whether the caller draws again each time). ``none`` returns
    grey levels pixel / 255, or with `dequantize` (for density likelihoods) the
    uniformly dequantised (pixel + u) / 256, u ~ U(0, 1).
    """
    if mode == "none":
        if dequantize:
            u = torch.rand(images.shape, generator=generator, device=images.device)
            return images.float().add_(u).div_(256.0)
        return images.float().div_(255.0)
    if mode in ("dynamic", "fixed"):
        x = images.float().div_(255.0)
        u = torch.rand(x.shape, generator=generator, device=x.device)
        return (u < x).float()
    raise ValueError(f"unknown binarization {mode!r}; choose dynamic, fixed or none")


class Batches:
    """Mini-batches (x, labels, conditions or None) of one split, gathered on the split's
    device from a permutation.

    With ``binarization="fixed"`` the split is binarised once (seeded) and the same
    binary images are used every epoch; with ``dynamic`` each batch is re-sampled.
    """

    def __init__(self, split: Split, batch_size: int, binarization: str, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, dequantize: bool = False,
                 cond: torch.Tensor | None = None) -> None:
        self.split, self.batch_size = split, batch_size
        self.binarization, self.shuffle, self.drop_last = binarization, shuffle, drop_last
        self.dequantize = dequantize and binarization == "none"
        self.cond = cond  # (N, C') conditions to hand out with each batch, or None
        device = split.images.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        if binarization == "fixed":
            g = torch.Generator(device=device).manual_seed(seed + 1)
            self.x = binarize(split.images, "fixed", g)
        elif self.dequantize:
            self.x = split.images.float()  # 0..255; noise added per batch
        else:
            # Probabilities (or grey levels) kept as float once: 4 bytes/pixel, so a
            # batch is one index_select plus, for dynamic, one comparison with U(0,1).
            self.x = split.images.float().div_(255.0)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.split)
        device = self.x.device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=device)
        else:
            order = torch.arange(n, device=device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.x.index_select(0, idx)
            if self.binarization == "dynamic":
                x = (torch.rand(x.shape, generator=self.generator, device=device) < x).float()
            elif self.dequantize:
                x = x.add_(torch.rand(x.shape, generator=self.generator, device=device)).div_(256.0)
            c = None if self.cond is None else self.cond.index_select(0, idx)
            yield x, self.split.labels.index_select(0, idx), c


def eval_images(split: Split, binarization: str, seed: int = 0, dequantize: bool = False) -> torch.Tensor:
    """The test images as the model is evaluated on them: binarised once with `seed`
    for ``dynamic`` and ``fixed`` (a stochastic binarisation of the test set, as in
    Burda et al. 2016); grey levels for ``none``, dequantised once with `seed` if
    `dequantize`. Same seed -> same images."""
    g = torch.Generator(device=split.images.device).manual_seed(seed + 1)
    return binarize(split.images, "none" if binarization == "none" else "fixed", g, dequantize=dequantize)
