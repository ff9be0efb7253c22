"""The user's own images -> a uint8 cache on disk, built once.

Sources:

- a **folder** of images in any format Pillow reads. ``train/`` and ``test/``
  subfolders define the splits; otherwise each file goes to the test split when a
  stable hash of its relative path falls below ``test_fraction``, so adding files never
  moves existing ones. Images inside class folders (``cats/a.png``) get the folder name
  as their label; a flat folder is unlabelled.
- an **array file**: ``.npy`` (images only) or ``.npz`` with ``images`` [+ ``labels``],
  optionally ``train``/``test`` masks or index arrays over them, or ``train``/``test``
  image arrays [+ ``train_labels``/``test_labels``] (and an optional ``classes``). Images
  are uint8 or float in [0, 1], as N x H x W, N x H x W x C or N x C x H x W; read with
  ``allow_pickle=False``.

Each image is decoded once (in parallel, with a progress bar), brought to one shape
(shorter side resized to fit, centre crop; alpha composited on a background colour;
grey or RGB) and written as a row of a raw uint8 file per split, ``train.u8`` and
``test.u8`` (N, C, H, W), next to ``manifest.json`` (files with sizes and mtimes, the
transform, labels) in ``$XDG_CACHE_HOME/vaelab/images/<hash of the path and the
transform>/``. The cache is reused while the files are unchanged; otherwise it is
refreshed, re-decoding only files that are new or changed.

``load_configured`` is the data layer's one entry point: a config's data section ->
the named dataset, folder or array file it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.config import DataConfig, background_rgb, did_you_mean
from vaelab.data import (
    DATASETS,
    DataError,
    Dataset,
    Factors,
    ImageFile,
    Split,
    attach_conditions,
    cache_dir,
    load_dataset,
)
from vaelab.files import FileError, describe, dir_mode, swap_in, write_json
from vaelab.runtime import ProgressLine, cpu_budget, progress_bar, progress_lines

__all__ = ["load_folder", "load_array", "load_configured", "Transform", "file_names", "decode", "from_pil", "scan",
           "image_extensions"]

CACHE_VERSION = 1
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class Transform:
    """How every image of a folder or array file is brought to one shape, and how the split is made.

    Each image's shorter side is resized to fit `size` and the centre cropped; transparent
    pixels are laid on `background`; the result is grey or RGB. Part of the cache's key: each
    transform of a source has its own cache.

    Attributes:
        size: (H, W) to resize and centre-crop to, or None to keep the images' own size (then
            all must have the same).
        channels: 1 (grey), 3 (RGB) or 0 (grey when every image is grey, else RGB).
        background: The colour transparent pixels are laid on: ``"white"``, ``"black"``,
            ``"grey"`` or ``"#rrggbb"``.
        test_fraction: The share of the images held out for the test split, in [0, 1) (when
            the source does not give the splits itself).

    Examples:
        >>> from vaelab.images import Transform
        >>> t = Transform(size=(32, 32), channels=3, background="white", test_fraction=0.1)
        >>> t.to_json()
        {'size': [32, 32], 'channels': 3, 'background': 'white', 'test_fraction': 0.1}
    """

    size: tuple[int, int] | None
    channels: int
    background: str
    test_fraction: float

    def to_json(self) -> dict[str, Any]:
        """The transform as a JSON-ready dict (as the cache's manifest records it)."""
        return {"size": list(self.size) if self.size else None, "channels": self.channels,
                "background": self.background, "test_fraction": self.test_fraction}


def image_extensions() -> set[str]:
    """The file extensions of the images a folder may hold: those Pillow can open here.

    Returns:
        Lower-case extensions with the dot, e.g. ``".png"``.

    Examples:
        >>> from vaelab.images import image_extensions
        >>> {".png", ".jpg", ".gif"} <= image_extensions(), ".txt" in image_extensions()
        (True, False)
    """
    from PIL import Image

    Image.init()
    # registered_extensions() lists save-only formats too (.pdf, .palm): a folder's PDF is
    # not an image vaelab can read, so it is passed over like a .txt, not reported unreadable
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def in_test_split(key: str, fraction: float) -> bool:
    """Stable split: the first 8 bytes of BLAKE2b(key) as a fraction of 2^64, below `fraction`."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2.0**64 < fraction


# ----------------------------------------------------------------------------- decoding one image


def _to_rgb_or_grey(im, channels: int, background: tuple[int, int, int]):
    """A Pillow image in any mode -> mode 'L' (channels 1) or 'RGB' (channels 3)."""
    from PIL import Image

    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr / 257.0 if im.mode != "F" else arr * (255.0 if arr.max() <= 1.0 else 1.0)
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        im = Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def _resize_crop(im, size: tuple[int, int]):
    """Scale so the image covers (H, W) (shorter side fits), then take the centre."""
    from PIL import Image

    h, w = size
    scale = max(h / im.height, w / im.width)
    nw, nh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    if (nw, nh) != im.size:
        im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
    left, top = (nw - w) // 2, (nh - h) // 2
    return im.crop((left, top, left + w, top + h))


def decode(path: str | Path, size: tuple[int, int] | None, channels: int,
           background: tuple[int, int, int]) -> np.ndarray:
    """Read one image file as a uint8 array (C, H, W), as a folder's cache stores it.

    The first frame of animations and multi-page files; EXIF orientation applied, converted
    to grey or RGB, resized and centre-cropped as in ``from_pil``. JPEGs are decoded at a
    reduced scale when that still covers `size` (faster).

    Args:
        path: The image file, in any format Pillow reads.
        size: (H, W) to resize and centre-crop to, or None for the image's own size.
        channels: 1 (grey) or 3 (RGB).
        background: The (r, g, b) colour, 0..255, that transparent pixels are laid on.

    Returns:
        uint8 array (C, H, W) with pixels 0..255.

    Examples:
        >>> from PIL import Image
        >>> from vaelab.images import decode
        >>> Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp + "/red.png")   # 40 wide, 30 high
        >>> x = decode(tmp + "/red.png", None, 3, (0, 0, 0))
        >>> x.shape, x.dtype, x[:, 0, 0].tolist()
        ((3, 30, 40), dtype('uint8'), [255, 0, 0])
        >>> grey = decode(tmp + "/red.png", (16, 16), 1, (0, 0, 0))
        >>> grey.shape, int(grey[0, 0, 0])                                # luma of pure red
        ((1, 16, 16), 76)
    """
    from PIL import Image

    with Image.open(path) as im:
        if size is not None and im.format == "JPEG":
            # decode at the smallest 1/2^k scale still covering the target (libjpeg DCT scaling)
            scale = max(size[0] / im.height, size[1] / im.width)
            im.draft("L" if channels == 1 else "RGB", (int(im.width * scale) + 1, int(im.height * scale) + 1))
        im.load()
        return from_pil(im, size, channels, background)


def from_pil(im, size: tuple[int, int] | None, channels: int, background: tuple[int, int, int]) -> np.ndarray:
    """Turn an opened Pillow image into a uint8 array (C, H, W), as the cache stores images.

    EXIF orientation applied, converted to grey or RGB (transparency composited on
    `background`), resized so that it covers `size` and centre-cropped.

    Args:
        im: A ``PIL.Image.Image`` in any mode.
        size: (H, W) to resize and centre-crop to, or None for the image's own size.
        channels: 1 (grey) or 3 (RGB).
        background: The (r, g, b) colour, 0..255, that transparent pixels are laid on.

    Returns:
        uint8 array (C, H, W) with pixels 0..255.

    Examples:
        >>> from PIL import Image
        >>> from vaelab.images import from_pil
        >>> clear = Image.new("RGBA", (8, 6), (0, 0, 0, 0))           # fully transparent, 8 wide
        >>> x = from_pil(clear, None, 3, (255, 255, 255))
        >>> x.shape, x[:, 0, 0].tolist()                               # laid on white
        ((3, 6, 8), [255, 255, 255])
        >>> from_pil(clear, (4, 4), 1, (255, 255, 255)).shape
        (1, 4, 4)
    """
    if _rotated(im):  # camera photos: apply the EXIF orientation, as image viewers do
        from PIL import ImageOps

        im = ImageOps.exif_transpose(im)
    im = _to_rgb_or_grey(im, channels, background)
    if size is not None:
        im = _resize_crop(im, size)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _rotated(im) -> bool:
    """Whether the EXIF orientation tag asks for anything but the identity."""
    return im.format in ("JPEG", "TIFF", "WEBP", "PNG") and im.getexif().get(0x0112, 1) not in (1, None)


def _header(path: Path) -> tuple[int, int, bool]:
    """(height, width, is_grey) from the file's header, without decoding the pixels;
    height and width as displayed (after the EXIF orientation)."""
    from PIL import Image

    with Image.open(path) as im:
        if _rotated(im) and im.getexif().get(0x0112) in (5, 6, 7, 8):
            return im.width, im.height, im.mode in _GREY_MODES
        grey = im.mode in _GREY_MODES
        if im.mode in ("P", "PA"):
            pal = np.asarray(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
            grey = bool((pal[:, 0] == pal[:, 1]).all() and (pal[:, 1] == pal[:, 2]).all())
        return im.height, im.width, grey


# ----------------------------------------------------------------------------- parallel work


def _headers_chunk(paths: list[str]) -> list[tuple[int, int, bool] | str]:
    out: list[tuple[int, int, bool] | str] = []
    for p in paths:
        try:
            out.append(_header(Path(p)))
        except Exception as e:  # noqa: BLE001 - any failure means: this file is unreadable
            out.append(f"{type(e).__name__}: {e}")
    return out


def _decode_chunk(job: tuple[str, tuple[int, ...], list[tuple[int, str]], tuple | None, int, tuple]) -> list[
        tuple[int, str]]:
    """Decode files into rows of the raw uint8 file `target`; return (row, error) for failures."""
    target, shape, items, size, channels, background = job
    out = np.memmap(target, dtype=np.uint8, mode="r+", shape=tuple(shape))
    errors = []
    for row, path in items:
        try:
            arr = decode(path, size, channels, background)
            if arr.shape != tuple(shape[1:]):
                raise ValueError(f"decoded to shape {arr.shape[1]}x{arr.shape[2]}, expected "
                                 f"{shape[2]}x{shape[3]}; train with --image-size to resize every image")
            out[row] = arr
        except Exception as e:  # noqa: BLE001
            errors.append((row, f"{type(e).__name__}: {e}"))
    out.flush()
    del out
    return errors


def _worker_init() -> None:
    """A decoding worker ends with its parent, even one killed with SIGKILL (Linux: the
    parent-death signal), and takes SIGTERM and Ctrl-C as a plain process does rather than
    as the training process (whose handlers a forked worker would inherit) does."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before the signal was set
            os._exit(1)


