"""Command line: parse -> config or options -> call one library function -> print. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from vaelab import options
from vaelab.catalogue import build_parser, reference  # noqa: F401 (the parser and docs/cli.md, as tests read them)
from vaelab.config import Config, ConfigError, did_you_mean
from vaelab.options import SECTIONS, flag_name, given  # noqa: F401 (used here)
from vaelab.options import config_from_args as _config_from_args


def _threads(args: argparse.Namespace):
    """The command's share of the CPUs while it runs (vaelab.runtime.command_threads)."""
    if args.command == "train" or getattr(args, "threads", None) is None:
        return contextlib.nullcontext()  # train chooses its own: a config field, so vaelab.train gets it too
    from vaelab.runtime import command_threads

    return command_threads(args.command, args.threads, say=_rank0() and not getattr(args, "quiet", False)
                           and getattr(args, "device", "cpu") != "cuda")


def _options(args: argparse.Namespace, cls: type):
    """The options object of class `cls` (vaelab.options) from the parsed command line."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def _rank0() -> bool:
    """Whether this process prints: the only one, or rank 0 of a torchrun job."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace) -> None:
    """`vaelab train`: a new run from flags or --config, or --resume of one; prints the run folder."""
    from vaelab.training import Limits, resume, train

    if args.resume is not None:
        flags = {f"{s}.{f.name}": flag_name(f) for s in SECTIONS for f in dataclasses.fields(getattr(Config(), s))}
        changed = [flags[k] for k in given(args) if k not in ("train.epochs", "train.minutes", "train.threads")]
        if changed or args.config or args.out or args.overwrite:
            raise ConfigError(f"--resume continues a run with its saved config; only --epochs, --minutes and --threads "
                              f"may change (got {', '.join(changed) or '--config/--out'})")
        limits = Limits(*(getattr(args, f"train.{name}") for name in ("epochs", "minutes", "threads")))
        run = resume(args.resume, limits, progress=not args.no_progress, quiet=args.quiet)
    else:
        run = train(_config_from_args(args), args.out, progress=not args.no_progress, quiet=args.quiet,
                    overwrite=args.overwrite)
    if _rank0():
        print(f"run folder: {run}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """`vaelab evaluate`: test ELBO, IS-NLL and diagnostics of a run, printed and written to eval.json
    (or a file named by the settings, or --out)."""
    from vaelab.checkpoint import eval_path
    from vaelab.evaluate import evaluate, format_result
    from vaelab.files import FileError, writable, write_json

    if args.out:  # refused before the evaluation, not after
        if Path(args.out).suffix.lower() != ".json":
            raise ConfigError(f"--out {args.out}: the results are written as .json")
        writable(args.out)
    r = evaluate(args.run_dir, _options(args, options.EvaluateOptions), progress=not (args.no_progress or args.quiet),
                 write=False)
    if not _rank0():
        return
    print(format_result(r))  # before writing: a run folder that cannot be written still shows its results
    path = Path(args.out) if args.out else eval_path(args.run_dir, **r["settings"])
    try:
        write_json(path, r)
    except FileError as e:
        raise FileError(f"{e} (the results above were not saved)") from None
    print(f"(+- is the standard error over test images; written to {path})")


def cmd_score(args: argparse.Namespace) -> None:
    """`vaelab score`: a table of per-image scores written to --out, with an optional top/bottom grid."""
    from vaelab.files import ensure_dir, writable
    from vaelab.scores import check_table_path, default_rank, score, table_path, write_table

    if args.out:  # the file's format, its libraries and its folder: refused before any image is scored
        check_table_path(args.out)
        writable(args.out)
    elif _rank0():
        ensure_dir(args.run_dir, "run folder")

    def check(columns: list[str]) -> None:
        if args.rank_by and args.rank_by not in columns:
            raise ConfigError(f"--rank-by {args.rank_by}: not a score column of this model; choose from "
                              f"{', '.join(columns)}{did_you_mean(args.rank_by, columns)}")

    o = _options(args, options.ScoreOptions)
    table = score(args.run_dir, args.data, o, progress=not args.quiet, check=check)
    if not _rank0():
        return
    out = Path(args.out) if args.out else table_path(args.run_dir, table, o)
    write_table(table, out)
    print(f"{len(table)} images of {table.info['dataset']} ({table.info['split']}) scored, k={args.k}: {out}")
    if args.top:
        from vaelab.plots import save_figure
        from vaelab.scores import top_figure

        path = out.with_name(out.stem + "-top.png")
        save_figure(top_figure(table, args.top, args.rank_by), path)
        print(f"the {args.top} most typical and most unusual images by {args.rank_by or default_rank(table.scores)}: {path}")


def cmd_ood(args: argparse.Namespace) -> None:
    """`vaelab ood`: out-of-distribution metrics per score, written as a report, numbers and histograms."""
    from vaelab.detection import ood

    r = ood(args.run_dir, args.inside, args.outside, _options(args, options.OodOptions), progress=not args.quiet)
    if not _rank0():
        return
    for name, rows in r["results"].items():
        print(f"{r['in']['dataset']} (in) vs {name} (out): AUROC per score")
        for col, m in sorted(rows.items(), key=lambda kv: -kv[1]["auroc"]):
            print(f"  {col:<22} AUROC {m['auroc']:.3f}  AUPRC {m['auprc']:.3f}  FPR80 {m['fpr80']:.3f}  "
                  f"FPR95 {m['fpr95']:.3f}")
    print(f"written to {r['files']['md']} (and {Path(r['files']['json']).name}, {Path(r['files']['png']).name})")


def cmd_encode(args: argparse.Namespace) -> None:
    """`vaelab encode`: the posterior means and standard deviations of a dataset, written to --out."""
    from vaelab.codes import CODE_FORMATS, encode, write_codes
    from vaelab.files import writable
    from vaelab.scores import check_table_path

    check_table_path(args.out, CODE_FORMATS)
    writable(args.out)
    table = encode(args.run_dir, args.data, _options(args, options.EncodeOptions), progress=not args.quiet)
    if _rank0():
        write_codes(table, args.out)
        which = " and ".join(f"{int((table['split'] == s).sum())} {s}" for s in ("train", "test") if (table["split"] == s).any())
        shapes = ["x".join(map(str, s)) for s in table.info["level_shapes"]]
        levels = f" in levels {', '.join(shapes)} (z_1 first)" if len(shapes) > 1 else ""
        print(f"codes of {len(table)} images of {table.info['dataset']} ({which}; "
              f"{table['mean'].shape[1]} dimensions{levels}): {args.out}")


def cmd_sample(args: argparse.Namespace) -> None:
    """`vaelab sample`: a grid of decoded prior samples written as a PNG."""
    from vaelab.explore import write_samples

    out = write_samples(args.run_dir, args.out, n=args.n, mode=args.mode, seed=args.seed, device=args.device,
                        temperature=args.temperature)
    print(f"wrote {out}")


def cmd_probe(args: argparse.Namespace) -> None:
    """`vaelab probe`: how much of the class a linear or MLP probe reads from a run's codes."""
    from vaelab.evaluate import format_probe, probe

    result = probe(args.run_dir, _options(args, options.ProbeOptions))
    print(format_probe(result), f"(written to {Path(args.run_dir) / 'probe.json'})", sep="\n")


def cmd_plot(args: argparse.Namespace) -> None:
    """`vaelab plot`: the named figures of a run written to RUN/plots (or --out)."""
    from vaelab.explore import plot
    from vaelab.runtime import resolve_device

    figure_options = {k: getattr(args, k) for k in ("kind", "levels", "span", "steps", "dims", "weights", "against",
                                                    "temperature", "rows", "images")}
    try:
        written = plot(args.run_dir, args.what, args.out, seed=args.seed, device=str(resolve_device(args.device)),
                       **figure_options)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for path in written:
        print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace) -> None:
    """`vaelab compare`: variants x seeds trained at equal epochs or equal time, with tables and a figure."""
    from vaelab.compare import check_variant, compare, parse_variant

    try:
        variants = [parse_variant(v) for v in args.variants]
        for v in variants:  # every variant's flags read as vaelab train reads them, before the first run
            check_variant(v, args.base)
        result = compare(variants, args.out, _options(args, options.CompareOptions))
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

    try:  # a lost torchrun peer is said, with exit code 1, as for every command
        serve(args.run_dir, args.host, args.port, device=str(resolve_device(args.device)), n=args.n, ready=ready)
    except KeyboardInterrupt:
        pass


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "score": cmd_score, "ood": cmd_ood, "encode": cmd_encode,
            "sample": cmd_sample, "plot": cmd_plot, "probe": cmd_probe, "serve": cmd_serve, "compare": cmd_compare}


