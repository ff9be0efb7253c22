"""Each likelihood's log_prob against torch.distributions or numerical integration."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

from vaelab import distributions
from vaelab.config import Config, ConfigError
from vaelab.distributions import (
    LIKELIHOODS,
    DiscretizedLogistic,
    Gaussian,
    GaussianLikelihood,
    LogisticLikelihood,
    LogisticMixtureLikelihood,
)
from vaelab.models import check_data_fit

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
    cfg = Config().replace(model={"likelihood": likelihood}, data={"binarization": binarization})
    with pytest.raises(ConfigError, match="binarization"):  # checked where the likelihood is looked up
        check_data_fit(cfg.model, cfg.data.binarization)


# Mixture of discretized logistics (PixelCNN++). Decoder channels: K logits, then K*C
# locations, K*C log-scales and, for RGB, K*3 coefficients, component-major.

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def mixture_out(k, c, batch, hw=(1, 1), loc=(-0.1, 1.1), log_scale=(-4.0, -1.0), logit=2.0, coeff=1.0,
                dtype=torch.float64):
    """Random decoder output (*batch, out_channels, *hw) with parameters in the given ranges."""
    def uniform(lo_hi, n):
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(*batch, n, *hw, generator=G, dtype=dtype)

    parts = [logit * torch.randn(*batch, k, *hw, generator=G, dtype=dtype), uniform(loc, k * c), uniform(log_scale, k * c)]
    if c == 3:
        parts.append(coeff * torch.randn(*batch, 3 * k, *hw, generator=G, dtype=dtype))
    return torch.cat(parts, -3)


def reference_mixture_log_prob(out, x, k):
    """log p(x) by an explicit loop over components, pixels' bin masses as plain differences
    of logistic CDFs; out (B, out_channels, H, W), x (B, C, H, W) -> (B,)."""
    c = x.shape[-3]
    pi = torch.softmax(out[:, :k], 1)
    total = torch.zeros_like(x[:, 0])
    for j in range(k):
        p = pi[:, j]
        for ch in range(c):
            mean = out[:, k + j * c + ch]
            if c == 3 and ch == 1:
                mean = mean + torch.tanh(out[:, k + 2 * k * c + 3 * j]) * x[:, 0]
            if c == 3 and ch == 2:
                mean = (mean + torch.tanh(out[:, k + 2 * k * c + 3 * j + 1]) * x[:, 0]
                        + torch.tanh(out[:, k + 2 * k * c + 3 * j + 2]) * x[:, 1])
            s = out[:, k + k * c + j * c + ch].exp()
            upper = torch.where(x[:, ch] > 1 - 1e-6, 1.0, torch.sigmoid((x[:, ch] + 0.5 / 255 - mean) / s))
            lower = torch.where(x[:, ch] < 1e-6, 0.0, torch.sigmoid((x[:, ch] - 0.5 / 255 - mean) / s))
            p = p * (upper - lower)
        total = total + p
    return total.log().flatten(1).sum(1)


def test_logistic_mixture_is_registered_with_its_channel_count():
    assert LIKELIHOODS["logistic-mixture"] is LogisticMixtureLikelihood
    lik = LogisticMixtureLikelihood((3, 32, 32), scale="fixed", fixed_std=0.3, mixture=10)
    assert lik.name == "logistic-mixture" and lik.discrete and not lik.binary
    assert lik.out_channels == 10 + 30 + 30 + 30 and not list(lik.parameters())
    assert LogisticMixtureLikelihood((1, 28, 28), mixture=5).out_channels == 5 + 5 + 5
    assert LogisticMixtureLikelihood((2, 8, 8), mixture=4).out_channels == 4 + 8 + 8  # no coefficients
    with pytest.raises(ValueError, match="decoder channels"):
        lik(torch.zeros(2, 69, 32, 32))


def test_grey_logistic_mixture_sums_to_one_over_256_levels():
    """Parameter sets (P,) against the 256 levels (256, 1, 1, 1) broadcast to (P, 256)."""
    k = 4
    out = mixture_out(k, 1, (64, 1), loc=(-3.0, 4.0), log_scale=(-15.0, 5.0), logit=30.0)
    # components on the edge levels and far outside, with tiny and huge scales
    locs, log_scales = torch.tensor([0.0, 1.0, -50.0, 60.0]), torch.tensor([-20.0, 20.0, -9.0, 0.0])
    out[:4, 0, k:2 * k, 0, 0] = torch.stack([locs.roll(i) for i in range(4)]).double()
    out[:4, 0, 2 * k:, 0, 0] = torch.stack([log_scales.roll(-i) for i in range(4)]).double()
    lp = LogisticMixtureLikelihood((1, 1, 1), mixture=k)(out).log_prob(LEVELS.view(256, 1, 1, 1))
    assert lp.shape == (64, 256) and torch.isfinite(lp).all()
    torch.testing.assert_close(torch.logsumexp(lp, 1), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-9)


def test_rgb_logistic_mixture_sums_to_one():
    """Summing p(r, g, b) over b must leave the (R, G) marginal sum_k pi_k p_k(r) p_k(g | r),
    built here from single discretized logistics, and that marginal sums to 1 over all
    256^2 (r, g); checking every b sum would take 256^3 evaluations, so a few (r, g) do."""
    k, lik = 3, LogisticMixtureLikelihood((3, 1, 1), mixture=3)
    out = mixture_out(k, 3, (4,), loc=(-0.5, 1.5), log_scale=(-8.0, 1.0), logit=3.0, coeff=2.0)
    log_pi = torch.log_softmax(out[:, :k, 0, 0], 1)
    loc, log_scale = out[:, k:4 * k, 0, 0].view(4, k, 3), out[:, 4 * k:7 * k, 0, 0].view(4, k, 3)
    alpha = torch.tanh(out[:, 7 * k::3, 0, 0])

    def rg_marginal(r, g):  # levels (N,) -> (4, N); parameters (4, k, 1, 1, 1, 1), pixels (N, 1, 1, 1)
        r, g = r.view(-1, 1, 1, 1), g.view(-1, 1, 1, 1)
        lp_r = DiscretizedLogistic(loc[..., 0].view(4, k, 1, 1, 1, 1), log_scale[..., 0].view(4, k, 1, 1, 1, 1)).log_prob(r)
        lp_g = DiscretizedLogistic(loc[..., 1].view(4, k, 1, 1, 1, 1) + alpha.view(4, k, 1, 1, 1, 1) * r,
                                   log_scale[..., 1].view(4, k, 1, 1, 1, 1)).log_prob(g)
        return torch.logsumexp(log_pi.unsqueeze(-1) + lp_r + lp_g, 1)

    r_all, g_all = (a.flatten() for a in torch.meshgrid(LEVELS, LEVELS, indexing="ij"))
    torch.testing.assert_close(torch.logsumexp(rg_marginal(r_all, g_all), 1), torch.zeros(4, dtype=torch.float64),
                               rtol=0, atol=1e-9)

    pairs = torch.cat([torch.tensor([[0, 0], [255, 255], [0, 255], [255, 0], [128, 3]]),
                       torch.randint(0, 256, (11, 2), generator=G)]).to(torch.float64) / 255
    x = torch.cat([pairs.view(-1, 1, 2).expand(-1, 256, 2), LEVELS.view(1, 256, 1).expand(len(pairs), 256, 1)], -1)
    lp = lik(out.view(4, 1, 1, -1, 1, 1)).log_prob(x.view(len(pairs), 256, 3, 1, 1))  # (4, pairs, 256)
    assert torch.isfinite(lp).all()
    torch.testing.assert_close(torch.logsumexp(lp, -1), rg_marginal(pairs[:, 0], pairs[:, 1]), rtol=0, atol=1e-9)


@pytest.mark.parametrize("c", [1, 3, 2])
def test_logistic_mixture_matches_explicit_loop_over_components(c):
    k = 3
    # scales >= e^-2.5 keep every bin mass above ~1e-7, where CDF differences are still accurate
    out = mixture_out(k, c, (5,), hw=(3, 4), log_scale=(-2.5, -1.0))
    x = torch.randint(0, 256, (5, c, 3, 4), generator=G).to(torch.float64) / 255
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0  # the edge bins
    ours = LogisticMixtureLikelihood((c, 3, 4), mixture=k)(out).log_prob(x)
    torch.testing.assert_close(ours, reference_mixture_log_prob(out, x, k), rtol=0, atol=1e-5)


def test_one_component_grey_mixture_is_the_discretized_logistic():
    loc, log_scale = torch.rand(6, 1, 5, 5, generator=G) * 1.4 - 0.2, torch.rand(6, 1, 5, 5, generator=G) * 6 - 7
    x = torch.randint(0, 256, (6, 1, 5, 5), generator=G) / 255
    out = torch.cat([torch.randn(6, 1, 5, 5, generator=G), loc, log_scale], 1)  # one logit: pi = 1 whatever it is
    torch.testing.assert_close(LogisticMixtureLikelihood((1, 5, 5), mixture=1)(out).log_prob(x),
                               DiscretizedLogistic(loc, log_scale).log_prob(x))


@pytest.mark.parametrize("c", [1, 3])
def test_logistic_mixture_scores_k_decodings_per_image(c):
    lik = LogisticMixtureLikelihood((c, 4, 3), mixture=2)
    out = mixture_out(2, c, (5, 3), hw=(4, 3), dtype=torch.float32)
    x = torch.randint(0, 256, (3, c, 4, 3), generator=G) / 255
    lp = lik(out).log_prob(x)
    assert lp.shape == (5, 3)
    torch.testing.assert_close(lp, torch.stack([lik(row).log_prob(x) for row in out]))
    torch.testing.assert_close(lp[:, 1], lik(out[:, 1]).log_prob(x[1]))  # one image under 5 codes


@pytest.mark.parametrize("c", [1, 3])
def test_logistic_mixture_samples_grey_levels_following_the_channel_chain(c, monkeypatch):
    # a scale far below the floor that training uses, so each draw is exactly its quantised mean
    monkeypatch.setattr(distributions, "LOG_SCALE_MIN", -40.0)
    k, lik = 4, LogisticMixtureLikelihood((c, 5, 6), mixture=4)
    out = mixture_out(k, c, (2, 3), hw=(5, 6), loc=(-0.3, 1.3), logit=1.0, coeff=1.5, dtype=torch.float32)
    s = lik(out).sample(torch.Generator().manual_seed(2))
    assert s.shape == (2, 3, c, 5, 6) and s.min() >= 0 and s.max() <= 1
    assert torch.equal(s * 255, (s * 255).round())

    # one component per pixel (a huge logit) with a negligible scale: the sample is the
    # quantised mean, and G and B are shifted by the values drawn for R (and G)
    hot = torch.randint(0, k, (2, 3, 1, 5, 6), generator=G)
    out[..., :k, :, :] = 1e4 * F.one_hot(hot.squeeze(2), k).permute(0, 1, 4, 2, 3).float()
    out[..., k + k * c:k + 2 * k * c, :, :] = -30.0
    d = lik(out)
    s = d.sample(torch.Generator().manual_seed(3))
    idx = hot.unsqueeze(2).expand(2, 3, 1, c, 5, 6)
    loc = out[..., k:k + k * c, :, :].unflatten(2, (k, c)).gather(2, idx).squeeze(2)

    def q(y):
        return torch.round(y.clamp(0, 1) * 255) / 255

    if c == 1:
        expected, own = q(loc), loc
    else:
        a, b, g = torch.tanh(out[..., k + 2 * k * c:, :, :].unflatten(2, (k, 3)).gather(2, idx).squeeze(2)).unbind(2)
        r_ = q(loc[:, :, 0])
        g_ = q(loc[:, :, 1] + a * r_)
        expected = torch.stack([r_, g_, q(loc[:, :, 2] + b * r_ + g * g_)], 2)
        own_g = loc[:, :, 1] + a * loc[:, :, 0]
        own = torch.stack([loc[:, :, 0], own_g, loc[:, :, 2] + b * loc[:, :, 0] + g * own_g], 2)
    assert torch.equal(s, expected)
    torch.testing.assert_close(d.mean, own.clamp(0, 1))


def test_logistic_mixture_draws_components_by_their_weights(monkeypatch):
    monkeypatch.setattr(distributions, "LOG_SCALE_MIN", -40.0)  # draws land on their component's mean
    out = torch.tensor([math.log(0.3), math.log(0.7), 0.2, 0.8, -9.0, -9.0]).view(1, 6, 1, 1).expand(20000, 6, 1, 1)
    s = LogisticMixtureLikelihood((1, 1, 1), mixture=2)(out).sample(torch.Generator().manual_seed(4))
    assert set(torch.unique(torch.round(s * 255)).tolist()) == {51.0, 204.0}
    assert abs((s < 0.5).float().mean().item() - 0.3) < 0.015


@pytest.mark.parametrize("c", [1, 3])
def test_logistic_mixture_gradients_are_finite_for_extreme_parameters(c):
    k = 3
    out = mixture_out(k, c, (4,), hw=(4, 4), loc=(-60.0, 60.0), log_scale=(-20.0, 20.0), logit=1e3, coeff=50.0,
                      dtype=torch.float32).requires_grad_()
    x = torch.randint(0, 256, (4, c, 4, 4), generator=G) / 255
    x[:, :, 0] = 0.0
    x[:, :, 1] = 1.0
    lp = LogisticMixtureLikelihood((c, 4, 4), mixture=k)(out).log_prob(x)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and torch.isfinite(out.grad).all()


def plain_mixture_log_prob(d, x):
    """The mixture's log p(x) through plain autograd ops: the channel chain and `log_bin_mass`."""
    x = x.unsqueeze(-4)  # a component axis, broadcast against K
    means, _ = d._chain(d.loc, d.coeffs, lambda ch, mean: x[..., ch, :, :])
    per_component = distributions.log_bin_mass(x, means, d.log_scale).sum(-3)
    return torch.logsumexp(F.log_softmax(d.logits, dim=-3) + per_component, dim=-3).flatten(-2).sum(-1)


