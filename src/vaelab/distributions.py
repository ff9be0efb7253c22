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

from vaelab.noise import normal_noise

__all__ = [
    "DiagonalGaussian",
    "standard_normal_log_prob",
    "StandardNormal",
    "GaussianMixture",
    "MixturePrior",
    "GaussianChain",
    "Bernoulli",
    "Gaussian",
    "log_bin_mass",
    "DiscretizedLogistic",
    "mixture_log_prob",
    "DiscretizedLogisticMixture",
    "Likelihood",
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LogisticLikelihood",
    "LogisticMixtureLikelihood",
]

LOG_2PI = math.log(2 * math.pi)

class DiagonalGaussian:
    """A Gaussian with independent coordinates, N(mean, diag(exp(log_std)^2)): the usual VAE posterior q(z|x).

    The encoder predicts `mean` and `log_std`; samples are reparameterised, z = mean + std * eps
    (Kingma & Welling 2014), so gradients reach both. The last dimension is the event (D
    latent dimensions); any leading dimensions, usually the batch B, are kept by every method.

    Args:
        mean: (B, D), or any (..., D): the mean of each coordinate.
        log_std: (B, D), the same shape as `mean`: the log standard deviation, any real number.

    Examples:
        >>> from vaelab.distributions import DiagonalGaussian
        >>> _ = torch.manual_seed(0)
        >>> q = DiagonalGaussian(torch.randn(4, 2), torch.full((4, 2), -1.0))
        >>> z = q.rsample(3)                              # 3 samples for each of 4 rows
        >>> z.shape, q.log_prob(z).shape
        (torch.Size([3, 4, 2]), torch.Size([3, 4]))
        >>> ref = torch.distributions.Normal(q.mean, q.std)
        >>> torch.allclose(q.log_prob(z), ref.log_prob(z).sum(-1))
        True
        >>> kl = torch.distributions.kl_divergence(ref, torch.distributions.Normal(0.0, 1.0)).sum(-1)
        >>> torch.allclose(q.kl_standard_normal(), kl)
        True
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean, self.log_std = mean, log_std

    @classmethod
    def standard(cls, shape: tuple[int, ...], device=None) -> DiagonalGaussian:
        """N(0, I) of the given shape, e.g. (B, D): zero mean and zero log-std."""
        zeros = torch.zeros(shape, device=device)
        return cls(zeros, zeros)

    @property
    def std(self) -> torch.Tensor:
        """The standard deviation exp(log_std), (B, D)."""
        return self.log_std.exp()

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised samples z = mean + std * eps, eps ~ N(0, I): (n, B, D), or (B, D) if n is None.

        `generator` is a torch.Generator, or a vaelab.noise.ExampleNoise for noise tied to examples;
        None uses torch's global random state.
        """
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        return self.mean + self.std * normal_noise(shape, self.mean, generator)

    def rsample_with_log_prob(self, n: int, generator: torch.Generator | None = None):
        """n samples (n, B, D) and their log-density (n, B): the interface every
        posterior shares (flows change the density, see vaelab.flows.FlowPosterior)."""
        z = self.rsample(n, generator=generator)
        return z, self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, std^2) summed over D: z (B, D) or (n, B, D), broadcast against the
        parameters -> (B,) or (n, B)."""
        u = (z - self.mean) * torch.exp(-self.log_std)
        return -0.5 * (u.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)

    def kl_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) in closed form (Kingma & Welling 2014, appendix B): parameters (B, D) -> (B,)."""
        return self.kl_standard_normal_per_dim().sum(-1)

    def kl_standard_normal_per_dim(self) -> torch.Tensor:
        """The closed-form KL(q || N(0, I)) of each dimension, 0.5 (mu^2 + sigma^2 - 1) - log sigma:
        parameters (B, D) -> (B, D)."""
        return 0.5 * (self.mean.square() + torch.exp(2 * self.log_std) - 1 - 2 * self.log_std)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """The log-density of the standard normal N(0, I), summed over the last dimension.

    Args:
        z: (B, D), or any (..., D): points in latent space.

    Returns:
        Tensor: (B,), or (...), -0.5 (|z|^2 + D log 2 pi) for each row.

    Examples:
        >>> from vaelab.distributions import standard_normal_log_prob
        >>> _ = torch.manual_seed(0)
        >>> z = torch.randn(5, 3)
        >>> standard_normal_log_prob(z).shape
        torch.Size([5])
        >>> ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        >>> torch.allclose(standard_normal_log_prob(z), ref)
        True
    """
    return -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)


# ----------------------------------------------------------------------------- priors


class StandardNormal:
    """The standard normal prior p(z) = N(0, I) over `dim` latent dimensions.

    Its KL to a DiagonalGaussian posterior has a closed form (``closed_form_kl = True``), which the
    ELBO uses instead of a Monte Carlo estimate.

    Args:
        dim: D, the number of latent dimensions.
        device: where `sample` puts its draws (None: the CPU).

    Examples:
        >>> from vaelab.distributions import StandardNormal
        >>> _ = torch.manual_seed(0)
        >>> p = StandardNormal(2)
        >>> z = p.sample(5)
        >>> z.shape, p.log_prob(z).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> round(p.log_prob(torch.zeros(2)).item(), 4)   # -log(2 pi) at the origin when D = 2
        -1.8379
    """

    closed_form_kl = True

    def __init__(self, dim: int, device=None) -> None:
        self.dim, self.device = dim, device

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over D: z (B, D) -> (B,); see `standard_normal_log_prob`."""
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws from N(0, I), of shape (n, D)."""
        return DiagonalGaussian.standard((n, self.dim), device=self.device).rsample(generator=generator)


