"""Pictures. Image grids are written with Pillow (fast enough to refresh every epoch);
matplotlib is imported lazily, only by functions that draw figures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vaelab.files import atomic_path


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

    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- matplotlib figures


def _plt():
    """pyplot with the Agg backend: figures never need a display."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _show_image(ax, img: torch.Tensor) -> None:
    img = img.detach().float().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_rows(rows: list[torch.Tensor], labels: list[str], title: str):
    """One row per (N, C, H, W) tensor, labelled on the left."""
    plt = _plt()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.6, 1.15 * len(rows) + 0.6), squeeze=False)
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = axes[r][c]
            if c < len(row):
                _show_image(ax, row[c])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid_figure(images: torch.Tensor, ncol: int, title: str, axis_labels: tuple[str, str] | None,
                      span: tuple[float, float] | None, col_labels: list[str] | None = None):
    """A grid of images in one axes (no gaps), with optional axis labels and extent."""
    plt = _plt()
    nrow = math.ceil(len(images) / ncol)
    grid = image_grid(images, nrow=ncol, pad=0 if span else 2)
    fig, ax = plt.subplots(figsize=(min(12, max(6.0, 0.55 * ncol + 2)), min(12, 0.55 * nrow + 1.5)))
    extent = None if span is None else (span[0], span[1], span[0], span[1])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest",
              extent=extent)
    if axis_labels:
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
    else:
        ax.set_yticks([])
        if col_labels:
            w = grid.shape[1] / ncol
            ax.set_xticks([w * (i + 0.5) for i in range(ncol)], col_labels, fontsize=8, rotation=15)
        else:
            ax.set_xticks([])
    ax.set_title(title)
    fig.tight_layout()
    return fig


def scatter_by_label(xy: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], title: str,
                     axis_labels: tuple[str, str]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c in range(len(classes)):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=cmap(c % cmap.N), label=classes[c])
    if not classes:  # an unlabelled dataset: one colour
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, color="tab:blue")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    if classes:
        ax.legend(markerscale=3, fontsize=8, loc="best", title="label", ncol=1 + len(classes) // 12)
    fig.tight_layout()
    return fig


def denoise_figure(rows: list[torch.Tensor], level: float, kind: str, table: list[dict], model: str):
    plt = _plt()
    n = len(rows[0])
    fig = plt.figure(figsize=(max(8, 1.1 * n + 1.5), 6.2))
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 2.2])
    top = gs[0].subgridspec(3, n)
    for r, label in enumerate(["clean", f"noisy ({kind} {level:g})", "reconstructed"]):
        for c in range(n):
            ax = fig.add_subplot(top[r, c])
            _show_image(ax, rows[r][c])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    ax = fig.add_subplot(gs[1])
    levels = [t["level"] for t in table]
    ax.plot(levels, [t["psnr_noisy"] for t in table], "o-", label="noisy input")
    ax.plot(levels, [t["psnr_recon"] for t in table], "s-", label=f"{model} reconstruction")
    ax.set_xlabel(f"{kind} noise level")
    ax.set_ylabel("PSNR vs clean (dB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.suptitle(f"Denoising with a {model}: clean | noisy | reconstructed")
    fig.tight_layout()
    return fig


def curves_figure(rows: list[dict], title: str):
    plt = _plt()
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in rows[0] if k.startswith(("train_", "test_"))):
        values = [r[key] for r in rows]
        (a if key.endswith(("kl",)) else b).plot(epochs, values, label=key)
    a.set_title("KL term (nats)")
    b.set_title("loss, reconstruction and bound terms (nats)")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per image")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(values: torch.Tensor, title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="scale (pixel units in [0, 1])")
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save atomically and close the figure."""
    plt = _plt()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return Path(path)
