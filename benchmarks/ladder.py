"""The top-down hierarchical VAE (`--model ladder`) against its targets, each measured as a user runs it:

    VAELAB_DATA=/path/with/mnist python benchmarks/ladder.py speed [--epochs 3]
    python benchmarks/ladder.py nll [--seeds 0,1,2] [--minutes 30] [--k 1000]
    python benchmarks/ladder.py ood [--seeds 0,1,2] [--minutes 60] [--k 1]
    python benchmarks/ladder.py colour --folder DIR [--minutes 10] [--k 100]
    python benchmarks/ladder.py gpu [--minutes 10]           # bf16 + torch.compile on a GPU
    python benchmarks/ladder.py all --quick [--device cpu]   # every part, tiny: checks the script

`speed`: training images/s of each recipe (binary 28x28 MNIST; 8-bit colour at 32x32 on 32x32
colour digits, each a random tint on a random background) as `vaelab train` gives it (the
median `examples_per_s` of epochs 2.., whose epochs also hold the test ELBO pass), against a
plain PyTorch loop written here: the same network (built from the run's config.json), Adam at
the run's learning rate and clipping, dynamic binarisation or dequantisation on the device,
and, per epoch, the same test ELBO pass. The target is vaelab >= 0.9x the plain loop.

`nll`: MNIST (dynamically binarised) IS-NLL with k importance samples after a budget of
training minutes (`--minutes`, vaelab's own budget of summed epoch time) per seed, mean +- std.

`ood`: Fashion-MNIST in, MNIST out. The ladder recipe is trained on Fashion-MNIST only and
chosen without looking at MNIST (its defaults); `vaelab ood` scores the Fashion-MNIST test
images against MNIST's, uniform noise and constant images, and the best AUROC per pair is
read from RUN/ood.json, mean +- std over seeds. Havtorn et al. 2021 (table 3, Fashion-MNIST
in, MNIST out): LLR>1 AUROC 0.964 with one importance sample, 0.984 with 250.

`colour`: bits/dim (`vaelab evaluate --k K`) and reconstruction PSNR of the ladder against
today's single-latent 8-bit recipe (`--model vae`), each trained for the same wall time.

`gpu`: the binary and colour recipes with `--device cuda --precision bf16 --compile`: images/s
and seconds per epoch, and CIFAR-10-sized (32x32x3) bits/dim after `--minutes`. On a CPU
(`--device cpu`, with --quick) it runs the same commands in fp32 without compile, to check them.

Each part writes benchmarks/results/ladder-<part>-<date>.json with the machine, the commands
and the raw numbers. `--quick` shrinks everything (the shipped MNIST sample, one epoch,
small k, a few hundred colour images) to check the script, not to measure; `--extra` adds
flags to every training (the tests use it for a tiny network).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import Run, chosen_parts, machine, noise_and_constant, vaelab  # noqa: E402

HERE = Path(__file__).parent
LADDER = ["--model", "ladder"]
HAVTORN = {"LLR>1, 1 sample": 0.964, "LLR>1, 250 samples": 0.984}  # Havtorn et al. 2021, FashionMNIST -> MNIST


def today() -> str:
    return datetime.date.today().isoformat()


def save(out: Path, part: str, result: dict, argv: list[str]) -> Path:
    """Write one part's result with the machine and the command that made it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ladder-{part}-{today()}.json"
    path.write_text(json.dumps({"date": today(), "machine": machine(), "command": " ".join(map(shlex.quote, argv)),
                                **result}, indent=2) + "\n")
    print(f"written {path}", flush=True)
    return path


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def colour_array(path: Path, n: int, seed: int = 0) -> Path:
    """n 32x32x3 uint8 images, MNIST digits each with a random colour on a random background,
    written as an .npz with a 10% test split (the shipped sample when n is small)."""
    if path.exists():
        return path
    from vaelab.data import load_dataset

    digits = load_dataset("mnist" if n > 2000 else "mnist-sample").train.images[:, 0].numpy() / 255.0
    rng = np.random.default_rng(seed)
    d = digits[rng.integers(0, len(digits), n)][..., None]
    fg, bg = rng.uniform(0, 1, (n, 1, 1, 3)), rng.uniform(0, 1, (n, 1, 1, 3))
    img = np.broadcast_to(bg, (n, 32, 32, 3)).copy()
    img[:, 2:30, 2:30] = d * fg + (1 - d) * bg
    img = np.round(img * 255).astype(np.uint8)
    cut = n // 10
    np.savez(path, train=img[cut:], test=img[:cut])
    return path