class GaussianMixture:
    """A mixture of K diagonal Gaussians as a prior, p(z) = sum_k w_k N(z; m_k, diag(s_k^2)).

    The weights are w = softmax(`logits`). Its KL to a posterior has no closed form
    (``closed_form_kl = False``): the ELBO estimates it by Monte Carlo. `MixturePrior` makes one
    with learned parameters.

    Args:
        means: (K, D), the component means m_k.
        log_std: (K, D), the components' log standard deviations log s_k.
        logits: (K,), unnormalised log-weights.

    Examples:
        >>> from vaelab.distributions import GaussianMixture
        >>> _ = torch.manual_seed(0)
        >>> means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
        >>> p = GaussianMixture(means, torch.zeros(2, 2), torch.zeros(2))
        >>> z = p.sample(5)
        >>> z.shape, p.log_prob(z).shape
        (torch.Size([5, 2]), torch.Size([5]))
        >>> D = torch.distributions
        >>> ref = D.MixtureSameFamily(D.Categorical(logits=torch.zeros(2)), D.Independent(D.Normal(means, 1.0), 1))
        >>> torch.allclose(p.log_prob(z), ref.log_prob(z))
        True
    """

    closed_form_kl = False

    def __init__(self, means: torch.Tensor, log_std: torch.Tensor, logits: torch.Tensor) -> None:
        self.means, self.log_std, self.logits = means, log_std, logits

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), a logsumexp over the K components: z (B, D), or any (..., D) -> (B,), or (...)."""
        u = (z.unsqueeze(-2) - self.means) * torch.exp(-self.log_std)  # (..., K, D)
        comp = -0.5 * (u.square() + LOG_2PI).sum(-1) - self.log_std.sum(-1)  # (..., K)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, -1), -1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws, of shape (n, D): a component k ~ softmax(logits) for each, then m_k + s_k * eps.
        Not reparameterised in k (the component choice carries no gradient)."""
        k = torch.multinomial(torch.softmax(self.logits.detach(), -1), n, replacement=True, generator=generator)
        eps = torch.randn((n, self.means.shape[-1]), generator=generator, device=self.means.device)
        return self.means[k] + torch.exp(self.log_std[k]) * eps


class MixturePrior(nn.Module):
    """A learned mixture-of-Gaussians prior with K components, trained with the model.

    At the start the means are N(0, I) draws (from `seed`), the scales are 1 and the weights equal.
    Calling the module gives the current `GaussianMixture`.

    Args:
        dim: D, the number of latent dimensions.
        components: K, the number of mixture components.
        seed: the seed of the initial means.

    Examples:
        >>> from vaelab.distributions import MixturePrior
        >>> prior = MixturePrior(dim=2, components=5)
        >>> sum(p.numel() for p in prior.parameters())   # means, log-stds (5, 2) and logits (5,)
        25
        >>> p = prior()
        >>> p.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
        >>> p.log_prob(torch.zeros(3, 2)).sum().backward()   # gradients reach the parameters
        >>> prior.means.grad.shape
        torch.Size([5, 2])
    """

    def __init__(self, dim: int, components: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.means = nn.Parameter(torch.randn(components, dim, generator=g))
        self.log_std = nn.Parameter(torch.zeros(components, dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self) -> GaussianMixture:
        """The prior with the current parameters: means and log-stds (K, D), logits (K,)."""
        return GaussianMixture(self.means, self.log_std, self.logits)


class GaussianChain:
    """A hierarchy of Gaussian latent layers, each conditioned on the one before: a hierarchical VAE's q or p.

    A chain of stochastic layers z_1 -> z_2 -> ... -> z_L: z_1 ~ `first`, then z_j ~
    ``steps[j-2](z_{j-1})`` (each a callable returning a DiagonalGaussian), so that
    log p(z) = log first(z_1) + sum_j log N(z_j; step(z_{j-1})). Hierarchical VAEs use one
    bottom-up (the posterior q(z_1|x) q(z_2|z_1)...) and one top-down (the prior
    p(z_L) p(z_{L-1}|z_L)...). A code is the concatenation of the layers (..., sum(sizes)),
    in chain order, or reversed with ``reverse=True``, so both chains share one layout.
    Its KL to anything has no closed form: the ELBO estimates it by Monte Carlo. This is the
    factorisation of the multi-layer models of Burda et al. 2016 (section 5): bottom-up
    inference, top-down generation (not the top-down inference of the Ladder VAE or NVAE).

    Args:
        first: the Gaussian of z_1, (B, d_1) for a posterior, or (d_1,) for a prior.
        steps: L - 1 callables; step j maps z_j (..., d_j) to a DiagonalGaussian over (..., d_{j+1}).
        sizes: (d_1, ..., d_L), the sizes of the layers; a code has D = sum(sizes) dimensions.
        reverse: store the layers last-first in a code (z_L, ..., z_1), as a top-down prior does
            so that it shares the layout of the bottom-up posterior.

    Examples:
        >>> from vaelab.distributions import DiagonalGaussian, GaussianChain
        >>> _ = torch.manual_seed(0)
        >>> step = lambda z1: DiagonalGaussian(z1.sum(-1, keepdim=True), torch.zeros_like(z1[..., :1]))
        >>> p = GaussianChain(DiagonalGaussian.standard((2,)), [step], sizes=(2, 1))
        >>> z = p.sample(4)                       # codes (z_1, z_2) with z_2 ~ N(sum(z_1), 1)
        >>> z.shape, p.log_prob(z).shape, p.log_prob_levels(z).shape
        (torch.Size([4, 3]), torch.Size([4]), torch.Size([2, 4]))
        >>> torch.allclose(p.log_prob_levels(z).sum(0), p.log_prob(z))
        True
        >>> by_hand = p.first.log_prob(z[:, :2]) + step(z[:, :2]).log_prob(z[:, 2:])
        >>> torch.allclose(p.log_prob(z), by_hand)
        True
    """

    closed_form_kl = False

    def __init__(self, first: DiagonalGaussian, steps, sizes: tuple[int, ...], reverse: bool = False) -> None:
        self.first, self.steps, self.sizes, self.reverse = first, list(steps), tuple(sizes), reverse

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts[::-1] if self.reverse else parts, -1)

    def _split(self, z: torch.Tensor) -> list[torch.Tensor]:
        if self.reverse:
            return list(z.split(self.sizes[::-1], -1))[::-1]
        return list(z.split(self.sizes, -1))

    def rsample_with_log_prob(self, n: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterised codes, shape (n, B, D), and their log-density, shape (n, B); (n, D)
        and (n,) for a chain without batch dimensions (a prior). One noise draw of all D dims per
        sample, so noise tied to examples differs between layers."""
        lead = (n, *self.first.mean.shape[:-1])
        eps = normal_noise((*lead, sum(self.sizes)), self.first.mean, generator).split(self.sizes, -1)
        g, parts, log_p = self.first, [], 0
        for j, e in enumerate(eps):
            if j:
                g = self.steps[j - 1](parts[-1])
            z = g.mean + g.std * e
            parts.append(z)
            log_p = log_p + g.log_prob(z)
        return self._join(parts), log_p

    def rsample(self, n: int | None = None, generator=None) -> torch.Tensor:
        """Reparameterised codes: (n, B, D), or (B, D) if n is None."""
        z = self.rsample_with_log_prob(1 if n is None else n, generator=generator)[0]
        return z[0] if n is None else z

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n codes, of shape (n, D), from a chain whose first layer has no batch dims (a prior)."""
        return self.rsample_with_log_prob(n, generator=generator)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log-density of codes, the sum of every layer's term: z (B, D), or (n, B, D) -> (B,), or (n, B)."""
        parts = self._split(z)
        log_p = self.first.log_prob(parts[0])
        for step, prev, cur in zip(self.steps, parts[:-1], parts[1:]):
            log_p = log_p + step(prev).log_prob(cur)
        return log_p

    def log_prob_levels(self, z: torch.Tensor) -> torch.Tensor:
        """Each layer's log-density term of codes (B, D) -> (L, B), or (..., D) -> (L, ...), in the
        code's layout (chain order, or last first with ``reverse=True``), so that the prior's and
        the posterior's terms line up layer by layer; they sum to ``log_prob(z)``."""
        parts = self._split(z)
        terms = [self.first.log_prob(parts[0])]
        for step, prev, cur in zip(self.steps, parts[:-1], parts[1:]):
            terms.append(step(prev).log_prob(cur))
        return torch.stack(terms[::-1] if self.reverse else terms)

    def layers(self) -> list[DiagonalGaussian]:
        """Each layer's Gaussian at the mean of the layer before, in chain order: L
        DiagonalGaussians with parameters (B, d_j)."""
        gs = [self.first]
        for step in self.steps:
            gs.append(step(gs[-1].mean))
        return gs[::-1] if self.reverse else gs

    @property
    def mean(self) -> torch.Tensor:
        """Each layer's mean given the mean of the layer before: a representative code (B, D)."""
        parts = [self.first.mean]
        for step in self.steps:
            parts.append(step(parts[-1]).mean)
        return self._join(parts)


class Bernoulli:
    """Independent binary pixels, each 1 with probability sigmoid(logit): p(x|z) for binarised images.

    Working on logits keeps log_prob exact where the probability is near 0 or 1.

    Args:
        logits: (B, C, H, W), or any (..., C, H, W): the log-odds of each pixel being 1.

    Examples:
        >>> from vaelab.distributions import Bernoulli
        >>> _ = torch.manual_seed(0)
        >>> p = Bernoulli(torch.randn(2, 1, 4, 4))
        >>> x = p.sample()
        >>> x.shape, p.log_prob(x).shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))
        >>> ref = torch.distributions.Bernoulli(logits=p.logits).log_prob(x).sum((1, 2, 3))
        >>> torch.allclose(p.log_prob(x), ref)
        True
    """

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), the sum over pixels of x*l - softplus(l) = log sigmoid(l) or log sigmoid(-l):
        x (B, C, H, W) -> (B,).

        x broadcasts against the logits, so images (B, C, H, W) can be scored under logits
        (n, B, C, H, W) of n samples without copying them n times: -> (n, B).
        """
        logits = self.logits.flatten(-3)
        return (x.flatten(-3) * logits).sum(-1) - F.softplus(logits).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """The probability of each pixel being 1, sigmoid(logits): (B, C, H, W)."""
        return torch.sigmoid(self.logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One binary image per set of logits, floats in {0, 1}: (B, C, H, W)."""
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device)
        return (u < self.mean).float()


