"""Training and evaluation speed of the 784-512-512-50 MLP VAE, as fractions of this
machine's fp32 matmul peak measured in the same run, and against pythae 0.1.2.

    python benchmarks/speed.py [--epochs 4] [--precisions fp32,bf16] [--no-pythae] [--out benchmarks/results]

Training is timed as a user sees it: `vaelab train` runs as a subprocess and the
marginal cost of an epoch is the median `seconds` of epochs 2.. in metrics.jsonl, which
covers the training steps, the per-epoch test ELBO on 10k images, the PNG grids and the
atomic checkpoint. pythae (if importable) trains the same network on the same fixed-
binarised MNIST with Adam at batch 128; its epoch time is taken between consecutive
epoch starts (its training steps plus its per-epoch evaluation).

FLOPs count matmuls only: forward 2*in*out per layer and example; backward twice that,
less the input gradient of the first layer (pixels need none).

The fp32 peak is sampled before, between and after the timings and the best kept (this
kind of host is shared, and a slow stretch would flatter every fraction). Every training
row, in any precision, is stated as a fraction of it (the issue's yardstick).
`--precisions fp32,bf16` adds `vaelab train --precision bf16` rows (networks under bf16
autocast, log-densities and the optimiser in fp32) and the bf16 matmul peak; bf16 is
fast only on CPUs with bf16 matrix units (AMX: `amx_bf16` in /proc/cpuinfo), and the
report says whether this one has them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from common import Run, pythae_epoch_clock, vaelab
from vaelab.runtime import cpu_name

ENC = [784, 512, 512, 100]  # 100 = mean and log-std of a 50-d latent
DEC = [50, 512, 512, 784]


def layer_flops(sizes: list[int]) -> int:
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


FWD = layer_flops(ENC) + layer_flops(DEC)
TRAIN_FLOPS = 3 * FWD - 2 * ENC[0] * ENC[1]  # per example
IS_FLOPS_PER_SAMPLE = layer_flops(DEC)  # decoder once per importance sample


def matmul_peak(reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s over square matmuls of 1024..4096 (the highest we can observe)."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        inner = max(1, int(4e10 // (2 * n**3)))
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            best = max(best, 2 * n**3 * inner / (time.perf_counter() - t) / 1e9)
    return best


def has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            return "amx_bf16" in fh.read()
    except OSError:
        return False


def vaelab_train(batch: int, epochs: int, workdir: Path, precision: str = "fp32") -> dict:
    out = workdir / f"vaelab-b{batch}-{precision}"
    t = time.perf_counter()
    vaelab("train", "--dataset", "mnist", "--hidden", "512,512", "--activation", "relu", "--latent-dim", "50",
           "--batch-size", batch, "--epochs", epochs, "--lr", "1e-3", "--precision", precision, "--out", out, "--quiet")
    wall = time.perf_counter() - t
    rows = Run(out).records()
    sec = statistics.median(r["seconds"] for r in rows[1:])
    n = rows[0]["step"] * batch
    return {"batch": batch, "precision": precision, "epoch_seconds": sec, "examples_per_s": n / sec,
            "process_wall_s": round(wall, 1), "gflops": n * TRAIN_FLOPS / sec / 1e9,
            "test_elbo_last": rows[-1]["test_elbo"], "run": str(out)}


def vaelab_eval(run: str, n: int) -> dict:
    from vaelab.evaluate import evaluate

    r = evaluate(run, n=n, k=1000, progress=False, write=False)
    ips = n / r["seconds"]
    return {"n": n, "k": 1000, "seconds": r["seconds"], "images_per_s": ips,
            "seconds_for_10k": 10000 / ips, "gflops": ips * 1000 * IS_FLOPS_PER_SAMPLE / 1e9}


def vaelab_elbo_eval(batch: int) -> dict:
    """Forward-only test ELBO (one z per image) throughput at a batch size."""
    from vaelab.config import ModelConfig, TrainConfig
    from vaelab.models import build_model
    from vaelab.objectives import Step, elbo
    from vaelab.runtime import tune_malloc

    tune_malloc()
    model = build_model(ModelConfig(hidden=(512, 512), decoder_hidden=None, latent_dim=50, activation="relu"),
                        (1, 28, 28)).eval()
    x = (torch.rand(10000, 1, 28, 28) < 0.13).float()
    with torch.inference_mode():
        defaults = TrainConfig()
        elbo(model, Step(x[:batch]), defaults)
        t = time.perf_counter()
        for i in range(0, len(x), batch):
            elbo(model, Step(x[i : i + batch]), defaults)
        sec = time.perf_counter() - t
    return {"batch": batch, "images_per_s": len(x) / sec, "gflops": len(x) * FWD / sec / 1e9}


def pythae_train(batch: int, epochs: int, workdir: Path) -> dict | None:
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
        from pythae.pipelines import TrainingPipeline
        from pythae.trainers import BaseTrainerConfig
    except ImportError:
        return None
    from torch import nn

    from vaelab.batches import Feed, as_input
    from vaelab.data import load_dataset

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
            self.mu, self.log_var = nn.Linear(512, 50), nn.Linear(512, 50)

        def forward(self, x):
            h = self.body(x.reshape(len(x), -1))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(50, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                      nn.Linear(512, 784))

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)).reshape(len(z), 1, 28, 28))

    data = load_dataset("mnist")
    g = torch.Generator().manual_seed(0)
    train_x = as_input(data.train.images, Feed("fixed"), generator=g).numpy()
    test_x = as_input(data.test.images, Feed("fixed"), generator=g).numpy()
    model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce"),
                encoder=Encoder(), decoder=Decoder())
    cfg = BaseTrainerConfig(output_dir=str(workdir / "pythae"), num_epochs=epochs, learning_rate=1e-3,
                            per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                            optimizer_cls="Adam", no_cuda=True)
    clock = pythae_epoch_clock()
    TrainingPipeline(training_config=cfg, model=model)(train_data=train_x, eval_data=test_x, callbacks=[clock])
    epoch_secs = [b - a for a, b in zip(clock.starts[:-1], clock.starts[1:])]
    sec = statistics.median(epoch_secs[1:])
    n = len(train_x)
    return {"batch": batch, "epoch_seconds": sec, "examples_per_s": n / sec, "gflops": n * TRAIN_FLOPS / sec / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=1000, help="test images for the IS timing (k=1000)")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32 and/or bf16 training rows")
    ap.add_argument("--no-pythae", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"} or "fp32" not in precisions:
        ap.error("--precisions: fp32, optionally with bf16 (e.g. fp32,bf16)")

    work = Path(tempfile.mkdtemp(prefix="vaelab-bench-"))
    peaks = [matmul_peak()]  # the host is shared: sampled between the timings, the best kept
    res: dict = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
                 "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "train_flops_per_example": TRAIN_FLOPS, "amx_bf16": has_amx()}
    res["train"] = []
    for p in precisions:
        for b in (128, 1024):
            res["train"].append(vaelab_train(b, args.epochs, work, p))
            peaks.append(matmul_peak())
    res["eval_is"] = vaelab_eval(res["train"][0]["run"], args.eval_n)
    res["eval_elbo"] = [vaelab_elbo_eval(b) for b in (128, 1024)]
    if not args.no_pythae:
        res["pythae"] = pythae_train(128, max(3, args.epochs - 1), work)
    peaks.append(matmul_peak())
    peak = max(peaks)
    res["peak_gflops"], res["peak_gflops_samples"] = peak, peaks
    if "bf16" in precisions:
        res["peak_gflops_bf16"] = matmul_peak(dtype=torch.bfloat16)
    for r in [*res["train"], res["eval_is"], *res["eval_elbo"], *([res["pythae"]] if res.get("pythae") else [])]:
        r["fraction_of_peak"] = r["gflops"] / peak
        if r.get("precision") == "bf16":
            r["fraction_of_bf16_peak"] = r["gflops"] / res["peak_gflops_bf16"]
    if res.get("pythae"):
        for t in res["train"]:
            if t["batch"] == 128:
                t["epoch_time_vs_pythae"] = t["epoch_seconds"] / res["pythae"]["epoch_seconds"]
        res["speedup_vs_pythae_b128"] = res["train"][0]["examples_per_s"] / res["pythae"]["examples_per_s"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"speed-{res['date']}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(report(res))
    print(f"\nwritten to {path}")


def report(r: dict) -> str:
    bf16 = (f"; bf16 matmul peak {r['peak_gflops_bf16']:.0f} GFLOP/s "
            f"({'with' if r.get('amx_bf16') else 'without'} AMX)" if "peak_gflops_bf16" in r else "")
    lines = [f"{r['cpu']}, {r['threads']} threads, torch {r['torch']}, {r['date']}; "
             f"fp32 matmul peak {r['peak_gflops']:.0f} GFLOP/s{bf16}", "",
             "| what | batch | examples or images/s | GFLOP/s | of fp32 peak |", "|---|---|---|---|---|"]
    for t in r["train"]:
        extra = (f" ({t['fraction_of_bf16_peak']:.0%} of the bf16 peak)" if "fraction_of_bf16_peak" in t else "")
        lines.append(f"| vaelab train {t.get('precision', 'fp32')} (per extra epoch, {t['epoch_seconds']:.2f} s) | "
                     f"{t['batch']} | {t['examples_per_s']:.0f} | {t['gflops']:.0f} | {t['fraction_of_peak']:.0%}{extra} |")
    if r.get("pythae"):
        p = r["pythae"]
        lines.append(f"| pythae 0.1.2 train (per extra epoch, {p['epoch_seconds']:.2f} s) | {p['batch']} | "
                     f"{p['examples_per_s']:.0f} | {p['gflops']:.0f} | {p['fraction_of_peak']:.0%} |")
    for e in r["eval_elbo"]:
        lines.append(f"| vaelab test ELBO (forward) | {e['batch']} | {e['images_per_s']:.0f} | "
                     f"{e['gflops']:.0f} | {e['fraction_of_peak']:.0%} |")
    e = r["eval_is"]
    lines.append(f"| vaelab IS-NLL k=1000 ({e['seconds_for_10k']:.0f} s per 10k images) | 1 image x 1000 | "
                 f"{e['images_per_s']:.1f} | {e['gflops']:.0f} | {e['fraction_of_peak']:.0%} |")
    if "speedup_vs_pythae_b128" in r:
        lines.append(f"\nvaelab / pythae training throughput at batch 128: {r['speedup_vs_pythae_b128']:.2f}x")
        for t in r["train"]:
            if "epoch_time_vs_pythae" in t:
                lines.append(f"vaelab {t.get('precision', 'fp32')} epoch time / pythae epoch time at batch 128: "
                             f"{t['epoch_time_vs_pythae']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
