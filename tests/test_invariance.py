"""Invariant codes: the sampled estimate of KL(q(z|x) || q(z)), adversarial censoring, vector
conditions, and the probe in `vaelab compare` with its trade-off figure."""

import json
import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from vaelab.arrays import load_array
from vaelab.cli import main
from vaelab.compare import Variant, compare
from vaelab.config import Config, ConfigError, TrainConfig, validate
from vaelab.data import DataError, load_dataset
from vaelab.distributions import DiagonalGaussian
from vaelab.images import Transform
from vaelab.models import bind_objective, build_model
from vaelab.objectives import Step, bind, censor, dependence, icvae, sampled_marginal_kl


def test_sampled_marginal_kl_is_log_q_minus_the_log_density_of_the_batch_mixture():
    g = torch.Generator().manual_seed(0)
    mean, log_std = 1.5 * torch.randn(6, 3, generator=g), 0.5 * torch.randn(6, 3, generator=g)
    q = DiagonalGaussian(mean, log_std)
    z, log_q = q.rsample_with_log_prob(4, generator=g)  # (4, 6, 3), (4, 6)
    ours = sampled_marginal_kl(z, log_q, mean, log_std)
    parts = [D.Independent(D.Normal(mean[j], log_std[j].exp()), 1) for j in range(6)]
    for i in range(6):
        mix = torch.stack([p.log_prob(z[:, i]) for p in parts]).logsumexp(0) - math.log(6)  # (4,)
        torch.testing.assert_close(ours[i], (parts[i].log_prob(z[:, i]) - mix).mean(), rtol=1e-5, atol=1e-5)
    assert (ours <= math.log(6) + 1e-5).all()  # the mixture holds q(z|x_i) itself
    # one process's rows against the whole batch (data-parallel): the same rows of the full result
    torch.testing.assert_close(sampled_marginal_kl(z[:, 2:4], log_q[:, 2:4], mean, log_std), ours[2:4])


def _model(name="icvae", cond_dim=10):
    torch.manual_seed(0)
    cfg = Config().replace(model={"model": name, "hidden": [32], "latent_dim": 3}).model
    return build_model(cfg, (1, 28, 28), cond_dim=cond_dim)


X = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
C = torch.eye(10)[[3, 1, 4, 1, 5, 9]]


def test_icvae_takes_the_sampled_estimate_and_refuses_an_unknown_one():
    m = _model()
    t = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(3)),
              TrainConfig(beta=0.5, lam=2.0, marginal="sampled"))
    torch.testing.assert_close(t["loss"], -3.0 * t["recon"] + 0.5 * t["kl"] + 2.0 * t["kl_marginal"])
    q = m.encode(X, C)
    z, log_q = q.rsample_with_log_prob(1, generator=torch.Generator().manual_seed(3))  # the same draws
    torch.testing.assert_close(t["kl_marginal"], sampled_marginal_kl(z, log_q, q.mean, q.log_std))
    pairwise = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(3)), TrainConfig(lam=2.0))["kl_marginal"]
    assert not torch.allclose(pairwise, t["kl_marginal"])
    with pytest.raises(ValueError, match="unknown marginal estimate 'nope'; choose pairwise, sampled"):
        icvae(m, Step(X, C), TrainConfig(marginal="nope"))
    assert bind("icvae", TrainConfig(marginal="sampled")).options["marginal"] == "sampled"
    with pytest.raises(ConfigError, match="marginal"):
        validate(Config().replace(train={"marginal": "nope"}))