class Gaussian:
    """An independent Gaussian density per pixel, N(x; loc, exp(log_scale)^2): p(x|z) for grey levels.

    A density on continuous values: with a fixed scale, -log_prob is the squared error
    / (2 scale^2) plus a constant, which is what an "MSE loss" implies.

    Args:
        loc: (B, C, H, W), or any (..., C, H, W): the mean of each pixel.
        log_scale: (B, C, H, W), or any shape that broadcasts to loc's: the log standard deviation.

    Examples:
        >>> from vaelab.distributions import Gaussian
        >>> _ = torch.manual_seed(0)
        >>> loc, x = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
        >>> p = Gaussian(loc, torch.zeros(2, 1, 4, 4))          # unit scale
        >>> p.log_prob(x).shape, p.sample().shape
        (torch.Size([2]), torch.Size([2, 1, 4, 4]))
        >>> mse = 0.5 * (x - loc).square().sum((1, 2, 3)) + 16 * 0.5 * torch.log(torch.tensor(2 * torch.pi))
        >>> torch.allclose(-p.log_prob(x), mse)
        True
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.loc, self.log_scale = loc, log_scale

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, summed over C, H, W: x (B, C, H, W) -> (B,); x broadcasts against loc."""
        u = (x - self.loc) * torch.exp(-self.log_scale)
        return (-0.5 * (u.square() + LOG_2PI) - self.log_scale).flatten(-3).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """The mean of each pixel, loc: (B, C, H, W)."""
        return self.loc

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image per parameter set, loc + scale * eps (not clamped to [0, 1]): (B, C, H, W)."""
        eps = torch.randn(self.loc.shape, generator=generator, device=self.loc.device)
        return self.loc + torch.exp(self.log_scale) * eps


HALF_BIN = 0.5 / 255
# The smallest log-scale of a discretized logistic, on data in [0, 1]: PixelCNN++'s floor of
# -7 on data in [-1, 1] (Salimans et al. 2017), where a bin is twice as wide. A pixel can still
# put 95% of its mass in one bin, while 1/scale stays below ~2,200 and every bin's logits stay
# finite: unbounded, the decoder's log-scales ran to -inf on colour images and the loss to NaN.
LOG_SCALE_MIN = -7.0 - math.log(2.0)


def log_bin_mass(x: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """The log-probability of each grey level under a logistic cut into 256 bins, elementwise.

    log P(pixel = x) for a logistic(loc, exp(log_scale)) integrated over 256 grey-level
    bins (Salimans et al. 2017, PixelCNN++, eq. 2), elementwise; the arguments broadcast.

    Pixels are the levels k/255; bin k is [k/255 - 1/510, k/255 + 1/510], except that
    bin 0 takes all mass below and bin 255 all mass above, so the 256 probabilities sum
    to 1 for any loc and scale. In log space, with a = (x - loc + 1/510)/s and
    b = (x - loc - 1/510)/s:
        log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(b - a)),
    exact and stable for any a > b; the edge bins are log sigmoid(a) and log sigmoid(-b).

    Args:
        x: (B, C, H, W), or any shape: pixels on the grid k/255 in [0, 1].
        loc: the logistic's location, any shape that broadcasts with x.
        log_scale: the logistic's log-scale, any shape that broadcasts with x.

    Returns:
        The log-probability of each pixel, in the broadcast shape of the arguments, e.g. (B, C, H, W).

    Examples:
        >>> from vaelab.distributions import log_bin_mass
        >>> levels = torch.arange(256) / 255
        >>> mass = log_bin_mass(levels, torch.tensor(0.3), torch.tensor(-3.0)).exp()
        >>> mass.shape, torch.allclose(mass.sum(), torch.tensor(1.0))   # the 256 bins hold all the mass
        (torch.Size([256]), True)
        >>> x = torch.tensor(128 / 255, dtype=torch.float64)                # an inner level, 1 / scale = e^3
        >>> a, b = (x + 0.5 / 255 - 0.3) * torch.e ** 3, (x - 0.5 / 255 - 0.3) * torch.e ** 3
        >>> mass = log_bin_mass(x.float(), torch.tensor(0.3), torch.tensor(-3.0)).exp()
        >>> torch.allclose(mass.double(), torch.sigmoid(a) - torch.sigmoid(b))   # the naive form needs float64
        True
    """
    inv = torch.exp(-log_scale)
    centered = x - loc
    a = (centered + HALF_BIN) * inv
    b = (centered - HALF_BIN) * inv
    interior = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-2 * HALF_BIN * inv))
    return torch.where(x < HALF_BIN, F.logsigmoid(a), torch.where(x > 1 - HALF_BIN, F.logsigmoid(-b), interior))


def _quantise(y: torch.Tensor) -> torch.Tensor:
    """Nearest grey level k/255 in [0, 1]: the bin that y falls in under `log_bin_mass`."""
    return torch.round(y.clamp(0, 1) * 255) / 255


def _logistic_noise(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard logistic samples log(u) - log(1 - u), u ~ U(0, 1) kept off 0 and 1."""
    u = torch.rand(shape, generator=generator, device=like.device).clamp_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


