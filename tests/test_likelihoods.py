"""Each likelihood's log_prob against torch.distributions or numerical integration."""

import math

import pytest
import torch
from torch import distributions as D

from vaelab.config import Config, ConfigError
from vaelab.distributions import DiscretizedLogistic, Gaussian, GaussianLikelihood, LogisticLikelihood

G = torch.Generator().manual_seed(0)


def test_gaussian_matches_torch_normal():
    loc, log_scale = torch.randn(3, 1, 4, 4, generator=G), torch.randn(3, 1, 4, 4, generator=G)
    x = torch.rand(3, 1, 4, 4, generator=G)
    ref = D.Normal(loc, log_scale.exp()).log_prob(x).flatten(-3).sum(-1)
    torch.testing.assert_close(Gaussian(loc, log_scale).log_prob(x), ref)


def test_fixed_scale_gaussian_is_scaled_squared_error():
    lik = GaussianLikelihood((1, 2, 2), scale="fixed", fixed_std=0.5)
    loc, x = torch.rand(5, 1, 2, 2, generator=G), torch.rand(5, 1, 2, 2, generator=G)
    sse = (x - loc).square().flatten(1).sum(1)
    const = 4 * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(-lik(loc).log_prob(x), sse / (2 * 0.25) + const)
    assert not list(lik.parameters())  # nothing learned


@pytest.mark.parametrize("loc, log_scale", [(0.3, -3.0), (-2.0, 0.5), (0.999, -7.0), (0.5, 2.0), (1.7, -9.0), (0.0, -12.0)])
def test_discretized_logistic_sums_to_one_over_256_bins(loc, log_scale):
    x = (torch.arange(256, dtype=torch.float64) / 255).view(256, 1, 1, 1)
    d = DiscretizedLogistic(torch.full_like(x, loc), torch.full_like(x, log_scale))
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    assert abs(torch.logsumexp(lp, 0).item()) < 1e-9


def test_discretized_logistic_matches_integrated_density():
    """Bin masses from the logistic CDF (torch) and from integrating its pdf numerically."""
    loc, scale = 0.42, 0.07
    x = torch.arange(256, dtype=torch.float64) / 255
    ours = DiscretizedLogistic(torch.full((256, 1, 1, 1), loc, dtype=torch.float64),
                               torch.full((256, 1, 1, 1), math.log(scale), dtype=torch.float64)).log_prob(x.view(256, 1, 1, 1))
    logistic = D.TransformedDistribution(D.Uniform(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)),
                                         [D.transforms.SigmoidTransform().inv, D.transforms.AffineTransform(loc, scale)])
    for k in (0, 1, 100, 107, 254, 255):
        lo = -20.0 if k == 0 else (k - 0.5) / 255
        hi = 20.0 if k == 255 else (k + 0.5) / 255
        grid = torch.linspace(lo, hi, 200001, dtype=torch.float64)
        mass = torch.trapezoid(logistic.log_prob(grid).exp(), grid)
        assert math.isclose(ours[k].exp().item(), mass.item(), rel_tol=1e-5, abs_tol=1e-12), k


def test_logistic_samples_are_grey_levels_near_loc():
    d = DiscretizedLogistic(torch.full((20000, 1, 1, 1), 0.3), torch.full((20000, 1, 1, 1), math.log(0.02)))
    s = d.sample(torch.Generator().manual_seed(1))
    assert torch.allclose(s * 255, (s * 255).round()) and abs(s.mean().item() - 0.3) < 0.01


def test_learned_scales_have_the_right_shape():
    assert LogisticLikelihood((1, 28, 28), scale="pixel").log_scale.shape == (1, 28, 28)
    assert GaussianLikelihood((1, 28, 28), scale="global").log_scale.shape == ()
    lik = GaussianLikelihood((1, 28, 28), scale="decoder")
    assert lik.channels == 2
    out = torch.randn(3, 2, 28, 28)
    torch.testing.assert_close(lik(out).log_scale, out[:, 1:])


@pytest.mark.parametrize("likelihood, binarization", [("bernoulli", "none"), ("gaussian", "dynamic"), ("logistic", "fixed")])
def test_mismatched_likelihood_and_data_are_rejected(likelihood, binarization):
    with pytest.raises(ConfigError, match="binarization"):
        Config().replace(model={"likelihood": likelihood}, data={"binarization": binarization})
