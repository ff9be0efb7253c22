"""Per-image scores, out-of-distribution metrics and exported codes (vaelab.scores,
vaelab.detection and vaelab.codes, and the score / ood / encode commands)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.checkpoint import load_run
from vaelab.cli import main
from vaelab.codes import encode, write_codes
from vaelab.config import ConfigError, ModelConfig
from vaelab.detection import detection, typicality
from vaelab.models import MODELS, build_model
from vaelab.scores import (
    SCORES,
    ScoreContext,
    Table,
    anomaly,
    model_traits,
    png_bits,
    score,
    score_batch,
    write_table,
)

TINY = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--batch-size", "100", "--quiet",
        "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in {"vae": [], "hvae": ["--model", "hvae", "--lower-latents", "8,6", "--latent-hidden", "16"],
                        "ae": ["--model", "ae"],
                        "ladder": ["--model", "ladder", "--levels", "2x7x7,4,2", "--hidden", "8", "--res-blocks", "0"]}.items():
        out[name] = root / name
        assert main(["train", *TINY, *extra, "--out", str(out[name])]) == 0
    return out


def _have(name: str) -> bool:
    from vaelab.data import DataError, locate

    try:
        locate(name, None, allow_download=False)
    except DataError:
        return False
    return True


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g).bernoulli(generator=g)


def test_the_scores_of_one_image_agree_with_each_other():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="hvae", hidden=(32,), lower_latents=(8, 6), latent_dim=4,
                                    latent_hidden=(16,)), (1, 28, 28)).eval()
    x, idx = _images(), torch.arange(6)
    s = score_batch(ScoreContext(model, x, idx, k=50, skip=(1, 2)))
    assert torch.allclose(s["recon"] - s["kl"], s["elbo"], atol=1e-4)  # the bound is recon - KL
    assert torch.allclose(s["kl_1"] + s["kl_2"] + s["kl_3"], s["kl"], atol=1e-4)  # per layer sums to the total
    assert (s["log_px"] >= s["elbo"] - 1e-4).all()  # log-mean-exp of the weights >= their mean
    assert torch.allclose(s["bits_per_dim"], -s["log_px"] / (784 * math.log(2)))
    one = score_batch(ScoreContext(model, x, idx, k=1))
    assert torch.allclose(one["log_px"], one["elbo"], atol=1e-5)  # one sample: the estimate is the bound
    for key in ("llr_1", "llr_2"):
        assert torch.isfinite(s[key]).all()


def test_scores_are_tied_to_the_image_not_to_the_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="hvae", hidden=(32,), lower_latents=(8,), latent_dim=4,
                                    latent_hidden=(16,)), (1, 28, 28)).eval()
    x, idx = _images(8), torch.arange(100, 108)
    whole = score_batch(ScoreContext(model, x, idx, k=30, skip=(1,)))
    parts = [score_batch(ScoreContext(model, x[i : i + 3], idx[i : i + 3], k=30, skip=(1,))) for i in range(0, 8, 3)]
    for key, v in whole.items():
        assert torch.allclose(torch.cat([p[key] for p in parts]), v, atol=1e-4), key
    other = score_batch(ScoreContext(model, x, idx, k=30, seed=1, skip=(1,)))
    assert not torch.allclose(other["log_px"], whole["log_px"])  # the seed is the noise


def test_a_vae_log_px_matches_the_evaluate_estimate_in_expectation():
    """score's log p(x) and evaluate's are the same estimator: with many samples they agree."""
    from vaelab.evaluate import log_likelihood

    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(32,), latent_dim=3), (1, 28, 28)).eval()
    x = _images(4)
    ours = score_batch(ScoreContext(model, x, torch.arange(4), k=2000), ["log_px"])["log_px"]
    ref, _ = log_likelihood(model, x, k=2000)
    assert torch.allclose(ours, ref, atol=0.5)


def test_png_bits_grow_with_the_complexity_of_the_image():
    flat = np.zeros((1, 1, 28, 28), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (1, 1, 28, 28), dtype=np.uint8)
    colour = np.random.default_rng(0).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    assert png_bits(flat)[0] < png_bits(noise)[0]
    assert png_bits(colour)[0] > 0


def test_detection_metrics_on_known_cases():
    inside, outside = np.arange(10.0), np.arange(10.0) + 100
    assert detection(inside, outside) == pytest.approx({"auroc": 1.0, "auprc": 1.0, "fpr80": 0.0, "fpr95": 0.0,
                                                        "non_finite": 0})
    odd = detection(inside, np.r_[outside[:-2], np.inf, np.nan])  # infinitely unusual images rank on top
    assert odd["auroc"] == 1.0 and odd["non_finite"] == 2
    flipped = detection(outside, inside)
    assert flipped["auroc"] == 0.0 and flipped["fpr95"] == 1.0
    rng = np.random.default_rng(0)
    same = detection(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(same["auroc"] - 0.5) < 0.03 and abs(same["fpr80"] - 0.8) < 0.05


def test_typicality_flags_about_one_minus_alpha_of_in_distribution_batches():
    rng = np.random.default_rng(0)
    train, inside = rng.normal(100, 5, 5000), rng.normal(100, 5, 5000)
    outside = rng.normal(90, 5, 5000)  # more likely than the training data, as MNIST under a Fashion model
    rows = {r["batch"]: r for r in typicality(train, inside, outside, sizes=(1, 10, 25))}
    for r in rows.values():
        assert r["flagged_in"] < 0.04
    assert rows[25]["flagged_out"] > 0.95 and rows[25]["auroc"] > 0.95


def test_every_score_knows_which_way_is_unusual():
    assert (anomaly("log_px", np.array([1.0])) == -1).all() and (anomaly("llr_2", np.array([1.0])) == 1).all()
    declared = {t for m in MODELS.values() for t in model_traits(m)}
    assert {t for s in SCORES.values() for t in s.needs} <= declared  # every need is a trait some model has


def test_tables_round_trip_through_csv_npz_and_parquet(tmp_path):
    t = Table({"split": np.array(["test", "test"]), "index": np.arange(2), "file": np.array(["a b,.png", "ü.png"]),
               "log_px": np.array([-1.5, -2.25])})
    write_table(t, tmp_path / "t.npz")
    z = np.load(tmp_path / "t.npz", allow_pickle=False)
    assert list(z["file"]) == ["a b,.png", "ü.png"] and z["log_px"][1] == -2.25
    write_table(t, tmp_path / "t.csv")
    import csv

    rows = list(csv.DictReader(open(tmp_path / "t.csv", encoding="utf-8")))
    assert rows[0]["file"] == "a b,.png" and float(rows[1]["log_px"]) == -2.25
    pytest.importorskip("pyarrow")
    write_table(t, tmp_path / "t.parquet")
    import pandas as pd

    assert pd.read_parquet(tmp_path / "t.parquet")["log_px"].tolist() == [-1.5, -2.25]
    with pytest.raises(ConfigError, match="csv, .npz or .parquet"):
        write_table(t, tmp_path / "t.txt")
    assert t.sorted("log_px")["log_px"][0] == -2.25  # the least likely image first


def test_score_a_run_on_its_test_split_and_on_another_dataset(runs, tmp_path):
    t = score(runs["hvae"], n=40, k=5, progress=False)
    assert len(t) == 40 and set(t["split"]) == {"test"}
    assert {"elbo", "log_px", "kl_1", "kl_3", "llr_1", "llr_2", "mse", "complexity_corrected"} <= set(t.columns)
    again = score(runs["hvae"], n=40, k=5, progress=False)
    for c in t.scores:
        assert np.array_equal(t[c], again[c]), c
    a = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=a)
    other = score(runs["vae"], str(tmp_path / "noise.npz"), k=3, progress=False)
    assert len(other) == 30 and "llr_1" not in other  # every image of an array file; a flat VAE has no LLR
    named = score(runs["vae"], "fashion-mnist", k=1, n=20, progress=False) if _have("fashion-mnist") else None
    assert named is None or set(named["split"]) == {"test"}  # a named dataset: its official test split
    ae = score(runs["ae"], n=10, progress=False)
    assert set(ae.scores) == {"recon", "mse"}


def test_score_refuses_in_one_line(runs, tmp_path, capsys):
    def refused(*args):
        try:
            code = main(["score", *map(str, args), "--quiet"])
        except SystemExit as e:  # the parser's own refusals
            code = e.code
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "has no llr score" in refused(runs["vae"], "--scores", "llr")
    assert "unknown score" in refused(runs["vae"], "--scores", "nope")
    assert "unknown score logpx; choose from " in refused(runs["vae"], "--scores", "elbo,logpx")
    assert refused(runs["vae"], "--scores", "elbo,logpx").strip().endswith("did you mean log_px? (see vaelab score --help)")
    assert "did you mean log_px?" in refused(runs["vae"], "--n", "3", "--rank-by", "logpx")
    with pytest.raises(ConfigError, match="unknown score 'bits-per-dim'.*; did you mean bits_per_dim\\?$"):
        score(runs["vae"], scores=["bits-per-dim"], n=3, progress=False)
    assert "out of range" in refused(runs["hvae"], "--skip-levels", "3")
    np.savez(tmp_path / "big.npz", images=np.zeros((5, 32, 32, 3), np.uint8))
    assert "the model takes 1x28x28" in refused(runs["vae"], tmp_path / "big.npz")
    (tmp_path / "empty").mkdir()
    assert "no image files" in refused(runs["vae"], tmp_path / "empty")
    assert "does not exist" in refused(runs["vae"], tmp_path / "nowhere")
    assert "csv, .npz or .parquet" in refused(runs["vae"], "--out", tmp_path / "s.txt", "--n", "3")
    # the fixes named are ones that exist: score takes no --dataset and no --skip-bad-images
    (tmp_path / "notes.txt").write_text("not images")
    err = refused(runs["vae"], tmp_path / "notes.txt")
    assert "not an image folder or an .npy/.npz array file" in err and "--dataset" not in err
    (tmp_path / "bad").mkdir()
    Image.new("L", (28, 28), 7).save(tmp_path / "bad" / "a.png")
    (tmp_path / "bad" / "b.png").write_bytes(b"not a png")
    assert "remove it, or train with --skip-bad-images" in refused(runs["vae"], tmp_path / "bad")


def test_score_command_writes_the_table_and_the_top_grid_of_a_folder(runs, tmp_path, capsys):
    folder = tmp_path / "folder"
    for i in range(12):
        (folder / ("b" if i % 2 else "a")).mkdir(parents=True, exist_ok=True)
        arr = (np.random.default_rng(i).random((28, 28)) > 0.5 + i / 30).astype(np.uint8) * 255
        Image.fromarray(arr).save(folder / ("b" if i % 2 else "a") / f"im{i:02d}.png")
    out = tmp_path / "s.csv"
    assert main(["score", str(runs["vae"]), str(folder), "--out", str(out), "--k", "3", "--top", "3", "--quiet"]) == 0
    import csv

    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and [r["file"] for r in rows] == sorted(r["file"] for r in rows)
    assert {r["file"] for r in rows} >= {"a/im00.png", "b/im01.png"}
    assert rows[0]["label"] == "a" and rows[-1]["label"] == "b"
    assert (tmp_path / "s-top.png").stat().st_size > 1000


def test_encode_writes_codes_numpy_reads_alone(runs, tmp_path):
    assert main(["encode", str(runs["hvae"]), "--out", str(tmp_path / "c.npz"), "--n", "25", "--samples", "2",
                 "--split", "test", "--quiet"]) == 0
    z = np.load(tmp_path / "c.npz", allow_pickle=False)
    assert z["mean"].shape == (25, 18) and z["std"].shape == (25, 18) and z["samples"].shape == (25, 2, 18)
    assert list(z["levels"]) == [8, 6, 4] and (z["std"] > 0).all() and len(z["label"]) == 25
    cfg, model = load_run(runs["hvae"])
    t = encode(runs["hvae"], split="test", n=25, progress=False)
    assert np.allclose(t["mean"], z["mean"]) and np.array_equal(t["index"], np.arange(25))
    ae = encode(runs["ae"], split="test", n=5, progress=False)
    assert "std" not in ae and ae["mean"].shape == (5, 4)
    pytest.importorskip("pyarrow")
    write_codes(t, tmp_path / "c.parquet")
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "c.parquet")
    assert frame.shape == (25, 3 + 2 * 18) and "mean_17" in frame


def test_ood_writes_its_report_and_separates_noise(runs, tmp_path, capsys):
    a = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=a)
    assert main(["ood", str(runs["hvae"]), "--out-of", str(tmp_path / "noise.npz"), "--split", "all", "--k", "3",
                 "--n", "60", "--quiet"]) == 0
    stem = str(runs["hvae"] / "ood-mnist-sample-vs-noise.npz-all-k3-n60")  # named by the data and the settings
    r = json.loads(Path(stem + ".json").read_text())
    res = r["results"]["noise.npz"]
    assert set(res) >= {"log_px", "llr_1", "llr_2", "complexity_corrected"} and "png_bits" not in res
    assert res["log_px"]["auroc"] > 0.9  # uniform noise is far less likely than digits
    assert {row["batch"] for row in r["typicality"]["noise.npz"]} == {1, 2, 5, 10, 25}
    md = Path(stem + ".md").read_text()
    assert "| log_px |" in md and "No out-of-distribution data were used" in md
    assert Path(stem + ".png").stat().st_size > 10_000
    assert "AUROC" in capsys.readouterr().out


def test_the_ood_histograms_tick_labels_never_run_together():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vaelab.plots import score_histograms

    rng = np.random.default_rng(0)
    spread = {"elbo": (-25050.5, 4000), "mse": (0.00123, 0.0003), "complexity_corrected": (-400000, 100000),
              "llr_1": (1234567.6, 300000), "bits_per_dim": (1.234, 0.05)}
    columns = {name: {"in": rng.normal(m, s, 300), "out": rng.normal(1.1 * m, 1.5 * s, 300)}
               for name, (m, s) in spread.items()}
    fig = score_histograms(columns, "scores")
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert len(boxes) >= 2, ax.get_title()
        boxes.sort(key=lambda b: b.x0)
        gaps = [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])]
        assert min(gaps) > 2, f"{ax.get_title()}: tick labels {[t.get_text() for t in ax.get_xticklabels()]} touch"
        title = ax.title.get_window_extent(renderer)
        assert not any(t.get_window_extent(renderer).overlaps(title) for t in ax.get_yticklabels() if t.get_text())


def test_a_new_score_is_one_registry_entry(runs, monkeypatch, tmp_path):
    """score, ood and the explorer page read the registry: an entry is all a new score needs."""
    from vaelab.detection import ood
    from vaelab.scores import Score, label
    from vaelab.serve import Session

    monkeypatch.setitem(SCORES, "neg_kl", Score(lambda b: -b.importance["kl"], "minus the KL, nats", "-KL", True,
                                                needs=("density",)))
    t = score(runs["vae"], scores=["neg_kl", "kl"], n=10, k=3, progress=False)
    assert t.scores == ["neg_kl", "kl"] and np.array_equal(t["neg_kl"], -t["kl"])
    assert label("neg_kl") == "-KL" and (anomaly("neg_kl", np.array([2.0])) == -2).all()
    with pytest.raises(ConfigError, match="the ae model has no neg_kl score"):
        score(runs["ae"], scores=["neg_kl"], n=3, progress=False)
    assert "neg_kl" in score(runs["vae"], n=3, k=2, progress=False).scores  # every score the model has
    np.savez(tmp_path / "noise.npz", images=np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8))
    r = ood(runs["vae"], outside=[str(tmp_path / "noise.npz")], scores=["neg_kl"], k=2, n=20, train_n=20,
            progress=False, write=False)
    assert set(next(iter(r["results"].values()))) == {"neg_kl"}
    session = Session.from_run(runs["vae"], n=20)
    ranking = session.ranking({"score": "neg_kl", "n": "3"})
    assert ranking["label"] == "-KL" and ranking["typical_high"] and "neg_kl" in session.info()["score_labels"]


def test_the_scores_of_a_batch_share_one_set_of_importance_samples():
    """elbo, log p(x), bits/dim, recon and kl come from the same k samples, decoded once."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=(32,), latent_dim=3), (1, 28, 28)).eval()
    calls = []
    decode = model.decode
    model.decode = lambda z, c=None: calls.append(z.shape) or decode(z, c)
    batch = ScoreContext(model, _images(4), torch.arange(4), k=10)
    s = score_batch(batch, ["elbo", "log_px", "bits_per_dim", "recon", "kl"])
    assert sum(shape[0] if len(shape) == 3 else 1 for shape in calls) == 10  # k samples per image, once
    assert len(s) == 5 and torch.equal(s["log_px"], batch.importance["log_px"])
    score_batch(batch, ["mse"])
    assert len(calls) == 2 and calls[-1] == (4, 3)  # the posterior mean: one more decode


