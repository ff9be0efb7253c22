"""Array files -> a uint8 cache on disk, built once.

An ``.npy`` holds images only; an ``.npz`` holds ``images`` [+ ``labels``] [+ ``factors``],
optionally ``train``/``test`` masks or index arrays over them, or ``train``/``test`` image
arrays [+ ``train_labels``/``test_labels``] [+ ``train_factors``/``test_factors``], and an
optional ``classes`` and ``factor_names``. Images are uint8 or float in [0, 1], as N x H x W,
N x H x W x C or N x C x H x W; read with ``allow_pickle=False``. They are brought to one shape
as a folder's are (``vaelab.images``) and written, in chunks, to the cache of ``vaelab.cache``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vaelab.cache import CACHE_VERSION, building, cache_folder, cached, finish, identity, new_raw
from vaelab.config import background_rgb
from vaelab.data import DataError, Dataset
from vaelab.images import Transform, convert_chunk, in_test_split
from vaelab.runtime import ProgressLine, progress_bar

__all__ = ["load_array"]


def load_array(path: str | Path, transform: Transform, progress: bool = True, whole: bool = False) -> Dataset:
    """Load images from an .npy or .npz array file as a Dataset, through a uint8 cache on disk.

    ``.npy``: images only. ``.npz``: ``images`` [+ ``labels``] [+ ``factors``], optionally
    with ``train`` and ``test`` masks or index arrays over them; or ``train`` and ``test``
    image arrays [+ ``train_labels`` and ``test_labels``] [+ ``train_factors`` and
    ``test_factors``]; and optionally ``classes`` (names) and ``factor_names``. Factors are
    integer codes (N, F), one row per image, for the disentanglement metrics. Without
    given splits, each image goes to the test split by a stable hash of its index.

    Args:
        path: The ``.npy`` or ``.npz`` file, read with ``allow_pickle=False``. Images are
            uint8 or float in [0, 1], as (N, H, W), (N, H, W, C) or (N, C, H, W).
        transform: How every image is brought to one shape and how the split is made.
        progress: Show a progress bar for large files.
        whole: The images are read to be taken whole (scored or encoded, not trained on): a
            split may then be empty.

    Returns:
        A ``vaelab.data.Dataset`` whose splits hold uint8 images (N, C, H, W) read on demand
        from the cache.

    Raises:
        vaelab.data.DataError: The file is missing or unreadable, or its arrays do not fit
            together (the message says how).
        vaelab.files.FileError: The cache cannot be written.

    Examples:
        >>> import numpy as np
        >>> from vaelab.arrays import load_array
        >>> from vaelab.images import Transform
        >>> images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)   # (N, H, W)
        >>> np.savez(tmp + "/digits.npz", images=images, labels=np.arange(20) % 2)
        >>> data = load_array(tmp + "/digits.npz", Transform(None, 0, "black", 0.25), progress=False)
        >>> data.image_shape, data.classes, len(data.train) + len(data.test)
        ((1, 28, 28), ('0', '1'), 20)
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    st = path.stat()
    listed = [[path.name, st.st_size, st.st_mtime_ns]]
    spec = transform.to_json()
    folder = cache_folder(path, transform)
    fingerprint, stamp = identity(listed, spec, False)
    if (found := cached(folder, stamp)) is not None:
        if not whole:
            for s in ("train", "test"):
                _array_split_given(path, s, len(getattr(found, s)))
        return found

    arrays, labels, classes, factors = _array_sources(path)
    arrays = {k: _nchw(v, k if k != "all" else "images", path) for k, v in arrays.items()}
    rows: dict[str, np.ndarray | None] = {s: None for s in arrays}
    if "all" in arrays:  # a stable per-index split: appended rows never move earlier ones
        arrays, rows, labels, factors = _split_by_index(path, arrays["all"], labels["all"], factors["all"],
                                                        transform.test_fraction)
    picked = {s: (arrays[s], rows[s]) for s in ("train", "test")}
    sizes = {s: _size(*picked[s]) for s in picked}
    shape = _array_shape(path, arrays, transform)
    for s in ("train", "test"):
        if not whole:
            _array_split_given(path, s, sizes[s])
    if not sum(sizes.values()):
        raise DataError(f"{path} holds no images")
    classes = _array_classes(path, labels, sizes, classes)
    names = _factor_names(path, factors)
    bg = background_rgb(transform.background)
    with building(folder) as tmp:
        _write_splits(tmp, path, picked, shape, bg, progress)
        manifest = {"version": CACHE_VERSION, "kind": "array", "source": str(path), "transform": spec,
                    "shape": list(shape), "classes": list(classes), "files": listed, "bad": [],
                    "fingerprint": fingerprint, "factor_names": list(names),
                    "splits": {s: _split_record(labels[s], factors[s], sizes[s]) for s in ("train", "test")}}
        return finish(tmp, folder, manifest, stamp)


