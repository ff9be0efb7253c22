"""Denoising training (--denoise KIND:LEVEL): the flag, the corruption tied to (step, image),
a tiny run, and the denoising figure with models side by side."""

import dataclasses
import json

import pytest
import torch

from tests.conftest import metrics
from vaelab.checkpoint import load_config
from vaelab.cli import main
from vaelab.config import Config, ConfigError, parse_denoise
from vaelab.corruption import PixelNoise, add_noise, corrupt
from vaelab.explore import Explorer, figure_denoise

TINY = ["--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--hidden", "32", "--latent-dim", "4",
        "--quiet"]


@pytest.mark.parametrize("spec, parsed", [("uniform:0.3", ("uniform", 0.3, 0.3)),
                                          ("salt-pepper:0.05", ("salt-pepper", 0.05, 0.05)),
                                          ("gaussian:0-0.4", ("gaussian", 0.0, 0.4)),
                                          ("uniform:0.1-0.2", ("uniform", 0.1, 0.2))])
def test_denoise_spec_parses(spec, parsed):
    assert parse_denoise(spec) == parsed
    cfg = Config().replace(train={"denoise": spec})
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # config.json round trip


@pytest.mark.parametrize("spec, message", [("uniform", "KIND:LEVEL"), ("fog:0.3", "unknown denoise noise 'fog'"),
                                           ("uniform:0", "in (0, 1)"), ("uniform:1", "in (0, 1)"),
                                           ("uniform:abc", "in (0, 1)"), ("uniform:0.4-0.2", "LOW < HIGH"),
                                           ("gaussian:0.2-1.5", "LOW < HIGH"), ("uniform:nan", "in (0, 1)")])
def test_bad_denoise_spec_is_a_one_line_error(spec, message, capsys):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config().replace(train={"denoise": spec})
    with pytest.raises(SystemExit) as e:
        main(["train", "--denoise", spec, *TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_noise_is_tied_to_image_and_step_not_to_the_batch():
    x = (torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    idx = torch.arange(100, 110)
    for spec in ("uniform:0.3", "salt-pepper:0-0.5", "gaussian:0.2"):
        denoise = parse_denoise(spec)
        whole = corrupt(x, idx, denoise, key=7)
        # the same images in another batch, in another order, give the same corruption
        perm = torch.tensor([7, 2, 9, 0])
        torch.testing.assert_close(corrupt(x[perm], idx[perm], denoise, key=7), whole[perm], rtol=0, atol=0)
        assert not torch.equal(whole, x)
        # another step (key) or another image index: other noise
        assert not torch.equal(corrupt(x, idx, denoise, key=8), whole)
        assert not torch.equal(corrupt(x, idx + 1, denoise, key=7), whole)


def test_counter_noise_has_the_kinds_statistics():
    x = torch.zeros(200, 1, 28, 28)
    noise = PixelNoise(torch.arange(200), 0)
    hit = (add_noise(x, "uniform", 0.3, noise) > 0).float().mean().item()
    assert 0.29 < hit < 0.31
    sp = add_noise(x, "salt-pepper", 0.3, noise)
    assert set(sp.unique().tolist()) <= {0.0, 1.0} and 0.14 < sp.mean().item() < 0.16  # half of 30% set to 1
    g = add_noise(x + 0.5, "gaussian", 0.1, noise) - 0.5
    assert abs(g.mean().item()) < 0.002 and abs(g.std().item() - 0.1) < 0.002
    # a level per image (B,): image i gets its own fraction
    levels = torch.linspace(0, 0.5, 200)
    per_image = (add_noise(x, "uniform", levels, noise) > 0).float().flatten(1).mean(1)
    assert (per_image - levels).abs().max() < 0.08 and per_image[0] == 0
    # a level range draws the level per image, uniformly: mean fraction ~ the range's middle
    ranged = corrupt(x, torch.arange(200), ("salt-pepper", 0.0, 0.4), key=3)
    assert 0.08 < (ranged > 0).float().mean().item() < 0.12


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("denoise")
    assert main(["train", *TINY, "--out", str(base / "plain")]) == 0
    assert main(["train", *TINY, "--denoise", "uniform:0-0.4", "--out", str(base / "denoise")]) == 0
    return base


def test_denoising_run_describes_itself_and_tests_on_clean_images(runs):
    cfg = load_config(runs / "denoise")
    assert cfg.train.denoise == "uniform:0-0.4"
    assert load_config(runs / "plain").train.denoise is None
    (plain,), (noisy,) = (metrics(runs / r) for r in ("plain", "denoise"))
    # the same seed, data order and reparameterisation noise: only the encoder's input differs
    assert plain["train_loss"] != noisy["train_loss"]
    # the test bound is computed on clean inputs by the same code for both runs
    from vaelab.batches import model_inputs
    from vaelab.checkpoint import load_run
    from vaelab.data import load_dataset
    from vaelab.training import test_elbo

    cfg, model = load_run(runs / "denoise")
    data = load_dataset("mnist-sample")
    clean = test_elbo(model, model_inputs(model, cfg, data.test, len(data.classes)), seed=cfg.train.seed)
    assert clean["elbo"] == pytest.approx(noisy["test_elbo"], abs=1e-6)


def test_denoise_figure_draws_every_model_on_the_same_noisy_images(runs, tmp_path):
    assert main(["plot", str(runs / "denoise"), "--what", "denoise", "--noise", "uniform", "--levels", "0.1,0.4",
                 "--against", str(runs / "plain"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "denoise.png").read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads((tmp_path / "denoise.json").read_text())
    models = numbers["models"]
    assert [m["denoise"] for m in models] == ["uniform:0-0.4", None]
    assert [m["run"] for m in models] == [str(runs / "denoise"), str(runs / "plain")]
    assert numbers["levels"] == models[0]["levels"]
    a, b = ([r["psnr_noisy"] for r in m["levels"]] for m in models)
    assert a == b and a[0] > a[1]  # the same noisy images for both; more noise, lower PSNR
    assert models[0]["levels"][0]["psnr_recon"] != models[1]["levels"][0]["psnr_recon"]


def test_denoise_figure_refuses_models_on_other_test_images(runs):
    ex = Explorer.from_run(runs / "plain", n=50)
    other = dataclasses.replace(ex, x=1 - ex.x, run_dir=runs / "denoise")  # as if binarised otherwise
    with pytest.raises(ValueError, match="other test images"):
        figure_denoise(ex, kind="uniform", levels=(0.1,), against=(other,))


def test_the_denoise_figure_of_a_model_trained_on_clean_images_says_so_with_each_rows_psnr(runs):
    ex = Explorer.from_run(runs / "plain", n=50)
    fig, numbers = figure_denoise(ex, kind="uniform", levels=(0.1, 0.4), n_show=3, n_eval=50)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "trained on clean images only (no --denoise)" in title and "grey line is the noisy input" in title
    labels = [t.get_text() for t in fig.texts] + [ax.get_ylabel() for ax in fig.axes]
    row = numbers["levels"][1]  # the middle of two levels is shown
    assert any(f"PSNR {row['psnr_noisy']:.1f} dB" in t and "noisy" in t for t in labels)
    assert any(f"PSNR {row['psnr_recon']:.1f} dB" in t and "reconstruction" in t for t in labels)
    with_denoiser = figure_denoise(Explorer.from_run(runs / "denoise", n=50), kind="uniform", levels=(0.1,),
                                   n_show=3, n_eval=50)[0]
    assert "clean images only" not in with_denoiser._suptitle.get_text()
