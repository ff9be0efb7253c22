"""The config makes the flags: every field of the config tree has a train flag (or says why
it has none), help text and a check, and a flag and a --config file give the same config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vaelab.catalogue import HOMES
from vaelab.cli import _config_from_args, build_parser, flag_name, main
from vaelab.config import AUTO, Config, ConfigError
from vaelab.data import DATASETS

FIELDS = [(s, f) for s in ("data", "model", "train") for f in dataclasses.fields(getattr(Config(), s))]
IDS = [f"{s}.{f.name}" for s, f in FIELDS]


def train_actions() -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices["train"]._actions}


def kind(f) -> str:
    return str(f.type).removesuffix(" | None").split("[")[0]


def other_value(section: str, f):
    """A valid value for the field that is not its default, and its command-line text."""
    meta, default = f.metadata, getattr(getattr(Config(), section), f.name)
    if f"{section}.{f.name}" in HOMES:
        action = train_actions()[f"{section}.{f.name}"]
        value = next(c for c in action.choices if c not in (default, AUTO))
        return value, value
    if meta.get("choices") is not None:
        value = next(c for c in meta["choices"] if c != default and c != 0)
        return value, str(value)
    special = {"size": ((24, 32), "24x32"), "ints": ((8, 4), "8,4"), "megabytes": (64, "64MB"),
               "colour": ("#102030", "#102030"), "denoise": ("uniform:0.1-0.3", "uniform:0.1-0.3"),
               "levels": ("8x14x14,16,8", "8x14x14,16,8")}
    if meta.get("parse"):
        return special[meta["parse"]]
    if kind(f) == "bool":
        return not default, None
    if kind(f) in ("int", "float"):
        low, _, high, _ = meta["range"] if meta.get("range") else (0, False, None, False)
        value = (0.5 if high is not None else 3) if kind(f) == "float" else 3
        value = value if default != value else value + 1
        return value, str(value)
    value = {"dataset": "mnist-sample"}.get(f.name, "somewhere")
    return value, value


@pytest.mark.parametrize("section, f", FIELDS, ids=IDS)
def test_every_field_has_a_flag_help_and_a_check(section, f):
    meta = f.metadata
    assert meta.get("help"), "a field without help text"
    if meta.get("internal"):  # set by vaelab itself, with the reason written down
        assert f"{section}.{f.name}" not in train_actions()
        return
    action = train_actions().get(f"{section}.{f.name}")
    assert action is not None, "a field without a train flag"
    assert action.option_strings[0] == flag_name(f)
    assert meta["help"] in action.help
    if kind(f) in ("int", "float", "tuple"):
        assert meta.get("range") or meta.get("choices") is not None, "a number field without a range"
    if kind(f) == "str" and f.name not in ("dataset", "data_dir", "conditions"):  # paths: checked when opened
        named = f"{section}.{f.name}" in HOMES  # its names come from a registry, which checks them
        assert named or meta.get("choices") or meta.get("parse"), "a name field without a check"


@pytest.mark.parametrize("section, f", FIELDS, ids=IDS)
def test_a_flag_and_a_config_file_build_the_same_config(section, f, tmp_path):
    if f.metadata.get("internal"):
        return
    value, text = other_value(section, f)
    args = [] if text is None and kind(f) == "bool" else [text]
    flag = train_actions()[f"{section}.{f.name}"].option_strings[0]
    from_flag = _config_from_args(build_parser().parse_args(["train", flag, *args]))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {f.name: list(value) if isinstance(value, tuple) else value}}))
    from_file = _config_from_args(build_parser().parse_args(["train", "--config", str(path)]))
    assert from_flag == from_file
    assert getattr(getattr(from_flag, section), f.name) == value


@pytest.mark.parametrize("section, f", [(s, f) for s, f in FIELDS if f.metadata.get("range")],
                         ids=[f"{s}.{f.name}" for s, f in FIELDS if f.metadata.get("range")])
def test_a_value_out_of_range_is_one_line_with_exit_2_from_a_flag_and_from_a_file(section, f, tmp_path, capsys):
    low, open_low, high, open_high = f.metadata["range"]
    bad = (high + 1) if high is not None else (low if open_low else low - 1)
    text = ",".join([str(bad)] * 2) if kind(f) == "tuple" else str(bad)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", train_actions()[f"{section}.{f.name}"].option_strings[0], text])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {f.name: [bad, bad] if kind(f) == "tuple" else bad}}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{section}.{f.name}" in err[0]
    with pytest.raises(ConfigError):
        Config().replace(**{section: {f.name: [bad, bad] if kind(f) == "tuple" else bad}})


def test_the_dataset_help_names_every_named_dataset():
    help_text = train_actions()["data.dataset"].help
    assert all(name in help_text for name in DATASETS)
