"""Looking at a trained model: the notebooks' experiments as functions.

Each ``figure_*`` function takes an ``Explorer`` (a model with its test data) and
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
from vaelab.checkpoint import load_run, loaded, read_metrics
from vaelab.config import ConfigError, did_you_mean
from vaelab.corruption import add_noise
from vaelab.data import DataError
from vaelab.distributions import DiagonalGaussian, StandardNormal
from vaelab.evaluate import posterior_means
from vaelab.files import FileError, ensure_dir, write_json
from vaelab.options import SampleCommand, options_of
from vaelab.runtime import ProgressLine, resolve_device
from vaelab.sources import load_configured

__all__ = ["plot", "write_samples", "Explorer", "figure_recon", "figure_samples", "figure_posterior", "figure_manifold",
           "figure_latents", "figure_interpolate", "figure_combine", "figure_denoise", "figure_curves",
           "figure_scale", "figure_transfer", "figure_traversal", "figure_mi_matrix", "figure_resample",
           "kl_per_dimension", "prior_codes", "prior_samples", "temperature_refusal", "resample_levels", "slerp",
           "psnr", "principal_axes"]


@dataclass
class Explorer:
    """A trained model together with its test images: what every ``figure_*`` function takes.

    Make one from a run folder with ``from_run``, or directly from a model and images.

    Attributes:
        model: The model, in eval mode.
        cfg: The run's ``vaelab.config.Config``.
        x: Test images ``(N, C, H, W)`` in [0, 1] as the model is evaluated on them (binarised
            once for a Bernoulli likelihood).
        labels: Their class labels ``(N,)``; -1 where unlabelled.
        classes: The class names; ``()`` when unlabelled.
        run_dir: The run folder, if there is one (``figure_curves`` reads its metrics).
        seed: The seed of every random draw a figure makes.
        c: The test images' conditions ``(N, C')`` for a conditional model; None otherwise.
        factors: The test images' ground-truth factor codes ``(N, F)`` on a factor dataset
            (dsprites, xyobject, an array file with factors); None otherwise.
        factor_names: The F factors' names; ``()`` without factors.

    Examples:
        >>> from vaelab.explore import Explorer
        >>> ex = Explorer.from_run(run.path, n=200)
        >>> ex.x.shape, ex.labels.shape, ex.classes[:3]
        (torch.Size([200, 1, 28, 28]), torch.Size([200]), ('0', '1', '2'))
        >>> ex.codes(ex.x[:4]).shape
        torch.Size([4, 2])
    """

    model: Any
    cfg: Any
    x: torch.Tensor  # test images as evaluated (binarised / grey), (N, C, H, W)
    labels: torch.Tensor
    classes: tuple[str, ...]
    run_dir: Path | None = None
    seed: int = 0
    c: torch.Tensor | None = None  # conditions of the test images (conditional models), (N, C')
    factors: torch.Tensor | None = None  # ground-truth factor codes of the test images, (N, F)
    factor_names: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, run_dir: str | Path, n: int = 5000, seed: int = 0, device: str = "cpu") -> Explorer:
        """Load a run's model and the first `n` images of its test split.

        Args:
            run_dir: The run folder, or a loaded [vaelab.Run][vaelab.api.Run] (whose model is
                used as it is, unless `device` is another device).
            n: How many test images to keep (fewer if the split is smaller).
            seed: The seed of the figures' random draws.
            device: Where the model and images go, e.g. ``"cpu"``.

        Returns:
            An Explorer with images ``(n, C, H, W)``.
        """
        cfg, model = loaded(run_dir, device)  # a folder, or a vaelab.Run's own model
        data = load_configured(cfg.data)
        x, c, labels = model_inputs(model, cfg, data.test.head(n), len(data.classes), device).rows(0, n)
        factors = None if data.factors is None or data.test.factors is None else data.test.factors[: len(x)]
        return cls(model, cfg, x, labels, data.classes, Path(getattr(run_dir, "path", run_dir)), seed, c, factors,
                   tuple(data.factors.names) if factors is not None else ())

    def cond(self, n: int) -> torch.Tensor | None:
        """The conditions of the first `n` test images.

        Returns:
            Conditions of shape ``(n, C')``, or None for an unconditional model.
        """
        return None if self.c is None else self.c[:n]

    def cond_like(self, n: int) -> torch.Tensor | None:
        """The first test image's condition repeated `n` times, for decoding `n` made-up codes.

        Returns:
            Conditions of shape ``(n, C')``, or None for an unconditional model.
        """
        return None if self.c is None else self.c[:1].expand(n, -1)

    def gen(self, offset: int = 0) -> torch.Generator:
        """A new random generator on the images' device, seeded with ``seed + offset``."""
        return torch.Generator(device=self.x.device).manual_seed(self.seed + offset)

    @torch.no_grad()
    def codes(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior means (the code, for an AE) of images `x` ``(N, C, H, W)``: ``(N, D)``.

        Conditions `c` ``(N, C')`` default to those of the first N test images.
        """
        if c is None and self.c is not None:
            c = self.c[: len(x)]
        return posterior_means(self.model, x, c)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's mean image for each code `z` ``(N, D)``: ``(N, C, H, W)`` in [0, 1].

        Conditions `c` ``(N, C')`` default to the first test image's, repeated.
        """
        if c is None and self.c is not None:
            c = self.cond_like(len(z))
        return self.model.decode(z, c).mean.clamp(0, 1)


# ----------------------------------------------------------------------------- computations


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Interpolate between two codes along a great circle (slerp) instead of a straight line.

    Args:
        a: The start code ``(D,)``.
        b: The end code ``(D,)``.
        t: Fractions of the way ``(T,)``, 0 at `a` and 1 at `b`.

    Returns:
        The codes along the path ``(T, D)``.

    Examples:
        >>> import torch
        >>> from vaelab.explore import slerp
        >>> slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5, 1.0])).round(decimals=4)
        tensor([[1.0000, 0.0000],
                [0.7071, 0.7071],
                [0.0000, 1.0000]])
    """
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    s = torch.sin(omega)
    return (torch.sin((1 - t) * omega)[:, None] * a + torch.sin(t * omega)[:, None] * b) / s


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """Turn mean squared errors of images in [0, 1] into PSNR: 10 log10(1 / MSE), in dB.

    Args:
        mse: Mean squared errors, any shape, e.g. ``(N,)`` one per image.

    Returns:
        PSNR in dB, the same shape as `mse`.

    Examples:
        >>> import torch
        >>> from vaelab.explore import psnr
        >>> psnr(torch.tensor([0.01, 0.001]))
        tensor([20., 30.])
    """
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def principal_axes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Find the mean of a set of codes and their two directions of largest spread (PCA).

    Args:
        codes: Codes ``(N, D)``, e.g. posterior means.

    Returns:
        tuple: ``(mean, directions, stds)``, the mean ``(D,)``, the top two principal directions as
        unit rows ``(2, D)``, and the standard deviation along each ``(2,)``.

    Examples:
        >>> import torch
        >>> from vaelab.explore import principal_axes
        >>> codes = torch.randn(500, 3) * torch.tensor([5.0, 1.0, 0.1])
        >>> mean, directions, stds = principal_axes(codes)
        >>> mean.shape, directions.shape, stds.shape
        (torch.Size([3]), torch.Size([2, 3]), torch.Size([2]))
        >>> directions[0].abs().argmax().item()
        0
    """
    mean = codes.mean(0)
    _, s, v = torch.linalg.svd(codes - mean, full_matrices=False)
    return mean, v[:2], s[:2] / math.sqrt(max(1, len(codes) - 1))


# ----------------------------------------------------------------------------- figures


@torch.no_grad()
def figure_recon(ex: Explorer, n: int = 10):
    """Show test images above their reconstructions: the decoder's mean and one sample.

    The images are spread evenly over the test images held (the first and last included),
    not the first few, which in a folder are its first files by name and often alike. Each
    image is encoded to its posterior mean and decoded.

    Args:
        ex: The model and its test images.
        n: How many test images to show.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict of the
        reconstructions' mean squared error (``mse_per_image``, ``mse_mean``).

    Examples:
        >>> from vaelab.explore import Explorer, figure_recon
        >>> fig, numbers = figure_recon(Explorer.from_run(run.path, n=200), n=4)
        >>> type(fig).__name__, len(fig.axes), sorted(numbers)
        ('Figure', 12, ['mse_mean', 'mse_per_image'])
    """
    idx = torch.linspace(0, len(ex.x) - 1, min(n, len(ex.x))).round().long().to(ex.x.device)
    x, c = ex.x[idx], None if ex.c is None else ex.c[idx]
    q = ex.model.encode(x, c)
    dist = ex.model.decode(q.mean, c)
    rows = [x, dist.mean.clamp(0, 1), dist.sample(generator=ex.gen()).clamp(0, 1)]
    mse = (rows[1] - x).square().flatten(1).mean(1)
    fig = plots.image_rows(rows, ["input", "reconstruction (mean)", "reconstruction (sample)"],
                           f"Reconstructions of test images ({ex.cfg.model.model})")
    return fig, {"mse_per_image": mse.tolist(), "mse_mean": float(mse.mean())}


def _temperatures(temperature: float | tuple[float, ...] | None) -> tuple[float, ...] | None:
    """One temperature or several as a tuple, each checked to be a finite number >= 0."""
    if temperature is None:
        return None
    temps = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)
    if not temps or any(not math.isfinite(t) or t < 0 for t in temps):
        raise ConfigError(f"--temperature must be numbers >= 0, e.g. 0.7 or 0.6,0.8,1; got {temps}")
    return temps


