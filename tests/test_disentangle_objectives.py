"""The disentangling objectives (beta-TCVAE, FactorVAE, annealed capacity, DIP-VAE): their
mathematics against closed forms, the global batch of a data-parallel job, the refusals, and
training, saving and resuming with the FactorVAE discriminator."""

import json
import math
import threading

import pytest
import torch
from torch import nn

from vaelab.checkpoint import load_run
from vaelab.cli import main
from vaelab.config import Config, ConfigError, ModelConfig, TrainConfig
from vaelab.data import load_dataset
from vaelab.distributions import DiagonalGaussian, StandardNormal
from vaelab.models import bind_objective, build_model, check_config
from vaelab.noise import ExampleNoise
from vaelab.objectives import OBJECTIVES, Schedule, Step, bind, capacity, dipvae, factorvae, minibatch_log_qz, tcvae
from vaelab.training import Limits, resume, train

from .conftest import metrics

DISENTANGLING = ("tcvae", "factorvae", "capacity", "dipvae")
# what each needs to run (capacity has no default C_max; the others' defaults are enough)
SETTINGS = {"tcvae": {"dataset_size": 1000}, "factorvae": {"discriminator_hidden": (16, 16)},
            "capacity": {"capacity": 5.0}, "dipvae": {}}


def _binary(n: int, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def _model(objective: str, net: str = "mlp", shape=(1, 28, 28), **train):
    torch.manual_seed(0)
    hidden = (16,) if net == "mlp" else (8, 16)
    model = build_model(ModelConfig(latent_dim=3, hidden=hidden, net=net, decoder_hidden=None), shape)
    bind_objective(model, TrainConfig(objective=objective, **{**SETTINGS[objective], **train}))
    return model


# ----------------------------------------------------------------------------- beta-TCVAE


def test_identical_posteriors_give_the_closed_forms_of_both_estimators():
    """Every posterior the same q: q(z) is q itself. MSS weighs the batch to exactly that
    (mi = tc = 0); MWS's weights sum to 1/N, so its log q(z) is log N low and each marginal's
    too: mi = log N, tc = (D - 1) log N."""
    n, d = 5000, 4
    mean, log_std = torch.full((16, d), 0.3), torch.full((16, d), -0.5)
    z = DiagonalGaussian(mean, log_std).rsample(3, generator=torch.Generator().manual_seed(0))  # (3, 16, D)
    exact = DiagonalGaussian(mean, log_std).log_prob(z)  # (3, 16)
    joint, marginals = minibatch_log_qz(z, mean, log_std, n, "mss")
    torch.testing.assert_close(joint, exact)
    torch.testing.assert_close(marginals, exact)
    joint, marginals = minibatch_log_qz(z, mean, log_std, n, "mws")
    torch.testing.assert_close(joint, exact - math.log(n))
    torch.testing.assert_close(marginals, exact - d * math.log(n))


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_tcvae_terms_of_a_batch_of_one_image_repeated(estimator):
    model = _model("tcvae")
    x = _binary(1).expand(12, -1, -1, -1)  # the same image 12 times: 12 identical posteriors
    terms = tcvae(model, Step(x), TrainConfig(dataset_size=1000, tc_estimator=estimator, samples=2))
    mi, tc = (0.0, 0.0) if estimator == "mss" else (math.log(1000), 2 * math.log(1000))  # D = 3
    torch.testing.assert_close(terms["mi"], torch.full((12,), mi), atol=1e-4, rtol=0)
    torch.testing.assert_close(terms["tc"], torch.full((12,), tc), atol=1e-4, rtol=0)


def test_stratified_weights_sit_on_each_rows_own_and_next_posterior():
    """log q(z_i) = log[q(z_i|x_i) / N + q(z_i|x_{i+1}) (N - M + 1) / (N (M - 1)) + the M - 2
    others / (M - 1)], written out for a batch of 4 with different posteriors."""
    g = torch.Generator().manual_seed(1)
    mean, log_std = torch.randn(4, 2, generator=g), 0.3 * torch.randn(4, 2, generator=g)
    z = torch.randn(4, 2, generator=g)
    n, m = 50, 4
    dens = torch.stack([DiagonalGaussian(mean[j], log_std[j]).log_prob(z).exp() for j in range(4)], 1)  # (i, j)
    want = []
    for i in range(4):
        nxt = (i + 1) % 4
        rest = [j for j in range(4) if j not in (i, nxt)]
        want.append(math.log(dens[i, i] / n + dens[i, nxt] * (n - m + 1) / (n * (m - 1))
                             + sum(dens[i, j] for j in rest) / (m - 1)))
    joint, _ = minibatch_log_qz(z, mean, log_std, n, "mss")
    torch.testing.assert_close(joint, torch.tensor(want), rtol=1e-5, atol=1e-5)
    # with offset 2 the same two codes are rows 2 and 3 of the batch
    part, _ = minibatch_log_qz(z[2:], mean, log_std, n, "mss", offset=2)
    torch.testing.assert_close(part, joint[2:])


def _gaussian_tc(cov: torch.Tensor) -> float:
    """TC of N(0, cov): 0.5 * (sum_d log cov_dd - log det cov)."""
    return 0.5 * float(torch.log(torch.diagonal(cov)).sum() - torch.logdet(cov))


@pytest.mark.parametrize("rho, tolerance", [(0.0, 0.03), (0.8, 0.05)])
def test_total_correlation_of_a_gaussian_aggregate_posterior(rho, tolerance):
    """Posterior means drawn from N(0, C), each posterior N(mean, 0.5^2 I): q(z) is close to
    N(0, C + 0.25 I), whose total correlation is known; 0 for independent dimensions."""
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, rho], [rho, 1.0]])
    n = 2000
    mean = torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(cov).T
    log_std = torch.full((n, 2), math.log(0.5))
    z = DiagonalGaussian(mean, log_std).rsample(generator=g)
    joint, marginals = minibatch_log_qz(z, mean, log_std, n, "mss")
    assert float((joint - marginals).mean()) == pytest.approx(_gaussian_tc(cov + 0.25 * torch.eye(2)), abs=tolerance)


