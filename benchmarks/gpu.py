"""The GPU targets of the scale-out issue, each measured as a user runs it:

    VAELAB_DATA=/path/with/mnist python benchmarks/gpu.py [--epochs 10] [--compile] [--out benchmarks/results]
    python benchmarks/gpu.py --quick --device cpu      # a dry run of the logic, minutes on a CPU

1. The default MNIST recipe (`vaelab train --dataset mnist`, all defaults) in fp32 and in
   bf16 (`--precision bf16`): an epoch's cost is the median `seconds` of epochs 2.. in
   metrics.jsonl (the training steps and the per-epoch test ELBO on 10k images).
2. IS-NLL with k=1000 over the 10k test images (`vaelab evaluate RUN --k 1000`, its
   `seconds`) for both runs, and the bf16 - fp32 difference of the IS-NLL after the same
   epochs.
3. A conv VAE on 32x32x3 images: 50,000 colour images made from MNIST digits (each a
   random tint on a random background, padded to 32x32), written as a uint8 .npy array;
   `vaelab train --dataset ARRAY --net conv --hidden 64,128,256 --binarization none
   --likelihood logistic --batch-size 512` (45,000 train images). Training images/s is
   the median `examples_per_s` of epochs 2.. (train images / epoch seconds, which also
   cover the test ELBO on the 5,000 held-out images, so it understates the training rate).

MNIST is found as everywhere in vaelab ($VAELAB_DATA, --data-dir, the cache); a GPU
machine without network access needs the four MNIST .gz files copied to it first.
Prints a markdown table and writes gpu-DATE.json with the GPU's name, torch and CUDA
versions. `--quick` shrinks everything (the shipped MNIST sample, k=20, 2,000 colour
images, 2 epochs) to check the script, not to measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from common import Run, vaelab


def later_epochs(run: Path) -> tuple[dict[str, float], dict]:
    """Medians of `seconds` and `examples_per_s` over epochs 2.. of a run, and its last record."""
    rows = Run(run).records()
    later = rows[1:] or rows
    return {k: statistics.median(r[k] for r in later) for k in ("seconds", "examples_per_s")}, rows[-1]


def recipe(precision: str, a, work: Path) -> dict:
    run = work / f"recipe-{precision}"
    t = time.perf_counter()
    vaelab("train", "--dataset", a.dataset, "--device", a.device, "--precision", precision, "--epochs", a.epochs,
           "--out", run, *a.train_flags)
    wall = time.perf_counter() - t
    med, last = later_epochs(run)
    vaelab("evaluate", run, "--k", a.k, "--device", a.device)
    ev = Run(run).evaluation(k=int(a.k))
    return {"precision": precision, "epochs": a.epochs, "epoch_seconds": med["seconds"], "train_wall_s": round(wall, 1),
            "test_elbo": last["test_elbo"], "nll": ev["nll"], "nll_stderr": ev["nll_stderr"], "k": ev["k"],
            "n": ev["n"], "eval_seconds": ev["seconds"]}


def colour_digits(n: int, seed: int = 0) -> np.ndarray:
    """n 32x32x3 uint8 images: MNIST digits (the shipped sample when `n` is small, else
    the full training set), each with a random foreground and background colour."""
    from vaelab.data import load_dataset

    data = load_dataset("mnist" if n > 5000 else "mnist-sample")
    digits = data.train.images[:, 0].numpy().astype(np.float32) / 255.0  # (N, 28, 28)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(digits), n)
    fg, bg = rng.uniform(0, 1, (n, 1, 1, 3)), rng.uniform(0, 1, (n, 1, 1, 3))
    img = np.zeros((n, 32, 32, 3), np.float32)
    img[:] = bg
    d = digits[pick][..., None]
    img[:, 2:30, 2:30] = d * fg + (1 - d) * bg
    return np.round(img * 255).astype(np.uint8)


def conv32(precision: str, a, work: Path, array: Path) -> dict:
    run = work / f"conv32-{precision}"
    vaelab("train", "--dataset", array, "--net", "conv", "--hidden", "64,128,256", "--binarization", "none",
           "--likelihood", "logistic", "--batch-size", a.conv_batch, "--epochs", a.conv_epochs, "--device", a.device,
           "--precision", precision, "--out", run, *a.train_flags)
    med, last = later_epochs(run)
    return {"precision": precision, "batch": a.conv_batch, "epoch_seconds": med["seconds"],
            "images_per_s": med["examples_per_s"], "test_elbo": last["test_elbo"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the default recipe per precision")
    ap.add_argument("--conv-epochs", type=int, default=3)
    ap.add_argument("--conv-batch", type=int, default=512)
    ap.add_argument("--compile", action="store_true", help="train with --compile")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    ap.add_argument("--out", default="benchmarks/results")
    a = ap.parse_args()
    a.dataset, a.k, n_colour = "mnist", 1000, 50_000
    a.train_flags = ["--compile"] if a.compile else []
    if a.quick:
        a.dataset, a.k, n_colour, a.epochs, a.conv_epochs, a.conv_batch = "mnist-sample", 20, 2000, 2, 2, 128
    work = Path(tempfile.mkdtemp(prefix="vaelab-gpu-"))
    res: dict = {"date": str(date.today()), "device": a.device, "torch": torch.__version__,
                 "cuda": torch.version.cuda, "quick": a.quick, "compile": a.compile,
                 "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None}
    res["recipe"] = [recipe(p, a, work) for p in ("fp32", "bf16")]
    array = work / "colour-digits.npy"
    np.save(array, colour_digits(n_colour))
    res["conv32"] = [conv32(p, a, work, array) for p in ("fp32", "bf16")]
    fp32, bf16 = res["recipe"]
    res["bf16_minus_fp32_nll"] = bf16["nll"] - fp32["nll"]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"gpu-{res['date']}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(f"\nwritten to {path}")


def report(r: dict) -> str:
    lines = [f"{r['gpu'] or r['device']}, torch {r['torch']} (CUDA {r['cuda']}), {r['date']}"
             f"{', --compile' if r['compile'] else ''}{' (quick: not a measurement)' if r['quick'] else ''}", "",
             "| what | fp32 | bf16 | target |", "|---|---|---|---|"]
    f, b = r["recipe"]
    lines.append(f"| default MNIST recipe, epoch (s) | {f['epoch_seconds']:.2f} | {b['epoch_seconds']:.2f} | < 0.5 |")
    lines.append(f"| IS-NLL k={f['k']} over {f['n']} test images (s) | {f['eval_seconds']:.1f} | "
                 f"{b['eval_seconds']:.1f} | < 5 |")
    lines.append(f"| IS-NLL after {f['epochs']} epochs (nats) | {f['nll']:.2f} +- {f['nll_stderr']:.2f} | "
                 f"{b['nll']:.2f} +- {b['nll_stderr']:.2f} | bf16 - fp32: {r['bf16_minus_fp32_nll']:+.2f} |")
    cf, cb = r["conv32"]
    lines.append(f"| conv VAE 32x32x3, batch {cf['batch']}, training images/s | {cf['images_per_s']:,.0f} | "
                 f"{cb['images_per_s']:,.0f} | >= 20,000 |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