def _split_by_index(path: Path, images: np.ndarray, labels: np.ndarray | None, factors: np.ndarray | None,
                    fraction: float) -> tuple[dict, dict, dict, dict]:
    """The images of a file without given splits, split by a stable hash of each index:
    (images, rows, labels, factors), each per split, the images shared and picked by rows."""
    n = len(images)
    test = np.array([in_test_split(f"{path.name}:{i}", fraction) for i in range(n)], bool)
    rows = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}
    return ({s: images for s in rows}, rows, {s: None if labels is None else labels[rows[s]] for s in rows},
            {s: None if factors is None else factors[rows[s]] for s in rows})


def _size(images: np.ndarray, rows: np.ndarray | None) -> int:
    """The number of images a split holds: its rows of `images`, or all of them."""
    return len(images) if rows is None else len(rows)


def _array_shape(path: Path, arrays: dict[str, np.ndarray], transform: Transform) -> tuple[int, int, int]:
    """(C, H, W) of the cache of arrays (N, C0, H0, W0), after refusing splits of different shapes."""
    c0 = {v.shape[1] for v in arrays.values()}
    hw = {v.shape[2:] for v in arrays.values()}
    if len(c0) > 1 or (transform.size is None and len(hw) > 1):
        raise DataError(f"{path}: the train and test images differ in shape")
    channels = transform.channels or (1 if c0.pop() in (1, 2) else 3)
    return (channels, *(transform.size or hw.pop()))


def _write_splits(tmp: Path, path: Path, picked: dict[str, tuple[np.ndarray, np.ndarray | None]],
                  shape: tuple[int, int, int], background: tuple[int, int, int], progress: bool) -> None:
    """Write each split's images (its rows of an array, or all of it) as the raw uint8 file
    ``<split>.u8`` (N, *shape) in the cache being built in `tmp`, in chunks."""
    sizes = {s: _size(*picked[s]) for s in picked}
    total = sum(sizes.values())
    bar = ProgressLine(f"caching {path.name}", total, show=progress and total >= 5000,
                       bar=progress_bar(total=total, desc="caching arrays", unit="img",
                                        show=progress and total >= 5000))
    for s in ("train", "test"):
        (src, sel), n = picked[s], sizes[s]
        if not n:
            (tmp / f"{s}.u8").write_bytes(b"")
            continue
        out = new_raw(tmp / f"{s}.u8", (n, *shape))
        for i in range(0, n, 1024):  # chunks: an .npy larger than memory stays on disk
            chunk = src[i : i + 1024] if sel is None else src[sel[i : i + 1024]]
            out[i : i + 1024] = convert_chunk(_to_uint8(np.asarray(chunk), s, path), shape, background)
            bar.update(min(1024, n - i))
        out.flush()
        del out
    bar.close()


def _split_record(labels: np.ndarray | None, factors: np.ndarray | None, size: int) -> dict[str, Any]:
    """A split's entry in the cache's manifest: its labels (None each when unlabelled) and factor codes."""
    return {"labels": [None] * size if labels is None else labels.tolist(),
            "factors": None if factors is None else factors.astype(np.int64).tolist()}


def _array_split_given(path: Path, split: str, size: int) -> None:
    """Refuse an array file to train on whose `split` holds no image."""
    if size == 0:
        raise DataError(f"{path}: the {split} split is empty; add images, change --test-fraction or the "
                        "'train'/'test' arrays")


