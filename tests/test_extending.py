"""Extending vaelab from outside the package: an objective and a model registered from this
file alone train, evaluate and load through the command line, and the options an objective
takes mean the same in training and in the test pass."""

from __future__ import annotations

import dataclasses

import pytest

from vaelab import models, objectives
from vaelab.api import Run
from vaelab.checkpoint import load_run
from vaelab.cli import main

TINY = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--batch-size", "250",
        "--epochs", "1", "--quiet"]


@pytest.fixture
def registries(monkeypatch):
    """Fresh copies of the registries, so what a test registers leaves with it."""
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))


def test_a_toy_objective_and_model_from_a_test_file(tmp_path, registries, capsys):
    @objectives.objective("half-kl", terms=("loss", "recon", "kl", "elbo"), options=("samples",))
    def half_kl(model, step, t):
        """The ELBO with its KL weighed by one half."""
        return objectives.elbo(model, step, dataclasses.replace(t, beta=0.5))

    class HalfKLVAE(models.VAE):
        default_objective = "half-kl"
        objectives = ("half-kl", "elbo")

    models.MODELS["half-kl-vae"] = HalfKLVAE
    run = tmp_path / "run"
    assert main(["train", *TINY, "--model", "half-kl-vae", "--out", str(run)]) == 0
    record = Run(run).records()[0]
    assert record["test_loss"] == pytest.approx(-record["test_recon"] + 0.5 * record["test_kl"], rel=1e-6)
    assert record["test_elbo"] == pytest.approx(record["test_recon"] - record["test_kl"], rel=1e-6)
    _, model = load_run(run)
    assert isinstance(model, HalfKLVAE) and model.objective.name == "half-kl"
    assert main(["evaluate", str(run), "--k", "4", "--n", "20", "--quiet"]) == 0

    # what the model does not declare is refused in one line, naming what it takes
    capsys.readouterr()
    assert main(["train", *TINY, "--model", "half-kl-vae", "--objective", "iwae", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trains with half-kl, elbo, not iwae" in err[0]
    assert not (tmp_path / "x").exists()


def test_an_objective_refuses_options_it_does_not_take(registries):
    with pytest.raises(ValueError, match="not TrainConfig fields"):
        objectives.objective("bad", terms=("loss",), options=("temperature",))(lambda *a, **k: {})
    with pytest.raises(ValueError, match="first term"):
        objectives.objective("bad", terms=("recon", "loss"))(lambda *a, **k: {})
    with pytest.raises(ValueError, match="not TrainConfig fields"):  # an entry written directly is checked too
        objectives.ObjectiveSpec(lambda model, step, t: {}, ("loss",), ("temperature",))
    from vaelab.config import ConfigError

    with pytest.raises(ConfigError, match="takes no lam"):
        objectives.Objective("elbo", {"lam": 1.0})


def test_an_objective_reads_the_warm_up_schedule_of_each_step(tmp_path, registries):
    """Training hands the objective each step's schedule (the KL warm-up's share of beta, a
    function of the step alone); the test pass hands the full weights."""
    seen = []

    @objectives.objective("seen-elbo", terms=("loss", "recon", "kl", "elbo"), options=("beta",),
                          schedule=("kl_scale",))
    def seen_elbo(model, step, t):
        seen.append(step.schedule.kl_scale)
        return objectives.elbo(model, step, t)

    run = tmp_path / "warm"
    assert main(["train", *TINY, "--objective", "seen-elbo", "--kl-warmup", "2", "--out", str(run)]) == 0
    r = Run(run).records()[0]
    steps = r["step"]  # the steps of the first epoch; the warm-up lasts two epochs
    assert seen[:steps] == [step / (2 * steps) for step in range(steps)]
    assert set(seen[steps:]) == {1.0}  # the test pass
    assert r["test_loss"] == pytest.approx(-r["test_recon"] + r["test_kl"], rel=1e-6)


def test_warm_up_is_refused_in_one_line_where_there_is_no_kl(tmp_path, registries, capsys):
    @objectives.objective("recon-only", terms=("loss", "recon"), needs=("density",))
    def recon_only(model, step, t):
        return objectives.reconstruction(model, step, t)

    for flags in (["--model", "ae"], ["--objective", "iwae"], ["--objective", "recon-only"]):
        capsys.readouterr()
        out = tmp_path / flags[-1]
        assert main(["train", *TINY, *flags, "--kl-warmup", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no KL term to warm up; set --kl-warmup 0" in err[0], err
        assert not out.exists()  # refused before any work


def test_beta_means_the_same_in_training_and_in_the_test_pass(tmp_path):
    run = tmp_path / "beta"
    assert main(["train", *TINY, "--beta", "4", "--out", str(run)]) == 0
    r = Run(run).records()[0]
    assert r["test_loss"] == pytest.approx(-r["test_recon"] + 4 * r["test_kl"], rel=1e-6)
    assert r["train_loss"] == pytest.approx(-r["train_recon"] + 4 * r["train_kl"], rel=1e-4)
    assert r["test_elbo"] == pytest.approx(r["test_recon"] - r["test_kl"], rel=1e-6)  # the ELBO stays the ELBO
