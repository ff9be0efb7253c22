"""The notebook face: vaelab.train / vaelab.load and the one Run class: its model, metrics, images,
figures and verbs."""

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
    assert run.codes(x).shape == (5, 3)
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


def test_flag_names_that_differ_from_the_field_work_as_keywords():
    cfg = config_of(scale="pixel", memory_budget="1GB", lambda_=2.0)
    assert (cfg.model.likelihood_scale, cfg.data.memory_budget_mb, cfg.train.lam) == ("pixel", 1024, 2.0)


def test_a_folder_that_holds_a_run_is_refused_in_python_terms(run):
    from vaelab.checkpoint import RunError

    with pytest.raises(RunError, match=r"\.resume\(\), replace it with overwrite=True"):
        vaelab.train("mnist-sample", out=run.path, quiet=True, **TINY)


def test_resume_continues_a_run_to_more_epochs(run, tmp_path):
    import shutil

    copy = vaelab.load(shutil.copytree(run.path, tmp_path / "copy"))
    more = copy.resume(epochs=3, quiet=True, progress=False)
    assert list(more.metrics["epoch"]) == [1, 2, 3] and more.metrics["epoch"].dtype.kind == "i"
    with pytest.raises(ConfigError, match="already trained 3 epochs"):
        more.resume(epochs=2, quiet=True)


def test_a_conditional_run_samples_a_chosen_class(tmp_path, run):
    cvae = vaelab.train("mnist-sample", model="cvae", out=tmp_path / "c", quiet=True, progress=False,
                        **{**TINY, "epochs": 1})
    seven = cvae.sample(4, label=7)
    assert seven.shape == (4, 1, 28, 28) and torch.equal(seven, cvae.sample(4, label="7"))
    assert not torch.equal(seven, cvae.sample(4, label=1))
    assert cvae.sample(12).shape[0] == 12  # the classes in turn
    with pytest.raises(ConfigError, match="no class 'x'; the classes are 0, 1"):
        cvae.sample(2, label="x")
    with pytest.raises(ConfigError, match="not a conditional model"):
        run.sample(2, label=7)


def test_a_figure_option_that_does_not_exist_names_those_that_do(run):
    with pytest.raises(ConfigError, match="takes no noise; it takes kind, levels, against"):
        run.plot("denoise", noise="gaussian")


def test_one_class_reads_and_acts_on_a_run_folder():
    import importlib
    import pkgutil

    import vaelab.api

    assert vaelab.Run is vaelab.api.Run
    holders = [m.name for m in pkgutil.iter_modules(vaelab.__path__) if m.name != "__main__"
               and isinstance(getattr(importlib.import_module(f"vaelab.{m.name}"), "Run", None), type)]
    assert holders == ["api"]
    for verb in ("evaluate", "score", "ood", "encode", "plot", "sample", "resume"):
        assert callable(getattr(vaelab.Run, verb)), verb


def test_the_folder_reads_through_the_run(run):
    records = run.records()
    assert [r["epoch"] for r in records] == run.metrics["epoch"].tolist() == [1, 2]
    assert [r["epoch"] for r in run.records(upto=1)] == [1] and run.checkpoint_epoch == 2
    result = run.evaluate(k=3, n=10, progress=False, figures=False)
    assert run.evaluation(k=3, n=10) == result and vaelab.Run(run.path / "nothing").evaluation() == {}


def test_every_verb_uses_the_model_the_run_holds(run, tmp_path, monkeypatch):
    import numpy as np

    import vaelab.api
    import vaelab.checkpoint
    import vaelab.evaluate

    by_path = vaelab.score(run.path, k=2, n=10, progress=False)
    loaded = vaelab.load(run.path)
    model = loaded.model

    def reload(*args, **kwargs):
        raise AssertionError("the run's model was read again")

    for module in (vaelab.checkpoint, vaelab.api, vaelab.evaluate):
        monkeypatch.setattr(module, "load_run", reload)
    scored = loaded.score(k=2, n=10, progress=False)
    np.testing.assert_array_equal(scored["log_px"], by_path["log_px"])
    np.testing.assert_array_equal(vaelab.score(loaded, k=2, n=10, progress=False)["log_px"], by_path["log_px"])
    codes = loaded.encode(split="test", n=6, progress=False)
    assert codes["mean"].shape == (6, 3)
    np.testing.assert_allclose(codes["mean"], loaded.codes(loaded.images("test", 6)).numpy(), rtol=1e-6)
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).random((20, 28, 28)).astype(np.float32))
    r = loaded.ood(outside=[str(tmp_path / "noise.npy")], k=2, n=20, train_n=20, progress=False, write=False)
    assert set(next(iter(r["results"].values()))) >= {"elbo", "log_px"}
    assert loaded.evaluate(k=2, n=10, progress=False, write=False, figures=False)["n"] == 10
    assert type(loaded.plot("samples")).__name__ == "Figure"
    assert loaded.sample(2).shape == (2, 1, 28, 28)
    assert loaded.model is model


def test_every_verb_in_function_form_runs_on_the_runs_device(run, monkeypatch):
    """vaelab.score(run) runs where run.score() does: on the device the run was loaded on (here
    a GPU's name, seen where each verb asks for its device), unless another one is asked for."""
    import vaelab.codes
    import vaelab.detection
    import vaelab.evaluate
    import vaelab.scores

    class Asked(Exception):
        pass

    asked = []

    def distributed(device):
        asked.append(str(device))
        raise Asked

    for module in (vaelab.scores, vaelab.codes, vaelab.detection, vaelab.evaluate):
        monkeypatch.setattr(module, "distributed", distributed)
    loaded = vaelab.load(run.path)
    monkeypatch.setattr(loaded, "device", "cuda:7")  # as a run loaded on a GPU holds it
    verbs = [lambda: vaelab.score(loaded), lambda: vaelab.encode(loaded),
             lambda: vaelab.ood(loaded, outside=["mnist-sample"], write=False),
             lambda: vaelab.evaluate.evaluate(loaded, write=False),
             lambda: vaelab.score(loaded, device="cpu"), lambda: vaelab.score(run.path)]
    for verb in verbs:
        with pytest.raises(Asked):
            verb()
    assert asked == ["cuda:7"] * 4 + ["cpu", "cpu"]  # a device asked for wins; a folder has none of its own


def test_a_runs_precision_reaches_its_verbs(run):
    fp32 = vaelab.score(run, k=2, n=10, progress=False)["elbo"]
    half = vaelab.load(run.path, precision="bf16")
    assert half.model.amp_dtype is torch.bfloat16 and "bf16" in repr(half)
    got = half.score(k=2, n=10, progress=False)["elbo"]
    assert not (got == fp32).all() and abs(got - fp32).max() < 1.0
    with pytest.raises(ConfigError, match="precision is one of"):
        vaelab.load(run.path, precision="fp8")


def test_encode_means_one_thing(run):
    x = run.images("test", 4)
    table = run.encode(split="test", n=4, progress=False)
    assert table["mean"].shape == (4, 3) and "std" in table
    with pytest.warns(FutureWarning, match=r"run\.codes\(x\)"):
        old = run.encode(x)
    assert torch.equal(old, run.codes(x))
    with torch.no_grad():
        assert torch.allclose(run.model.encode(x).mean, run.codes(x))  # the model's encode: the distribution