class DiscretizedLogistic:
    """A probability mass over the 256 grey levels of each pixel: a logistic cut into bins.

    A logistic(loc, exp(log_scale)) integrated over 256 grey-level bins (Salimans et al.
    2017, PixelCNN++), independently per pixel. The bin masses are `log_bin_mass`'s: bins
    k/255 +- 1/510, the edge bins take the tails. log_scale is clamped below at LOG_SCALE_MIN.

    Args:
        loc: (B, C, H, W), or any (..., C, H, W): the logistic's location, on the [0, 1] pixel scale.
        log_scale: (B, C, H, W), or any shape that broadcasts to loc's: the logistic's log-scale.

    Examples:
        >>> from vaelab.distributions import DiscretizedLogistic
        >>> _ = torch.manual_seed(0)
        >>> p = DiscretizedLogistic(torch.rand(2, 1, 4, 4), torch.full((2, 1, 4, 4), -3.0))
        >>> x = p.sample()
        >>> x.shape, p.log_prob(x).shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))
        >>> torch.equal(x, torch.round(x * 255) / 255)                  # samples lie on the 8-bit grid
        True
        >>> one = DiscretizedLogistic(torch.full((1, 1, 1), 0.3), torch.full((1, 1, 1), -3.0))
        >>> levels = (torch.arange(256) / 255).view(256, 1, 1, 1)      # every value of a 1x1 image
        >>> round(one.log_prob(levels).exp().sum().item(), 4)
        1.0
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor) -> None:
        self.loc, self.log_scale = loc, log_scale.clamp(min=LOG_SCALE_MIN)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) in nats, summed over C, H, W: x (B, C, H, W) on the grid k/255 -> (B,);
        x broadcasts against loc."""
        return log_bin_mass(x, self.loc, self.log_scale).flatten(-3).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """loc clamped to [0, 1], for display (the exact mean of the binned law is near it): (B, C, H, W)."""
        return self.loc.clamp(0, 1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image per parameter set, a logistic draw rounded to the nearest level k/255 in [0, 1]:
        (B, C, H, W)."""
        y = self.loc + torch.exp(self.log_scale) * _logistic_noise(self.loc.shape, generator, self.loc)
        return _quantise(y)


# Elements per tensor in one chunk of the fused mixture log-density: ~1 MiB of fp32, so the
# dozen elementwise passes over a chunk run in cache instead of streaming 60 MB tensors
# (a batch of 128 64x64 RGB images under 10 components) through memory each time.
MIXTURE_CHUNK = 1 << 18


def _mixture_chunk(x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                   coeffs: torch.Tensor | None, grad: torch.Tensor | None):
    """log p(x) of a discretized logistic mixture for n images, and with `grad` (n,) given,
    the gradients of sum(grad * log p) with respect to logits, loc, log_scale and coeffs.

    Shapes: x (n, C, H, W); logits (n, K, H, W); loc, log_scale (n, K, C, H, W); coeffs
    (n, K, 3, H, W), after the tanh, or None. With a = (x - mean + h) / s, b = (x - mean - h) / s
    and d = a - b = 2h / s, the interior bins' log-mass log(sigmoid(a) - sigmoid(b)) has
        d/da = sigmoid(-a) + 1/expm1(d),    d/db = -sigmoid(b) - 1/expm1(d),
    so d/dmean = -(sigmoid(-a) - sigmoid(b)) / s and d/dlog s = -(a sigmoid(-a) - b sigmoid(b) + d/expm1(d)),
    both bounded; the edge bins keep one of the two terms."""
    xs = x.unsqueeze(1)  # (n, 1, C, H, W)
    if coeffs is None:
        means = loc
    else:
        alpha, beta, gamma = coeffs.unbind(2)
        x_r, x_g = xs[:, :, 0], xs[:, :, 1]
        means = torch.stack([loc[:, :, 0], loc[:, :, 1] + alpha * x_r, loc[:, :, 2] + beta * x_r + gamma * x_g], 2)
    inv = torch.exp(-log_scale)
    centered = xs - means
    a = (centered + HALF_BIN) * inv
    b = (centered - HALF_BIN) * inv
    d = (2 * HALF_BIN) * inv
    low, high = xs < HALF_BIN, xs > 1 - HALF_BIN
    log_sa, log_snb = F.logsigmoid(a), F.logsigmoid(-b)
    interior = log_sa + log_snb + torch.log(-torch.expm1(-d))
    log_mass = torch.where(low, log_sa, torch.where(high, log_snb, interior))
    log_pi = F.log_softmax(logits, dim=1)
    joint = log_pi + log_mass.sum(2)  # (n, K, H, W)
    per_pixel = torch.logsumexp(joint, dim=1)  # (n, H, W)
    log_p = per_pixel.flatten(1).sum(1)
    if grad is None:
        return log_p, None
    g = grad.view(-1, 1, 1, 1)
    resp = torch.exp(joint - per_pixel.unsqueeze(1)) * g  # (n, K, H, W): responsibilities x upstream grad
    d_logits = resp - torch.exp(log_pi) * g
    s_a = torch.where(high, 0.0, -torch.expm1(log_sa))  # sigmoid(-a), 0 for the top bin
    s_b = torch.where(low, 0.0, -torch.expm1(log_snb))  # sigmoid(b), 0 for the bottom bin
    edge = torch.where(low | high, 0.0, d / torch.expm1(d))
    r = resp.unsqueeze(2)
    d_means = -(s_a - s_b) * inv * r
    d_log_scale = -(a * s_a - b * s_b + edge) * r
    d_coeffs = None
    if coeffs is not None:
        d_coeffs = torch.stack([d_means[:, :, 1] * x_r, d_means[:, :, 2] * x_r, d_means[:, :, 2] * x_g], 2)
    return log_p, (d_logits, d_means, d_log_scale, d_coeffs)


class _MixtureLogProb(torch.autograd.Function):
    """The mixture's log p(x) per image, computed in cache-sized chunks of images, with the
    analytic gradients of `_mixture_chunk` recomputed chunk by chunk in the backward pass:
    nothing of size (n, K, C, H, W) is kept between the passes. x is data (no gradient)."""

    @staticmethod
    def forward(ctx, x, logits, loc, log_scale, coeffs):
        ctx.save_for_backward(x, logits, loc, log_scale, coeffs)
        step = _chunk_rows(loc)
        out = [_mixture_chunk(*_rows(i, step, x, logits, loc, log_scale, coeffs), None)[0]
               for i in range(0, len(x), step)]
        return torch.cat(out) if out else x.new_zeros(0)

    @staticmethod
    def backward(ctx, grad):
        x, logits, loc, log_scale, coeffs = ctx.saved_tensors
        step = _chunk_rows(loc)
        parts = [_mixture_chunk(*_rows(i, step, x, logits, loc, log_scale, coeffs), grad[i : i + step])[1]
                 for i in range(0, len(x), step)]
        grads = [torch.cat(g) if g[0] is not None else None for g in zip(*parts)] if parts else [None] * 4
        return (None, *grads)


def _chunk_rows(loc: torch.Tensor) -> int:
    return max(1, MIXTURE_CHUNK // max(1, loc[0].numel()))


def _rows(i: int, step: int, *tensors: torch.Tensor | None):
    return [None if t is None else t[i : i + step] for t in tensors]


def mixture_log_prob(x: torch.Tensor, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                     coeffs: torch.Tensor | None) -> torch.Tensor:
    """The log-likelihood of images under a mixture of discretized logistics, summed over C, H, W.

    The computation behind `DiscretizedLogisticMixture.log_prob` (Salimans et al. 2017, eqs. 2-3),
    on raw parameters. It runs in cache-sized chunks of images with analytic gradients, so no tensor
    of size (B, K, C, H, W) is kept for the backward pass; when x itself requires a gradient it
    falls back to plain autograd.

    Args:
        x: (B, C, H, W): images on the grid k/255 in [0, 1]; the batch dimensions broadcast against
            the parameters', e.g. x (B, C, H, W) against parameters (n, B, ...).
        logits: (B, K, H, W): unnormalised log-weights of the K components of each pixel.
        loc: (B, K, C, H, W): each component's location per channel.
        log_scale: (B, K, C, H, W): each component's log-scale per channel (not clamped here).
        coeffs: (B, K, 3, H, W): the RGB coefficients alpha, beta, gamma after the tanh, only
            when C == 3; or None for channels independent within a component.

    Returns:
        Tensor: (B,), or the broadcast batch shape, log p(x) in nats.

    Examples:
        >>> from vaelab.distributions import log_bin_mass, mixture_log_prob
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randint(0, 256, (2, 1, 4, 4)) / 255
        >>> loc = torch.rand(2, 1, 1, 4, 4).requires_grad_()               # K = 1 component, C = 1
        >>> log_scale = torch.full((2, 1, 1, 4, 4), -3.0)
        >>> lp = mixture_log_prob(x, torch.zeros(2, 1, 4, 4), loc, log_scale, None)
        >>> lp.shape
        torch.Size([2])
        >>> ref = log_bin_mass(x, loc[:, 0], log_scale[:, 0]).sum((1, 2, 3))   # one component: one logistic
        >>> torch.allclose(lp, ref)
        True
        >>> g, g_ref = torch.autograd.grad(lp.sum(), loc)[0], torch.autograd.grad(ref.sum(), loc)[0]
        >>> torch.allclose(g, g_ref, atol=1e-5)                                # the analytic gradient
        True
    """
    lead = torch.broadcast_shapes(x.shape[:-3], logits.shape[:-3])
    k, (c, h, w) = logits.shape[-3], x.shape[-3:]

    def flat(t: torch.Tensor | None, event: tuple[int, ...]) -> torch.Tensor | None:
        return None if t is None else t.expand(*lead, *event).reshape(-1, *event)

    args = (flat(x, (c, h, w)), flat(logits, (k, h, w)), flat(loc, (k, c, h, w)), flat(log_scale, (k, c, h, w)),
            flat(coeffs, (k, 3, h, w)))
    if x.requires_grad:  # differentiating through the data too: plain autograd
        with torch.enable_grad():
            return _mixture_chunk(*args, None)[0].reshape(lead)
    return _MixtureLogProb.apply(*args).reshape(lead)


class DiscretizedLogisticMixture:
    """A mixture of K discretized logistics per pixel: the 8-bit colour likelihood of PixelCNN++.

    Salimans et al. 2017, PixelCNN++, eqs. 2-3; also the likelihood of NVAE (Vahdat & Kautz 2020)
    and VDVAE (Child 2021).

    Each pixel draws one component, shared by its C channels. Within component k the
    channels are discretized logistics (`log_bin_mass`); for RGB they are linearly
    autoregressive (eq. 3), with alpha, beta, gamma bounded by tanh:
        mean_R = mu_R,  mean_G = mu_G + alpha x_R,  mean_B = mu_B + beta x_R + gamma x_G,
    so p(x) = sum_k pi_k p_k(x_R) p_k(x_G | x_R) p_k(x_B | x_R, x_G), which sums to 1
    over the 256^C values of a pixel.

    Shapes: logits (..., K, H, W), unnormalised log pi; loc and log_scale
    (..., K, C, H, W); coeffs (..., K, 3, H, W), alpha, beta, gamma before the tanh
    (the attribute holds them after it), only for C == 3, or None: channels independent
    within a component.

    Args:
        logits: (B, K, H, W): unnormalised log-weights of the K components of each pixel.
        loc: (B, K, C, H, W): each component's location per channel, on the [0, 1] pixel scale.
        log_scale: (B, K, C, H, W): log-scales, clamped below at LOG_SCALE_MIN.
        coeffs: (B, K, 3, H, W) before the tanh, only for C == 3; or None.

    Examples:
        >>> from vaelab.distributions import DiscretizedLogisticMixture
        >>> _ = torch.manual_seed(0)
        >>> B, K, C, H, W = 2, 5, 3, 4, 4
        >>> p = DiscretizedLogisticMixture(torch.randn(B, K, H, W), torch.rand(B, K, C, H, W),
        ...                                torch.full((B, K, C, H, W), -3.0), torch.randn(B, K, 3, H, W))
        >>> x = p.sample()
        >>> x.shape, p.log_prob(x).shape, p.mean.shape
        (torch.Size([2, 3, 4, 4]), torch.Size([2]), torch.Size([2, 3, 4, 4]))
        >>> torch.equal(x, torch.round(x * 255) / 255)                   # samples lie on the 8-bit grid
        True
        >>> grey = DiscretizedLogisticMixture(torch.randn(K, 1, 1), torch.rand(K, 1, 1, 1),
        ...                                   torch.full((K, 1, 1, 1), -2.0))     # one 1x1 grey pixel
        >>> levels = (torch.arange(256) / 255).view(256, 1, 1, 1)       # every value of a 1x1 grey image
        >>> round(grey.log_prob(levels).exp().sum().item(), 4)
        1.0
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor,
                 coeffs: torch.Tensor | None = None) -> None:
        if coeffs is not None and loc.shape[-3] != 3:
            raise ValueError(f"channel coefficients need 3 (RGB) channels, got {loc.shape[-3]}")
        self.logits, self.loc, self.log_scale = logits, loc, log_scale.clamp(min=LOG_SCALE_MIN)
        self.coeffs = None if coeffs is None else torch.tanh(coeffs)

    @staticmethod
    def _chain(loc: torch.Tensor, coeffs: torch.Tensor | None, realise):
        """Channel means of eq. 3 and the values they condition on, channel by channel.

        ``realise(channels, mean)`` gives the value of the image channels `channels` (an
        index into dim -3) whose mean is `mean`: the observed pixel for log_prob, a
        sample, or the mean itself. Returns (means, values), stacked on dim -3.
        """
        if coeffs is None:
            return loc, realise(slice(None), loc)
        mu_r, mu_g, mu_b = loc.unbind(-3)
        alpha, beta, gamma = coeffs.unbind(-3)
        x_r = realise(0, mu_r)
        mean_g = mu_g + alpha * x_r
        x_g = realise(1, mean_g)
        mean_b = mu_b + beta * x_r + gamma * x_g
        x_b = realise(2, mean_b)
        # mu_R has the parameters' shape, the conditioned means also the values'
        means = torch.stack(torch.broadcast_tensors(mu_r, mean_g, mean_b), -3)
        return means, torch.stack(torch.broadcast_tensors(x_r, x_g, x_b), -3)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats, summed over C, H, W: x (B, C, H, W) -> (B,).

        x broadcasts against the parameters' batch dimensions, so B images (B, C, H, W) are
        scored under (n, B) decodings: -> (n, B) (each chunk of rows copies its images).
        """
        return mixture_log_prob(x, self.logits, self.loc, self.log_scale, self.coeffs)

    @property
    def mean(self) -> torch.Tensor:
        """For display: the pi-weighted component means, each through eq. 3 on the
        component's own means, clamped to [0, 1]: (B, C, H, W)."""
        means, _ = self._chain(self.loc, self.coeffs, lambda ch, mean: mean)
        pi = F.softmax(self.logits, dim=-3).unsqueeze(-3)
        return (pi * means).sum(-4).clamp(0, 1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image per parameter set, (B, C, H, W), on the grid k/255 in [0, 1].

        A component per pixel, then R, G, B in turn, each a quantised logistic sample
        whose mean uses the channels already sampled (quantised, as log_prob conditions
        on observed pixels), so samples follow exactly the law that log_prob scores.
        """
        probs = F.softmax(self.logits, dim=-3)
        u = torch.rand(probs[..., :1, :, :].shape, generator=generator, device=probs.device)
        # component j is drawn iff cdf(j - 1) <= u < cdf(j), so an empty one never is;
        # the clamp catches a last cdf rounded below u
        k = (probs.cumsum(-3) <= u).sum(-3, keepdim=True).clamp_(max=probs.shape[-3] - 1)

        def pick(t: torch.Tensor) -> torch.Tensor:
            index = k.unsqueeze(-3).expand(*t.shape[:-4], 1, *t.shape[-3:])
            return t.gather(-4, index).squeeze(-4)

        loc, scale = pick(self.loc), pick(self.log_scale).exp()
        coeffs = None if self.coeffs is None else pick(self.coeffs)
        noise = _logistic_noise(loc.shape, generator, loc)
        _, x = self._chain(loc, coeffs, lambda ch, mean: _quantise(mean + scale[..., ch, :, :] * noise[..., ch, :, :]))
        return x


class Likelihood(nn.Module):
    """A family p(x|z): turns decoder output into a distribution over images.

    ``channels``: decoder output channels per image channel. ``binary``: defined only
    for {0, 1} data. ``discrete``: a probability mass over the data's values (Bernoulli,
    discretized logistic) rather than a density; densities are trained and evaluated on
    uniformly dequantised pixels (pixel + u) / 256, u ~ U(0, 1), so that their NLL plus
    D log 256 bounds the discrete NLL (Theis et al. 2016). Learned parameters (a scale)
    are nn.Parameters of the family.

    The base class of the four families below; calling a family on decoder output
    (B, out_channels, H, W) gives a distribution whose ``log_prob`` maps images (B, C, H, W) to (B,).

    Args:
        image_shape: (C, H, W) of the images.
        scale: how a location-scale family gets its scale: fixed, global, pixel or decoder.
        fixed_std: the initial (or, with ``scale="fixed"``, the constant) standard deviation.
        mixture: K, the number of components of the logistic mixture.

    Examples:
        >>> from vaelab.distributions import GaussianLikelihood, Likelihood
        >>> lik = GaussianLikelihood((1, 28, 28))
        >>> isinstance(lik, Likelihood), lik.discrete, lik.out_channels
        (True, False, 1)
        >>> p = lik(torch.zeros(8, lik.out_channels, 28, 28))      # decoder output -> p(x|z)
        >>> p.log_prob(torch.rand(8, 1, 28, 28)).shape
        torch.Size([8])
    """

    channels: int = 1
    binary: bool = False
    discrete: bool = True

    def __init__(self, image_shape: tuple[int, int, int], scale: str = "pixel", fixed_std: float = 0.1,
                 mixture: int = 10) -> None:
        super().__init__()
        self.image_shape = image_shape

    @property
    def out_channels(self) -> int:
        """Decoder output channels this family needs for images of `image_shape` (C, H, W)."""
        return self.image_shape[0] * self.channels

    @classmethod
    def check_binarization(cls, binarization: str) -> None:
        """Raise ConfigError unless the family fits the data: binary families need binarised pixels
        (`binarization` "dynamic" or "fixed"), the others grey levels ("none")."""
        from vaelab.config import ConfigError

        if cls.binary and binarization == "none":
            raise ConfigError(
                f"the {cls.name} likelihood is defined on binary pixels only, but binarization "
                "is 'none' (grey levels); use --binarization dynamic or fixed, or --likelihood gaussian/logistic/logistic-mixture"
            )
        if not cls.binary and binarization != "none":
            raise ConfigError(
                f"the {cls.name} likelihood models grey levels, but binarization is {binarization!r}; "
                "use --binarization none with it, or --likelihood bernoulli for binarised data"
            )


class BernoulliLikelihood(Likelihood):
    """The Bernoulli likelihood for binarised images, p(x|z) = prod_pixels Bernoulli(x; sigmoid(logits)).

    The decoder outputs one logit per pixel (out_channels = C).

    Args:
        image_shape: (C, H, W) of the images; the other arguments of `Likelihood` are ignored.

    Examples:
        >>> import math
        >>> from vaelab.distributions import BernoulliLikelihood
        >>> lik = BernoulliLikelihood((1, 28, 28))
        >>> p = lik(torch.zeros(2, lik.out_channels, 28, 28))          # logits 0: every pixel a fair coin
        >>> torch.allclose(p.log_prob(torch.ones(2, 1, 28, 28)), torch.full((2,), -784 * math.log(2)))
        True
    """

    name = "bernoulli"
    binary = True

    def forward(self, out: torch.Tensor) -> Bernoulli:
        """Decoder output (B, C, H, W), the pixels' logits -> a Bernoulli over images (B, C, H, W)."""
        return Bernoulli(out)