def _array_sources(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None], tuple[str, ...],
                                        dict[str, np.ndarray | None]]:
    """(images per split or {'all': ...}, labels per split, class names, factor codes per
    split) from an .npy/.npz file."""
    try:
        if path.suffix == ".npy":
            return {"all": np.load(path, mmap_mode="r", allow_pickle=False)}, {"all": None}, (), {"all": None}
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
        classes = tuple(str(c) for c in z["classes"]) if "classes" in keys else ()
        if "images" in keys:
            images, labels, factors = _from_images(path, z, keys)
        elif {"train", "test"} <= keys:
            images, labels, factors = _from_split_arrays(path, z, keys)
        else:
            raise DataError(f"{path}: expected an array 'images' (or arrays 'train' and 'test'); found {sorted(keys)}")
        return images, labels, classes, factors
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"{path}: cannot read this array file ({e})") from None


def _from_images(path: Path, z, keys: set[str]) -> tuple[dict, dict, dict]:
    """(images, labels, factors) per split, or as {'all': ...}, of an .npz holding 'images',
    with 'train' and 'test' selections over them or none."""
    images = z["images"]
    labels = z["labels"] if "labels" in keys else None
    if labels is not None:  # checked whole, so that a bad row is named by its row in the file
        _check_labels(path, labels, len(images), "'labels'")
    factors = z["factors"] if "factors" in keys else None
    if factors is not None:
        _check_factors(path, factors, len(images), "'factors'")
    if "train" not in keys and "test" not in keys:
        return {"all": images}, {"all": labels}, {"all": factors}
    if not {"train", "test"} <= keys:
        raise DataError(f"{path}: give both 'train' and 'test' selections over 'images', or neither")
    out, lab, fac = {}, {}, {}
    for s in ("train", "test"):
        idx = _selection(path, z[s], s, len(images))
        out[s] = images[idx]
        lab[s] = None if labels is None else labels[idx]
        fac[s] = None if factors is None else factors[idx]
    return out, lab, fac


def _selection(path: Path, sel: np.ndarray, split: str, n: int) -> np.ndarray:
    """The indices (K,) into the `n` images that an .npz's mask or index array `split` picks."""
    if sel.ndim != 1 or not (sel.dtype == bool or sel.dtype.kind in "iu"):
        raise DataError(f"{path}: '{split}' must be a 1-D boolean mask or index array over 'images'")
    if sel.dtype == bool and len(sel) != n:
        raise DataError(f"{path}: mask '{split}' has {len(sel)} entries for {n} images")
    idx = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"{path}: '{split}' indexes outside the {n} images")
    return idx


def _from_split_arrays(path: Path, z, keys: set[str]) -> tuple[dict, dict, dict]:
    """(images, labels, factors) per split of an .npz holding 'train' and 'test' image arrays."""
    fac = {s: z[f"{s}_factors"] if f"{s}_factors" in keys else None for s in ("train", "test")}
    if (fac["train"] is None) != (fac["test"] is None):
        raise DataError(f"{path}: give both 'train_factors' and 'test_factors', or neither")
    for s in fac:
        if fac[s] is not None:
            _check_factors(path, fac[s], len(z[s]), f"'{s}_factors'")
    return ({"train": z["train"], "test": z["test"]},
            {s: z[f"{s}_labels"] if f"{s}_labels" in keys else None for s in ("train", "test")}, fac)


def _nchw(arr: np.ndarray, name: str, path: Path) -> np.ndarray:
    """N x H x W, N x H x W x C or N x C x H x W -> a view (N, C, H, W)."""
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[-1] in (1, 2, 3, 4) and arr.shape[1] not in (1, 2, 3, 4):
            return arr.transpose(0, 3, 1, 2)
        if arr.shape[1] in (1, 2, 3, 4):
            return arr
        if arr.shape[-1] in (1, 2, 3, 4):
            return arr.transpose(0, 3, 1, 2)
    raise DataError(f"{path}: '{name}' has shape {arr.shape}; expected images as N x H x W, N x H x W x C "
                    "or N x C x H x W with C in 1 (grey), 2 (grey+alpha), 3 (RGB), 4 (RGBA)")


