"""The factor datasets: the published dSprites grid and order, the bit-packed cache, the
colour variant, subsets, and the errors for data without factors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vaelab.checkpoint import eval_path
from vaelab.config import DataConfig
from vaelab.data import DataError
from vaelab.factors import FACTOR_DATASETS, GridImages, load_factor_dataset, render_dsprites, write_dsprites
from vaelab.sources import load_configured


def test_dsprites_is_the_published_grid():
    spec = FACTOR_DATASETS["dsprites"]
    assert spec.factor_names == ("color", "shape", "scale", "orientation", "posX", "posY")
    assert spec.sizes == (1, 3, 6, 40, 32, 32) and spec.n == 737_280
    assert spec.values[2][0] == 0.5 and spec.values[2][-1] == 1.0
    assert spec.values[3][0] == 0.0 and spec.values[3][-1] == pytest.approx(2 * math.pi)
    assert spec.values[4] == tuple(np.linspace(0, 1, 32))


def test_dsprites_file_order_and_positions(tmp_path):
    path = tmp_path / "d.bits"
    write_dsprites(path, positions=3)  # the full writer on a 3 x 3 position grid
    g = GridImages(path, (1, 64, 64), packed=True)
    assert len(g) == 3 * 6 * 40 * 9
    angles = np.asarray(FACTOR_DATASETS["dsprites"].values[3])
    # row (shape 2, scale 5, orientation 7, posX 0, posY 2): posY varies fastest
    row = np.ravel_multi_index((2, 5, 7, 0, 2), (3, 6, 40, 3, 3))
    img = g.read([row])[0, 0] > 0
    sprite = render_dsprites(2, 1.0, angles[7:8])[0]
    assert img.sum() == sprite.sum() > 0
    rows, cols = np.nonzero(img)
    r0, c0 = np.nonzero(sprite)
    assert cols.mean() < c0.mean() - 15 and rows.mean() > r0.mean() + 15  # posX 0: left; posY 1: down
    assert set(np.unique(g.read([row]))) == {0, 255}


def test_shapes_scale_and_turn():
    a = render_dsprites(0, 0.5, np.array([0.0]))[0].sum()
    b = render_dsprites(0, 1.0, np.array([0.0]))[0].sum()
    assert b == pytest.approx(4 * a, rel=0.05)
    square = render_dsprites(0, 1.0, np.array([0.0, math.pi / 2, math.pi / 4]))
    assert (square[0] == square[1]).all() and not (square[0] == square[2]).all()
    heart = render_dsprites(2, 1.0, np.array([0.0, math.pi]))
    assert (heart[0] == heart[1][::-1, ::-1]).all()  # a half turn about the canvas centre


def test_xyobject_subset_and_cache(tmp_path):
    data = load_factor_dataset("xyobject", tmp_path, subset=500)
    again = load_factor_dataset("xyobject", tmp_path, subset=500)
    assert (data.train.factors == again.train.factors).all() and data.fingerprint == again.fingerprint
    assert len(data.train) == 500 and len(data.test) == 500 and data.image_shape == (3, 64, 64)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["images"] == 16 * 16 * 4 * 6 and manifest["factors"]["scale"] == [8.0, 10.0, 12.0, 14.0]
    x = data.train.images.read(np.arange(4))
    assert np.array_equal(x, data.factors.images(data.train.factors[:4]).numpy())
    f = data.train.factors[0].tolist()
    colour = np.asarray([(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255)])[f[3]]
    lit = x[0].reshape(3, -1)[:, x[0].max(0).reshape(-1) > 0]
    assert (lit == colour[:, None]).all() and lit.shape[1] == int([8, 10, 12, 14][f[2]]) ** 2
    head = data.train.head(10)
    assert len(head) == 10 and head.factors.shape == (10, 4) and head.to("cpu").images.shape == (10, 3, 64, 64)
    assert not load_factor_dataset("xyobject", tmp_path).train.factors.equal(data.train.factors)
    with pytest.raises(DataError, match="out of range"):
        load_factor_dataset("xyobject", tmp_path, subset=10**6)


def test_config_errors(tmp_path):
    with pytest.raises(DataError, match="--subset is for the factor datasets"):
        load_configured(DataConfig(dataset="mnist-sample", subset=10))
    with pytest.raises(DataError, match="own size"):
        load_configured(DataConfig(dataset="xyobject", data_dir=str(tmp_path), channels=1))
    data = load_configured(DataConfig(dataset="mnist-sample"))
    with pytest.raises(DataError, match="needs ground-truth factors"):
        data.require_factors("the MIG metric")


def test_train_and_evaluate_on_a_subset(tmp_path, monkeypatch):
    from vaelab.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "run"
    main(["train", "--dataset", "xyobject", "--subset", "96", "--epochs", "1", "--net", "mlp", "--hidden", "32",
          "--latent-dim", "3", "--batch-size", "32", "--out", str(out), "--quiet"])
    main(["evaluate", str(out), "--metrics", "mig,sap", "--no-progress"])
    r = json.loads(eval_path(out, metrics=["mig", "sap"]).read_text())  # named by its metrics
    assert r["disentanglement"]["mig"]["points"] == 96 and 0 <= r["mig"] <= 1
    assert r["disentanglement"]["factors"] == ["x", "y", "scale", "color"]


def test_array_file_factors(tmp_path, monkeypatch):
    from vaelab.arrays import load_array
    from vaelab.images import Transform

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    codes = np.stack([np.arange(40) % 3, np.arange(40) // 10], 1)
    np.savez(tmp_path / "f.npz", images=images, factors=codes, factor_names=np.array(["a", "b"]))
    data = load_array(tmp_path / "f.npz", Transform(None, 0, "black", 0.25), progress=False)
    again = load_array(tmp_path / "f.npz", Transform(None, 0, "black", 0.25), progress=False)  # from the cache
    for d in (data, again):
        assert d.factors.names == ("a", "b") and d.factors.sizes == (3, 4)
        both = torch.cat([d.train.factors, d.test.factors])
        assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, codes.tolist()))
    with pytest.raises(DataError, match="factor dataset"):
        data.factors.images(codes[:2])
    np.savez(tmp_path / "short.npz", images=images, factors=codes[:39])
    with pytest.raises(DataError, match=r"'factors' must hold one row of factor codes per image, shape \(40, F\)"):
        load_array(tmp_path / "short.npz", Transform(None, 0, "black", 0.25), progress=False)
    np.savez(tmp_path / "split.npz", train=images[:30], test=images[30:], train_factors=codes[:30],
             test_factors=codes[30:31])
    with pytest.raises(DataError, match="'test_factors' must hold one row"):
        load_array(tmp_path / "split.npz", Transform(None, 0, "black", 0.25), progress=False)
    np.savez(tmp_path / "float.npz", images=images, factors=codes * 0.5)
    with pytest.raises(DataError, match="integer codes"):
        load_array(tmp_path / "float.npz", Transform(None, 0, "black", 0.25), progress=False)


def test_metrics_on_data_without_the_factors_they_need_are_one_line_errors(tmp_path, monkeypatch, capsys):
    from vaelab.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 2, (60, 8, 8), dtype=np.uint8) * 255
    codes = np.stack([np.arange(60) % 3, np.arange(60) % 4], 1)
    np.savez(tmp_path / "f.npz", images=images, factors=codes)
    for name, data in (("arr", str(tmp_path / "f.npz")), ("plain", "mnist-sample")):
        main(["train", "--dataset", data, "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
              "--out", str(tmp_path / name), "--quiet"])
    main(["evaluate", str(tmp_path / "arr"), "--metrics", "mig", "--no-progress"])
    assert json.loads(eval_path(tmp_path / "arr", metrics=["mig"]).read_text())["disentanglement"]["factors"] == ["factor0",
                                                                                                    "factor1"]
    capsys.readouterr()
    for run, metrics, message in (("arr", "mig,factorvae", "the factorvae score draws images with one factor fixed"),
                                  ("plain", "dci", "the dci metric needs ground-truth factors")):
        with pytest.raises(SystemExit) as e:
            raise SystemExit(main(["evaluate", str(tmp_path / run), "--metrics", metrics, "--no-progress"]))
        err = capsys.readouterr().err.strip()
        assert e.value.code != 0 and message in err and len(err.splitlines()) == 1
