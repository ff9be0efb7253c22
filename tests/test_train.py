"""Training loop: run folder contents, exact resume, divergence handling, checkpoints."""

import json
import math
import os
import shutil

import pytest
import torch

from tests.conftest import metrics
from vaelab import objectives
from vaelab.checkpoint import load_checkpoint, load_run
from vaelab.config import Config, resolve
from vaelab.data import load_dataset
from vaelab.training import Limits, TrainingDiverged, learning_rate, resume, train


def test_run_folder_is_self_describing(tmp_path, tiny_cfg):
    run = train(tiny_cfg, tmp_path / "run", progress=False)
    saved = Config.from_dict(json.loads((run / "config.json").read_text()))
    # the config as given, with every setting left to the data chosen, and the precision used
    chosen, _ = resolve(tiny_cfg, load_dataset("mnist-sample").facts())
    assert saved.replace(data={"fingerprint": None}) == chosen.replace(train={"precision": "fp32"})
    assert len(saved.data.fingerprint) == 16  # the data's identity is recorded with the run
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_recon", "train_kl", "test_elbo", "seconds", "examples_per_s"):
        assert key in rows[-1]
    assert rows[-1]["test_elbo"] < 0
    assert {"model.safetensors", "state.safetensors", "state.json"} <= set(os.listdir(run / "checkpoint"))
    assert (run / "recon.png").stat().st_size > 0 and (run / "samples.png").stat().st_size > 0
    with pytest.raises(Exception, match="already holds a run"):
        train(tiny_cfg, run, progress=False)


def test_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_cfg):
    data = load_dataset("mnist-sample")
    cfg = tiny_cfg.replace(train={"epochs": 4, "batch_size": 100, "warmup_steps": 7})
    full = train(cfg, tmp_path / "full", progress=False, dataset=data)
    part = train(cfg.replace(train={"epochs": 2}), tmp_path / "part", progress=False, dataset=data)
    resume(part, Limits(epochs=4), progress=False, dataset=data)
    assert metrics(part, timing=False) == metrics(full, timing=False)
    _, a = load_run(full)
    _, b = load_run(part)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


