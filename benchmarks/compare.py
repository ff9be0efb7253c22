"""Train several variants with the same training-time budget and compare test IS-NLL.

    python benchmarks/compare.py --budget 170 --n 10000 \\
        vae="" iwae5="--objective iwae --samples 5" planar10="--flows 10" conv="--net conv --hidden 32,64"

Each variant is `vaelab train --dataset mnist` plus its flags. A one-epoch probe run
measures the epoch time of each variant, and the variant then trains for as many
epochs as fit in `--budget` seconds, so every variant gets the same wall time (not the
same number of epochs). Evaluation: `vaelab evaluate --k 1000` on the first `--n` test
images (dynamic binarisation: the test set binarised once with a fixed seed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path


def vaelab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vaelab.cli", *args, "--quiet"], check=True, stdout=subprocess.DEVNULL)


def run_variant(name: str, flags: list[str], budget: float, n: int, k: int, work: Path, base: list[str],
                fixed_epochs: int | None = None) -> dict:
    if fixed_epochs:
        epochs = fixed_epochs
    else:
        probe = work / f"{name}-probe"
        vaelab("train", *base, *flags, "--epochs", "1", "--out", str(probe))
        epoch_s = json.loads((probe / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
        epochs = max(1, int(budget // epoch_s))
    out = work / name
    vaelab("train", *base, *flags, "--epochs", str(epochs), "--out", str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vaelab("evaluate", str(out), "--k", str(k), "--n", str(n))
    ev = json.loads((out / "eval.json").read_text())
    return {"name": name, "flags": " ".join(flags), "epochs": epochs, "train_s": round(sum(r["seconds"] for r in rows), 1),
            "nll": ev["nll"], "nll_stderr": ev["nll_stderr"], "elbo": ev["elbo"], "n": ev["n"], "k": ev["k"],
            "bits_per_dim": ev.get("bits_per_dim"), "binarization": ev["binarization_detail"], "run": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description="equal-time comparison of vaelab variants")
    ap.add_argument("variants", nargs="+", help='NAME="flags for vaelab train"')
    ap.add_argument("--budget", type=float, default=170.0, help="training seconds per variant")
    ap.add_argument("--epochs", type=int, help="train every variant for this many epochs instead of a time budget")
    ap.add_argument("--n", type=int, default=10000, help="test images for the IS-NLL")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--base", default="", help="flags shared by every variant")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="compare")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vaelab-compare-"))
    base = ["--dataset", args.dataset, *shlex.split(args.base)]
    rows = []
    for spec in args.variants:
        name, _, flags = spec.partition("=")
        rows.append(run_variant(name, shlex.split(flags), args.budget, args.n, args.k, work, base, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.tag}-{date.today()}.json"
    path.write_text(json.dumps({"date": str(date.today()), "budget_s": None if args.epochs else args.budget,
                                "epochs": args.epochs, "base": args.base,
                                "rows": rows}, indent=2) + "\n")
    budget = "epochs" if args.epochs else f"epochs in {args.budget:.0f} s"
    print(f"\n| variant | flags | {budget} | train s | test ELBO | IS-NLL (k={args.k}, n={args.n}) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        extra = f", {r['bits_per_dim']:.3f} bits/dim" if r.get("bits_per_dim") else ""
        print(f"| {r['name']} | `{r['flags']}` | {r['epochs']} | {r['train_s']:.0f} | {r['elbo']:.2f} | "
              f"{r['nll']:.2f} +- {r['nll_stderr']:.2f}{extra} |")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