def temperature_refusal(model) -> str | None:
    """Why `model`'s prior cannot be sampled at a temperature, or None where it can.

    The N(0, I) prior and the ladder model's levels take one; an AE has no prior, and a
    mixture or the hvae's layered prior has no one standard deviation to scale.

    Args:
        model: A trained model, e.g. ``run.model``.

    Returns:
        A phrase naming the reason (the caller adds the fix), or None.

    Examples:
        >>> from vaelab.explore import temperature_refusal
        >>> temperature_refusal(run.model) is None
        True
    """
    if hasattr(model, "top_down"):  # the ladder: each level's conditional prior scaled
        return None
    if not model.has_density:
        return "an AE has no prior to take a temperature"
    prior = model.prior()
    if isinstance(prior, StandardNormal):
        return None
    what = "a layered prior (--model hvae)" if hasattr(prior, "steps") else "a mixture (--prior mog or vamp)"
    return f"a temperature scales the N(0, I) prior or the ladder model's levels; this run's prior is {what}"


def _temperature_checked(model, temperature: float) -> None:
    """Refuse, in one line, a temperature that is not a number >= 0, or one other than 1 that the
    model's prior cannot take."""
    _temperatures(temperature)
    refusal = None if temperature == 1.0 else temperature_refusal(model)
    if refusal:
        raise ConfigError(f"{refusal}: drop --temperature")