# ------------------------------------------------------------------ the plain loop
def plain_loop(run: Path, epochs: int, device: str = "cpu", threads: int = 2) -> dict[str, float]:
    """Train the network of `run` (its config.json, fresh weights) with a plain PyTorch loop on
    the run's data for `epochs` epochs, in a fresh process of `threads` threads as vaelab's
    runs are: images/s of the training steps alone and of each epoch with the test ELBO pass,
    medians over epochs 2.. (the first pays one-time costs). The process gets vaelab's
    process settings (denormals flushed, freed memory kept: ``vaelab.runtime.tune_malloc``),
    so that the ratio measures the training loop, not those."""
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import ladder; "
            f"print(json.dumps(ladder._plain_loop({str(run)!r}, {int(epochs)}, {device!r}, {int(threads)})))")
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                       text=True, capture_output=True)
    if p.returncode:
        raise RuntimeError(f"the plain loop failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _plain_loop(run: str, epochs: int, device: str, threads: int) -> dict[str, float]:
    from vaelab.checkpoint import load_config
    from vaelab.models import bind_objective, build_model
    from vaelab.runtime import tune_malloc
    from vaelab.sources import load_configured

    tune_malloc()
    torch.set_num_threads(threads)
    cfg = load_config(run)
    t = cfg.train
    data = load_configured(cfg.data)
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, data.image_shape).to(device)
    bind_objective(model, t)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, **({"fused": True} if device != "mps" else {}))
    def whole(images) -> torch.Tensor:  # uint8 (N, C, H, W), one tensor on the device
        return (images if torch.is_tensor(images) else images.load()).to(device)

    train_x, test_x = whole(data.train.images), whole(data.test.images)
    binary = cfg.data.binarization != "none"

    def inputs(u8: torch.Tensor) -> torch.Tensor:
        x = u8.float() / 255
        return torch.bernoulli(x) if binary else x  # dynamic binarisation; 8-bit: the levels as they are

    steps_only, epoch = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(train_x), device=device).split(t.batch_size):
            loss = model(inputs(train_x[idx]))["loss"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
            opt.step()
        middle = time.perf_counter()
        with torch.no_grad():
            for chunk in test_x.split(500):
                model(inputs(chunk))
        end = time.perf_counter()
        steps_only.append(len(train_x) / (middle - start))
        epoch.append(len(train_x) / (end - start))
    later = slice(1, None) if epochs > 1 else slice(None)
    return {"steps_images_per_s": statistics.median(steps_only[later]),
            "epoch_images_per_s": statistics.median(epoch[later])}


# ------------------------------------------------------------------ the parts
def recipes(a, work: Path) -> dict[str, list[str]]:
    """The datasets of the two recipes: binary 28x28 MNIST and 8-bit 32x32 colour."""
    mnist = "mnist-sample" if a.quick else "mnist"
    colour = colour_array(work / f"colour-digits-{a.colour_images}.npz", a.colour_images)
    return {"binary-28x28": ["--dataset", mnist], "colour-32x32": ["--dataset", str(colour)]}


def speed(a, work: Path) -> dict:
    rows = []
    for name, data in recipes(a, work).items():
        run = work / f"speed-{name}"
        flags = ["train", *data, *LADDER, "--epochs", a.epochs, "--device", a.device, "--out", run, "--overwrite",
                 *a.extra]
        vaelab(*flags, threads=a.threads)
        records = Run(run).records()
        later = records[1:] or records
        ours = statistics.median(r["examples_per_s"] for r in later)
        plain = plain_loop(run, a.epochs, a.device, a.threads)
        rows.append({"recipe": name, "command": "vaelab " + " ".join(map(str, flags)), "epochs": a.epochs,
                     "vaelab_images_per_s": ours, "plain": plain,
                     "ratio_to_plain_epoch": ours / plain["epoch_images_per_s"],
                     "ratio_to_plain_steps": ours / plain["steps_images_per_s"]})
        print(f"{name}: vaelab {ours:.0f} images/s, plain loop {plain['epoch_images_per_s']:.0f} with its test pass "
              f"({rows[-1]['ratio_to_plain_epoch']:.2f}x), {plain['steps_images_per_s']:.0f} steps alone", flush=True)
    return {"threads": a.threads, "target": "vaelab >= 0.9x the plain loop", "rows": rows}


def nll(a, work: Path) -> dict:
    runs = []
    for seed in a.seeds:
        run = work / f"nll-seed{seed}"
        vaelab("train", "--dataset", "mnist-sample" if a.quick else "mnist", *LADDER, "--minutes", a.minutes,
               "--epochs", a.max_epochs, "--seed", seed, "--device", a.device, "--out", run, "--overwrite", *a.extra,
               threads=a.threads)
        vaelab("evaluate", run, "--k", a.k, "--device", a.device, threads=a.threads)
        ev = Run(run).evaluation(k=a.k)
        last = Run(run).records()[-1]
        runs.append({"seed": seed, "epochs": last["epoch"], "train_seconds": sum(r["seconds"] for r in
                                                                                  Run(run).records()),
                     "nll": ev["nll"], "nll_stderr": ev["nll_stderr"], "k": ev["k"], "n": ev["n"],
                     "kl_per_level": [last.get(f"test_kl_{i}") for i in range(1, 1 + len(last["active_units_levels"]))],
                     "active_units_levels": last["active_units_levels"]})
        print(runs[-1], flush=True)
    return {"minutes": a.minutes, "threads": a.threads, "binarization": "dynamic", "k": a.k,
            "nll": mean_std([r["nll"] for r in runs]), "runs": runs,
            "targets": {"30 minutes, 3 seeds": 84.0, "120 minutes, one seed (IWAE two-layer)": 82.9}}


def ood(a, work: Path) -> dict:
    inside, outside = ("mnist-sample", "mnist-sample") if a.quick else ("fashion-mnist", "mnist")
    sets = noise_and_constant(work, 50 if a.quick else 2000)
    table: dict[str, dict[str, list[float]]] = {}
    raw = []
    for seed in a.seeds:
        run = work / f"ood-{inside}-seed{seed}"
        vaelab("train", "--dataset", inside, *LADDER, "--minutes", a.minutes, "--epochs", a.max_epochs, "--seed",
               seed, "--device", a.device, "--out", run, "--overwrite", *a.extra, threads=a.threads)
        extra = ["--n", 50] if a.quick else []
        vaelab("ood", run, "--out-of", outside, sets["noise"], sets["constant"], "--split", "test", "--k", a.ood_k,
               "--device", a.device, "--out", run / "ood", "--quiet", *extra, threads=a.threads)
        result = json.loads((run / "ood.json").read_text())
        for name, scores in result["results"].items():
            pair = f"{inside} vs {Path(name).stem}"
            for score, m in scores.items():
                table.setdefault(pair, {}).setdefault(score, []).append(m["auroc"])
            raw.append({"pair": pair, "seed": seed, "results": scores})
    summary = {pair: {s: mean_std(v) for s, v in scores.items()} for pair, scores in table.items()}
    best = {pair: max(scores.items(), key=lambda kv: kv[1]["mean"]) for pair, scores in summary.items()}
    for pair, (score, m) in best.items():
        print(f"{pair}: best {score} {m['mean']:.3f} +- {m['std']:.3f}", flush=True)
    return {"minutes": a.minutes, "k": a.ood_k, "seeds": a.seeds, "chosen_without_ood_data": "the ladder's defaults",
            "best": {pair: {"score": s, **m} for pair, (s, m) in best.items()}, "auroc": summary,
            "havtorn_2021": HAVTORN, "target": 0.98, "runs": raw}


def colour(a, work: Path) -> dict:
    folder = a.folder or colour_array(work / f"colour-digits-{a.colour_images}.npz", a.colour_images)
    rows = {}
    for name, model in (("ladder", LADDER), ("single-latent", ["--model", "vae"])):
        run = work / f"colour-{name}"
        vaelab("train", "--dataset", folder, *model, "--minutes", a.minutes, "--epochs", a.max_epochs, "--device",
               a.device, "--out", run, "--overwrite", *(a.extra if name == "ladder" else []), threads=a.threads)
        vaelab("evaluate", run, "--k", a.k, "--device", a.device, threads=a.threads)
        ev = Run(run).evaluation(k=a.k)
        rows[name] = {"bits_per_dim": ev.get("bits_per_dim"), "psnr": ev.get("recon_psnr"), "nll": ev["nll"],
                      "epochs": Run(run).records()[-1]["epoch"]}
        print(name, rows[name], flush=True)
    diff = None
    if rows["ladder"]["bits_per_dim"] is not None and rows["single-latent"]["bits_per_dim"] is not None:
        diff = rows["single-latent"]["bits_per_dim"] - rows["ladder"]["bits_per_dim"]
    return {"data": str(folder), "minutes": a.minutes, "k": a.k, "rows": rows, "bits_per_dim_lower_by": diff,
            "target": "bits/dim at least 0.3 lower, PSNR not lower"}


def gpu_flags(device: str) -> list[str]:
    """The GPU path's training flags: bf16 autocast and torch.compile on a GPU; on a CPU the
    same command in fp32 without compile (a check of the script, not a measurement)."""
    if device == "cpu":
        return ["--device", "cpu", "--precision", "fp32"]
    return ["--device", device, "--precision", "bf16", "--compile"]


def gpu(a, work: Path) -> dict:
    rows = []
    for name, data in recipes(a, work).items():
        run = work / f"gpu-{name}"
        flags = ["train", *data, *LADDER, *gpu_flags(a.device), "--epochs", a.epochs, "--out", run, "--overwrite",
                 *a.extra]
        vaelab(*flags, threads=a.threads)
        records = Run(run).records()
        later = records[1:] or records
        rows.append({"recipe": name, "command": "vaelab " + " ".join(map(str, flags)),
                     "images_per_s": statistics.median(r["examples_per_s"] for r in later),
                     "epoch_seconds": statistics.median(r["seconds"] for r in later)})
        print(rows[-1], flush=True)
    # CIFAR-10-sized bits/dim after a stated time: the colour recipe's images, 32x32x3
    run = work / "gpu-bits-per-dim"
    vaelab("train", *recipes(a, work)["colour-32x32"], *LADDER, *gpu_flags(a.device), "--minutes", a.minutes,
           "--epochs", a.max_epochs, "--out", run, "--overwrite", *a.extra, threads=a.threads)
    vaelab("evaluate", run, "--k", a.k, "--device", "cpu" if a.device == "cpu" else a.device, threads=a.threads)
    ev = Run(run).evaluation(k=a.k)
    gpu_name = torch.cuda.get_device_name() if a.device != "cpu" and torch.cuda.is_available() else None
    return {"gpu": gpu_name, "cuda": torch.version.cuda, "flags": gpu_flags(a.device), "rows": rows,
            "bits_per_dim": {"minutes": a.minutes, "value": ev.get("bits_per_dim"), "k": a.k}}


PARTS = {"speed": speed, "nll": nll, "ood": ood, "colour": colour, "gpu": gpu}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", help=f"one part or several, comma-separated: {', '.join(PARTS)}; or all")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=30, help="training budget per run (vaelab's --minutes)")
    p.add_argument("--max-epochs", type=int, default=1000, help="epochs at most within --minutes")
    p.add_argument("--epochs", type=int, default=3, help="speed and gpu: epochs per recipe")
    p.add_argument("--k", type=int, default=1000, help="importance samples of IS-NLL and bits/dim")
    p.add_argument("--ood-k", type=int, default=1, help="importance samples of the OOD scores")
    p.add_argument("--threads", type=int, default=2, help="threads of each vaelab process")
    p.add_argument("--device", default="cpu")
    p.add_argument("--folder", help="colour: a folder of colour images (default: 32x32 colour digits)")
    p.add_argument("--colour-images", type=int, default=20_000)
    p.add_argument("--extra", default="", help="flags added to every ladder training, e.g. '--hidden 16'")
    p.add_argument("--work", type=Path, help="where runs go (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    a = p.parse_args(argv)
    a.parts = chosen_parts(p, a.what, PARTS)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.extra = shlex.split(a.extra)
    if a.quick:  # checks the script: one epoch, small k, few images
        a.seeds, a.minutes, a.max_epochs, a.epochs, a.k, a.colour_images = a.seeds[:1], 0, 1, 2, 5, 300
    return a


def main(argv: list[str] | None = None) -> list[Path]:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in a.parts:
            result = PARTS[part](a, work)
            written.append(save(a.out, part + ("-quick" if a.quick else ""), result,
                                ["python", "benchmarks/ladder.py", *argv]))
    return written


if __name__ == "__main__":
    main()
