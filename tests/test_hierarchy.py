"""Hierarchical latents: the Gaussian chain against the closed form of a linear-Gaussian
chain, the two chains' shared code layout, and every command on a two-layer model."""

import math

import pytest
import torch

from vaelab.cli import main
from vaelab.config import Config, ConfigError, TrainConfig
from vaelab.distributions import DiagonalGaussian, GaussianChain, standard_normal_log_prob
from vaelab.models import build_model, check_config
from vaelab.noise import ExampleNoise
from vaelab.objectives import Step, elbo

A, B, T = torch.tensor([2.0, -0.5]), torch.tensor([1.0, 0.3]), torch.tensor([0.5, 1.5])  # z2 = A z1 + B + T eps


def _linear_chain(reverse=False) -> GaussianChain:
    """z1 ~ N(m, s^2), z2 | z1 ~ N(A z1 + B, T^2), two dims per layer, no batch dims."""
    first = DiagonalGaussian(torch.tensor([0.5, -1.0]), torch.log(torch.tensor([0.8, 2.0])))

    def step(z):
        return DiagonalGaussian(A * z + B, torch.log(T).expand_as(z))

    return GaussianChain(first, [step], (2, 2), reverse=reverse)


def test_chain_density_is_the_joint_gaussian_of_a_linear_chain():
    chain = _linear_chain()
    m, s = chain.first.mean, chain.first.std
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    expected = 0
    for d in range(2):  # each dim pair (z1_d, z2_d) is jointly Gaussian
        cov = torch.tensor([[s[d] ** 2, A[d] * s[d] ** 2], [A[d] * s[d] ** 2, A[d] ** 2 * s[d] ** 2 + T[d] ** 2]])
        joint = torch.distributions.MultivariateNormal(torch.stack([m[d], A[d] * m[d] + B[d]]), cov)
        expected = expected + joint.log_prob(torch.stack([z[:, d], z[:, 2 + d]], -1))
    torch.testing.assert_close(chain.log_prob(z), expected)


def test_chain_samples_have_the_closed_form_marginals_and_their_own_density():
    chain = _linear_chain()
    z, log_p = chain.rsample_with_log_prob(200_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_p, chain.log_prob(z))
    m, s = chain.first.mean, chain.first.std
    z2 = z[:, 2:]
    torch.testing.assert_close(z2.mean(0), A * m + B, atol=0.02, rtol=0)
    torch.testing.assert_close(z2.var(0), A**2 * s**2 + T**2, atol=0.0, rtol=0.02)
    torch.testing.assert_close(chain.mean, torch.cat([m, A * m + B]))


def test_a_reversed_chain_keeps_the_first_layer_last_in_the_code():
    """The prior runs top-down but writes codes bottom-up, like the posterior."""
    fwd, rev = _linear_chain(), _linear_chain(reverse=True)
    z = torch.randn(3, 4)
    flipped = torch.cat([z[:, 2:], z[:, :2]], -1)
    torch.testing.assert_close(rev.log_prob(flipped), fwd.log_prob(z))
    g = torch.Generator()
    zr = rev.sample(4, generator=g.manual_seed(2))
    zf = fwd.sample(4, generator=g.manual_seed(2))
    torch.testing.assert_close(zr, torch.cat([zf[:, 2:], zf[:, :2]], -1))


def test_noise_tied_to_examples_differs_between_layers():
    """Each layer must get its own noise: with ExampleNoise keyed by (example, sample, dim), two
    layers drawn separately would share their first dims' noise."""
    first = DiagonalGaussian(torch.zeros(4000, 3), torch.zeros(4000, 3))
    chain = GaussianChain(first, [lambda z: DiagonalGaussian(torch.zeros_like(z), torch.zeros_like(z))], (3, 3))
    z, _ = chain.rsample_with_log_prob(1, generator=ExampleNoise(torch.arange(4000), 7))
    corr = torch.corrcoef(torch.stack([z[0, :, 0], z[0, :, 3]]))[0, 1]
    assert abs(corr.item()) < 0.1


def _hvae():
    torch.manual_seed(0)
    cfg = Config().replace(model={"model": "hvae", "hidden": [32], "decoder_hidden": None, "latent_dim": 3,
                                  "lower_latents": [5], "latent_hidden": [16]})
    return build_model(cfg.model, (1, 28, 28))


def test_hvae_prior_and_bound_cover_both_layers():
    m = _hvae()
    assert m.latent_dim == 8
    z = torch.randn(7, 8)
    with torch.no_grad():
        p1 = DiagonalGaussian(*m.down[0](z[:, 5:]).chunk(2, -1))
        torch.testing.assert_close(m.prior().log_prob(z), standard_normal_log_prob(z[:, 5:]) + p1.log_prob(z[:, :5]))
        # the decoder reads z1 only
        z2 = z.clone()
        z2[:, 5:] += 3
        torch.testing.assert_close(m.decode(z).mean, m.decode(z2).mean)
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    g = torch.Generator()
    with torch.no_grad():
        t = elbo(m, Step(x, generator=g.manual_seed(4)), TrainConfig(samples=3))
        q = m.encode(x)
        zq, log_q = q.rsample_with_log_prob(3, generator=g.manual_seed(4))
        torch.testing.assert_close(t["kl"], (log_q - m.prior().log_prob(zq)).mean(0))
        assert math.isfinite(float(t["elbo"].sum()))


def test_hvae_settings_that_cannot_work_are_refused():
    for extra, words in (({"lower_latents": []}, "below the top"), ({"flows": 2}, "drop --flows"),
                         ({"prior": "mog"}, "drop --flows and --prior"), ({"latent_hidden": [0]}, "positive")):
        with pytest.raises(ConfigError, match=words):
            check_config(Config().replace(model={"model": "hvae", **extra}))


def test_train_evaluate_sample_plot_a_two_layer_model(tmp_path):
    run = tmp_path / "hvae"
    assert main(["train", "--dataset", "mnist-sample", "--model", "hvae", "--epochs", "1", "--hidden", "32",
                 "--latent-dim", "4", "--lower-latents", "6", "--latent-hidden", "16", "--objective", "iwae",
                 "--samples", "3", "--quiet", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--k", "20", "--n", "50", "--quiet"]) == 0
    assert main(["sample", str(run), "--n", "8", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["plot", str(run), "--what", "samples,posterior,manifold", "--out", str(tmp_path / "plots")]) == 0
    from vaelab.checkpoint import load_run

    cfg, model = load_run(run)
    assert cfg.model.lower_latents == (6,) and model.latent_dim == 10
