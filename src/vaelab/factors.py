"""Factor datasets, generated offline: every image made from known ground-truth factors.

``dsprites`` is dSprites (Matthey et al. 2017) as published: 3 shapes (square, ellipse,
heart) x 6 scales in [0.5, 1] x 40 orientations in [0, 2 pi] x 32 x 32 positions in
[0, 1], 737,280 binary 64x64 images, in the published factor order (color, shape, scale,
orientation, posX, posY; posY varies fastest). ``xyobject`` is a colour variant after
disent's XYObject: a square of 4 sizes and 6 colours at 16 x 16 positions on black,
6,144 RGB 64x64 images (factors x, y, scale, color).

Nothing is downloaded: the images are drawn analytically (each pixel centre tested against
the shape's implicit function), one shape x scale x orientation at a time, then shifted
to every position. They are written once into the user cache
(``~/.cache/vaelab/<name>``, or ``--data-dir``) with a manifest, atomically, and read
through a memory map: dSprites bit-packed (8 pixels a byte, 377 MB), XYObject as uint8.

Splits: the disentanglement protocol trains on all the images. ``train`` holds them all
(or a random ``subset`` of them, the same for every run); ``test`` is a fixed random
10,000 of the training images (all of them when there are fewer): not held out, it is
the sample the test ELBO and the disentanglement metrics are computed on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vaelab.config import did_you_mean
from vaelab.data import DataError, Dataset, Factors, Split, cache_dir
from vaelab.files import atomic_path, ensure_dir, write_json

__all__ = ["FACTOR_DATASETS", "load_factor_dataset", "GridImages", "render_dsprites"]

GENERATOR_VERSION = 1  # bump when a drawing changes: caches of older versions are redrawn
TEST_SIZE = 10_000


@dataclass(frozen=True)
class FactorSpec:
    name: str
    factor_names: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    image_shape: tuple[int, int, int]
    packed: bool  # binary images stored 8 pixels a byte
    attribution: str

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)

    @property
    def n(self) -> int:
        return math.prod(self.sizes)


def _lin(a: float, b: float, n: int) -> tuple[float, ...]:
    return tuple(np.linspace(a, b, n).tolist())


XY_SIZES = (8, 10, 12, 14)  # square side in pixels (even: centred between the middle pixels)
XY_COLORS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255))

FACTOR_DATASETS: dict[str, FactorSpec] = {
    "dsprites": FactorSpec(
        "dsprites", ("color", "shape", "scale", "orientation", "posX", "posY"),
        ((1.0,), (1.0, 2.0, 3.0), _lin(0.5, 1.0, 6), _lin(0.0, 2 * math.pi, 40), _lin(0.0, 1.0, 32),
         _lin(0.0, 1.0, 32)),
        (1, 64, 64), True,
        "dSprites (Matthey, Higgins, Hassabis, Lerchner 2017), redrawn by vaelab; the heart differs, see the docs"),
    "xyobject": FactorSpec(
        "xyobject", ("x", "y", "scale", "color"),
        (_lin(0.0, 1.0, 16), _lin(0.0, 1.0, 16), tuple(float(s) for s in XY_SIZES), tuple(range(len(XY_COLORS)))),
        (3, 64, 64), False, "a coloured square on black after disent's XYObject (Michlo), drawn by vaelab"),
}


# ----------------------------------------------------------------------------- drawing


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (1, H, 1) and (1, 1, W) in pixels, relative to the canvas centre."""
    c = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    return c[None, :, None], c[None, None, :]


# Sizes in pixels at scale 1, chosen to match the published images: a 16-pixel square, an
# ellipse of 2 x 10 by 2 x 5 pixels, a heart 18 pixels wide.
SQUARE_HALF, ELLIPSE_AXES, HEART_UNIT = 8.0, (10.0, 5.0), 7.9


