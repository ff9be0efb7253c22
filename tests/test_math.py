"""Probability math against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch import distributions as D

from vaelab.distributions import Bernoulli, DiagonalGaussian
from vaelab.evaluate import Sampling, log_likelihood


def test_gaussian_log_prob_matches_torch():
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    z = torch.randn(7, 5, 3, generator=g)
    ref = D.Normal(mean, log_std.exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(DiagonalGaussian(mean, log_std).log_prob(z), ref)


def test_analytic_kl_matches_monte_carlo_and_torch():
    g = torch.Generator().manual_seed(1)
    mean, log_std = torch.randn(4, 6, generator=g), 0.5 * torch.randn(4, 6, generator=g)
    q = DiagonalGaussian(mean, log_std)
    analytic = q.kl_standard_normal()
    ref = D.kl_divergence(D.Normal(mean, log_std.exp()), D.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(analytic, ref)
    z = q.rsample(200_000, generator=g)
    p = DiagonalGaussian.standard(mean.shape)
    mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
    # MC standard error is ~ sqrt(Var/n); 4 sigma of the observed spread.
    se = (q.log_prob(z) - p.log_prob(z)).std(0) / math.sqrt(len(z))
    assert torch.all((mc - analytic).abs() < 4 * se + 1e-4)


def test_bernoulli_log_prob_matches_torch_and_broadcasts():
    g = torch.Generator().manual_seed(2)
    logits = 5 * torch.randn(3, 2, 1, 4, 4, generator=g)
    x = (torch.rand(2, 1, 4, 4, generator=g) < 0.5).float()
    ref = D.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(-3).sum(-1)
    torch.testing.assert_close(Bernoulli(logits).log_prob(x), ref)
    # extreme logits stay finite (log-space throughout)
    lp = Bernoulli(torch.tensor([[[[200.0, -200.0]]]])).log_prob(torch.tensor([[[[0.0, 1.0]]]]))
    assert torch.isfinite(lp).all() and torch.allclose(lp, torch.tensor([-400.0]))


class FullGaussian:
    """q(z|x) with a shared full covariance L L^T (the linear-Gaussian posterior's shape)."""

    def __init__(self, mean, chol):
        self.mean, self.chol = mean, chol

    def rsample(self, n, generator=None):
        eps = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.mean + eps @ self.chol.T

    def log_prob(self, z):
        return D.MultivariateNormal(self.mean, scale_tril=self.chol).log_prob(z)


class LinearGaussian(torch.nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I), so log p(x) = log N(x; b, WW^T + s^2 I)
    exactly. q(z|x) is the exact posterior with its scale multiplied by `inflate`: with
    inflate = 1 every importance weight equals p(x); otherwise the k-sample estimate is
    biased low and tightens as k grows (Burda et al. 2016, theorem 1)."""

    has_density = True

    def __init__(self, inflate=1.0, dx=5, dz=2, s=0.7):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = torch.randn(dx, dz, generator=g, dtype=torch.float64)
        self.b = torch.randn(dx, generator=g, dtype=torch.float64)
        self.s = s
        self.post_cov = torch.linalg.inv(torch.eye(dz, dtype=torch.float64) + self.W.T @ self.W / s**2)
        self.chol = torch.linalg.cholesky(self.post_cov) * inflate
        self.marginal = D.MultivariateNormal(self.b, self.W @ self.W.T + s**2 * torch.eye(dx, dtype=torch.float64))

    def encode(self, x, c=None):
        return FullGaussian((x - self.b) @ self.W @ self.post_cov.T / self.s**2, self.chol)

    def log_weights(self, x, k, q=None, generator=None, c=None):
        q = self.encode(x) if q is None else q
        z = q.rsample(k, generator=generator)  # (k, B, dz)
        log_px_z = D.Normal(z @ self.W.T + self.b, self.s).log_prob(x).sum(-1)
        log_pz = D.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return log_px_z + log_pz - q.log_prob(z)


def test_importance_sampling_is_exact_with_true_posterior():
    m = LinearGaussian(inflate=1.0)
    x = m.marginal.sample((37,))
    est, elbo = log_likelihood(m, x, k=10, sampling=Sampling(rows=8))  # chunked: 1 image x 8, then 2 samples
    exact = m.marginal.log_prob(x)
    torch.testing.assert_close(est, exact.to(est.dtype), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(elbo, exact.to(elbo.dtype), rtol=1e-5, atol=1e-5)


def test_importance_sampling_converges_and_tightens_with_k():
    m = LinearGaussian(inflate=2.5)
    x = m.marginal.sample((200,))
    exact = m.marginal.log_prob(x).mean()
    means = {}
    for k in (1, 10, 100, 3000):
        est, _ = log_likelihood(m, x, k=k, sampling=Sampling(seed=k, rows=4096))
        means[k] = est.mean()
    assert means[1] < means[10] < means[100] <= exact + 0.02
    assert abs(means[3000] - exact) < 0.05
    assert exact - means[1] > 0.3  # the inflated q makes the single-sample bound visibly loose


def test_log_likelihood_rejects_models_without_density():
    class NoDensity(torch.nn.Module):
        has_density = False

    with pytest.raises(TypeError, match="density"):
        log_likelihood(NoDensity(), torch.zeros(2, 3))