def prior_codes(model, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw n codes from the prior with its standard deviation times `temperature`.

    The N(0, I) prior gives z = T * eps; the ladder model draws level by level, top first,
    each conditional prior p(z_l | z_>l) with its scale times T (``Ladder.prior``).
    ``model.decode`` of these codes is ``prior_samples``.

    Args:
        model: A trained model, e.g. ``run.model``.
        n: How many codes.
        temperature: The factor T >= 0 of the prior's standard deviation.
        generator: The noise of the draws.

    Returns:
        Codes of shape ``(n, D)``, D the latent size (every level side by side for a ladder).

    Raises:
        ConfigError: The model's prior takes no temperature (``temperature_refusal``).

    Examples:
        >>> from vaelab.explore import prior_codes
        >>> g = lambda: torch.Generator().manual_seed(0)
        >>> cold = prior_codes(run.model, 3, temperature=0.5, generator=g())
        >>> cold.shape, torch.equal(cold, 0.5 * prior_codes(run.model, 3, generator=g()))
        (torch.Size([3, 2]), True)
    """
    _temperature_checked(model, temperature)
    if temperature == 1.0:
        return model.prior().sample(n, generator=generator)
    if hasattr(model, "top_down"):
        return model.prior(temperature).sample(n, generator=generator)
    return temperature * model.prior().sample(n, generator=generator)


def prior_samples(model, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
                  c: torch.Tensor | None = None):
    """Decode n codes drawn from the prior with its standard deviation times `temperature`.

    Temperature 1 is the prior itself; below 1 the draws come from nearer its centre (Kingma &
    Dhariwal 2018; NVAE and VDVAE show samples at several), and 0 gives the prior's mean. It
    applies to the N(0, I) prior (z = T * eps) and to the ladder model, whose every level's
    conditional prior p(z_l | z_>l) has its scale multiplied (``Ladder.sample``). The same
    generator state gives the same noise at every temperature.

    Args:
        model: A trained model, e.g. ``run.model``.
        n: How many codes.
        temperature: The factor T >= 0 of the prior's standard deviation.
        generator: The noise of the draws.
        c: Conditions ``(n, C')`` for a conditional model.

    Returns:
        The likelihood over ``(n, C, H, W)``: take its ``mean`` or ``sample()``.

    Raises:
        ConfigError: The model has no prior that takes a temperature (an AE, a mixture prior,
            the hvae's layered prior).

    Examples:
        >>> from vaelab.explore import prior_samples
        >>> at_zero = prior_samples(run.model, 3, temperature=0.0).mean  # every code is the prior's mean
        >>> torch.equal(at_zero, run.model.decode(torch.zeros(3, 2)).mean)
        True
    """
    _temperature_checked(model, temperature)
    if temperature == 1.0:
        return model.sample(n, generator=generator, c=c)
    if hasattr(model, "top_down"):  # one top-down pass: the codes and the image together
        return model.sample(n, generator=generator, c=c, temperature=temperature)
    return model.decode(prior_codes(model, n, temperature, generator), c)


@torch.no_grad()
def figure_samples(ex: Explorer, n: int = 32, ncol: int = 8, temperature: float | tuple[float, ...] | None = None,
                   per_temperature: int = 10):
    """Show new images drawn from the model: codes z ~ p(z), each decoded two ways.

    Each of the n codes is decoded to its mean E[x|z] and to one draw x ~ p(x|z). A conditional
    model samples under the conditions of the first n test images. With a `temperature` the
    prior's standard deviation is multiplied by it (``prior_samples``); several temperatures
    give one row of decoder means each, drawn with the same noise, as NVAE and VDVAE show them.

    Args:
        ex: The model and its test images.
        n: How many codes to draw (one temperature).
        ncol: Images per row in each grid (one temperature).
        temperature: None (the prior itself), one temperature, or several.
        per_temperature: Images per row with several temperatures.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``n``, and
        ``temperature``: the temperatures when given).

    Examples:
        >>> from vaelab.explore import Explorer, figure_samples
        >>> fig, numbers = figure_samples(Explorer.from_run(run.path, n=200), n=16)
        >>> len(fig.axes), numbers
        (2, {'n': 16})
        >>> fig, numbers = figure_samples(Explorer.from_run(run.path, n=200), temperature=(0.5, 1.0), per_temperature=4)
        >>> len(fig.axes), numbers
        (8, {'n': 4, 'temperature': [0.5, 1.0]})
    """
    temps = _temperatures(temperature)
    m = ex.cfg.model
    law = {"mog": "a learned mixture of Gaussians", "vamp": "the VampPrior"}.get(m.prior, "N(0, I)")
    law = "top layer N(0, I), then p(z_j | z_j+1)" if m.model == "hvae" else law
    law = "p(z_L), then p(z_l | z_>l) level by level" if hasattr(ex.model, "top_down") else law
    if temps is not None and len(temps) > 1:
        n = per_temperature
        rows = [prior_samples(ex.model, n, t, ex.gen(), ex.cond(n)).mean for t in temps]  # the same noise per row
        title = (f"Samples from the prior at several temperatures, z ~ {law} with its standard deviation times T "
                 f"({m.model}); each column draws the same noise, decoder means E[x|z]")
        fig = plots.image_rows(rows, [f"T = {t:g}" for t in temps], title)
        return fig, {"n": n, "temperature": list(temps)}
    g = ex.gen()
    prior = prior_samples(ex.model, n, 1.0 if temps is None else temps[0], g, ex.cond(n))
    panels = [("decoder mean E[x|z]", prior.mean), ("one draw x ~ p(x|z)", prior.sample(generator=g))]
    title = f"{n} samples from the prior, z ~ {law} ({m.model})"
    if temps is not None:
        title += f", its standard deviation times T = {temps[0]:g}"
    if not ex.model.has_density:
        title += "; an AE has no prior: its codes were never made to look like these"
    if ex.c is not None:
        title += f"; c: the conditions of test images 1-{n}"
    return plots.image_panels(panels, ncol, title), {"n": n, **({} if temps is None else {"temperature": list(temps)})}


@torch.no_grad()
def figure_posterior(ex: Explorer, n: int = 8, draws: int = 6):
    """Show how uncertain the encoder is: each test image beside decodings of codes from q(z|x).

    Each row is a test image, then the decoder's means for `draws` codes drawn from its
    posterior; how much they differ shows the posterior's spread.

    Args:
        ex: The model and its test images.
        n: How many test images, one per row.
        draws: Codes drawn per image.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict with the mean pixel
        standard deviation across draws (``pixel_std_per_image``, ``pixel_std_mean``) and ``draws``.

    Examples:
        >>> from vaelab.explore import Explorer, figure_posterior
        >>> fig, numbers = figure_posterior(Explorer.from_run(run.path, n=200), n=2, draws=3)
        >>> len(fig.axes), sorted(numbers)
        (8, ['draws', 'pixel_std_mean', 'pixel_std_per_image'])
    """
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


def _test_codes(ex: Explorer, figure: str, chunk: int = 2000) -> torch.Tensor:
    """The posterior means of all of `ex`'s test images (N, D), with progress lines in a log."""
    line = ProgressLine(f"{figure}: encoding {len(ex.x):,} test images", len(ex.x))
    parts = []
    for i in range(0, len(ex.x), chunk):
        parts.append(ex.codes(ex.x[i : i + chunk], None if ex.c is None else ex.c[i : i + chunk]))
        line.update(len(parts[-1]))
    return torch.cat(parts)


@torch.no_grad()
def figure_manifold(ex: Explorer, steps: int = 15, span: float = 3.0, dims: tuple[int, int] | None = None):
    """Decode a regular grid of codes to see what each region of the latent space draws.

    For a 2-D latent the grid covers [-span, span]^2. For more dimensions it covers two
    chosen dimensions (the others 0) or, by default, the top two principal directions of the
    test images' codes, to +-span standard deviations.

    Args:
        ex: The model and its test images.
        steps: Grid points per side.
        span: How far the grid reaches (in latent units, or standard deviations along the
            principal directions).
        dims: Two latent dimensions ``(i, j)`` to vary; None: see above.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict describing the grid
        (``steps``; ``dims`` and ``span``, or ``pca_std`` and ``span_std``).

    Examples:
        >>> from vaelab.explore import Explorer, figure_manifold
        >>> fig, numbers = figure_manifold(Explorer.from_run(run.path, n=200), steps=5)
        >>> len(fig.axes), numbers
        (1, {'dims': [0, 1], 'span': 3.0, 'steps': 5})
    """
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
        mean, v, sd = principal_axes(_test_codes(ex, "manifold figure"))
        z = mean + gx.flatten()[:, None] * sd[0] * v[0] + gy.flatten()[:, None] * sd[1] * v[1]
        axes = ("1st principal direction (std)", "2nd principal direction (std)")
        info = {"pca_std": sd.tolist(), "span_std": span}
    images = ex.decode_mean(z)
    fig = plots.manifold_figure(images, steps, f"Latent manifold: decoded grid ({d}-D latent)", axes, (-span, span))
    return fig, {**info, "steps": steps}


@torch.no_grad()
def figure_latents(ex: Explorer):
    """Scatter the test images' posterior means, coloured by label.

    A 2-D latent is drawn as it is; more dimensions are projected on their top two principal
    directions.

    Args:
        ex: The model and its test images.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``n`` points,
        ``projection``: ``identity`` or ``pca``).

    Examples:
        >>> from vaelab.explore import Explorer, figure_latents
        >>> fig, numbers = figure_latents(Explorer.from_run(run.path, n=200))
        >>> len(fig.axes), numbers
        (1, {'n': 200, 'projection': 'identity'})
    """
    codes = _test_codes(ex, "latents figure")
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
    """Decode paths between the codes of pairs of test images, straight and spherical.

    Each pair gets a row along the straight line between its posterior means and a row along
    the great circle (``slerp``).

    Args:
        ex: The model and its test images.
        pairs: How many pairs of test images (1, 2), (3, 4), ...
        steps: Images along each path, both ends included.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``steps``, ``pairs``).

    Examples:
        >>> from vaelab.explore import Explorer, figure_interpolate
        >>> fig, numbers = figure_interpolate(Explorer.from_run(run.path, n=200), pairs=1, steps=5)
        >>> len(fig.axes), numbers
        (10, {'steps': 5, 'pairs': 1})
    """
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
    """Make new images by decoding weighted sums of test images' codes.

    Each row shows k test images and the decoding of sum_i w_i z_i of their posterior means.

    Args:
        ex: The model and its test images.
        weights: The k weights w_i, one per image combined.
        groups: How many rows, each combining the next k test images.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``weights``, ``groups``).

    Examples:
        >>> from vaelab.explore import Explorer, figure_combine
        >>> fig, numbers = figure_combine(Explorer.from_run(run.path, n=200), groups=2)
        >>> len(fig.axes), numbers
        (6, {'weights': [0.5, 0.5], 'groups': 2})
    """
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
    """Corrupt test images with noise, reconstruct them, and compare with the clean images.

    Shows rows clean | noisy | reconstructed at the middle noise level, above PSNR against
    noise level for the noisy input and the reconstruction. Models in `against` are run on
    the same images and the same noisy copies and drawn side by side, e.g. a model trained
    with ``--denoise`` next to one trained on clean images.

    Args:
        ex: The model and its test images.
        kind: The noise: ``"uniform"``, ``"salt-pepper"`` or ``"gaussian"``.
        levels: The noise levels, each in (0, 1).
        n_show: Images shown per row.
        n_eval: Test images the numbers are measured on.
        against: More models to compare, as run folders or Explorers.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict: ``noise``, ``n``,
        ``levels`` (the first model's table of MSE and PSNR per level) and ``models`` (a table
        per model, with ``psnr_recon_clean``, the PSNR of its reconstruction of the clean images).

    Raises:
        ValueError: A model in `against` is evaluated on other test images.

    Examples:
        >>> from vaelab.explore import Explorer, figure_denoise
        >>> ex = Explorer.from_run(run.path, n=200)
        >>> fig, numbers = figure_denoise(ex, levels=(0.1, 0.3), n_show=4, n_eval=100)
        >>> len(fig.axes), sorted(numbers), [row["level"] for row in numbers["levels"]]
        (13, ['levels', 'models', 'n', 'noise'], [0.1, 0.3])
    """
    models = [ex, *(o if isinstance(o, Explorer) else Explorer.from_run(o, n=len(ex.x), seed=ex.seed,
                                                                        device=str(ex.x.device)) for o in against)]
    clean = ex.x[:n_eval]
    for other in models[1:]:
        if other.x.shape[1:] != clean.shape[1:] or not torch.equal(other.x[: len(clean)], clean):
            raise ValueError(f"{other.run_dir} is evaluated on other test images than {ex.run_dir} (dataset or "
                             "binarization differ); the denoising figure compares models on the same images")
    tables: list[list[dict[str, float]]] = [[] for _ in models]
    shown = None
    line = ProgressLine(f"denoise figure: reconstructing {len(clean):,} test images", (len(levels) + 1) * len(models),
                        "passes")
    for i, level in enumerate(levels):
        noisy = add_noise(clean, kind, level, ex.gen(i))
        mse_noisy = (noisy - clean).square().flatten(1).mean(1)
        recons = []
        for m in models:
            recons.append(_reconstruct(m, noisy))
            line.update(1)
        for table, recon in zip(tables, recons):
            mse_recon = (recon - clean).square().flatten(1).mean(1)
            table.append({"level": level, "mse_noisy": float(mse_noisy.mean()), "mse_recon": float(mse_recon.mean()),
                          "psnr_noisy": float(psnr(mse_noisy).mean()), "psnr_recon": float(psnr(mse_recon).mean())})
        if i == len(levels) // 2:
            shown = (level, clean[:n_show], noisy[:n_show], [r[:n_show] for r in recons])
    labels = [_denoise_label(m) for m in models]
    title = None
    if not any(m.cfg.train.denoise for m in models):  # say what the figure shows: no model learnt to denoise
        title = (f"Noise removal by {'models' if len(models) > 1 else 'a ' + ex.cfg.model.model} trained on clean "
                 "images only (no --denoise): clean | noisy | reconstructed, each row's PSNR against the clean "
                 "images. The grey line is the noisy input: a reconstruction below it made the image worse. A "
                 "model trained with --denoise learns to remove noise")
    fig = plots.denoise_figure(shown[1], shown[2], shown[3], labels, tables, plots.DenoiseView(kind, shown[0], title))
    # the reconstruction of the clean image: about the best a model can do from a noisy one
    clean_psnr = []
    for m in models:
        clean_psnr.append(float(psnr((_reconstruct(m, clean) - clean).square().flatten(1).mean(1)).mean()))
        line.update(1)
    per_model = [{"run": None if m.run_dir is None else str(m.run_dir), "model": m.cfg.model.model,
                  "denoise": m.cfg.train.denoise, "psnr_recon_clean": p, "levels": t}
                 for m, p, t in zip(models, clean_psnr, tables)]
    return fig, {"noise": kind, "n": len(clean), "levels": tables[0], "models": per_model}


def figure_curves(ex: Explorer):
    """Plot the training curves of the run's ``metrics.jsonl``: loss terms and test ELBO per epoch.

    Args:
        ex: An Explorer made from a run folder.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``epochs``).

    Raises:
        vaelab.files.FileError: The run has no epoch records yet.

    Examples:
        >>> from vaelab.explore import Explorer, figure_curves
        >>> fig, numbers = figure_curves(Explorer.from_run(run.path, n=200))
        >>> type(fig).__name__, numbers
        ('Figure', {'epochs': 1})
    """
    rows = read_metrics(ex.run_dir)
    if not rows:
        raise FileError(f"{ex.run_dir / 'metrics.jsonl'} holds no epoch records; train at least one epoch first")
    return plots.curves_figure(rows, f"Training curves ({ex.run_dir.name})"), {"epochs": len(rows)}


@torch.no_grad()
def figure_scale(ex: Explorer):
    """Show the output scale of a Gaussian or logistic likelihood per pixel, exp(log_scale).

    A scale the decoder predicts is averaged over up to 1000 test images.

    Args:
        ex: The model and its test images; its likelihood must have a scale.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``kind`` of scale,
        its ``min``, ``max`` and ``mean``).

    Raises:
        ValueError: The likelihood has no scale (Bernoulli).

    Examples:
        >>> from vaelab.config import Config
        >>> from vaelab.explore import Explorer, figure_scale
        >>> from vaelab.models import build_model
        >>> cfg = Config().replace(model={"net": "mlp", "hidden": [16], "latent_dim": 2, "likelihood": "logistic",
        ...                               "likelihood_scale": "pixel"})
        >>> model = build_model(cfg.model, (1, 28, 28))  # untrained: every scale starts at 0.1
        >>> ex = Explorer(model, cfg, run.images("test", 10), torch.zeros(10, dtype=torch.long), ())
        >>> fig, numbers = figure_scale(ex)
        >>> numbers["kind"], round(numbers["mean"], 3)
        ('pixel', 0.1)
    """
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
    """Transfer style with a conditional model: decode one code under every class.

    Each row encodes a test image (its handwriting, say) and decodes that z under each class
    label; three more rows do the same for codes drawn from the prior.

    Args:
        ex: A conditional model (cvae, icvae) trained on class labels, with its test images.
        n: How many test images, one per row.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict (``classes``, ``rows``).

    Raises:
        ValueError: The model is not conditional, was conditioned on other side information,
            or the data are unlabelled.

    Examples:
        >>> from vaelab.config import Config
        >>> from vaelab.explore import Explorer, figure_transfer
        >>> from vaelab.models import build_model
        >>> cfg = Config().replace(model={"model": "cvae", "net": "mlp", "hidden": [16], "latent_dim": 2,
        ...                               "likelihood": "bernoulli"})
        >>> model = build_model(cfg.model, (1, 28, 28), cond_dim=10)  # untrained, to show the layout
        >>> labels = torch.tensor([7, 2, 1])
        >>> c = torch.nn.functional.one_hot(labels, 10).float()
        >>> ex = Explorer(model, cfg, run.images("test", 3), labels, tuple("0123456789"), c=c)
        >>> fig, numbers = figure_transfer(ex, n=3)
        >>> numbers["rows"], len(fig.axes)
        (3, 66)
    """
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


def _spread(ex: Explorer, n: int) -> torch.Tensor:
    """Indices of n test images spread evenly over those held, the first and last included."""
    return torch.linspace(0, len(ex.x) - 1, max(1, min(n, len(ex.x)))).round().long().to(ex.x.device)


@torch.no_grad()
def kl_per_dimension(model, x: torch.Tensor, c: torch.Tensor | None = None, chunk: int = 1000) -> torch.Tensor:
    """The mean KL(q(z_d|x) || N(0, 1)) of each latent dimension d over images x, in nats.

    The KL of a diagonal Gaussian posterior to the N(0, I) prior is a sum over dimensions
    (Kingma & Welling 2014, appendix B); each term says how much that dimension carries about
    the image. A dimension with mean KL near 0 is unused (collapsed).

    Args:
        model: A VAE with a diagonal Gaussian posterior and the N(0, I) prior (vae, cvae,
            icvae, without flows or a mixture prior).
        x: Images ``(N, C, H, W)`` as the model sees them.
        c: Their conditions ``(N, C')`` for a conditional model.
        chunk: Images per encoder call.

    Returns:
        The mean KL per dimension ``(D,)``.

    Raises:
        ConfigError: The model's KL does not split per dimension; the message says what to use.

    Examples:
        >>> from vaelab.explore import kl_per_dimension
        >>> kl = kl_per_dimension(run.model, run.images("test", 100))
        >>> kl.shape, bool((kl >= 0).all())
        (torch.Size([2]), True)
    """
    if hasattr(model, "top_down"):
        raise ConfigError("the ladder's latents are levels whose every dimension depends on the levels above, so "
                          "they do not sort by KL one by one: use --what resample (keep levels of an image, redraw "
                          "the rest)")
    if not model.has_density:
        raise ConfigError("an AE has no KL to sort its latent dimensions by: use --what manifold, or train a VAE")
    parts = []
    for i in range(0, len(x), chunk):
        q = model.encode(x[i : i + chunk], None if c is None else c[i : i + chunk])
        if not isinstance(q, DiagonalGaussian) or not isinstance(model.prior(), StandardNormal):
            what = ("flows" if getattr(model, "flows", None) is not None else
                    "a layered prior (--model hvae)" if hasattr(model.prior(), "steps") else
                    "a mixture prior (--prior mog or vamp)")
            raise ConfigError(f"the KL splits per latent dimension only for a Gaussian posterior under the N(0, I) "
                              f"prior, and this run has {what}: train without it, or use --what manifold")
        parts.append(q.kl_standard_normal_per_dim().double().sum(0))
    return (torch.stack(parts).sum(0) / len(x)).float()


@torch.no_grad()
def figure_traversal(ex: Explorer, rows: int = 10, images: int = 3, steps: int = 7, span: float = 3.0):
    """Traverse one latent dimension at a time: the classic disentanglement figure.

    Each row sets one latent dimension to `steps` values in [-span, span] (the prior's
    +-span standard deviations), the others held at a test image's posterior mean, and decodes
    (Higgins et al. 2017; Burgess et al. 2018). Rows are the dimensions with the largest mean
    KL(q(z_d|x) || N(0, 1)) over up to 1,000 test images, most informative first; a dimension
    with KL near 0 is unused and changes nothing. Blocks of columns are the `images` test
    images, spread over the test split; the top row shows each image in its block's middle.

    Args:
        ex: A VAE with a Gaussian posterior and the N(0, I) prior, and its test images.
        rows: The most informative dimensions shown (at most D).
        images: Test images, one block of columns each.
        steps: Values per traversal.
        span: The largest value, in prior standard deviations.

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict: ``dims`` (the
        dimensions shown, top row first), ``kl`` (their mean KL in nats), ``kl_per_dim`` (every
        dimension's), ``values``, ``images`` (test image indices) and ``posterior_means``
        (the images' means of the dimensions shown, ``(images, rows)``).

    Raises:
        ConfigError: The model's KL does not split per dimension (an AE, the ladder, flows,
            a mixture prior, the hvae).

    Examples:
        >>> from vaelab.explore import Explorer, figure_traversal
        >>> fig, numbers = figure_traversal(Explorer.from_run(run.path, n=200), images=2, steps=5)
        >>> len(numbers["dims"]), numbers["values"]
        (2, [-3.0, -1.5, 0.0, 1.5, 3.0])
        >>> numbers["kl"] == sorted(numbers["kl"], reverse=True)
        True
    """
    if rows < 1 or images < 1 or steps < 1 or not span > 0:
        raise ConfigError("the traversal needs --rows, --images and --steps of at least 1 and a --span above 0")
    kl = kl_per_dimension(ex.model, ex.x[:1000], ex.cond(1000))
    d = len(kl)
    order = kl.argsort(descending=True, stable=True)[: min(rows, d)]
    idx = _spread(ex, images)
    x, c = ex.x[idx], None if ex.c is None else ex.c[idx]
    mu = ex.model.encode(x, c).mean  # (S, D)
    values = torch.linspace(-span, span, steps, device=ex.x.device)
    r, n_img = len(order), len(idx)
    z = mu[None, :, None, :].repeat(r, 1, steps, 1)  # (R, S, T, D)
    for i, dim in enumerate(order.tolist()):
        z[i, :, :, dim] = values
    cond = None if c is None else c[None, :, None, :].expand(r, -1, steps, -1).reshape(-1, c.shape[1])
    imgs = ex.decode_mean(z.reshape(-1, d), cond).view(r, n_img, steps, *x.shape[1:])
    blank = torch.full_like(x[:1], float("nan"))

    def row(blocks: list[torch.Tensor]) -> torch.Tensor:  # image blocks with one empty cell between them
        return torch.cat([part for j, b in enumerate(blocks) for part in ([blank, b] if j else [b])])

    top = row([torch.cat([blank.expand(steps // 2, *x.shape[1:]), x[j : j + 1],
                          blank.expand(steps - steps // 2 - 1, *x.shape[1:])]) for j in range(n_img)])
    grid = [top] + [row(list(imgs[i])) for i in range(r)]
    labels = ["input"] + [f"z{dim}\nKL {kl[dim]:.2f}" for dim in order.tolist()]
    col_labels = [lab for j in range(n_img) for lab in ([""] if j else []) + [f"{v:+.1f}" for v in values.tolist()]]
    title = (f"Latent traversals ({ex.cfg.model.model}): each row sets one dimension to {steps} values in "
             f"[-{span:g}, {span:g}], the others at each input's posterior mean; the {r} of {d} dimensions with the "
             "largest mean KL, largest first")
    fig = plots.image_rows(grid, labels, title, col_labels, inch=0.6)
    return fig, {"dims": order.tolist(), "kl": kl[order].tolist(), "kl_per_dim": kl.tolist(), "values": values.tolist(),
                 "images": idx.tolist(), "posterior_means": mu[:, order].tolist()}


MAX_MI_DIMS = 40  # dimensions the mutual-information matrix shows at most, those that share most with a factor


@torch.no_grad()
def figure_mi_matrix(ex: Explorer, bins: int | None = None):
    """Draw how much each latent dimension tells about each ground-truth factor.

    The matrix of mutual information I(z_d; v_k) between each dimension's posterior mean
    (binned, as MIG does: ``vaelab.disentangle.mutual_information_matrix``) and each factor,
    divided by the factor's entropy: 1 when the dimension determines the factor. A disentangled
    code has one bright cell per factor row, in a column of its own; MIG is the mean over
    factors of the gap between a row's two brightest cells. Computed on the test images held
    (up to 5,000 by default); with more than 40 dimensions, the 40 that share most with a factor.

    Args:
        ex: A model trained on a factor dataset (dsprites, xyobject, or an array file with
            factors), and its test images.
        bins: Bins per dimension (default MIG's, 20).

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict:
        ``mutual_information`` and ``normalized`` ``(D, F)``, ``entropy`` ``(F,)``, ``factors``
        (names), ``dims`` (those drawn), ``mig``, ``bins``, ``points``, ``sklearn_version``.

    Raises:
        vaelab.data.DataError: The data have no ground-truth factors.

    Examples:
        >>> import numpy as np
        >>> from vaelab.config import Config
        >>> from vaelab.explore import Explorer, figure_mi_matrix
        >>> from vaelab.models import build_model
        >>> cfg = Config().replace(model={"net": "mlp", "hidden": [16], "latent_dim": 3, "likelihood": "bernoulli"})
        >>> model = build_model(cfg.model, (1, 28, 28))
        >>> x = run.images("test", 300)
        >>> factors = torch.stack([x.mean((1, 2, 3)) > x.mean(), x[:, 0, 14, 14] > 0.5], 1).long()
        >>> ex = Explorer(model, cfg, x, torch.zeros(300, dtype=torch.long), (), factors=factors,
        ...               factor_names=("ink", "centre"))
        >>> fig, numbers = figure_mi_matrix(ex)
        >>> numbers["factors"], np.asarray(numbers["normalized"]).shape
        (['ink', 'centre'], (3, 2))
    """
    from vaelab.disentangle import MIG_BINS, mutual_information_matrix, require_sklearn

    if ex.factors is None:
        raise DataError(f"the mi-matrix figure needs ground-truth factors, but {ex.cfg.data.dataset} has none; train "
                        "on a factor dataset (--dataset dsprites or xyobject) or an array file with factors")
    require_sklearn("the mi-matrix figure")
    bins = bins or MIG_BINS
    codes = _test_codes(ex, "mi-matrix figure").double().cpu().numpy()
    r = mutual_information_matrix(codes, ex.factors.cpu().numpy(), bins)
    names = [ex.factor_names[k] for k in r.pop("factors")]
    norm = torch.tensor(r["normalized"], dtype=torch.float64)  # (D, F)
    d = len(norm)
    dims = sorted(norm.max(1).values.argsort(descending=True, stable=True)[:MAX_MI_DIMS].tolist())
    top = norm.sort(0, descending=True).values
    mig = float((top[0] - top[1]).mean()) if d > 1 else None
    title = (f"Mutual information between each latent dimension's posterior mean and each factor, divided by the "
             f"factor's entropy ({bins} bins, {len(codes):,} test images); MIG "
             + ("n/a (one dimension)" if mig is None else f"{mig:.3f}"))
    if len(dims) < d:
        title += f"; the {len(dims)} of {d} dimensions that share most with a factor"
    fig = plots.matrix_figure(norm[dims].T.numpy(), names, [f"z{j}" for j in dims], title,
                              "I(z_d; factor) / H(factor)")
    return fig, {**r, "factors": names, "dims": dims, "mig": mig}


def _ladder(model, what: str):
    """`model` if it has levels of latents with a top-down posterior, else a ConfigError."""
    if not hasattr(model, "top_down"):
        raise ConfigError(f"{what} needs levels of latents with a top-down posterior: train with --model ladder")
    return model


@torch.no_grad()
def resample_levels(model, x: torch.Tensor, keep: tuple[int, ...], draws: int = 1,
                    generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Keep some levels of images' codes and draw the others from the prior, with a ladder model.

    The top-down pass runs from the top level down: a kept level is the posterior mean of
    q(z_l | x, z_>l), which reads the image and whatever was drawn above it; any other level
    is drawn from the conditional prior p(z_l | z_>l), its scale times `temperature`. Keeping
    every level is the reconstruction (the posterior means all the way, ``decode(encode(x).mean)``);
    keeping none is a prior sample. ``keep=(1, ..., k)`` keeps the detail next to the data and
    redraws the global levels; ``keep=(k+1, ..., L)`` keeps the global ones and redraws the detail.

    Args:
        model: A ladder model (``--model ladder``).
        x: Images ``(B, C, H, W)``.
        keep: The levels kept, 1 = next to the data.
        draws: Draws per image.
        generator: The noise of the draws.
        temperature: The prior's scale factor for the levels drawn.

    Returns:
        Decoder means ``(draws, B, C, H, W)``.

    Raises:
        ConfigError: The model has no levels, or a level is out of range.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.explore import resample_levels
        >>> from vaelab.models import build_model
        >>> model = build_model(ModelConfig(model="ladder", levels="2x4x4,3", hidden=(8,), res_blocks=0), (1, 8, 8))
        >>> x = torch.rand(2, 1, 8, 8)
        >>> resample_levels(model, x, keep=(1,), draws=3).shape
        torch.Size([3, 2, 1, 8, 8])
        >>> torch.allclose(resample_levels(model, x, keep=(1, 2))[0], model.decode(model.encode(x).mean).mean)
        True
    """
    _ladder(model, "resampling levels")
    levels = len(model.sizes)
    bad = [k for k in keep if not 1 <= k <= levels]
    if bad:
        raise ConfigError(f"level {bad[0]} is out of range: this model has levels 1 to {levels}")
    b = len(x)
    feats = [f.repeat(draws, *([1] * (f.dim() - 1))) for f in model.bottom_up(x)]  # row s * B + i: draw s of image i
    eps = torch.randn((draws * b, model.latent_dim), generator=generator, device=x.device)
    for level, part in enumerate(eps.split(model.sizes, -1), 1):
        if level in keep:
            part.zero_()  # a kept level at its posterior mean
    dist, _ = model.top_down(draws * b, feats, eps=eps, temperature=temperature, keep=tuple(keep))
    return dist.mean.clamp(0, 1).view(draws, b, *x.shape[1:])


@torch.no_grad()
def figure_resample(ex: Explorer, images: int = 4, draws: int = 3, temperature: float | tuple[float, ...] | None = None):
    """Keep levels 1..k of an image and redraw the rest, for k from every level down to none.

    Each row is a test image, then blocks of columns for k = L (the reconstruction: every level
    its posterior mean), L-1, ..., 0 (a prior sample): levels 1..k (next to the data) are the
    image's posterior means given what was drawn above, levels k+1..L are drawn from the prior
    (``resample_levels``), `draws` times. How much an image survives as k falls shows what
    each level holds (Maaløe et al. 2019, BIVA; Havtorn et al. 2021).

    Args:
        ex: A ladder model and its test images.
        images: Test images, one row each, spread over the test split.
        draws: Draws per k below L.
        temperature: The prior's scale factor for the levels drawn (one number; default 1).

    Returns:
        tuple: ``(figure, numbers)``, a matplotlib Figure and a JSON-able dict: ``keep`` (the k of
        each block), ``levels``, ``draws``, ``temperature``, ``images`` (test image indices),
        ``pixel_std`` (per k, the mean pixel standard deviation across draws) and ``mse`` (per
        k, the mean squared error to the input).

    Raises:
        ConfigError: The model has no levels (use --model ladder), or several temperatures.

    Examples:
        >>> from vaelab.config import Config
        >>> from vaelab.explore import Explorer, figure_resample
        >>> from vaelab.models import build_model
        >>> cfg = Config().replace(model={"model": "ladder", "levels": "2x7x7,3", "hidden": [8], "res_blocks": 0})
        >>> model = build_model(cfg.model, (1, 28, 28))
        >>> ex = Explorer(model, cfg, run.images("test", 10), torch.zeros(10, dtype=torch.long), ())
        >>> fig, numbers = figure_resample(ex, images=2, draws=2)
        >>> numbers["keep"], numbers["pixel_std"][0]
        ([2, 1, 0], 0.0)
    """
    model = _ladder(ex.model, "the resample figure")
    temps = _temperatures(temperature) or (1.0,)
    if len(temps) > 1:
        raise ConfigError("the resample figure takes one --temperature, e.g. 0.8")
    levels = len(model.sizes)
    idx = _spread(ex, images)
    x = ex.x[idx]
    blank = torch.full_like(x[:1], float("nan"))
    blocks, stds, mses = [], [], []
    for k in range(levels, -1, -1):
        n = 1 if k == levels else draws  # every level kept: all draws are the reconstruction
        out = resample_levels(model, x, tuple(range(1, k + 1)), n, ex.gen(k), temps[0])  # (n, B, C, H, W)
        blocks.append(out)
        stds.append(float(out.std(0, unbiased=False).mean()) if n > 1 else 0.0)
        mses.append(float((out - x).square().mean()))
    rows = [torch.cat([x[i : i + 1]] + [part for out in blocks for part in (blank, out[:, i])]) for i in range(len(x))]
    col_labels = ["input"] + [lab for k, out in zip(range(levels, -1, -1), blocks)
                              for lab in ["", *(["all kept"] if k == levels else [f"k = {k}"] * len(out))]]
    t = f" at T = {temps[0]:g}" if temps[0] != 1 else ""
    title = (f"Keep levels 1..k of each image (posterior means), redraw levels k+1..{levels} from the prior{t}: "
             f"k = {levels} is the reconstruction, k = 0 a prior sample; {draws} draws per k (level 1 is next to "
             "the data)")
    fig = plots.image_rows(rows, [f"test image {int(i)}" for i in idx], title, col_labels, inch=0.6)
    return fig, {"keep": list(range(levels, -1, -1)), "levels": levels, "draws": draws, "temperature": temps[0],
                 "images": idx.tolist(), "pixel_std": stds, "mse": mses}


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
    "traversal": figure_traversal,
    "mi-matrix": figure_mi_matrix,
    "resample": figure_resample,
}

# the options of `plot` (and `vaelab plot`) each figure takes, by the name of its parameter
FIGURE_OPTIONS = {
    "manifold": ("steps", "span", "dims"),
    "interpolate": ("steps",),
    "combine": ("weights",),
    "denoise": ("kind", "levels", "against"),
    "samples": ("temperature",),
    "traversal": ("rows", "images", "steps", "span"),
    "resample": ("images", "temperature"),
}


def write_samples(run_dir: str | Path, out: str | Path | None = None, options: SampleCommand | None = None,
                  **settings: Any) -> Path:
    """Decode `n` draws z ~ p(z) of a run and write them as a PNG grid, as ``vaelab sample`` does.

    Args:
        run_dir: The run folder.
        out: The .png file to write (default ``RUN_DIR/prior_samples.png``).
        options: a ``vaelab.options.SampleCommand`` (``vaelab sample``'s flags),
            or its fields as keywords: ``n`` (how many samples), ``mode`` (``"mean"``: the
            decoder's means; ``"sample"``: draws x ~ p(x|z)), ``seed``, ``device`` and
            ``temperature`` (the prior's standard deviation times T >= 0, ``prior_samples``:
            the ladder model's every level, or the N(0, I) prior).

    Returns:
        The path written.

    Raises:
        ConfigError: `out` does not name a .png file, or the model's prior takes no temperature.

    Examples:
        >>> from vaelab.explore import write_samples
        >>> write_samples(run.path, tmp + "/grid.png", n=4).name
        'grid.png'
    """
    o = options_of(SampleCommand, options, **settings)
    out = Path(out) if out else Path(run_dir) / "prior_samples.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    _, model = load_run(run_dir, resolve_device(o.device))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(o.seed)
    with torch.no_grad():
        dist = prior_samples(model, o.n, o.temperature, gen)
        images = dist.mean if o.mode == "mean" else dist.sample(generator=gen)
    ensure_dir(out.parent, "output folder")
    plots.save_png(plots.image_grid(images), out)
    return out


def plot(run_dir: str | Path, what: list[str], out: str | Path | None = None, seed: int = 0,
         device: str = "cpu", **options: Any) -> list[Path]:
    """Draw figures of a run and write them as files, as ``vaelab plot`` does.

    For each name in `what`, writes ``NAME.png`` and, where the figure has numbers,
    ``NAME.json`` with them. The names are those of the ``figure_*`` functions: ``recon``,
    ``samples``, ``posterior``, ``manifold``, ``latents``, ``interpolate``, ``combine``,
    ``denoise``, ``curves``, ``scale``, ``transfer``, ``traversal``, ``mi-matrix``, ``resample``.
    To get a figure without writing it, use ``run.plot(name)`` or the ``figure_*`` function.

    Args:
        run_dir: The run folder.
        what: The names of the figures to draw.
        out: The folder to write to; None writes to ``RUN_DIR/plots``.
        seed: The seed of the figures' random draws.
        device: Where the model runs, e.g. ``"cpu"``.
        **options: Options of the figures that take them: ``steps``, ``span``, ``dims``
            (manifold), ``steps`` (interpolate), ``weights`` (combine), ``kind``, ``levels``,
            ``against`` (denoise), ``temperature`` (samples, resample), ``rows``, ``images``,
            ``steps``, ``span`` (traversal), ``images`` (resample).

    Returns:
        The paths written, in order.

    Raises:
        ValueError: A name is not a known figure.

    Examples:
        >>> from vaelab.explore import plot
        >>> paths = plot(run.path, ["samples", "manifold"], out=tmp, steps=5)
        >>> [p.name for p in paths]
        ['samples.png', 'samples.json', 'manifold.png', 'manifold.json']
    """
    unknown = [w for w in what if w not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}"
                         f"{did_you_mean(unknown[0], FIGURES)}")
    out = ensure_dir(Path(out) if out is not None else Path(run_dir) / "plots", "plot folder")
    ex = Explorer.from_run(run_dir, seed=seed, device=device)
    written = []
    line = ProgressLine(f"drawing figures of {Path(run_dir).name}", len(what), "figures")
    for name in what:
        kwargs = {k: options[k] for k in FIGURE_OPTIONS.get(name, ()) if options.get(k) is not None}
        fig, numbers = FIGURES[name](ex, **kwargs)
        written.append(plots.save_figure(fig, out / f"{name}.png"))
        if numbers:
            write_json(out / f"{name}.json", numbers)
            written.append(out / f"{name}.json")
        line.update(1)
    return written
