"""Denoising training, measured: does a model trained with ``--denoise`` reconstruct noisy
test images closer to the clean ones than the noisy images themselves are?

    python benchmarks/denoise.py                                  # the default variants below
    python benchmarks/denoise.py --epochs 10 --jobs 3 plain uniform:0.3 uniform:0-0.4
    python benchmarks/denoise.py --work runs/denoise ...          # keep the runs; rerun to reuse them
    python benchmarks/denoise.py --base "--model ae" --epochs 10 --tag denoise-ae plain uniform:0-0.4

Each variant is ``vaelab train --dataset mnist --seed S --epochs E`` plus `--base` plus
``--denoise VARIANT`` (``plain``: no flag). Every noise kind that some variant trains on is then
measured on the first 1000 test images (binarised once with a fixed seed) at
``--levels``, for the variants trained on that kind and the plain model, with

    vaelab plot RUN --what denoise --noise KIND --levels ... --against OTHER_RUNS

which gives, per model and level, the mean per-image PSNR of the noisy input and of the
reconstruction against the clean image. A variant "beats the noise" when its
reconstruction's PSNR is above the noisy input's at every level. Also reported: the
final test ELBO on clean images (what denoising costs the generative model; for the AE,
log p(x | z = f(x))) and the
training time. `--jobs` trains variants side by side, each with `--threads` threads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from common import Run, vaelab

DEFAULT_VARIANTS = ["plain", "uniform:0.3", "uniform:0-0.4", "salt-pepper:0-0.4", "gaussian:0-0.4"]


def folder(variant: str) -> str:
    return variant.replace(":", "-")


def train(variant: str, args: argparse.Namespace, work: Path) -> dict:
    out = work / folder(variant)
    flags = [] if variant == "plain" else ["--denoise", variant]
    rows: list[dict] = []
    if (out / "metrics.jsonl").is_file():
        cfg = Run(out).config.train
        if cfg.denoise != (flags[1] if flags else None) or cfg.seed != args.seed:
            raise SystemExit(f"{out} holds a run with other settings; remove it or choose another --work")
        rows = Run(out).records()
    t = time.perf_counter()
    reused = len(rows) >= args.epochs
    if not reused:  # a run from an earlier call is reused, or continued
        if rows:
            vaelab("train", "--resume", str(out), "--epochs", str(args.epochs), "--quiet", threads=args.threads)
        else:
            vaelab("train", "--dataset", "mnist", "--seed", str(args.seed), "--epochs", str(args.epochs),
                   "--device", args.device, "--out", str(out), "--quiet", *shlex.split(args.base), *flags,
                   threads=args.threads)
        rows = Run(out).records()
    return {"variant": variant, "run": str(out), "epochs": len(rows), "reused": reused,
            "wall_s": round(time.perf_counter() - t, 1),
            "train_s": round(sum(r["seconds"] for r in rows), 1),
            # the test bound on clean images; for the AE, log p(x | z = f(x))
            "test_elbo": rows[-1].get("test_elbo", -rows[-1]["test_loss"])}


def measure(kind: str, runs: list[str], levels: str, work: Path, device: str) -> list[dict]:
    """The denoising tables of `runs` (the first one drawn on top) on `kind` noise."""
    out = work / f"plots-{kind}"
    others = [",".join(runs[1:])] if len(runs) > 1 else []
    vaelab("plot", runs[0], "--what", "denoise", "--noise", kind, "--levels", levels, "--out", str(out),
           "--device", device,
           *(["--against", *others] if others else []))
    numbers = json.loads((out / "denoise.json").read_text())
    return [{"run": m["run"], "denoise": m["denoise"], "psnr_recon_clean": m["psnr_recon_clean"], "levels": m["levels"],
             "beats_noisy_at_every_level": all(r["psnr_recon"] > r["psnr_noisy"] for r in m["levels"])}
            for m in numbers["models"]]


def main() -> None:
    ap = argparse.ArgumentParser(description="denoising training: PSNR of reconstructions vs noisy inputs")
    ap.add_argument("variants", nargs="*", default=DEFAULT_VARIANTS,
                    help="plain, or a --denoise value KIND:LEVEL / KIND:LOW-HIGH")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default="", help='flags shared by every variant, e.g. "--model ae"')
    ap.add_argument("--levels", default="0.1,0.2,0.3,0.4")
    ap.add_argument("--jobs", type=int, default=1, help="variants trained side by side")
    ap.add_argument("--threads", type=int, default=None, help="threads per training (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="(default cpu)")
    ap.add_argument("--work", help="folder for the runs (default: a fresh temporary folder)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="denoise")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vaelab-denoise-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(["plain", *args.variants]))  # the plain model is the reference
    with ThreadPoolExecutor(args.jobs) as pool:
        trained = list(pool.map(lambda v: train(v, args, work), variants))
    for r in trained:
        print(json.dumps(r), flush=True)
    by_variant = {r["variant"]: r for r in trained}
    kinds = list(dict.fromkeys(v.partition(":")[0] for v in variants if v != "plain")) or ["uniform"]
    tables = {}
    for kind in kinds:
        runs = [by_variant[v]["run"] for v in variants if v.startswith(kind + ":")] + [by_variant["plain"]["run"]]
        tables[kind] = measure(kind, runs, args.levels, work, args.device)
    summary = {"date": str(date.today()), "base": args.base, "epochs": args.epochs, "seed": args.seed,
               "device": args.device,
               "n_test_images": 1000, "levels_arg": args.levels,
               "psnr": "mean over images of 10 log10(1 / MSE) against the clean (binarised) test image",
               "training": trained, "tables": tables}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.tag}-{summary['date']}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    for kind, models in tables.items():
        levels = [r["level"] for r in models[0]["levels"]]
        print(f"\n{kind} noise: PSNR (dB) vs the clean image, {args.epochs} epochs")
        print("| model | test ELBO | clean input | " + " | ".join(f"{lv:g}" for lv in levels) + " | beats noisy |")
        print("|---|---|---|" + "---|" * len(levels) + "---|")
        print("| noisy input | | | " + " | ".join(f"{r['psnr_noisy']:.2f}" for r in models[0]["levels"]) + " | |")
        for m in models:
            variant = m["denoise"] or "plain"
            print(f"| {variant} | {by_variant[variant]['test_elbo']:.2f} | {m['psnr_recon_clean']:.2f} | "
                  + " | ".join(f"{r['psnr_recon']:.2f}" for r in m["levels"])
                  + f" | {'yes' if m['beats_noisy_at_every_level'] else 'no'} |")
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
