"""The notebook face: vaelab.train / vaelab.load and a Run's model, metrics, images, figures."""

import sys

import pytest
import torch

import vaelab
from vaelab.api import config_of, settings
from vaelab.config import ConfigError

TINY = {"hidden": (32,), "latent_dim": 3, "batch_size": 100, "epochs": 2, "warmup_steps": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return vaelab.train("mnist-sample", out=tmp_path_factory.mktemp("api") / "run", quiet=True, **TINY)


def test_every_setting_has_one_section():
    from dataclasses import fields

    from vaelab.api import SECTIONS

    names = [f.name for cls in SECTIONS.values() for f in fields(cls) if not f.metadata.get("internal")]
    assert len(names) == len(set(names)) == len(settings())


def test_settings_are_checked_as_the_command_line_checks_flags():
    with pytest.raises(ConfigError, match="did you mean latent_dim"):
        config_of(latnt_dim=2)
    with pytest.raises(ConfigError, match="latent_dim must be a positive integer, got -1"):
        config_of(latent_dim=-1)
    with pytest.raises(ConfigError, match="unknown model"):
        vaelab.train("mnist-sample", model="nope", epochs=1)
    cfg = config_of(latent_dim=4, epochs=3, lr=0.01, hidden=(64, 32))
    assert (cfg.model.latent_dim, cfg.train.epochs, cfg.model.hidden) == (4, 3, (64, 32))
    cfg = config_of(image_size=32, hidden="512,256", memory_budget_mb="1GB")  # as the flags' text
    assert (cfg.data.image_size, cfg.model.hidden, cfg.data.memory_budget_mb) == ((32, 32), (512, 256), 1024)


def test_a_trained_run_in_a_notebook(run):
    assert isinstance(run, vaelab.Run) and (run.path / "checkpoint").is_dir()
    assert len(run.metrics) == 2 and run.metrics["epoch"].tolist() == [1.0, 2.0]
    x = run.images("test", 5)
    assert x.shape == (5, 1, 28, 28) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert run.encode(x).shape == (5, 3)
    assert run.reconstruct(x).shape == x.shape and 0 <= run.reconstruct(x).min()
    assert run.sample(4).shape == (4, 1, 28, 28)
    assert torch.equal(run.sample(4, seed=1), run.sample(4, seed=1))
    assert vaelab.load(run.path).config == run.config


def test_figures_come_back_without_touching_the_backend(run):
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    fig = run.plot("recon")
    assert isinstance(fig, Figure) and matplotlib.get_backend() == backend
    assert "matplotlib.pyplot" not in sys.modules or backend == matplotlib.get_backend()
    with pytest.raises(ConfigError, match="unknown figure"):
        run.plot("nope")
    with pytest.raises(ConfigError, match="takes no"):
        run.plot("recon", span=2)


def test_evaluate_from_a_run(run):
    r = run.evaluate(k=5, n=20)
    assert r["n"] == 20 and r["k"] == 5 and r["nll"] > 0


def test_an_interrupted_training_returns_its_last_checkpoint(run, monkeypatch, tmp_path):
    import vaelab.training

    real = vaelab.training.train

    def interrupted(cfg, out, **kw):
        real(cfg, out, **kw)  # one epoch lands, then the user interrupts the kernel
        raise KeyboardInterrupt

    monkeypatch.setattr(vaelab.training, "train", interrupted)
    got = vaelab.train("mnist-sample", out=tmp_path / "r", quiet=True, **{**TINY, "epochs": 1})
    assert got.path == tmp_path / "r" and len(got.metrics) == 1


def test_load_refuses_a_folder_without_a_run(tmp_path):
    from vaelab.checkpoint import RunError

    with pytest.raises((RunError, ConfigError, FileNotFoundError)):
        vaelab.load(tmp_path)
