"""Do normalizing flows train with the default recipe? Seeds x flow types, no --clip-grad.

    python benchmarks/flows.py [--seeds 0,1,2,3,4] [--types planar,radial] [--flows 10] [--epochs 25]
                               [--k 0] [--out benchmarks/results] [--date YYYY-MM-DD]

Each run is `vaelab train --dataset mnist --flows K --flow-type T --seed S --epochs E`
(the default recipe otherwise: 784-512-512-50 MLP, Bernoulli, batch 128, Adam lr 2e-3 with
100 warm-up steps and exp decay), as a user types it, in its own process. The script
records whether it finished or stopped on a non-finite loss, the largest per-epoch train
loss, the last test ELBO and seconds per epoch; with --k > 0 also `vaelab evaluate --k K`
(IS-NLL on the 10k test images, test images binarised once). Results go to
benchmarks/results/flows-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from common import Run, vaelab
from vaelab.runtime import cpu_name


def one_run(folder: Path, flow_type: str, flows: int, seed: int, epochs: int, k: int, env: dict) -> dict:
    run = folder / f"{flow_type}-{seed}"
    start = time.perf_counter()
    # check=False, capture=True: a run may stop on a non-finite loss; its exit code and last line are recorded
    done = vaelab("train", "--dataset", "mnist", "--flows", flows, "--flow-type", flow_type, "--seed", seed,
                  "--epochs", epochs, "--out", run, "--quiet", env=env, check=False, capture=True)
    row = {"flow_type": flow_type, "flows": flows, "seed": seed, "epochs_asked": epochs,
           "exit_code": done.returncode, "wall_s": round(time.perf_counter() - start, 1),
           "message": done.stderr.strip().splitlines()[-1] if done.returncode else ""}
    records = Run(run).records()  # [] when the run wrote none
    row.update(epochs_done=len(records), finished=done.returncode == 0 and len(records) == epochs,
               max_train_loss=max((r["train_loss"] for r in records), default=None),
               test_elbo=[round(r["test_elbo"], 3) for r in records],
               seconds_per_epoch=round(sum(r["seconds"] for r in records) / max(1, len(records)), 2))
    if k and row["finished"]:
        ev = vaelab("evaluate", run, "--k", k, "--quiet", env=env, check=False, capture=True)
        if ev.returncode == 0:
            result = Run(run).evaluation(k=int(k))
            row.update(nll=round(result["nll"], 3), nll_stderr=round(result["nll_stderr"], 3), k=k)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--types", default="planar,radial")
    p.add_argument("--flows", type=int, default=10)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--k", type=int, default=0, help="IS samples for evaluate after each finished run (0: none)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--date", default=date.today().isoformat())
    p.add_argument("--tag", default="", help="suffix of the result file name")
    args = p.parse_args()
    env = {"VAELAB_DATA": os.environ.get("VAELAB_DATA", "/work/shared/data")}  # added to os.environ
    rows = []
    out = Path(args.out) / f"flows-{args.date}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> dict:  # after every run: an interrupted benchmark keeps what it measured
        result = {"date": args.date, "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                  "command": "python benchmarks/flows.py " + " ".join(sys.argv[1:]), "rows": rows,
                  "all_finished": all(r["finished"] for r in rows)}
        out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    with tempfile.TemporaryDirectory() as tmp:
        for flow_type in args.types.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(one_run(Path(tmp), flow_type, args.flows, seed, args.epochs, args.k, env))
                r = rows[-1]
                print(f"{flow_type:7s} seed {seed}: {'finished' if r['finished'] else 'STOPPED'} "
                      f"{r['epochs_done']}/{args.epochs} epochs, max train loss {r['max_train_loss']}, "
                      f"last test ELBO {r['test_elbo'][-1] if r['test_elbo'] else None}"
                      + (f", IS-NLL {r['nll']}" if "nll" in r else "") + (f"  [{r['message']}]" if r["message"] else ""),
                      flush=True)
                write()
    print(f"wrote {out}; all finished: {write()['all_finished']}")


if __name__ == "__main__":
    main()