def test_dependence_is_zero_for_independent_codes_one_for_a_copy_and_ignores_scale_and_order():
    g = torch.Generator().manual_seed(0)
    c = torch.eye(5)[torch.randint(0, 5, (400,), generator=g)]
    free = torch.randn(400, 4, generator=g)
    assert float(dependence(free, c)) < 0.03
    assert float(dependence(c, c)) == pytest.approx(1.0, abs=0.01)
    leaky = torch.cat([free, 0.5 * c.argmax(1, keepdim=True).float()], 1)  # one dimension carries the class
    assert float(dependence(leaky, c)) > 5 * float(dependence(free, c))
    perm = torch.randperm(400, generator=g)
    torch.testing.assert_close(dependence(leaky[perm], c[perm]), dependence(leaky, c))
    torch.testing.assert_close(dependence(3 * leaky, c), dependence(leaky, c))  # the median bandwidth scales
    tiny = torch.cat([free, 1e-3 * c.argmax(1, keepdim=True).float()], 1)  # a small dimension hides nothing
    assert float(dependence(tiny, c)) > 5 * float(dependence(free, c))
    vector = torch.randn(400, 2, generator=g)  # side information, not classes
    assert float(dependence(torch.cat([free, vector], 1), vector)) > 5 * float(dependence(free, vector))


def test_icvae_adds_the_weighted_dependence_of_the_codes_on_c():
    m = _model()
    plain = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(3)), TrainConfig(lam=1.0))
    t = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(3)), TrainConfig(lam=1.0, hsic=50.0))
    assert (plain["dependence"] == 0).all()
    q = m.encode(X, C)
    torch.testing.assert_close(t["dependence"], dependence(q.mean, C).expand(6))
    torch.testing.assert_close(t["loss"], plain["loss"] + 50.0 * t["dependence"])
    m.zero_grad()
    t["dependence"][0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())
    assert bind("icvae", TrainConfig(hsic=2.0)).options["hsic"] == 2.0


def _adversarial_icvae(weight, cond_dim=10):
    m = _model(cond_dim=cond_dim)
    bind_objective(m, TrainConfig(adversary=weight))
    return m


def _icvae_grads(m, c, weight, term="loss", how="confusion"):
    m.zero_grad()
    step = Step(X, c, generator=torch.Generator().manual_seed(5))
    icvae(m, step, TrainConfig(adversary=weight, adversary_loss=how))[term].sum().backward()
    def grads(net):
        return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}
    return grads(m.encoder), grads(m.objective_nets["adversary"])


def test_icvae_adversary_learns_c_while_the_encoder_pulls_its_predictions_to_chance():
    m = _adversarial_icvae(2.0)
    assert m.objective_nets["adversary"][-1].out_features == 10
    t = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig(adversary=2.0, adversary_loss="confusion"))
    plain = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig())
    torch.testing.assert_close(t["loss"], plain["loss"] + t["adversary"] + 2.0 * t["confusion"])
    assert (plain["adversary"] == 0).all() and (plain["confusion"] == 0).all()
    q = m.encode(X, C)
    z = q.rsample(1, generator=torch.Generator().manual_seed(5))[0]
    net = m.objective_nets["adversary"]
    ce = [torch.nn.functional.cross_entropy(net(code), C.argmax(1), reduction="none") for code in (q.mean, z)]
    torch.testing.assert_close(t["adversary"], (ce[0] + ce[1]) / 2)  # the code and the draw
    prior = C.mean(0)
    kl = [(prior * (prior.clamp_min(1e-12).log() - net(code).log_softmax(-1))).sum(-1) for code in (q.mean, z)]
    torch.testing.assert_close(t["confusion"], (kl[0] + kl[1]) / 2)  # KL(class shares || prediction)
    enc0, adv0 = _icvae_grads(m, C, 0.0)
    enc1, adv1 = _icvae_grads(m, C, 1.0)
    enc3, adv3 = _icvae_grads(m, C, 3.0)
    # the adversary learns from its own loss only, on codes held fixed, whatever the weight
    nothing, own = _icvae_grads(m, C, 1.0, "adversary")
    assert all((g == 0).all() for g in nothing.values())  # the adversary's loss never reaches the encoder
    for n in own:
        for got in (adv1, adv3):
            torch.testing.assert_close(got[n], own[n])
    # the encoder gets the ICVAE's gradient plus the weight times the confusion's, nothing of the adversary's loss
    assert any(not torch.allclose(enc0[n], enc1[n]) for n in enc0)
    for n in enc0:
        torch.testing.assert_close(enc3[n], enc0[n] + 3 * (enc1[n] - enc0[n]), rtol=1e-4, atol=1e-5)


