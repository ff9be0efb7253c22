"""Command line: parse -> config -> call one library function. Nothing else lives here."""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

from vaelab import __version__
from vaelab.config import AUTO, RECIPE_FIELDS, Config, ConfigError, did_you_mean, read_flag
from vaelab.config import load as load_config_file

SECTIONS = {"data": "data", "model": "model", "train": "training"}  # config section -> flag group


class _Parser(argparse.ArgumentParser):
    """One-line errors that suggest the closest option or choice; no option is taken from a
    prefix of its name (--epoch is refused, not read as --epochs)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:  # said by the command's own parser, which knows the options it has
            sub = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
            parser = sub.choices[ns.command] if sub and getattr(ns, "command", None) in sub.choices else self
            options = [o for a in parser._actions for o in a.option_strings]
            flags = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
            hint = next((h for f in flags if (h := did_you_mean(f, options))), "")
            parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return ns

    def _check_value(self, action, value) -> None:
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from "
                                                 f"{', '.join(map(str, action.choices))}){did_you_mean(value, action.choices)}")


def _run_dir(s: str) -> Path:
    p = Path(s)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"run folder {s} does not exist")
    if not (p / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{s} is not a vaelab run folder (no config.json)")
    return p


AUTO_HELP = "default: chosen from the data"


def flag_name(f: dataclasses.Field) -> str:
    """A config field's flag: its name with dashes (--no-NAME for a switch that is on by
    default), unless its `setting` names an alias."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    off = str(f.type) == "bool" and f.default is True
    return ("--no-" if off else "--") + f.name.replace("_", "-")


def registry_names(path: str) -> list[str]:
    """The names in registry "module:NAME": the live registry when its module is loaded (so
    what a user registered counts), else the keys written in the module's source, read
    without importing it (or torch), so that --help stays fast."""
    module, name = path.split(":")
    if module in sys.modules:
        return list(getattr(sys.modules[module], name))
    source = Path(importlib.util.find_spec(module).origin).read_text()
    for node in ast.parse(source).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == name:
            items = node.value.keys if isinstance(node.value, ast.Dict) else node.value.elts
            return [ast.literal_eval(k) for k in items]
    raise LookupError(f"{path}: no literal registry {name} in {module}")