def render_dsprites(shape: int, scale: float, angles: np.ndarray, size: int = 64) -> np.ndarray:
    """Draw one dSprites shape at one scale and several orientations, centred on the canvas.

    A pixel is on when its centre lies inside the rotated shape: the square
    ``max(|x|, |y|) <= 8 s``, the ellipse ``(x / 10 s)^2 + (y / 5 s)^2 <= 1`` and the heart
    ``(u^2 + v^2 - 1)^3 <= u^2 v^3`` (u, v in units of 7.9 s pixels, v upwards), for scale s.
    Orientation turns the shape counter-clockwise as seen on screen.

    Args:
        shape: 0 square, 1 ellipse, 2 heart.
        scale: The scale, 0.5 to 1.
        angles: Orientations in radians ``(A,)``.
        size: The canvas side in pixels.

    Returns:
        bool images ``(A, size, size)``, the shape centred between the middle pixels.

    Examples:
        >>> import numpy as np
        >>> from vaelab.factors import render_dsprites
        >>> square = render_dsprites(0, 1.0, np.array([0.0]))
        >>> square.shape, int(square.sum())
        ((1, 64, 64), 256)
    """
    y, x = _pixel_grid(size)
    t = np.asarray(angles, dtype=np.float64)[:, None, None]
    # rotate the pixel, not the shape: the inverse rotation; y runs down the screen
    u = np.cos(t) * x - np.sin(t) * y
    v = np.sin(t) * x + np.cos(t) * y
    if shape == 0:
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF * scale
    if shape == 1:
        a, b = ELLIPSE_AXES
        return (u / (a * scale)) ** 2 + (v / (b * scale)) ** 2 <= 1
    if shape == 2:
        hu, hv = u / (HEART_UNIT * scale), -v / (HEART_UNIT * scale) + 0.12  # v up, the heart's box centred
        return (hu**2 + hv**2 - 1) ** 3 <= hu**2 * hv**3
    raise ValueError(f"shape must be 0, 1 or 2, got {shape}")


def _offsets(n: int) -> np.ndarray:
    """Integer pixel shifts of the centre for n positions in [0, 1]: from 9.6 to 54.4 pixels."""
    return np.rint(64 * (0.15 + 0.7 * np.linspace(0.0, 1.0, n)) - 32).astype(np.int64)