class TenSecondEpochs:
    """A clock for vaelab.training in which every epoch takes 10 s."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 10.0  # read at an epoch's start and at its end only
        return self.now


def test_time_budget_stops_before_an_epoch_that_would_overrun_and_resume_extends_it(tmp_path, tiny_cfg,
                                                                                     monkeypatch, capsys):
    monkeypatch.setattr("vaelab.training.time", TenSecondEpochs())
    data = load_dataset("mnist-sample")
    cfg = tiny_cfg.replace(train={"epochs": 10, "batch_size": 100})
    # 27 s: after 2 epochs (20 s) a third would end at 30 s, so the run stops at 2
    run = train(cfg.replace(train={"minutes": 0.45, "image_every": 5}), tmp_path / "run", progress=False,
                dataset=data)
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    assert "stops after epoch 2 of 10" in capsys.readouterr().out
    assert (run / "samples.png").exists()  # the last epoch's pictures, though neither epoch 5 nor 10
    # the budget counts the earlier session's epochs: 45 s allow 2 more, and the result is
    # the uninterrupted run's
    resume(run, Limits(minutes=0.75), progress=False, dataset=data)
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["train"]["minutes"] == 0.75
    full = train(cfg.replace(train={"epochs": 4}), tmp_path / "full", progress=False, dataset=data)
    assert metrics(run, timing=False) == metrics(full, timing=False)
    # an exhausted budget trains no further epoch
    resume(run, progress=False, dataset=data)
    assert len(metrics(run)) == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_cfg, monkeypatch):
    calls = {"n": 0}
    real = objectives.OBJECTIVES["elbo"]

    def poisoned(model, step, t):
        calls["n"] += 1
        terms = real.fn(model, step, t)
        if calls["n"] > 18:  # epoch 1 has 16 steps of 125 (+ 1 test pass); NaN from epoch 2 on
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setitem(objectives.OBJECTIVES, "elbo", real.__class__(poisoned, real.terms, real.options))
    with pytest.raises(TrainingDiverged, match="last good checkpoint \\(epoch 1\\)"):
        train(tiny_cfg.replace(train={"epochs": 3}), tmp_path / "run", progress=False)
    info, _ = load_checkpoint(tmp_path / "run", load_run(tmp_path / "run")[1])
    assert info["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in load_run(tmp_path / "run")[1].parameters())


def test_a_few_non_finite_steps_are_skipped_and_counted(tmp_path, tiny_cfg, monkeypatch, capsys):
    calls = {"n": 0}
    real = objectives.OBJECTIVES["elbo"]

    def poisoned(model, step, t):
        calls["n"] += 1
        terms = real.fn(model, step, t)
        if calls["n"] in (3, 5):  # two training steps of epoch 1
            terms["loss"] = terms["loss"] * float("inf")
        return terms

    monkeypatch.setitem(objectives.OBJECTIVES, "elbo", real.__class__(poisoned, real.terms, real.options))
    run = train(tiny_cfg.replace(train={"epochs": 2}), tmp_path / "run", progress=False)
    records = metrics(run)
    assert records[0]["skipped_steps"] == 2 and "skipped_steps" not in records[1]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_elbo"]) for r in records)
    assert "epoch 1 skipped 2 step(s)" in capsys.readouterr().err


def test_checkpoint_survives_a_crash_between_renames(tmp_path, tiny_cfg):
    run = train(tiny_cfg.replace(train={"epochs": 1}), tmp_path / "run", progress=False)
    saved = load_run(run)[1].state_dict()
    os.replace(run / "checkpoint", run / "checkpoint.old")  # as if killed mid-swap
    _, model = load_run(run)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    shutil.rmtree(run / "checkpoint.old")
    with pytest.raises(Exception, match="no checkpoint"):
        load_run(run)


def test_exp_schedule_does_not_depend_on_total_epochs():
    a = Config().replace(train={"lr": 2e-3, "lr_decay": 0.92}).train
    b = Config().replace(train={"lr": 2e-3, "lr_decay": 0.92, "epochs": 3}).train
    assert [learning_rate(a, s, 50) for s in range(0, 400, 37)] == [learning_rate(b, s, 50) for s in range(0, 400, 37)]
    assert learning_rate(a, 0, 50) < learning_rate(a, a.warmup_steps, 50)  # warm-up
    cos = Config().replace(train={"schedule": "cosine", "epochs": 2, "warmup_steps": 0, "lr": 2e-3}).train
    assert learning_rate(cos, 0, 50) == cos.lr and abs(learning_rate(cos, 100, 50)) < 1e-12


def test_the_recon_pictures_show_images_from_across_the_test_split(tmp_path, monkeypatch):
    """A folder's first test files by name are often one kind of picture: recon.png and the
    recon figure take theirs spread over the split instead, the same each time."""
    import numpy as np

    from vaelab import explore, plots, training
    from vaelab.cli import main

    rng = np.random.default_rng(0)
    test = np.repeat(np.arange(100, dtype=np.uint8), 64).reshape(100, 8, 8)  # test image i: every pixel i
    np.savez(tmp_path / "d.npz", train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), test=test)
    shown = {}
    real = training.write_pictures
    monkeypatch.setattr(training, "write_pictures", lambda model, run_dir, x, *a, **k: (
        shown.setdefault("train", x), real(model, run_dir, x, *a, **k))[1])
    assert main(["train", "--dataset", str(tmp_path / "d.npz"), "--binarization", "none", "--likelihood", "logistic",
                 "--net", "mlp", "--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    spread = torch.linspace(0, 99, 32).round()
    assert torch.equal((shown["train"][:, 0, 0, 0] * 255).round().cpu(), spread)
    image_rows = plots.image_rows
    monkeypatch.setattr(plots, "image_rows", lambda rows, *a, **k: (shown.setdefault("plot", rows[0]),
                                                                     image_rows(rows, *a, **k))[1])
    explore.figure_recon(explore.Explorer.from_run(tmp_path / "r"), n=10)
    assert torch.equal((shown["plot"][:, 0, 0, 0] * 255).round(), torch.linspace(0, 99, 10).round())