def _parallel(fn, jobs: list, desc: str, total: int, sizes: list[int], progress: bool) -> list:
    """Run `fn` over `jobs` in worker processes (in-process for small work), in order, with a bar."""
    workers = min(len(jobs), cpu_budget())  # this process's share of the CPUs, not every core
    bar = progress_bar(total=total, desc=desc, unit="img", show=progress and total >= 500)
    if progress and total >= 500 and progress_lines():  # a log gets a first line, then progress lines
        print(f"{desc}: {total} images, {workers} worker process(es); later runs reuse the cache", flush=True)
    bar = ProgressLine(desc, total, show=progress and total >= 500, bar=bar)
    results = []
    try:
        if workers <= 1 or total < 256:
            for job, n in zip(jobs, sizes):
                results.append(fn(job))
                bar.update(n)
        else:
            # fork: workers start at once and need nothing but numpy and Pillow
            with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_worker_init) as pool:
                for r, n in zip(pool.map(fn, jobs), sizes):
                    results.append(r)
                    bar.update(n)
    finally:
        bar.close()
    return results


def _chunks(items: list, n: int = 64) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


# ----------------------------------------------------------------------------- folders


def shown(name: str) -> str:
    """A file name as it can be printed and written: bytes that are not UTF-8 as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def scan(root: Path) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """List the image files below a folder, and the entries with an image's name that cannot be read.

    Files are found by extension (``image_extensions``); hidden entries (names starting
    with ``.``) are skipped. Entries that cannot be read as an image file (a FIFO, a device, a
    broken link, a name that is not UTF-8, an entry that cannot be stat'ed) are reported,
    never opened (a FIFO would block a reader for good). Plain strings, not pathlib: listing
    50,000 files must take a fraction of a second.

    Args:
        root: The folder.

    Returns:
        tuple: (files, unreadable), files as sorted (relative path, size in bytes, mtime in ns),
        paths with ``/``; unreadable entries as sorted (printable relative path, why).

    Raises:
        vaelab.data.DataError: A folder cannot be listed.

    Examples:
        >>> import os
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vaelab.images import scan
        >>> for name in ("cats/a.png", "dogs/b.png", ".hidden.png"):
        ...     Path(tmp, "scanned", name).parent.mkdir(parents=True, exist_ok=True)
        ...     Image.new("L", (4, 4)).save(Path(tmp, "scanned", name))
        >>> Path(tmp, "scanned", "notes.txt").write_text("not an image")
        12
        >>> os.symlink("nowhere.png", Path(tmp, "scanned", "dogs", "gone.png"))   # a broken link
        >>> files, unreadable = scan(Path(tmp, "scanned"))
        >>> [f[0] for f in files]
        ['cats/a.png', 'dogs/b.png']
        >>> unreadable
        [('dogs/gone.png', 'not a regular file (a FIFO, a device or a broken link)')]
    """
    exts = image_extensions()
    found, unreadable = [], []
    stack = [(str(root), "")]
    while stack:
        d, prefix = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            raise DataError(f"cannot list {d}: {e.strerror}") from None
        for e in entries:
            name = e.name
            if name[0] == ".":
                continue
            if e.is_dir():
                stack.append((e.path, prefix + name + "/"))
            elif os.path.splitext(name)[1].lower() in exts:
                why = _unreadable(e, name)
                if why:
                    unreadable.append((shown(prefix + name), why))
                    continue
                st = e.stat()
                found.append((prefix + name, st.st_size, st.st_mtime_ns))
    found.sort()
    return found, sorted(unreadable)


def _unreadable(entry: os.DirEntry, name: str) -> str | None:
    """Why a directory entry with an image's name cannot be read as an image file, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8; rename it"
    try:
        if not entry.is_file():  # follows links: a broken link is not a file either
            return "not a regular file (a FIFO, a device or a broken link)"
        entry.stat()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None


def _layout(files: list[str], fraction: float) -> tuple[list[str], list[int | None], list[str]]:
    """Split and class name of each file (relative paths): (splits, label names or None, class names)."""
    top = {f.split("/", 1)[0] for f in files}
    by_folder = {"train", "test"} <= top and all(f.split("/", 1)[0] in ("train", "test") and "/" in f for f in files)
    splits, names = [], []
    for f in files:
        parts = f.split("/")
        if by_folder:
            splits.append(parts[0])
            parts = parts[1:]
        else:
            splits.append("test" if in_test_split(f, fraction) else "train")
        names.append(parts[0] if len(parts) > 1 else None)
    labelled = [n is not None for n in names]
    if any(labelled) and not all(labelled):
        loose = files[labelled.index(False)]
        raise DataError(f"{loose} sits beside class folders: put every image in a class folder "
                        "(labelled) or none (unlabelled)")
    classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    return splits, [index[n] if n is not None else None for n in names], classes


def _decode_into(target: Path, shape: tuple[int, ...], paths: list[str], reuse: dict[str, tuple[Path, int]],
                 size, channels: int, background: tuple[int, int, int], desc: str, progress: bool) -> dict[int, str]:
    """Write the images of `paths` as rows of raw uint8 file `target` (N, C, H, W): rows of
    unchanged files are copied from an old cache (`reuse`: path -> (raw file, row)), the
    rest decoded in parallel. Returns {row: error} for files that failed to decode."""
    if not paths:
        target.write_bytes(b"")
        return {}
    out = _new_raw(target, shape)
    todo, copies = [], {}  # copies: old raw file -> [(new row, old row)]
    for row, p in enumerate(paths):
        if p in reuse:
            raw, old_row = reuse[p]
            copies.setdefault(raw, []).append((row, old_row))
        else:
            todo.append((row, p))
    for raw, pairs in copies.items():  # one sorted read per chunk, not a file open per image
        old = ImageFile(raw, (-1, *shape[1:]))
        for chunk in _chunks(pairs, 4096):
            new_rows, old_rows = zip(*chunk)
            out[list(new_rows)] = old.read(np.array(old_rows))
    out.flush()
    del out
    jobs = [(str(target), shape, c, size, channels, background) for c in _chunks(todo)]
    results = _parallel(_decode_chunk, jobs, desc, len(todo), [len(j[2]) for j in jobs], progress)
    return {row: msg for errs in results for row, msg in errs}


def _resolve_shape(root: Path, rels: list[str], t: Transform, skip_bad: bool, progress: bool,
                   bad: dict[str, str]) -> tuple[tuple[int, int, int], list[str]]:
    """(C, H, W) of the cache and the files that can be used, reading headers only when needed."""
    if t.size is not None and t.channels:
        return (t.channels, *t.size), rels
    paths = [str(root / r) for r in rels]
    jobs = _chunks(paths, 256)
    heads = [h for chunk in _parallel(_headers_chunk, jobs, "reading headers", len(paths),
                                      [len(j) for j in jobs], progress) for h in chunk]
    good, dims, grey = [], set(), True
    for rel, h in zip(rels, heads):
        if isinstance(h, str):
            if not skip_bad:
                raise DataError(f"{root / rel}: cannot read this image ({h}); remove it, or train with "
                                "--skip-bad-images to leave such files out")
            bad[rel] = h
            continue
        good.append(rel)
        dims.add(h[:2])
        grey = grey and h[2]
    if not good:
        raise DataError(f"{root}: none of the {len(rels)} image files could be read")
    channels = t.channels or (1 if grey else 3)
    if t.size is not None:
        return (channels, *t.size), good
    if len(dims) > 1:
        a, b = sorted(dims)[:2]
        raise DataError(f"{root}: images differ in size ({a[0]}x{a[1]}, {b[0]}x{b[1]}, ...); "
                        "pass --image-size S or HxW to resize them all")
    return (channels, *dims.pop()), good


def _remove_dead_builds(folder: Path) -> None:
    """Remove the half-built caches of `folder` that processes killed during a build left
    (their folder names carry the builder's pid; a live builder's folder is left alone)."""
    for tmp in folder.parent.glob(f".{folder.name}-*-*"):
        pid = tmp.name[len(folder.name) + 2 :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _new_build(folder: Path) -> Path:
    """A temporary folder beside cache `folder` to build into (swapped in by _install)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(folder)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-{os.getpid()}-"))
        os.chmod(tmp, dir_mode())
        return tmp
    except OSError as e:
        raise FileError(describe(e, "cannot create the image cache") + "; or set XDG_CACHE_HOME to a "
                        "writable folder") from None


@contextmanager
def _building(folder: Path) -> Iterator[Path]:
    """A temporary folder to build cache `folder` in; removed afterwards whatever happens,
    and OS errors (a full disk) become one-line FileErrors."""
    tmp = _new_build(folder)
    try:
        yield tmp
    except OSError as e:
        raise FileError(describe(e, "cannot build the image cache") + "; or set XDG_CACHE_HOME to another "
                        "folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_raw(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A raw uint8 file of `shape` with its blocks reserved up front: a full disk is an
    ENOSPC error here, not a SIGBUS when a memory-mapped page is written later."""
    with open(path, "wb") as fh:
        n = int(np.prod(shape))
        if n:
            os.posix_fallocate(fh.fileno(), 0, n)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)


def _compact(path: Path, shape: tuple[int, ...], kept: list[int]) -> None:
    """Rewrite raw file `path` (shape) keeping rows `kept`, in chunks."""
    src = ImageFile(path, shape)
    tmp = path.with_suffix(".compact")
    with open(tmp, "wb") as out:
        for i in range(0, len(kept), 1024):
            out.write(src.read(np.asarray(kept[i : i + 1024])).tobytes())
    os.replace(tmp, path)


def _cache_folder(source: Path, transform: Transform) -> Path:
    """The cache of `source` under `transform`: one folder per (path, whole transform), so runs
    at different sizes never rebuild, or pull files from under, each other's cache."""
    key = json.dumps([str(source), transform.to_json()], sort_keys=True)
    return cache_dir() / "images" / hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()


def _read_manifest(folder: Path, name: str = "manifest.json") -> dict[str, Any] | None:
    try:
        m = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("version") == CACHE_VERSION else None


def _identity(listed: list, spec: dict[str, Any], skip_bad: bool) -> tuple[str, str]:
    """(fingerprint of the data: the file list with sizes and times, and the transform;
    stamp of the cache: the same plus the skip-bad-images choice), from one hash."""
    digest = hashlib.sha256(json.dumps([listed, spec], separators=(",", ":")).encode()).hexdigest()
    return digest[:16], f"{digest}:{int(skip_bad)}"


def _cached(folder: Path, stamp: str) -> Dataset | None:
    """The cached dataset if its index carries `stamp`: the fast path reads only index.json
    (shape, classes, labels), not the manifest with every file name."""
    index = _read_manifest(folder, "index.json")
    if index is None or index.get("stamp") != stamp or "factors" not in index:  # built before factors: rebuild
        return None
    return _dataset_from_cache(folder, index)


def _finish(tmp: Path, folder: Path, manifest: dict[str, Any], stamp: str) -> Dataset:
    """Write the manifest and the index of a built cache, swap it in, return its Dataset."""
    index = {k: v for k, v in manifest.items() if k not in ("files", "splits")}
    index.update(stamp=stamp, labels={s: manifest["splits"][s]["labels"] for s in ("train", "test")},
                 factors={s: manifest["splits"][s].get("factors") for s in ("train", "test")})
    write_json(tmp / "manifest.json", manifest, indent=None)
    write_json(tmp / "index.json", index, indent=None)
    swap_in(tmp, folder)
    return _dataset_from_cache(folder, index)


def _dataset_from_cache(folder: Path, m: dict[str, Any]) -> Dataset:
    shape = tuple(m["shape"])
    classes = tuple(m["classes"])
    splits = {}
    for split in ("train", "test"):
        listed = m["labels"][split]
        rows = len(listed)
        images = ImageFile(folder / f"{split}.u8", (rows, *shape)).open()  # this version, whatever comes later
        if images.file_size() != images.nbytes:
            raise DataError(f"{images.path}: cache file has the wrong size; delete {folder} to rebuild it")
        labels = np.asarray([-1 if v is None else v for v in listed], dtype=np.int64)
        codes = (m.get("factors") or {}).get(split)
        splits[split] = Split(images, labels, factors=None if codes is None else np.asarray(codes, np.int64))
    skipped = tuple(f"{rel}: {why}" for rel, why in m.get("bad", []))
    factors = None
    if splits["train"].factors is not None:
        top = np.maximum(splits["train"].factors.numpy().max(0), splits["test"].factors.numpy().max(0))
        factors = Factors(tuple(m["factor_names"]), tuple(np.arange(t + 1) for t in top.tolist()), None)
    return Dataset(Path(m["source"]).name, splits["train"], splits["test"], classes, m["source"],
                   fingerprint=m["fingerprint"], skipped=skipped, cache=str(folder), factors=factors)


def file_names(data: Dataset, split: str) -> list[str] | None:
    """The file each image of a folder's split came from, in the split's row order.

    Read from the cache's manifest: row i of ``data.train.images`` came from
    ``file_names(data, "train")[i]``.

    Args:
        data: A dataset, e.g. from ``load_folder``.
        split: ``"train"`` or ``"test"``.

    Returns:
        Paths relative to the folder, one per row; None for named datasets and array files.

    Raises:
        vaelab.data.DataError: The cache's manifest is missing or damaged.

    Examples:
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vaelab.data import load_dataset
        >>> from vaelab.images import Transform, file_names, load_folder
        >>> for name in ["a.png", "b.png", "c.png", "d.png"]:
        ...     Path(tmp, "flat").mkdir(exist_ok=True)
        ...     Image.new("L", (8, 8)).save(Path(tmp, "flat", name))
        >>> data = load_folder(tmp + "/flat", Transform(None, 0, "black", 0.5), progress=False)
        >>> sorted(file_names(data, "train") + file_names(data, "test"))
        ['a.png', 'b.png', 'c.png', 'd.png']
        >>> print(file_names(load_dataset("mnist-sample"), "train"))
        None
    """
    if not data.cache:
        return None
    manifest = _read_manifest(Path(data.cache))
    if manifest is None:
        raise DataError(f"{data.cache}: the image cache's manifest is missing or damaged; load the folder again")
    return list(manifest["splits"][split]["files"]) if manifest.get("kind") == "folder" else None


def _reusable_rows(old: dict[str, Any] | None, spec: dict[str, Any], shape: tuple[int, ...], listed: list,
                   root: Path, folder: Path) -> dict[str, tuple[Path, int]]:
    """Rows of unchanged files (same name, size and time) in an old cache with the same shape
    and transform: copied, not decoded again. path -> (raw file, row)."""
    reuse: dict[str, tuple[Path, int]] = {}
    if not (old and old["kind"] == "folder" and old["transform"] == spec and old["shape"] == list(shape)):
        return reuse
    then = {f[0]: f[1:] for f in old["files"]}
    now = {f[0]: f[1:] for f in listed}
    for split in ("train", "test"):
        for row, rel in enumerate(old["splits"][split]["files"]):
            if rel in now and then.get(rel) == now[rel]:
                reuse[str(root / rel)] = (folder / f"{split}.u8", row)
    return reuse


def load_folder(root: str | Path, transform: Transform, skip_bad: bool = False, progress: bool = True,
                whole: bool = False) -> Dataset:
    """Load a folder of images as a Dataset, through a uint8 cache on disk built once.

    ``train/`` and ``test/`` subfolders define the splits; otherwise each file goes to the
    test split when a stable hash of its relative path falls below ``test_fraction``. Images
    in class folders (``cats/a.png``) get the folder name as their label; a flat folder is
    unlabelled. Each transform of a folder has its own cache in
    ``$XDG_CACHE_HOME/vaelab/images/``, built here and reused while the files are unchanged;
    when files are added or changed it is refreshed, decoding only those files.

    Args:
        root: The folder.
        transform: How every image is brought to one shape and how the split is made.
        skip_bad: Leave out files that cannot be decoded (listed in ``Dataset.skipped``)
            instead of stopping.
        progress: Show progress bars for large folders.
        whole: The images are read to be taken whole (scored or encoded, not trained on): a
            split may then be empty.

    Returns:
        A ``vaelab.data.Dataset`` whose splits hold uint8 images (N, C, H, W) read on demand
        from the cache; labels (N,), -1 when unlabelled.

    Raises:
        vaelab.data.DataError: The folder is missing, holds no images, holds an unreadable
            image (without `skip_bad`), images of different sizes without ``transform.size``,
            or a split would be empty.
        vaelab.files.FileError: The cache cannot be written.

    Examples:
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from vaelab.images import Transform, load_folder
        >>> for i, name in enumerate(["cats/a.png", "cats/b.png", "cats/c.png", "dogs/a.png", "dogs/b.png"]):
        ...     Path(tmp, "pets", name).parent.mkdir(parents=True, exist_ok=True)
        ...     Image.new("L", (12, 10), 50 * i).save(Path(tmp, "pets", name))
        >>> t = Transform(size=(8, 8), channels=1, background="black", test_fraction=0.5)
        >>> data = load_folder(tmp + "/pets", t, progress=False)
        >>> data.classes, data.image_shape, len(data.train) + len(data.test)
        (('cats', 'dogs'), (1, 8, 8), 5)
        >>> data.train.to("cpu").images.dtype
        torch.uint8
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    files, unreadable = scan(root)
    if unreadable and not skip_bad:
        rel, why = unreadable[0]
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise DataError(f"{root / rel}: {why}{more}; remove it, or train with --skip-bad-images to leave such "
                        "files out")
    if not files:
        exts = ", ".join(sorted(e for e in image_extensions() if e in (".png", ".jpg", ".jpeg", ".bmp", ".gif",
                                                                       ".webp", ".tif", ".tiff")))
        raise DataError(f"{root} holds no image files ({exts}, ...)")
    folder = _cache_folder(root, transform)
    spec = transform.to_json()
    listed = [list(f) for f in files]
    fingerprint, stamp = _identity(listed, spec, skip_bad)
    if (cached := _cached(folder, stamp)) is not None:
        return cached if whole else _both_splits(cached, root, transform.test_fraction)
    old = _read_manifest(folder)

    rels = [f[0] for f in files]
    splits_of, labels_of, classes = _layout(rels, transform.test_fraction)
    bad: dict[str, str] = dict(unreadable)
    shape, good = _resolve_shape(root, rels, transform, skip_bad, progress, bad)
    good_set = set(good)
    reuse = _reusable_rows(old, spec, shape, listed, root, folder)
    with _building(folder) as tmp:
        split_rels = {s: [r for r, sp in zip(rels, splits_of) if sp == s and r in good_set] for s in ("train", "test")}
        label_of = dict(zip(rels, labels_of))
        failed: dict[str, dict[int, str]] = {}
        for split, v in split_rels.items():
            failed[split] = _decode_into(tmp / f"{split}.u8", (len(v), *shape), [str(root / r) for r in v], reuse,
                                         transform.size, shape[0], background_rgb(transform.background),
                                         f"decoding {split}", progress)
            for row, msg in sorted(failed[split].items()):
                if not skip_bad:
                    raise DataError(f"{root / v[row]}: cannot decode this image ({msg}); "
                                    "remove it, or train with --skip-bad-images to leave such files out")
                bad[v[row]] = msg
            if failed[split]:  # drop the rows of undecodable files
                kept = [i for i in range(len(v)) if i not in failed[split]]
                _compact(tmp / f"{split}.u8", (len(v), *shape), kept)
                split_rels[split] = [v[i] for i in kept]
        if not whole:
            _both_splits_of(root, transform.test_fraction, len(split_rels["train"]), len(split_rels["test"]))
        manifest = {"version": CACHE_VERSION, "kind": "folder", "source": str(root), "transform": spec,
                    "skip_bad": skip_bad, "shape": list(shape), "classes": classes, "files": listed,
                    "bad": sorted([rel, why] for rel, why in bad.items()),
                    "fingerprint": fingerprint, "splits": {}}
        for s, v in split_rels.items():
            manifest["splits"][s] = {"files": v, "labels": [label_of[r] for r in v]}
        return _finish(tmp, folder, manifest, stamp)


def _both_splits_of(root: Path, fraction: float, train: int, test: int) -> None:
    """Refuse a folder to train on whose train or test split is empty."""
    if not test:
        raise DataError(f"{root}: no image fell into the test split (test fraction {fraction} of {train + test} "
                        "images); "
                        "raise --test-fraction or make train/ and test/ folders")
    if not train:
        raise DataError(f"{root}: no training images; add images or lower --test-fraction")


def _both_splits(data: Dataset, root: Path, fraction: float) -> Dataset:
    _both_splits_of(root, fraction, len(data.train), len(data.test))
    return data


# ----------------------------------------------------------------------------- arrays


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


def _convert_chunk(x: np.ndarray, shape: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    """uint8 (n, C0, H0, W0) -> (n, *shape): alpha composited, grey/RGB, resized + centre-cropped."""
    c0 = x.shape[1]
    c, h, w = shape
    if c0 in (2, 4):  # composite the alpha channel on the background
        alpha = x[:, -1:].astype(np.float32) / 255
        colour = x[:, :-1].astype(np.float32)
        bg = np.asarray(background if c0 == 4 else [sum(background) / 3], np.float32)[None, :, None, None]
        x = np.rint(colour * alpha + bg * (1 - alpha)).astype(np.uint8)
        c0 -= 1
    if c == 1 and c0 == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        x = np.rint(x[:, 0] * 0.299 + x[:, 1] * 0.587 + x[:, 2] * 0.114).astype(np.uint8)[:, None]
    elif c == 3 and c0 == 1:
        x = np.repeat(x, 3, axis=1)
    if x.shape[2:] != (h, w):
        from PIL import Image

        out = np.empty((len(x), c, h, w), np.uint8)
        for i, img in enumerate(x):
            im = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
            arr = np.asarray(_resize_crop(im, (h, w)))
            out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        x = out
    return np.ascontiguousarray(x)


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
            images = z["images"]
            labels = z["labels"] if "labels" in keys else None
            if labels is not None:  # checked whole, so that a bad row is named by its row in the file
                _check_labels(path, labels, len(images), "'labels'")
            factors = z["factors"] if "factors" in keys else None
            if factors is not None:
                _check_factors(path, factors, len(images), "'factors'")
            if "train" in keys or "test" in keys:
                if not {"train", "test"} <= keys:
                    raise DataError(f"{path}: give both 'train' and 'test' selections over 'images', or neither")
                out, lab, fac = {}, {}, {}
                for s in ("train", "test"):
                    sel = z[s]
                    if sel.ndim != 1 or not (sel.dtype == bool or sel.dtype.kind in "iu"):
                        raise DataError(f"{path}: '{s}' must be a 1-D boolean mask or index array over 'images'")
                    if sel.dtype == bool and len(sel) != len(images):
                        raise DataError(f"{path}: mask '{s}' has {len(sel)} entries for {len(images)} images")
                    idx = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)
                    if len(idx) and (idx.min() < 0 or idx.max() >= len(images)):
                        raise DataError(f"{path}: '{s}' indexes outside the {len(images)} images")
                    out[s] = images[idx]
                    lab[s] = None if labels is None else labels[idx]
                    fac[s] = None if factors is None else factors[idx]
                return out, lab, classes, fac
            return {"all": images}, {"all": labels}, classes, {"all": factors}
        if {"train", "test"} <= keys:
            fac = {s: z[f"{s}_factors"] if f"{s}_factors" in keys else None for s in ("train", "test")}
            if (fac["train"] is None) != (fac["test"] is None):
                raise DataError(f"{path}: give both 'train_factors' and 'test_factors', or neither")
            for s in fac:
                if fac[s] is not None:
                    _check_factors(path, fac[s], len(z[s]), f"'{s}_factors'")
            return ({"train": z["train"], "test": z["test"]},
                    {s: z[f"{s}_labels"] if f"{s}_labels" in keys else None for s in ("train", "test")}, classes, fac)
        raise DataError(f"{path}: expected an array 'images' (or arrays 'train' and 'test'); found {sorted(keys)}")
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise DataError(f"{path}: cannot read this array file ({e})") from None


def _check_factors(path: Path, v: np.ndarray, n: int, what: str) -> None:
    """Refuse factor codes that are not one row of F integers >= 0 per image."""
    if v.ndim != 2 or len(v) != n:
        raise DataError(f"{path}: {what} must hold one row of factor codes per image, shape ({n}, F), got shape "
                        f"{v.shape}")
    if v.dtype.kind not in "iu" or (v.size and v.min() < 0):
        raise DataError(f"{path}: {what} must be integer codes 0, 1, 2, ... of each factor's values, got "
                        f"{v.dtype}{' with negative codes' if v.dtype.kind in 'iu' else ''}")


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
        >>> from vaelab.images import Transform, load_array
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
    folder = _cache_folder(path, transform)
    fingerprint, stamp = _identity(listed, spec, False)
    if (cached := _cached(folder, stamp)) is not None:
        if not whole:
            for s in ("train", "test"):
                _array_split_given(path, s, len(getattr(cached, s)))
        return cached

    arrays, labels, classes, factors = _array_sources(path)
    arrays = {k: _nchw(v, k if k != "all" else "images", path) for k, v in arrays.items()}
    rows: dict[str, np.ndarray | None] = {s: None for s in arrays}
    if "all" in arrays:  # a stable per-index split: appended rows never move earlier ones
        n = len(arrays["all"])
        test = np.array([in_test_split(f"{path.name}:{i}", transform.test_fraction) for i in range(n)], bool)
        rows = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}
        lab, fac = labels["all"], factors["all"]
        arrays = {s: arrays["all"] for s in rows}
        labels = {s: None if lab is None else lab[rows[s]] for s in rows}
        factors = {s: None if fac is None else fac[rows[s]] for s in rows}
    sizes = {s: len(arrays[s]) if rows[s] is None else len(rows[s]) for s in ("train", "test")}
    c0 = {v.shape[1] for v in arrays.values()}
    hw = {v.shape[2:] for v in arrays.values()}
    if len(c0) > 1 or (transform.size is None and len(hw) > 1):
        raise DataError(f"{path}: the train and test images differ in shape")
    channels = transform.channels or (1 if c0.pop() in (1, 2) else 3)
    shape = (channels, *(transform.size or hw.pop()))
    for s in ("train", "test"):
        if not whole:
            _array_split_given(path, s, sizes[s])
    if not sum(sizes.values()):
        raise DataError(f"{path} holds no images")
    classes = _array_classes(path, labels, sizes, classes)
    names = _factor_names(path, factors)
    bg = background_rgb(transform.background)
    with _building(folder) as tmp:
        total = sum(sizes.values())
        bar = ProgressLine(f"caching {path.name}", total, show=progress and total >= 5000,
                           bar=progress_bar(total=total, desc="caching arrays", unit="img",
                                            show=progress and total >= 5000))
        for s in ("train", "test"):
            src, sel = arrays[s], rows[s]
            if not sizes[s]:
                (tmp / f"{s}.u8").write_bytes(b"")
                continue
            out = _new_raw(tmp / f"{s}.u8", (sizes[s], *shape))
            for i in range(0, sizes[s], 1024):  # chunks: an .npy larger than memory stays on disk
                chunk = src[i : i + 1024] if sel is None else src[sel[i : i + 1024]]
                out[i : i + 1024] = _convert_chunk(_to_uint8(np.asarray(chunk), s, path), shape, bg)
                bar.update(min(1024, sizes[s] - i))
            out.flush()
            del out
        bar.close()
        manifest = {"version": CACHE_VERSION, "kind": "array", "source": str(path), "transform": spec,
                    "shape": list(shape), "classes": list(classes), "files": listed, "bad": [],
                    "fingerprint": fingerprint, "factor_names": list(names),
                    "splits": {s: {"labels": [None] * sizes[s] if labels[s] is None else labels[s].tolist(),
                                   "factors": None if factors[s] is None else factors[s].astype(np.int64).tolist()}
                               for s in ("train", "test")}}
        return _finish(tmp, folder, manifest, stamp)


def _array_split_given(path: Path, split: str, size: int) -> None:
    if size == 0:
        raise DataError(f"{path}: the {split} split is empty; add images, change --test-fraction or the "
                        "'train'/'test' arrays")


# ----------------------------------------------------------------------------- a config's dataset


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
        >>> from vaelab.images import load_configured
        >>> data = load_configured(DataConfig(dataset="mnist-sample"))
        >>> data.name, data.image_shape, len(data.train)
        ('mnist-sample', (1, 28, 28), 2000)
        >>> load_configured(DataConfig(dataset="mnist-smaple"))
        Traceback (most recent call last):
        ...
        vaelab.data.DataError: unknown dataset 'mnist-smaple': not a named dataset (...) and no ...; did you mean mnist-sample?
    """
    from vaelab.factors import FACTOR_DATASETS, load_factor_dataset  # lazy: the decoding workers import this module

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
    import torch  # not at the top: the cache's decoding workers import this module

    c0, h0, w0 = data.image_shape
    shape = (d.channels or c0, *(d.image_size or (h0, w0)))
    out = []
    for split in (data.train, data.test):
        x = split.images.numpy()
        conv = np.concatenate([_convert_chunk(x[i : i + 4096], shape, background_rgb(d.background))
                               for i in range(0, len(x), 4096)])
        out.append(Split(torch.from_numpy(conv), split.labels, factors=split.factors))
    return Dataset(data.name, out[0], out[1], data.classes, data.source,
                   f"{data.fingerprint}:{'x'.join(map(str, shape))}", data.skipped, data.binary_benchmark)
