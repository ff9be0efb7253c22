"""A deep top-down hierarchical VAE with spatial latents: the Ladder VAE / NVAE / VDVAE family.

Generation runs top-down, p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_>1) p(x | z); inference
shares that top-down path, q(z_l | x, z_>l), reading the image through a deterministic
bottom-up pass (Sønderby et al. 2016; Kingma et al. 2016's bidirectional inference; Vahdat &
Kautz 2020, NVAE; Child 2021, VDVAE). One top-down state h carries everything above a level:
at level l a prior head reads h, a posterior head reads h and the bottom-up features of that
level, z_l is drawn and projected back into h, and residual cells follow (VDVAE's DecBlock).

A level is spatial, C x H x W, or a vector of D values, held as D x 1 x 1 so that every level
is a feature map; vectors sit above the spatial levels. A code is every level flattened and
concatenated, z_1 (next to the data) first: (..., D) with D = sum of the levels' sizes, so the
shared model interface (``encode``, ``decode``, ``prior``, ``log_weights``) holds.

Stabilisers: weight normalisation of every convolution (Salimans & Kingma 2016; as Havtorn et
al. 2021), the posterior parametrised relative to the prior with bounded log-scales (NVAE:
mean = prior mean + delta, log-scale = prior log-scale + a delta soft-clamped to +-5),
residual branches that start small, and in training KL warm-up, free bits per level and
gradient skipping (``vaelab.config.LADDER_RECIPE``).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from vaelab.config import AUTO, ConfigError, ModelConfig, check_levels, choose
from vaelab.distributions import LIKELIHOODS, SCALES, DiagonalGaussian
from vaelab.nets import ACTIVATIONS
from vaelab.noise import normal_noise
from vaelab.objectives import Objective, Step

__all__ = ["Ladder", "Level", "LadderPosterior", "LadderPrior", "soft_clamp"]

LOG_SCALE_BOUND = 5.0  # log-scales stay within +-5 (NVAE's soft clamp)


def soft_clamp(x: torch.Tensor, bound: float = LOG_SCALE_BOUND) -> torch.Tensor:
    """bound * tanh(x / bound): the identity near 0, never beyond +-bound (NVAE's soft clamp).

    Args:
        x: Any tensor, e.g. log-scales (N, D).
        bound: The largest magnitude of the result.

    Returns:
        A tensor of x's shape.

    Examples:
        >>> from vaelab.ladder import soft_clamp
        >>> soft_clamp(torch.tensor([0.0, 1.0, 100.0]))
        tensor([0.0000, 0.9869, 5.0000])
    """
    return bound * torch.tanh(x / bound)


def _conv(cin: int, cout: int, kernel: int = 1, scale: float = 1.0) -> nn.Module:
    """A weight-normalised convolution (same padding) whose initial weight is `scale` times
    PyTorch's default."""
    conv = weight_norm(nn.Conv2d(cin, cout, kernel, padding=kernel // 2))
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(scale)
    return conv


class Cell(nn.Module):
    """A residual cell, x + conv(act(conv(act(x)))), whose branch starts at `scale` times its
    usual size so that a deep stack starts near the identity (VDVAE scales by 1/sqrt(depth))."""

    def __init__(self, width: int, kernel: int, activation: str, scale: float) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.branch = nn.Sequential(act(), _conv(width, width, kernel), act(), _conv(width, width, kernel, scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Level(NamedTuple):
    """One level of a top-down pass: its code, its prior and (when x is seen) its posterior.

    Attributes:
        z: The level's code, flattened: (N, D_l).
        p: The conditional prior p(z_l | z_>l), a DiagonalGaussian over (N, D_l).
        q: The posterior q(z_l | x, z_>l) over (N, D_l); None when no image was given.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> model = build_model(ModelConfig(model="ladder", levels="2x4x4,3", hidden=(8,), res_blocks=0), (1, 8, 8))
        >>> _, levels = model.top_down(5)  # the prior alone: each level at its conditional mean
        >>> [tuple(lv.z.shape) for lv in levels], levels[0].q is None
        ([(5, 32), (5, 3)], True)
    """

    z: torch.Tensor
    p: DiagonalGaussian
    q: DiagonalGaussian | None


def _resize(cin: int, cout: int, size: tuple[int, int], to: tuple[int, int], activation: str) -> nn.Module:
    """Move features (cin, *size) to (cout, *to): average pooling or nearest upsampling by a
    power of 2, a dense map (a convolution over the whole map) into or out of 1 x 1."""
    act = ACTIVATIONS[activation]
    if size == to:
        return nn.Identity() if cin == cout else _conv(cin, cout)
    if to == (1, 1):
        return nn.Sequential(act(), weight_norm(nn.Conv2d(cin, cout, size)))
    if size == (1, 1):
        return nn.Sequential(act(), weight_norm(nn.ConvTranspose2d(cin, cout, to)))
    if size[0] > to[0]:
        return nn.Sequential(nn.AvgPool2d(size[0] // to[0]), *([_conv(cin, cout)] if cin != cout else []))
    return nn.Sequential(nn.Upsample(scale_factor=to[0] // size[0], mode="nearest"),
                         *([_conv(cin, cout)] if cin != cout else []))


class Ladder(nn.Module):
    """A top-down hierarchical VAE whose latent levels are feature maps or vectors (``--model ladder``).

    Levels are ``cfg.levels`` (``"8x14x14,16,8"``: C x H x W or D, bottom first). The
    bottom-up pass maps the image to each level's resolution through residual cells; the
    top-down pass starts from a learned state at the top level's resolution and, level by
    level, computes the prior p(z_l | z_>l) from the state, the posterior q(z_l | x, z_>l) from
    the state and the bottom-up features, draws z_l, adds its projection to the state and
    runs residual cells; the state then goes up to the image's resolution and a head gives the
    likelihood's parameters. Widths: ``cfg.hidden`` per resolution, from the image up (the
    last repeats); cells: ``cfg.res_blocks`` per level, in each pass. ``latent_dim`` and
    ``net`` are not used.

    The posterior is relative to the prior (NVAE): q's mean is p's mean plus a delta and its
    log-scale p's log-scale plus a bounded delta, so q = p when both deltas are 0.

    Besides the shared interface (``forward``, ``encode``, ``decode``, ``prior``, ``sample``,
    ``log_weights``), ``top_down`` runs one pass and returns every level's prior and posterior,
    ``sample`` takes a temperature per level, and ``resample`` keeps chosen levels of images and
    draws the others from the prior.

    Args:
        cfg: The model settings, with every ``auto`` field resolved.
        image_shape: (C, H, W) of the images.
        cond_dim: Unused (the ladder is not conditional).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> cfg = ModelConfig(model="ladder", levels="4x14x14,8,4", hidden=(16,), res_blocks=1)
        >>> model = build_model(cfg, (1, 28, 28))
        >>> model.level_shapes, model.sizes, model.latent_dim
        (((4, 14, 14), (8,), (4,)), (784, 8, 4), 796)
        >>> x = (torch.rand(5, 1, 28, 28) < 0.3).float()
        >>> terms = model(x)  # the ELBO, with the KL of each level
        >>> sorted(terms)
        ['elbo', 'kl', 'kl_1', 'kl_2', 'kl_3', 'loss', 'recon']
        >>> model.log_weights(x, 3).shape
        torch.Size([3, 5])
        >>> model.encode(x).mean.shape, model.sample(2, temperature=0.5).mean.shape
        (torch.Size([5, 796]), torch.Size([2, 1, 28, 28]))
    """

    has_density = True
    conditional = False
    default_objective = "elbo"
    # hierarchical: levels `sizes` (z_1 first) with per-level log_prob_levels, so every per-level
    # score (KL per level, LLR>k) and per-level evaluation applies
    traits: tuple[str, ...] = ("density", "hierarchical")
    objectives: tuple[str, ...] = ("elbo", "iwae")
    priors: tuple[str, ...] = ("normal",)
    takes_flows = False
    convolutional = True  # training's precision and memory-format choices treat it as a conv net
    amp_dtype: torch.dtype | None = None
    channels_last = False

    @classmethod
    def accepted_objectives(cls) -> tuple[str, ...]:
        """Names of the objectives it trains with, its default first: elbo and iwae."""
        return cls.objectives

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        """Refuse a prior, flows or an objective the ladder does not take, and malformed levels.

        Args:
            m: The model settings.
            objective: The run's objective name; ``"auto"`` (elbo) is always accepted.

        Raises:
            ConfigError: With a one-line message naming what the model takes.
        """
        own = "its prior is its own top-down hierarchy and its posterior shares it"
        if m.prior != "normal":
            raise ConfigError(f"the ladder model takes no --prior {m.prior}: {own}; drop --prior "
                              "(or use --model vae)")
        if m.flows:
            raise ConfigError(f"the ladder model takes no flows: {own}; drop --flows (or use --model vae)")
        if objective != AUTO and objective not in cls.objectives:
            raise ConfigError(f"the ladder model trains with {', '.join(cls.objectives)}, not {objective}")

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        super().__init__()
        self.cfg, self.image_shape, self.cond_dim = cfg, tuple(image_shape), 0
        self.objective = Objective(self.default_objective)
        choose(ACTIVATIONS, cfg.activation, "activation")
        choose(SCALES, cfg.likelihood_scale, "likelihood scale")
        self.likelihood = choose(LIKELIHOODS, cfg.likelihood, "likelihood")(
            self.image_shape, scale=cfg.likelihood_scale, fixed_std=cfg.likelihood_std, mixture=cfg.mixture)
        channels, height, width = self.image_shape
        if cfg.levels == AUTO:
            raise ConfigError("the ladder model needs its levels, e.g. --levels 8x14x14,16,8 (training chooses them)")
        shapes = check_levels(cfg.levels, height, width)
        self.level_shapes = tuple(s if len(s) == 3 else (s[0],) for s in shapes)
        self.sizes = tuple(math.prod(s) for s in shapes)
        self.latent_dim = sum(self.sizes)
        maps = [s if len(s) == 3 else (s[0], 1, 1) for s in shapes]  # every level as a feature map
        self._maps = maps
        res = [(h, w) for _, h, w in maps]
        # widths per distinct resolution, from the image up; the last width repeats
        steps = list(dict.fromkeys([(height, width), *res]))
        hidden = tuple(cfg.hidden or (64,))
        width_at = {r: hidden[min(i, len(hidden) - 1)] for i, r in enumerate(steps)}
        widths = [width_at[r] for r in res]
        act, cells = cfg.activation, cfg.res_blocks or 0
        scale = 1 / math.sqrt(max(1, 2 * cells * len(maps)))

        def kernel(r):
            return 3 if min(r) > 1 else 1

        def stack(w, r):
            return [Cell(w, kernel(r), act, scale) for _ in range(cells)]

        top = len(maps) - 1
        # bottom-up: the image -> level 1's resolution -> level 2's ... (features per level)
        self.stem = _conv(channels, width_at[(height, width)], 3)
        self.up = nn.ModuleList()
        for i, r in enumerate(res):
            before = (height, width) if i == 0 else res[i - 1]
            wb = width_at[(height, width)] if i == 0 else widths[i - 1]
            self.up.append(nn.Sequential(_resize(wb, widths[i], before, r, act), *stack(widths[i], r)))
        # top-down: a learned state at the top level, then per level (top first in use)
        self.h_top = nn.Parameter(0.1 * torch.randn(1, widths[top], *res[top]))
        self.into = nn.ModuleList()  # level l+1's state -> level l's resolution and width
        self.prior_head, self.post_head, self.z_proj, self.cells = (nn.ModuleList() for _ in range(4))
        for i, ((c, *_), r, w) in enumerate(zip(maps, res, widths)):
            self.into.append(nn.Identity() if i == top else _resize(widths[i + 1], w, res[i + 1], r, act))
            k = kernel(r)
            self.prior_head.append(nn.Sequential(ACTIVATIONS[act](), _conv(w, w, k), ACTIVATIONS[act](),
                                                 _conv(w, 2 * c, 1, 0.1)))
            self.post_head.append(nn.Sequential(ACTIVATIONS[act](), _conv(2 * w, w, k), ACTIVATIONS[act](),
                                                _conv(w, 2 * c, 1, 0.1)))
            self.z_proj.append(_conv(c, w, 1, scale))
            self.cells.append(nn.Sequential(*stack(w, r)))
        self.out = nn.Sequential(_resize(widths[0], width_at[(height, width)], res[0], (height, width), act),
                                 ACTIVATIONS[act](), nn.Conv2d(width_at[(height, width)],
                                                               self.likelihood.out_channels, 3, padding=1))

    # ------------------------------------------------------------------ precision
    def set_precision(self, dtype: torch.dtype | None, channels_last: bool = False) -> None:
        """Run the networks under autocast to `dtype` (None: fp32); every head's output is cast
        to fp32 before a distribution sees it, so log-densities and KLs stay fp32.
        `channels_last`: the convolutions' memory format, on a GPU only: on a CPU the
        weight-normalised convolutions, whose weights are recomputed in the default format at
        every call, only gain conversions from it (profiled on the binary and 32x32 colour
        recipes: about 20% and 80% more copies a training step), so the model stays NCHW."""
        self.amp_dtype = dtype
        self.channels_last = channels_last and self.h_top.device.type == "cuda"
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.h_top.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ passes
    def bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The deterministic bottom-up features of images x (B, C, H, W), one map per level,
        bottom first: [(B, width_l, H_l, W_l)] (vector levels 1 x 1)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        with self._autocast():
            h = self.stem(2 * x - 1)
            for block in self.up:
                h = block(h)
                feats.append(h)
        return feats

    def top_down(self, n: int, feats: list[torch.Tensor] | None = None, *, z: torch.Tensor | None = None,
                 eps: torch.Tensor | None = None, temperature: float | tuple[float, ...] = 1.0,
                 keep: tuple[int, ...] | None = None):
        """One top-down pass over n rows: the likelihood p(x | z) and every level.

        At each level, top first, the prior p(z_l | z_>l) comes from the state and, with
        features, the posterior q(z_l | x, z_>l); z_l is the given code's part, else
        mean + scale * eps of the posterior (with features), else of the prior with its
        scale times the level's temperature (Vahdat & Kautz 2020, Child 2021 scale the prior's
        standard deviation, not the output's).

        Args:
            n: The rows N of the pass.
            feats: Bottom-up features, one per level, each (N, ...) (``bottom_up``, repeated for
                several draws per image); None: no image, the prior alone.
            z: Codes to follow, (N, D); None: draw them.
            eps: Standard normal noise (N, D) for the draws; None: zeros (the means).
            temperature: The prior's scale factor, one number or one per level (bottom first).
            keep: With features, the levels (1 = bottom) drawn from the posterior; the others
                from the prior. None: all from the posterior.

        Returns:
            (the likelihood over (N, C, H, W), the levels bottom first as ``Level``\\ s).
        """
        temps = (temperature,) * len(self.sizes) if isinstance(temperature, (int, float)) else tuple(temperature)
        zs = None if z is None else z.split(self.sizes, -1)
        noise = None if eps is None else eps.split(self.sizes, -1)
        levels: list[Level] = [None] * len(self.sizes)  # type: ignore[list-item]
        with self._autocast():
            h = self.h_top.expand(n, *self.h_top.shape[1:])
            for i in reversed(range(len(self.sizes))):
                h = self.into[i](h)
                p_mean, p_log = self.prior_head[i](h).float().flatten(1).chunk(2, 1)
                p = DiagonalGaussian(p_mean, soft_clamp(p_log))
                q = None
                if feats is not None:
                    d_mean, d_log = self.post_head[i](torch.cat([h, feats[i]], 1)).float().flatten(1).chunk(2, 1)
                    q = DiagonalGaussian(p.mean + d_mean, p.log_std + soft_clamp(d_log))  # NVAE: relative to p
                if zs is not None:
                    z_l = zs[i].float()
                else:
                    use = q if q is not None and (keep is None or i + 1 in keep) else None
                    e = noise[i] if noise is not None else torch.zeros_like(p.mean)
                    z_l = use.mean + use.std * e if use is not None else p.mean + temps[i] * p.std * e
                levels[i] = Level(z_l, p, q)
                h = h + self.z_proj[i](z_l.reshape(n, *self._maps[i]).to(h.dtype))
                h = self.cells[i](h)
            out = self.out(h).float()
        return self.likelihood(out), levels

    def _rows(self, feats: list[torch.Tensor], k: int) -> list[torch.Tensor]:
        """Features repeated for k draws per image: row s * B + b is draw s of image b."""
        if k == 1:  # one draw (ELBO training): the features as they are, not a copy
            return feats
        return [f.repeat(k, *([1] * (f.dim() - 1))) for f in feats]

    # ------------------------------------------------------------------ the shared interface
    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, *, schedule=None, generator=None,
                x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
        """Run the bound objective (``self.objective``) on images x (B, C, H, W): per-example
        terms, each (B,); with the ELBO also ``kl_1`` ... ``kl_L``, each level's KL. `schedule`:
        the training step's ``vaelab.objectives.Schedule`` (None: full weights)."""
        return self.objective(self, Step(x, c, generator=generator, x_in=x_in, schedule=schedule, peers=peers))

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> LadderPosterior:
        """The posterior q(z | x) = prod_l q(z_l | x, z_>l) of images x (B, C, H, W), over codes (B, D)."""
        return LadderPosterior(self, self.bottom_up(x))

    def prior(self, temperature: float | tuple[float, ...] = 1.0) -> LadderPrior:
        """The prior p(z) = p(z_L) prod_l p(z_l | z_>l) over codes (..., D), its scale times
        `temperature` (one per level, or one for all) when sampling."""
        return LadderPrior(self, temperature)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """The likelihood p(x | z): codes (B, D) or (K, B, D) -> a distribution over images
        (B, C, H, W) or (K, B, C, H, W); ``log_prob(x)`` has shape (B,) or (K, B)."""
        lead = z.shape[:-1]
        dist, _ = self.top_down(math.prod(lead), z=z.reshape(-1, z.shape[-1]))
        return _reshaped(dist, self.likelihood, lead)

    def sample(self, n: int, generator: torch.Generator | None = None, c: torch.Tensor | None = None,
               temperature: float | tuple[float, ...] = 1.0):
        """Decode n codes drawn from the prior with each level's scale times `temperature`
        (one number, or one per level, bottom first): a likelihood over (N, C, H, W), N = n.
        Temperature 0 gives each level's conditional prior mean: one image, always the same."""
        eps = normal_noise((n, self.latent_dim), self.h_top.float(), generator)
        return self.top_down(n, eps=eps, temperature=temperature)[0]

    def resample(self, x: torch.Tensor, keep: int | tuple[int, ...], generator: torch.Generator | None = None,
                 temperature: float | tuple[float, ...] = 1.0):
        """Keep some levels of images x and draw the others from the prior.

        The kept levels are drawn from the posterior q(z_l | x, z_>l), which reads the image
        and whatever was drawn above; the others from p(z_l | z_>l) at `temperature`.
        ``keep=k`` keeps the levels 1..k (next to the data); a tuple names the levels kept,
        e.g. ``(3,)`` keeps the top of a three-level model and redraws the detail.

        Args:
            x: Images (B, C, H, W).
            keep: k, or the level numbers (1 = bottom) to keep.
            generator: The noise of the draws.
            temperature: The prior's scale factor, one number or one per level.

        Returns:
            A likelihood over (B, C, H, W): take its ``mean`` or ``sample()``.
        """
        keep = tuple(range(1, keep + 1)) if isinstance(keep, int) else tuple(keep)
        bad = [k for k in keep if not 1 <= k <= len(self.sizes)]
        if bad:
            raise ConfigError(f"level {bad[0]} is out of range: this model has levels 1 to {len(self.sizes)}")
        feats = self.bottom_up(x)
        eps = normal_noise((len(x), self.latent_dim), feats[0].float(), generator)
        return self.top_down(len(x), feats, eps=eps, temperature=temperature, keep=keep)[0]

    def log_weights(self, x: torch.Tensor, k: int, q: LadderPosterior | None = None,
                    generator: torch.Generator | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """Importance log-weights log p(x | z) + sum_l [log p(z_l | z_>l) - log q(z_l | x, z_>l)]
        for k draws z ~ q(z | x), every level included; logsumexp over k minus log k is the
        IWAE bound (Burda et al. 2016).

        Args:
            x: Images (B, C, H, W).
            k: Draws per image.
            q: ``encode(x)``, if already computed (its features are reused).
            generator: The reparameterisation noise.
            c: Unused.

        Returns:
            Log-weights in nats, shape (k, B).
        """
        lw, _ = self.weights_and_levels(x, k, q, generator)
        return lw

    def weights_and_levels(self, x: torch.Tensor, k: int, q: LadderPosterior | None = None, generator=None):
        """(log-weights (k, B), each level's log q(z_l | x, z_>l) - log p(z_l | z_>l) (L, k, B)) for
        k draws per image from the posterior of x (B, C, H, W) (or of ``q``)."""
        feats = (self.bottom_up(x) if q is None else q.feats)
        b = len(feats[0])
        eps = normal_noise((k, b, self.latent_dim), feats[0].float(), generator).reshape(k * b, -1)
        dist, levels = self.top_down(k * b, self._rows(feats, k), eps=eps)
        ratio = torch.stack([lv.q.log_prob(lv.z) - lv.p.log_prob(lv.z) for lv in levels]).reshape(-1, k, b)
        recon = dist.log_prob(x.repeat(k, *([1] * (x.dim() - 1)))).reshape(k, b)
        return recon - ratio.sum(0), ratio

    def skip_log_weights(self, x: torch.Tensor, k: int, skip: int, q: LadderPosterior | None = None,
                         generator=None) -> torch.Tensor:
        """Log-weights of Havtorn et al. (2021)'s bound L>skip for k draws per image: the levels
        above `skip` drawn from the posterior q(z_l | x, z_>l), the levels 1..skip set to the
        conditional prior's mean given what was drawn above (as their published code does), and
        log p(x | z) + sum_{l > skip} [log p(z_l | z_>l) - log q(z_l | x, z_>l)]: the lower levels'
        prior cancels against the distribution they come from. Logsumexp over k minus log k
        estimates L>skip; the likelihood ratio LLR>skip is log p(x) minus it.

        Args:
            x: Images (B, C, H, W).
            k: Draws per image.
            skip: The levels taken from the prior, 0 to L - 1; 0 gives ``log_weights``.
            q: ``encode(x)``, if already computed (its features are reused).
            generator: The noise of the upper levels' draws (the same noise as ``log_weights``).

        Returns:
            Log-weights in nats, shape (k, B).

        Examples:
            >>> from vaelab.config import ModelConfig
            >>> from vaelab.models import build_model
            >>> _ = torch.manual_seed(0)
            >>> model = build_model(ModelConfig(model="ladder", levels="2x4x4,3", hidden=(8,), res_blocks=0), (1, 8, 8))
            >>> x = (torch.rand(4, 1, 8, 8) < 0.3).float()
            >>> model.skip_log_weights(x, 5, skip=1).shape
            torch.Size([5, 4])
        """
        depth = len(self.sizes)
        if not 0 <= skip < depth:
            raise ConfigError(f"skip {skip} is out of range: this model has {depth} levels, so 0 to {depth - 1}")
        feats = self.bottom_up(x) if q is None else q.feats
        b = len(feats[0])
        eps = normal_noise((k, b, self.latent_dim), feats[0].float(), generator).reshape(k * b, -1)
        temps = (0.0,) * skip + (1.0,) * (depth - skip)  # temperature 0: the prior's mean
        dist, levels = self.top_down(k * b, self._rows(feats, k), eps=eps, temperature=temps,
                                     keep=tuple(range(skip + 1, depth + 1)))
        ratio = sum(lv.q.log_prob(lv.z) - lv.p.log_prob(lv.z) for lv in levels[skip:]).reshape(k, b)
        return dist.log_prob(x.repeat(k, *([1] * (x.dim() - 1)))).reshape(k, b) - ratio

    def elbo_levels(self, x: torch.Tensor, samples: int = 1, generator=None, x_in: torch.Tensor | None = None,
                    kl: str = "analytic") -> tuple[torch.Tensor, torch.Tensor]:
        """The ELBO's parts for images x (B, C, H, W): E_q[log p(x | z)] (B,) and each level's
        KL (L, B), bottom first, averaged over `samples` draws (Sønderby et al. 2016, eq. 14).

        A level's KL is KL(q(z_l | x, z_>l) || p(z_l | z_>l)) in closed form at the drawn z_>l
        (``kl="analytic"``), or log q(z_l) - log p(z_l) at the drawn z_l (``"mc"``). `x_in`: what the
        encoder sees instead of x (denoising)."""
        feats = self.bottom_up(x if x_in is None else x_in)
        b = len(x)
        eps = normal_noise((samples, b, self.latent_dim), feats[0].float(), generator).reshape(samples * b, -1)
        dist, levels = self.top_down(samples * b, self._rows(feats, samples), eps=eps)
        if kl == "analytic":
            kls = torch.stack([gaussian_kl(lv.q, lv.p) for lv in levels])
        else:
            kls = torch.stack([lv.q.log_prob(lv.z) - lv.p.log_prob(lv.z) for lv in levels])
        recon = dist.log_prob(x.repeat(samples, *([1] * (x.dim() - 1)))).reshape(samples, b).mean(0)
        return recon, kls.reshape(len(levels), samples, b).mean(1)


def gaussian_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> torch.Tensor:
    """KL(q || p) between diagonal Gaussians in closed form, summed over the last dimension:
    log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2; parameters (N, D) -> (N,)."""
    ratio = torch.exp(2 * (q.log_std - p.log_std))
    return 0.5 * (ratio + (q.mean - p.mean).square() * torch.exp(-2 * p.log_std) - 1
                  - 2 * (q.log_std - p.log_std)).sum(-1)


def _reshaped(dist, likelihood, lead: tuple[int, ...]):
    """A likelihood over (N, C, H, W) rebuilt over (*lead, C, H, W) from its parameters."""
    if len(lead) == 1:
        return dist
    return _LeadLikelihood(dist, lead)


class _LeadLikelihood:
    """A likelihood over N = prod(lead) images seen as (*lead, C, H, W): ``log_prob(x)`` takes
    images (B, C, H, W) (broadcast over the leading draws) or (*lead, C, H, W) -> lead."""

    def __init__(self, dist, lead: tuple[int, ...]) -> None:
        self.dist, self.lead = dist, tuple(lead)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.expand(*self.lead, *x.shape[-3:]).reshape(-1, *x.shape[-3:])
        return self.dist.log_prob(x).reshape(self.lead)

    @property
    def mean(self) -> torch.Tensor:
        m = self.dist.mean
        return m.reshape(*self.lead, *m.shape[1:])

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        s = self.dist.sample(generator=generator)
        return s.reshape(*self.lead, *s.shape[1:])


class LadderPosterior:
    """q(z | x) = prod_l q(z_l | x, z_>l) of a ``Ladder``, over codes (B, D) (levels flattened,
    bottom first). Each method runs the top-down pass; ``mean`` and ``std`` are each level's
    posterior mean and scale with the levels above at their means.

    Args:
        model: The ladder.
        feats: Its bottom-up features of B images (``Ladder.bottom_up``).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="ladder", levels="4,2", hidden=(8,), res_blocks=0), (1, 8, 8))
        >>> q = model.encode(torch.zeros(3, 1, 8, 8))
        >>> z, log_q = q.rsample_with_log_prob(5)
        >>> z.shape, log_q.shape, q.log_prob_levels(z).shape
        (torch.Size([5, 3, 6]), torch.Size([5, 3]), torch.Size([2, 5, 3]))
        >>> torch.allclose(q.log_prob(z), log_q, atol=1e-5)
        True
    """

    # scoring a code under every posterior of a batch (the mutual-information estimate) runs
    # the top-down pass once per pair: vaelab.evaluate leaves it out
    pairs_cost_a_pass = True

    def __init__(self, model: Ladder, feats: list[torch.Tensor]) -> None:
        self.model, self.feats = model, feats
        self._at_mean = None

    def _draw(self, n: int, generator=None):
        b = len(self.feats[0])
        eps = normal_noise((n, b, self.model.latent_dim), self.feats[0].float(), generator).reshape(n * b, -1)
        _, levels = self.model.top_down(n * b, self.model._rows(self.feats, n), eps=eps)
        z = torch.cat([lv.z for lv in levels], -1).reshape(n, b, -1)
        return z, torch.stack([lv.q.log_prob(lv.z) for lv in levels]).reshape(len(levels), n, b)

    def rsample_with_log_prob(self, n: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterised codes (N, B, D), N = n, and their log q(z | x), shape (N, B)."""
        z, per_level = self._draw(n, generator)
        return z, per_level.sum(0)

    def rsample(self, n: int | None = None, generator=None) -> torch.Tensor:
        """Reparameterised codes: (n, B, D), or (B, D) when n is None."""
        z = self._draw(1 if n is None else n, generator)[0]
        return z[0] if n is None else z

    def log_prob_levels(self, z: torch.Tensor) -> torch.Tensor:
        """Each level's log q(z_l | x, z_>l) of codes (B, D) or (n, B, D), a code of size 1 in
        the B place scored under every image's posterior: shape (L, B) or (L, n, B)."""
        b = len(self.feats[0])
        z = z.expand(*z.shape[:-2], b, z.shape[-1])
        lead = z.shape[:-1]
        k = math.prod(lead[:-1])
        _, levels = self.model.top_down(k * b, self.model._rows(self.feats, k), z=z.reshape(-1, z.shape[-1]))
        return torch.stack([lv.q.log_prob(lv.z) for lv in levels]).reshape(len(levels), *lead)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x) of codes (B, D) or (n, B, D): (B,) or (n, B)."""
        return self.log_prob_levels(z).sum(0)

    def _mean_levels(self) -> list[Level]:
        if self._at_mean is None:
            self._at_mean = self.model.top_down(len(self.feats[0]), self.feats)[1]
        return self._at_mean

    @property
    def mean(self) -> torch.Tensor:
        """Each level's posterior mean given the levels above at theirs: (B, D)."""
        return torch.cat([lv.q.mean for lv in self._mean_levels()], -1)

    @property
    def std(self) -> torch.Tensor:
        """Each level's posterior scale given the levels above at their means: (B, D)."""
        return torch.cat([lv.q.std for lv in self._mean_levels()], -1)


class LadderPrior:
    """p(z) = p(z_L) prod_l p(z_l | z_>l) of a ``Ladder``, over codes (..., D); its KL to the
    posterior has no closed form as a whole (the ELBO takes it level by level).

    Args:
        model: The ladder.
        temperature: The factor of each level's scale when sampling: one number or one per level.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="ladder", levels="4,2", hidden=(8,), res_blocks=0), (1, 8, 8))
        >>> z = model.prior().sample(7)
        >>> z.shape, model.prior().log_prob(z).shape, model.prior().log_prob_levels(z).shape
        (torch.Size([7, 6]), torch.Size([7]), torch.Size([2, 7]))
    """

    closed_form_kl = False

    def __init__(self, model: Ladder, temperature: float | tuple[float, ...] = 1.0) -> None:
        self.model, self.temperature = model, temperature

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n codes (N, D), N = n, drawn level by level, top first."""
        eps = normal_noise((n, self.model.latent_dim), self.model.h_top.float(), generator)
        _, levels = self.model.top_down(n, eps=eps, temperature=self.temperature)
        return torch.cat([lv.z for lv in levels], -1)

    def log_prob_levels(self, z: torch.Tensor) -> torch.Tensor:
        """Each level's log p(z_l | z_>l) of codes (..., D): (L, ...)."""
        lead = z.shape[:-1]
        _, levels = self.model.top_down(math.prod(lead), z=z.reshape(-1, z.shape[-1]))
        return torch.stack([lv.p.log_prob(lv.z) for lv in levels]).reshape(len(levels), *lead)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of codes (B, D) or any (..., D): shape (B,) or (...)."""
        return self.log_prob_levels(z).sum(0)
