"""Pictures. Image grids are written with Pillow (fast enough to refresh every epoch);
matplotlib is imported lazily, only by functions that draw figures."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) values in [0, 1] -> uint8 array (rows*H', cols*W'[, 3]) with `pad` px gaps."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    arr = (grid.numpy() * 255 + 0.5).astype(np.uint8)
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def save_png(array: np.ndarray, path: str | Path, scale: int = 2) -> Path:
    """Write a uint8 grid as PNG (nearest-neighbour upscaled, no blur), atomically."""
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".png")
    os.close(fd)
    img.save(tmp)
    os.replace(tmp, path)
    return path