def _shift_all(sprites: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """(A, H, W) sprites -> (A, len(dx), len(dy), H, W): each moved right by dx and down by dy."""
    pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
    a, h, w = sprites.shape
    padded = np.pad(sprites, ((0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))  # (A, 2p+1, 2p+1, H, W)
    # out[i, j, r, c] = sprite[r - dy[j], c - dx[i]] = padded[r + pad - dy[j], c + pad - dx[i]]
    return windows[:, (pad - dy)[None, :], (pad - dx)[:, None]]


def write_dsprites(path: Path, positions: int = 32) -> None:
    """Write every dSprites image, bit-packed, in the published order, to `path`."""
    spec = FACTOR_DATASETS["dsprites"]
    offs = _offsets(positions)
    angles = np.asarray(spec.values[3])
    with open(path, "wb") as out:
        for shape in range(3):
            for scale in spec.values[2]:
                imgs = _shift_all(render_dsprites(shape, scale, angles), offs, offs)  # (40, P, P, 64, 64)
                np.packbits(imgs.reshape(-1, 64 * 64), axis=1).tofile(out)


def write_xyobject(path: Path) -> None:
    """Write every XYObject image (N, 3, 64, 64) uint8, factors (x, y, scale, color), to `path`."""
    spec = FACTOR_DATASETS["xyobject"]
    y, x = _pixel_grid(64)
    n_pos = len(spec.values[0])
    offs = np.rint(64 * (0.15 + 0.7 * np.linspace(0.0, 1.0, n_pos)) - 32).astype(np.int64)
    squares = np.stack([(np.abs(x) <= s / 2) & (np.abs(y) <= s / 2) for s in XY_SIZES])[:, 0]  # (S, 64, 64)
    moved = _shift_all(squares, offs, offs)  # (S, X, Y, 64, 64)
    masks = moved.transpose(1, 2, 0, 3, 4)  # (X, Y, S, 64, 64)
    colors = np.asarray(XY_COLORS, dtype=np.uint8)  # (K, 3)
    with open(path, "wb") as out:
        for i in range(n_pos):  # (Y, S, K, 3, 64, 64) a row of x at a time
            m = masks[i][:, :, None, None]
            (m * colors[None, None, :, :, None, None]).astype(np.uint8).tofile(out)


WRITERS = {"dsprites": write_dsprites, "xyobject": write_xyobject}


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class GridImages:
    """Images of a factor grid in a memory-mapped file, bit-packed or uint8, read by row.

    Reads like ``vaelab.data.ImageFile`` (``read``, ``load``, ``head``), so a ``Split``
    can hold it; `rows` picks which grid images the reader shows and in what order.

    Attributes:
        path: The file.
        image_shape: ``(C, H, W)`` of one image (``shape`` is ``(N, C, H, W)``).
        packed: Binary images stored 8 pixels a byte (pixels read back as 0 or 255).
        rows: Grid rows ``(N,)`` this reader shows; None for the whole file.

    Examples:
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from vaelab.factors import GridImages
        >>> np.packbits(np.eye(8, dtype=bool).reshape(4, 16), axis=1).tofile(Path(tmp, "g.bits"))
        >>> g = GridImages(Path(tmp, "g.bits"), (1, 4, 4), packed=True)
        >>> len(g), g.read([1]).reshape(-1).tolist()[:8]
        (4, [0, 0, 255, 0, 0, 0, 0, 0])
        >>> g.head(2).load().shape
        torch.Size([2, 1, 4, 4])
    """

    path: Path
    image_shape: tuple[int, int, int]
    packed: bool = False
    rows: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, C, H, W)``, as a tensor of these images would have."""
        return (len(self), *self.image_shape)

    @property
    def row_bytes(self) -> int:
        """Bytes of one image as read: C * H * W."""
        return math.prod(self.image_shape)

    def _stored(self) -> np.ndarray:
        width = self.row_bytes // 8 if self.packed else self.row_bytes
        return np.memmap(self.path, dtype=np.uint8, mode="r").reshape(-1, width)

    def __len__(self) -> int:
        if self.rows is not None:
            return len(self.rows)
        return self.path.stat().st_size // (self.row_bytes // 8 if self.packed else self.row_bytes)

    @property
    def nbytes(self) -> int:
        """Bytes of all N images as read: N * C * H * W."""
        return len(self) * self.row_bytes

    def take(self, rows: np.ndarray) -> GridImages:
        """A reader of these rows of this reader.

        Args:
            rows: Row indices ``(K,)`` into this reader.

        Returns:
            A GridImages of K images.
        """
        rows = np.asarray(rows, dtype=np.int64)
        return GridImages(self.path, self.image_shape, self.packed, rows if self.rows is None else self.rows[rows])

    def head(self, n: int) -> GridImages:
        """A reader of the first `n` images only.

        Args:
            n: The number of images to keep.

        Returns:
            A GridImages of ``min(n, N)`` images.
        """
        return self.take(np.arange(min(n, len(self))))

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Read the images at row indices `idx`.

        Args:
            idx: Row indices ``(K,)`` in any order.

        Returns:
            uint8 array ``(K, C, H, W)``, binary images as 0 and 255.
        """
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        stored = self._stored()[rows]
        if self.packed:
            stored = np.unpackbits(stored, axis=1) * np.uint8(255)
        return stored.reshape(len(idx), *self.image_shape)

    def load(self) -> torch.Tensor:
        """Read all the images into memory.

        Returns:
            uint8 tensor ``(N, C, H, W)``.
        """
        n = len(self)
        out = np.empty((n, *self.image_shape), np.uint8)
        for i in range(0, n, 65536):
            out[i : i + 65536] = self.read(np.arange(i, min(n, i + 65536)))
        return torch.from_numpy(out)


def _manifest(spec: FactorSpec) -> dict:
    return {"dataset": spec.name, "generator_version": GENERATOR_VERSION, "images": spec.n,
            "image_shape": list(spec.image_shape), "packed": spec.packed,
            "factors": dict(zip(spec.factor_names, map(list, spec.values))), "attribution": spec.attribution}


def _build(spec: FactorSpec, folder: Path) -> Path:
    """The images file of `spec` in `folder`, drawn and written atomically unless the
    manifest says the file there is this version's."""
    ensure_dir(folder, "data folder")
    file = folder / ("images.bits" if spec.packed else "images.u8")
    row = math.prod(spec.image_shape) // (8 if spec.packed else 1)
    manifest = folder / "manifest.json"
    try:
        ok = json.loads(manifest.read_text()) == _manifest(spec) and file.stat().st_size == spec.n * row
    except (OSError, ValueError):
        ok = False
    if not ok:
        with atomic_path(file) as tmp:
            WRITERS[spec.name](tmp)
        write_json(manifest, _manifest(spec))
    return file


def load_factor_dataset(name: str, data_dir: str | Path | None = None, subset: int = 0) -> Dataset:
    """Load a factor dataset, drawing and caching its images the first time.

    Args:
        name: ``dsprites`` or ``xyobject``.
        data_dir: The folder for the cached images; None: the user cache
            (``~/.cache/vaelab/<name>``).
        subset: Train on this many images, drawn at random (the same ones every time);
            0 for all.

    Returns:
        A ``vaelab.data.Dataset`` whose splits hold the images ``(N, C, H, W)`` uint8 and
        their factor codes ``(N, F)`` (``Split.factors``), with ``Dataset.factors`` naming
        the factors and their values. Labels are -1: the images have no classes.

    Raises:
        DataError: The name is unknown or `subset` is out of range.

    Examples:
        >>> from vaelab.factors import load_factor_dataset
        >>> data = load_factor_dataset("xyobject", data_dir=tmp, subset=1000)
        >>> len(data.train), len(data.test), data.image_shape
        (1000, 1000, (3, 64, 64))
        >>> data.factors.names, data.factors.sizes
        (('x', 'y', 'scale', 'color'), (16, 16, 4, 6))
        >>> data.train.factors.shape
        torch.Size([1000, 4])
    """
    if name not in FACTOR_DATASETS:
        raise DataError(f"unknown factor dataset {name!r}; choose one of: {', '.join(FACTOR_DATASETS)}"
                        f"{did_you_mean(name, FACTOR_DATASETS)}")
    spec = FACTOR_DATASETS[name]
    if not 0 <= subset <= spec.n:
        raise DataError(f"--subset {subset} is out of range for {name}; choose 1..{spec.n} images, or 0 for all")
    folder = Path(data_dir) if data_dir is not None else cache_dir() / name
    grid = GridImages(_build(spec, folder), spec.image_shape, spec.packed)
    train_rows = np.arange(spec.n)
    if subset:
        train_rows = np.sort(np.random.default_rng(0).choice(spec.n, subset, replace=False))
    test_rows = np.sort(np.random.default_rng(1).permutation(train_rows)[:TEST_SIZE])
    codes = np.stack(np.unravel_index(np.arange(spec.n), spec.sizes), axis=1)  # (N, F)

    def split(rows: np.ndarray) -> Split:
        return Split(grid.take(rows), np.full(len(rows), -1, np.int64), factors=codes[rows])

    factors = Factors(spec.factor_names, tuple(np.asarray(v) for v in spec.values), grid)
    stamp = hashlib.sha256(json.dumps([_manifest(spec), subset]).encode()).hexdigest()[:16]
    return Dataset(name, split(train_rows), split(test_rows), (), str(folder), stamp,
                   binary_benchmark=spec.packed, factors=factors)