SCALES = ("fixed", "global", "pixel", "decoder")


class _LocationScale(Likelihood):
    """Shared scale handling. `scale`: ``fixed`` (exp(log_scale) = fixed_std),
    ``global`` (one learned log-scale), ``pixel`` (a learned log-scale per pixel, shown
    by ``vaelab plot --what scale``), ``decoder`` (predicted per image: the decoder
    outputs 2C channels, location then log-scale)."""

    dist: type

    def __init__(self, image_shape: tuple[int, int, int], scale: str = "pixel", fixed_std: float = 0.1,
                 mixture: int = 10) -> None:
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
        """Decoder output (B, out_channels, H, W) -> the family's distribution over images (B, C, H, W)."""
        if self.scale == "decoder":
            c = self.image_shape[0]
            return self.dist(out[..., :c, :, :], out[..., c:, :, :])
        return self.dist(out, self.log_scale.expand_as(out))


class GaussianLikelihood(_LocationScale):
    """The Gaussian likelihood, p(x|z) = prod_pixels N(x; loc, scale^2): a density on dequantised grey levels.

    The decoder predicts loc (out_channels = C), or loc and log-scale (2C) with ``scale="decoder"``;
    otherwise the scale is fixed, one learned number, or learned per pixel (see `Likelihood`).
    With a fixed scale its negative log-likelihood is a scaled squared error plus a constant.

    Args:
        image_shape: (C, H, W) of the images.
        scale: "fixed", "global", "pixel" or "decoder".
        fixed_std: the initial (or fixed) standard deviation.
        mixture: ignored.

    Examples:
        >>> from vaelab.distributions import GaussianLikelihood
        >>> GaussianLikelihood((3, 8, 8), scale="decoder").out_channels     # location, then log-scale
        6
        >>> lik = GaussianLikelihood((1, 8, 8), scale="pixel")
        >>> [tuple(p.shape) for p in lik.parameters()]                       # a learned log-scale per pixel
        [(1, 8, 8)]
        >>> _ = torch.manual_seed(0)
        >>> p = lik(torch.rand(4, 1, 8, 8))
        >>> p.log_prob(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4])
    """

    name = "gaussian"
    discrete = False
    dist = Gaussian


