"""Figures and the computations behind them."""

import json

import pytest
import torch

from vaelab.cli import main
from vaelab.explore import FIGURES, add_noise, psnr, slerp


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("explore")
    common = ["--dataset", "mnist-sample", "--epochs", "2", "--batch-size", "250", "--hidden", "32", "--quiet"]
    assert main(["train", *common, "--latent-dim", "2", "--out", str(base / "vae2d")]) == 0
    assert main(["train", *common, "--latent-dim", "5", "--binarization", "none", "--likelihood", "logistic",
                 "--out", str(base / "logistic")]) == 0
    assert main(["train", *common, "--latent-dim", "5", "--model", "ae", "--out", str(base / "ae")]) == 0
    return base


@pytest.mark.parametrize("run", ["vae2d", "logistic", "ae"])
def test_every_figure_writes_png_and_numbers(runs, run, tmp_path):
    what = [w for w in FIGURES if not (w == "scale" and run != "logistic") and w != "transfer"]
    assert main(["plot", str(runs / run), "--what", ",".join(what), "--out", str(tmp_path)]) == 0
    for name in what:
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    denoise = json.loads((tmp_path / "denoise.json").read_text())
    noisy = [row["mse_noisy"] for row in denoise["levels"]]
    assert noisy == sorted(noisy)  # more noise, larger error
    if run == "logistic":
        scale = json.loads((tmp_path / "scale.json").read_text())
        assert scale["kind"] == "pixel" and 0 < scale["min"] <= scale["max"]


def test_figures_are_deterministic(runs, tmp_path):
    for out in ("a", "b"):
        assert main(["plot", str(runs / "vae2d"), "--what", "recon,denoise", "--out", str(tmp_path / out)]) == 0
    assert (tmp_path / "a" / "recon.json").read_text() == (tmp_path / "b" / "recon.json").read_text()
    assert (tmp_path / "a" / "denoise.json").read_text() == (tmp_path / "b" / "denoise.json").read_text()


def test_plot_options_and_errors(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "vae2d"), "--what", "manifold", "--span", "2", "--steps", "5",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifold.json").read_text())["steps"] == 5
    assert main(["plot", str(runs / "vae2d"), "--what", "scale"]) == 2
    assert main(["plot", str(runs / "vae2d"), "--what", "nonsense"]) == 2
    assert "unknown figure" in capsys.readouterr().err


def test_slerp_endpoints_and_norm():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    # between two unit vectors slerp stays on the unit circle
    unit = slerp(a, b / 2, torch.linspace(0, 1, 7))
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(7))


def test_noise_levels_and_psnr():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(100, 1, 28, 28)
    sp = add_noise(x, "salt-pepper", 0.3, g)
    changed = (sp != x).float().mean().item()
    assert 0.13 < changed < 0.17  # 30% touched, half of them set to 1 (the rest stay 0)
    assert set(sp.unique().tolist()) <= {0.0, 1.0}
    gauss = add_noise(x + 0.5, "gaussian", 0.1, g)
    assert abs((gauss - 0.5).std().item() - 0.1) < 0.005
    assert psnr(torch.tensor(0.01)).item() == pytest.approx(20.0)
