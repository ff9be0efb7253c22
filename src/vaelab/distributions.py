"""Distributions: the posterior q(z|x), the prior p(z) and likelihoods p(x|z).

Networks output parameters; these objects own the probability. Everything stays in
log space: Bernoulli works on logits, the Gaussian on log standard deviations.
``log_prob`` sums over the event dimensions and keeps any batch/sample dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian:
    """N(mean, diag(exp(log_std)^2)) over the last dimension. Shapes (..., D)."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean, self.log_std = mean, log_std

    @classmethod
    def standard(cls, shape: tuple[int, ...], device=None) -> DiagonalGaussian:
        zeros = torch.zeros(shape, device=device)
        return cls(zeros, zeros)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised samples z = mean + std * eps: (n, ..., D), or (..., D) if n is None."""
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        eps = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def rsample_with_log_prob(self, n: int, generator: torch.Generator | None = None):
        """n samples (n, ..., D) and their log density (n, ...): the interface every
        posterior shares (flows change the density, see vaelab.flows.FlowPosterior)."""
        z = self.rsample(n, generator=generator)
        return z, self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, std^2) summed over D: (..., D) -> (...)."""
        u = (z - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (u.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) in closed form (Kingma & Welling 2014, appendix B): (..., D) -> (...)."""
        return 0.5 * (self.mean.square() + torch.exp(2 * self.log_std) - 1 - 2 * self.log_std).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension: (..., D) -> (...)."""
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


class Bernoulli:
    """Independent Bernoulli pixels parameterised by logits, shape (..., C, H, W)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """sum over pixels of x*l - softplus(l) = log sigmoid(l) or log sigmoid(-l); -> (...).

        x (..., C, H, W) broadcasts against the logits, so one image can be scored
        under k samples without copying it k times.
        """
        logits = self.logits.flatten(-3)
        return (x.flatten(-3) * logits).sum(-1) - F.softplus(logits).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device)
        return (u < self.mean).float()


class Gaussian:
    """Independent Gaussian densities per pixel, N(x; loc, exp(log_scale)^2), shape (..., C, H, W).

    A density on continuous values: with a fixed scale, -log_prob is the squared error
    / (2 scale^2) plus a constant, which is what an "MSE loss" implies.
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.loc, self.log_scale = loc, log_scale

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.loc) * torch.exp(-self.log_scale)
        return (-0.5 * (u.square() + LOG_2PI) - self.log_scale).flatten(-3).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.loc.shape, generator=generator, device=self.loc.device)
        return self.loc + torch.exp(self.log_scale) * eps


class DiscretizedLogistic:
    """A logistic(loc, exp(log_scale)) integrated over 256 grey-level bins (Salimans et al.
    2017, PixelCNN++; seed 000). Pixels are the levels k/255; bin k is
    [k/255 - 1/510, k/255 + 1/510], except that bin 0 takes all mass below and bin 255
    all mass above, so the 256 probabilities sum to 1 for any loc and scale.

    In log space, with a = (x - loc + 1/510)/s and b = (x - loc - 1/510)/s:
        log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)),
    exact and stable for any a > b; the edge bins are log sigmoid(a) and log sigmoid(-b).
    """

    half_bin = 0.5 / 255

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.loc, self.log_scale = loc, log_scale

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        inv = torch.exp(-self.log_scale)
        centered = x - self.loc
        a = (centered + self.half_bin) * inv
        b = (centered - self.half_bin) * inv
        interior = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-2 * self.half_bin * inv))
        lp = torch.where(x < self.half_bin, F.logsigmoid(a), torch.where(x > 1 - self.half_bin, F.logsigmoid(-b), interior))
        return lp.flatten(-3).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """loc clamped to [0, 1], for display (the exact mean of the binned law is near it)."""
        return self.loc.clamp(0, 1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.loc.shape, generator=generator, device=self.loc.device).clamp_(1e-6, 1 - 1e-6)
        y = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        return torch.round(y.clamp(0, 1) * 255) / 255


class Likelihood(nn.Module):
    """A family p(x|z): turns decoder output into a distribution over images.

    ``channels``: decoder output channels per image channel. ``binary``: defined only
    for {0, 1} data. ``discrete``: a probability mass over the data's values (Bernoulli,
    discretized logistic) rather than a density; densities are trained and evaluated on
    uniformly dequantised pixels (pixel + u) / 256, u ~ U(0, 1), so that their NLL plus
    D log 256 bounds the discrete NLL (Theis et al. 2016). Learned parameters (a scale)
    are nn.Parameters of the family.
    """

    channels: int = 1
    binary: bool = False
    discrete: bool = True

    def __init__(self, image_shape: tuple[int, int, int], scale: str = "pixel", fixed_std: float = 0.1) -> None:
        super().__init__()
        self.image_shape = image_shape

    @classmethod
    def check_binarization(cls, binarization: str) -> None:
        from vaelab.config import ConfigError

        if cls.binary and binarization == "none":
            raise ConfigError(
                f"the {cls.name} likelihood is defined on binary pixels only, but binarization "
                "is 'none' (grey levels); use --binarization dynamic or fixed, or --likelihood gaussian/logistic"
            )
        if not cls.binary and binarization != "none":
            raise ConfigError(
                f"the {cls.name} likelihood models grey levels, but binarization is {binarization!r}; "
                "use --binarization none with it, or --likelihood bernoulli for binarised data"
            )


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_pixels Bernoulli(x; sigmoid(logits)). For binarised images."""

    name = "bernoulli"
    binary = True

    def forward(self, out: torch.Tensor) -> Bernoulli:
        return Bernoulli(out)


SCALES = ("fixed", "global", "pixel", "decoder")


class _LocationScale(Likelihood):
    """Shared scale handling. `scale`: ``fixed`` (exp(log_scale) = fixed_std),
    ``global`` (one learned log-scale), ``pixel`` (a learned log-scale per pixel, shown
    by ``vaelab plot --what scale``), ``decoder`` (predicted per image: the decoder
    outputs 2C channels, location then log-scale)."""

    dist: type

    def __init__(self, image_shape: tuple[int, int, int], scale: str = "pixel", fixed_std: float = 0.1) -> None:
        super().__init__(image_shape)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
        self.scale = scale
        self.channels = 2 if scale == "decoder" else 1
        init = math.log(fixed_std)
        if scale == "fixed":
            self.register_buffer("log_scale", torch.full((), init))
        elif scale == "global":
            self.log_scale = nn.Parameter(torch.full((), init))
        elif scale == "pixel":
            self.log_scale = nn.Parameter(torch.full(tuple(image_shape), init))

    def forward(self, out: torch.Tensor):
        if self.scale == "decoder":
            c = self.image_shape[0]
            return self.dist(out[..., :c, :, :], out[..., c:, :, :])
        return self.dist(out, self.log_scale.expand_as(out))


class GaussianLikelihood(_LocationScale):
    """p(x|z) = prod_pixels N(x; loc, scale^2): a density on dequantised grey levels."""

    name = "gaussian"
    discrete = False
    dist = Gaussian


class LogisticLikelihood(_LocationScale):
    """p(x|z) = prod_pixels discretized logistic over 256 levels (seed 000)."""

    name = "logistic"
    dist = DiscretizedLogistic


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "logistic": LogisticLikelihood,
}
