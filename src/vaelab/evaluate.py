"""Evaluation: test ELBO and the importance-sampled estimate of -log p(x).

    log p(x) ~= log (1/k) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z|x)

(Burda et al. 2016, eq. 8; Rezende et al. 2014, appendix E). The estimate is a lower
bound in expectation that tightens as k grows. Work is batched over images and chunked
over k, with a running logsumexp, so memory stays bounded for any k; the decoder sees
``rows`` (images x samples) rows per call: one image and ~1000 samples per step is
where CPU matmuls run fastest and the image broadcasts cheaply over its samples.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.checkpoint import load_run
from vaelab.data import eval_images, load_dataset
from vaelab.runtime import resolve_device, tune_malloc

BINARIZATION_NOTE = {
    "dynamic": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "fixed": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "none": "none: grey levels pixel/255 (256 levels)",
    "dequantized": "none: grey levels, dequantised once as (pixel + u)/256, u ~ U(0,1), seed {seed}",
}


@torch.inference_mode()
def log_likelihood(model, x: torch.Tensor, k: int = 1000, rows: int = 1024, seed: int = 0,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (log p(x) estimate with k importance samples, ELBO estimate): (N,), (N,).

    The ELBO estimate is the mean of the same k log-weights (a Monte-Carlo ELBO).
    """
    if not getattr(model, "has_density", False):
        raise TypeError(f"{type(model).__name__} defines no density p(x); it has no log-likelihood")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    per_batch = max(1, rows // k)  # images per step
    chunk = min(k, max(1, rows // per_batch))  # samples per step
    log_px, elbo = torch.empty(len(x), device=x.device), torch.empty(len(x), device=x.device)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(x), desc=f"IS k={k}", disable=not progress, leave=False, dynamic_ncols=True)
    for i in range(0, len(x), per_batch):
        xb = x[i : i + per_batch]
        q = model.encode(xb)
        lse = torch.full((len(xb),), -math.inf, device=x.device)
        total = torch.zeros(len(xb), device=x.device)
        for j in range(0, k, chunk):
            lw = model.log_weights(xb, min(chunk, k - j), q=q, generator=gen)  # (kc, B)
            lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
            total += lw.sum(0)
        log_px[i : i + len(xb)] = lse - math.log(k)
        elbo[i : i + len(xb)] = total / k
        bar.update(len(xb))
    bar.close()
    return log_px, elbo


def _mean_stderr(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def evaluate(run_dir: str | Path, n: int | None = None, k: int = 1000, device: str = "cpu",
             progress: bool = True, write: bool = True, dataset=None) -> dict[str, Any]:
    """Evaluate a trained run on its test set; writes ``RUN_DIR/eval.json``.

    Returns ``elbo`` (mean per-image ELBO, nats, a lower bound on log p(x)) and ``nll``
    (the k-sample importance-sampled estimate of -log p(x), nats), each with the
    standard error of the mean over test images, and the data protocol used.
    """
    tune_malloc()
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    data = dataset or load_dataset(cfg.data.dataset, cfg.data.data_dir, cfg.data.download)
    split = data.test.head(n)
    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    seed = cfg.data.binarization_seed
    density = not model.likelihood.discrete
    x = eval_images(split.to(dev), cfg.data.binarization, seed=seed, dequantize=density)
    protocol = "dequantized" if density and cfg.data.binarization == "none" else cfg.data.binarization
    start = time.perf_counter()
    result: dict[str, Any] = {
        "dataset": data.name,
        "split": "test",
        "n": len(x),
        "k": k,
        "binarization": cfg.data.binarization,
        "binarization_detail": BINARIZATION_NOTE[protocol].format(seed=seed),
        "likelihood": cfg.model.likelihood,
        "model": cfg.model.model,
    }
    if model.has_density:
        log_px, elbo = log_likelihood(model, x, k=k, progress=progress)
        dims = x[0].numel()
        if density:
            # A density on [0, 1): P(bin of width 1/256) >= (1/256)^D exp(E_u log p), so
            # -log p + D log 256 is an upper bound on the discrete NLL (Theis et al. 2016).
            shift = dims * math.log(256)
            log_px, elbo = log_px - shift, elbo - shift
            result["nll_note"] = "density likelihood: nll = -log p(dequantised x) + D log 256, a bound on the discrete NLL"
        result["elbo"], result["elbo_stderr"] = _mean_stderr(elbo)
        nll, result["nll_stderr"] = _mean_stderr(-log_px)
        result["nll"] = nll
        if cfg.data.binarization == "none":
            result["bits_per_dim"] = nll / (dims * math.log(2))
    else:
        with torch.inference_mode():
            recon = torch.cat([model.decode(model.encode(x[i : i + 1000]).mean).log_prob(x[i : i + 1000])
                               for i in range(0, len(x), 1000)])
        result["recon_nll"], result["recon_nll_stderr"] = _mean_stderr(-recon)
        result["note"] = "a plain autoencoder has no density: only -log p(x | z = f(x)) is reported"
    result["seconds"] = round(time.perf_counter() - start, 2)
    if write:
        path = Path(run_dir) / "eval.json"
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".eval-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(result, fh, indent=2)
        os.replace(tmp, path)
    return result