def test_the_registry_says_how_to_read_each_column():
    from vaelab.scores import default_rank, direction, label, ranked

    assert label("log_px") == "log p(x)" and label("kl_2") == "KL of layer 2" and label("llr_1") == "LLR>1"
    assert default_rank(["kl", "mse", "llr_2", "llr_3"]) == "llr_2"  # LLR at the lowest skip level chosen
    assert default_rank(["kl", "mse", "elbo"]) == "elbo" and default_rank(["kl", "recon"]) == "kl"
    assert ranked(["log_px", "complexity_corrected", "png_bits"]) == ["log_px", "complexity_corrected"]
    assert not direction("png_bits").typical_high


def test_the_scores_page_lists_the_registry(monkeypatch):
    """docs/scores.md's table is written from SCORES when the site is built: a new entry is on it."""
    import importlib.util
    from pathlib import Path

    from vaelab.scores import Score

    docs = Path(__file__).resolve().parents[1] / "docs"
    spec = importlib.util.spec_from_file_location("docs_hooks", docs / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    monkeypatch.setitem(SCORES, "neg_kl", Score(lambda b: -b.importance["kl"], "minus the KL, nats", "-KL", True))
    page = hooks.on_page_markdown((docs / "scores.md").read_text(), None, None, None)
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows[: len(SCORES)]] == list(SCORES)
    assert "| `llr` | `llr_1`, `llr_2` |" in page and "| `neg_kl` | `neg_kl` | minus the KL, nats | low |" in page


