"""The measurements behind docs/doing-better.md: `vaelab compare` over the seed notebooks'
closing questions, at equal epochs and at equal training time, 3 seeds each.

    python benchmarks/doing_better.py [--parts target,epochs,time] [--work runs/doing-better]
                                      [--out benchmarks/results] [--date YYYY-MM-DD]

Parts (each one `vaelab compare` command, printed before it runs; run again to resume):
- target: the default recipe given 3 minutes of training, IS-NLL with k=1000 on the full
  10,000-image test set (the issue's 3-CPU-minute target) and FD;
- epochs: every variant for 10 epochs, IS-NLL (k=1000) and FD on the first 2,000 test images;
- time: every variant for 1 minute of training, IS-NLL (k=1000) on the first 2,000 test images.
Each part's compare.md/.json/.csv, compare.png and samples.png are copied to
OUT/doing-better-DATE/PART/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

VARIANTS = {
    "vae": "",
    "iwae5": "--objective iwae --samples 5",
    "planar10": "--flows 10",
    "mog10": "--prior mog",
    "vamp100": "--prior vamp --prior-components 100",
    "hvae": "--model hvae",
    "ladder": "--model hvae --inference ladder",
    "wider": "--hidden 1024,1024 --decoder-hidden 512,512",
    "deeper": "--hidden 512,512,512 --decoder-hidden 256,256,256",
}

PARTS = {
    "target": (["--minutes", "3", "--metrics", "nll,fd"], ["vae"]),
    "epochs": (["--epochs", "10", "--n", "2000", "--metrics", "nll,fd"], list(VARIANTS)),
    # nll only: FD at equal epochs answers the sample-quality question; most-asked first
    "time": (["--minutes", "1", "--n", "2000", "--metrics", "nll"],
             ["vae", "iwae5", "hvae", "planar10", "mog10", "vamp100", "wider", "deeper", "ladder"]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="target,epochs,time")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", default="runs/doing-better", help="where the runs live (kept, so a rerun resumes)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--date", default=date.today().isoformat())
    args = p.parse_args()
    env = {**os.environ, "VAELAB_DATA": os.environ.get("VAELAB_DATA", "/work/shared/data")}
    for part in args.parts.split(","):
        budget, names = PARTS[part]
        work = Path(args.work) / part
        cmd = [sys.executable, "-m", "vaelab", "compare", "--out", str(work), "--seeds", args.seeds,
               "--base=--dataset mnist", "--k", "1000", *budget, *[f"{n}={VARIANTS[n]}" for n in names]]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=True)
        dest = Path(args.out) / f"doing-better-{args.date}" / part
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("compare.md", "compare.json", "compare.csv", "compare.png", "samples.png"):
            if (work / name).exists():
                shutil.copy(work / name, dest / name)
        print(f"copied {part} results to {dest}", flush=True)


if __name__ == "__main__":
    main()
