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

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, std^2) summed over D: (..., D) -> (...)."""
        u = (z - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (u.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) in closed form (Kingma & Welling 2014, appendix B): (..., D) -> (...)."""
        return 0.5 * (self.mean.square() + torch.exp(2 * self.log_std) - 1 - 2 * self.log_std).sum(-1)


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


class Likelihood(nn.Module):
    """A family p(x|z): turns decoder output into a distribution over images.

    ``channels`` is how many decoder output channels one image channel needs;
    ``binary`` says whether the family is defined only for {0, 1} data.
    Families with learned parameters (a per-pixel scale) hold them as nn.Parameters.
    """

    channels: int = 1
    binary: bool = False

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape

    @classmethod
    def check_binarization(cls, binarization: str) -> None:
        from vaelab.config import ConfigError

        if cls.binary and binarization == "none":
            raise ConfigError(
                f"the {cls.__name__} likelihood is defined on binary pixels only, but binarization "
                "is 'none' (grey levels); use --binarization dynamic or fixed, or a grey-level likelihood"
            )
        if not cls.binary and binarization != "none":
            raise ConfigError(
                f"the {cls.__name__} likelihood models grey levels; use --binarization none with it"
            )


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_pixels Bernoulli(x; sigmoid(logits)). For binarised images."""

    binary = True

    def forward(self, out: torch.Tensor) -> Bernoulli:
        return Bernoulli(out)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
}