def test_a_ladder_run_is_scored_per_level_and_at_every_skip_level(runs, tmp_path, capsys, monkeypatch):
    from vaelab import detection as detection_module
    from vaelab import scores as scores_module
    from vaelab.detection import ood
    from vaelab.scores import default_rank

    t = score(runs["ladder"], n=20, k=3, progress=False)
    assert {"kl", "kl_1", "kl_2", "kl_3", "llr_1", "llr_2", "log_px", "mse"} <= set(t.columns) and "kl_4" not in t
    assert np.allclose(t["kl_1"] + t["kl_2"] + t["kl_3"], t["kl"], atol=1e-3)
    assert np.isfinite(t["llr_1"]).all() and not np.allclose(t["llr_1"], t["llr_2"])
    assert default_rank(t.scores) == "llr_1"
    two = score(runs["ladder"], n=20, k=3, scores=["llr"], skip_levels=(2,), progress=False)
    assert two.scores == ["llr_2"] and np.allclose(two["llr_2"], t["llr_2"])  # tied to the image and the seed
    np.savez(tmp_path / "noise.npz", images=np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8))
    r = ood(runs["ladder"], outside=[str(tmp_path / "noise.npz")], k=2, n=30, train_n=30, progress=False, write=False)
    res = r["results"]["noise.npz"]
    assert {"llr_1", "llr_2", "kl_1", "kl_2", "kl_3", "log_px"} <= set(res) and r["best"]["noise.npz"] in res

    def never(*args, **kwargs):
        raise AssertionError("data read before the refusal")

    monkeypatch.setattr(scores_module, "scoring_data", never)
    monkeypatch.setattr(detection_module, "scoring_data", never)
    for argv in (["score", runs["ladder"], "--skip-levels", "1,3"], ["score", runs["ladder"], "--scores", "kl",
                                                                      "--skip-levels", "5"],
                 ["ood", runs["ladder"], "--out-of", tmp_path / "noise.npz", "--skip-levels", "3"]):
        assert main([*map(str, argv), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is out of range: this model has 3 latent levels, so give 1 to 2" in err, err


def test_encode_writes_every_level_of_a_ladder_with_its_shape(runs, tmp_path, capsys):
    from vaelab.codes import split_levels

    assert main(["encode", str(runs["ladder"]), "--out", str(tmp_path / "c.npz"), "--n", "6", "--samples", "2",
                 "--split", "test"]) == 0
    assert "104 dimensions in levels 2x7x7, 4, 2 (z_1 first)" in capsys.readouterr().out
    z = np.load(tmp_path / "c.npz", allow_pickle=False)
    assert z["mean"].shape == (6, 104) and z["samples"].shape == (6, 2, 104)
    assert list(z["levels"]) == [98, 4, 2] and list(z["level_shapes"]) == ["2x7x7", "4", "2"]
    t = encode(runs["ladder"], split="test", n=6, samples=2, progress=False)
    assert t.info["level_shapes"] == [[2, 7, 7], [4], [2]] and np.allclose(t["mean"], z["mean"])
    assert [v.shape for v in split_levels(t)] == [(6, 2, 7, 7), (6, 4), (6, 2)]
    assert [v.shape for v in split_levels(t, "samples")] == [(6, 2, 2, 7, 7), (6, 2, 4), (6, 2, 2)]
    assert np.array_equal(split_levels(t, "std")[1], t["std"][:, 98:102])
    assert np.load(write_codes(encode(runs["hvae"], split="test", n=3, progress=False), tmp_path / "h.npz"))[
        "level_shapes"].tolist() == ["8", "6", "4"]
    pytest.importorskip("pyarrow")
    import pandas as pd

    write_codes(t, tmp_path / "c.parquet")
    frame = pd.read_parquet(tmp_path / "c.parquet")
    assert frame.attrs["level_shapes"] == [[2, 7, 7], [4], [2]] and frame.attrs["levels"] == [98, 4, 2]
