"""The Fréchet distance against closed forms; the cached feature classifier; evaluate --metrics fd."""

import json

import pytest
import torch

from vaelab.cli import main
from vaelab.quality import FeatureNet, classifier, features, frechet_distance


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-9)
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    x = torch.randn(5000, 1, generator=g, dtype=torch.float64)
    y = 3 * x + 2
    mu, sd = float(x.mean()), float(x.std())
    assert frechet_distance(x, y) == pytest.approx((mu - (3 * mu + 2)) ** 2 + (sd - 3 * sd) ** 2, rel=1e-9)


def test_frechet_distance_matches_the_nonsymmetric_square_root():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3000, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3000, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2, 0.5, 1, 3], dtype=torch.float64)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    tr_sqrt = torch.linalg.eigvals(sa @ sb).real.clamp_min(0).sqrt().sum()  # eigenvalues of S_a S_b are >= 0
    expect = (a.mean(0) - b.mean(0)).square().sum() + sa.trace() + sb.trace() - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(float(expect), rel=1e-8)


def test_feature_net_takes_any_image_size():
    net = FeatureNet(3, 7)
    for h, w in ((28, 28), (17, 40), (64, 48)):
        x = torch.rand(2, 3, h, w)
        assert net(x).shape == (2, 7) and features(net, x).shape == (2, 128)


def test_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    from vaelab.data import DataError, load_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = load_dataset("mnist-sample")
    net, info = classifier(data, "dynamic", torch.device("cpu"), steps=40, progress=False)
    assert 0 <= info["test_accuracy"] <= 1 and info["steps"] == 40
    saved = list((tmp_path / "vaelab" / "classifiers").glob("*/weights.safetensors"))
    assert len(saved) == 1
    monkeypatch.setattr("vaelab.quality.as_input", lambda *a, **k: pytest.fail("a cached classifier was retrained"))
    again, info2 = classifier(data, "dynamic", torch.device("cpu"), steps=40, progress=False)
    assert info2 == info
    for (k, v), (_, w) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    from dataclasses import replace

    unlabelled = replace(data, classes=())
    with pytest.raises(DataError, match="labels"):
        classifier(unlabelled, "dynamic", torch.device("cpu"), steps=5, progress=False)


def test_evaluate_fd(tmp_path, monkeypatch):
    from vaelab.evaluate import evaluate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                 "--quiet", "--out", str(run)]) == 0
    r = evaluate(run, metrics=("fd",), fd_classifier_steps=60, progress=False)
    assert "nll" not in r and r["fd_n"] == 500
    assert 0 <= r["fd_train"] < r["fd"] and r["fd_mean"] >= 0  # one epoch: samples far from real digits
    assert "not to Inception" in r["fd_note"]
    assert json.loads((run / "eval-fd.json").read_text())["fd"] == r["fd"]
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(run), "--metrics", "nll,bogus"])
    assert stop.value.code == 2


def _fake_torchmetrics(monkeypatch, updates: list, fail: Exception | None = None):
    """Stand-in for torchmetrics.image.fid: records what vaelab passes to the metric."""
    import sys
    import types

    class FrechetInceptionDistance:
        def __init__(self, feature, normalize):
            if fail is not None:
                raise fail
            assert feature == 2048 and normalize is True

        def to(self, device):
            return self

        def update(self, images, real):
            updates.append((images.clone(), real))

        def compute(self):
            return torch.tensor(12.5)

    fid = types.ModuleType("torchmetrics.image.fid")
    fid.FrechetInceptionDistance = FrechetInceptionDistance
    for name, module in (("torchmetrics", types.ModuleType("torchmetrics")),
                         ("torchmetrics.image", types.ModuleType("torchmetrics.image")),
                         ("torchmetrics.image.fid", fid)):
        monkeypatch.setitem(sys.modules, name, module)


def test_inception_fid_feeds_rgb_images_in_unit_range_and_says_what_is_missing(tmp_path, monkeypatch):
    import sys

    from vaelab.config import ConfigError
    from vaelab.evaluate import evaluate

    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32", "--latent-dim", "4",
                 "--quiet", "--out", str(run)]) == 0
    updates: list = []
    _fake_torchmetrics(monkeypatch, updates)
    r = evaluate(run, metrics=("fid",), n=120, progress=False)
    assert r["fid"] == 12.5 and r["fid_n"] == 120 and "Inception" in r["fid_note"]
    real = torch.cat([x for x, is_real in updates if is_real])
    fake = torch.cat([x for x, is_real in updates if not is_real])
    assert real.shape == fake.shape == (120, 3, 28, 28)
    assert torch.equal(real[:, 0], real[:, 2]) and fake.min() >= 0 and fake.max() <= 1
    assert not torch.equal(real, fake)
    _fake_torchmetrics(monkeypatch, updates, fail=RuntimeError("no network"))
    with pytest.raises(ConfigError, match="weights .*no network"):
        evaluate(run, metrics=("fid",), n=10, progress=False)
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)  # import fails
    with pytest.raises(ConfigError, match=r"vaelab\[inception\]"):
        evaluate(run, metrics=("fid",), n=10, progress=False)
