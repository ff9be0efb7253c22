"""Defaults chosen by the data: the binary and 8-bit recipes, and what a run records of them."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import metrics
from vaelab import training as train_module
from vaelab.cli import main
from vaelab.config import (
    AUTO,
    EIGHT_BIT_IMAGES,
    Config,
    ConfigError,
    DataFacts,
    eight_bit_epochs,
    resnet_levels,
    resnet_widths,
    resolve,
    unresolved,
)
from vaelab.models import build_model, check_config
from vaelab.runlog import ProgressLog
from vaelab.training import kl_weight

ICONS = Path("/usr/share/icons/oxygen/base/32x32")
requires_icons = pytest.mark.skipif(not ICONS.is_dir(), reason="apt-get install oxygen-icon-theme")

MNIST = DataFacts((1, 28, 28), 60000, binary=True)
COLOUR = DataFacts((3, 32, 32), 2000, binary=False)


def test_binary_benchmarks_keep_the_mnist_recipe():
    cfg, chosen = resolve(Config(), MNIST)
    m, t = cfg.model, cfg.train
    assert cfg.data.binarization == "dynamic" and m.likelihood == "bernoulli" and m.net == "mlp"
    assert (m.hidden, m.decoder_hidden, m.latent_dim) == ((512, 512), (256, 256), 50)
    assert (t.epochs, t.batch_size, t.lr, t.lr_decay, t.clip_grad, t.kl_warmup) == (40, 128, 2e-3, 0.92, 0.0, 0.0)
    assert not unresolved(cfg) and set(chosen) == set(unresolved(Config())) | {"model.decoder_hidden"}


def test_colour_images_get_the_eight_bit_recipe_sized_for_them():
    cfg, chosen = resolve(Config(), COLOUR)
    m, t = cfg.model, cfg.train
    assert cfg.data.binarization == "none" and (m.likelihood, m.likelihood_scale) == ("logistic", "decoder")
    assert m.net == "resnet" and m.hidden == (32, 64, 128) and m.decoder_hidden is None
    assert t.epochs == round(EIGHT_BIT_IMAGES / 2000) == 100
    assert t.lr_decay ** t.epochs == pytest.approx(0.1, rel=1e-4)  # a tenfold fall over the run
    assert chosen["model.hidden"] == "32,64,128" and chosen["train.epochs"] == "100"
    assert resolve(Config(), DataFacts((3, 64, 64), 2000, False))[0].model.hidden == (16, 32, 64, 128)


@pytest.mark.parametrize("h, w, levels", [(32, 32, 3), (64, 64, 4), (28, 28, 2), (48, 64, 3), (30, 30, 1),
                                          (7, 7, 0), (1024, 1024, 6)])
def test_resnet_depth_follows_the_image_size(h, w, levels):
    assert resnet_levels(h, w) == levels
    widths = resnet_widths(h, w)
    assert len(widths) == levels and (not widths or widths[-1] == 128) and all(v >= 16 for v in widths)


def test_sizes_without_two_conv_levels_fall_back_to_the_mlp():
    assert resolve(Config(), DataFacts((3, 30, 30), 100, False))[0].model.net == "mlp"
    with pytest.raises(ConfigError, match="resnet net needs image sides divisible by 2.*--image-size"):
        resolve(Config().replace(model={"net": "resnet"}), DataFacts((3, 25, 25), 100, False))
    with pytest.raises(ConfigError, match="at least one channel width"):
        build_model(Config().replace(model={"net": "resnet", "hidden": ()}).model, (3, 32, 32))


def test_explicit_settings_are_kept_and_the_rest_follows_them():
    # a Bernoulli likelihood on colour images binarises them; a binarisation picks its likelihood
    cfg, chosen = resolve(Config().replace(model={"likelihood": "bernoulli"}), COLOUR)
    assert cfg.data.binarization == "dynamic" and "model.likelihood" not in chosen
    cfg, _ = resolve(Config().replace(data={"binarization": "fixed"}), COLOUR)
    assert cfg.model.likelihood == "bernoulli" and cfg.model.net == "resnet"
    # grey MNIST: the MLP recipe with the discretized logistic and a per-pixel scale
    cfg, _ = resolve(Config().replace(data={"binarization": "none"}), MNIST)
    assert (cfg.model.net, cfg.model.likelihood, cfg.model.likelihood_scale) == ("mlp", "logistic", "pixel")
    # widths given: the decoder mirrors them; a conv net's default widths
    cfg, chosen = resolve(Config().replace(model={"hidden": (8, 16)}), COLOUR)
    assert cfg.model.hidden == (8, 16) and cfg.model.decoder_hidden is None and "model.hidden" not in chosen
    assert resolve(Config().replace(model={"net": "conv"}), MNIST)[0].model.hidden == (32, 64)
    # epochs given: the per-epoch decay is the recipe's, so a run resumed to more epochs continues
    # the curve of an uninterrupted run (and a probe run of 1 epoch does not fix a steeper one)
    cfg, _ = resolve(Config().replace(train={"epochs": 7}), COLOUR)
    assert cfg.train.lr_decay == resolve(Config(), COLOUR)[0].train.lr_decay
    # a resolved config resolves to itself
    again, chosen = resolve(cfg, COLOUR)
    assert again == cfg and chosen == {}


def test_eight_bit_epochs_follow_the_number_of_images():
    assert eight_bit_epochs(DataFacts((3, 32, 32), 50000, False)) == 4
    assert eight_bit_epochs(DataFacts((3, 64, 64), 2000, False)) == 100
    assert eight_bit_epochs(DataFacts((1, 8, 8), 10, False)) == 100  # small folders: at most 100 epochs
    assert eight_bit_epochs(DataFacts((3, 32, 32), 731, False)) == 100
    assert eight_bit_epochs(DataFacts((3, 512, 512), 1000000, False)) == 1


def test_unset_fields_load_from_config_files_and_bad_values_are_refused():
    assert Config.from_dict({"model": {"latent_dim": None, "net": "auto"}}).model.net == AUTO
    with pytest.raises(ConfigError, match="train.kl_warmup must be >= 0"):
        Config().replace(train={"kl_warmup": -1.0})
    with pytest.raises(ConfigError, match="train.lr must be a number"):
        Config().replace(train={"lr": "fast"})
    with pytest.raises(ConfigError, match="no KL term to warm up"):
        check_config(Config().replace(train={"kl_warmup": 1.0, "objective": "iwae"}))


def test_build_model_fills_unset_fields_from_the_image_shape():
    from vaelab.config import ModelConfig

    assert build_model(ModelConfig(), (1, 28, 28)).cfg.net == "mlp"
    model = build_model(ModelConfig(likelihood="logistic"), (3, 32, 32))
    assert model.cfg.net == "resnet" and model.cfg.likelihood_scale == "decoder"


def test_dataset_facts_tell_binary_pixels_from_grey_levels():
    from vaelab.data import Dataset, Split, load_dataset

    data = load_dataset("mnist-sample")
    assert data.facts().binary  # a binary benchmark, whatever its pixels
    grey = Dataset("x", data.train, data.test, (), "x")
    assert not grey.facts().binary
    bw = Split((data.train.images > 127).to(torch.uint8) * 255, data.train.labels)
    assert Dataset("x", bw, data.test, (), "x").facts().binary


def test_kl_warmup_raises_the_weight_linearly_to_beta():
    t = Config().replace(train={"kl_warmup": 2.0, "beta": 0.5}).train
    assert [kl_weight(t, s, 10) for s in (0, 5, 10, 20, 40)] == [0.0, 0.125, 0.25, 0.5, 0.5]
    assert kl_weight(Config().replace(train={"kl_warmup": 0.0}).train, 0, 10) == 1.0


def test_progress_lines_for_logs_follow_a_clock(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(ProgressLog, "clock", staticmethod(lambda: now[0]))
    log = ProgressLog(epochs=3, steps_per_epoch=100, batch_size=10, show=True)
    terms = {"loss": torch.full((10,), 50.0), "kl": torch.full((10,), 7.0)}
    log.start_epoch(1)
    printed = []
    for i in range(1, 101):
        now[0] += 0.5  # half a second a step
        log.step(i, terms)
        out = capsys.readouterr().out
        if out:
            printed.append((i, out))
    # the first line after 5 s, then every 30 s; none at the epoch's last step. Time left: 90 steps
    # of this epoch at 0.5 s, and 2 more epochs of 100 steps at the run's 0.5 s a step
    assert [i for i, _ in printed] == [10, 70]
    first = printed[0][1]
    assert first.count("\n") == 1 and "epoch 1/3  step 10/100" in first and "loss 50.00  KL 7.00" in first
    assert "20 images/s" in first and "epoch left 0:45" in first and "run left ~2:25" in first
    quiet = ProgressLog(epochs=1, steps_per_epoch=100, batch_size=10, show=False)
    quiet.start_epoch(1)
    now[0] += 100
    quiet.step(1, terms)
    assert capsys.readouterr().out == ""


@pytest.fixture
def colour_folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "icons"
    root.mkdir()
    for f in sorted((ICONS / "apps").glob("*.png"))[:48]:
        shutil.copy(f, root / f.name)
    return root


@requires_icons
def test_a_colour_folder_with_no_flags_trains_the_eight_bit_recipe(colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(colour_folder), "--image-size", "16", "--epochs", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("chosen from the data") == 1
    assert "8-bit colour training images of 3x16x16" in printed and "net resnet" in printed
    assert "active units" in printed and "KL" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["binarization"] == "none" and cfg["model"]["net"] == "resnet"
    assert cfg["model"]["hidden"] == [64, 128] and cfg["model"]["likelihood"] == "logistic"
    assert not unresolved(Config.from_dict(cfg))
    record = metrics(out)[-1]
    # the code is used: units active and a KL of many nats (a collapsed posterior has 0 and ~0)
    assert record["active_units"] > cfg["model"]["latent_dim"] // 4 and record["test_kl"] > 10
    assert math.isfinite(record["test_elbo"])
    assert main(["evaluate", str(out), "--n", "8", "--no-progress"]) == 0
    written = sorted(out.glob("eval*.json"))  # eval.json when 8 covers the test split, else eval-n8.json
    assert len(written) == 1
    ev = json.loads(written[0].read_text())
    assert ev["k"] == 1000 and "recon_psnr" in ev and 0 <= ev["active_units"] <= ev["latent_dim"]


@requires_icons
def test_binarising_colour_images_is_done_only_when_asked_with_a_note(colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(colour_folder), "--image-size", "16", "--epochs", "1",
                 "--binarization", "dynamic", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "binarising 8-bit images as asked" in captured.err
    assert json.loads((out / "config.json").read_text())["model"]["likelihood"] == "bernoulli"


def test_evaluation_picks_k_and_decoder_rows_by_image_size():
    from vaelab.evaluate import decode_rows, default_k

    assert default_k(784) == 1000 and default_k(3 * 32 * 32) == 100
    assert decode_rows(784) == 1024 and decode_rows(3 * 32 * 32) == 341 and decode_rows(3 * 256 * 256) == 16


def test_training_prints_progress_lines_when_no_bar_is_drawn(tiny_cfg, tmp_path, monkeypatch, capsys):
    ticks = iter(range(0, 10**6, 4))  # each look at the clock: 4 s later
    monkeypatch.setattr(ProgressLog, "clock", staticmethod(lambda: float(next(ticks))))
    train_module.train(tiny_cfg.replace(train={"epochs": 1, "batch_size": 50}), tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if "step" in line]
    assert lines and all(line.startswith("epoch 1/1  step ") and "images/s" in line for line in lines)
    train_module.train(tiny_cfg.replace(train={"epochs": 1, "batch_size": 50}), tmp_path / "quiet", progress=False)
    assert "step" not in capsys.readouterr().out


def test_active_units_count_the_dimensions_the_encoder_uses():
    from vaelab.batches import Feed, SplitInputs
    from vaelab.data import Split
    from vaelab.models import active_units

    model = build_model(Config().replace(model={"hidden": (16,), "latent_dim": 6}).model, (1, 4, 4))
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    inputs = SplitInputs(Split(images, torch.zeros(50, dtype=torch.long)), Feed("none"), 0, "cpu")
    with torch.no_grad():  # the last layer: dimensions 0-2 read the image, 3-5 are constant
        head = model.encoder.net[-1]
        head.weight[3:6] = 0
        head.weight[:3] *= 20
    assert active_units(model, inputs) == 3


@requires_icons
def test_the_eight_bit_recipe_resumes_exactly(colour_folder, tmp_path):
    from vaelab.training import Limits, resume

    cfg = Config().replace(data={"dataset": str(colour_folder), "image_size": (16, 16)},
                           train={"epochs": 4, "kl_warmup": 1.5})
    full = train_module.train(cfg, tmp_path / "full", progress=False)
    part = train_module.train(cfg.replace(train={"epochs": 2}), tmp_path / "part", progress=False)
    resume(part, Limits(epochs=4), progress=False)
    assert metrics(part, timing=False) == metrics(full, timing=False)


@requires_icons
def test_a_run_folder_from_before_the_recipes_resumes_and_evaluates(colour_folder, tmp_path):
    """config.json of an older vaelab: no kl_warmup field, precision "auto" (then fp32 on CPUs)."""
    from vaelab.training import Limits, resume

    cfg = Config().replace(data={"dataset": str(colour_folder), "image_size": (16, 16)},
                           model={"net": "conv", "hidden": (8, 16), "latent_dim": 4}, train={"epochs": 1})
    run = train_module.train(cfg, tmp_path / "old", progress=False)
    saved = json.loads((run / "config.json").read_text())
    del saved["train"]["kl_warmup"]
    saved["train"]["precision"] = "auto"
    (run / "config.json").write_text(json.dumps(saved))
    resume(run, Limits(epochs=2), progress=False)
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    assert main(["evaluate", str(run), "--n", "4", "--k", "2", "--quiet"]) == 0
