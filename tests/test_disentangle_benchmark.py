"""benchmarks/disentangle.py in its tiny --quick form, on the small colour factor dataset (which
draws in a fraction of a second, where dSprites takes seconds): both parts run and write their
result file (a check of the script; nothing here is timed or compared with a target). The
vaelab commands run in this process rather than in fresh ones, to keep the test short."""

from __future__ import annotations

import json

import pytest

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("disentangle")


def test_unknown_parts_and_models_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse(["models,nope"])
    with pytest.raises(SystemExit):
        bench.parse(["models", "--models", "beta-vae,vae"])
    with pytest.raises(SystemExit):
        bench.parse(["models", "--metrics", "mig,nll"])


def test_the_recipe_trains_the_two_models_it_names(bench):
    a = bench.parse(["models"])
    assert a.models == ["beta-vae", "beta-tcvae"] and a.seeds == [0, 1, 2] and a.minutes == 60
    assert bench.MODELS["beta-tcvae"] == ["--objective", "tcvae", "--beta", "6"]
    assert bench.MODELS["beta-vae"] == ["--beta", "1"]


def test_quick_mode_runs_both_parts_and_records_its_commands(bench, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from vaelab.cli import main

    def in_process(*args, threads=None, **_):
        argv = [str(a) for a in args] + (["--quiet"] if args[0] in ("train", "evaluate") else [])
        assert main(argv) == 0

    monkeypatch.setattr(bench, "vaelab", in_process)
    out = tmp_path / "out"
    path = bench.main(["all", "--quick", "--models", "beta-tcvae", "--threads", "1", "--dataset", "xyobject",
                       "--data-dir", str(tmp_path / "data"), "--work", str(tmp_path / "work"), "--out", str(out),
                       "--note", "a test"])
    r = json.loads(path.read_text())
    assert path.name.startswith("disentangle-quick-") and r["note"] == "a test" and r["machine"]["cores"]
    assert r["command"].startswith("python benchmarks/disentangle.py all --quick")
    run = r["models"]["models"]["beta-tcvae"]["runs"][0]
    assert run["epochs"] == 1 and run["images_trained"] == 300 and 0 <= run["mig"] <= 1
    assert run["points"] == {"mig": 300, "dci": 300}
    assert set(r["models"]["models"]["beta-tcvae"]["summary"]) == {"mig", "dci_disentanglement", "dci_completeness",
                                                                   "dci_informativeness"}
    assert r["models"]["target_met"] is None  # one model alone is not compared with the target
    assert [c.split()[1] for c in r["models"]["commands"]] == ["train", "evaluate", "plot"]
    assert sorted(p.name.split("-")[-1] for p in out.glob("*.png")) == ["matrix.png", "traversal.png"]
    speed = r["speed"]
    assert speed["generation"]["images"] == 6144 and speed["generation"]["bytes"] > 6144 * 3 * 64 * 64
    per = speed["metrics"]["per_metric"]
    assert set(per) == {"mig", "dci", "sap", "factorvae", "betavae"} and speed["metrics"]["codes"] == 300
    assert per["betavae"]["images_encoded"] > 0 and per["mig"]["images_encoded"] == 0 and per["mig"]["points"] == 300
