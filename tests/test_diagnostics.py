"""What z encodes, as `vaelab evaluate` reports it: the KL per dimension and per layer against
closed forms and direct Monte Carlo, the minibatch I(x; z) estimate on cases with a known
answer, the posterior-collapse warning, the figure, and eval.json end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab.cli import build_parser, main
from vaelab.config import ModelConfig
from vaelab.distributions import DiagonalGaussian, standard_normal_log_prob
from vaelab.evaluate import collapse_note, format_result, kl_summary, mi_terms, mutual_information
from vaelab.models import build_model
from vaelab.noise import ExampleNoise
from vaelab.plots import kl_bars

SHAPE = (1, 4, 4)


class Inputs:
    """The part of SplitInputs the diagnostics read: rows of a tensor (N, 1, 4, 4)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.device = x, x.device

    def __len__(self) -> int:
        return len(self.x)

    def index(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, min(stop, len(self)))

    def rows(self, start: int, stop: int):
        return self.x[start:stop], None, torch.zeros(len(self.x[start:stop]), dtype=torch.long)


def features(n: int, seed: int = 0) -> Inputs:
    """n 'images' whose 16 values are N(0, 1) draws: encoders below read them as features."""
    return Inputs(torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed)))


def vae(latent_dim: int = 3, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden=(8,), decoder_hidden=None, latent_dim=latent_dim, **kw), SHAPE)


def linear_gaussian(model, scale: float, std: float, dims: int) -> None:
    """q(z|x) = N(scale * u, std^2) on the first `dims` features u of x ~ N(0, I):
    I(x; z) = dims * 0.5 log(1 + scale^2 / std^2) exactly."""
    model.encode = lambda x, c=None: DiagonalGaussian(scale * x.flatten(1)[:, :dims],
                                                      torch.full((len(x), dims), math.log(std)))


def test_kl_per_dim_is_the_closed_form_and_sums_to_the_total():
    model = vae()
    inputs = features(300)
    model.encode = lambda x, c=None: DiagonalGaussian(x.flatten(1)[:, :3], 0.5 * x.flatten(1)[:, 3:6])
    r, active = kl_summary(model, inputs)
    mu, log_std = inputs.x.flatten(1)[:, :3].double(), 0.5 * inputs.x.flatten(1)[:, 3:6].double()
    std = log_std.exp()
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, std),
                                                 torch.distributions.Normal(0.0, 1.0)).mean(0)
    assert r["kl_per_dim"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert sum(r["kl_per_dim"]) == pytest.approx(r["kl"], rel=1e-6)
    q = DiagonalGaussian(mu.float(), log_std.float())
    assert r["kl"] == pytest.approx(float(q.kl_standard_normal().double().mean()), rel=1e-5)
    assert "closed form" in r["kl_estimator"] and active.tolist() == [True, True, True]


def test_kl_per_level_is_each_layers_monte_carlo_term_in_layer_order():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="hvae", hidden=(8,), decoder_hidden=None, latent_dim=2,
                                    lower_latents=(3,), latent_hidden=(4,)), SHAPE)
    inputs = features(50)
    r, _ = kl_summary(model, inputs, samples=7)
    assert r["latent_sizes"] == [3, 2] and len(r["kl_per_level"]) == 2 and "Monte Carlo" in r["kl_estimator"]
    # the same noise, by hand: z_1 | x and z_2 | z_1 up, p(z_2) = N(0, I) and p(z_1 | z_2) down
    with torch.no_grad():
        q, p = model.encode(inputs.x), model.prior()
        z = q.rsample_with_log_prob(7, generator=ExampleNoise(torch.arange(50), 0))[0]
        z1, z2 = z[..., :3], z[..., 3:]
        level1 = q.first.log_prob(z1) - p.steps[0](z2).log_prob(z1)
        level2 = q.steps[0](z1).log_prob(z2) - standard_normal_log_prob(z2)
    by_hand = [float(level1.double().mean()), float(level2.double().mean())]
    assert r["kl_per_level"] == pytest.approx(by_hand, rel=1e-4, abs=1e-5)
    assert sum(r["kl_per_level"]) == pytest.approx(r["kl"], rel=1e-6)


