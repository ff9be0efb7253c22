"""Out-of-distribution detection and scoring speed: does a vaelab model know which images are
not from its training data?

    python benchmarks/ood.py data                       # noise.npz and constant.npz, 2,000 test images each
    python benchmarks/ood.py train [--seeds 0,1,2] [--minutes 30] [--in fashion-mnist,mnist]
    python benchmarks/ood.py detect [--seeds 0,1,2] [--k 100] [--in fashion-mnist,mnist]
    python benchmarks/ood.py table                      # today's detect results as one Markdown table
    python benchmarks/ood.py throughput [--k 1,100]
    python benchmarks/ood.py memory [--images 100000]
    python benchmarks/ood.py example                    # a colour folder: icons vs textures and Tux Paint stamps

`train` fits the OOD recipe (below) on each in-distribution dataset for each seed, within
--minutes of wall time. `detect` runs `vaelab ood` on each model against the other dataset's
test split, uniform noise and constant images, and writes the AUROC of every score per pair,
mean +- std over the seeds. No out-of-distribution image is used for training or to choose
anything: the recipe and the scores were fixed on the in-distribution data's own test split.

The OOD recipe is a two-layer hierarchical VAE (stochastic layers of 128 and 16 units from
the data up, the MLP nets of the binary recipe), trained with the ELBO and the KL weight
raised over the first 10 epochs; the scores are those of `vaelab score`, and LLR>k (Havtorn
et al. 2021) compares the bound with the one whose k lowest layers come from the prior.
Each training process runs on one thread (OMP_NUM_THREADS=1), so that three seeds can share
a 2-core machine without the threads of one waiting on another's.

`throughput` times `vaelab score` on the 10,000 MNIST test images for the default MNIST
model (`vaelab train --dataset mnist`, its architecture; the weights do not change the speed),
with ELBO-only scores (k=1) and importance-sampled scores (k=100). `memory` scores a folder
of PNG files (MNIST and Fashion-MNIST digits written out) of 10,000 and of --images images
and records each process's peak memory: streaming keeps it flat in the number of images.

`example` is the worked example of docs/scores.md on folders of real colour images (built by
`python benchmarks/colour.py build`; the stamps: apt-get install tuxpaint-stamps-default):
the default recipe trained on the icons at 32x32, its test icons scored with the most typical
and most unusual shown, and `vaelab ood` against the Nexuiz textures and the Tux Paint stamps.
Its pictures go to docs/images/scores/.

Results: benchmarks/results/ood-<what>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import Run, machine, noise_and_constant, vaelab  # noqa: E402

HERE = Path(__file__).parent
WORK = Path.home() / ".cache" / "vaelab" / "ood-benchmark"
RESULTS = HERE / "results"
RECIPE = ["--model", "hvae", "--lower-latents", "128", "--latent-dim", "16", "--kl-warmup", "10"]
PAIRS = {"fashion-mnist": "mnist", "mnist": "fashion-mnist"}


def today() -> str:
    return datetime.date.today().isoformat()


def save(what: str, result: dict, merge: str | None = None) -> Path:
    """Write the result; with `merge`, add its list `merge` to the one already in today's file
    (seeds trained by separate processes)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ood-{what}-{today()}.json"
    if merge and path.exists():
        result[merge] = json.loads(path.read_text())[merge] + result[merge]
    path.write_text(json.dumps({"machine": machine(), "date": today(), **result}, indent=2) + "\n")
    print(f"written {path}")
    return path


def make_data(n: int = 2_000) -> dict[str, Path]:
    """The noise and constant sets of the table (common.noise_and_constant), n test images each."""
    return noise_and_constant(WORK, n)


def run_dir(dataset: str, seed: int) -> Path:
    return WORK / "runs" / f"{dataset}-seed{seed}"


