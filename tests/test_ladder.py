"""The top-down hierarchical VAE (``--model ladder``): its mathematics against closed forms and
Monte Carlo, its stabilisers, its settings' refusals, and a short run through the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import objectives, training
from vaelab.cli import main
from vaelab.config import Config, ConfigError, DataFacts, ModelConfig, TrainConfig, check_levels, resolve
from vaelab.ladder import Cell, Ladder, gaussian_kl
from vaelab.models import bind_objective, build_model, check_config
from vaelab.noise import ExampleNoise

SHAPE = (1, 8, 8)


def tiny(levels="3x4x4,2x2x2,3", **kw) -> Ladder:
    torch.manual_seed(0)
    return build_model(ModelConfig(model="ladder", levels=levels, hidden=(8,), res_blocks=1, **kw), SHAPE)


def binary(n=4, seed=0):
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_levels_are_parsed_and_checked_against_the_image_size():
    assert check_levels("8x14x14,16,8", 28, 28) == ((8, 14, 14), (16,), (8,))
    assert check_levels("4x28x28,4x7x7,2", 28, 28) == ((4, 28, 28), (4, 7, 7), (2,))
    for text, message in [("8x13x13", "does not fit 28x28"), ("8x14x7", "does not fit"),
                          ("8x12x12", "does not fit"), ("8x7x7,8x14x14", "sits above a smaller one"),
                          ("16,8x14x14", "spatial level sits above a vector"), ("8x14", "is not a level"),
                          ("0,4", "is not a level"), ("a", "is not a level")]:
        with pytest.raises(ConfigError, match=message) as e:
            check_levels(text, 28, 28)
        assert "\n" not in str(e.value)


def test_the_recipe_chooses_levels_from_the_data_and_only_for_the_ladder():
    binary28 = DataFacts((1, 28, 28), 60000, True)
    cfg, chosen = resolve(Config().replace(model={"model": "ladder"}), binary28)
    assert cfg.model.levels == "8x14x14,16,8" and cfg.model.hidden == (64,) and cfg.train.kl_warmup > 0
    assert cfg.train.skip_grad == 4 * 784 and chosen["model.levels"] == "8x14x14,16,8"
    # the line said once names only what the ladder reads; config.json still holds every field
    assert not {"model.net", "model.latent_dim", "model.decoder_hidden"} & set(chosen) and cfg.model.net != "auto"
    for size in (32, 64):
        cfg, _ = resolve(Config().replace(model={"model": "ladder"}), DataFacts((3, size, size), 5000, False))
        assert cfg.model.levels == "8x16x16,8x8x8,8x4x4" and cfg.model.likelihood == "logistic"
        assert cfg.train.skip_grad == 50 * 3 * size * size  # 8-bit colour: larger gradients, a higher threshold
    vae, chosen = resolve(Config(), binary28)  # the other models: no levels, no skipping
    assert vae.model.levels == "auto" and "model.levels" not in chosen and vae.train.skip_grad == 0
    iwae, _ = resolve(Config().replace(model={"model": "ladder"}, train={"objective": "iwae"}), binary28)
    assert iwae.train.kl_warmup == 0  # the IWAE bound has no KL to warm up
    # free bits per level with a cool-down for the ladder; off for the other models and for IWAE
    ladder, _ = resolve(Config().replace(model={"model": "ladder"}), binary28)
    assert ladder.train.free_bits > 0 and ladder.train.free_bits_cooldown > 0
    assert vae.train.free_bits == 0 and vae.train.free_bits_cooldown == 0
    assert iwae.train.free_bits == 0 and iwae.train.free_bits_cooldown == 0
    objectives.bind("iwae", iwae.train)  # so the recipe's IWAE run is not refused
    with pytest.raises(ConfigError, match="does not fit 28x28"):
        resolve(Config().replace(model={"model": "ladder", "levels": "8x10x10"}), binary28)


@pytest.mark.parametrize("model, message", [
    ({"prior": "vamp"}, "takes no --prior vamp"), ({"prior": "mog"}, "takes no --prior mog"),
    ({"flows": 2}, "takes no flows")])
def test_flows_and_other_priors_are_refused_in_one_line(model, message):
    with pytest.raises(ConfigError, match=message) as e:
        check_config(Config().replace(model={"model": "ladder", **model}))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--levels", "8x13x13,16"], "a 13x13 level does not fit 28x28 images"),
    (["--levels", "8x14"], "is not a level"),
    (["--flows", "2"], "takes no flows"),
    (["--prior", "vamp"], "takes no --prior vamp"),
])
def test_bad_ladder_settings_are_one_line_errors_before_training(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:  # the parser exits; later checks return the code
        raise SystemExit(main(["train", "--model", "ladder", "--dataset", "mnist-sample", "--epochs", "1",
                               "--quiet", *argv]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.rglob("checkpoint*"))


def test_kl_per_level_in_closed_form_agrees_with_monte_carlo():
    model = tiny()
    x = binary()
    with torch.no_grad():
        # the same draws (the same noise) for both: only the KL estimator differs
        _, exact = model.elbo_levels(x, 4000, generator=ExampleNoise(torch.arange(4), 1))
        _, mc = model.elbo_levels(x, 4000, generator=ExampleNoise(torch.arange(4), 1), kl="mc")
        # the Monte-Carlo spread, from the per-draw terms
        feats = model._rows(model.bottom_up(x), 4000)
        eps = torch.randn(4000 * 4, model.latent_dim)
        _, levels = model.top_down(4000 * 4, feats, eps=eps)
        per_draw = torch.stack([lv.q.log_prob(lv.z) - lv.p.log_prob(lv.z) for lv in levels]).reshape(3, 4000, 4)
    se = per_draw.std(1) / math.sqrt(4000)
    assert exact.shape == (3, 4) and (exact >= 0).all()
    assert torch.all((exact - mc).abs() < 5 * se + 1e-3), (exact, mc, se)


def test_gaussian_kl_matches_torch():
    g = torch.Generator().manual_seed(0)
    from vaelab.distributions import DiagonalGaussian
    q = DiagonalGaussian(torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g))
    p = DiagonalGaussian(torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(q.mean, q.std),
                                            torch.distributions.Normal(p.mean, p.std)).sum(-1)
    torch.testing.assert_close(gaussian_kl(q, p), ref)


def test_the_per_level_kls_sum_to_the_kl_and_the_elbo_is_recon_minus_kl():
    model = tiny()
    terms = model(binary(), generator=ExampleNoise(torch.arange(4), 0))
    levels = torch.stack([terms[f"kl_{i}"] for i in (1, 2, 3)])
    torch.testing.assert_close(levels.sum(0), terms["kl"])
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])
    torch.testing.assert_close(terms["loss"], -terms["elbo"])


def test_log_weights_lower_bound_and_tighten_with_k():
    model = tiny()
    x = binary(8)
    with torch.no_grad():
        lw = model.log_weights(x, 2000, generator=torch.Generator().manual_seed(0))  # (k, B)
        recon, kls = model.elbo_levels(x, 2000, generator=torch.Generator().manual_seed(1))
        elbo = recon - kls.sum(0)  # other draws, the KL in closed form

        def bound(k):  # IWAE bounds of k draws, averaged over 2000 / k disjoint groups
            return (torch.logsumexp(lw.reshape(-1, k, 8), 1) - math.log(k)).mean(0)

    # the mean log-weight is the ELBO; the bound rises with k on average (Burda et al. 2016, thm 1)
    assert torch.all((lw.mean(0) - elbo).abs() < 7 * lw.std(0) / math.sqrt(2000))
    b1, b10, b100, b1000 = (bound(k).mean() for k in (1, 10, 100, 1000))
    assert b1 < b10 < b100 < b1000


def test_the_residual_posterior_is_the_prior_when_its_deltas_are_zero():
    model = tiny()
    with torch.no_grad():
        for head in model.post_head:
            last = head[-1]
            last.parametrizations.weight.original0.zero_()
            last.bias.zero_()
        feats = model.bottom_up(binary())
        _, levels = model.top_down(4, feats, eps=torch.randn(4, model.latent_dim))
    for lv in levels:
        assert torch.equal(lv.q.mean, lv.p.mean) and torch.equal(lv.q.log_std, lv.p.log_std)
        assert torch.equal(gaussian_kl(lv.q, lv.p), torch.zeros(4))


def test_log_scales_are_bounded():
    model = tiny()
    with torch.no_grad():
        for head in (*model.prior_head, *model.post_head):
            head[-1].bias.fill_(1e4)
        _, levels = model.top_down(4, model.bottom_up(binary()), eps=torch.randn(4, model.latent_dim))
    for lv in levels:
        assert lv.p.log_std.abs().max() <= 5 and lv.q.log_std.abs().max() <= 10
        assert torch.isfinite(gaussian_kl(lv.q, lv.p)).all()


def test_temperature_scales_the_prior_per_level_and_zero_is_deterministic():
    model = tiny()
    with torch.no_grad():
        a = model.sample(3, generator=torch.Generator().manual_seed(1), temperature=0).mean
        b = model.sample(3, generator=torch.Generator().manual_seed(2), temperature=0.0).mean
        assert torch.equal(a, b) and torch.equal(a[0], a[1])
        # the draws at temperature t are the prior's mean plus t times its scale times the noise
        eps = torch.randn(5, model.latent_dim)
        _, cold = model.top_down(5, eps=eps, temperature=(0.5, 0.5, 0.5))
        _, full = model.top_down(5, eps=0.5 * eps)
        torch.testing.assert_close(torch.cat([lv.z for lv in cold], -1), torch.cat([lv.z for lv in full], -1))
        # one temperature per level: only the top level drawn, the others at their means
        _, top = model.top_down(5, eps=eps, temperature=(0, 0, 1))
        assert torch.equal(top[0].z, top[0].p.mean) and not torch.equal(top[2].z, top[2].p.mean)


def test_resample_keeps_the_chosen_levels_and_redraws_the_others():
    model = tiny()
    x = binary()
    with torch.no_grad():
        q = model.encode(x)
        # every level kept: a draw from the posterior, the same noise as q's own draw
        kept = model.resample(x, keep=3, generator=torch.Generator().manual_seed(0)).mean
        torch.testing.assert_close(kept, model.decode(q.rsample(generator=torch.Generator().manual_seed(0))).mean)
        none = model.resample(x, keep=(), temperature=0).mean  # no level kept: the prior's mean image
        torch.testing.assert_close(none, model.sample(4, temperature=0).mean)
        top = model.resample(x, keep=(3,), generator=torch.Generator().manual_seed(0))
        assert top.mean.shape == x.shape
    with pytest.raises(ConfigError, match="level 4 is out of range"):
        model.resample(x, keep=(4,))


def test_encode_records_every_level_and_its_shape():
    model = tiny()
    q = model.encode(binary())
    assert model.level_shapes == ((3, 4, 4), (2, 2, 2), (3,)) and model.sizes == (48, 8, 3)
    assert q.mean.shape == q.std.shape == (4, 59) and (q.std > 0).all()
    z = q.rsample(2)
    torch.testing.assert_close(q.log_prob_levels(z).sum(0), q.log_prob(z))
    assert model.prior().log_prob_levels(z).shape == (3, 2, 4)
    pairs = q.log_prob(z[0][:, None, :])  # each image's code under every image's posterior: (4, 4)
    torch.testing.assert_close(pairs.diagonal(), q.log_prob(z[0]))


def test_cells_start_near_the_identity():
    model = tiny()
    cells = [m for m in model.modules() if isinstance(m, Cell)]
    assert len(cells) == 2 * 3  # one per level in each pass
    x = torch.randn(2, 8, 4, 4)
    for cell in cells:
        if cell.branch[1].kernel_size == (3, 3):
            assert (cell(x) - x).norm() < 0.5 * x.norm()


def test_free_bits_floor_each_level_in_the_loss_only():
    model = tiny()
    x = binary()
    bind_objective(model, TrainConfig(free_bits=50.0))
    terms = model(x, generator=ExampleNoise(torch.arange(4), 0))
    levels = torch.stack([terms[f"kl_{i}"] for i in (1, 2, 3)])
    assert (levels < 50).all()  # a fresh model's levels all under the floor
    torch.testing.assert_close(terms["loss"], -(terms["recon"] - 3 * 50.0))
    torch.testing.assert_close(terms["elbo"], terms["recon"] - terms["kl"])  # the bound itself is unchanged
    model.zero_grad()
    terms["loss"].sum().backward()  # no gradient from the KL: the posterior heads learn from recon only
    plain = tiny()
    bind_objective(plain, TrainConfig(free_bits=0.0))
    plain(x, generator=ExampleNoise(torch.arange(4), 0))["loss"].sum().backward()
    assert not torch.allclose(model.h_top.grad, plain.h_top.grad)


def test_free_bits_cool_down_step_by_step_in_the_loss():
    t = TrainConfig(free_bits=50.0, free_bits_cooldown=2.0)
    model = tiny()
    bind_objective(model, t)
    x = binary()

    def loss_at(step):  # 10 steps an epoch: held for 10 steps, then falling to 0 at step 20
        return model(x, generator=ExampleNoise(torch.arange(4), 0), schedule=objectives.Schedule.at(t, step, 10))

    held, half, gone = loss_at(5), loss_at(15), loss_at(40)
    torch.testing.assert_close(held["loss"], -(held["recon"] - 3 * 50.0))  # every fresh level under 50 nats
    floor = torch.stack([half[f"kl_{i}"] for i in (1, 2, 3)]).clamp_min(25.0).sum(0)
    torch.testing.assert_close(half["loss"], -(half["recon"] - floor))
    torch.testing.assert_close(gone["loss"], -(gone["recon"] - gone["kl"]))  # the true KL once cooled down
    assert [objectives.Schedule.at(t, s, 10).free_bits_scale for s in (0, 10, 15, 20, 99)] == [1, 1, 0.5, 0, 0]


def test_free_bits_are_refused_with_iwae():
    with pytest.raises(ConfigError, match="no KL term for free bits"):
        objectives.bind("iwae", TrainConfig(free_bits=1.0))
    with pytest.raises(ConfigError, match="free-bits-cooldown"):
        objectives.bind("iwae", TrainConfig(free_bits_cooldown=4.0))


def test_iwae_trains_the_ladder_with_every_level():
    model = tiny()
    bind_objective(model, TrainConfig(objective="iwae", samples=3, kl_warmup=0.0))
    terms = model(binary())
    assert sorted(terms) == ["elbo", "iwae", "loss"] and torch.isfinite(terms["loss"]).all()


def test_bf16_autocast_keeps_the_densities_in_fp32():
    model = tiny()
    model.set_precision(torch.bfloat16, channels_last=True)
    x = binary()
    terms = model(x)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in terms.values())
    assert model.log_weights(x, 2).dtype == torch.float32
    terms["loss"].mean().backward()


def test_steps_above_skip_grad_are_skipped_and_counted(tmp_path, tiny_cfg, monkeypatch, capsys):
    calls = {"n": 0}
    real = training.gradient_norm

    def norm(model, clip):
        calls["n"] += 1
        value = real(model, clip)
        return value * 1e6 if calls["n"] in (2, 4, 5) else value

    monkeypatch.setattr(training, "gradient_norm", norm)
    run = training.train(tiny_cfg.replace(train={"epochs": 2, "skip_grad": 1e5}), tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["skipped_large_grad"] == 3 and "skipped_large_grad" not in records[1]
    assert records[0]["step"] == 16  # skipped steps still count as steps (16 per epoch)
    assert "epoch 1 skipped 3 step(s) whose gradient norm was above --skip-grad 100000" in capsys.readouterr().err


def test_a_run_of_skipped_steps_stops_training(tmp_path, tiny_cfg):
    with pytest.raises(training.TrainingDiverged, match="above --skip-grad for 10 steps in a row .* a higher "
                                                        "--skip-grad"):
        training.train(tiny_cfg.replace(train={"epochs": 1, "skip_grad": 1e-9}), tmp_path / "run", progress=False)


def test_train_evaluate_and_resume_the_ladder_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    small = ["--levels", "4x14x14,8,4", "--hidden", "16", "--batch-size", "250", "--quiet", "--no-progress"]
    assert main(["train", "--model", "ladder", "--dataset", "mnist-sample", "--epochs", "1", "--out", str(run),
                 *small]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet", "--no-progress"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    last = records[-1]
    assert {"train_kl_1", "train_kl_2", "train_kl_3", "test_kl_1", "test_kl_3"} <= set(last)
    assert len(last["active_units_levels"]) == 3 and sum(last["active_units_levels"]) == last["active_units"]
    assert all(math.isfinite(last[k]) for k in ("train_loss", "test_elbo"))
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["levels"] == "4x14x14,8,4" and saved["train"]["kl_warmup"] > 0
    assert main(["evaluate", str(run), "--n", "20", "--k", "5", "--quiet"]) == 0
    result = json.loads((run / "eval-k5-n20.json").read_text())  # named by its settings
    assert result["nll"] > 0 and math.isfinite(result["nll"]) and result["nll"] <= -result["elbo"] + 1e-6
    assert len(result["kl_per_level"]) == 3 and result["latent_sizes"] == [784, 8, 4]  # KL split by level
    assert len(result["active_per_level"]) == 3 and sum(result["active_per_level"]) == result["active_units"]
    assert "log q(z_l | x, z_>l)" in result["kl_estimator"] and "not estimated" in result["mi_note"]


def test_training_treats_the_ladder_as_a_conv_net_for_precision_and_memory_format(monkeypatch):
    seen = {}

    def dtype(precision, device, conv=False):
        seen["conv"] = conv
        return None

    monkeypatch.setattr(training, "autocast_dtype", dtype)
    model = tiny()
    cfg = Config().replace(model={"model": "ladder", "net": "mlp"})
    training._precision(cfg, model, torch.device("cpu"), resume=False, verbose=False)
    assert seen["conv"]
    # on a CPU the weight-normalised convolutions gain only conversions from channels-last
    assert not model.channels_last and all(p.is_contiguous() for p in model.parameters())


# ----------------------------------------------------------------------------- scoring, codes, evaluation


def _prior_means_below(model, z: torch.Tensor, skip: int) -> torch.Tensor:
    """Codes (N, D) with levels skip..1 replaced, top first, by the conditional prior's mean
    given the levels above: through the public pass, one level at a time."""
    for j in reversed(range(skip)):
        _, levels = model.top_down(len(z), z=z)
        parts = list(z.split(model.sizes, -1))
        parts[j] = levels[j].p.mean
        z = torch.cat(parts, -1)
    return z


def test_the_skip_bound_follows_havtorn_et_al_at_every_level():
    """L>k: levels above k from q(z_l | x, z_>l), levels 1..k at the prior's mean given those
    above, and log p(x|z) + log p(z_>k) - log q(z_>k | x); k = 0 is the IWAE weights."""
    model = tiny().eval()
    x, n = binary(), 3
    with torch.no_grad():
        q, prior = model.encode(x), model.prior()
        torch.testing.assert_close(model.skip_log_weights(x, n, 0, q, ExampleNoise(torch.arange(4), 5)),
                                   model.log_weights(x, n, q, ExampleNoise(torch.arange(4), 5)))
        for skip in (1, 2):
            noise = ExampleNoise(torch.arange(4), 5)
            got = model.skip_log_weights(x, n, skip, q, noise)
            z = q.rsample(n, generator=ExampleNoise(torch.arange(4), 5))  # (n, B, D): the same upper draws
            z = _prior_means_below(model, z.reshape(n * 4, -1), skip).reshape(n, 4, -1)
            want = (model.decode(z).log_prob(x) + prior.log_prob_levels(z)[skip:].sum(0)
                    - q.log_prob_levels(z)[skip:].sum(0))
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
            assert not torch.allclose(got, model.log_weights(x, n, q, ExampleNoise(torch.arange(4), 5)))
        with pytest.raises(ConfigError, match="skip 3 is out of range: this model has 3 levels"):
            model.skip_log_weights(x, n, 3)


def test_the_ladder_has_every_per_level_score_by_its_trait():
    from vaelab.models import MODELS
    from vaelab.scores import ScoreContext, _key, applicable, model_traits, score_batch

    assert "hierarchical" in model_traits(MODELS["ladder"]) and {"kl", "llr"} <= set(applicable(MODELS["ladder"]))
    model = tiny().eval()
    x, idx, k = binary(5), torch.arange(10, 15), 12
    s = score_batch(ScoreContext(model, x, idx, k=k, skip=(1, 2)))
    assert {"kl_1", "kl_2", "kl_3", "llr_1", "llr_2"} <= set(s) and "kl_4" not in s
    torch.testing.assert_close(s["kl_1"] + s["kl_2"] + s["kl_3"], s["kl"])
    torch.testing.assert_close(s["recon"] - s["kl"], s["elbo"])
    with torch.no_grad():  # the same numbers through the public interface, every level included
        q, prior = model.encode(x), model.prior()
        z = q.rsample(k, generator=ExampleNoise(idx, _key(0, 1)))
        kls = (q.log_prob_levels(z) - prior.log_prob_levels(z)).mean(1)  # (L, B)
        w = model.decode(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
        log_px = torch.logsumexp(w, 0) - math.log(k)
        for j in (1, 2, 3):
            torch.testing.assert_close(s[f"kl_{j}"], kls[j - 1], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(s["log_px"], log_px, rtol=1e-4, atol=1e-3)
        for skip in (1, 2):
            ws = model.skip_log_weights(x, k, skip, q, ExampleNoise(idx, _key(0, 2 + skip)))
            torch.testing.assert_close(s[f"llr_{skip}"], log_px - (torch.logsumexp(ws, 0) - math.log(k)),
                                       rtol=1e-4, atol=1e-3)
    parts = [score_batch(ScoreContext(model, x[i : i + 2], idx[i : i + 2], k=k, skip=(1, 2))) for i in (0, 2, 4)]
    for key, v in s.items():  # tied to the image, not the batch
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), v, rtol=1e-5, atol=1e-4)


def test_is_nll_weighs_every_level():
    from vaelab.evaluate import Sampling, log_likelihood

    model = tiny().eval()
    x, idx, k = binary(), torch.arange(4), 6
    log_px, elbo = log_likelihood(model, x, k=k, index=idx, sampling=Sampling(seed=3))
    with torch.no_grad():
        q, prior = model.encode(x), model.prior()
        z = q.rsample(k, generator=ExampleNoise(idx, 3))
        w = model.decode(z).log_prob(x) + prior.log_prob_levels(z).sum(0) - q.log_prob_levels(z).sum(0)
    torch.testing.assert_close(log_px, torch.logsumexp(w, 0) - math.log(k), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(elbo, w.mean(0), rtol=1e-4, atol=1e-3)


def test_active_units_and_kl_are_counted_per_level():
    """A level whose posterior is its prior (the top, whose prior reads no image) is inactive and
    has no KL; evaluate says so per level."""
    from vaelab.batches import model_inputs
    from vaelab.data import Split
    from vaelab.evaluate import kl_summary

    model = tiny().eval()
    with torch.no_grad():
        last = model.post_head[2][-1]  # the top level's posterior deltas: 0, so q = p there
        last.parametrizations.weight.original0.zero_()
        last.bias.zero_()
        model.post_head[0][-1].parametrizations.weight.original0.mul_(30)  # the lowest level reads the image
    images = (binary(40, seed=1) * 255).to(torch.uint8)
    split = Split(images, torch.zeros(40, dtype=torch.long))
    cfg = Config().replace(model={"model": "ladder"}, data={"binarization": "none"})
    inputs = model_inputs(model, cfg, split, 0)
    r, active = kl_summary(model, inputs)
    assert r["latent_sizes"] == [48, 8, 3] and len(r["kl_per_level"]) == 3
    assert r["active_per_level"][0] > 0 and r["active_per_level"][2] == 0
    assert sum(r["active_per_level"]) == int(active.sum())
    assert abs(r["kl_per_level"][2]) < 1e-4 and r["kl_per_level"][0] > 0.1
    assert "log q(z_l | x, z_>l)" in r["kl_estimator"]
