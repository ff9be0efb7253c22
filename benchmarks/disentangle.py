"""beta-VAE (beta = 1) against beta-TCVAE on dSprites, each trained for a stated budget, and
the speed of the disentanglement metrics and of dSprites' generation:

    python benchmarks/disentangle.py models [--minutes 60] [--seeds 0,1,2] [--threads 2] [--metrics mig,dci,...]
    python benchmarks/disentangle.py speed [--run RUN] [--threads 2]  # metrics on 10,000 codes; generation
    python benchmarks/disentangle.py all --quick            # every part, tiny: checks the script

`models`: each model is trained with `vaelab train --minutes M` (vaelab's budget of summed
epoch time, test pass included; it stops before an epoch that would overrun it) for each
seed, then `vaelab evaluate RUN --metrics mig,dci,sap,factorvae,betavae`, and its traversal
and MI-matrix figures are drawn with `vaelab plot` (the first seed's are kept next to the
result file). The target: beta-TCVAE's MIG >= 0.25 and above beta-VAE's, mean over seeds.

The recipe (flags in RECIPE and MODELS below), after the published beta-TCVAE setups
(Chen et al. 2018: 10 latents, Adam at 1e-3; Locatello et al. 2019: 10 latents, Adam at
1e-4 to 1e-3, batch 64) and sized for CPUs:
- a conv net of four 2x levels of 16, 32, 32 and 64 channels (64x64 -> 4x4; vaelab's conv
  levels are a 3x3 conv and a stride-2 3x3 conv, the decoder upsamples by sub-pixel
  convolution), 10 latents, Bernoulli likelihood on the binary pixels;
- Adam at 1e-3, constant after vaelab's 100-step warm-up (`--schedule constant`), batch 64;
- beta-TCVAE: `--objective tcvae --beta 6` (the weight of the total correlation; the
  index-code MI and dimension-wise KL keep weight 1), minibatch-stratified sampling with N
  the training set's size, as vaelab sets it; beta-VAE: the plain ELBO, `--beta 1`;
- a fixed random 20,000 of the 737,280 images (`--subset`, the same for every run and
  model): vaelab checks its time budget at the end of an epoch, so an epoch has to be a small
  part of the budget; the test split (which the per-epoch test ELBO and MIG, DCI and SAP
  use) is a fixed random 10,000 of them. The FactorVAE and beta-VAE scores draw their images
  from the whole grid.

Published budgets, for comparison: Locatello et al. trained 300,000 steps of batch 64 (19.2
million images); Chen et al.'s code defaults to 50 epochs of dSprites at batch 2048 (36.9 million).
The result file records the images each run saw (epochs x subset).

`speed`: (1) dSprites generated into a fresh folder (all 737,280 images, bit-packed), then
loaded again from that cache; (2) each metric on 10,000 codes: the posterior means of the
test images, from `--run`'s encoder or, without one, from the recipe's network at its random
initialisation. The FactorVAE and beta-VAE scores encode their own draws (about 87,000 and
115,000 images); their encoder time is measured apart from the metric's own.

The result goes to benchmarks/results/disentangle[-TAG]-<date>.json with the machine, the
commands and the raw numbers. `--quick` shrinks everything (a few hundred images, a tiny
net, one epoch, MIG and DCI only) to check the script, not to measure; `--dataset xyobject`
runs it on the small colour dataset (the tests do, to skip dSprites' generation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Run, chosen_parts, machine, vaelab  # noqa: E402

HERE = Path(__file__).parent
RECIPE = ["--net", "conv", "--hidden", "16,32,32,64", "--latent-dim", "10", "--batch-size", "64", "--lr", "1e-3",
          "--schedule", "constant"]
MODELS = {"beta-vae": ["--beta", "1"], "beta-tcvae": ["--objective", "tcvae", "--beta", "6"]}
QUICK_NET = ["--hidden", "4", "--latent-dim", "4"]  # one 2x level of 4 channels: checks the script
QUICK_COUNTS = {"factorvae": {"votes": (20, 10), "batch": 8, "variance_points": 300},
                "betavae": {"n_train": 20, "n_eval": 10, "batch": 8}}  # --quick: the intervention scores' draws, tiny
METRICS = ["mig", "dci", "sap", "factorvae", "betavae"]
HEADLINES = ["mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "sap", "factorvae_score",
             "betavae_score"]
PUBLISHED = {
    "Locatello et al. 2019": "MIG mostly below 0.4 across methods, hyperparameters and seeds on dSprites "
                             "(300,000 steps of batch 64, 19.2 million images per model)",
    "Chen et al. 2018": "beta-TCVAE's MIG on dSprites above beta-VAE's at the same beta; their code's defaults train 50 "
                        "epochs at batch 2048 (36.9 million images per model)",
}
PUBLISHED_IMAGES = {"Locatello et al. 2019": 300_000 * 64, "Chen et al. 2018": 50 * 737_280}


def today() -> str:
    return datetime.date.today().isoformat()


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def command(flags: list[object]) -> str:
    return "vaelab " + " ".join(shlex.quote(str(f)) for f in flags)


def data_flags(a) -> list[str]:
    flags = ["--dataset", a.dataset, "--subset", str(a.subset)]
    return flags + (["--data-dir", str(a.data_dir)] if a.data_dir else [])


# ------------------------------------------------------------------ the parts
def models(a, work: Path) -> dict:
    """Train each model for each seed within the budget, evaluate its metrics, draw its figures."""
    from vaelab.factors import FACTOR_DATASETS

    metrics = ["mig", "dci"] if a.quick else a.metrics
    n_train = a.subset or FACTOR_DATASETS[a.dataset].n
    rows, commands, figures = {}, [], {}
    for name in a.models:
        flags, runs = MODELS[name], []
        for seed in a.seeds:
            run = work / f"{name}-seed{seed}"
            train = ["train", *data_flags(a), *RECIPE, *flags, "--minutes", a.minutes, "--epochs", a.max_epochs,
                     "--seed", seed, "--out", run, "--overwrite", *a.extra]
            evaluate = ["evaluate", run, "--metrics", ",".join(metrics), "--out", run / "disentangle.json",
                        *(["--n", a.n] if a.n else [])]
            for flags_ in (train, evaluate):
                vaelab(*flags_, threads=a.threads)
                commands.append(command(flags_))
            ev = json.loads((run / "disentangle.json").read_text())
            records = Run(run).records()
            runs.append({"seed": seed, "epochs": records[-1]["epoch"], "images_trained": records[-1]["epoch"] * n_train,
                         "train_seconds": round(sum(r["seconds"] for r in records), 1),
                         "test_elbo": records[-1].get("test_elbo"), "active_units": records[-1].get("active_units"),
                         **{k: ev[k] for k in HEADLINES if k in ev},
                         "points": {m: ev["disentanglement"][m]["points"] for m in metrics},
                         "sklearn_version": ev["disentanglement"][metrics[0]]["sklearn_version"],
                         "evaluate_seconds": ev.get("seconds")})
            print(name, {k: runs[-1][k] for k in ("seed", "epochs", *[h for h in HEADLINES if h in runs[-1]])},
                  flush=True)
            if seed == a.seeds[0]:  # the first seed's figures, kept next to the result
                plot = ["plot", run, "--what", "traversal,mi-matrix", "--out", run / "figures"]
                vaelab(*plot, threads=a.threads)
                commands.append(command(plot))
                figures[name] = run / "figures"
        rows[name] = {"flags": RECIPE + flags, "runs": runs,
                      "summary": {k: mean_std([r[k] for r in runs]) for k in HEADLINES if k in runs[0]}}
    mig = {name: row["summary"]["mig"]["mean"] for name, row in rows.items()}
    met = mig["beta-tcvae"] >= 0.25 and mig["beta-tcvae"] > mig["beta-vae"] if len(mig) == len(MODELS) else None
    images = statistics.mean(r["images_trained"] for row in rows.values() for r in row["runs"])
    return {"dataset": a.dataset, "subset": a.subset, "minutes_per_model": a.minutes, "seeds": a.seeds,
            "threads": a.threads, "metrics": metrics, "models": rows, "commands": commands,
            "target": "beta-TCVAE MIG >= 0.25, above beta-VAE (beta = 1)",
            "target_met": met, "published": PUBLISHED,
            "images_trained_mean": images,
            "budget_share_of_published": {k: images / v for k, v in PUBLISHED_IMAGES.items()},
            "_figures": figures}


def _timed_encoder(model, factors, counter: dict[str, float]):
    """Factor codes (K, F) -> posterior means (K, D), as `vaelab evaluate` encodes the intervention
    scores' draws, adding its own seconds and images to `counter`."""
    from vaelab.evaluate import posterior_means

    def encode(f: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = [posterior_means(model, factors.images(f[i: i + 2000]).float().div_(255)).double()
               for i in range(0, len(f), 2000)]
        counter["seconds"] += time.perf_counter() - start
        counter["images"] += len(f)
        return torch.cat(out).numpy()

    return encode


def speed(a, work: Path) -> dict:
    """Generation of the dataset into a fresh folder and from its cache; each metric on `a.codes` codes."""
    from vaelab import disentangle as dis
    from vaelab.config import ModelConfig
    from vaelab.evaluate import posterior_means
    from vaelab.factors import load_factor_dataset
    from vaelab.models import build_model

    torch.set_num_threads(a.threads)
    fresh = work / f"fresh-{a.dataset}"
    shutil.rmtree(fresh, ignore_errors=True)
    start = time.perf_counter()
    load_factor_dataset(a.dataset, fresh)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    data = load_factor_dataset(a.dataset, fresh)
    cached = time.perf_counter() - start
    size = sum(p.stat().st_size for p in fresh.iterdir())
    generation = {"images": len(data.train), "bytes": size, "generate_seconds": round(generated, 2),
                  "cached_load_seconds": round(cached, 3), "target_seconds": 60}
    print(f"{a.dataset}: generated in {generated:.1f} s, loaded from the cache in {cached:.2f} s", flush=True)

    if a.run:
        model, source = Run(a.run).model, f"trained run {a.run}"
    else:
        torch.manual_seed(0)
        flags = dict(zip(RECIPE[::2], RECIPE[1::2]))
        hidden, latent = ((4,), 4) if a.quick else (tuple(map(int, flags["--hidden"].split(","))),
                                                     int(flags["--latent-dim"]))
        cfg = ModelConfig(net=flags["--net"], hidden=hidden, latent_dim=latent, likelihood="bernoulli")
        model, source = build_model(cfg, data.image_shape).eval(), "the recipe's network at its random initialisation"
    test = data.test.head(a.codes)
    images = test.images.load().float().div_(255)
    start = time.perf_counter()
    codes = posterior_means(model, images).double().numpy()
    encode_seconds = time.perf_counter() - start
    truth = test.factors.numpy()
    rows = {}
    for m in a.metrics:
        counter = {"seconds": 0.0, "images": 0}
        encode = _timed_encoder(model, data.factors, counter)
        start = time.perf_counter()
        if m in ("factorvae", "betavae"):
            r = getattr(dis, f"{m}_score")(encode, data.factors.sizes, **(QUICK_COUNTS[m] if a.quick else {}))
        else:  # DCI's trees grow on the threads given, as `vaelab evaluate` grows them
            r = getattr(dis, m)(codes, truth, **({"n_jobs": a.threads} if m == "dci" else {}))
        total = time.perf_counter() - start
        rows[m] = {"points": r["points"], **({"active_dims": r["factorvae_active_dims"]} if m == "factorvae" else {}),
                   "seconds": round(total, 2), "metric_seconds": round(total - counter["seconds"], 2),
                   "encoder_seconds": round(counter["seconds"], 2), "images_encoded": counter["images"]}
        print(m, rows[m], flush=True)
    return {"threads": a.threads, "generation": generation,
            "metrics": {"codes": len(codes), "latent_dim": codes.shape[1], "encoder": source,
                        "encode_test_codes_seconds": round(encode_seconds, 2), "per_metric": rows,
                        "sklearn_version": dis.require_sklearn(), "target_seconds": 60,
                        "how": "mig, dci, sap on the codes of the test images; factorvae and betavae draw and "
                               "encode their own images: metric_seconds leaves that encoding out"}}


PARTS = {"models": models, "speed": speed}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", help=f"one part or several, comma-separated: {', '.join(PARTS)}; or all")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--models", default=",".join(MODELS), help=f"models: comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=60, help="training budget per model and seed (vaelab's --minutes)")
    p.add_argument("--max-epochs", type=int, default=10_000, help="epochs at most within --minutes")
    p.add_argument("--subset", type=int, default=20_000, help="training images, a fixed random subset")
    p.add_argument("--metrics", default=",".join(METRICS), help="the metrics evaluated (models) or timed (speed)")
    p.add_argument("--n", type=int, default=0, help="test codes for MIG, DCI and SAP (0: the whole test split)")
    p.add_argument("--codes", type=int, default=10_000, help="speed: the number of codes the metrics are timed on")
    p.add_argument("--run", type=Path, help="speed: a trained run whose encoder gives the codes")
    p.add_argument("--threads", type=int, default=2, help="threads of each vaelab process")
    p.add_argument("--dataset", default="dsprites", choices=["dsprites", "xyobject"])
    p.add_argument("--data-dir", type=Path, help="where the dataset is cached (default: the user cache)")
    p.add_argument("--extra", default="", help="flags added to every training, e.g. '--hidden 4'")
    p.add_argument("--tag", default="", help="added to the result's file name, e.g. 15min-seed0")
    p.add_argument("--note", default="", help="recorded in the result, e.g. what else the machine was running")
    p.add_argument("--work", type=Path, help="where runs go (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    a.parts = chosen_parts(p, a.what, PARTS)
    a.models, a.metrics = a.models.split(","), a.metrics.split(",")
    if set(a.metrics) - set(METRICS) or "mig" not in a.metrics:
        p.error(f"--metrics takes mig and any of {', '.join(METRICS[1:])}")
    if set(a.models) - set(MODELS):
        p.error(f"unknown model {sorted(set(a.models) - set(MODELS))[0]}; choose from {', '.join(MODELS)}")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.extra = shlex.split(a.extra)
    if a.quick:  # checks the script: one epoch on a few hundred images, a tiny net, few codes
        a.seeds, a.minutes, a.max_epochs, a.subset, a.n, a.codes = a.seeds[:1], 0, 1, 300, 300, 300
        a.extra = [*QUICK_NET, *a.extra]
        a.tag = "-".join(filter(None, ["quick", a.tag]))
    return a


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    result = {"date": today(), "machine": machine(), "command": " ".join(["python", "benchmarks/disentangle.py",
                                                                           *map(shlex.quote, argv)])}
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(filter(None, ["disentangle", a.tag, today()]))
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in a.parts:
            result[part] = PARTS[part](a, work)
        for name, folder in result.get("models", {}).pop("_figures", {}).items():
            for png in sorted(Path(folder).glob("*.png")):
                shutil.copy(png, a.out / f"{stem}-{name}-{png.name}")
    if a.note:
        result["note"] = a.note
    path = a.out / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
