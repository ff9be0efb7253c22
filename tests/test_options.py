"""Every command's options are declared once (vaelab.options): one field is a flag with its
help in --help and docs/cli.md, and a keyword of the Python function, checked the same way."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from vaelab import options
from vaelab.cli import build_parser, main, reference
from vaelab.codes import encode
from vaelab.compare import compare
from vaelab.config import ConfigError
from vaelab.detection import ood
from vaelab.evaluate import evaluate, probe
from vaelab.options import option
from vaelab.scores import score

FUNCTIONS = [(evaluate, options.EvaluateOptions), (probe, options.ProbeOptions), (score, options.ScoreOptions),
             (encode, options.EncodeOptions), (ood, options.OodOptions), (compare, options.CompareOptions)]


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    return tmp_path


def test_a_new_option_is_one_declaration(monkeypatch, run_dir):
    """A field added to a command's class is its flag, with its type, range and help, in
    --help and in docs/cli.md, and reaches the options object the command passes on."""

    @dataclasses.dataclass(frozen=True)
    class Score(options.ScoreCommand):
        """Score every image."""

        temperature: float = option(1.0, "divides the scores (default 1.0)", within="> 0")

    monkeypatch.setitem(options.COMMANDS, "score", (Score, "per-image scores"))
    parser = build_parser()
    args = parser.parse_args(["score", str(run_dir), "--temperature", "0.5", "--k", "3"])
    assert (args.temperature, args.k, args.device) == (0.5, 3, "auto")
    assert "| `--temperature TEMPERATURE` | divides the scores (default 1.0) |" in reference(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["score", str(run_dir), "--temperature", "0"])


def test_a_flag_is_checked_as_its_keyword_is(run_dir, capsys):
    with pytest.raises(SystemExit):
        main(["score", str(run_dir), "--k", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        options.options_of(options.ScoreOptions, k=0)


@pytest.mark.parametrize("function, cls", FUNCTIONS, ids=lambda x: getattr(x, "__name__", ""))
def test_each_function_takes_its_options_object_or_its_fields_as_keywords(function, cls):
    params = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert len(params) <= 6, function.__name__
    assert "options" in inspect.signature(function).parameters
    # an unknown keyword is refused by name before any work, with the closest field
    first = ["no/such/run"] if function is not compare else [[], "no/such/folder"]
    hint = "did you mean device?" if function is not compare else "choose from epochs, minutes"
    with pytest.raises(ConfigError, match=rf"unknown setting 'devise' of {cls.__name__}; {hint}"):
        function(*first, devise="cpu")


def test_every_command_but_train_reads_its_flags_from_its_class():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, (cls, _) in options.COMMANDS.items():
        dests = {a.dest for a in sub.choices[name]._actions}
        declared = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        assert declared <= dests, name
        assert dests - declared <= {"help", "threads"} | ({a for a in dests if "." in a} if name == "train" else set())



def test_the_metrics_the_command_line_takes_are_the_ones_evaluate_measures():
    from vaelab.disentangle import DISENTANGLEMENT_METRICS
    from vaelab.evaluate import METRICS, RESULT_KEYS

    assert options.METRICS is METRICS and options.DISENTANGLEMENT_METRICS is DISENTANGLEMENT_METRICS  # one list
    assert set(RESULT_KEYS) == set(METRICS)  # compare tabulates every metric evaluate measures


def test_a_range_is_written_as_a_comparison_or_an_interval():
    from vaelab.config import Flag, interval, setting

    assert interval(">= 1") == (1, False, None, False)
    assert interval("> 0") == (0, True, None, False)
    assert interval("[0, 1)") == (0, False, 1, True)
    assert interval("(0, 0.5]") == (0, True, 0.5, False)
    with pytest.raises(ValueError, match="interval"):
        interval("0..1")
    # a config field's flag is built by train's parser, which has no aliases, nargs...: refused, not dropped
    with pytest.raises(TypeError, match="name, metavar and parse only"):
        setting(0, "a config field", Flag(aliases=("--x",)))
