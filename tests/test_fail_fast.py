"""Fail fast and keep results: every command refuses a missing library, a bad option or a bad
input before any model work (the scoring and evaluating functions are replaced by ones that
fail the test if called), and results made with other settings or other data never replace
each other."""

import json
import sys

import numpy as np
import pytest

from vaelab import codes as codes_module
from vaelab import evaluate as evaluate_module
from vaelab import scores as scores_module
from vaelab.api import Run
from vaelab.cli import main

TINY = ["--dataset", "mnist-sample", "--hidden", "32", "--latent-dim", "4", "--batch-size", "250", "--epochs", "1",
        "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ff") / "vae"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def no_model_work(monkeypatch):
    """Scoring, encoding, evaluating, probing and training replaced by a failure."""
    def never(*args, **kwargs):
        raise AssertionError("model work started before the refusal")

    monkeypatch.setattr(scores_module, "_score_split", never)
    monkeypatch.setattr(codes_module, "_codes", never)
    monkeypatch.setattr(evaluate_module, "_likelihood", never)
    monkeypatch.setattr(evaluate_module, "_reconstruction_only", never)
    monkeypatch.setattr(evaluate_module, "posterior_means", never)
    from vaelab import compare

    monkeypatch.setattr(compare, "run_one", never)


def refused(capsys, argv, *needles):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # the parser's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    for n in needles:
        assert n in err, err
    return err