def test_mixture_log_prob_differentiates_through_the_data_too():
    out = mixture_out(3, 3, (4,), hw=(2, 2))
    x = (torch.randint(0, 256, (4, 3, 2, 2), generator=G).double() / 255).requires_grad_()
    d = LogisticMixtureLikelihood((3, 2, 2), mixture=3)(out)
    (g,) = torch.autograd.grad(d.log_prob(x).sum(), x)
    (ref,) = torch.autograd.grad(plain_mixture_log_prob(d, x).sum(), x)
    torch.testing.assert_close(g, ref)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("lead", [(5,), (3, 5)])
def test_fused_mixture_log_prob_and_gradients_equal_plain_autograd(c, lead, monkeypatch):
    # chunks of 2 images, so that several chunks, and a short last one, are exercised
    monkeypatch.setattr(distributions, "MIXTURE_CHUNK", 2 * 4 * c * 3 * 4)
    k = 4
    out = mixture_out(k, c, lead, hw=(3, 4), log_scale=(-9.0, 1.0), coeff=2.0).requires_grad_()
    x = torch.randint(0, 256, (5, c, 3, 4), generator=G).double() / 255
    x[0], x[1] = 0.0, 1.0  # the edge bins
    d = LogisticMixtureLikelihood((c, 3, 4), mixture=k)(out)
    fused, plain = d.log_prob(x), plain_mixture_log_prob(d, x)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-9)
    w = torch.randn(fused.shape, generator=G, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad((fused * w).sum(), out, retain_graph=True)
    (g_plain,) = torch.autograd.grad((plain * w).sum(), out)
    torch.testing.assert_close(g_fused, g_plain, rtol=1e-9, atol=1e-9)


def test_log_scales_below_the_floor_give_finite_densities_and_gradients():
    loc = torch.tensor([0.2, 0.9]).view(1, 1, 2).requires_grad_()
    log_scale = torch.full((1, 1, 2), -60.0, requires_grad=True)
    d = DiscretizedLogistic(loc, log_scale)
    assert float(d.log_scale.detach().min()) == pytest.approx(distributions.LOG_SCALE_MIN)
    lp = d.log_prob(torch.tensor([0.2, 0.0]).view(1, 1, 2))  # one pixel on its mean, one far off
    assert torch.isfinite(lp) and -2 < float(lp) - float(log_bin_far(0.9)) < 2
    lp.backward()
    assert torch.isfinite(loc.grad).all()


def log_bin_far(loc: float) -> float:
    """log P(x = 0) for a logistic at `loc` with the floor scale: the bottom bin's tail."""
    a = (loc - 0.5 / 255) / math.exp(distributions.LOG_SCALE_MIN)
    return -(a + math.log1p(math.exp(-a)))  # log sigmoid(-a)