def test_icvae_confusion_is_zero_at_chance_for_classes_and_vectors():
    from vaelab.objectives import _confusion

    c = torch.eye(4)[[0, 0, 1, 3]]
    chance = c.mean(0).clamp_min(1e-12).log().expand(2, 4, 4)  # (L, B, C') logits at the class shares
    torch.testing.assert_close(_confusion(chance, c), torch.zeros(2, 4), atol=1e-6, rtol=0)
    assert (_confusion(torch.zeros(2, 4, 4), c) > 0).all()  # a uniform guess is not chance here
    v = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_confusion(v.mean(0).expand(1, 5, 2), v), torch.zeros(1, 5))
    torch.testing.assert_close(_confusion(v[None], v), 0.5 * (v - v.mean(0)).square().sum(-1)[None])
    m = _adversarial_icvae(1.0, cond_dim=2)  # side information: the adversary regresses it
    t = icvae(m, Step(X, v[:1].expand(6, 2) + torch.arange(6.0)[:, None]), TrainConfig(adversary=1.0, adversary_loss="confusion"))
    assert t["adversary"].shape == (6,) and m.objective_nets["adversary"][-1].out_features == 2


def test_icvae_reversed_adversary_adds_the_censored_models_term_to_the_icvae_loss():
    m = _adversarial_icvae(3.0)
    t = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig(adversary=3.0))  # reverse: the default
    plain = icvae(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig())
    torch.testing.assert_close(t["loss"], plain["loss"] + t["adversary"])
    assert (t["confusion"] == 0).all()
    enc0, _ = _icvae_grads(m, C, 0.0, how="reverse")
    enc1, adv1 = _icvae_grads(m, C, 1.0, how="reverse")
    enc3, adv3 = _icvae_grads(m, C, 3.0, how="reverse")
    for n in adv1:  # the adversary minimises its loss whatever the weight ...
        torch.testing.assert_close(adv3[n], adv1[n])
    for n in enc0:  # ... and the encoder maximises it, scaled by the weight
        torch.testing.assert_close(enc3[n], enc0[n] - 3 * (enc0[n] - enc1[n]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown adversary loss 'nope'; choose reverse, confusion"):
        icvae(m, Step(X, C), TrainConfig(adversary=1.0, adversary_loss="nope"))
    with pytest.raises(ConfigError, match="adversary_loss"):
        validate(Config().replace(train={"adversary_loss": "nope"}))


def test_icvae_adversary_is_built_only_when_weighted_and_refused_unbound_or_negative():
    m = _model()
    bind_objective(m, TrainConfig())
    assert not list(getattr(m, "objective_nets", {}))  # no adversary without a weight
    with pytest.raises(ValueError, match="needs its adversary; bind the objective"):
        icvae(m, Step(X, C), TrainConfig(adversary=1.0))
    assert bind("icvae", TrainConfig(adversary=2.0)).options["adversary"] == 2.0
    with pytest.raises(ConfigError, match="adversary"):
        validate(Config().replace(train={"adversary": -1.0}))


def _grads(m, lam):
    m.zero_grad()
    censor(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig(lam=lam))["loss"].sum().backward()
    return ({n: p.grad.clone() for n, p in m.encoder.named_parameters()},
            {n: p.grad.clone() for n, p in m.adversary.named_parameters()})


def test_censor_trains_the_adversary_down_and_the_encoder_against_it_by_lambda():
    m = _model("censored")
    enc0, adv0 = _grads(m, 0.0)
    enc1, adv1 = _grads(m, 1.0)
    enc3, adv3 = _grads(m, 3.0)
    # the adversary minimises its own loss whatever lambda is
    m.zero_grad()
    censor(m, Step(X, C, generator=torch.Generator().manual_seed(5)), TrainConfig())["adversary"].sum().backward()
    for n, p in m.adversary.named_parameters():
        for got in (adv0, adv1, adv3):
            torch.testing.assert_close(got[n], p.grad)
    # the encoder gets the ELBO's gradient minus lambda times the adversary's: g(3) = g(0) - 3 (g(0) - g(1))
    assert any(not torch.allclose(enc0[n], enc1[n]) for n in enc0)
    for n in enc0:
        torch.testing.assert_close(enc3[n], enc0[n] - 3 * (enc0[n] - enc1[n]), rtol=1e-4, atol=1e-5)


def test_censor_reads_a_class_by_cross_entropy_and_a_vector_by_squared_error():
    m = _model("censored")
    g = torch.Generator().manual_seed(2)
    t = censor(m, Step(X, C, generator=g), TrainConfig())
    q = m.encode(X, C)
    z = q.rsample(1, generator=torch.Generator().manual_seed(2))[0]
    ce = [torch.nn.functional.cross_entropy(m.adversary(code), C.argmax(1), reduction="none") for code in (q.mean, z)]
    torch.testing.assert_close(t["adversary"], (ce[0] + ce[1]) / 2)  # the code and the draw
    v = _model("censored", cond_dim=2)
    c = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
    t = censor(v, Step(X, c, generator=torch.Generator().manual_seed(2)), TrainConfig())
    q = v.encode(X, c)
    z = q.rsample(1, generator=torch.Generator().manual_seed(2))[0]
    se = [0.5 * (v.adversary(code) - c).square().sum(1) for code in (q.mean, z)]
    torch.testing.assert_close(t["adversary"], (se[0] + se[1]) / 2)


def test_censored_model_with_vector_conditions_trains_resumes_and_keeps_its_adversary(tmp_path):
    data = load_dataset("mnist-sample")
    rng = np.random.default_rng(0)
    path = tmp_path / "c.npz"
    np.savez(path, train=rng.random((len(data.train), 3)), test=rng.random((len(data.test), 3)))
    run = tmp_path / "run"
    flags = ["--dataset", "mnist-sample", "--conditions", str(path), "--hidden", "16", "--latent-dim", "2", "--quiet"]
    assert main(["train", "--model", "censored", "--lambda", "2", "--epochs", "1", "--out", str(run), *flags]) == 0
    from vaelab.checkpoint import load_run

    _, model = load_run(run)
    assert model.adversary[-1].out_features == 3 and model.objective.name == "censor"
    assert "test_adversary" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    _, resumed = load_run(run)
    assert not torch.equal(resumed.adversary[0].weight, model.adversary[0].weight)  # trained on, not rebuilt
    assert main(["train", "--model", "icvae", "--marginal", "sampled", "--epochs", "1", "--out",
                 str(tmp_path / "icvae"), *flags]) == 0


def test_vector_labels_in_an_array_file_point_to_conditions(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((10, 8, 8), np.uint8), labels=np.zeros((10, 3)))
    with pytest.raises(DataError, match="a vector per image is side information: .* --conditions FILE.npz"):
        load_array(path, Transform(None, 0, "white", 0.3), progress=False)


def test_compare_probes_each_run_and_draws_the_tradeoff(compare_in_process, tmp_path, capsys):
    out = tmp_path / "sweep"
    base = ("--dataset", "mnist-sample", "--model", "icvae", "--hidden", "16", "--latent-dim", "2")
    variants = [Variant("lam0", ("--lambda", "0")), Variant("lam4", ("--lambda", "4"))]
    result = compare(variants, out, seeds=(0,), epochs=1, base=base, metrics=(), probe=0)
    for t in result["table"]:
        assert 0 <= t["probe_accuracy"]["mean"] <= 1 and t["recon_mse"]["mean"] > 0
    assert result["probe_layers"] == 0 and all("majority" in r for r in result["rows"])
    assert "probe_accuracy" in (out / "compare.md").read_text()
    assert (out / "tradeoff.png").stat().st_size > 0
    stamp = (out / "lam0" / "seed-0" / "probe.json").stat().st_mtime_ns
    compare(variants, out, seeds=(0,), epochs=1, base=base, metrics=(), probe=0)  # again: nothing re-probed
    assert (out / "lam0" / "seed-0" / "probe.json").stat().st_mtime_ns == stamp
    assert "probing" not in capsys.readouterr().out.split("finished (2 of 2")[-1]
