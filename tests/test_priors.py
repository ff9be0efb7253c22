"""Priors beyond N(0, I): the mixture density against closed forms, the VampPrior's definition,
the Monte-Carlo KL, and every command on models trained with them."""

import math

import pytest
import torch

from vaelab.cli import main
from vaelab.config import Config, ConfigError, TrainConfig
from vaelab.distributions import DiagonalGaussian, GaussianMixture, StandardNormal
from vaelab.models import build_model, check_config
from vaelab.objectives import Step, elbo, iwae


def test_one_component_mixture_is_that_gaussian():
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(1, 3, generator=g), 0.3 * torch.randn(1, 3, generator=g)
    z = torch.randn(7, 5, 3, generator=g)
    mix = GaussianMixture(m, s, torch.zeros(1))
    torch.testing.assert_close(mix.log_prob(z), DiagonalGaussian(m[0], s[0]).log_prob(z))


def test_mixture_density_is_the_weighted_sum_and_integrates_to_one():
    means = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64)
    log_std = torch.tensor([[0.0], [-1.0], [0.5]], dtype=torch.float64)
    logits = torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64)
    mix = GaussianMixture(means, log_std, logits)
    z = torch.linspace(-15, 15, 60001, dtype=torch.float64).view(-1, 1)
    w = torch.softmax(logits, 0)
    explicit = sum(w[k] * torch.exp(DiagonalGaussian(means[k], log_std[k]).log_prob(z)) for k in range(3))
    torch.testing.assert_close(torch.exp(mix.log_prob(z)), explicit)
    assert torch.trapezoid(torch.exp(mix.log_prob(z)), z.view(-1)).item() == pytest.approx(1, abs=1e-8)


def test_mixture_samples_follow_the_weights():
    mix = GaussianMixture(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]), torch.full((2, 2), -2.0),
                          torch.log(torch.tensor([0.25, 0.75])))
    z = mix.sample(20000, generator=torch.Generator().manual_seed(0))
    assert (z[:, 0] > 0).float().mean().item() == pytest.approx(0.75, abs=0.015)
    assert z[z[:, 0] > 0, 0].mean().item() == pytest.approx(10, abs=0.01)


def _model(prior, k=7, flows=0):
    torch.manual_seed(0)
    cfg = Config().replace(model={"hidden": [32], "decoder_hidden": None, "latent_dim": 4, "prior": prior,
                                  "prior_components": k, "flows": flows})
    return build_model(cfg.model, (1, 28, 28))


def test_vamp_prior_is_the_mean_of_the_pseudo_inputs_posteriors():
    m = _model("vamp", k=5)
    z = torch.randn(6, 4)
    with torch.no_grad():
        q = m.encode(torch.sigmoid(m.pseudo_inputs))
        explicit = torch.logsumexp(torch.stack([DiagonalGaussian(q.mean[k], q.log_std[k]).log_prob(z)
                                                for k in range(5)]), 0) - math.log(5)
        torch.testing.assert_close(m.prior().log_prob(z), explicit)
    # the pseudo-inputs are trained: the ELBO's gradient reaches them
    x = (torch.rand(3, 1, 28, 28) < 0.3).float()
    elbo(m, Step(x), TrainConfig())["loss"].mean().backward()
    assert m.pseudo_inputs.grad is not None and m.pseudo_inputs.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_kl_is_monte_carlo_to_the_prior(prior):
    m = _model(prior)
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        t = elbo(m, Step(x, generator=g), TrainConfig(samples=4))
        g.manual_seed(2)
        q = m.encode(x)
        z, log_q = q.rsample_with_log_prob(4, generator=g)
        torch.testing.assert_close(t["kl"], (log_q - m.prior().log_prob(z)).mean(0))
        # IWAE and IS use the prior's density too: with k = 1 the bound is one ELBO sample
        g.manual_seed(3)
        lw = m.log_weights(x, 1, generator=g)
        g.manual_seed(3)
        torch.testing.assert_close(iwae(m, Step(x, generator=g), TrainConfig(samples=1))["iwae"], lw[0])
    assert m.prior().closed_form_kl is False and isinstance(_model("normal").prior(), StandardNormal)


def test_prior_combinations_that_cannot_work_are_refused():
    for model, extra, words in (("ae", {"prior": "mog"}, "autoencoder"), ("vae", {"prior": "vamp", "flows": 2}, "flows"),
                                ("cvae", {"prior": "vamp"}, "pseudo-inputs"), ("vae", {"prior": "gmm"}, "unknown prior")):
        with pytest.raises(ConfigError, match=words):
            check_config(Config().replace(model={"model": model, **extra}))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_train_evaluate_sample_plot_with_a_prior(tmp_path, prior):
    run = tmp_path / prior
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                 "--prior", prior, "--prior-components", "12", "--quiet", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--k", "20", "--n", "50", "--quiet"]) == 0
    assert main(["sample", str(run), "--n", "8", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["plot", str(run), "--what", "samples", "--out", str(tmp_path / "plots")]) == 0
    from vaelab.checkpoint import load_run

    cfg, model = load_run(run)
    assert cfg.model.prior == prior and model.prior().means.shape == (12, 4)