def _reader(f: dataclasses.Field):
    def read(text: str):
        try:
            return read_flag(f, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    read.__name__ = f.name  # argparse names the type in some messages
    return read


def _add_setting(group, section: str, f: dataclasses.Field, default) -> None:
    """The flag of one config field: its name, type, choices and help come from the field."""
    meta = f.metadata
    dest = f"{section}.{f.name}"
    if dest in RECIPE_FIELDS:
        shown = AUTO_HELP
    elif default is None:
        shown = "default: unset"
    else:
        shown = f"default {','.join(map(str, default)) if isinstance(default, tuple) else default}"
    help_text = f"{meta['help']} ({shown})"
    if str(f.type) == "bool":
        group.add_argument(flag_name(f), dest=dest, action="store_const", const=not default, help=meta["help"])
        return
    # the metavar: the setting's own, else its name (argparse would show the dest, DATA.IMAGE_SIZE)
    metavar = meta.get("metavar") or (None if meta.get("registry") or meta.get("choices") else f.name.upper())
    kwargs: dict = {"dest": dest, "metavar": metavar, "help": help_text}
    if meta.get("registry"):
        kwargs["choices"] = [AUTO] * (default == AUTO) + registry_names(meta["registry"])
    elif meta.get("choices") is not None:
        kinds = {type(c) for c in meta["choices"]}
        kwargs["choices"] = [c for c in meta["choices"] if not (c == 0 and kinds == {int})]  # 0 = auto: not typed
        kwargs["type"] = int if kinds == {int} else None
    else:
        kwargs["type"] = _reader(f)
    group.add_argument(flag_name(f), **{k: v for k, v in kwargs.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    """The `vaelab` argument parser: one subcommand per command, train's flags read from the
    config, every other command's from its options class (vaelab.options)."""
    from vaelab.options import COMMANDS as OPTIONS

    p = _Parser(prog="vaelab", description="Train, evaluate and explore variational autoencoders.")
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_args(sub)
    for name, (options, summary) in OPTIONS.items():
        _add_options(sub.add_parser(name, help=summary, description=" ".join(options.__doc__.split())), options)
    for name, command in sub.choices.items():
        if name != "train":  # train's --threads is a config field
            _threads_arg(command, name)
    return p


def _add_options(p: argparse.ArgumentParser, options: type) -> None:
    """The arguments of a command, one per field of its options class: name, type, choices,
    default and help come from the field's `option` declaration."""
    exclusive: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for f in dataclasses.fields(options):
        meta = f.metadata
        if meta.get("internal"):
            continue
        kwargs: dict = {"help": meta["help"]}
        if meta.get("registry"):
            kwargs["help"] = meta["help"].format(choices=", ".join(registry_names(meta["registry"])))
        if str(f.type) == "bool":
            kwargs["action"] = "store_true"
        else:
            kind = str(f.type).removesuffix(" | None")
            kwargs["type"] = (READERS[meta["parse"]](f) if meta.get("parse") else _reader(f) if meta.get("range")
                              else {"int": int, "float": float}.get(kind))
            kwargs["choices"] = list(meta["choices"]) if meta.get("choices") else None
            kwargs["metavar"] = meta.get("metavar") or (None if meta.get("choices") else
                                                        flag_name(f).lstrip("-").replace("-", "_").upper())
            kwargs["default"] = f.default if meta.get("cli_default") is None else meta["cli_default"]
            kwargs["nargs"] = meta.get("nargs")
        if meta.get("positional"):
            names = [f.name]
        else:
            names = [flag_name(f), *meta.get("aliases", ())]
            kwargs["dest"], kwargs["required"] = f.name, meta.get("required") or None
        group = meta.get("exclusive")
        if group and group not in exclusive:
            exclusive[group] = p.add_mutually_exclusive_group(required=True)
        (exclusive[group] if group else p).add_argument(*names, **{k: v for k, v in kwargs.items() if v is not None})


def _threads_arg(p, name: str) -> None:
    def count(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            v = -1
        if v < 0:
            raise argparse.ArgumentTypeError(f"expected a number of threads (0 or more), got {s!r}")
        return v

    whose = "each run it trains and evaluates (passed on as OMP_NUM_THREADS)" if name == "compare" else \
        "this process"
    p.add_argument("--threads", type=count, default=0, metavar="N",
                   help=f"CPU threads of {whose}; 0: its share of the CPUs it may use (affinity, cgroup quota) "
                        "beside the other vaelab processes running, followed as they start and end; an exported "
                        "OMP_NUM_THREADS counts as asked (default 0)")


@contextlib.contextmanager
def _threads(args: argparse.Namespace):
    """The command's share of the CPUs while it runs (see vaelab.runtime.ThreadPolicy), said
    once. train chooses its own (a config field, so that vaelab.train gets it too); compare
    only waits on its runs, which count themselves and get --threads through the environment;
    serve counts only while it answers requests."""
    threads = getattr(args, "threads", None)
    if args.command == "train" or threads is None:
        yield
        return
    if args.command == "compare":
        before = os.environ.get("OMP_NUM_THREADS")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            yield
        finally:
            if threads and before is None:
                del os.environ["OMP_NUM_THREADS"]
            elif threads:
                os.environ["OMP_NUM_THREADS"] = before
        return
    from vaelab.runtime import ThreadPolicy

    with ThreadPolicy(threads, on_demand=args.command == "serve") as policy:
        # serve's first line is the page's address, and its share changes request by request
        quiet = getattr(args, "quiet", False) or args.command == "serve"
        if _rank0() and not quiet and getattr(args, "device", "cpu") != "cuda":
            print(policy.choice.line(), flush=True)
        yield


def _train_args(sub) -> None:
    d = Config()
    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model. Flags override --config, which overrides the defaults.")
    t.add_argument("--config", metavar="FILE", help="JSON or TOML config (sections data/model/train)")
    t.add_argument("--resume", metavar="RUN_DIR", type=_run_dir,
                   help="continue this run from its last checkpoint (up to --epochs in total)")
    t.add_argument("--out", metavar="DIR", type=_path_text,
                   help="run folder to create (default runs/<dataset>-<model>-<time>)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint, metrics and pictures) instead of refusing")
    for section, title in SECTIONS.items():
        group = t.add_argument_group(title)
        for f in dataclasses.fields(getattr(d, section)):
            if not f.metadata.get("internal"):
                _add_setting(group, section, f, getattr(getattr(d, section), f.name))
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar; the one-line epoch summaries still print (the bar is drawn only when "
                        "stderr is a terminal or in Jupyter, so logs never fill with its redraws)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bar and no per-epoch lines or notes; warnings and errors still print")


def _path_text(s: str) -> str:
    """A folder to create: its name must be printable (UTF-8), as it is written in messages,
    config.json and run.json."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        shown = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise argparse.ArgumentTypeError(f"{shown} is not a valid UTF-8 name; choose a name in UTF-8") from None
    return s


def _port(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = -1
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {s!r}")
    return v


def _run_dirs(s: str) -> tuple[Path, ...]:
    return tuple(_run_dir(p.strip()) for p in s.split(",") if p.strip())


def _metrics(s: str) -> tuple[str, ...]:
    from vaelab.evaluate import METRICS

    names = tuple(dict.fromkeys(v.strip() for v in s.split(",") if v.strip()))
    if not names or any(v not in METRICS for v in names):
        raise argparse.ArgumentTypeError(f"expected metrics from {', '.join(METRICS)} such as nll,fd, got {s!r}")
    return names


def _names(choices: list[str]):
    def read(s: str) -> list[str]:
        got = [p.strip() for p in s.split(",") if p.strip()]
        bad = [g for g in got if g not in choices]
        if bad or not got:
            hint = did_you_mean(bad[0], choices) if bad else ""
            raise argparse.ArgumentTypeError(f"unknown score {', '.join(bad) or '(none)'}; "
                                             f"choose from {', '.join(choices)}{hint}")
        return got
    return read


def _comma_list(convert, what: str):
    """A flag's parser for comma-separated values, e.g. 0.1,0.3 or 1,2."""
    def read(s: str) -> tuple:
        try:
            return tuple(convert(v) for v in s.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from None
    return read


_ints = _comma_list(int, "integers")
_levels = _comma_list(float, "numbers")


def _seeds(s: str) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(v) for v in s.split(",") if v.strip()))
    except ValueError:
        seeds = ()
    if not seeds:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer seeds such as 0,1,2, got {s!r}")
    return seeds


def _dims(s: str) -> tuple[int, int]:
    try:
        dims = tuple(int(v) for v in s.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 2 or min(dims) < 0:
        raise argparse.ArgumentTypeError(f"expected two latent dimensions such as 0,1, got {s!r}")
    return dims  # type: ignore[return-value]


def _words(s: str) -> tuple[str, ...]:
    import shlex

    try:
        return tuple(shlex.split(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e} in {s!r}") from None


# how an option's text is read, for options whose declaration names one (field -> reader)
READERS = {"run_dir": lambda f: _run_dir, "run_dirs": lambda f: _run_dirs, "path": lambda f: _path_text,
           "metrics": lambda f: _metrics, "names": lambda f: _names(registry_names(f.metadata["registry"])),
           "ints": lambda f: _ints, "numbers": lambda f: _levels, "seeds": lambda f: _seeds, "dims": lambda f: _dims,
           "port": lambda f: _port, "words": lambda f: _words}


def _options(args: argparse.Namespace, options: type):
    """The options object of class `options` from the parsed command line."""
    return options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options) if hasattr(args, f.name)})


def _config_from_args(args: argparse.Namespace) -> Config:
    cfg = Config() if args.config is None else load_config_file(args.config)
    sections: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    for dest, value in _given(args).items():
        section, name = dest.split(".")
        sections[section][name] = value
    model = sections["model"]
    if "hidden" in model and "decoder_hidden" not in model:
        model["decoder_hidden"] = None  # --hidden alone: the decoder mirrors it
    return cfg.replace(**sections)


def _given(args: argparse.Namespace) -> dict[str, object]:
    """The config fields set by flags ("section.field" -> value); unset flags keep the config's."""
    return {k: v for k, v in vars(args).items() if "." in k and v is not None}


def _rank0() -> bool:
    """Whether this process prints: the only one, or rank 0 of a torchrun job."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> None:
    """`vaelab train`: a new run from flags or --config, or --resume of one; prints the run folder."""
    from vaelab.training import resume, train

    if args.resume is not None:
        flags = {f"{s}.{f.name}": flag_name(f) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))}
        given = [flags[k] for k in _given(args) if k not in ("train.epochs", "train.minutes", "train.threads")]
        if given or args.config or args.out or args.overwrite:
            raise ConfigError(
                f"--resume continues a run with its saved config; only --epochs, --minutes and --threads may change "
                f"(got {', '.join(given) or '--config/--out'})"
            )
        run = resume(args.resume, epochs=getattr(args, "train.epochs"), minutes=getattr(args, "train.minutes"),
                     threads=getattr(args, "train.threads"), progress=not args.no_progress, quiet=args.quiet)
    else:
        run = train(_config_from_args(args), args.out, progress=not args.no_progress, quiet=args.quiet,
                    overwrite=args.overwrite)
    if _rank0():
        print(f"run folder: {run}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """`vaelab evaluate`: test ELBO, IS-NLL and diagnostics of a run, printed and written to eval.json."""
    from vaelab.evaluate import evaluate, format_result
    from vaelab.files import FileError, write_json
    from vaelab.options import EvaluateOptions

    r = evaluate(args.run_dir, _options(args, EvaluateOptions), progress=not (args.no_progress or args.quiet),
                 write=False)
    if not _rank0():
        return
    print(format_result(r))  # before writing: a run folder that cannot be written still shows its results
    path = Path(args.run_dir) / "eval.json"
    try:
        write_json(path, r)
    except FileError as e:
        raise FileError(f"{e} (the results above were not saved)") from None
    print(f"(+- is the standard error over test images; written to {path})")


def cmd_score(args: argparse.Namespace) -> None:
    """`vaelab score`: a table of per-image scores written to --out, with an optional top/bottom grid."""
    from vaelab.options import ScoreOptions
    from vaelab.scores import default_rank, score, write_table

    table = score(args.run_dir, args.data, _options(args, ScoreOptions), progress=not args.quiet)
    if args.rank_by and args.rank_by not in table:
        raise ConfigError(f"--rank-by {args.rank_by}: not a column of this table; choose from "
                          f"{', '.join(table.scores)}{did_you_mean(args.rank_by, table.scores)}")
    if not _rank0():
        return
    out = Path(args.out) if args.out else Path(args.run_dir) / "scores.csv"
    write_table(table, out)
    print(f"{len(table)} images of {table.info['data']} ({table.info['split']}) scored, k={args.k}: {out}")
    if args.top:
        from vaelab.plots import save_figure
        from vaelab.scores import top_figure

        path = out.with_name(out.stem + "-top.png")
        save_figure(top_figure(table, args.top, args.rank_by), path)
        print(f"the {args.top} most typical and most unusual images by {args.rank_by or default_rank(table.scores)}: {path}")


def cmd_ood(args: argparse.Namespace) -> None:
    """`vaelab ood`: out-of-distribution metrics per score, written to ood.json, ood.md and ood.png."""
    from vaelab.options import OodOptions
    from vaelab.scores import ood

    r = ood(args.run_dir, args.inside, args.outside, _options(args, OodOptions), progress=not args.quiet)
    if not _rank0():
        return
    for name, rows in r["results"].items():
        print(f"{r['in']['dataset']} (in) vs {name} (out): AUROC per score")
        for col, m in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"]):
            print(f"  {col:<22} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}  FPR80 {m['fpr80']:.3f}  "
                  f"FPR95 {m['fpr95']:.3f}")
    print(f"written to {Path(args.run_dir) / 'ood.md'} (and ood.json, ood.png)")


def cmd_encode(args: argparse.Namespace) -> None:
    """`vaelab encode`: the posterior means and standard deviations of a dataset, written to --out."""
    from vaelab.options import EncodeOptions
    from vaelab.scores import encode, write_codes

    table = encode(args.run_dir, args.data, _options(args, EncodeOptions), progress=not args.quiet)
    if _rank0():
        write_codes(table, args.out)
        print(f"codes of {len(table)} images ({table['mean'].shape[1]} dimensions): {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    """`vaelab sample`: a grid of decoded prior samples written as a PNG."""
    import torch

    from vaelab.checkpoint import load_run
    from vaelab.files import ensure_dir
    from vaelab.plots import image_grid, save_png
    from vaelab.runtime import resolve_device

    _, model = load_run(args.run_dir, resolve_device(args.device))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    with torch.no_grad():
        dist = model.sample(args.n, generator=gen)
        images = dist.mean if args.mode == "mean" else dist.sample(generator=gen)
    out = Path(args.out) if args.out else Path(args.run_dir) / "prior_samples.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    ensure_dir(out.parent, "output folder")
    save_png(image_grid(images), out)
    print(f"wrote {out}")


def cmd_probe(args: argparse.Namespace) -> None:
    """`vaelab probe`: how much of the class a linear or MLP probe reads from a run's codes."""
    from vaelab.evaluate import probe
    from vaelab.options import ProbeOptions

    r = probe(args.run_dir, _options(args, ProbeOptions))
    rows = [("model", f"{r['model']} on {r['dataset']}"),
            (f"probe accuracy ({r['probe_layers']} hidden layers)", f"{r['accuracy']:.4f}"),
            ("majority-class rate", f"{r['majority']:.4f}"),
            ("reconstruction MSE", f"{r['recon_mse']:.5f}")]
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    print(f"(written to {Path(args.run_dir) / 'probe.json'})")


def cmd_plot(args: argparse.Namespace) -> None:
    """`vaelab plot`: the named figures of a run written to RUN/plots (or --out)."""
    from vaelab.explore import FIGURES, plot
    from vaelab.runtime import resolve_device

    what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in what if w not in FIGURES]
    if unknown:
        raise ConfigError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}"
                          f"{did_you_mean(unknown[0], FIGURES)}")
    options = {"kind": args.kind, "levels": args.levels, "span": args.span, "steps": args.steps,
               "dims": args.dims, "weights": args.weights, "against": args.against}
    try:
        written = plot(args.run_dir, what, args.out, seed=args.seed, device=str(resolve_device(args.device)),
                       **options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for path in written:
        print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace) -> None:
    """`vaelab compare`: variants x seeds trained at equal epochs or equal time, with tables and a figure."""
    from vaelab.compare import compare, parse_variant
    from vaelab.options import CompareOptions

    try:
        variants = [parse_variant(v) for v in args.variants]
        result = compare(variants, args.out, _options(args, CompareOptions))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print((Path(args.out) / "compare.md").read_text(), end="")
    failed = sum("error" in r for r in result["rows"])
    if failed == len(result["rows"]):
        from vaelab.checkpoint import RunError

        raise RunError(f"every run failed (the first: {result['rows'][0]['error']}); see "
                       f"{Path(args.out) / 'compare.json'}")
    print(f"wrote {Path(args.out) / 'compare.md'}, compare.csv, compare.json, compare.png"
          + (f"; {failed} run(s) failed (see compare.json)" if failed else ""))