def train(seeds: list[int], minutes: float, datasets: list[str], epochs: int) -> None:
    rows = []
    for dataset in datasets:
        for seed in seeds:
            out = run_dir(dataset, seed)
            start = time.perf_counter()
            vaelab("train", "--dataset", dataset, *RECIPE, "--epochs", epochs, "--minutes", minutes,
                   "--seed", seed, "--out", out, "--overwrite", threads=1)
            last = Run(out).records()[-1]
            rows.append({"dataset": dataset, "seed": seed, "epochs": last["epoch"], "test_elbo": last["test_elbo"],
                         "minutes": round((time.perf_counter() - start) / 60, 2)})
            print(rows[-1], flush=True)
    save("train", {"recipe": RECIPE, "runs": rows}, merge="runs")


def detect(seeds: list[int], k: int, datasets: list[str], n: int | None) -> None:
    other = make_data()
    table: dict[str, dict[str, list[float]]] = {}
    raw = []
    for dataset in datasets:
        for seed in seeds:
            run = run_dir(dataset, seed)
            extra = ["--n", n] if n else []
            start = time.perf_counter()
            if not _done(run, k, n):  # a finished result of the same measurement is read, not redone
                vaelab("ood", run, "--out-of", PAIRS[dataset], other["noise"], other["constant"], "--split", "test",
                       "--k", k, "--out", run / "ood", "--quiet", *extra)
            r = json.loads((run / "ood.json").read_text())
            for name, res in r["results"].items():
                pair = f"{dataset} vs {name.removesuffix('.npz')}"
                for score, m in res.items():
                    table.setdefault(pair, {}).setdefault(score, []).append(m["auroc"])
                raw.append({"pair": pair, "seed": seed, "results": res, "typicality": r["typicality"][name]})
                print(pair, seed, {s: round(m["auroc"], 3) for s, m in res.items()}, flush=True)
            raw[-1]["seconds_for_all_sets"] = round(time.perf_counter() - start, 1)
    summary = {pair: {s: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
                      for s, v in scores.items()} for pair, scores in table.items()}
    for pair, scores in summary.items():
        best = max(scores, key=lambda s: scores[s]["mean"])
        print(f"{pair}: best {best} {scores[best]['mean']:.3f} +- {scores[best]['std']:.3f}")
    save(f"detect-{'+'.join(datasets)}", {"k": k, "n": n, "seeds": seeds, "recipe": RECIPE, "auroc": summary,
                                          "runs": raw})


def _done(run: Path, k: int, n: int | None) -> bool:
    """Whether RUN/ood.json holds this benchmark's measurement: the same k, n and three sets."""
    try:
        r = json.loads((run / "ood.json").read_text())
    except (OSError, ValueError):
        return False
    return r.get("k") == k and len(r.get("results", {})) == 3 and r.get("n") == n


def table() -> None:
    """One Markdown table from today's detect results: AUROC mean +- std per score and pair."""
    summary: dict[str, dict] = {}
    for path in sorted(RESULTS.glob(f"ood-detect-*-{today()}.json")):
        summary.update(json.loads(path.read_text())["auroc"])
    scores = list(dict.fromkeys(s for pair in summary.values() for s in pair))
    print("| score | " + " | ".join(summary) + " |")
    print("|---" * (len(summary) + 1) + "|")
    for s in scores:
        cells = [f"{v[s]['mean']:.3f} +- {v[s]['std']:.3f}" if s in v else "" for v in summary.values()]
        print(f"| {s} | " + " | ".join(cells) + " |")


