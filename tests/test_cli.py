"""The command line, end to end, on real data."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import metrics, requires_mnist
from vaelab.cli import build_parser, main, reference
from vaelab.config import Config

TINY = ["--hidden", "32", "--latent-dim", "4", "--quiet"]


def test_train_evaluate_sample_on_embedded_mnist(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist-sample", "--epochs", "2", "--batch-size", "200",
                 "--out", str(run), *TINY]) == 0
    assert main(["evaluate", str(run), "--k", "50", "--n", "40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "IS k=50" in out and "Bernoulli(pixel/255)" in out
    ev = json.loads((run / "eval-k50-n40.json").read_text())  # named by the settings
    for key in ("dataset", "split", "n", "k", "binarization", "elbo", "nll", "nll_stderr", "seconds"):
        assert key in ev
    assert ev["n"] == 40 and ev["k"] == 50 and ev["dataset"] == "mnist-sample"
    assert ev["elbo"] < 0 < ev["nll"] and -ev["elbo"] >= ev["nll"] - 3 * ev["nll_stderr"]
    assert main(["sample", str(run), "--n", "16", "--out", str(tmp_path / "s.png"), "--mode", "sample"]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert len(metrics(run)) == 3


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"data": {"dataset": "mnist-sample"}, "model": {"hidden": [16], "latent_dim": 2},
                               "train": {"epochs": 1, "batch_size": 500}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--latent-dim", "3", "--out", str(run), "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["latent_dim"] == 3 and saved["model"]["hidden"] == [16]


@requires_mnist
def test_train_on_full_mnist_and_ae(tmp_path):
    run = tmp_path / "vae"
    assert main(["train", "--dataset", "mnist", "--epochs", "1", "--batch-size", "1000", "--out", str(run),
                 *TINY]) == 0
    (row,) = metrics(run)
    assert row["test_elbo"] < -100  # a 1-epoch toy model, but a real bound on real digits
    ae = tmp_path / "ae"
    assert main(["train", "--model", "ae", "--dataset", "mnist", "--epochs", "1", "--batch-size", "1000",
                 "--out", str(ae), *TINY]) == 0
    assert main(["evaluate", str(ae), "--n", "100", "--quiet"]) == 0
    assert "recon_nll" in json.loads((ae / "eval-n100.json").read_text())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "gan"], "invalid choice: 'gan'"),
        (["train", "--hidden", "512,-3"], "layer sizes must be positive"),
        (["train", "--latent-dim", "0"], "positive integer"),
        (["train", "--epochs", "-1"], "positive integer"),
        (["train", "--lr", "abc"], "positive number"),
        (["evaluate", "no/such/run"], "does not exist"),
        (["sample", "no/such/run"], "does not exist"),
        (["train", "--dataset", "mnist-sample", "--binarization", "none", "--likelihood", "bernoulli", "--epochs", "1"],
         "binary pixels only"),
        (["train", "--config", "missing.json"], "does not exist"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"], "does not hold"),
        (["train", "--minutes", "5", "--schedule", "cosine"], "use --schedule exp or constant"),
        (["train", "--minutes", "-1"], "expected a number >= 0"),
        (["train", "--latent-dims", "3"], "unrecognized arguments: --latent-dims 3; did you mean --latent-dim?"),
        (["train", "--latent_dim=3"], "did you mean --latent-dim?"),
        (["train", "--dataset", "fashion_mnist"], "no such file or folder; did you mean fashion-mnist?"),
        (["train", "--model", "vea"], "(choose from vae, hvae, ae, cvae, icvae, censored, ladder); did you mean vae?"),
        (["trian", "--epochs", "1"], "invalid choice: 'trian' (choose from train, "),
        (["trian"], "did you mean train?"),
        (["plot", "{run}", "--what", "recon,sampels"], "did you mean samples?"),
    ],
)
def test_bad_input_is_a_one_line_error_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    argv = [a.replace("{run}", "run") for a in argv]
    with pytest.raises(SystemExit) as e:
        code = main(argv)
        raise SystemExit(code)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, meant", [
    (["train", "--epoch", "2"], "--epochs"),
    (["train", "--latent", "3"], "--latent-dim"),
    (["evaluate", "{run}", "--n-im", "5"], "--n-images"),
    (["score", "{run}", "--sco", "elbo"], "--scores"),
])
def test_no_option_is_taken_from_a_prefix_of_its_name(argv, meant, capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([a.replace("{run}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-2]}" in err and err.count("\n") == 1
    assert f"did you mean {meant}?" in err


def test_evaluate_n_is_an_exact_flag(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for flag in ("--n", "--n-images"):
        assert build_parser().parse_args(["evaluate", str(tmp_path), flag, "5"]).n == 5


def test_help_and_reference_show_a_percent_sign_as_written():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    helps = {name: p.format_help() for name, p in sub.choices.items()}
    assert "80%/95% TPR" in helps["ood"] and "80%/95% TPR" in reference()
    assert not [name for name, text in helps.items() if "%%" in text] and "%%" not in reference()


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = [a.option_strings[0] for a in train._actions if a.option_strings]
    assert len(flags) > 50 and all(flag in out for flag in flags)


def _have_fashion() -> bool:
    from vaelab.data import DATASETS, _complete, candidate_dirs

    return any(_complete(d, DATASETS["fashion-mnist"]) for d in candidate_dirs(DATASETS["fashion-mnist"], None))


@pytest.mark.skipif(not _have_fashion(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_train_on_fashion_mnist(tmp_path):
    run = tmp_path / "f"
    assert main(["train", "--dataset", "fashion-mnist", "--epochs", "1", "--batch-size", "1000", "--out", str(run),
                 *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["dataset"] == "fashion-mnist"
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["data_source"] == "/usr/share/datasets/fashion-mnist" or "fashion" in state["data_source"]


@pytest.mark.parametrize("flag, value, ok", [("--beta", "0.00", True), ("--beta", "0e0", True), ("--beta", "-0.5", False),
                                             ("--beta", "nan", False), ("--flows", "00", True), ("--flows", "-1", False)])
def test_non_negative_flags_accept_any_spelling_of_zero(flag, value, ok, capsys):
    if ok:
        build_parser().parse_args(["train", flag, value])
    else:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["train", flag, value])
        assert e.value.code == 2 and ">= 0" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag", [("plot", "--levels"), ("plot", "--weights"), ("score", "--skip-levels"),
                                           ("compare", "--seeds")])
def test_lists_of_numbers_read_alike_and_refuse_an_empty_list(tmp_path, command, flag, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    head = ["compare", "--out", str(tmp_path / "c"), "--epochs", "1", "x=--hidden 8"] if command == "compare" \
        else [command, str(run)]
    assert len(getattr(build_parser().parse_args([*head, flag, "1, 2,"]), flag[2:].replace("-", "_"))) == 2
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*head, flag, ","])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "expected comma-separated" in err[0] and "got ','" in err[0]


def test_the_command_line_reference_is_current():
    """docs/cli.md is written from the parser; a flag added, removed or reworded without
    rewriting it fails here (the fix: the command at the top of docs/cli.md)."""
    from vaelab.cli import reference

    path = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    text = reference()
    assert path.read_text() == text, "docs/cli.md is stale: rewrite it with the command at its top"
    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]
    for action in train._actions:  # every train flag is in the reference, with its help
        if action.option_strings and action.help and action.dest != "help":
            assert f"`{action.option_strings[0]}" in text


def test_help_needs_no_torch():
    """`vaelab --help` and `vaelab train --help` read the registries' names from their source:
    torch is not imported (it takes seconds to load)."""
    import subprocess
    import sys

    code = ("import sys\nfrom vaelab.cli import main\nfor argv in (['--help'], ['train', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_registry_names_read_from_source_equal_the_live_registries():
    import importlib

    from vaelab.catalogue import HOMES, registry_names

    assert len(HOMES) >= 10
    for module, name in HOMES.values():
        live = list(getattr(importlib.import_module(module), name))
        saved = sys.modules.pop(module)
        try:
            assert registry_names(module, name) == live, (module, name)
        finally:
            sys.modules[module] = saved


def test_every_flag_the_catalogue_names_exists_and_offers_its_registry():
    import importlib

    from vaelab.catalogue import HOMES

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    dests = {a.dest: a for p in sub.choices.values() for a in p._actions}
    for dest, (module, name) in HOMES.items():
        live = list(getattr(importlib.import_module(module), name))
        action = dests[dest]
        offered = action.choices if action.choices is not None else action.help
        assert all(n in offered for n in live), dest


def _invalid_value(action) -> str | None:
    """A value the option must refuse, or None for options that take any text."""
    if action.nargs == 0:
        return None
    if action.choices is not None:
        return "no-such-choice"
    if action.type is None:
        return None
    name = getattr(action.type, "__name__", "")
    return {"_port": "99999", "_dims": "x", "_run_dirs": "/no/such/run", "_run_dir": "/no/such/run"}.get(name, "-1x")


def test_every_command_refuses_every_invalid_flag_value_in_one_line(tmp_path, capsys):
    """A property over the whole command line: for every option of every command that
    checks its value, a bad value exits 2 with one line that names the option."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    checked = 0
    for command, parser in sub.choices.items():
        positional = [str(run)] if any(a.dest == "run_dir" for a in parser._actions) else []
        if command == "compare":
            positional = ["--out", str(tmp_path / "c"), "--epochs", "1", "x=--hidden 8"]
        for action in parser._actions:
            bad = _invalid_value(action) if action.option_strings else None
            if bad is None or action.dest in ("out",):
                continue
            with pytest.raises(SystemExit) as e:
                build_parser().parse_args([command, *positional, action.option_strings[0], bad])
            err = capsys.readouterr().err.strip().splitlines()
            assert e.value.code == 2 and len(err) == 1, (command, action.option_strings, err)
            assert action.option_strings[0] in err[0] or "argument" in err[0], err[0]
            checked += 1
    assert checked > 60


def test_a_name_looked_up_in_a_registry_suggests_the_closest():
    from vaelab.config import ConfigError, did_you_mean
    from vaelab.models import build_model

    with pytest.raises(ConfigError, match="unknown model 'hvea'; choose one of: .*; did you mean hvae\\?$"):
        build_model(Config().replace(model={"model": "hvea"}).model, (1, 28, 28))
    assert did_you_mean("Fashion_MNIST", ["mnist", "fashion-mnist"]) == "; did you mean fashion-mnist?"
    assert did_you_mean("zzz", ["mnist", "fashion-mnist"]) == ""