def cmd_serve(args: argparse.Namespace) -> None:
    """`vaelab serve`: the local explorer page for a run."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("vaelab serve needs the serve extra: pip install 'vaelab[serve]'") from None
    from vaelab.runtime import resolve_device
    from vaelab.serve import serve

    def ready(url: str) -> None:
        print(f"vaelab serve: open {url} in a browser (Ctrl-C stops)", flush=True)

    try:
        serve(args.run_dir, args.host, args.port, device=str(resolve_device(args.device)), n=args.n,
              ready=ready)
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        print(f"vaelab {args.command}: error: {_lost_peer_message(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass


def reference(parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md: every command and flag with its help, written from the parser itself
    (tests/test_cli.py checks the file against it)."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    out = ["# Command-line reference", "",
           "Written from vaelab's argument parser: `python -c \"from vaelab.cli import reference; "
           "print(reference(), end='')\" > docs/cli.md` rewrites it, and the test suite fails when it is stale.", ""]
    for name, p in sub.choices.items():
        out += [f"## `vaelab {name}`", "", (p.description or helps.get(name) or "").strip(), ""]
        for group in p._action_groups:
            rows = [a for a in group._group_actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)]
            if not rows:
                continue
            out += [f"**{group.title}**", "", "| flag | meaning | config field |", "|---|---|---|"]
            for a in rows:
                flag = ", ".join(a.option_strings) or a.dest
                if a.nargs != 0:
                    meta = a.metavar or ("{" + ",".join(map(str, a.choices)) + "}" if a.choices else a.dest.upper())
                    flag += f" {meta}"
                text = (a.help or "") % {"default": a.default, "prog": p.prog}
                flag, text = flag.replace("|", "\\|"), text.replace("|", "\\|")
                key = f"`{a.dest}`" if "." in a.dest else ""
                out.append(f"| `{flag}` | {text} | {key} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "score": cmd_score, "ood": cmd_ood, "encode": cmd_encode,
            "sample": cmd_sample, "plot": cmd_plot,
            "probe": cmd_probe, "serve": cmd_serve, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    """The command line's entry point: parse, run one command, and turn known faults into one-line errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _run(args)
    if "torch" in sys.modules:  # a command that never imported torch has no process group
        from vaelab.runtime import leave_process_group

        if leave_process_group():  # a torchrun worker whose work is done and on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


