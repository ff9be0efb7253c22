"""vaelab compare: variants x seeds, resumable, a table with mean +- std, failures recorded."""

import json

import pytest

from vaelab.cli import main
from vaelab.compare import Variant, eval_row, markdown, parse_variant, planned_epochs, second_probe, summarise

BASE = "--dataset=mnist-sample --latent-dim 4 --batch-size 250"


def test_parse_variant():
    assert parse_variant('h64=--hidden 64 --activation relu') == Variant("h64", ("--hidden", "64", "--activation", "relu"))
    assert parse_variant("plain=") == Variant("plain", ())
    for bad, words in (("no-equals", "NAME="), ("=--hidden 3", "NAME="), ("a b=--x", "NAME="),
                       ("x=--seed 3", "--seed"), ("x=--out d", "--out"), ('x=--hidden "64', "split")):
        with pytest.raises(ValueError, match=words):
            parse_variant(bad)


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [{"variant": "a", "seed": 0, "nll": 90.0}, {"variant": "a", "seed": 1, "nll": 92.0},
            {"variant": "a", "seed": 2, "error": "diverged"}, {"variant": "b", "seed": 0, "nll": 80.0}]
    table = summarise(rows, [Variant("a", ()), Variant("b", ())])
    assert table[0]["nll"] == {"mean": 91.0, "std": pytest.approx(2 ** 0.5), "n": 2} and table[0]["failed"] == [2]
    assert table[1]["nll"]["std"] == 0.0
    text = markdown(table, "# t")
    assert "| a |" in text and "91.00 +- 1.41" in text and "1 failed: seeds 2" in text