def _timed(*args) -> tuple[float, int]:
    """Wall seconds and peak memory (MiB) of one `vaelab` process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    vaelab(*args)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - start, max(peak, before) // 1024


def throughput(ks: list[int], repeats: int) -> None:
    run = WORK / "runs" / "mnist-default"
    if not (run / "checkpoint").is_dir():
        vaelab("train", "--dataset", "mnist", "--epochs", "1", "--out", run, "--overwrite")
    rows = []
    for k in ks:
        times = [_timed("score", run, "mnist", "--split", "test", "--k", k, "--quiet",
                        "--out", WORK / f"scores-k{k}.csv")[0] for _ in range(repeats)]
        med = statistics.median(times)
        rows.append({"k": k, "images": 10_000, "seconds": times, "median_images_per_s": round(10_000 / med, 1)})
        print(rows[-1], flush=True)
    save("throughput", {"model": "the default MNIST recipe (vae, mlp 512,512 / 256,256, 50 latents)", "rows": rows})


def memory(total: int) -> None:
    from PIL import Image

    from vaelab.data import load_dataset

    arrays = [load_dataset(name).train.images.numpy() for name in ("mnist", "fashion-mnist")]
    arrays += [load_dataset(name).test.images.numpy() for name in ("mnist", "fashion-mnist")]
    images = np.concatenate(arrays)[:total]
    run = WORK / "runs" / "mnist-default"
    if not (run / "checkpoint").is_dir():
        vaelab("train", "--dataset", "mnist", "--epochs", "1", "--out", run, "--overwrite")
    rows = []
    for n in (10_000, total):
        folder = WORK / f"folder-{n}"
        if not folder.exists():
            tmp = folder.with_name(folder.name + ".tmp")
            for i in range(n):
                sub = tmp / f"{i // 1000:03d}"
                sub.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[i, 0]).save(sub / f"{i:06d}.png")
            tmp.rename(folder)
        vaelab("score", run, folder, "--k", "1", "--quiet", "--out", WORK / "warm.npz")  # builds the image cache
        cmd = [sys.executable, "-m", "vaelab", "score", str(run), str(folder), "--k", "1", "--quiet",
               "--out", str(WORK / f"scores-{n}.npz")]
        start = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=True)
        peak = int(p.stderr.strip().splitlines()[-1]) // 1024
        rows.append({"images": n, "seconds": round(time.perf_counter() - start, 1), "peak_mib": peak})
        print(rows[-1], flush=True)
    save("memory", {"rows": rows, "note": "vaelab score --k 1 on a folder of 28x28 PNGs (cache already built)"})


def example(root: Path, k: int) -> None:
    import shutil

    run = WORK / "runs" / "icons"
    if not (run / "checkpoint").is_dir():
        vaelab("train", "--dataset", root / "icons", "--image-size", "32", "--out", run, "--overwrite")
    start = time.perf_counter()
    vaelab("score", run, "--k", k, "--top", "12", "--out", run / "scores.csv", "--quiet")
    score_seconds = time.perf_counter() - start
    vaelab("ood", run, "--out-of", root / "textures", "/usr/share/tuxpaint/stamps", "--split", "all", "--k", k,
           "--out", run / "ood", "--quiet")
    r = json.loads((run / "ood.json").read_text())
    pictures = HERE.parent / "docs" / "images" / "scores"
    pictures.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "scores-top.png", pictures / "icons-top.png")
    shutil.copy(run / "ood.png", pictures / "icons-ood.png")
    auroc = {name: {s: round(m["auroc"], 3) for s, m in res.items()} for name, res in r["results"].items()}
    print(json.dumps(auroc, indent=1))
    save("example", {"k": k, "score_seconds": round(score_seconds, 1), "auroc": auroc,
                     "typicality": r["typicality"], "in": r["in"], "out": r["out"]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["data", "train", "detect", "table", "throughput", "memory", "example"])
    p.add_argument("--root", type=Path, default=Path.home() / ".cache" / "vaelab" / "colour-benchmark")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--in", dest="inside", default="fashion-mnist,mnist")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--k", default="100")
    p.add_argument("--n", type=int, help="score the first N images of each set (default all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=100_000)
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    datasets = a.inside.split(",")
    if a.what == "data":
        print(make_data())
    elif a.what == "train":
        train(seeds, a.minutes, datasets, a.epochs)
    elif a.what == "detect":
        detect(seeds, int(a.k), datasets, a.n)
    elif a.what == "throughput":
        throughput([int(k) for k in a.k.split(",")], a.repeats)
    elif a.what == "table":
        table()
    elif a.what == "memory":
        memory(a.images)
    else:
        example(a.root, int(a.k))


if __name__ == "__main__":
    main()