def main(argv: list[str] | None = None) -> int:
    """The command line's entry point: parse, run one command, and turn known faults into one-line errors."""
    args = build_parser().parse_args(argv)
    code = _run(args)
    if "torch" in sys.modules:  # a command that never imported torch has no process group
        from vaelab.runtime import leave_process_group

        if leave_process_group():  # a torchrun worker whose work is done and on disk
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code


def _lost_peer_message(args: argparse.Namespace) -> str:
    """One line: which process was lost, what is kept, and how to go on."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    lost = f"rank {1 - rank}" if world == 2 else "another rank"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    if args.command != "train" or not run:
        return f"lost {lost} of this torchrun job ({world} processes: killed or crashed); run the command again"
    from vaelab.checkpoint import checkpoint_epoch

    epoch = checkpoint_epoch(run)
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch was saved yet"
    return (f"lost {lost} of this torchrun job ({world} processes: killed or crashed); {kept}; continue with "
            f"torchrun --nproc_per_node {world} -m vaelab train --resume {run}")


def _run(args: argparse.Namespace) -> int:
    """Run one command; errors become one line on stderr and an exit code."""
    from vaelab.checkpoint import RunError
    from vaelab.data import DataError
    from vaelab.files import FileError, describe
    from vaelab.runtime import DeviceError, lost_peer
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
        if not lost_peer(e):
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