def test_mi_tc_and_dwkl_add_up_to_the_kl():
    """Per code, mi + tc + dwkl = log q(z|x) - log p(z), the one-sample KL estimate; averaged
    over many draws, the closed-form KL."""
    model = _model("tcvae")
    x = _binary(6)
    torch.manual_seed(0)
    terms = tcvae(model, Step(x), TrainConfig(dataset_size=1000, samples=1))
    torch.manual_seed(0)
    q = model.encode(x)
    z, log_q = q.rsample_with_log_prob(1)
    one_draw = (log_q - StandardNormal(3).log_prob(z)).mean(0)
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dwkl"], one_draw, atol=1e-4, rtol=0)
    many = tcvae(model, Step(x), TrainConfig(dataset_size=1000, samples=4000))
    torch.testing.assert_close(many["mi"] + many["tc"] + many["dwkl"], many["kl"], atol=0.1, rtol=0)
    assert (many["kl"] == q.kl_standard_normal()).all()


def test_beta_weighs_only_the_total_correlation_and_warm_up_scales_all_three():
    model = _model("tcvae")
    x = _binary(6)
    w = TrainConfig(beta=6.0, mi_weight=0.5, dwkl_weight=2.0, dataset_size=1000)
    a = tcvae(model, Step(x, generator=torch.Generator().manual_seed(3)), w)
    torch.testing.assert_close(a["loss"], -a["recon"] + 0.5 * a["mi"] + 6.0 * a["tc"] + 2.0 * a["dwkl"])
    b = tcvae(model, Step(x, generator=torch.Generator().manual_seed(3), schedule=Schedule(kl_scale=0.25)), w)
    torch.testing.assert_close(b["loss"], -b["recon"] + 0.25 * (0.5 * b["mi"] + 6.0 * b["tc"] + 2.0 * b["dwkl"]))


