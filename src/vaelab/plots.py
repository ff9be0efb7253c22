"""Pictures. Image grids are written with Pillow (fast enough to refresh every epoch);
matplotlib is imported lazily, only by functions that draw figures.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so drawing one never
changes the global backend (a notebook's inline backend, a GUI) and never opens a window.
Sizes are in inches, chosen so that every image shows at about `inch` inches."""

from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vaelab.files import atomic_path

__all__ = ["image_grid", "save_png", "new_figure", "image_rows", "image_panels", "manifold_figure",
           "scatter_by_label", "DenoiseView", "denoise_figure", "curves_figure", "heatmap", "matrix_figure", "score_histograms",
           "kl_bars", "save_figure"]


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile images into one picture, row by row, with white gaps between them.

    Args:
        images: Images ``(N, C, H, W)`` with values in [0, 1] (clamped); C is 1 or 3.
        nrow: Images per row; None makes the grid about square.
        pad: Pixels of white between images and around the edge.

    Returns:
        A uint8 array ``(R * (H + pad) + pad, nrow * (W + pad) + pad)`` for grey images, with a
        last axis of 3 for colour ones; R = ceil(N / nrow) rows.

    Examples:
        >>> import torch
        >>> from vaelab.plots import image_grid
        >>> grid = image_grid(torch.rand(6, 1, 28, 28), nrow=3)
        >>> grid.shape, grid.dtype
        ((62, 92), dtype('uint8'))
        >>> image_grid(torch.rand(4, 3, 8, 8), pad=0).shape
        (16, 16, 3)
    """
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
    """Write a uint8 picture, such as an ``image_grid``, as a PNG file.

    The picture is enlarged by `scale` without blurring (nearest neighbour), and the file
    appears whole or not at all.

    Args:
        array: uint8 pixels ``(H, W)`` (grey) or ``(H, W, 3)`` (RGB).
        path: The PNG file to write.
        scale: The enlargement factor; 1 keeps the size.

    Returns:
        The path written.

    Examples:
        >>> import torch
        >>> from PIL import Image
        >>> from vaelab.plots import image_grid, save_png
        >>> path = save_png(image_grid(torch.rand(4, 1, 8, 8)), f"{tmp}/grid.png")
        >>> Image.open(path).size
        (44, 44)
    """
    from PIL import Image

    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path, ".png") as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


# ----------------------------------------------------------------------------- matplotlib figures

_PAD = 0.08  # inches between images and around a figure's edge


def new_figure(width: float, height: float, **kwargs):
    """Make an empty matplotlib Figure that pyplot does not track, for drawing your own figures.

    Making one never changes the global backend and never opens a window; Jupyter still
    shows it inline without ``%matplotlib inline``.

    Args:
        width: Width in inches.
        height: Height in inches.
        **kwargs: More arguments of ``matplotlib.figure.Figure``, e.g. ``layout="constrained"``.

    Returns:
        A matplotlib Figure.

    Examples:
        >>> from vaelab.plots import new_figure
        >>> fig = new_figure(4, 3)
        >>> type(fig).__name__, fig.get_size_inches().tolist()
        ('Figure', [4.0, 3.0])
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    fig._repr_png_ = partial(_png_bytes, fig)
    return fig


