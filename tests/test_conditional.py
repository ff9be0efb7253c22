"""Conditional and invariant models: the pairwise KL, conditions, probe, transfer."""

import json

import numpy as np
import pytest
import torch
from torch import distributions as D

from vaelab.cli import main
from vaelab.config import Config, TrainConfig
from vaelab.data import DataError, attach_conditions, load_dataset
from vaelab.models import build_model
from vaelab.objectives import Step, icvae, pairwise_gaussian_kl


def test_pairwise_kl_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    mean, log_std = 2 * torch.randn(7, 4, generator=g), 0.7 * torch.randn(7, 4, generator=g)
    ours = pairwise_gaussian_kl(mean, log_std)
    for i in range(7):
        for j in range(7):
            ref = D.kl_divergence(D.Normal(mean[i], log_std[i].exp()), D.Normal(mean[j], log_std[j].exp())).sum()
            assert torch.allclose(ours[i, j], ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours.diagonal(), torch.zeros(7), atol=1e-4)


def test_pairwise_kl_against_a_second_set_is_a_block_of_the_full_matrix():
    """Rows of one process's slice against the whole batch (data-parallel icvae)."""
    g = torch.Generator().manual_seed(2)
    mean, log_std = torch.randn(9, 4, generator=g), 0.5 * torch.randn(9, 4, generator=g)
    full = pairwise_gaussian_kl(mean, log_std)
    torch.testing.assert_close(pairwise_gaussian_kl(mean[3:5], log_std[3:5], mean, log_std), full[3:5])
    torch.testing.assert_close(pairwise_gaussian_kl(mean[:2], log_std[:2], mean[6:], log_std[6:]), full[:2, 6:])


def test_pairwise_kl_is_stable_for_large_close_means():
    mean = torch.full((5, 3), 50.0) + 1e-3 * torch.arange(15.0).view(5, 3)
    kl = pairwise_gaussian_kl(mean, torch.zeros(5, 3))
    assert torch.isfinite(kl).all() and (kl >= 0).all()


def _cvae(model="icvae"):
    torch.manual_seed(0)
    cfg = Config().replace(model={"model": model, "hidden": [32], "latent_dim": 3}).model
    return build_model(cfg, (1, 28, 28), cond_dim=10)


def test_icvae_loss_is_the_weighted_sum_of_its_terms():
    m = _cvae()
    x = (torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    c = torch.eye(10)[:6]
    torch.manual_seed(3)
    t = icvae(m, Step(x, c), TrainConfig(beta=0.5, lam=2.0))
    torch.testing.assert_close(t["loss"], -3.0 * t["recon"] + 0.5 * t["kl"] + 2.0 * t["kl_marginal"])
    q = m.encode(x, c)
    pair = pairwise_gaussian_kl(q.mean, q.log_std)
    torch.testing.assert_close(t["kl_marginal"], (pair.sum(1) - pair.diagonal()) / 5)
    t["loss"].mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_decoder_depends_on_the_condition_and_needs_it():
    m = _cvae("cvae")
    z = torch.randn(4, 3)
    a, b = m.decode(z, torch.eye(10)[:4]).mean, m.decode(z, torch.eye(10)[4:8]).mean
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs a condition"):
        m.decode(z)
    with pytest.raises(ValueError, match="needs conditions: a labelled dataset"):
        build_model(Config().replace(model={"model": "cvae"}).model, (1, 28, 28))


def test_custom_conditions_from_npz(tmp_path):
    data = load_dataset("mnist-sample")
    path = tmp_path / "c.npz"
    np.savez(path, train=np.random.rand(len(data.train), 3), test=np.random.rand(len(data.test), 3))
    d = attach_conditions(data, path)
    assert d.cond_dim == 3 and d.test.conditions(10).shape == (500, 3)
    np.savez(tmp_path / "bad.npz", train=np.random.rand(5, 3), test=np.random.rand(len(data.test), 3))
    with pytest.raises(DataError, match="must have shape"):
        attach_conditions(data, tmp_path / "bad.npz")
    run = tmp_path / "run"
    assert main(["train", "--model", "cvae", "--dataset", "mnist-sample", "--conditions", str(path), "--epochs", "1",
                 "--hidden", "16", "--latent-dim", "2", "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--k", "5", "--quiet"]) == 0
    assert json.loads((run / "eval-k5.json").read_text())["conditioned_on"] == "custom side information"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_conditions_are_refused_before_training_naming_file_split_and_row(tmp_path, capsys, bad):
    data = load_dataset("mnist-sample")
    test = np.random.rand(len(data.test), 3)
    test[7, 1] = bad
    path = tmp_path / "c.npz"
    np.savez(path, train=np.random.rand(len(data.train), 3), test=test)
    with pytest.raises(DataError, match="test split's conditions are not finite in row 7"):
        attach_conditions(data, path)
    run = tmp_path / "run"
    assert main(["train", "--model", "cvae", "--dataset", "mnist-sample", "--conditions", str(path), "--epochs", "1",
                 "--hidden", "16", "--latent-dim", "2", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "test split" in err and "row 7" in err
    assert not (run / "metrics.jsonl").exists()


def test_conditions_with_a_wrong_row_count_name_the_split(tmp_path):
    data = load_dataset("mnist-sample")
    path = tmp_path / "c.npz"
    np.savez(path, train=np.random.rand(len(data.train) + 1, 3), test=np.random.rand(len(data.test), 3))
    with pytest.raises(DataError, match=f"{path}: 'train' must have shape \\(2000, C'\\), one row per image of "
                                        "the train split, got \\(2001, 3\\)"):
        attach_conditions(data, path)


def test_probe_and_transfer_end_to_end(tmp_path):
    run = tmp_path / "icvae"
    assert main(["train", "--model", "icvae", "--lambda", "1", "--dataset", "mnist-sample", "--epochs", "2",
                 "--hidden", "32", "--latent-dim", "4", "--out", str(run), "--quiet"]) == 0
    assert main(["probe", str(run), "--probe-layers", "0", "--probe-epochs", "3"]) == 0
    r = json.loads((run / "probe.json").read_text())
    assert {"accuracy", "majority", "recon_mse", "probe_layers"} <= set(r) and r["probe_layers"] == 0
    assert 0 <= r["majority"] <= r["train_accuracy"] <= 1
    assert main(["plot", str(run), "--what", "transfer", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "transfer.png").exists()
    vae = tmp_path / "vae"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                 "--out", str(vae), "--quiet"]) == 0
    assert main(["plot", str(vae), "--what", "transfer"]) == 2  # needs a conditional model
