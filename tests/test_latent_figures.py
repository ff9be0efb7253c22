"""The figures of what each latent holds: traversals sorted by KL, the factor-by-dimension
mutual information, prior samples at a temperature, and a ladder's levels kept or redrawn."""

import json

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.config import Config, ConfigError
from vaelab.data import DataError
from vaelab.explore import (
    Explorer,
    figure_mi_matrix,
    figure_resample,
    figure_samples,
    figure_traversal,
    kl_per_dimension,
    prior_codes,
    prior_samples,
    resample_levels,
)
from vaelab.models import build_model

COMMON = ["--dataset", "mnist-sample", "--epochs", "1", "--batch-size", "250", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("latent-figures")
    assert main(["train", *COMMON, "--hidden", "32", "--latent-dim", "5", "--out", str(base / "vae")]) == 0
    assert main(["train", *COMMON, "--hidden", "32", "--latent-dim", "3", "--model", "ae", "--out",
                 str(base / "ae")]) == 0
    assert main(["train", *COMMON, "--model", "ladder", "--levels", "2x7x7,3", "--hidden", "8", "--res-blocks", "0",
                 "--out", str(base / "ladder")]) == 0
    return base


@pytest.fixture(scope="module")
def xy_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("xyobject")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        assert main(["train", "--dataset", "xyobject", "--subset", "300", "--epochs", "1", "--net", "mlp", "--hidden",
                     "32", "--latent-dim", "4", "--batch-size", "100", "--quiet", "--out", str(base / "run")]) == 0
        yield base / "run"


def _cell(fig, row: int, col: int) -> np.ndarray:
    """The pixels drawn in one cell of an image_rows figure."""
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec.rowspan.start == row and spec.colspan.start == col:
            return np.asarray(ax.images[0].get_array())
    raise AssertionError(f"no cell ({row}, {col})")


def _untrained(**model) -> Explorer:
    cfg = Config().replace(model={"net": "mlp", "hidden": [16], "latent_dim": 3, "likelihood": "bernoulli", **model})
    torch.manual_seed(0)
    x = (torch.rand(200, 1, 28, 28) < 0.3).float()
    return Explorer(build_model(cfg.model, (1, 28, 28)), cfg, x, torch.zeros(200, dtype=torch.long), ())


# ----------------------------------------------------------------------------- traversal


def test_traversal_rows_are_the_dimensions_by_kl_and_decode_one_dimension_changed(runs):
    ex = Explorer.from_run(runs / "vae", n=300)
    fig, numbers = figure_traversal(ex, rows=3, images=2, steps=5, span=2.0)
    q = ex.model.encode(ex.x)
    kl = q.kl_standard_normal_per_dim().mean(0)
    torch.testing.assert_close(torch.tensor(numbers["kl_per_dim"]), kl, rtol=1e-4, atol=1e-5)
    assert numbers["dims"] == kl.argsort(descending=True)[:3].tolist()
    assert numbers["kl"] == sorted(numbers["kl"], reverse=True)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_subplotspec().colspan.start == 0]
    assert [lab.split("\n")[0] for lab in labels] == ["input"] + [f"z{d}" for d in numbers["dims"]]
    # row 2 (the second dimension), second image (columns 6..10 after the gap), value +2: only that dimension moved
    d, i = numbers["dims"][1], numbers["images"][1]
    z = q.mean[i].clone()
    z[d] = 2.0
    expected = ex.decode_mean(z[None])[0, 0].numpy()
    np.testing.assert_allclose(_cell(fig, 2, 5 + 1 + 4), expected, atol=1e-5)
    assert numbers["values"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert len(figure_traversal(ex, rows=50, images=1, steps=3)[1]["dims"]) == 5  # capped at D


@pytest.mark.parametrize("model, message", [
    ({"model": "ae"}, "an AE has no KL"),
    ({"flows": 2}, "this run has flows"),
    ({"prior": "mog"}, "a mixture prior"),
    ({"model": "hvae", "lower_latents": (4,)}, "a layered prior"),
    ({"model": "ladder", "levels": "2x7x7,3", "hidden": [8], "res_blocks": 0, "net": "auto"}, "--what resample"),
])
def test_traversal_refuses_a_kl_that_does_not_split_per_dimension(model, message):
    ex = _untrained(**model)
    with pytest.raises(ConfigError, match=message) as e:
        figure_traversal(ex)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        kl_per_dimension(ex.model, ex.x)


def test_traversal_on_the_command_line(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "vae"), "--what", "traversal", "--rows", "2", "--images", "1", "--steps", "4",
                 "--out", str(tmp_path)]) == 0
    numbers = json.loads((tmp_path / "traversal.json").read_text())
    assert len(numbers["dims"]) == 2 and len(numbers["values"]) == 4 and len(numbers["images"]) == 1
    capsys.readouterr()
    assert main(["plot", str(runs / "ae"), "--what", "traversal", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "an AE has no KL" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- mutual information matrix


def test_mi_matrix_is_migs_mutual_information_per_factor(xy_run, tmp_path):
    from vaelab.disentangle import mig

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(xy_run.parent / "cache"))
        ex = Explorer.from_run(xy_run)
        assert main(["plot", str(xy_run), "--what", "mi-matrix", "--out", str(tmp_path)]) == 0
    fig, numbers = figure_mi_matrix(ex)
    codes = ex.codes(ex.x).double().numpy()
    reference = mig(codes, ex.factors.numpy())
    assert numbers["factors"] == ["x", "y", "scale", "color"] and numbers["points"] == len(ex.x) == 300
    np.testing.assert_allclose(numbers["mutual_information"], reference["mutual_information"])
    assert numbers["mig"] == pytest.approx(reference["mig"], abs=1e-12)
    drawn = np.asarray(fig.axes[0].images[0].get_array())  # factors x dimensions, each divided by its entropy
    np.testing.assert_allclose(drawn, np.asarray(numbers["normalized"]).T)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == numbers["factors"]
    assert json.loads((tmp_path / "mi-matrix.json").read_text())["mig"] == pytest.approx(numbers["mig"])


def test_mi_matrix_finds_the_dimension_that_is_a_factor():
    from vaelab.disentangle import discretize

    ex = _untrained()
    codes = ex.codes(ex.x).double().numpy()
    # factor 0 is dimension 2's bin (of 5), factor 1 constant (left out), factor 2 unrelated noise
    binned = torch.from_numpy(discretize(codes[:, 2:3], 5)[:, 0])
    noise = torch.randint(0, 3, (len(codes),), generator=torch.Generator().manual_seed(1))
    ex.factors = torch.stack([binned, torch.zeros_like(binned), noise], 1)
    ex.factor_names = ("bin", "constant", "noise")
    _, numbers = figure_mi_matrix(ex, bins=5)
    norm = np.asarray(numbers["normalized"])
    assert numbers["factors"] == ["bin", "noise"]
    assert norm[2, 0] == pytest.approx(1.0) and norm[:, 0].argmax() == 2


def test_mi_matrix_without_factors_is_a_one_line_error(runs, capsys):
    with pytest.raises(DataError, match="needs ground-truth factors"):
        figure_mi_matrix(Explorer.from_run(runs / "vae", n=50))
    assert main(["plot", str(runs / "vae"), "--what", "mi-matrix"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mnist-sample has none" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- temperature


def test_temperature_zero_is_the_prior_mean_and_the_noise_is_shared(runs):
    vae = Explorer.from_run(runs / "vae", n=10).model
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(prior_samples(vae, 4, 0.0, g()).mean, vae.decode(torch.zeros(4, 5)).mean)
    z = vae.prior().sample(4, generator=g())
    torch.testing.assert_close(prior_samples(vae, 4, 0.5, g()).mean, vae.decode(0.5 * z).mean)
    torch.testing.assert_close(prior_samples(vae, 4, 1.0, g()).mean, vae.sample(4, generator=g()).mean)

    ladder = Explorer.from_run(runs / "ladder", n=10)
    cold = prior_samples(ladder.model, 4, 0.0, g()).mean
    at_means = ladder.model.top_down(1)[0].mean  # every level at its conditional prior mean
    torch.testing.assert_close(cold, at_means.expand_as(cold))
    fig, numbers = figure_samples(ladder, temperature=(0.0, 0.5, 1.0), per_temperature=3)
    assert numbers == {"n": 3, "temperature": [0.0, 0.5, 1.0]}
    rows = [[_cell(fig, r, c) for c in range(3)] for r in range(3)]
    assert all(np.array_equal(rows[0][0], cell) for cell in rows[0])  # T = 0: one image
    assert not np.array_equal(rows[2][0], rows[2][1])  # T = 1: draws differ
    np.testing.assert_allclose(rows[2][0], ladder.model.sample(3, generator=ladder.gen()).mean[0, 0].detach().clamp(0, 1),
                               atol=1e-6)


def test_temperature_on_the_command_line_and_where_it_does_not_apply(runs, tmp_path, capsys):
    assert main(["plot", str(runs / "ladder"), "--what", "samples", "--temperature", "0.6,0.8,1", "--out",
                 str(tmp_path)]) == 0
    assert json.loads((tmp_path / "samples.json").read_text())["temperature"] == [0.6, 0.8, 1.0]
    capsys.readouterr()
    for run, flag, message in [("ae", "0.5", "an AE has no prior"), ("vae", "-1", "numbers >= 0")]:
        assert main(["plot", str(runs / run), "--what", "samples", "--temperature", flag]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="a mixture"):
        prior_samples(_untrained(prior="mog").model, 2, 0.5)


def test_sample_takes_a_temperature_on_the_command_line_and_in_python(runs, tmp_path, capsys):
    from PIL import Image

    from vaelab import plots
    from vaelab.api import Run

    ladder, vae = Run(runs / "ladder"), Run(runs / "vae")
    cold = ladder.sample(4, temperature=0)
    assert all(torch.equal(cold[0], im) for im in cold)  # every level at its conditional prior mean
    assert not torch.equal(ladder.sample(4)[0], ladder.sample(4)[1])
    expected = prior_samples(vae.model, 4, 0.5, torch.Generator().manual_seed(3)).mean.clamp(0, 1)
    torch.testing.assert_close(vae.sample(4, seed=3, temperature=0.5), expected)
    for run in ("ladder", "vae"):
        out = tmp_path / f"{run}.png"
        assert main(["sample", str(runs / run), "--n", "4", "--temperature", "0.5", "--seed", "2", "--out",
                     str(out)]) == 0
        model = Run(runs / run).model
        grid = plots.image_grid(prior_samples(model, 4, 0.5, torch.Generator().manual_seed(2)).mean)
        assert np.array_equal(np.asarray(Image.open(out))[::2, ::2], grid)
    capsys.readouterr()
    assert main(["sample", str(runs / "ae"), "--n", "4", "--out", str(tmp_path / "ae.png")]) == 0  # T = 1: as before
    for run, flag, message in [("ae", "0.5", "an AE has no prior to take a temperature: drop --temperature"),
                               ("vae", "-1", "expected a number >= 0"), ("vae", "inf", "numbers >= 0")]:
        try:
            rc = main(["sample", str(runs / run), "--temperature", flag, "--out", str(tmp_path / "x.png")])
        except SystemExit as e:  # refused by the parser
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="an AE has no prior"):
        Run(runs / "ae").sample(2, temperature=0.5)
    with pytest.raises(ConfigError, match="a mixture"):
        prior_codes(_untrained(prior="mog").model, 2, 0.5)


# ----------------------------------------------------------------------------- keep levels, redraw the rest


def test_keeping_every_level_is_the_reconstruction_and_none_a_prior_sample(runs):
    ex = Explorer.from_run(runs / "ladder", n=20)
    model, x = ex.model, ex.x[:4]
    recon = model.decode(model.encode(x).mean).mean
    torch.testing.assert_close(resample_levels(model, x, (1, 2), draws=2)[1], recon.clamp(0, 1))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = resample_levels(model, x, (), draws=3, generator=g())
    b = resample_levels(model, x.flip(0), (), draws=3, generator=g())
    torch.testing.assert_close(a, b)  # nothing kept: the images play no part, only the noise
    kept = resample_levels(model, x, (1,), draws=3, generator=g())
    assert not torch.allclose(kept[:, 0], kept[:, 1])  # each image keeps its own level 1
    with pytest.raises(ConfigError, match="level 3 is out of range"):
        resample_levels(model, x, (3,))


def test_resample_figure_columns_and_numbers(runs, tmp_path, capsys):
    ex = Explorer.from_run(runs / "ladder", n=20)
    fig, numbers = figure_resample(ex, images=2, draws=2)
    assert numbers["keep"] == [2, 1, 0] and numbers["levels"] == 2
    assert numbers["pixel_std"][0] == 0.0 and numbers["pixel_std"][2] > 0
    # input, gap, reconstruction, gap, 2 draws at k = 1, gap, 2 draws at k = 0
    assert max(ax.get_subplotspec().colspan.start for ax in fig.axes) + 1 == 1 + 2 + 3 + 3
    i = numbers["images"][1]
    recon = ex.model.decode(ex.model.encode(ex.x[i : i + 1]).mean).mean[0, 0].detach().clamp(0, 1)
    np.testing.assert_allclose(_cell(fig, 1, 2), recon.numpy(), atol=1e-5)
    assert main(["plot", str(runs / "ladder"), "--what", "resample", "--images", "1", "--temperature", "0.5",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "resample.json").read_text())["temperature"] == 0.5
    capsys.readouterr()
    assert main(["plot", str(runs / "vae"), "--what", "resample"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--model ladder" in err and len(err.splitlines()) == 1


def test_the_figures_through_run_plot(runs):
    from vaelab.api import Run

    vae, ladder = Run(runs / "vae"), Run(runs / "ladder")
    fig = vae.plot("traversal", rows=2, images=1, steps=3)
    assert [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.get_subplotspec().colspan.start == 0][0] == "input"
    assert len(fig.axes) == 3 * 3  # the input row and two dimensions, three values each
    assert len(ladder.plot("samples", temperature=(0.5, 1.0)).axes) == 2 * 10
    assert type(ladder.plot("resample", images=1, temperature=0.8)).__name__ == "Figure"
    with pytest.raises(ConfigError, match="takes no rows"):
        ladder.plot("resample", rows=2)