class LogisticLikelihood(_LocationScale):
    """The discretized logistic likelihood, p(x|z) = prod_pixels a logistic binned over 256 grey levels.

    A probability mass on 8-bit pixels (Salimans et al. 2017): see `DiscretizedLogistic`. The
    decoder predicts the location (out_channels = C), or location and log-scale with
    ``scale="decoder"``; the scale options are those of `GaussianLikelihood`.

    Args:
        image_shape: (C, H, W) of the images.
        scale: "fixed", "global", "pixel" or "decoder".
        fixed_std: the initial (or fixed) scale of the logistic.
        mixture: ignored.

    Examples:
        >>> from vaelab.distributions import DiscretizedLogistic, LogisticLikelihood
        >>> _ = torch.manual_seed(0)
        >>> lik = LogisticLikelihood((1, 8, 8), scale="global")
        >>> p = lik(torch.rand(4, lik.out_channels, 8, 8))
        >>> isinstance(p, DiscretizedLogistic), lik.discrete
        (True, True)
        >>> x = torch.randint(0, 256, (4, 1, 8, 8)) / 255
        >>> bool((p.log_prob(x) <= 0).all())                      # log of a probability mass
        True
    """

    name = "logistic"
    dist = DiscretizedLogistic


class LogisticMixtureLikelihood(Likelihood):
    """The discretized logistic mixture likelihood for 8-bit grey or colour images (PixelCNN++).

    p(x|z) = prod_pixels a mixture of K = `mixture` discretized logistics over 256
    levels (Salimans et al. 2017, PixelCNN++, eqs. 2-3, as in NVAE and VDVAE): see
    `DiscretizedLogisticMixture`. For 8-bit grey or colour images.

    The decoder predicts every parameter, scales included, so `scale` and `fixed_std`
    are accepted (all families share one constructor) and ignored. Decoder output
    (..., out_channels, H, W), along dim -3 in this order: K mixture logits (shared by
    the channels of a pixel), K*C locations, K*C log-scales and, for C == 3 only, K*3
    channel coefficients (alpha, beta, gamma); locations, log-scales and coefficients
    are component-major (channel k*C + c is component k, image channel c). Hence
    out_channels = K (1 + 2C), plus 3K when C == 3.

    Args:
        image_shape: (C, H, W) of the images.
        scale: ignored.
        fixed_std: ignored.
        mixture: K, the number of components (at least 1).

    Examples:
        >>> from vaelab.distributions import LogisticMixtureLikelihood
        >>> LogisticMixtureLikelihood((1, 28, 28), mixture=10).out_channels   # 10 (1 + 2)
        30
        >>> lik = LogisticMixtureLikelihood((3, 8, 8), mixture=10)
        >>> lik.out_channels                                                  # 10 (1 + 6) + 30
        100
        >>> p = lik(torch.zeros(2, 100, 8, 8))
        >>> p.loc.shape, p.coeffs.shape
        (torch.Size([2, 10, 3, 8, 8]), torch.Size([2, 10, 3, 8, 8]))
        >>> p.log_prob(torch.randint(0, 256, (2, 3, 8, 8)) / 255).shape
        torch.Size([2])
    """

    name = "logistic-mixture"

    def __init__(self, image_shape: tuple[int, int, int], scale: str = "pixel", fixed_std: float = 0.1,
                 mixture: int = 10) -> None:
        super().__init__(image_shape)
        if mixture < 1:
            raise ValueError(f"a logistic mixture needs at least 1 component, got mixture={mixture}")
        self.mixture = mixture

    @property
    def out_channels(self) -> int:
        """Decoder output channels for K components and images (C, H, W): K (1 + 2C), plus 3K if C == 3."""
        k, c = self.mixture, self.image_shape[0]
        return k * (1 + 2 * c) + (3 * k if c == 3 else 0)

    def forward(self, out: torch.Tensor) -> DiscretizedLogisticMixture:
        """Decoder output (B, out_channels, H, W) -> the mixture over images (B, C, H, W): logits
        (B, K, H, W), loc and log_scale (B, K, C, H, W), coeffs (B, K, 3, H, W) or None."""
        if out.shape[-3] != self.out_channels:
            raise ValueError(f"the {self.name} likelihood needs {self.out_channels} decoder channels "
                             f"for {self.mixture} components and images {tuple(self.image_shape)}, got {out.shape[-3]}")
        k, c = self.mixture, self.image_shape[0]
        logits, loc, log_scale, coeffs = out.split([k, k * c, k * c, out.shape[-3] - k * (1 + 2 * c)], dim=-3)
        return DiscretizedLogisticMixture(logits, loc.unflatten(-3, (k, c)), log_scale.unflatten(-3, (k, c)),
                                          coeffs.unflatten(-3, (k, 3)) if c == 3 else None)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "logistic": LogisticLikelihood,
    "logistic-mixture": LogisticMixtureLikelihood,
}