def _png_bytes(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _text_width(labels: list[str], fontsize: float = 9) -> float:
    """Inches taken by the longest line of `labels` (an average glyph is ~0.55 em wide)."""
    longest = max((len(line) for s in labels for line in s.split("\n")), default=0)
    return longest * 0.55 * fontsize / 72


def _heading(title: str, width: float, fontsize: float = 11) -> tuple[str, float]:
    """`title` wrapped to a figure `width` inches wide, and the inches it takes at the top."""
    text = textwrap.fill(title, max(20, int(width * 72 / (0.55 * fontsize))))
    return text, (text.count("\n") + 1) * 1.3 * fontsize / 72 + 2 * _PAD


def _suptitle(fig, text: str, fontsize: float = 11) -> None:
    fig.suptitle(text, fontsize=fontsize, y=1 - _PAD / fig.get_size_inches()[1], va="top")


def _show_image(ax, img: torch.Tensor) -> None:
    """One (C, H, W) image in [0, 1]; an all-NaN image leaves an empty cell (its label stays)."""
    img = img.detach().float().clamp(0, 1).cpu()
    if img.isnan().all():
        ax.spines[:].set_visible(False)
    elif img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _image_block(fig, rows: list[torch.Tensor], labels: list[str], col_labels: list[str] | None,
                 left: float, top: float, inch: float) -> None:
    """Rows of images, `inch` inches square, the block's top-left corner `left`, `top` inches
    from the figure's left and top edges; labels left of the rows and above the columns."""
    width, height = fig.get_size_inches()
    n = max(len(r) for r in rows)
    right, bottom = left + n * (inch + _PAD) - _PAD, top + len(rows) * (inch + _PAD) - _PAD
    gs = fig.add_gridspec(len(rows), n, left=left / width, right=right / width, top=1 - top / height,
                          bottom=1 - bottom / height, wspace=_PAD / inch, hspace=_PAD / inch)
    for r, (row, label) in enumerate(zip(rows, labels)):
        for c in range(n):
            ax = fig.add_subplot(gs[r, c])
            if c < len(row):
                _show_image(ax, row[c])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
            if r == 0 and col_labels:
                ax.set_title(col_labels[c], fontsize=9)


def image_rows(rows: list[torch.Tensor], labels: list[str], title: str, col_labels: list[str] | None = None,
               inch: float = 0.9):
    """Draw rows of images, one row per tensor, each row labelled on the left.

    Args:
        rows: One tensor of images ``(N, C, H, W)`` in [0, 1] per row; rows may differ in N.
            An all-NaN image leaves its cell empty.
        labels: One label per row.
        title: The figure's title (wrapped to its width).
        col_labels: Labels above the columns, one per image of the longest row; None for none.
        inch: The size of each image in inches.

    Returns:
        A matplotlib Figure with one axes per cell.

    Examples:
        >>> import torch
        >>> from vaelab.plots import image_rows
        >>> x = torch.rand(5, 1, 28, 28)
        >>> fig = image_rows([x, 1 - x], ["image", "negative"], "Images and their negatives")
        >>> type(fig).__name__, len(fig.axes)
        ('Figure', 10)
    """
    n = max(len(r) for r in rows)
    left = _text_width(labels) + 2 * _PAD
    width = left + n * (inch + _PAD) + _PAD
    text, top = _heading(title, width)
    top += 0.25 if col_labels else 0
    fig = new_figure(width, top + len(rows) * (inch + _PAD) + _PAD)
    _suptitle(fig, text)
    _image_block(fig, rows, labels, col_labels, left, top, inch)
    return fig


def image_panels(panels: list[tuple[str, torch.Tensor]], ncol: int, title: str, inch: float = 0.6):
    """Draw grids of images side by side, each under its own title.

    Args:
        panels: ``(title, images)`` pairs, images ``(N, C, H, W)`` in [0, 1].
        ncol: Images per row in every grid.
        title: The figure's title.
        inch: The size of each image in inches.

    Returns:
        A matplotlib Figure with one axes per grid.

    Examples:
        >>> import torch
        >>> from vaelab.plots import image_panels
        >>> x = torch.rand(8, 1, 28, 28)
        >>> fig = image_panels([("images", x), ("negatives", 1 - x)], 4, "Two grids")
        >>> len(fig.axes)
        2
    """
    nrow = max(math.ceil(len(images) / ncol) for _, images in panels)
    gap = 0.3
    width = len(panels) * (ncol * inch + gap) + gap
    text, top = _heading(title, width)
    top += 0.3  # the grids' titles
    height = top + nrow * inch + _PAD
    fig = new_figure(width, height)
    _suptitle(fig, text)
    for i, (name, images) in enumerate(panels):
        ax = fig.add_axes(((gap + i * (ncol * inch + gap)) / width, _PAD / height, ncol * inch / width,
                           nrow * inch / height))
        grid = image_grid(images, nrow=ncol)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(name, fontsize=10)
    return fig


def manifold_figure(images: torch.Tensor, ncol: int, title: str, axis_labels: tuple[str, str],
                    span: tuple[float, float], inch: float = 0.5):
    """Draw decoded images of a regular grid of codes edge to edge, with the codes on the axes.

    Args:
        images: ``(ncol * R, C, H, W)`` images in [0, 1], row by row, top row first.
        ncol: Images per row.
        title: The figure's title.
        axis_labels: The labels of the x and y axes.
        span: ``(low, high)``: the range both axes cover.
        inch: The size of each image in inches.

    Returns:
        A matplotlib Figure with one axes.

    Examples:
        >>> import torch
        >>> from vaelab.plots import manifold_figure
        >>> fig = manifold_figure(torch.rand(25, 1, 8, 8), 5, "A 5x5 grid", ("z[0]", "z[1]"), (-3.0, 3.0))
        >>> fig.axes[0].get_xlabel(), [float(v) for v in fig.axes[0].get_xlim()]
        ('z[0]', [-3.0, 3.0])
    """
    nrow = math.ceil(len(images) / ncol)
    grid = image_grid(images, nrow=ncol, pad=0)
    fig = new_figure(ncol * inch + 1.0, nrow * inch + 1.1, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest",
              extent=(span[0], span[1], span[0], span[1]))
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    return fig


def scatter_by_label(xy: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], title: str,
                     axis_labels: tuple[str, str]):
    """Draw 2-D points coloured by class, with the legend outside the axes.

    Args:
        xy: Points ``(N, 2)``, e.g. posterior means of a 2-D latent.
        labels: Class indices ``(N,)``, in 0..K-1.
        classes: The K class names; ``()`` draws every point in one colour, with no legend.
        title: The figure's title.
        axis_labels: The labels of the x and y axes.

    Returns:
        A matplotlib Figure.

    Examples:
        >>> import torch
        >>> from vaelab.plots import scatter_by_label
        >>> xy, labels = torch.randn(100, 2), torch.arange(100) % 3
        >>> fig = scatter_by_label(xy, labels, ("a", "b", "c"), "Three classes", ("z[0]", "z[1]"))
        >>> len(fig.axes), len(fig.legends)
        (1, 1)
    """
    import matplotlib

    fig = new_figure(8, 6.5, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for c in range(len(classes)):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=cmap(c % cmap.N), label=classes[c], linewidths=0)
    if not classes:  # an unlabelled dataset: one colour
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6, color=cmap(0), linewidths=0)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(title)
    if classes:
        legend = fig.legend(loc="outside right upper", markerscale=3, fontsize=9, title="label",
                            ncols=1 + len(classes) // 25)
        for handle in legend.legend_handles:
            handle.set_alpha(1)
    return fig


@dataclass(frozen=True)
class DenoiseView:
    """What a denoising figure says about its images, and how it draws them (``denoise_figure``).

    Attributes:
        kind: The kind of noise, e.g. ``"salt-pepper"``.
        level: The noise level of the images shown.
        title: The figure's title; None names the models compared.
        inch: The size of each image in inches.

    Examples:
        >>> from vaelab.plots import DenoiseView
        >>> DenoiseView("gaussian", 0.2).inch
        0.8
    """

    kind: str
    level: float
    title: str | None = None
    inch: float = 0.8


def denoise_figure(clean: torch.Tensor, noisy: torch.Tensor, recons: list[torch.Tensor], labels: list[str],
                   tables: list[list[dict]], view: DenoiseView):
    """Draw a denoising comparison: clean, noisy and reconstructed images above PSNR curves.

    Each row of images is labelled with its mean PSNR against the clean images at the level
    shown, when `tables` has that level.

    Args:
        clean: Clean images ``(N, C, H, W)`` in [0, 1].
        noisy: Their corrupted copies ``(N, C, H, W)``.
        recons: One tensor of reconstructions ``(N, C, H, W)`` per model.
        labels: One name per model.
        tables: One list per model of rows ``{"level", "psnr_noisy", "psnr_recon"}``, one row
            per noise level, for the plot of PSNR against noise level.
        view: The noise kind and the level of the images shown, the title and the image size
            (a ``DenoiseView``).

    Returns:
        Figure: a matplotlib Figure, an axes per image, then the plot.

    Examples:
        >>> import torch
        >>> from vaelab.plots import DenoiseView, denoise_figure
        >>> clean = torch.rand(4, 1, 8, 8)
        >>> noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
        >>> table = [{"level": 0.1, "psnr_noisy": 20.0, "psnr_recon": 22.0},
        ...          {"level": 0.3, "psnr_noisy": 12.0, "psnr_recon": 18.0}]
        >>> fig = denoise_figure(clean, noisy, [clean], ["model"], [table], DenoiseView("gaussian", 0.2))
        >>> len(fig.axes)
        13
    """
    kind, level, inch = view.kind, view.level, view.inch
    rows = [clean, noisy, *recons]
    at = [next((t for t in table if t["level"] == level), None) for table in tables]

    def db(row: dict | None, key: str) -> str:
        return "" if row is None else f"\nPSNR {row[key]:.1f} dB"

    names = ["clean", f"noisy\n({kind} {level:g}){db(at[0], 'psnr_noisy')}",
             *(f"{label}\nreconstruction{db(row, 'psnr_recon')}" for label, row in zip(labels, at))]
    n = len(clean)
    left = _text_width(names) + 2 * _PAD
    width = max(7.0, left + n * (inch + _PAD) + _PAD)
    title = view.title or ("Denoising: clean | noisy | each model's reconstruction" if len(recons) > 1 else
                           f"Denoising: clean | noisy | reconstructed ({labels[0].splitlines()[0]})")
    text, top = _heading(title, width)
    plot_top = top + len(rows) * (inch + _PAD) + 0.35  # inches from the top to the plot's frame
    height = plot_top + 2.4 + 0.6
    fig = new_figure(width, height)
    _suptitle(fig, text)
    _image_block(fig, rows, names, None, left, top, inch)
    ax = fig.add_axes((0.9 / width, 0.6 / height, (width - 1.1) / width, 2.4 / height))
    levels = [t["level"] for t in tables[0]]
    ax.plot(levels, [t["psnr_noisy"] for t in tables[0]], "o--", color="grey", label="noisy input")
    for label, table in zip(labels, tables):
        ax.plot(levels, [t["psnr_recon"] for t in table], "s-", label=label.replace("\n", " "))
    ax.set_xlabel(f"{kind} noise level")
    ax.set_ylabel("PSNR vs clean (dB)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# what each logged term is, and its unit; a term missing here is shown under its key
TERMS = {
    "loss": ("loss (the minimised objective)", "nats per image"),
    "elbo": ("ELBO: a lower bound on log p(x)", "nats per image"),
    "iwae": ("IWAE bound on log p(x)", "nats per image"),
    "recon": ("reconstruction E_q[log p(x|z)]", "nats per image"),
    "kl": ("KL(q(z|x) || p(z))", "nats per image"),
    "kl_marginal": ("KL(q(z|x) || q(z)): invariance penalty", "nats per image"),
    "lr": ("learning rate at the end of the epoch", "learning rate"),
    "examples_per_s": ("training throughput", "images per second"),
}


def curve_panels(rows: list[dict]) -> list[str]:
    """The panels of ``curves_figure`` for metrics rows: one per term (train and test
    together), then the learning rate and throughput where logged."""
    keys = {k for r in rows for k in r}
    terms = {k.split("_", 1)[1] for k in keys if k.startswith(("train_", "test_"))}
    order = list(TERMS)
    panels = sorted(terms, key=lambda t: (order.index(t) if t in order else len(order), t))
    return panels + [k for k in ("lr", "examples_per_s") if k in keys]


def curves_figure(rows: list[dict], title: str):
    """Draw training curves: one panel per logged term, train and test together.

    Args:
        rows: Records of ``metrics.jsonl``, one per epoch: ``epoch`` and terms such as
            ``train_elbo``, ``test_elbo``, ``lr``.
        title: The figure's title.

    Returns:
        A matplotlib Figure with one axes per term.

    Examples:
        >>> from vaelab.plots import curves_figure
        >>> rows = [{"epoch": e, "train_elbo": -100.0 + e, "test_elbo": -101.0 + e, "lr": 1e-3} for e in (1, 2, 3)]
        >>> fig = curves_figure(rows, "Training")
        >>> [ax.get_title() for ax in fig.axes]
        ['ELBO: a lower bound on log p(x)', 'learning rate at the end of the epoch']
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = curve_panels(rows)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig = new_figure(3.8 * ncol, 2.7 * nrow + 0.8, layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).flatten()
    marker = "o" if len(rows) <= 30 else None
    train, test = "tab:blue", "tab:orange"
    for ax, term in zip(axes, panels):
        # lr and throughput are logged once per epoch, for training: drawn in the train colour
        for key, colour in ((f"train_{term}", train), (f"test_{term}", test), (term, train)):
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker=marker, markersize=3, color=colour)
        name, unit = TERMS.get(term, (term, "nats per image"))
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", scilimits=(-3, 4))  # a learning rate as 1.8 x 1e-3
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.remove()
    handles = [Line2D([], [], color=colour, marker=marker, markersize=3) for colour in (train, test)]
    fig.legend(handles, ["train (mean over the epoch)", "test (after the epoch)"], loc="outside lower center",
               ncols=2, fontsize=9)
    fig.suptitle(title)
    return fig


def heatmap(values: torch.Tensor, title: str):
    """Draw a map of per-pixel values with a colour bar, such as a likelihood's scale.

    Args:
        values: Values ``(H, W)``, a CPU tensor.
        title: The figure's title.

    Returns:
        Figure: a matplotlib Figure, the map's axes and the colour bar's.

    Examples:
        >>> import torch
        >>> from vaelab.plots import heatmap
        >>> len(heatmap(torch.rand(28, 28), "Random values").axes)
        2
    """
    fig = new_figure(5.8, 4.8, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="scale (pixel units in [0, 1])")
    ax.set_xlabel("pixel column")
    ax.set_ylabel("pixel row")
    ax.set_title(title, fontsize=10)
    return fig


def matrix_figure(values: np.ndarray, row_labels: list[str], col_labels: list[str], title: str, unit: str,
                  vmax: float = 1.0):
    """Draw a labelled matrix of values in [0, vmax] as coloured cells, each with its value
    written in when there are at most 300 cells.

    Args:
        values: ``(R, K)`` values, e.g. the mutual information of R factors with K latent dimensions.
        row_labels: R labels, left of the rows.
        col_labels: K labels, under the columns.
        title: The figure's title (wrapped to its width).
        unit: The colour bar's label.
        vmax: The value of the brightest colour.

    Returns:
        Figure: a matplotlib Figure, the matrix's axes and the colour bar's.

    Examples:
        >>> import numpy as np
        >>> from vaelab.plots import matrix_figure
        >>> fig = matrix_figure(np.eye(2, 3), ["shape", "scale"], ["z0", "z1", "z2"], "Factors x dims", "share")
        >>> [t.get_text() for t in fig.axes[0].get_yticklabels()], len(fig.axes[0].texts)
        (['shape', 'scale'], 6)
    """
    values = np.asarray(values, dtype=np.float64)
    r, k = values.shape
    width = max(5.0, _text_width(row_labels) + 0.42 * k + 1.8)
    fig = new_figure(width, 0.42 * r + 2.2, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(r), row_labels, fontsize=9)
    ax.set_xticks(range(k), col_labels, fontsize=8, rotation=90 if k > 12 else 0)
    if r * k <= 300:
        for i in range(r):
            for j in range(k):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if values[i, j] > 0.6 * vmax else "white")
    fig.colorbar(im, ax=ax, label=unit, shrink=0.9)
    ax.set_title(textwrap.fill(title, max(20, int(width * 72 / (0.55 * 10)) - 4)), fontsize=10)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib Figure as a PNG file; the file appears whole or not at all.

    Args:
        fig: The figure.
        path: The PNG file to write.
        dpi: Pixels per inch.

    Returns:
        The path written.

    Examples:
        >>> import torch
        >>> from vaelab.plots import heatmap, save_figure
        >>> path = save_figure(heatmap(torch.rand(8, 8), "Noise"), f"{tmp}/noise.png")
        >>> path.name, path.stat().st_size > 0
        ('noise.png', True)
    """
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return Path(path)


def score_histograms(columns: dict[str, dict[str, np.ndarray]], title: str, ncol: int = 3):
    """Draw one panel per score, with a histogram of its values for each set of images.

    The sets of a panel share bins between the 0.5% and 99.5% quantiles of all their values.

    Args:
        columns: ``{score: {set name: values (N,)}}``, e.g. a score of test images and of
            other images.
        title: The figure's title.
        ncol: Panels per row.

    Returns:
        A matplotlib Figure with one axes per score.

    Examples:
        >>> import numpy as np
        >>> from vaelab.plots import score_histograms
        >>> rng = np.random.default_rng(0)
        >>> columns = {"nll": {"test": rng.normal(90, 5, 200), "other": rng.normal(120, 8, 200)},
        ...            "kl": {"test": rng.gamma(2.0, 1.0, 200), "other": rng.gamma(3.0, 1.0, 200)}}
        >>> [ax.get_title() for ax in score_histograms(columns, "Two scores").axes]
        ['nll', 'kl']
    """
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    names = list(columns)
    nrow = max(1, -(-len(names) // ncol))
    fig = new_figure(3.4 * min(ncol, len(names)), 2.6 * nrow + 0.5, layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(nrow, min(ncol, len(names)), i + 1)
        # a few x ticks, with a power of ten beside the axis for long numbers, so that labels such
        # as 0.00075 or -700000 never run together; the density's own values say nothing: no y ticks
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        fmt = ScalarFormatter()
        fmt.set_powerlimits((-2, 4))
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.get_offset_text().set_fontsize(7)
        ax.set_yticks([])
        if i % ncol == 0:
            ax.set_ylabel("share of images", fontsize=8)
        sets = columns[name]
        both = np.concatenate([np.asarray(v, dtype=np.float64) for v in sets.values()])
        both = both[np.isfinite(both)]
        lo, hi = (np.quantile(both, [0.005, 0.995]) if len(both) else (0.0, 1.0))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        for label, v in sets.items():
            ax.hist(np.clip(v, lo, hi), bins=bins, density=True, histtype="step", linewidth=1.3, label=label)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def kl_bars(kl: list[float], title: str, names: list[str] | None = None, active: list[bool] | None = None,
            sort: bool = True):
    """Draw the KL of each latent unit as bars, largest first.

    Up to 40 bars are labelled one by one; more share an axis of ranks.

    Args:
        kl: KL in nats per unit, U values.
        title: The figure's title.
        names: U bar labels; None names them z0, z1, ... by index.
        active: U flags; when given, active units' bars are coloured and the others grey.
        sort: Order the bars largest first; False keeps the given order.

    Returns:
        A matplotlib Figure with one axes.

    Examples:
        >>> from vaelab.plots import kl_bars
        >>> fig = kl_bars([0.1, 2.5, 1.0], "KL per dimension", active=[False, True, True])
        >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ['z1', 'z2', 'z0']
    """
    n = len(kl)
    names = list(names) if names is not None else [f"z{i}" for i in range(n)]
    order = sorted(range(n), key=lambda i: -kl[i]) if sort else list(range(n))
    width = min(14.0, max(5.0, 2.0 + 0.22 * n))
    fig = new_figure(width, 4.2, layout="constrained")
    ax = fig.add_subplot()
    colours = ["tab:blue"] * n
    if active is not None:
        colours = ["tab:blue" if active[i] else "tab:gray" for i in order]
    ax.bar(range(n), [kl[i] for i in order], color=colours, width=0.8)
    if n <= 40:
        ax.set_xticks(range(n), [names[i] for i in order], rotation=90 if n > 12 else 0, fontsize=8)
    else:
        ax.set_xlabel(f"latent dimensions{', largest KL first' if sort else ''} ({n})")
    if active is not None:
        from matplotlib.patches import Patch

        ax.legend([Patch(color="tab:blue"), Patch(color="tab:gray")], ["active", "inactive"], fontsize=8)
    ax.set_ylabel("KL (nats per image)")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(textwrap.fill(title, max(20, int(width * 72 / (0.55 * 10)) - 4)), fontsize=10)
    return fig
