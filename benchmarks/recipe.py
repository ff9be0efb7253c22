"""The default MNIST recipe, end to end, as a user runs it:

    vaelab train --dataset mnist --out RUN        (all other settings default)
    vaelab evaluate RUN --k 1000                  (full 10k test set)

    python benchmarks/recipe.py [--seeds 0 1 2] [--out benchmarks/results]

Reports training wall time, test IS-NLL (k=1000, dynamic binarisation: the test set
is binarised once with a fixed seed) with its standard error, and evaluation time,
per seed and as mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from common import Run, vaelab


def run(seed: int, work: Path, extra: list[str]) -> dict:
    out = work / f"seed{seed}"
    t = time.perf_counter()
    vaelab("train", "--dataset", "mnist", "--seed", seed, "--out", out, "--quiet", *extra)
    train_s = time.perf_counter() - t
    rows = Run(out).records()
    t = time.perf_counter()
    vaelab("evaluate", out, "--k", "1000", "--quiet")
    eval_wall = time.perf_counter() - t
    ev = Run(out).evaluation(k=1000)
    return {"seed": seed, "train_wall_s": round(train_s, 1), "train_epochs_s": round(sum(r["seconds"] for r in rows), 1),
            "epochs": len(rows), "final_test_elbo_1sample": rows[-1]["test_elbo"], "elbo": ev["elbo"],
            "nll": ev["nll"], "nll_stderr": ev["nll_stderr"], "eval_s": ev["seconds"],
            "eval_wall_s": round(eval_wall, 1), "binarization": ev["binarization_detail"], "k": ev["k"], "n": ev["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description="default MNIST recipe: train, then IS-NLL with k=1000")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("extra", nargs="*", help="extra `vaelab train` flags after --, to try other recipes")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vaelab-recipe-"))
    rows = []
    for s in args.seeds:
        rows.append(run(s, work, args.extra))
        print(json.dumps(rows[-1]), flush=True)
    nll = [r["nll"] for r in rows]
    summary = {"date": str(date.today()), "extra_flags": args.extra, "runs": rows,
               "nll_mean": statistics.mean(nll), "nll_std": statistics.stdev(nll) if len(nll) > 1 else 0.0}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"recipe-{summary['date']}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"IS-NLL (k=1000) {summary['nll_mean']:.2f} +- {summary['nll_std']:.2f} over {len(rows)} seed(s); "
          f"training {statistics.mean(r['train_wall_s'] for r in rows):.0f} s; "
          f"evaluation {statistics.mean(r['eval_s'] for r in rows):.0f} s -> {path}")


if __name__ == "__main__":
    main()