def test_compare_runs_resumes_and_records_failures(compare_in_process, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--epochs", "1", "--seeds", "0,1", f"--base={BASE}", "--k", "5",
            "--n", "40", "h16=--hidden 16", "h32=--hidden 32", "broken=--lr 1e9"]
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert "| h16 |" in shown and "| h32 |" in shown and "2 failed" in shown
    result = json.loads((out / "compare.json").read_text())
    good = [r for r in result["rows"] if "error" not in r]
    assert len(good) == 4 and all(r["epochs"] == 1 and r["n"] == 40 and r["gap"] >= 0 for r in good)
    assert all("lr" in r["error"] for r in result["rows"] if r["variant"] == "broken")
    for name in ("compare.md", "compare.csv", "compare.png", "samples.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("variant,flags,seeds,test_elbo_mean")
    stamp = (out / "h16" / "seed-0" / "eval-k5-n40.json").stat().st_mtime_ns
    assert main(args[:-1]) == 0  # again: nothing retrained or re-evaluated
    assert (out / "h16" / "seed-0" / "eval-k5-n40.json").stat().st_mtime_ns == stamp
    assert "training" not in capsys.readouterr().out


def test_equal_time_budget_sets_epochs_from_the_first(compare_in_process, tmp_path):
    out = tmp_path / "t"
    assert main(["compare", "--out", str(out), "--minutes", "0.001", "--seeds", "0", f"--base={BASE}",
                 "--metrics", "nll", "--k", "2", "--n", "20", "tiny=--hidden 8"]) == 0
    plan = json.loads((out / "tiny" / "seed-0" / "compare_epochs.json").read_text())
    assert plan["epochs"] == 1 and len(plan["probe_epoch_seconds"]) == 1  # no room for a second probe epoch
    # a budget of several epochs: two probe epochs, the second one's pace plans the rest
    out2 = tmp_path / "t2"
    assert main(["compare", "--out", str(out2), "--minutes", "0.03", "--seeds", "0", f"--base={BASE}",
                 "--metrics", "nll", "--k", "2", "--n", "20", "tiny=--hidden 8"]) == 0
    plan = json.loads((out2 / "tiny" / "seed-0" / "compare_epochs.json").read_text())
    # how many probes ran depends on this machine's speed; the plan follows from them either way
    probes, budget = plan["probe_epoch_seconds"], 0.03 * 60
    assert len(probes) == 1 + second_probe(budget, probes[0])
    assert plan["epochs"] == planned_epochs(budget, probes)
    with pytest.raises(SystemExit):  # exactly one budget
        main(["compare", "--out", str(out), "--seeds", "0", "x=--hidden 8"])


def test_a_variant_with_its_own_time_budget_stops_early_and_stays_stopped(compare_in_process, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["compare", "--out", str(out), "--epochs", "3", "--seeds", "0", f"--base={BASE}", "--metrics", "nll",
            "--k", "2", "--n", "20", "capped=--hidden 8 --minutes 0.0001"]
    assert main(args) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["rows"][0]["epochs"] == 1  # vaelab train's --minutes ended it after epoch 1
    assert "(at most 3 epochs each" in (out / "compare.md").read_text()
    capsys.readouterr()
    assert main(args) == 0  # again: the spent budget trains nothing more
    assert json.loads((out / "compare.json").read_text())["rows"][0]["epochs"] == 1


def test_the_equal_time_plan_from_probe_epochs():
    assert not second_probe(9.0, 3.5) and second_probe(9.0, 3.0)
    assert planned_epochs(9.0, [4.0]) == 2  # 4 s, then 5 s left at 4 s an epoch: one more
    assert planned_epochs(9.0, [3.0, 1.0]) == 7  # the steady pace (1 s) plans the rest
    assert planned_epochs(1.0, [4.0]) == 1  # the first epoch is always trained


def test_compare_refuses_a_training_run_folder_and_a_run_where_everything_failed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
                 "--quiet", "--out", str(run)]) == 0
    before = sorted(p.name for p in run.iterdir())
    assert main(["compare", "--out", str(run), "--epochs", "1", "--seeds", "0", "x=--hidden 8"]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
    out = tmp_path / "c"
    assert main(["compare", "--out", str(out), "--epochs", "1", "--seeds", "0",
                 "--base=--dataset no/such/folder", "bad=--hidden 8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and not out.exists()  # refused before any run
    assert main(["compare", "--out", str(out), "--epochs", "1", "--seeds", "0",
                 "--base=--dataset mnist-sample", "bad=--hidden 8 --lr 1e9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every run failed" in err[0] and "not finite" in err[0]
    table = (out / "compare.md").read_text().splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| variant"))
    assert table[header].count("|") == table[header + 1].count("|") == table[header + 2].count("|")


def test_the_table_carries_every_metric_the_evaluations_hold():
    ev = {"nll": 90.0, "elbo": -95.0, "k": 5, "n": 40, "fd": 3.0, "fid": 40.0, "mig": 0.2, "dci_disentanglement": 0.3,
          "dci_completeness": 0.4, "dci_informativeness": 0.9, "sap": 0.05, "factorvae_score": 0.7,
          "betavae_score": 0.8, "disentanglement": {"mig": {"mig": 0.2}}, "seconds": 3.0}
    row = eval_row(ev)
    assert row["gap"] == 5.0 and row["fid"] == 40.0 and row["betavae_score"] == 0.8
    assert "disentanglement" not in row and "seconds" not in row  # headline numbers only
    rows = [{"variant": "a", "seed": s, **eval_row({**ev, "mig": 0.2 + s / 10})} for s in (0, 1)]
    table = summarise(rows, [Variant("a", ())])
    assert table[0]["mig"]["mean"] == pytest.approx(0.25) and table[0]["dci_completeness"]["n"] == 2
    text = markdown(table, "# t")
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert header == ("| variant | flags | seeds | nll | gap | fd | fid | mig | dci_disentanglement | dci_completeness "
                      "| dci_informativeness | sap | factorvae_score | betavae_score |")
    assert "0.250 +- 0.071" in text and "disentanglement of the codes (higher is better)" in text
    plain = markdown(summarise([{"variant": "a", "seed": 0, "nll": 90.0}], [Variant("a", ())]), "# t")
    assert "fid" not in plain and "disentanglement" not in plain  # nothing said of metrics not measured


def test_compare_evaluates_and_tabulates_disentanglement(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the runs' processes inherit it
    images = np.random.default_rng(0).integers(0, 2, (60, 8, 8), dtype=np.uint8) * 255
    np.savez(tmp_path / "f.npz", images=images, factors=np.stack([np.arange(60) % 3, np.arange(60) % 4], 1))
    out = tmp_path / "cmp"
    args = ["compare", "--out", str(out), "--epochs", "1", "--seeds", "0", "--metrics", "nll,mig,sap", "--k", "2",
            f"--base=--dataset {tmp_path / 'f.npz'} --hidden 16 --latent-dim 2", "v=--batch-size 20"]
    assert main(args) == 0
    result = json.loads((out / "compare.json").read_text())
    row = result["rows"][0]
    assert "error" not in row and 0 <= row["mig"] <= 1 and 0 <= row["sap"] <= 1 and "nll" in row
    assert {"mig", "sap", "nll"} <= set(result["table"][0])
    assert "| mig | sap |" in (out / "compare.md").read_text()
    assert "mig_mean,mig_std,sap_mean,sap_std" in (out / "compare.csv").read_text().splitlines()[0]
    evaluated = next((out / "v" / "seed-0").glob("eval-*.json"))
    stamp = evaluated.stat().st_mtime_ns
    assert main(args) == 0  # again: every metric is in the evaluation, none is measured again
    assert evaluated.stat().st_mtime_ns == stamp
