"""VAE vs CVAE vs ICVAE (Moyer et al. 2018) vs the adversarially censored CVAE (Edwards &
Storkey 2016) on MNIST with c = digit label.

    python benchmarks/invariance.py [--seeds 0 1 2] [--epochs 10] [--lam 1] [--probe-layers 2]
        [--models vae cvae icvae censored] [--censor-lam 5]

A sweep of lambda with the trade-off figure is `vaelab compare --probe-layers 2` (docs/benchmarks.md).

Each model trains with the same networks, latent size and epochs (flags below are
shared), then `vaelab probe` trains a fresh classifier to predict the digit from the
training set's posterior means and reports its test accuracy next to the majority-class
rate, with the reconstruction MSE of the test images. Prints mean +- std over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import date
from pathlib import Path

from common import vaelab


def main() -> None:
    ap = argparse.ArgumentParser(description="VAE / CVAE / ICVAE invariance comparison")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--lam", type=float, default=None, help="ICVAE lambda (default: the model's own)")
    ap.add_argument("--censor-lam", type=float, default=5.0, help="the censored model's lambda")
    ap.add_argument("--beta", type=float, default=1.0, help="KL weight, the same for all three")
    ap.add_argument("--probe-layers", type=int, default=2)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--models", nargs="+", default=["vae", "cvae", "icvae"],
                    choices=["vae", "cvae", "icvae", "censored"])
    ap.add_argument("--tag", default="invariance")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vaelab-invariance-"))
    shared = ["--dataset", args.dataset, "--epochs", str(args.epochs), "--latent-dim", str(args.latent_dim),
              "--beta", str(args.beta), "--quiet"]
    icvae = [] if args.lam is None else ["--lambda", str(args.lam)]
    every = {"vae": [], "cvae": [], "icvae": icvae, "censored": ["--lambda", str(args.censor_lam)]}
    models = {name: flags for name, flags in every.items() if name in args.models}
    rows = []
    for seed in args.seeds:
        for name, extra in models.items():
            run = work / f"{name}-seed{seed}"
            vaelab("train", "--model", name, *shared, *extra, "--seed", str(seed), "--out", str(run))
            vaelab("probe", str(run), "--probe-layers", str(args.probe_layers), "--seed", str(seed))
            r = json.loads((run / "probe.json").read_text())
            rows.append({"model": name, "seed": seed, **{k: r[k] for k in ("accuracy", "majority", "recon_mse")}})
            print(json.dumps(rows[-1]), flush=True)
    table = {}
    for name in models:
        mine = [r for r in rows if r["model"] == name]
        acc = [r["accuracy"] for r in mine]
        mse = [r["recon_mse"] for r in mine]
        table[name] = {"accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                       "recon_mse_mean": statistics.mean(mse), "recon_mse_std": statistics.stdev(mse) if len(mse) > 1 else 0.0,
                       "majority": mine[0]["majority"]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{args.tag}-{date.today()}.json"
    path.write_text(json.dumps({"date": str(date.today()), "args": vars(args), "rows": rows, "table": table},
                               indent=2) + "\n")
    print(f"\n| model | probe accuracy ({args.probe_layers} hidden layers, {len(args.seeds)} seeds) | "
          "majority rate | recon MSE |")
    print("|---|---|---|---|")
    for name, t in table.items():
        print(f"| {name} | {t['accuracy_mean']:.3f} +- {t['accuracy_std']:.3f} | {t['majority']:.3f} | "
              f"{t['recon_mse_mean']:.4f} +- {t['recon_mse_std']:.4f} |")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
