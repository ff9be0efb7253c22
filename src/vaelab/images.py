"""The user's own folders of images -> a uint8 cache on disk, built once; decoding one image.

A **folder** of images in any format Pillow reads: ``train/`` and ``test/`` subfolders
define the splits; otherwise each file goes to the test split when a stable hash of its
relative path falls below ``test_fraction``, so adding files never moves existing ones.
Images inside class folders (``cats/a.png``) get the folder name as their label; a flat
folder is unlabelled.

Each image is decoded once (in parallel, with a progress bar), brought to one shape
(shorter side resized to fit, centre crop; alpha composited on a background colour;
grey or RGB) and written as a row of a raw uint8 file per split, ``train.u8`` and
``test.u8`` (N, C, H, W), next to ``manifest.json`` (files with sizes and mtimes, the
transform, labels) in ``$XDG_CACHE_HOME/vaelab/images/<hash of the path and the
transform>/`` (``vaelab.cache``). The cache is reused while the files are unchanged;
otherwise it is refreshed, re-decoding only files that are new or changed.

Array files (``.npy``/``.npz``) are read by ``vaelab.arrays``; a config's data section is
turned into its dataset by ``vaelab.sources.load_configured``.
"""
from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.cache import (
    CACHE_VERSION,
    building,
    cache_folder,
    cached,
    compact,
    copy_unchanged,
    finish,
    identity,
    read_manifest,
    reusable_rows,
)
from vaelab.config import background_rgb
from vaelab.data import DataError, Dataset
from vaelab.runtime import ProgressLine, cpu_budget, progress_bar, progress_lines

__all__ = ["load_folder", "Transform", "file_names", "decode", "from_pil", "scan", "image_extensions"]

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


def convert_chunk(x: np.ndarray, shape: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    """uint8 rows (n, C0, H0, W0) -> (n, *shape), as ``from_pil`` brings one image to shape: alpha
    composited, grey/RGB, resized + centre-cropped (array files, and named datasets resized)."""
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
    todo = copy_unchanged(target, shape, paths, reuse)
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
    manifest = read_manifest(Path(data.cache))
    if manifest is None:
        raise DataError(f"{data.cache}: the image cache's manifest is missing or damaged; load the folder again")
    return list(manifest["splits"][split]["files"]) if manifest.get("kind") == "folder" else None


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
    files, unreadable = _listing(root, skip_bad)
    folder = cache_folder(root, transform)
    spec = transform.to_json()
    listed = [list(f) for f in files]
    fingerprint, stamp = identity(listed, spec, skip_bad)
    if (found := cached(folder, stamp)) is not None:
        return found if whole else _both_splits(found, root, transform.test_fraction)
    old = read_manifest(folder)

    rels = [f[0] for f in files]
    splits_of, labels_of, classes = _layout(rels, transform.test_fraction)
    bad: dict[str, str] = dict(unreadable)
    shape, good = _resolve_shape(root, rels, transform, skip_bad, progress, bad)
    good_set = set(good)
    reuse = reusable_rows(old, spec, shape, listed, root, folder)
    with building(folder) as tmp:
        split_rels = {s: [r for r, sp in zip(rels, splits_of) if sp == s and r in good_set] for s in ("train", "test")}
        label_of = dict(zip(rels, labels_of))
        for split, v in split_rels.items():
            failed = _decode_into(tmp / f"{split}.u8", (len(v), *shape), [str(root / r) for r in v], reuse,
                                  transform.size, shape[0], background_rgb(transform.background),
                                  f"decoding {split}", progress)
            split_rels[split] = _drop_failed(tmp / f"{split}.u8", root, v, shape, failed, skip_bad, bad)
        if not whole:
            _both_splits_of(root, transform.test_fraction, len(split_rels["train"]), len(split_rels["test"]))
        manifest = {"version": CACHE_VERSION, "kind": "folder", "source": str(root), "transform": spec,
                    "skip_bad": skip_bad, "shape": list(shape), "classes": classes, "files": listed,
                    "bad": sorted([rel, why] for rel, why in bad.items()), "fingerprint": fingerprint,
                    "splits": {s: {"files": v, "labels": [label_of[r] for r in v]} for s, v in split_rels.items()}}
        return finish(tmp, folder, manifest, stamp)


def _listing(root: Path, skip_bad: bool) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """``scan`` of a folder to load, refusing a missing folder, one without image files, and
    (without `skip_bad`) one holding an entry that cannot be read."""
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
    return files, unreadable


def _drop_failed(raw: Path, root: Path, rels: list[str], shape: tuple[int, int, int], failed: dict[int, str],
                 skip_bad: bool, bad: dict[str, str]) -> list[str]:
    """The files of a split left once those that failed to decode (`failed`: row -> error) are
    out: each refused in one line without `skip_bad`, else noted in `bad` and its row removed
    from raw file `raw` (len(rels), *shape)."""
    for row, msg in sorted(failed.items()):
        if not skip_bad:
            raise DataError(f"{root / rels[row]}: cannot decode this image ({msg}); "
                            "remove it, or train with --skip-bad-images to leave such files out")
        bad[rels[row]] = msg
    if not failed:
        return rels
    kept = [i for i in range(len(rels)) if i not in failed]
    compact(raw, (len(rels), *shape), kept)
    return [rels[i] for i in kept]


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