def test_no_kl_per_dim_for_flows_or_a_mixture_prior_and_no_mi_for_flows():
    inputs = features(20)
    for kw, reason in (({"flows": 2}, "flows"), ({"prior": "mog"}, "mixture")):
        r, _ = kl_summary(vae(**kw), inputs)
        assert "kl_per_dim" not in r and "kl_per_level" not in r and reason in r["kl_note"]
        assert math.isfinite(r["kl"]) and "Monte Carlo" in r["kl_estimator"]
    assert list(mutual_information(vae(flows=2), inputs)) == ["mi_note"]
    assert "mi" in mutual_information(vae(prior="mog"), inputs)


def test_mi_is_zero_when_the_posterior_ignores_x():
    model = vae()
    model.encode = lambda x, c=None: DiagonalGaussian(torch.full((len(x), 3), 0.3), torch.full((len(x), 3), -0.2))
    r = mutual_information(model, features(250), batch=100)
    assert r["mi"] == pytest.approx(0.0, abs=1e-5)
    assert r["mi_batch"] == 83 and r["mi_bound"] == pytest.approx(math.log(83))  # 3 batches of 83-84


def test_mi_matches_a_linear_gaussian_and_never_exceeds_log_n():
    model = vae(latent_dim=2)
    linear_gaussian(model, scale=1.0, std=1.0, dims=2)
    r = mutual_information(model, features(4000))
    assert r["mi"] == pytest.approx(2 * 0.5 * math.log(2.0), abs=0.03)  # 2 dims x 0.347 nats
    assert r["mi_batch"] == 1000 and "biased" in r["mi_note"] and "log N" in r["mi_note"]
    linear_gaussian(model, scale=100.0, std=0.01, dims=2)  # ~18 nats of information: capped by log N
    r = mutual_information(model, features(400), batch=200)
    assert math.log(200) - 0.05 < r["mi"] <= math.log(200) + 1e-6


def test_mi_terms_are_bounded_in_blocks(monkeypatch):
    """Blocks of codes (a small PAIR_ELEMENTS) give the terms of one block."""
    from vaelab import evaluate

    q = DiagonalGaussian(torch.randn(50, 3), torch.randn(50, 3) * 0.3)
    z = q.rsample(generator=torch.Generator().manual_seed(1))
    whole = mi_terms(q, z)
    monkeypatch.setattr(evaluate, "PAIR_ELEMENTS", 7 * 50 * 3)
    assert torch.allclose(mi_terms(q, z), whole, atol=1e-6)
    assert bool((whole <= math.log(50) + 1e-5).all())


def test_the_collapse_warning_appears_only_under_ten_percent_and_names_real_flags():
    note = collapse_note(2, 64)
    assert "2 of 64" in note and "10%" in note
    assert collapse_note(6, 64) is not None and collapse_note(7, 64) is None and collapse_note(4, 4) is None
    assert "--lower-latents" in collapse_note(0, 120, hierarchical=True)
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    named = {w.strip("(),") for w in collapse_note(0, 120, hierarchical=True).split() if w.startswith(("--", "(--"))}
    assert named and named <= flags


def test_kl_bars_is_a_figure_and_leaves_the_backend_alone():
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    for n in (5, 64):
        fig = kl_bars(torch.rand(n).tolist(), "KL per dimension", active=[i % 3 == 0 for i in range(n)])
        assert isinstance(fig, Figure) and fig._repr_png_()[:4] == b"\x89PNG"
    assert isinstance(kl_bars([2.0, 0.5], "per layer", names=["z_1", "z_2"], sort=False), Figure)
    assert matplotlib.get_backend() == backend


def test_evaluate_writes_the_diagnostics_and_the_figure(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--hidden", "32",
                 "--latent-dim", "4", "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--k", "5", "--n", "120", "--quiet"]) == 0
    out = capsys.readouterr().out
    ev = json.loads((run / "eval-k5-n120.json").read_text())
    assert len(ev["kl_per_dim"]) == 4 and sum(ev["kl_per_dim"]) == pytest.approx(ev["kl"], rel=1e-6)
    assert 0 <= ev["mi"] <= ev["mi_bound"] == pytest.approx(math.log(120)) and "He et al. 2019" in ev["mi_note"]
    assert ev["kl_figure"] == "kl_per_dim.png"
    assert (run / "kl_per_dim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "I(x; z) (nats)" in out and "KL per dimension (nats)" in out
    assert ("warning" in out) == ("collapse_note" in ev)
    collapsed = format_result({**ev, "active_units": 0, "collapse_note": collapse_note(0, 4)})
    assert "posterior collapse: 0 of 4" in collapsed and "posterior collapse" not in format_result(
        {k: v for k, v in ev.items() if k != "collapse_note"})