# ----------------------------------------------------------------------------- a data-parallel job


def _two_processes(fn, x: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """fn(x_part, noise, peers) run as two processes on the halves of a batch, as threads whose
    `peers` exchange their rows as all_gather would; their terms concatenated."""
    halves = [slice(0, 5), slice(5, len(x))]
    barrier, slots, out = threading.Barrier(2), [None, None], [None, None]

    def run(r: int) -> None:
        def peers(t):
            slots[r] = t
            barrier.wait()
            whole = torch.cat(slots)
            barrier.wait()
            return whole, halves[r].start

        with torch.no_grad():
            out[r] = fn(x[halves[r]], ExampleNoise(idx[halves[r]], 7), peers)

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {k: torch.cat([out[0][k], out[1][k]]) for k in out[0]}


@pytest.mark.parametrize("name", DISENTANGLING)
def test_two_processes_compute_the_terms_of_one(name):
    """The batch-level parts (q(z) over the batch, the shuffle of FactorVAE's codes, the mean KL
    of capacity, DIP's covariance) span the global batch: two processes give one's terms."""
    model = _model(name)
    x, idx = _binary(11), torch.arange(100, 111)
    with torch.no_grad():
        one = model(x, generator=ExampleNoise(idx, 7), schedule=Schedule(capacity_scale=0.5))
    two = _two_processes(lambda xs, noise, peers: model(xs, generator=noise, peers=peers,
                                                        schedule=Schedule(capacity_scale=0.5)), x, idx)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-4, rtol=1e-5, msg=k)


# ----------------------------------------------------------------------------- FactorVAE


class FixedCodes(nn.Module):
    """A 'model' whose posterior of x (B, 2) is a narrow Gaussian at x itself: its codes are the data."""

    latent_dim = 2

    def encode(self, x, c=None):
        return DiagonalGaussian(x, torch.full_like(x, -6.0))

    def decode(self, z, c=None):
        return type("Flat", (), {"log_prob": staticmethod(lambda x: torch.zeros(z.shape[:-1]))})()

    def prior(self):
        return StandardNormal(2)


@pytest.mark.parametrize("rho", [0.0, 0.99])
def test_the_discriminator_learns_the_total_correlation(rho):
    """Trained on codes from N(0, [[1, rho], [rho, 1]]), the discriminator's logit estimates
    TC = -0.5 log(1 - rho^2): 0 for independent dimensions, 1.96 nats for rho = 0.99."""
    torch.manual_seed(0)
    model = FixedCodes()
    model.objective_nets = nn.ModuleDict(OBJECTIVES["factorvae"].nets(model, TrainConfig(discriminator_hidden=(32, 32))))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    chol = torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]]))
    for _ in range(100):
        codes = torch.randn(256, 2) @ chol.T
        loss = factorvae(model, Step(codes), TrainConfig(tc_weight=1.0))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tc = float(factorvae(model, Step(torch.randn(4000, 2) @ chol.T), TrainConfig())["tc"].mean())
    assert tc == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.3)


def test_each_part_of_the_factorvae_loss_reaches_only_its_own_parameters():
    model = _model("factorvae")
    x = _binary(8)

    def grads(pick) -> dict[str, torch.Tensor]:
        model.zero_grad()
        terms = model(x, generator=torch.Generator().manual_seed(0))
        pick(terms).mean().backward()
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)).clone() for k, p in model.named_parameters()}

    both = grads(lambda t: t["loss"])
    vae = grads(lambda t: t["loss"] - t["discriminator"])
    disc = grads(lambda t: t["discriminator"])
    for k in both:
        mine = disc if k.startswith("objective_nets.") else vae
        other = vae if mine is disc else disc
        assert not other[k].any(), k  # the other part leaves it alone
        torch.testing.assert_close(both[k], mine[k], msg=k)
    assert any(v.any() for k, v in disc.items() if k.startswith("objective_nets."))
    assert any(v.any() for k, v in vae.items() if k.startswith("encoder."))