def _to_uint8(chunk: np.ndarray, name: str, path: Path) -> np.ndarray:
    if chunk.dtype == np.uint8:
        return chunk
    if chunk.dtype.kind == "f":
        if not np.isfinite(chunk).all() or chunk.min(initial=0) < 0 or chunk.max(initial=0) > 1:
            raise DataError(f"{path}: float images in '{name}' must lie in [0, 1] (found values outside, or NaN)")
        return np.rint(chunk * 255).astype(np.uint8)
    if chunk.dtype.kind in "iu" and chunk.min(initial=0) >= 0 and chunk.max(initial=0) <= 255:
        return chunk.astype(np.uint8)
    raise DataError(f"{path}: '{name}' must hold uint8 images (0..255) or floats in [0, 1], got {chunk.dtype}")


def _check_labels(path: Path, v: np.ndarray, n: int, what: str) -> None:
    """Refuse labels (n,) that are not one integer >= 0 per image, naming the first bad row."""
    if v.ndim != 1 or len(v) != n:
        vector = "; a vector per image is side information: give it to cvae/icvae/censored with --conditions " \
                 "FILE.npz (arrays 'train' and 'test')" if v.ndim == 2 and len(v) == n else ""
        raise DataError(f"{path}: {what} must hold one integer per image ({n}), got {v.dtype} of shape {v.shape}"
                        f"{vector}")
    if v.dtype.kind not in "iu":
        bad = np.flatnonzero(~np.isfinite(v) | (v != np.round(v))) if v.dtype.kind == "f" else ()
        shown = f"; row {bad[0]} is {v[bad[0]]}" if len(bad) else ""
        raise DataError(f"{path}: {what} must be integers >= 0, got {v.dtype}{shown}; save them as integers")
    if len(v) and v.min() < 0:
        row = int(np.argmax(v < 0))
        raise DataError(f"{path}: {what} must be integers >= 0; row {row} is {v[row]}")


def _check_factors(path: Path, v: np.ndarray, n: int, what: str) -> None:
    """Refuse factor codes that are not one row of F integers >= 0 per image."""
    if v.ndim != 2 or len(v) != n:
        raise DataError(f"{path}: {what} must hold one row of factor codes per image, shape ({n}, F), got shape "
                        f"{v.shape}")
    if v.dtype.kind not in "iu" or (v.size and v.min() < 0):
        raise DataError(f"{path}: {what} must be integer codes 0, 1, 2, ... of each factor's values, got "
                        f"{v.dtype}{' with negative codes' if v.dtype.kind in 'iu' else ''}")


def _array_classes(path: Path, labels: dict, sizes: dict[str, int], classes: tuple) -> tuple:
    """The class names of an array file's labels, after checking the labels of both splits."""
    label_sets = [v for v in labels.values() if v is not None]
    if label_sets and len(label_sets) != 2:
        raise DataError(f"{path}: labels are given for one split only; give them for both or neither")
    n_classes = 0
    for s, v in labels.items():
        if v is None:
            continue
        _check_labels(path, v, sizes[s], f"labels of the {s} split")
        n_classes = max(n_classes, int(v.max()) + 1 if len(v) else 0)
    if not label_sets:
        return ()
    if classes and len(classes) < n_classes:
        raise DataError(f"{path}: 'classes' names {len(classes)} classes but labels go up to {n_classes - 1}")
    return classes or tuple(str(i) for i in range(n_classes))


def _factor_names(path: Path, factors: dict[str, np.ndarray | None]) -> tuple[str, ...]:
    """The names of an array file's factors: its 'factor_names', else factor0, factor1, ..."""
    if factors["train"] is None:
        return ()
    width = {v.shape[1] for v in factors.values()}
    if len(width) > 1:
        raise DataError(f"{path}: the train and test factors differ in width ({' vs '.join(map(str, sorted(width)))})")
    f = width.pop()
    try:
        z = np.load(path, allow_pickle=False)
        names = tuple(str(n) for n in z["factor_names"]) if "factor_names" in z.files else ()
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read 'factor_names' ({e})") from None
    if names and len(names) != f:
        raise DataError(f"{path}: 'factor_names' names {len(names)} factors, but the codes have {f} columns")
    return names or tuple(f"factor{i}" for i in range(f))
