"""Evaluation: test ELBO and the importance-sampled estimate of -log p(x).

    log p(x) ~= log (1/k) sum_k p(x, z_k) / q(z_k | x),   z_k ~ q(z|x)

(Burda et al. 2016, eq. 8; Rezende et al. 2014, appendix E). The estimate is a lower
bound in expectation that tightens as k grows. Work is batched over images and chunked
over k, with a running logsumexp, so memory stays bounded for any k; the decoder sees
``rows`` (images x samples) rows per call: one image and ~1000 samples per step is
where CPU matmuls run fastest and the image broadcasts cheaply over its samples.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaelab.batches import SplitInputs, memory_budget, model_inputs
from vaelab.checkpoint import load_run
from vaelab.files import write_json
from vaelab.images import load_configured
from vaelab.models import active_units, check_data_fit
from vaelab.noise import ExampleNoise
from vaelab.runtime import Dist, distributed, progress_bar, resolve_device, tune_malloc

BINARIZATION_NOTE = {
    "dynamic": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "fixed": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "none": "none: grey levels pixel/255 (256 levels)",
    "dequantized": "none: grey levels, dequantised once as (pixel + u)/256, u ~ U(0,1), seed {seed}",
}


@torch.no_grad()
def posterior_means(model, x: torch.Tensor | SplitInputs, c: torch.Tensor | None = None,
                    batch: int = 2000) -> torch.Tensor:
    """Posterior means (the code, for an AE) of images x with conditions c, or of a split's
    inputs, in batches: (N, D)."""
    if isinstance(x, SplitInputs):
        return torch.cat([model.encode(xb, cb).mean for xb, cb, _ in x.chunks(batch)])
    return torch.cat([model.encode(x[i : i + batch], None if c is None else c[i : i + batch]).mean
                      for i in range(0, len(x), batch)])


@torch.inference_mode()
def log_likelihood(model, x: torch.Tensor, k: int = 1000, rows: int | None = None, seed: int = 0,
                   progress: bool = False, c: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (log p(x) estimate with k importance samples, ELBO estimate): (N,), (N,).

    The ELBO estimate is the mean of the same k log-weights (a Monte-Carlo ELBO). For
    conditional models pass the conditions c (N, C'): log p(x|c) is estimated. Pass a
    `generator` to continue one random stream across calls (then `seed` is unused), or
    the images' `index` (N,) to tie every image's k samples to the image and `seed`, so
    any sharding or chunking of a test set gives the same estimates. `rows`: decoder rows
    (images x samples) per call; default `decode_rows` of the image size.
    """
    if not getattr(model, "has_density", False):
        raise TypeError(f"{type(model).__name__} defines no density p(x); it has no log-likelihood")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model.eval()
    gen = generator if generator is not None else torch.Generator(device=x.device).manual_seed(seed)
    rows = rows or decode_rows(math.prod(x.shape[1:]))
    per_batch = max(1, rows // k)  # images per step
    chunk = min(k, max(1, rows // per_batch))  # samples per step
    log_px, elbo = torch.empty(len(x), device=x.device), torch.empty(len(x), device=x.device)
    bar = progress_bar(total=len(x), desc=f"IS k={k}", show=progress, leave=False)
    for i in range(0, len(x), per_batch):
        xb = x[i : i + per_batch]
        cb = None if c is None else c[i : i + per_batch]
        q = model.encode(xb, cb)
        lse = torch.full((len(xb),), -math.inf, device=x.device)
        total = torch.zeros(len(xb), device=x.device)
        for j in range(0, k, chunk):
            g = gen if index is None else ExampleNoise(index[i : i + len(xb)], seed, first_sample=j)
            lw = model.log_weights(xb, min(chunk, k - j), q=q, generator=g, c=cb)  # (kc, B)
            lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
            total += lw.sum(0)
        log_px[i : i + len(xb)] = lse - math.log(k)
        elbo[i : i + len(xb)] = total / k
        bar.update(len(xb))
    bar.close()
    return log_px, elbo


def decode_rows(dims: int) -> int:
    """Decoder rows per call for images of `dims` values: 1024 up to MNIST's 784 values, fewer
    for larger images, so that a call's activations stay near a few MB, in cache (a conv
    decoder on 1024 32x32 images would move ~130 MB per feature map)."""
    return max(16, min(1024, (1 << 20) // dims))


def default_k(dims: int) -> int:
    """Importance samples when none are asked for: 1000 for images up to 32x32 grey, the
    literature's MNIST protocol; 100 for larger ones, whose decoders cost 4-16x more per sample
    (the estimate tightens slowly in k: the standard error over images is reported)."""
    return 1000 if dims <= 1024 else 100


@torch.inference_mode()
def reconstruction_psnr(model, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB of each image's reconstruction, the decoder's mean at the posterior mean (the
    code, for an AE), against the image, both in [0, 1]: 10 log10(1 / MSE) per image (B,)."""
    was_training = model.training
    model.eval()
    recon = model.decode(model.encode(x, c).mean, c).mean.clamp(0, 1)
    model.train(was_training)
    mse = (recon - x).square().flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def _mean_stderr(v: torch.Tensor) -> tuple[float, float]:
    v = v.double()
    se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


METRICS = ("nll", "fd", "fid")


def evaluate(run_dir: str | Path, n: int | None = None, k: int | None = None, device: str = "cpu",
             progress: bool = True, write: bool = True, dataset=None,
             metrics: tuple[str, ...] = ("nll",), fd_classifier_steps: int = 2000) -> dict[str, Any]:
    """Evaluate a trained run on its test set; writes ``RUN_DIR/eval.json``.

    Metric ``nll``: ``elbo`` (mean per-image ELBO, nats, a lower bound on log p(x)) and
    ``nll`` (the k-sample importance-sampled estimate of -log p(x), nats; k defaults to
    `default_k` of the image size), each with the
    standard error of the mean over test images, and the data protocol used.
    Metric ``fd``: the Fréchet distance between test images and as many prior samples in
    the feature space of vaelab's own classifier (:mod:`vaelab.quality`): ``fd`` for draws
    x ~ p(x|z), ``fd_mean`` for decoder means, and ``fd_train`` between training and test
    images (what a perfect model would reach, up to sampling); the classifier trains for
    `fd_classifier_steps` steps the first time a dataset is used.
    Metric ``fid``: Inception-v3 FID (Heusel et al. 2017) through torchmetrics, comparable
    with papers' FID, on machines with the ``vaelab[inception]`` extra and its weights.
    """
    if n is not None and n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    tune_malloc()
    dist, dev = distributed(device)
    progress = progress and dist.main
    cfg, model = load_run(run_dir, dev)
    check_data_fit(cfg.model, cfg.data.binarization)
    data = dataset or load_configured(cfg.data, progress=progress)
    seed = cfg.data.binarization_seed
    density = not model.likelihood.discrete
    if cfg.data.fingerprint and data.fingerprint and data.fingerprint != cfg.data.fingerprint and dist.main:
        print(f"warning: the data in {data.source} differ from those the run trained on "
              f"(fingerprint {data.fingerprint}, was {cfg.data.fingerprint})", file=sys.stderr)
    inputs = model_inputs(model, cfg, data.test.head(n), len(data.classes), dev, memory_budget(cfg.data, dev))
    protocol = "dequantized" if density and cfg.data.binarization == "none" else cfg.data.binarization
    dims = math.prod(data.image_shape)
    k = k or default_k(dims)
    start = time.perf_counter()
    result = _protocol(cfg, model, data.name, len(inputs), k, BINARIZATION_NOTE[protocol].format(seed=seed))
    # each process takes a contiguous share of the test images, in chunks of 1000; results
    # are gathered in order
    first, last = dist.shard(len(inputs))
    chunks = [(i, min(last, i + 1000)) for i in range(first, last, 1000)]
    if "nll" in metrics and model.has_density:
        bits_dims = dims if cfg.data.binarization == "none" else None  # bits/dim for grey levels and colour
        result.update(_likelihood(model, inputs, chunks, k, dist, density, dims, bits_dims, progress))
        result["active_units"] = active_units(model, inputs, dist)
        result["latent_dim"] = model.latent_dim
    elif "nll" in metrics:
        result.update(_reconstruction_only(model, inputs, chunks, dist))
    if "nll" in metrics and cfg.data.binarization == "none":
        empty = torch.empty(0, device=inputs.device)
        psnr = dist.gather_rows(torch.cat([empty] + [reconstruction_psnr(model, *inputs.rows(i, j)[:2])
                                                     for i, j in chunks]), len(inputs))
        result["recon_psnr"], result["recon_psnr_stderr"] = _mean_stderr(psnr)
    if "fd" in metrics and dist.main:
        result.update(sample_quality(model, cfg, data, inputs, dev, progress, fd_classifier_steps))
    if "fid" in metrics and dist.main:
        result.update(inception_quality(model, inputs, dev, progress))
    result["seconds"] = round(time.perf_counter() - start, 2)
    if write and dist.main:
        write_json(Path(run_dir) / "eval.json", result)
    return result


def _protocol(cfg, model, dataset: str, n: int, k: int, binarization_detail: str) -> dict[str, Any]:
    """What an evaluation measured on: the data, its binarisation, the model, k."""
    result: dict[str, Any] = {
        "dataset": dataset, "split": "test", "n": n, "k": k,
        "binarization": cfg.data.binarization, "binarization_detail": binarization_detail,
        "likelihood": cfg.model.likelihood, "model": cfg.model.model,
        "samples": "tied to each test image (seed 0): the same for any number of processes",
    }
    if model.conditional:
        result["conditioned_on"] = "custom side information" if cfg.data.conditions else "class label"
    return result


def format_result(r: dict[str, Any]) -> str:
    """An evaluation's results as the table `vaelab evaluate` prints."""
    rows = [("dataset", f"{r['dataset']} ({r['split']}, n={r['n']})"), ("binarization", r["binarization_detail"])]
    if "nll" in r:
        rows += [("ELBO (nats)", f"{r['elbo']:.2f} +- {r['elbo_stderr']:.2f}"),
                 (f"-log p(x), IS k={r['k']} (nats)", f"{r['nll']:.2f} +- {r['nll_stderr']:.2f}")]
        if "bits_per_dim" in r:
            rows.append(("bits/dim", f"{r['bits_per_dim']:.4f}"))
        if "recon_psnr" in r:
            rows.append(("reconstruction PSNR (dB)", f"{r['recon_psnr']:.2f} +- {r['recon_psnr_stderr']:.2f}"))
        if "active_units" in r:
            rows.append(("active latent units", f"{r['active_units']} of {r['latent_dim']}"))
        if "nll_note" in r:
            rows.append(("note", r["nll_note"]))
    elif "recon_nll" in r:
        rows += [("-log p(x|z=f(x)) (nats)", f"{r['recon_nll']:.2f} +- {r['recon_nll_stderr']:.2f}"),
                 ("note", r["note"])]
    if "fd" in r:
        rows += [(f"FD, {r['fd_n']} prior samples", f"{r['fd']:.3f} (decoder means: {r['fd_mean']:.3f}; "
                  f"training vs test images: {r['fd_train']:.3f})"), ("FD note", r["fd_note"])]
    rows.append(("seconds", f"{r['seconds']:.1f}"))
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def _likelihood(model, inputs: SplitInputs, chunks: list[tuple[int, int]], k: int, dist: Dist, density: bool,
                dims: int, bits_dims: int | None, progress: bool) -> dict[str, Any]:
    """ELBO and IS-NLL (k samples) over this process's chunks of the test images, gathered;
    with `bits_dims`, bits/dim for D = bits_dims values per image."""
    parts = []
    bar = progress_bar(total=sum(j - i for i, j in chunks), desc=f"IS k={k}", show=progress)
    for i, j in chunks:
        xb, cb, _ = inputs.rows(i, j)
        parts.append(log_likelihood(model, xb, k=k, c=cb, index=inputs.index(i, j)))
        bar.update(len(xb))
    bar.close()
    empty = torch.empty(0, device=inputs.device)
    log_px = dist.gather_rows(torch.cat([p[0] for p in parts]) if parts else empty, len(inputs))
    elbo = dist.gather_rows(torch.cat([p[1] for p in parts]) if parts else empty, len(inputs))
    result: dict[str, Any] = {}
    if density:
        # A density on [0, 1): P(bin of width 1/256) >= (1/256)^D exp(E_u log p), so
        # -log p + D log 256 is an upper bound on the discrete NLL (Theis et al. 2016).
        shift = dims * math.log(256)
        log_px, elbo = log_px - shift, elbo - shift
        result["nll_note"] = "density likelihood: nll = -log p(dequantised x) + D log 256, a bound on the discrete NLL"
    result["elbo"], result["elbo_stderr"] = _mean_stderr(elbo)
    result["nll"], result["nll_stderr"] = _mean_stderr(-log_px)
    if bits_dims:  # D counts every channel of every pixel: grey-level and colour images alike
        result["bits_per_dim"] = result["nll"] / (bits_dims * math.log(2))
        result["dims"] = bits_dims
    return result


def _reconstruction_only(model, inputs: SplitInputs, chunks: list[tuple[int, int]], dist: Dist) -> dict[str, Any]:
    """A plain autoencoder's -log p(x | z = f(x)): it has no density to bound."""
    empty = torch.empty(0, device=inputs.device)
    with torch.inference_mode():  # the AE is never conditional
        recon = torch.cat([empty] + [model.decode(model.encode(xb).mean).log_prob(xb)
                                     for xb, _, _ in (inputs.rows(i, j) for i, j in chunks)])
    recon = dist.gather_rows(recon, len(inputs))
    mean, stderr = _mean_stderr(-recon)
    return {"recon_nll": mean, "recon_nll_stderr": stderr,
            "note": "a plain autoencoder has no density: only -log p(x | z = f(x)) is reported"}


def sample_quality(model, cfg, data, inputs: SplitInputs, device: torch.device, progress: bool,
                   classifier_steps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Fréchet distances (vaelab.quality) of as many prior samples as `inputs` has test
    images; conditional models sample under the test images' own conditions."""
    from vaelab.quality import classifier, features, frechet_distance

    net, info = classifier(data, cfg.data.binarization, device, steps=classifier_steps, progress=progress)
    g = torch.Generator(device=device).manual_seed(seed)
    real, draws, means = [], [], []
    with torch.no_grad():
        for xb, cb, _ in inputs.chunks(1000):
            dist = model.sample(len(xb), generator=g, c=cb)
            real.append(features(net, xb))
            means.append(features(net, dist.mean.clamp(0, 1)))
            draws.append(features(net, dist.sample(generator=g).clamp(0, 1)))
        n = len(inputs)
        train = model_inputs(model, cfg, data.train.head(n), len(data.classes), device)
        reference = torch.cat([features(net, xb) for xb, _, _ in train.chunks(1000)])
    real = torch.cat(real)
    return {"fd": frechet_distance(real, torch.cat(draws)), "fd_mean": frechet_distance(real, torch.cat(means)),
            "fd_train": frechet_distance(real, reference), "fd_n": n,
            "fd_note": f"Fréchet distance in the features of vaelab's own {info['features']}-feature classifier "
                       f"(test accuracy {info['test_accuracy']:.4f}); comparable across models on this dataset, "
                       "not to Inception-based FID",
            "fd_classifier_accuracy": info["test_accuracy"]}


def inception_quality(model, inputs: SplitInputs, device: torch.device, progress: bool, seed: int = 0) -> dict[str, Any]:
    """Inception FID between the test images and as many prior samples (x ~ p(x|z));
    conditional models sample under the test images' own conditions."""
    from vaelab.quality import as_rgb, inception_metric

    metric = inception_metric(device)
    g = torch.Generator(device=device).manual_seed(seed)
    bar = progress_bar(total=len(inputs), desc="Inception FID", show=progress)
    with torch.no_grad():
        for xb, cb, _ in inputs.chunks(500):
            metric.update(as_rgb(xb), real=True)
            metric.update(as_rgb(model.sample(len(xb), generator=g, c=cb).sample(generator=g).clamp(0, 1)), real=False)
            bar.update(len(xb))
    bar.close()
    return {"fid": float(metric.compute()), "fid_n": len(inputs),
            "fid_note": "Inception-v3 FID (torchmetrics, 2048-D pool features; grey images repeated to RGB, "
                        "resized to 299 by the library)"}


# ----------------------------------------------------------------------------- invariance probe


def probe(run_dir: str | Path, layers: int = 1, hidden: int = 256, epochs: int = 30, seed: int = 0,
          device: str = "cpu", write: bool = True, dataset=None) -> dict[str, Any]:
    """How much does z know about the class? (Moyer et al. 2018, section 5.)

    A fresh classifier with `layers` hidden layers (0 = logistic regression) is trained
    to predict the label from the posterior means of the training set, independently of
    the model's own training, and its accuracy is measured on the test set next to the
    majority-class rate. Also reported: the reconstruction MSE of the test images
    (decoder mean, with the true condition for conditional models). Writes probe.json.
    """
    from torch import nn

    from vaelab.nets import mlp

    if not 0 <= layers <= 3:
        raise ValueError(f"probe layers must be 0-3, got {layers}")
    tune_malloc()
    dev = resolve_device(device)
    cfg, model = load_run(run_dir, dev)
    data = dataset or load_configured(cfg.data)
    data.require_labels("the probe")
    n_classes = len(data.classes)
    inputs = {name: model_inputs(model, cfg, getattr(data, name), n_classes, dev, memory_budget(cfg.data, dev))
              for name in ("train", "test")}
    z = {k: posterior_means(model, v) for k, v in inputs.items()}
    y = {k: v.labels for k, v in inputs.items()}
    mean, std = z["train"].mean(0), z["train"].std(0).clamp_min(1e-6)  # standardise features
    feats = {k: (v - mean) / std for k, v in z.items()}

    torch.manual_seed(seed)
    clf = mlp([feats["train"].shape[1], *([hidden] * layers), n_classes], "relu").to(dev)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator(device=dev).manual_seed(seed)
    n = len(y["train"])
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g, device=dev).split(256):
            loss = nn.functional.cross_entropy(clf(feats["train"][idx]), y["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((clf(feats["test"]).argmax(1) == y["test"]).float().mean())
        train_acc = float((clf(feats["train"]).argmax(1) == y["train"]).float().mean())
        counts = torch.bincount(y["train"], minlength=n_classes)
        majority = float((y["test"] == counts.argmax()).float().mean())
        se = torch.cat([(model.decode(z["test"][i : i + len(xb)], cb).mean.clamp(0, 1) - xb).square().flatten(1).mean(1)
                        for i, (xb, cb, _) in zip(range(0, len(z["test"]), 2000), inputs["test"].chunks(2000))])
        mse = float(se.mean())
    result = {"accuracy": acc, "train_accuracy": train_acc, "majority": majority, "recon_mse": mse,
              "probe_layers": layers, "probe_hidden": hidden, "probe_epochs": epochs, "model": cfg.model.model,
              "dataset": data.name, "n_train": n, "n_test": len(y["test"]), "seed": seed}
    if write:
        write_json(Path(run_dir) / "probe.json", result)
    return result