def test_factorvae_trains_saves_and_resumes_exactly_with_its_discriminator(tmp_path, tiny_cfg):
    """The discriminator is part of the model (its weights in the checkpoint) and its Adam moments
    part of the optimiser's state: a run resumed after 1 epoch logs what an uninterrupted one does."""
    data = load_dataset("mnist-sample")
    cfg = tiny_cfg.replace(train={"objective": "factorvae", "discriminator_hidden": [16, 16], "epochs": 2,
                                  "batch_size": 100, "warmup_steps": 3, "tc_weight": 5.0})
    full = train(cfg, tmp_path / "full", progress=False, quiet=True, dataset=data)
    part = train(cfg.replace(train={"epochs": 1}), tmp_path / "part", progress=False, quiet=True, dataset=data)
    resume(part, Limits(epochs=2), progress=False, quiet=True, dataset=data)
    assert metrics(part, timing=False) == metrics(full, timing=False)
    assert {"train_tc", "train_discriminator", "test_tc"} <= set(metrics(full)[-1])
    _, a = load_run(full)
    _, b = load_run(part)
    assert any(k.startswith("objective_nets.discriminator.") for k in a.state_dict())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    # rebinding to an objective without networks takes the discriminator away again
    bind_objective(a, TrainConfig())
    assert not any(k.startswith("objective_nets.") for k in a.state_dict())


# ----------------------------------------------------------------------------- capacity and DIP-VAE


def test_capacity_rises_linearly_and_only_the_capacity_objective_takes_one():
    t = TrainConfig(objective="capacity", capacity=25.0, capacity_steps=200)
    assert [25.0 * Schedule.at(t, step, 10).capacity_scale for step in (0, 50, 200, 400)] == [0.0, 6.25, 25.0, 25.0]
    assert Schedule.at(TrainConfig(), 7, 10).capacity_scale == 1.0  # no capacity: nothing moves
    with pytest.raises(ConfigError, match="^the elbo objective has no capacity to anneal; set --capacity 0 "
                                          r"\(the objectives with one: capacity\)$"):
        bind("elbo", TrainConfig(capacity=25.0))
    with pytest.raises(ConfigError, match="^the capacity objective needs --capacity NATS"):
        bind("capacity", TrainConfig())


def test_capacity_holds_the_batch_mean_kl_to_c():
    model = _model("capacity")
    x = _binary(6)
    g = TrainConfig(capacity=20.0, capacity_weight=10.0)
    a = capacity(model, Step(x, schedule=Schedule(capacity_scale=0.1), generator=torch.Generator().manual_seed(0)), g)
    torch.testing.assert_close(a["loss"], -a["recon"] + 10.0 * (a["kl"].mean() - 2.0).abs())
    b = capacity(model, Step(x, generator=torch.Generator().manual_seed(0)), g)  # the test pass: C = C_max
    assert (b["capacity"] == 20.0).all()


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_dip_penalty_is_its_closed_form_and_zero_when_the_covariance_is_the_identity(kind):
    model = FixedCodes()
    means = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # covariance I
    terms = dipvae(model, Step(means, generator=torch.Generator().manual_seed(0)),
                   TrainConfig(dip_type=kind, dip_offdiag=3.0))
    expected = 0.0 if kind == "i" else 3.0 * 2 * (math.exp(-12.0)) ** 2  # ii adds the posteriors' variance
    torch.testing.assert_close(terms["dip"], torch.full((4,), expected), atol=1e-6, rtol=0)
    skewed = means * torch.tensor([2.0, 1.0]) + torch.tensor([[0.0, 0.5]]) * means[:, :1]
    cov = torch.cov(skewed.T, correction=0) + (0.0 if kind == "i" else math.exp(-12.0)) * torch.eye(2)
    lam_d = 30.0 if kind == "i" else 3.0
    want = 3.0 * 2 * cov[0, 1] ** 2 + lam_d * ((torch.diagonal(cov) - 1) ** 2).sum()
    terms = dipvae(model, Step(skewed, generator=torch.Generator().manual_seed(0)),
                   TrainConfig(dip_type=kind, dip_offdiag=3.0))
    torch.testing.assert_close(terms["dip"], want.expand(4), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- every net; refusals


@pytest.mark.parametrize("net, shape", [("mlp", (1, 28, 28)), ("conv", (1, 16, 16)), ("resnet", (3, 16, 16))])
@pytest.mark.parametrize("name", DISENTANGLING)
def test_every_objective_trains_every_net(name, net, shape):
    model = _model(name, net, shape)
    model.set_precision(None)
    x = _binary(6, shape)
    terms = model(x, schedule=Schedule(kl_scale=0.5, capacity_scale=0.5), generator=torch.Generator().manual_seed(0))
    assert tuple(terms) == OBJECTIVES[name].terms
    assert all(v.shape == (6,) and torch.isfinite(v).all() for v in terms.values())
    terms["loss"].mean().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None and ".branch.1." not in k]
    assert not missing


