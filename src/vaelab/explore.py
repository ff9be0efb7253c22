"""Looking at a trained model: the notebooks' experiments as functions.

Each ``figure_*`` function takes an :class:`Explorer` (a model with its test data) and
returns ``(matplotlib Figure, numbers)``; ``numbers`` is a JSON-able dict of what the
figure shows (empty where there is nothing numeric). ``vaelab plot`` writes both.
All randomness comes from a generator seeded by ``Explorer.seed``.

In a notebook (the figures never touch pyplot or the global backend, and display inline
without ``%matplotlib inline``)::

    from vaelab.explore import Explorer, figure_samples
    ex = Explorer.from_run("runs/demo")
    figure_samples(ex)[0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab import plots
from vaelab.batches import model_inputs
from vaelab.checkpoint import Run, load_run
from vaelab.corruption import add_noise
from vaelab.evaluate import posterior_means
from vaelab.files import FileError, ensure_dir, write_json
from vaelab.images import load_configured


@dataclass
class Explorer:
    model: Any
    cfg: Any
    x: torch.Tensor  # test images as evaluated (binarised / grey), (N, C, H, W)
    labels: torch.Tensor
    classes: tuple[str, ...]
    run_dir: Path | None = None
    seed: int = 0
    c: torch.Tensor | None = None  # conditions of the test images (conditional models), (N, C')

    @classmethod
    def from_run(cls, run_dir: str | Path, n: int = 5000, seed: int = 0, device: str = "cpu") -> Explorer:
        cfg, model = load_run(run_dir, device)
        data = load_configured(cfg.data)
        x, c, labels = model_inputs(model, cfg, data.test.head(n), len(data.classes), device).rows(0, n)
        return cls(model, cfg, x, labels, data.classes, Path(run_dir), seed, c)

    def cond(self, n: int) -> torch.Tensor | None:
        """Conditions of the first n test images (None for unconditional models)."""
        return None if self.c is None else self.c[:n]

    def cond_like(self, n: int) -> torch.Tensor | None:
        """For decoding n synthetic codes: the first test image's condition, repeated."""
        return None if self.c is None else self.c[:1].expand(n, -1)

    def gen(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.x.device).manual_seed(self.seed + offset)

    @torch.no_grad()
    def codes(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means (the code, for an AE) of images x with conditions c: (N, D)."""
        if c is None and self.c is not None:
            c = self.c[: len(x)]
        return posterior_means(self.model, x, c)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is None and self.c is not None:
            c = self.cond_like(len(z))
        return self.model.decode(z, c).mean.clamp(0, 1)


# ----------------------------------------------------------------------------- computations


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between codes a, b (D,) at fractions t (T,) -> (T, D)."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    s = torch.sin(omega)
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / s


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def principal_axes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean (D,), top-2 principal directions (2, D), their standard deviations (2,))."""
    mean = codes.mean(0)
    _, s, v = torch.linalg.svd(codes - mean, full_matrices=False)
    return mean, v[:2], s[:2] / math.sqrt(max(1, len(codes) - 1))


# ----------------------------------------------------------------------------- figures


@torch.no_grad()
def figure_recon(ex: Explorer, n: int = 10):
    """Test inputs above their reconstructions: the decoder mean and one sample."""
    x, c = ex.x[:n], ex.cond(n)
    q = ex.model.encode(x, c)
    dist = ex.model.decode(q.mean, c)
    rows = [x, dist.mean.clamp(0, 1), dist.sample(generator=ex.gen()).clamp(0, 1)]
    mse = (rows[1] - x).square().flatten(1).mean(1)
    fig = plots.image_rows(rows, ["input", "reconstruction (mean)", "reconstruction (sample)"],
                           f"Reconstructions of test images ({ex.cfg.model.model})")
    return fig, {"mse_per_image": mse.tolist(), "mse_mean": float(mse.mean())}


@torch.no_grad()
def figure_samples(ex: Explorer, n: int = 32, ncol: int = 8):
    """Prior samples: n codes z ~ N(0, I), each decoded to its mean
    E[x|z] and to one draw x ~ p(x|z)."""
    g = ex.gen()
    prior = ex.model.sample(n, generator=g, c=ex.cond(n))
    panels = [("decoder mean E[x|z]", prior.mean), ("one draw x ~ p(x|z)", prior.sample(generator=g))]
    title = f"{n} samples from the prior, z ~ N(0, I) ({ex.cfg.model.model})"
    if not ex.model.has_density:
        title += "; an AE has no prior: its codes were never made to look like these"
    if ex.c is not None:
        title += f"; c: the conditions of test images 1-{n}"
    return plots.image_panels(panels, ncol, title), {"n": n}


@torch.no_grad()
def figure_posterior(ex: Explorer, n: int = 8, draws: int = 6):
    """The posterior predictive: each row is a test image, then the decoder means
    of `draws` independent codes z ~ q(z|x); how much they differ shows the posterior's spread."""
    x, c = ex.x[:n], ex.cond(n)
    z = ex.model.encode(x, c).rsample(draws, generator=ex.gen())  # (draws, n, D)
    means = ex.model.decode(z, c).mean.clamp(0, 1).transpose(0, 1)  # (n, draws, C, H, W)
    rows = [torch.cat([x[i : i + 1], means[i]]) for i in range(len(x))]
    title = f"Posterior predictive: each test image, then E[x|z] for {draws} draws z ~ q(z|x)"
    if not ex.model.has_density:
        title += " (an AE's code is a point: all draws are equal)"
    col_labels = ["test image"] + [f"draw {j + 1}" for j in range(draws)]
    fig = plots.image_rows(rows, [f"{i + 1}" for i in range(len(x))], title, col_labels)
    spread = means.std(1, unbiased=False).flatten(1).mean(1)  # (n,) mean pixel std across draws
    return fig, {"draws": draws, "pixel_std_per_image": spread.tolist(), "pixel_std_mean": float(spread.mean())}


@torch.no_grad()
def figure_manifold(ex: Explorer, steps: int = 15, span: float = 3.0, dims: tuple[int, int] | None = None):
    """Decode a regular grid of codes. 2-D latents: the grid itself over
    [-span, span]^2. More dims: a grid over two chosen dims (others 0), or by default
    over the top two principal directions of the test codes, +-span standard deviations."""
    d = ex.model.latent_dim
    t = torch.linspace(-span, span, steps, device=ex.x.device)
    gy, gx = torch.meshgrid(t.flip(0), t, indexing="ij")
    if d == 2 or dims is not None:
        i, j = dims or (0, 1)
        z = torch.zeros(steps * steps, d, device=ex.x.device)
        z[:, i], z[:, j] = gx.flatten(), gy.flatten()
        axes = (f"z[{i}]", f"z[{j}]")
        info = {"dims": [i, j], "span": span}
    else:
        mean, v, sd = principal_axes(ex.codes(ex.x))
        z = mean + gx.flatten()[:, None] * sd[0] * v[0] + gy.flatten()[:, None] * sd[1] * v[1]
        axes = ("1st principal direction (std)", "2nd principal direction (std)")
        info = {"pca_std": sd.tolist(), "span_std": span}
    images = ex.decode_mean(z)
    fig = plots.manifold_figure(images, steps, f"Latent manifold: decoded grid ({d}-D latent)", axes, (-span, span))
    return fig, {**info, "steps": steps}


@torch.no_grad()
def figure_latents(ex: Explorer):
    """Test-set posterior means coloured by label (2-D directly, else PCA to 2-D)."""
    codes = ex.codes(ex.x)
    if codes.shape[1] == 2:
        xy, axes = codes, ("z[0]", "z[1]")
    else:
        mean, v, _ = principal_axes(codes)
        xy, axes = (codes - mean) @ v.T, ("PC 1", "PC 2")
    fig = plots.scatter_by_label(xy.cpu(), ex.labels.cpu(), ex.classes,
                                 f"Posterior means of {len(codes)} test images", axes)
    return fig, {"n": len(codes), "projection": "identity" if codes.shape[1] == 2 else "pca"}


@torch.no_grad()
def figure_interpolate(ex: Explorer, pairs: int = 4, steps: int = 10):
    """Decode straight-line and spherical paths between the codes of test images."""
    pairs = max(1, min(pairs, len(ex.x) // 2))
    codes = ex.codes(ex.x[: 2 * pairs])
    t = torch.linspace(0, 1, steps, device=ex.x.device)
    rows, labels = [], []
    for p in range(pairs):
        a, b = codes[2 * p], codes[2 * p + 1]
        rows.append(ex.decode_mean(a + t[:, None] * (b - a)))
        labels.append(f"pair {p + 1}: linear")
        rows.append(ex.decode_mean(slerp(a, b, t)))
        labels.append(f"pair {p + 1}: spherical")
    fig = plots.image_rows(rows, labels, "Interpolation between encoded test images (left -> right)")
    return fig, {"steps": steps, "pairs": pairs}


@torch.no_grad()
def figure_combine(ex: Explorer, weights: tuple[float, ...] = (0.5, 0.5), groups: int = 6):
    """New images from weighted combinations of the codes of existing ones ("new
    numbers"): each row shows the inputs and the decoded sum_i w_i z_i."""
    k = len(weights)
    groups = min(groups, len(ex.x) // k)
    if groups == 0:
        raise ValueError(f"combining {k} codes needs at least {k} test images, the test split has {len(ex.x)}")
    w = torch.tensor(weights, device=ex.x.device)
    x = ex.x[: groups * k]
    codes = ex.codes(x).view(groups, k, -1)
    combo = ex.decode_mean((w[None, :, None] * codes).sum(1))  # (groups, C, H, W)
    rows = list(torch.cat([x.view(groups, k, *x.shape[1:]), combo[:, None]], 1))  # groups x (k + 1) images
    col_labels = [f"{'+ ' if i else ''}{w:g} × input {i + 1}" for i, w in enumerate(weights)] + ["= decoded"]
    fig = plots.image_rows(rows, [""] * groups, "Decoding a weighted sum of the inputs' codes (posterior means)",
                           col_labels, inch=1.1)
    return fig, {"weights": list(weights), "groups": groups}


def _denoise_label(ex: Explorer) -> str:
    """Who a model in the denoising figure is: its run folder, kind and training noise."""
    name = ex.run_dir.name if ex.run_dir is not None else ex.cfg.model.model
    how = f"--denoise {ex.cfg.train.denoise}" if ex.cfg.train.denoise else "clean training"
    return f"{name}\n({ex.cfg.model.model}, {how})"


@torch.no_grad()
def _reconstruct(ex: Explorer, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Decoder means of the posterior means of images x (N, C, H, W), in chunks."""
    c = ex.cond(len(x))
    return torch.cat([ex.decode_mean(ex.codes(x[j : j + chunk], None if c is None else c[j : j + chunk]),
                                     None if c is None else c[j : j + chunk]) for j in range(0, len(x), chunk)])


@torch.no_grad()
def figure_denoise(ex: Explorer, kind: str = "salt-pepper", levels: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5),
                   n_show: int = 8, n_eval: int = 1000, against: tuple[str | Path | Explorer, ...] = ()):
    """Corrupt test images, reconstruct them, compare with the clean image:
    rows clean | noisy | reconstructed at one level; MSE and PSNR against the clean
    image for the noisy input and the reconstruction at every level.

    `against`: more models (run folders or Explorers) on the same test images and the same
    noisy copies, drawn side by side: a reconstruction row and a PSNR curve each, e.g. a
    model trained with ``--denoise`` next to one trained on clean images. The numbers
    hold a table per model under ``models`` (with ``psnr_recon_clean``, the PSNR of its
    reconstruction of the clean images); ``levels`` is the first model's table."""
    models = [ex, *(o if isinstance(o, Explorer) else Explorer.from_run(o, n=len(ex.x), seed=ex.seed,
                                                                        device=str(ex.x.device)) for o in against)]
    clean = ex.x[:n_eval]
    for other in models[1:]:
        if other.x.shape[1:] != clean.shape[1:] or not torch.equal(other.x[: len(clean)], clean):
            raise ValueError(f"{other.run_dir} is evaluated on other test images than {ex.run_dir} (dataset or "
                             "binarization differ); the denoising figure compares models on the same images")
    tables: list[list[dict[str, float]]] = [[] for _ in models]
    shown = None
    for i, level in enumerate(levels):
        noisy = add_noise(clean, kind, level, ex.gen(i))
        mse_noisy = (noisy - clean).square().flatten(1).mean(1)
        recons = [_reconstruct(m, noisy) for m in models]
        for table, recon in zip(tables, recons):
            mse_recon = (recon - clean).square().flatten(1).mean(1)
            table.append({"level": level, "mse_noisy": float(mse_noisy.mean()), "mse_recon": float(mse_recon.mean()),
                          "psnr_noisy": float(psnr(mse_noisy).mean()), "psnr_recon": float(psnr(mse_recon).mean())})
        if i == len(levels) // 2:
            shown = (level, clean[:n_show], noisy[:n_show], [r[:n_show] for r in recons])
    labels = [_denoise_label(m) for m in models]
    fig = plots.denoise_figure(shown[1], shown[2], shown[3], labels, shown[0], kind, tables)
    # the reconstruction of the clean image: about the best a model can do from a noisy one
    clean_psnr = [float(psnr((_reconstruct(m, clean) - clean).square().flatten(1).mean(1)).mean()) for m in models]
    per_model = [{"run": None if m.run_dir is None else str(m.run_dir), "model": m.cfg.model.model,
                  "denoise": m.cfg.train.denoise, "psnr_recon_clean": p, "levels": t}
                 for m, p, t in zip(models, clean_psnr, tables)]
    return fig, {"noise": kind, "n": len(clean), "levels": tables[0], "models": per_model}


def figure_curves(ex: Explorer):
    """Loss terms and test ELBO over epochs from metrics.jsonl."""
    rows = Run(ex.run_dir).metrics()
    if not rows:
        raise FileError(f"{ex.run_dir / 'metrics.jsonl'} holds no epoch records; train at least one epoch first")
    return plots.curves_figure(rows, f"Training curves ({ex.run_dir.name})"), {"epochs": len(rows)}


@torch.no_grad()
def figure_scale(ex: Explorer):
    """The learned output scale of a Gaussian/logistic likelihood as an image:
    exp(log_scale) per pixel; for a decoder-predicted scale, its mean over test images."""
    lik = ex.model.likelihood
    scale_kind = getattr(lik, "scale", None)
    if scale_kind is None:
        raise ValueError(f"the {ex.cfg.model.likelihood} likelihood has no scale; train with "
                         "--likelihood gaussian or logistic to get one")
    if scale_kind == "decoder":
        c = ex.cond(1000)
        d = ex.model.decode(ex.model.encode(ex.x[:1000], c).mean, c)
        scale = d.log_scale.exp().mean(0)
        what = "decoder-predicted scale, mean over 1000 test images"
    else:
        scale = lik.log_scale.exp().expand(lik.image_shape)
        what = {"fixed": "fixed scale", "global": "learned global scale", "pixel": "learned per-pixel scale"}[scale_kind]
    fig = plots.heatmap(scale[0].cpu(), f"Output scale exp(log_scale): {what}")
    return fig, {"kind": scale_kind, "min": float(scale.min()), "max": float(scale.max()),
                 "mean": float(scale.mean())}


@torch.no_grad()
def figure_transfer(ex: Explorer, n: int = 8):
    """Style transfer with a conditional model: each row encodes one test
    image (its handwriting) and decodes that z under every class; the last rows are
    class-conditional prior samples, one z per row shared across classes."""
    if not ex.model.conditional:
        raise ValueError("transfer needs a conditional model: train with --model cvae or icvae")
    if ex.cfg.data.conditions:
        raise ValueError("transfer decodes under each class label, but this run was conditioned on custom data")
    if not ex.classes:
        raise ValueError("transfer needs class labels; this dataset is unlabelled")
    k = len(ex.classes)
    n = min(n, len(ex.x))
    eye = torch.eye(k, device=ex.x.device)
    z = ex.codes(ex.x[:n])  # (n, D)
    prior = ex.model.prior().sample(3, generator=ex.gen())
    codes = torch.cat([z, prior])  # (n + 3, D)
    imgs = ex.decode_mean(codes[:, None, :].expand(-1, k, -1).reshape(-1, codes.shape[1]), eye.repeat(len(codes), 1))
    imgs = imgs.view(len(codes), k, *imgs.shape[1:])
    rows = [torch.cat([ex.x[i : i + 1], imgs[i]]) for i in range(n)]
    blank = torch.full_like(ex.x[:1], float("nan"))  # prior rows have no input image
    rows += [torch.cat([blank, imgs[n + j]]) for j in range(3)]
    labels = [f"test image {i + 1}" for i in range(n)] + [f"prior z {j + 1}" for j in range(3)]
    fig = plots.image_rows(rows, labels, "One z per row decoded under every class: the input's code, then "
                           "prior draws", ["input", *ex.classes[:k]], inch=0.75)
    return fig, {"classes": list(ex.classes), "rows": n}


FIGURES = {
    "recon": figure_recon,
    "samples": figure_samples,
    "posterior": figure_posterior,
    "manifold": figure_manifold,
    "latents": figure_latents,
    "interpolate": figure_interpolate,
    "combine": figure_combine,
    "denoise": figure_denoise,
    "curves": figure_curves,
    "scale": figure_scale,
    "transfer": figure_transfer,
}

# the options of `plot` (and `vaelab plot`) each figure takes, by the name of its parameter
FIGURE_OPTIONS = {
    "manifold": ("steps", "span", "dims"),
    "interpolate": ("steps",),
    "combine": ("weights",),
    "denoise": ("kind", "levels", "against"),
}


def plot(run_dir: str | Path, what: list[str], out: str | Path | None = None, seed: int = 0,
         device: str = "cpu", **options: Any) -> list[Path]:
    """Write NAME.png (and NAME.json with the numbers behind it) for each NAME in `what`."""
    unknown = [w for w in what if w not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    out = ensure_dir(Path(out) if out is not None else Path(run_dir) / "plots", "plot folder")
    ex = Explorer.from_run(run_dir, seed=seed, device=device)
    written = []
    for name in what:
        kwargs = {k: options[k] for k in FIGURE_OPTIONS.get(name, ()) if options.get(k) is not None}
        fig, numbers = FIGURES[name](ex, **kwargs)
        written.append(plots.save_figure(fig, out / f"{name}.png"))
        if numbers:
            write_json(out / f"{name}.json", numbers)
            written.append(out / f"{name}.json")
    return written
