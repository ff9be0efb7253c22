"""Named datasets (MNIST, Fashion-MNIST, the shipped MNIST sample, CIFAR-10) and the
types every data source produces.

A ``Dataset`` has two ``Split`` s whose images are uint8 (N, C, H, W), either a
tensor in memory or an ``ImageFile`` (rows of a raw file, read on demand: the
cache that ``vaelab.cache`` holds for the user's folders and arrays); labels are
int64 (N,), -1 where a dataset is unlabelled. ``vaelab.batches`` turns splits into
device batches.

Where the named datasets' files are looked for, in order (first hit wins):

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
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from vaelab.config import DataFacts, did_you_mean
from vaelab.files import file_mode

__all__ = ["load_dataset", "locate", "read_idx", "Dataset", "Split", "ImageFile", "DataError", "Factors"]


class DataError(RuntimeError):
    """Data could not be found or read; the message names the file and the fix.

    Examples:
        >>> from vaelab.data import DataError, load_dataset
        >>> try:
        ...     load_dataset("mnits")
        ... except DataError as e:
        ...     print(e)
        unknown dataset 'mnits'; choose one of: mnist, fashion-mnist, mnist-sample, cifar10; did you mean mnist?
    """


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    # idx: split -> (images file, labels file); cifar: split -> batch files inside the archive
    files: dict[str, tuple[str, ...]]
    md5: dict[str, str]  # official .gz file -> MD5
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...]
    classes: tuple[str, ...]
    attribution: str
    embedded: bool = False  # shipped inside the package
    kind: str = "idx"  # idx | cifar
    # a binary benchmark: modelled binarised by default, as the literature does (config.resolve)
    binary: bool = False


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
        binary=True,
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
        binary=True,
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
        binary=True,
    ),
    # the official "binary version" (Krizhevsky 2009): 5 training batches and 1 test batch
    # of 10,000 records, each 1 label byte + 3,072 bytes (1024 R, then G, then B, row-major)
    "cifar10": DatasetInfo(
        name="cifar10",
        files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        system_dirs=(),
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        attribution="CIFAR-10 by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton (Krizhevsky 2009)",
        kind="cifar",
    ),
}
CIFAR_ARCHIVE, CIFAR_DIR = "cifar-10-binary.tar.gz", "cifar-10-batches-bin"


# ----------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the format of the MNIST files), gzip-compressed or not, into an array.

    The format is a 4-byte magic number (0, 0, dtype code, ndim), ndim big-endian uint32
    dimensions, then the data. The file is checked against its header.

    Args:
        path: The ``.idx`` file, or its ``.gz``.

    Returns:
        numpy.ndarray: a read-only array of the header's shape and dtype, ``(N, H, W)`` uint8 for image
        files, ``(N,)`` for label files.

    Raises:
        DataError: The file cannot be read, is not IDX, or is truncated; the message names it.

    Examples:
        >>> from pathlib import Path
        >>> from vaelab.data import locate, read_idx
        >>> read_idx(locate("mnist-sample") / "t10k-images-idx3-ubyte.gz").shape
        (500, 28, 28)
        >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
        >>> _ = Path(tmp, "tiny-idx").write_bytes(header + bytes(range(6)))
        >>> read_idx(Path(tmp, "tiny-idx"))
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
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
    if info.kind == "cifar":
        inner = directory / CIFAR_DIR
        return (directory / CIFAR_ARCHIVE).is_file() or all(
            (inner / f).is_file() for batch in info.files.values() for f in batch)
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
                os.chmod(tmp, file_mode())  # mkstemp's 0600 -> what open() would give
                os.replace(tmp, dest)
                break
            except Exception as e:  # noqa: BLE001 - any failure means: try the next mirror
                errors.append(f"{mirror}{fname}: {e}")
                Path(tmp).unlink(missing_ok=True)
        else:
            raise DataError(f"download failed ({'; '.join(errors)})")


def locate(name: str, data_dir: str | Path | None = None, allow_download: bool = True) -> Path:
    """Find the folder holding a named dataset's files, downloading them if allowed.

    Looks in `data_dir` alone when it is given; otherwise in ``$VAELAB_DATA/<name>``, a
    system folder, then the user cache (``~/.cache/vaelab/<name>``), where a download goes.
    ``mnist-sample`` is shipped inside the package.

    Args:
        name: A named dataset: ``mnist``, ``fashion-mnist``, ``mnist-sample`` or ``cifar10``.
        data_dir: The only folder to look in; None searches the places above.
        allow_download: Fetch the official files (checksums verified) when none are found.

    Returns:
        The folder's path.

    Raises:
        DataError: The name is unknown, or the files are neither found nor downloaded; the
            message lists where it looked.

    Examples:
        >>> from vaelab.data import locate
        >>> for name in sorted(p.name for p in locate("mnist-sample").iterdir()):
        ...     print(name)
        t10k-images-idx3-ubyte.gz
        t10k-labels-idx1-ubyte.gz
        train-images-idx3-ubyte.gz
        train-labels-idx1-ubyte.gz
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}{did_you_mean(name, DATASETS)}")
    info = DATASETS[name]
    if info.embedded and data_dir is None:
        return Path(str(resources.files("vaelab") / "_data" / name))
    if data_dir is not None:
        # An explicit directory is the user's intent: no silent fallback elsewhere.
        if _complete(Path(data_dir), info):
            return Path(data_dir)
        wanted = (f"{CIFAR_ARCHIVE} or {CIFAR_DIR}/" if info.kind == "cifar"
                  else ", ".join(f for pair in info.files.values() for f in pair) + ", optionally .gz")
        raise DataError(f"the data folder {data_dir} (data_dir, --data-dir) does not hold {name}'s files ({wanted})")
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
    # the fix names only what every command takes: the variable and the cache, not a flag of train's
    raise DataError(
        f"{name} not found (looked in {', '.join(map(str, searched))}; {problem}); put "
        f"{'the four IDX files' if info.kind == 'idx' else 'the archive'} ({', '.join(info.md5)}) in "
        f"{cache_dir() / name}, or in DIR/{name} and set VAELAB_DATA=DIR"
        + (", or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else "")
    )


# ----------------------------------------------------------------------------- CIFAR-10


def _cifar_records(raw: bytes, where: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64), validated."""
    record = 1 + 3 * 32 * 32
    if len(raw) == 0 or len(raw) % record:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of {record}-byte CIFAR-10 records; "
                        "the file is truncated or not a CIFAR-10 binary batch - delete it so vaelab fetches a fresh copy")
    rows = np.frombuffer(raw, np.uint8).reshape(-1, record)
    labels = rows[:, 0].astype(np.int64)
    if labels.max() >= n_classes:
        raise DataError(f"{where}: label {labels.max()} outside 0..{n_classes - 1}; not a CIFAR-10 batch")
    return rows[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def read_cifar(directory: Path, info: DatasetInfo) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The CIFAR-10 splits from `directory`: the extracted batches, or straight from the archive."""
    inner, archive = directory / CIFAR_DIR, directory / CIFAR_ARCHIVE

    def splits(read) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`read(name)` -> (bytes, where) for each batch file; concatenated per split."""
        out = {}
        for split, names in info.files.items():
            parts = [_cifar_records(*read(f), len(info.classes)) for f in names]
            out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return out

    if all((inner / f).is_file() for batch in info.files.values() for f in batch):
        return splits(lambda f: ((inner / f).read_bytes(), str(inner / f)))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def member(f: str) -> tuple[bytes, str]:
                if f not in members:
                    raise DataError(f"{archive}: {f} is missing from the archive; delete it so vaelab "
                                    "fetches a fresh copy")
                return tar.extractfile(members[f]).read(), f"{archive}:{f}"

            return splits(member)
    except (OSError, EOFError, tarfile.TarError) as e:
        raise DataError(f"{archive}: cannot read the archive ({e}); delete it so vaelab fetches a fresh copy") from None


# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class ImageFile:
    """uint8 images (N, C, H, W) stored one after another in a raw file, read on demand.

    This is how a ``Split`` holds images too large for memory (the cache vaelab builds
    for folders and array files). Rows are read with positional reads, not a memory map, so
    streaming a file larger than memory does not grow the process's resident memory. The
    file is opened once (by ``open``, or at the first read) and kept open: a cache rebuilt
    meanwhile by another run replaces the name, not what this reader reads.

    Attributes:
        path: The raw file.
        shape: ``(N, C, H, W)``; N = -1 takes N from the file's size.

    Examples:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from vaelab.data import ImageFile
        >>> np.arange(48, dtype=np.uint8).tofile(Path(tmp, "rows.u8"))
        >>> f = ImageFile(Path(tmp, "rows.u8"), (-1, 1, 4, 4))
        >>> len(f), f.row_bytes, f.nbytes
        (3, 16, 48)
        >>> f.read([2, 0]).shape
        (2, 1, 4, 4)
        >>> f.load()[1, 0, 0].tolist()
        [16, 17, 18, 19]
    """

    path: Path
    shape: tuple[int, ...]
    _handle: dict = field(default_factory=dict, compare=False, repr=False)  # {"file": the open file}

    def open(self) -> ImageFile:
        """Open the file if it is not open yet (reads do this themselves).

        Returns:
            This reader, so that calls can be chained.
        """
        if "file" not in self._handle:
            self._handle["file"] = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open on purpose
        return self

    @property
    def row_bytes(self) -> int:
        """Bytes per image: C * H * W."""
        return int(np.prod(self.shape[1:]))

    def __len__(self) -> int:
        return self.shape[0] if self.shape[0] >= 0 else os.path.getsize(self.path) // self.row_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of all N images: N * C * H * W."""
        return len(self) * self.row_bytes

    def file_size(self) -> int:
        """Bytes in the file this reader reads (the version it opened)."""
        return os.fstat(self.open()._handle["file"].fileno()).st_size

    def head(self, n: int) -> ImageFile:
        """A reader of the first `n` images only (all of them if there are fewer).

        Args:
            n: The number of images to keep.

        Returns:
            An ImageFile of shape ``(min(n, N), C, H, W)`` sharing this one's open file.
        """
        return ImageFile(self.path, (min(n, len(self)), *self.shape[1:]), self._handle)

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Read the images at row indices `idx`, with one read per run of consecutive rows.

        Args:
            idx: Row indices ``(K,)``, in any order, repeats allowed.

        Returns:
            uint8 array ``(K, C, H, W)`` in the order of `idx`.

        Raises:
            DataError: The file is shorter than its shape says.
        """
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        out = np.empty((len(idx), self.row_bytes), np.uint8)
        rb = self.row_bytes
        fd = self.open()._handle["file"].fileno()
        starts = np.flatnonzero(np.diff(sorted_idx, prepend=-2) != 1)
        ends = np.append(starts[1:], len(sorted_idx))
        for a, b in zip(starts.tolist(), ends.tolist()):
            first = int(sorted_idx[a])
            count = int(sorted_idx[b - 1]) - first + 1
            buf = os.pread(fd, count * rb, first * rb)
            if len(buf) != count * rb:
                raise DataError(f"{self.path}: cache file is shorter than its manifest says; delete its "
                                "folder to rebuild the cache")
            block = np.frombuffer(buf, np.uint8).reshape(count, rb)
            out[order[a:b]] = block[sorted_idx[a:b] - first]
        return out.reshape(len(idx), *self.shape[1:])

    def load(self) -> torch.Tensor:
        """Read all the images into memory with one sequential read.

        Returns:
            uint8 tensor ``(N, C, H, W)``.

        Raises:
            DataError: The file is shorter than its shape says.
        """
        n = len(self)
        self.open()._handle["file"].seek(0)
        arr = np.fromfile(self._handle["file"], dtype=np.uint8, count=n * self.row_bytes)
        if arr.size != n * self.row_bytes:
            raise DataError(f"{self.path}: cache file is shorter than its manifest says; delete its folder to "
                            "rebuild the cache")
        return torch.from_numpy(arr.reshape(n, *self.shape[1:]))


def read_rows(images: torch.Tensor | ImageFile, idx: torch.Tensor) -> torch.Tensor:
    """uint8 rows `idx` (N,) of a split's images, held in memory (on its device) or in an
    image file (read into CPU memory)."""
    if torch.is_tensor(images):
        return images.index_select(0, idx.to(images.device))
    return torch.from_numpy(images.read(idx.cpu().numpy()))


@dataclass
class Split:
    """One split of a dataset (train or test): images, labels and optional conditions.

    Attributes:
        images: uint8 images ``(N, C, H, W)`` with pixels 0..255, a tensor in memory or an
            ``ImageFile`` read on demand.
        labels: int64 class labels ``(N,)``; -1 where the dataset is unlabelled. A numpy
            array is turned into a tensor.
        cond: float side information ``(N, C')`` for conditional models; None uses the
            one-hot labels.
        factors: int64 codes ``(N, F)`` of the ground-truth factors that made each image
            (the factor datasets, see ``vaelab.factors``); None for other data.

    Examples:
        >>> import torch
        >>> from vaelab.data import Split
        >>> s = Split(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 1, 2]))
        >>> len(s), s.in_memory, s.nbytes
        (4, True, 3136)
        >>> s.conditions(3).tolist()[1]
        [0.0, 1.0, 0.0]
        >>> len(s.head(2))
        2
    """

    images: torch.Tensor | ImageFile  # (N, C, H, W) uint8, in memory or in a raw file
    labels: torch.Tensor  # (N,) int64; -1: unlabelled
    cond: torch.Tensor | None = None  # (N, C') float side information; None: one-hot labels
    factors: torch.Tensor | None = None  # (N, F) int64 factor codes; None: no factors

    def __post_init__(self) -> None:
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64))
        if isinstance(self.factors, np.ndarray):
            self.factors = torch.from_numpy(np.ascontiguousarray(self.factors, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        """Whether the images are a tensor in memory (not an ``ImageFile``)."""
        return torch.is_tensor(self.images)

    @property
    def nbytes(self) -> int:
        """Bytes taken by the images ``(N, C, H, W)``, one per pixel value."""
        return self.images.nbytes if not self.in_memory else self.images.numel()

    def to(self, device: torch.device | str) -> Split:
        """A copy of the split in memory on `device`; an image file is read whole.

        Args:
            device: Where the tensors go, e.g. ``"cpu"`` or ``"cuda"``.

        Returns:
            A Split whose images, labels and conditions are tensors on `device`.
        """
        images = self.images if self.in_memory else self.images.load()
        return Split(images.to(device), self.labels.to(device), None if self.cond is None else self.cond.to(device),
                     self.factors)

    def head(self, n: int | None) -> Split:
        """The first `n` images with their labels and conditions.

        Args:
            n: The number to keep; None keeps the whole split.

        Returns:
            A Split of ``min(n, N)`` images (this one when `n` is None).
        """
        if n is None:
            return self
        return Split(self.images[:n] if self.in_memory else self.images.head(n), self.labels[:n],
                     None if self.cond is None else self.cond[:n], None if self.factors is None else self.factors[:n])

    def conditions(self, n_classes: int) -> torch.Tensor:
        """The condition vectors c a conditional model is given for these images.

        Args:
            n_classes: The number of classes K, the width of the one-hot labels.

        Returns:
            The side information ``(N, C')`` when the split has it, else the one-hot labels
            ``(N, K)``, float.
        """
        if self.cond is not None:
            return self.cond
        return torch.nn.functional.one_hot(self.labels, n_classes).float()


@dataclass(frozen=True)
class Factors:
    """The ground-truth factors of a factor dataset, and every image of its full grid.

    Image i of the grid shows factor codes ``np.unravel_index(i, sizes)``: the last factor
    varies fastest. ``Split.factors`` holds each split image's codes.

    Attributes:
        names: The factor names, e.g. ``("color", "shape", "scale", ...)``.
        values: Per factor, the value of each code: ``values[f][codes[:, f]]``.
        grid: A reader of the full grid's images (``read(rows)`` -> uint8 ``(K, C, H, W)``);
            None when only the images stored with the factors exist (an array file).

    Examples:
        >>> import numpy as np, torch
        >>> from vaelab.data import Factors
        >>> class Grid:  # any reader with read(rows) -> (K, C, H, W) uint8
        ...     def read(self, rows):
        ...         return np.asarray(rows, np.uint8).reshape(-1, 1, 1, 1)
        >>> f = Factors(("a", "b"), (np.array([0.0, 1.0]), np.array([10, 20, 30])), Grid())
        >>> f.sizes, f.index(torch.tensor([[1, 2], [0, 1]])).tolist()
        ((2, 3), [5, 1])
        >>> f.images(torch.tensor([[1, 2]])).flatten().tolist()
        [5]
    """

    names: tuple[str, ...]
    values: tuple[np.ndarray, ...]
    grid: object = field(compare=False, repr=False)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of values of each factor, ``(F,)``."""
        return tuple(len(v) for v in self.values)

    def index(self, codes: torch.Tensor | np.ndarray) -> np.ndarray:
        """The grid rows of factor codes.

        Args:
            codes: int codes ``(K, F)``.

        Returns:
            int64 rows ``(K,)``.
        """
        codes = np.asarray(codes, dtype=np.int64)
        return np.ravel_multi_index(tuple(codes.T), self.sizes).astype(np.int64)

    def images(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The images that factor codes make.

        Args:
            codes: int codes ``(K, F)``.

        Returns:
            uint8 images ``(K, C, H, W)``.

        Raises:
            DataError: The factors came with stored images only (an array file), which
                cannot show any chosen factor codes.
        """
        if self.grid is None:
            raise DataError("drawing images for chosen factors needs a factor dataset (dsprites, xyobject); "
                            "an array file's factors only label its own images")
        return torch.from_numpy(np.ascontiguousarray(self.grid.read(self.index(codes))))


@dataclass
class Dataset:
    """A dataset as vaelab trains on it: a train and a test ``Split`` of uint8 images.

    ``load_dataset`` makes one for a named dataset; folders and array files give the same
    type.

    Attributes:
        name: The dataset's name, or the folder or file it came from.
        train: The training split; images ``(N_train, C, H, W)``.
        test: The test split; images ``(N_test, C, H, W)``.
        classes: The class names, label i naming ``classes[i]``; ``()`` when unlabelled.
        source: Where the files were read from.
        fingerprint: A short hash that changes when the data change.
        skipped: Images left out as unreadable, each ``"name: reason"``.
        binary_benchmark: Whether this is a named binary benchmark (the MNIST family).
        cache: For an image folder or array file, its cache folder; ``""`` for a named dataset.
        factors: For a factor dataset, its factors' names and values and a reader of its
            whole grid (``Factors``); None otherwise.

    Examples:
        >>> from vaelab.data import load_dataset
        >>> data = load_dataset("mnist-sample")
        >>> data.image_shape, data.labelled, data.cond_dim
        ((1, 28, 28), True, 10)
        >>> data.classes[:3], data.binary_pixels()
        (('0', '1', '2'), False)
    """

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]  # () for an unlabelled dataset
    source: str  # where the files were read from
    fingerprint: str = ""  # changes when the data change
    skipped: tuple[str, ...] = field(default_factory=tuple)  # unreadable images left out, "name: reason"
    binary_benchmark: bool = False  # a named binary benchmark (DatasetInfo.binary)
    cache: str = ""  # an image folder's cache folder, whose manifest names each row's file
    factors: Factors | None = None  # a factor dataset's factors; the splits hold each image's codes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one image."""
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def binary_pixels(self, rows: int = 4096) -> bool:
        """Whether the first `rows` training images hold only the pixel values 0 and 255.

        Args:
            rows: How many training images to look at.

        Returns:
            True when every pixel looked at is 0 or 255.
        """
        n = min(rows, len(self.train))
        x = read_rows(self.train.images, torch.arange(n))
        return bool(((x == 0) | (x == 255)).all())

    def facts(self) -> DataFacts:
        """What the training recipe is chosen from.

        Returns:
            DataFacts: a ``vaelab.config.DataFacts``, the image shape ``(C, H, W)``, the number of
            training images and whether the data are binary.
        """
        return DataFacts(self.image_shape, len(self.train), self.binary_benchmark or self.binary_pixels())

    @property
    def labelled(self) -> bool:
        """Whether the images have class labels."""
        return len(self.classes) > 0

    @property
    def cond_dim(self) -> int:
        """The width C' of the condition vectors: the side information's, else the number of classes."""
        return len(self.classes) if self.train.cond is None else self.train.cond.shape[1]

    def require_factors(self, what: str) -> Factors:
        """The dataset's ``Factors``, or ``DataError`` when it has none.

        Args:
            what: What needs the factors, for the message (e.g. ``"the MIG metric"``).

        Returns:
            The dataset's factors.
        """
        if self.factors is None or self.test.factors is None:
            raise DataError(f"{what} needs ground-truth factors, but {self.name} has none; train on a factor "
                            "dataset (dsprites, xyobject) to measure disentanglement")
        return self.factors

    def require_labels(self, what: str) -> None:
        """Raise ``DataError`` unless the dataset is labelled.

        Args:
            what: What needs the labels, for the message (e.g. ``"the probe"``).
        """
        if not self.labelled:
            raise DataError(f"{what} needs class labels, but {self.source} is unlabelled; put the images in one "
                            "folder per class (or give 'labels' in the array file)")


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
            raise DataError(f"{path}: '{name}' must have shape ({len(split)}, C'), one row per image of the {name} "
                            f"split, got {arr.shape}")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{path}: the {name} conditions must be numbers, got {arr.dtype}")
        with np.errstate(over="ignore"):
            bad = ~np.isfinite(arr.astype(np.float32))  # as trained on: 1e39 is inf in float32
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise DataError(f"{path}: the {name} split's conditions are not finite in row {row} "
                            f"({arr[row][bad[row]][0]}); every condition must be a finite number")
    if train.shape[1] != test.shape[1]:
        raise DataError(f"{path}: 'train' and 'test' conditions differ in width ({train.shape[1]} vs {test.shape[1]})")
    tr = torch.from_numpy(train.astype(np.float32))
    te = torch.from_numpy(test.astype(np.float32))
    return Dataset(data.name, Split(data.train.images, data.train.labels, tr, data.train.factors),
                   Split(data.test.images, data.test.labels, te, data.test.factors), data.classes, data.source,
                   data.fingerprint, data.skipped, data.binary_benchmark, data.cache, data.factors)


def load_dataset(name: str, data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load a named dataset into memory as uint8 tensors, finding or downloading its files.

    Where the files are looked for is described under ``locate``. For folders of images
    and array files, train with their path as the dataset instead.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``mnist-sample`` (2,000 train and 500 test MNIST
            digits shipped with vaelab, no network needed) or ``cifar10``.
        data_dir: The only folder to look in; None searches the usual places.
        download: Fetch the official files (checksums verified) when they are not found.

    Returns:
        A ``Dataset`` whose splits hold images ``(N, C, H, W)`` uint8 with pixels 0..255
        and labels ``(N,)`` int64.

    Raises:
        DataError: The name is unknown, or the files are missing or damaged.

    Examples:
        >>> from vaelab.data import load_dataset
        >>> data = load_dataset("mnist-sample")
        >>> len(data.train), len(data.test), data.image_shape
        (2000, 500, (1, 28, 28))
        >>> data.train.images.dtype, data.train.labels[:5].tolist()
        (torch.uint8, [5, 0, 4, 1, 9])
    """
    directory = locate(name, data_dir, allow_download=download)
    info = DATASETS[name]
    if info.kind == "cifar":
        arrays = read_cifar(directory, info)
    else:
        arrays = {split: _load_pair(_find_in(directory, img), _find_in(directory, lab), len(info.classes))
                  for split, (img, lab) in info.files.items()}
    if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
        raise DataError(f"{directory}: train and test images differ in shape")
    h = hashlib.sha256()
    for split in ("train", "test"):
        for a in arrays[split]:
            h.update(np.ascontiguousarray(a).data)
    splits = {s: Split(torch.from_numpy(np.array(im)), torch.from_numpy(lab)) for s, (im, lab) in arrays.items()}
    return Dataset(name, splits["train"], splits["test"], info.classes, str(directory), h.hexdigest()[:16],
                   binary_benchmark=info.binary)