@pytest.mark.parametrize("model, objective, message", [
    ("ae", "tcvae", "the ae model trains with reconstruction, not tcvae"),
    ("ladder", "factorvae", "the ladder model trains with elbo, iwae, not factorvae"),
    ("hvae", "tcvae", "the tcvae objective works on one vector code, and the hvae model's code is a hierarchy"),
    ("hvae", "dipvae", "the dipvae objective works on one vector code"),
    ("hvae", "factorvae", "the factorvae objective works on one vector code"),
])
def test_a_model_an_objective_does_not_fit_is_refused_before_any_work(model, objective, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        check_config(Config().replace(model={"model": model}, train={"objective": objective}))


@pytest.mark.parametrize("model, message", [
    ({"flows": 2}, "the tcvae objective needs the posterior's Gaussian parameters, which flows replace; drop --flows"),
    ({"prior": "mog"}, "the tcvae objective measures the code against the N(0, I) prior dimension by dimension; "
                       "use --prior normal, not mog"),
])
def test_flows_and_other_priors_are_refused_where_the_objective_needs_a_gaussian(model, message):
    with pytest.raises(ConfigError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        check_config(Config().replace(model=model, train={"objective": "tcvae"}))
    # FactorVAE's discriminator and the capacity's KL only need codes and a density
    check_config(Config().replace(model=model, train={"objective": "factorvae"}))
    check_config(Config().replace(model=model, train={"objective": "capacity", "capacity": 25.0}))


@pytest.mark.parametrize("argv, message", [
    (["--model", "hvae", "--objective", "tcvae"], "the hvae model's code is a hierarchy of layers; use --model vae"),
    (["--objective", "dipvae", "--flows", "2"], "which flows replace; drop --flows"),
    (["--objective", "capacity"], "the capacity objective needs --capacity NATS"),
    (["--objective", "tcvae", "--capacity", "20"], "the tcvae objective has no capacity to anneal"),
])
def test_the_command_line_says_so_in_one_line(argv, message, capsys, tmp_path):
    code = main(["train", "--dataset", "mnist-sample", "--quiet", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_training_records_the_dataset_size_tcvae_reads(tmp_path, tiny_cfg):
    data = load_dataset("mnist-sample")
    cfg = tiny_cfg.replace(train={"objective": "tcvae", "epochs": 1, "batch_size": 100})
    run = train(cfg, tmp_path / "run", progress=False, quiet=True, dataset=data)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["dataset_size"] == len(data.train)
    _, model = load_run(run)
    assert model.objective.options["dataset_size"] == len(data.train)
    assert {"test_mi", "test_tc", "test_dwkl"} <= set(metrics(run)[-1])
