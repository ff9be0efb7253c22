"""Every command on the user's own images: colour, non-square, labelled or not, small."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import metrics
from vaelab.cli import main

ICONS = Path("/usr/share/icons/oxygen/base/32x32")  # Debian's oxygen-icon-theme: real colour artwork
requires_icons = pytest.mark.skipif(not ICONS.is_dir(), reason="apt-get install oxygen-icon-theme")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def icons(tmp_path) -> Path:
    """60 RGBA icons in 3 class folders."""
    root = tmp_path / "icons"
    for cls in ("apps", "devices", "places"):
        (root / cls).mkdir(parents=True)
        for f in sorted((ICONS / cls).glob("*.png"))[:20]:
            shutil.copy(f, root / cls / f.name)
    return root


def run(*args: str) -> int:
    return main([str(a) for a in args])


@requires_icons
def test_every_command_on_a_colour_non_square_folder(icons, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--dataset", icons, "--image-size", "16x24", "--net", "conv", "--hidden", "8,16",
               "--res-blocks", "1", "--binarization", "none", "--likelihood", "logistic-mixture", "--mixture", "3",
               "--latent-dim", "4", "--epochs", "2", "--test-fraction", "0.25", "--out", out, "--quiet") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["dataset"] == str(icons.resolve()) and len(cfg["data"]["fingerprint"]) == 16
    assert Image.open(out / "recon.png").mode == "RGB"
    assert run("evaluate", out, "--k", "4", "--quiet") == 0
    ev = json.loads((out / "eval-k4.json").read_text())
    assert ev["dims"] == 3 * 16 * 24 and 0 < ev["bits_per_dim"] < 9
    assert run("sample", out, "--n", "4") == 0
    figures = "recon,samples,manifold,latents,interpolate,combine,denoise,curves"
    assert run("plot", out, "--what", figures, "--levels", "0.1,0.2") == 0
    for name in figures.split(","):
        assert Image.open(out / "plots" / f"{name}.png").size[0] > 100
    assert run("probe", out, "--probe-epochs", "2") == 0
    assert json.loads((out / "probe.json").read_text())["n_test"] > 0


@requires_icons
def test_conditional_models_use_folder_labels(icons, tmp_path):
    out = tmp_path / "cvae"
    assert run("train", "--dataset", icons, "--model", "cvae", "--hidden", "32", "--latent-dim", "2",
               "--epochs", "1", "--image-size", "8", "--out", out, "--quiet") == 0
    assert run("plot", out, "--what", "transfer,latents") == 0
    info = json.loads((out / "checkpoint" / "state.json").read_text())
    assert info["cond_dim"] == 3 and info["classes"] == ["apps", "devices", "places"]


def test_unlabelled_folder_refuses_label_commands_in_one_line(tmp_path, capsys):
    from vaelab.data import load_dataset

    x = load_dataset("mnist-sample").train.images[:40, 0].numpy()
    (tmp_path / "flat").mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / "flat" / f"{i}.png")
    assert run("train", "--dataset", tmp_path / "flat", "--model", "cvae", "--out", tmp_path / "c", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs conditions" in err and "labelled dataset" in err
    assert run("train", "--dataset", tmp_path / "flat", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
               "--out", tmp_path / "v", "--quiet") == 0
    capsys.readouterr()
    assert run("probe", tmp_path / "v") == 2
    assert "needs class labels" in capsys.readouterr().err
    assert run("plot", tmp_path / "v", "--what", "latents") == 0  # one colour, no legend


def test_a_small_folder_learns_with_the_default_recipe(tmp_path):
    """200 images: batches shrink so an epoch has 16 steps and the warm-up ends within it."""
    from vaelab.data import load_dataset

    d = load_dataset("mnist-sample")
    x, y = d.train.images[:200, 0].numpy(), d.train.labels[:200].numpy()
    for i in range(200):
        (tmp_path / "small" / str(y[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "small" / str(y[i]) / f"{i}.png")
    out = tmp_path / "run"
    assert run("train", "--dataset", tmp_path / "small", "--epochs", "6", "--out", out, "--quiet") == 0
    rows = metrics(out)
    # grey levels: the 8-bit recipe; a uniform guess costs 8 bits/dim, the first epoch's model ~5
    assert -rows[-1]["test_elbo"] / (28 * 28 * math.log(2)) < 2.75
    assert rows[-1]["step"] >= 6 * 15  # batches of ceil(n_train / 16) instead of 64


def test_bad_images_are_skipped_and_listed(tmp_path):
    from vaelab.data import load_dataset

    x = load_dataset("mnist-sample").train.images[:30, 0].numpy()
    (tmp_path / "d").mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / "d" / f"{i}.png")
    (tmp_path / "d" / "bad.jpg").write_bytes(b"not a jpeg")
    assert run("train", "--dataset", tmp_path / "d", "--out", tmp_path / "r", "--quiet", "--epochs", "1") == 2
    assert run("train", "--dataset", tmp_path / "d", "--skip-bad-images", "--hidden", "16", "--latent-dim", "2",
               "--epochs", "1", "--out", tmp_path / "r", "--quiet") == 0
    assert (tmp_path / "r" / "skipped_images.txt").read_text().startswith("bad.jpg: ")


def test_array_file_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((64, 12, 20, 3)) < 0.3).astype(np.float32)  # N x H x W x C floats in [0, 1]
    np.savez(tmp_path / "a.npz", images=x, labels=rng.integers(0, 2, 64))
    out = tmp_path / "r"
    assert run("train", "--dataset", tmp_path / "a.npz", "--net", "conv", "--hidden", "4", "--latent-dim", "2",
               "--epochs", "1", "--test-fraction", "0.2", "--out", out, "--quiet") == 0
    assert run("evaluate", out, "--k", "2", "--quiet") == 0
    assert json.loads((out / "eval-k2.json").read_text())["n"] > 0


def test_streamed_training_equals_resident_training(tmp_path):
    """A training split over the memory budget streams from the cache: same losses as resident."""
    from vaelab.config import Config
    from vaelab.data import load_dataset
    from vaelab.training import train

    d = load_dataset("mnist-sample")
    np.savez(tmp_path / "digits.npz", train=d.train.images.numpy(), test=d.test.images[:100].numpy())
    cfg = Config().replace(data={"dataset": str(tmp_path / "digits.npz")},
                           model={"hidden": [32], "decoder_hidden": None, "latent_dim": 4},
                           train={"epochs": 2, "batch_size": 100})
    resident = train(cfg, tmp_path / "resident", progress=False)
    streamed = train(cfg.replace(data={"memory_budget_mb": 1}), tmp_path / "streamed", progress=False)

    def losses(run):
        return [(r["train_loss"], r["test_elbo"]) for r in metrics(run)]

    assert losses(resident) == losses(streamed)  # 1.5 MB of training images > 1 MB budget