def missing(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # import fails, find_spec finds nothing


def test_score_refuses_its_options_and_output_before_scoring(run, tmp_path, capsys, monkeypatch, no_model_work):
    refused(capsys, ["score", run, "--rank-by", "log_pxx", "--quiet"], "--rank-by log_pxx", "log_px")
    refused(capsys, ["score", run, "--rank-by", "llr_1", "--quiet"], "not a score column")  # a flat VAE has none
    refused(capsys, ["score", run, "--out", tmp_path / "s.txt", "--quiet"], ".csv, .npz or .parquet")
    (tmp_path / "afile").write_text("")
    refused(capsys, ["score", run, "--out", tmp_path / "afile" / "s.csv", "--quiet"], "is a file, not a folder")
    missing(monkeypatch, "pyarrow")
    refused(capsys, ["score", run, "--out", tmp_path / "s.parquet", "--quiet"], "pyarrow", "vaelab[scores]")
    refused(capsys, ["score", run, "--scores", "kl", "--skip-levels", "1", "--split", "all", "--top", "3",
                     "--rank-by", "elbo", "--quiet"], "--rank-by elbo")  # only the chosen scores are columns


def test_encode_refuses_its_output_before_encoding(run, tmp_path, capsys, monkeypatch, no_model_work):
    refused(capsys, ["encode", run, "--out", tmp_path / "codes.csv", "--quiet"], ".npz or .parquet")
    missing(monkeypatch, "pyarrow")
    refused(capsys, ["encode", run, "--out", tmp_path / "codes.parquet", "--quiet"], "pyarrow")


def test_ood_checks_scikit_learn_and_every_data_set_before_scoring(run, tmp_path, capsys, monkeypatch,
                                                                  no_model_work):
    np.savez(tmp_path / "noise.npz", images=np.zeros((20, 28, 28), np.uint8))
    np.savez(tmp_path / "colour.npz", images=np.zeros((20, 32, 32, 3), np.uint8))
    # the second set is missing, or of another shape: refused before the first is scored
    refused(capsys, ["ood", run, "--out-of", tmp_path / "noise.npz", tmp_path / "nowhere", "--quiet"],
            "does not exist")
    refused(capsys, ["ood", run, "--out-of", tmp_path / "noise.npz", tmp_path / "colour.npz", "--quiet"],
            "3x32x32", "--convert")
    refused(capsys, ["ood", run, "--out-of", "no-such-dataset", "--quiet"], "no-such-dataset")
    (tmp_path / "afile").write_text("")
    refused(capsys, ["ood", run, "--out-of", tmp_path / "noise.npz", "--out", tmp_path / "afile" / "r", "--quiet"],
            "is a file, not a folder")
    missing(monkeypatch, "sklearn")
    refused(capsys, ["ood", run, "--out-of", tmp_path / "noise.npz", "--quiet"], "scikit-learn", "vaelab[scores]")


def test_evaluate_checks_its_libraries_and_output_before_evaluating(run, tmp_path, capsys, monkeypatch,
                                                                   no_model_work):
    refused(capsys, ["evaluate", run, "--out", tmp_path / "e.txt", "--quiet"], ".json")
    (tmp_path / "afile").write_text("")
    refused(capsys, ["evaluate", run, "--out", tmp_path / "afile" / "e.json", "--quiet"], "is a file")
    missing(monkeypatch, "torchmetrics", "torchmetrics.image", "torchmetrics.image.fid")
    refused(capsys, ["evaluate", run, "--metrics", "nll,fid", "--quiet"], "torchmetrics", "vaelab[inception]")


def test_probe_refuses_an_unwritable_result_before_training(run, tmp_path, capsys, no_model_work, monkeypatch):
    from vaelab import files

    def read_only(path, what="output file"):
        raise files.FileError(f"cannot write {path}: read-only file system; choose a folder you can write to")

    monkeypatch.setattr(evaluate_module, "writable", read_only)
    refused(capsys, ["probe", run], "probe.json", "read-only")


def test_compare_reads_every_variant_as_train_flags_before_the_first_run(tmp_path, capsys, no_model_work):
    base = ["compare", "--out", tmp_path / "cmp", "--epochs", "1", "--base", "--dataset mnist-sample", "ok=--hidden 16"]
    refused(capsys, [*base, "typo=--latent-dims 3"], "variant typo", "--latent-dims")
    refused(capsys, [*base, "neg=--lr -1"], "variant neg", "--lr")
    refused(capsys, [*base, "model=--model nope"], "variant model", "nope")
    refused(capsys, [*base, "data=--dataset /no/such/folder"], "variant data", "does not exist")
    refused(capsys, ["compare", "--out", tmp_path / "cmp", "--epochs", "1", "--base", "--hiden 3", "a=--beta 2"],
            "variant a", "--hiden")
    assert not (tmp_path / "cmp").exists()


def test_plot_refuses_an_unknown_figure_before_loading(run, capsys, monkeypatch):
    from vaelab import explore

    monkeypatch.setattr(explore, "plot", lambda *a, **k: pytest.fail("plot started"))
    refused(capsys, ["plot", run, "--what", "recon,nope"], "nope")


# ----------------------------------------------------------------------------- results kept


def test_evaluations_with_other_settings_are_kept_side_by_side(run, tmp_path, capsys):
    import vaelab

    assert main(["evaluate", str(run), "--n", "30", "--quiet"]) == 0
    assert "eval-n30.json" in capsys.readouterr().out
    first = (run / "eval-n30.json").read_text()
    r = vaelab.load(run).evaluate(k=3, n=30, progress=False)  # from Python, other settings: another file
    assert (run / "eval-n30.json").read_text() == first and r["settings"] == {"k": 3, "n": 30, "metrics": None}
    assert json.loads((run / "eval-k3-n30.json").read_text())["k"] == 3
    assert Run(run).evaluation(k=3, n=30)["k"] == 3 and Run(run).evaluation(n=30)["k"] == 1000
    assert Run(run).evaluation(n=30, k=1000)["nll"] == json.loads(first)["nll"]  # the default k finds the default file
    assert Run(run).evaluation() == {}  # nothing evaluated with every default yet
    assert main(["evaluate", str(run), "--n", "30", "--k", "3", "--out", str(tmp_path / "mine.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "mine.json").read_text())["k"] == 3


def test_ood_results_are_kept_per_comparison(run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name / "64").mkdir(parents=True)
        np.save(tmp_path / name / "64" / "x.npy", rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
    common = ["--k", "1", "--n", "12", "--scores", "elbo,mse", "--quiet"]
    assert main(["ood", str(run), "--out-of", str(tmp_path / "a" / "64" / "x.npy"), *common]) == 0
    assert main(["ood", str(run), "--out-of", str(tmp_path / "b" / "64" / "x.npy"), *common]) == 0
    tag = "-k1-n12-elbo+mse"
    for number in ("", "-2"):  # the second comparison (other data, the same name) kept the first
        for ext in ("json", "md", "png"):
            assert (run / f"ood-mnist-sample-vs-x.npy{tag}{number}.{ext}").is_file(), (number, ext)
    first = json.loads((run / f"ood-mnist-sample-vs-x.npy{tag}.json").read_text())
    assert first["out"]["x.npy"]["data"] == str(tmp_path / "a" / "64" / "x.npy")
    assert main(["ood", str(run), "--out-of", str(tmp_path / "a" / "64" / "x.npy"), *common]) == 0
    assert not list(run.glob("ood-*-3.json"))  # the same comparison again replaces its own files only
    capsys.readouterr()
    both = [str(tmp_path / name / "64" / "x.npy") for name in ("a", "b")]
    assert main(["ood", str(run), "--out-of", *both, *common]) == 0  # two sets whose paths end alike
    out = capsys.readouterr().out
    assert "mnist-sample (in) vs a/64/x.npy (out)" in out and "mnist-sample (in) vs b/64/x.npy (out)" in out
    assert (run / f"ood-mnist-sample-vs-a_64_x.npy+b_64_x.npy{tag}.png").is_file()
    assert main(["ood", str(run), "--out-of", str(tmp_path / "a" / "64" / "x.npy"), "--out", str(tmp_path / "r" / "mine"),
                 *common]) == 0
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"mine.json", "mine.md", "mine.png"}
    (tmp_path / "folder").mkdir()
    assert main(["ood", str(run), "--out-of", str(tmp_path / "b" / "64" / "x.npy"), "--out", str(tmp_path / "folder"),
                 *common]) == 0
    assert (tmp_path / "folder" / f"ood-mnist-sample-vs-x.npy{tag}.json").is_file()


def test_score_tables_are_kept_per_data_set_and_k(run, tmp_path):
    np.save(tmp_path / "other.npy", np.zeros((6, 28, 28), np.uint8))
    assert main(["score", str(run), "--k", "2", "--n", "5", "--quiet"]) == 0
    assert main(["score", str(run), "--k", "3", "--n", "5", "--quiet"]) == 0
    assert main(["score", str(run), str(tmp_path / "other.npy"), "--quiet", "--k", "2"]) == 0
    names = {p.name for p in run.glob("scores*.csv")}
    assert names == {"scores-mnist-sample-k2-n5.csv", "scores-mnist-sample-k3-n5.csv", "scores-other.npy-k2.csv"}