# what gloo and NCCL say when another process of the job is gone
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited", "Socket Timeout")


def _lost_peer(e: RuntimeError) -> bool:
    """Whether `e` is a collective failing because another process of a torchrun job died."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(p in str(e) for p in _PEER_GONE)


def _lost_peer_message(args: argparse.Namespace) -> str:
    """One line: which process was lost, what is kept, and how to go on."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if args.command != "train" or not run:
        return f"lost {lost} of this torchrun job ({world} processes: killed or crashed); run the command again"
    from vaelab.checkpoint import Run

    epoch = Run(run).checkpoint_epoch
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch was saved yet"
    return (f"lost {lost} of this torchrun job ({world} processes: killed or crashed); {kept}; continue with "
            f"torchrun --nproc_per_node {world} -m vaelab train --resume {run}")


def _run(args: argparse.Namespace) -> int:
    """Run one command; errors become one line on stderr and an exit code."""
    from vaelab.checkpoint import RunError
    from vaelab.data import DataError
    from vaelab.files import FileError, describe
    from vaelab.runtime import DeviceError
    from vaelab.training import TrainingDiverged, TrainingStopped

    # the same on every process of a torchrun job (the settings, or a check reduced across
    # processes): rank 0 alone says it; other errors may differ by process (or machine)
    rank0 = os.environ.get("RANK", "0") == "0"
    try:
        with _threads(args):
            COMMANDS[args.command](args)
    except ConfigError as e:
        if rank0:
            print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (RunError, DataError, DeviceError, FileError) as e:
        print(f"vaelab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # anything the layers above did not name: still one line
        print(f"vaelab {args.command}: error: {describe(e, 'file system error')}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        if rank0:
            print(f"vaelab train: stopped: {e}", file=sys.stderr)
        return 1
    except TrainingStopped as e:
        if rank0:
            print(f"\nvaelab {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except RuntimeError as e:
        if not _lost_peer(e):
            raise
        print(f"vaelab {args.command}: error: {_lost_peer_message(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nvaelab {args.command}: interrupted; a run's last completed epoch's checkpoint is kept "
              "(continue with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
