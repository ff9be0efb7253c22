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
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vaelab.batches import SplitInputs, memory_budget, model_inputs
from vaelab.checkpoint import eval_path, load_run, loaded, run_device
from vaelab.config import ConfigError
from vaelab.data import DataError
from vaelab.disentangle import DISENTANGLEMENT_METRICS, betavae_score, dci, factorvae_score, mig, require_sklearn, sap
from vaelab.distributions import DiagonalGaussian, GaussianChain, GaussianMixture, StandardNormal
from vaelab.files import FileError, writable, write_json
from vaelab.models import ACTIVE_VARIANCE, active_dims, check_data_fit
from vaelab.noise import ExampleNoise
from vaelab.options import METRICS, EvaluateOptions, ProbeOptions, options_of
from vaelab.plots import kl_bars, save_figure
from vaelab.runtime import (
    Dist,
    ProgressLine,
    distributed,
    progress_bar,
    rebalance_threads,
    resolve_device,
    tune_malloc,
)
from vaelab.sources import load_configured

__all__ = ["evaluate", "format_result", "format_probe", "log_likelihood", "Sampling", "posterior_means",
           "reconstruction_psnr", "probe", "kl_summary", "kl_figure", "mutual_information", "active_mask"]

BINARIZATION_NOTE = {
    "dynamic": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "fixed": "stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed {seed}",
    "none": "none: binary pixels as stored, pixel/255 in {{0, 1}}",
    "discretized": "none: 8-bit values as stored, pixel/255, each scored as one of 256 levels (a discretized "
                   "likelihood)",
    "dequantized": "none: 8-bit values, dequantised once as (pixel + u)/256, u ~ U(0,1), seed {seed}",
}


@torch.no_grad()
def posterior_means(model, x: torch.Tensor | SplitInputs, c: torch.Tensor | None = None,
                    batch: int = 2000) -> torch.Tensor:
    """Encode images to their posterior means, the mean of q(z|x) (for an AE: the code).

    Runs in batches, without gradients.

    Args:
        model: A trained vaelab model, such as ``run.model``.
        x: Images ``(N, C, H, W)`` in [0, 1] as the model sees them (binarised for a Bernoulli
            likelihood), or a split's inputs as ``vaelab.batches.model_inputs`` gives them.
        c: Conditions ``(N, C')`` for a conditional model; None otherwise, or when `x` is a
            split's inputs (which carry their own).
        batch: Images per encoder call.

    Returns:
        Posterior means ``(N, D)``, D the latent size.

    Examples:
        >>> from vaelab.evaluate import posterior_means
        >>> posterior_means(run.model, run.images("test", 8)).shape
        torch.Size([8, 2])
    """
    if isinstance(x, SplitInputs):
        return torch.cat([model.encode(xb, cb).mean for xb, cb, _ in x.chunks(batch)])
    return torch.cat([model.encode(x[i : i + batch], None if c is None else c[i : i + batch]).mean
                      for i in range(0, len(x), batch)])


@dataclass(frozen=True)
class Sampling:
    """How ``log_likelihood`` draws its k importance samples and paces the work; what it
    estimates is set by k alone.

    Attributes:
        seed: The seed of the samples; unused when `generator` is given.
        generator: Continue this random stream instead of seeding a new one (ignored when
            the samples are tied to the images by an index).
        rows: Decoder rows (images x samples) per call; None picks from the image size.
        progress: Show a progress bar.

    Examples:
        >>> from vaelab.evaluate import Sampling
        >>> Sampling(seed=3).rows is None, Sampling(rows=64).seed
        (True, 0)
    """

    seed: int = 0
    generator: torch.Generator | None = None
    rows: int | None = None
    progress: bool = False


@torch.inference_mode()
def log_likelihood(model, x: torch.Tensor, k: int = 1000, c: torch.Tensor | None = None, *,
                   index: torch.Tensor | None = None,
                   sampling: Sampling | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimate log p(x) of each image with k importance samples, and its ELBO.

    log p(x) ~= log (1/k) sum_i p(x, z_i) / q(z_i|x) with z_i ~ q(z|x) (Burda et al. 2016);
    the ELBO estimate is the mean of the same k log-weights, so it is never above the
    log p(x) estimate. Memory stays bounded for any k: samples are drawn in chunks.

    Args:
        model: A trained vaelab model with a density (not the plain AE), e.g. ``run.model``.
        x: Images ``(N, C, H, W)`` in [0, 1] as the model sees them (binarised for a
            Bernoulli likelihood).
        k: Importance samples per image; more gives a tighter estimate.
        c: Conditions ``(N, C')`` for a conditional model: log p(x|c) is estimated.
        index: The images' indices ``(N,)`` in their dataset: ties each image's samples to
            the image and the seed, so any split of a test set into chunks gives the same numbers.
        sampling: The seed (or generator) of the samples, the decoder rows per call and the
            progress bar (a ``Sampling``; None: its defaults).

    Returns:
        ``(log_px, elbo)``, each ``(N,)``, in nats.

    Raises:
        TypeError: The model has no density.
        ValueError: k is below 1.

    Examples:
        >>> from vaelab.evaluate import Sampling, log_likelihood
        >>> log_px, elbo = log_likelihood(run.model, run.images("test", 8), k=100)
        >>> log_px.shape, bool((log_px >= elbo).all())
        (torch.Size([8]), True)
        >>> x, idx = run.images("test", 8), torch.arange(8)        # samples tied to each image:
        >>> a, _ = log_likelihood(run.model, x, k=100, index=idx, sampling=Sampling(seed=1))
        >>> b, _ = log_likelihood(run.model, x, k=100, index=idx, sampling=Sampling(seed=1, rows=64))
        >>> torch.allclose(a, b, atol=1e-4)                       # the same in any chunking
        True
    """
    if not getattr(model, "has_density", False):
        raise TypeError(f"{type(model).__name__} does not declare a density p(x): log_likelihood needs a model with "
                        "has_density = True and log_weights(x, k, q=None, generator=None, c=None) -> (k, B) "
                        "log-weights (a subclass of vaelab.models.VAE has both; a plain autoencoder has no density)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s = sampling or Sampling()
    seed = s.seed
    model.eval()
    gen = s.generator if s.generator is not None else torch.Generator(device=x.device).manual_seed(seed)
    rows = s.rows or decode_rows(math.prod(x.shape[1:]))
    per_batch = max(1, rows // k)  # images per step
    chunk = min(k, max(1, rows // per_batch))  # samples per step
    log_px, elbo = torch.empty(len(x), device=x.device), torch.empty(len(x), device=x.device)
    bar = progress_bar(total=len(x), desc=f"IS k={k}", show=s.progress, leave=False)
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
        rebalance_threads()  # follow this process's share of the CPUs
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
    """PSNR in dB of each image's reconstruction: 10 log10(1 / MSE) against the image.

    The reconstruction is the decoder's mean at the posterior mean (the code, for an AE),
    clamped to [0, 1]. Higher is better.

    Args:
        model: A trained vaelab model, such as ``run.model``.
        x: Images ``(B, C, H, W)`` in [0, 1].
        c: Conditions ``(B, C')`` for a conditional model; None otherwise.

    Returns:
        PSNR per image ``(B,)``, in dB.

    Examples:
        >>> from vaelab.evaluate import reconstruction_psnr
        >>> psnr = reconstruction_psnr(run.model, run.images("test", 8))
        >>> psnr.shape, bool((psnr > 0).all())
        (torch.Size([8]), True)
    """
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


def evaluate(run_dir: str | Path, options: EvaluateOptions | None = None, *, progress: bool = True,
             write: bool = True, dataset=None, **settings: Any) -> dict[str, Any]:
    """Evaluate a trained run on its test set, as ``vaelab evaluate`` does; writes ``eval.json``
    for the default settings, and a file named by the settings otherwise (``eval-k10.json``,
    see [eval_path][vaelab.checkpoint.eval_path]), so that no evaluation replaces one made with
    other settings.

    Metric ``nll``: ``elbo`` (the mean per-image ELBO in nats, a lower bound on log p(x)) and
    ``nll`` (the k-sample importance-sampled estimate of -log p(x) in nats), each with the
    standard error of the mean over test images, and the data protocol used. For models with
    a density, also what z encodes: ``active_units``, the KL and its split per dimension
    (``kl_summary``), I(x; z) (``mutual_information``) and a warning on posterior
    collapse; with `figures`, ``kl_per_dim.png`` is written in the run folder even when not
    `write`. A plain autoencoder has no density: it gets ``recon_nll``, -log p(x | z = f(x)),
    instead of ``elbo`` and ``nll``.

    Metric ``fd``: the Fréchet distance between test images and as many prior samples in the
    features of vaelab's own classifier: ``fd`` for draws x ~ p(x|z), ``fd_mean`` for decoder
    means, and ``fd_train`` between training and test images (what a perfect model would
    reach, up to sampling). The classifier trains the first time a dataset is used.

    Metric ``fid``: Inception-v3 FID (Heusel et al. 2017) through torchmetrics, comparable
    with papers' FID; needs the ``vaelab[inception]`` extra and its weights.

    Metrics ``mig``, ``dci``, ``sap``, ``factorvae``, ``betavae``: disentanglement (see
    ``vaelab.disentangle``) of the posterior means, on a factor dataset only; MIG, DCI and
    SAP on the test images' codes, the FactorVAE and beta-VAE scores on images the
    dataset draws with one factor fixed. Each metric's numbers are at the top level
    (``mig``, ``dci_disentanglement``, ...) and in full under ``disentanglement``, with the
    number of points and the scikit-learn version; they need the ``vaelab[scores]`` extra.

    Args:
        run_dir: The run folder, or a loaded [vaelab.Run][vaelab.api.Run], whose model is
            used as it is (on its device, at its precision) unless `device` is another one.
        options: An [EvaluateOptions][vaelab.options.EvaluateOptions], or its fields as keywords:
        n: Evaluate the first n test images only; None for all.
        k: Importance samples per image; None: 1000 for images up to 32x32 grey, else 100.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``; None: a loaded Run's own device, else the CPU.
        progress: Show progress bars.
        write: Write the result to the run folder (``RUN_DIR/eval.json`` for the default
            settings), or to `out`.
        dataset: A ``vaelab.data.Dataset`` to use instead of loading the run's data (its
            results are written only to `out`).
        metrics: Any of ``"nll"``, ``"fd"``, ``"fid"``, ``"mig"``, ``"dci"``, ``"sap"``,
            ``"factorvae"``, ``"betavae"``.
        fd_classifier_steps: Training steps of the ``fd`` classifier, the first time.
        figures: Write ``RUN_DIR/kl_per_dim.png``.
        out: A .json file to write the result to instead.

    Returns:
        The results as a JSON-able dict (numbers in nats, ``seconds`` taken, the protocol, and
        ``settings``: the k, n and metrics that differ from the defaults, None where default).

    Raises:
        ValueError: n is not positive, or a metric is unknown.
        vaelab.data.DataError: A disentanglement metric on a dataset without factors.
        vaelab.config.ConfigError: A disentanglement metric without scikit-learn.

    Examples:
        >>> from vaelab.evaluate import evaluate
        >>> r = evaluate(run.path, n=100, k=10, progress=False, write=False, figures=False)
        >>> r["n"], r["k"], r["latent_dim"]
        (100, 10, 2)
        >>> r["nll"] <= -r["elbo"]
        True
    """
    o = options_of(EvaluateOptions, options, **settings)
    wanted = _check_options(o)
    tune_malloc()
    dist, dev = distributed(run_device(run_dir, o.device))
    progress = progress and dist.main
    cfg, model = loaded(run_dir, dev)  # a folder, or a vaelab.Run's own model
    run_dir = Path(getattr(run_dir, "path", run_dir))
    check_data_fit(cfg.model, cfg.data.binarization)
    # the Inception weights load before any image is scored: a missing library or weights stop here
    fid_metric = _inception_metric(dev) if "fid" in o.metrics and dist.main else None
    data = dataset or load_configured(cfg.data, progress=progress)
    _check_factors(data, wanted)
    if dist.main:
        _warn_if_other_data(cfg, data)
    inputs = model_inputs(model, cfg, data.test.head(o.n), len(data.classes), dev, memory_budget(cfg.data, dev))
    dims = math.prod(data.image_shape)
    t = _TestPass(cfg, model, data, inputs, dist, dev, progress, o.k or default_k(dims))
    settings = _settings(t, o)
    target = Path(o.out) if o.out is not None else None if dataset is not None else eval_path(run_dir, **settings)
    if write and target is not None and dist.main:
        writable(target)  # refused now, not after the evaluation
    start = time.perf_counter()
    result = _protocol(cfg, model, data.name, len(inputs), t.k,
                       BINARIZATION_NOTE[_data_protocol(cfg, model)].format(seed=cfg.data.binarization_seed))
    result["settings"] = settings
    if data.cache:  # a folder or array file: its name alone ("64") may not tell which
        result["data"] = data.source
    result.update(_metrics(t, o, wanted, fid_metric, run_dir if o.figures and dist.main else None))
    result["seconds"] = round(time.perf_counter() - start, 2)
    if write and target is not None and dist.main:
        write_json(target, result)
    return result


def _settings(t: _TestPass, o: EvaluateOptions) -> dict[str, Any]:
    """The k, n and metrics of an evaluation that differ from the defaults (None where
    default): they name its file and are recorded in it."""
    dims = math.prod(t.data.image_shape)
    return {"k": None if t.k == default_k(dims) else t.k,
            "n": None if len(t.inputs) == len(t.data.test) else len(t.inputs),
            "metrics": None if tuple(o.metrics) == ("nll",) else list(o.metrics)}


def _metrics(t: _TestPass, o: EvaluateOptions, wanted: list[str], fid_metric, figures: Path | None) -> dict[str, Any]:
    """The results of each metric family asked for, in eval.json's order; the sample-quality and
    disentanglement metrics on the main process only."""
    result: dict[str, Any] = {}
    if "nll" in o.metrics:
        result.update(_likelihood_metrics(t, figures))
    if "nll" in o.metrics and t.cfg.data.binarization == "none":
        result.update(_psnr_metrics(t))
    if not t.dist.main:
        return result
    if "fd" in o.metrics:
        result.update(sample_quality(t, o.fd_classifier_steps))
    if "fid" in o.metrics:
        result.update(inception_quality(t.model, t.inputs, t.device, t.progress, metric=fid_metric))
    if wanted:
        result.update(disentanglement(t.model, t.data, t.inputs, wanted, t.progress))
    return result


def _inception_metric(device: torch.device):
    """The Inception FID metric (vaelab.quality), its library and weights loaded."""
    from vaelab.quality import inception_metric

    return inception_metric(device)


def _warn_if_other_data(cfg, data) -> None:
    """Warn when the data's fingerprint differs from the one the run trained on."""
    if cfg.data.fingerprint and data.fingerprint and data.fingerprint != cfg.data.fingerprint:
        print(f"warning: the data in {data.source} differ from those the run trained on "
              f"(fingerprint {data.fingerprint}, was {cfg.data.fingerprint})", file=sys.stderr)


def _check_options(o: EvaluateOptions) -> list[str]:
    """Refuse what `evaluate` cannot do before any work, one line each; returns the
    disentanglement metrics asked for (scikit-learn checked for them)."""
    if o.n is not None and o.n <= 0:
        raise ValueError(f"--n must be positive, got {o.n}")
    unknown = [m for m in o.metrics if m not in METRICS]
    if unknown or not o.metrics:
        raise ValueError(f"unknown metric(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    if o.k is not None and o.k <= 0:
        raise ValueError(f"--k must be positive, got {o.k}")
    if o.out is not None and Path(o.out).suffix.lower() != ".json":
        raise ConfigError(f"{o.out}: the results are written as .json")
    wanted = [m for m in o.metrics if m in DISENTANGLEMENT_METRICS]
    if wanted:
        require_sklearn()
    return wanted


def _check_factors(data, wanted: list[str]) -> None:
    """Refuse disentanglement metrics the data cannot give: no factors, or (for the scores that
    draw images with one factor fixed) factors an array file gave."""
    if not wanted:
        return
    factors = data.require_factors(f"the {', '.join(wanted)} metric{'s' * (len(wanted) > 1)}")
    drawn = [m for m in wanted if m in ("factorvae", "betavae")]
    if drawn and factors.grid is None:
        many = len(drawn) > 1
        raise DataError(f"the {' and '.join(drawn)} score{'s' * many} draw{'s' * (not many)} images with one "
                        "factor fixed, which only the "
                        "factor datasets (dsprites, xyobject) can; use mig, dci or sap with an array file's "
                        "factors")


def _data_protocol(cfg, model) -> str:
    """How the test images are scored (a key of BINARIZATION_NOTE): binarised as trained, or
    undequantised levels dequantised once for a density and binned for a discretized one."""
    protocol = cfg.data.binarization
    if protocol == "none" and not model.likelihood.discrete:
        return "dequantized"
    if protocol == "none" and cfg.model.likelihood != "bernoulli":  # the logistic family: 256 bins a value
        return "discretized"
    return protocol


@dataclass
class _TestPass:
    """What the metrics of one evaluation read: the run, its test images and the processes."""

    cfg: Any
    model: Any
    data: Any
    inputs: SplitInputs
    dist: Dist
    device: torch.device
    progress: bool
    k: int

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """This process's contiguous share of the test images, in chunks of 1000; results are
        gathered in order."""
        first, last = self.dist.shard(len(self.inputs))
        return [(i, min(last, i + 1000)) for i in range(first, last, 1000)]


def _likelihood_metrics(t: _TestPass, figures: Path | None) -> dict[str, Any]:
    """Metric ``nll``: the ELBO and IS-NLL and what z encodes (active units, KL, I(x; z)) for a
    model with a density; -log p(x | z = f(x)) for a plain autoencoder. `figures`: the folder
    that gets kl_per_dim.png, or None."""
    model, inputs, cfg = t.model, t.inputs, t.cfg
    if not model.has_density:
        return _reconstruction_only(model, inputs, t.chunks, t.dist)
    dims = math.prod(t.data.image_shape)
    bits_dims = dims if cfg.data.binarization == "none" else None  # bits/dim for grey levels and colour
    line = ProgressLine(f"evaluating {t.data.name} test (ELBO and IS-NLL, k={t.k})", len(inputs), show=t.progress,
                        bar=progress_bar(total=len(inputs), desc=f"IS k={t.k}", show=t.progress))
    result = _likelihood(model, inputs, t.chunks, t.k, t.dist, not model.likelihood.discrete, dims, bits_dims, line)
    result.update(_diagnostics(model, inputs, t.dist, figures))
    return result


def _psnr_metrics(t: _TestPass) -> dict[str, Any]:
    """The reconstructions' PSNR (dB) over the test images, mean and standard error."""
    empty = torch.empty(0, device=t.inputs.device)
    psnr = t.dist.gather_rows(torch.cat([empty] + [reconstruction_psnr(t.model, *t.inputs.rows(i, j)[:2])
                                                   for i, j in t.chunks]), len(t.inputs))
    mean, stderr = _mean_stderr(psnr)
    return {"recon_psnr": mean, "recon_psnr_stderr": stderr}


SCALARS = {"mig": ("mig",), "dci": ("dci_disentanglement", "dci_completeness", "dci_informativeness"),
           "sap": ("sap",), "factorvae": ("factorvae_score",), "betavae": ("betavae_score",)}
# each metric's headline numbers, at the top level of eval.json (what compare tabulates)
RESULT_KEYS = {"nll": ("nll",), "fd": ("fd",), "fid": ("fid",), **SCALARS}


def disentanglement(model, data, inputs: SplitInputs, metrics: list[str], progress: bool = False) -> dict[str, Any]:
    """The disentanglement metrics of a model's posterior means on a factor dataset.

    MIG, DCI and SAP use the codes of the test images `inputs` against their factors; the
    FactorVAE and beta-VAE scores encode images the dataset draws for chosen factors
    (pixels / 255, as the model sees binary images and the grey levels of undequantised data).
    """
    if model.conditional:
        raise ConfigError("the disentanglement metrics need an unconditional model; this one is conditional")
    factors = data.require_factors("the disentanglement metrics")
    codes = posterior_means(model, inputs).double().cpu().numpy()
    truth = data.test.factors[: len(codes)].numpy()
    dev = inputs.device

    def encode(f):
        out = []
        for i in range(0, len(f), 2000):
            x = factors.images(f[i : i + 2000]).to(dev).float().div_(255)
            out.append(posterior_means(model, x).double().cpu())
        return torch.cat(out).numpy()

    run = {"mig": lambda: mig(codes, truth), "dci": lambda: dci(codes, truth, n_jobs=torch.get_num_threads()),
           "sap": lambda: sap(codes, truth),
           "factorvae": lambda: factorvae_score(encode, factors.sizes),
           "betavae": lambda: betavae_score(encode, factors.sizes)}
    out: dict[str, Any] = {"disentanglement": {}}
    line = ProgressLine(f"disentanglement metrics on {data.name}", len(metrics), unit="metrics", show=progress)
    for m in metrics:
        r = run[m]()
        out["disentanglement"][m] = r
        out.update({k: r[k] for k in SCALARS[m]})
        line.update()
    out["disentanglement"]["factors"] = [n for n, s in zip(factors.names, factors.sizes) if s > 1]
    return out


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


def format_probe(r: dict[str, Any]) -> str:
    """Lay out the result of [probe][vaelab.evaluate.probe] as the table ``vaelab probe`` prints.

    Args:
        r: The dict ``probe`` returns (or ``probe.json`` read back).

    Returns:
        The table as text, one quantity a line.

    Examples:
        >>> from vaelab.evaluate import format_probe
        >>> print(format_probe({"model": "icvae", "dataset": "mnist", "probe_layers": 1, "accuracy": 0.2,
        ...                     "majority": 0.1135, "recon_mse": 0.01}))
        model                               icvae on mnist
        probe accuracy (1 hidden layers)    0.2000
        majority-class rate                 0.1135
        reconstruction MSE                  0.01000
    """
    rows = [("model", f"{r['model']} on {r['dataset']}"),
            (f"probe accuracy ({r['probe_layers']} hidden layers)", f"{r['accuracy']:.4f}"),
            ("majority-class rate", f"{r['majority']:.4f}"),
            ("reconstruction MSE", f"{r['recon_mse']:.5f}")]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def format_result(r: dict[str, Any]) -> str:
    """Lay out the results of ``evaluate`` as the table ``vaelab evaluate`` prints.

    Args:
        r: The dict ``evaluate`` returns (or ``eval.json`` read back).

    Returns:
        The table as text, one quantity a line; long notes wrap under their value.

    Examples:
        >>> from vaelab.evaluate import evaluate, format_result
        >>> r = evaluate(run.path, n=100, k=10, progress=False, write=False, figures=False)
        >>> print(format_result(r))
        dataset                    mnist-sample (test, n=100)
        binarization               stochastic: test images binarised once, x ~ Bernoulli(pixel/255), seed 0
        ELBO (nats)                ...
        seconds                    ...
    """
    shown = f"{r['dataset']} ({r['split']}, n={r['n']})" + (f" from {r['data']}" if r.get("data") else "")
    rows = [("dataset", shown), ("binarization", r["binarization_detail"])]
    if "nll" in r:
        rows += [("ELBO (nats)", f"{r['elbo']:.2f} +- {r['elbo_stderr']:.2f}"),
                 (f"-log p(x), IS k={r['k']} (nats)", f"{r['nll']:.2f} +- {r['nll_stderr']:.2f}")]
        if "bits_per_dim" in r:
            rows.append(("bits/dim", f"{r['bits_per_dim']:.4f}"))
        if "recon_psnr" in r:
            rows.append(("reconstruction PSNR (dB)", f"{r['recon_psnr']:.2f} +- {r['recon_psnr_stderr']:.2f}"))
        if "active_units" in r:
            rows.append(("active latent units", f"{r['active_units']} of {r['latent_dim']}"))
        rows += _diagnostic_rows(r)
        if "nll_note" in r:
            rows.append(("note", r["nll_note"]))
    elif "recon_nll" in r:
        rows += [("-log p(x|z=f(x)) (nats)", f"{r['recon_nll']:.2f} +- {r['recon_nll_stderr']:.2f}"),
                 ("note", r["note"])]
    if "fd" in r:
        rows += [(f"FD, {r['fd_n']} prior samples", f"{r['fd']:.3f} (decoder means: {r['fd_mean']:.3f}; "
                  f"training vs test images: {r['fd_train']:.3f})"), ("FD note", r["fd_note"])]
    for m, label in (("mig", "MIG"), ("dci_disentanglement", "DCI disentanglement"),
                     ("dci_completeness", "DCI completeness"), ("dci_informativeness", "DCI informativeness"),
                     ("sap", "SAP"), ("factorvae_score", "FactorVAE score"), ("betavae_score", "beta-VAE score")):
        if m in r:
            rows.append((label, f"{r[m]:.3f}"))
    rows.append(("seconds", f"{r['seconds']:.1f}"))
    width = max(len(a) for a, _ in rows)
    # long notes wrap under their value column, so the labels stay a column of their own
    return "\n".join(f"{a:<{width}}  " + f"\n{'':<{width}}  ".join(textwrap.wrap(str(b), 100) or [""])
                     for a, b in rows)


def _top_kl(kl: list[float], top: int = 5) -> str:
    """The `top` largest of a KL per dimension, by name, and what the others hold."""
    order = sorted(range(len(kl)), key=lambda i: -kl[i])
    text = ", ".join(f"z{i} {kl[i]:.2f}" for i in order[:top])
    rest = order[top:]
    if not rest:
        return text
    return f"top {top} of {len(kl)}: {text}; the other {len(rest)}: {sum(kl[i] for i in rest):.2f} in all"


def _diagnostic_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The table's rows for what z encodes: KL and its split, I(x; z), the collapse warning."""
    rows = []
    if "kl" in r:
        how = "closed form" if "kl_per_dim" in r else "Monte Carlo"
        rows.append(("KL(q(z|x) || p(z)) (nats)", f"{r['kl']:.2f} +- {r['kl_stderr']:.2f} ({how})"))
    if "kl_per_dim" in r:
        rows.append(("KL per dimension (nats)", _top_kl(r["kl_per_dim"])))
    elif "kl_per_level" in r:
        rows.append(("KL per layer (nats)", "; ".join(
            f"z_{i + 1} ({d} dims, {a} active) {v:.2f}"
            for i, (v, d, a) in enumerate(zip(r["kl_per_level"], r["latent_sizes"], r["active_per_level"])))))
    elif "kl_note" in r:
        rows.append(("KL note", r["kl_note"]))
    if "mi" in r:
        rows.append(("I(x; z) (nats)", f"{r['mi']:.3f} (at most log N = {r['mi_bound']:.2f})"))
    if "mi_note" in r:
        rows.append(("I(x; z) note", r["mi_note"]))
    if "collapse_note" in r:
        rows.append(("warning", r["collapse_note"]))
    if "kl_figure" in r or "kl_figure_note" in r:
        rows.append(("figure", r.get("kl_figure_note", f"{r.get('kl_figure')} in the run folder")))
    return rows


def _likelihood(model, inputs: SplitInputs, chunks: list[tuple[int, int]], k: int, dist: Dist, density: bool,
                dims: int, bits_dims: int | None, line: ProgressLine) -> dict[str, Any]:
    """ELBO and IS-NLL (k samples) over this process's chunks of the test images, gathered;
    with `bits_dims`, bits/dim for D = bits_dims values per image. `line` counts the images
    of every process (this one's times the number of processes)."""
    parts = []
    # pieces of at least 100 images between progress updates: log_likelihood takes them
    # decode_rows // k at a time whatever the piece, and ties the samples to each image
    piece = max(100, decode_rows(dims) // k)
    with line:
        for a, b in chunks:
            for i in range(a, b, piece):
                j = min(b, i + piece)
                xb, cb, _ = inputs.rows(i, j)
                parts.append(log_likelihood(model, xb, k=k, c=cb, index=inputs.index(i, j)))
                line.update(len(xb) * dist.world)
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


def sample_quality(t: _TestPass, classifier_steps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Fréchet distances (vaelab.quality) of as many prior samples as the evaluation `t` has
    test images; conditional models sample under the test images' own conditions."""
    from vaelab.quality import classifier, features, frechet_distance

    model, cfg, data, inputs, device, progress = t.model, t.cfg, t.data, t.inputs, t.device, t.progress
    net, info = classifier(data, cfg.data.binarization, device, steps=classifier_steps, progress=progress)
    g = torch.Generator(device=device).manual_seed(seed)
    real, draws, means = [], [], []
    line = ProgressLine(f"Fréchet distance on {data.name} test: features of prior samples", len(inputs),
                        show=progress)
    with torch.no_grad():
        for xb, cb, _ in inputs.chunks(1000):
            dist = model.sample(len(xb), generator=g, c=cb)
            real.append(features(net, xb))
            means.append(features(net, dist.mean.clamp(0, 1)))
            draws.append(features(net, dist.sample(generator=g).clamp(0, 1)))
            line.update(len(xb))
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


def inception_quality(model, inputs: SplitInputs, device: torch.device, progress: bool, seed: int = 0,
                      metric=None) -> dict[str, Any]:
    """Inception FID between the test images and as many prior samples (x ~ p(x|z));
    conditional models sample under the test images' own conditions. `metric`: one made
    already by vaelab.quality.inception_metric."""
    from vaelab.quality import as_rgb, inception_metric

    metric = metric or inception_metric(device)
    g = torch.Generator(device=device).manual_seed(seed)
    bar = ProgressLine("Inception FID: test images and prior samples", len(inputs), show=progress,
                       bar=progress_bar(total=len(inputs), desc="Inception FID", show=progress))
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


def probe(run_dir: str | Path, options: ProbeOptions | None = None, *, write: bool = True, dataset=None,
          **settings: Any) -> dict[str, Any]:
    """Measure how much the codes know about the class (Moyer et al. 2018, section 5).

    A fresh classifier with `layers` hidden layers (0 = logistic regression) learns to
    predict the label from the posterior means of the training set, apart from the model's
    own training; its accuracy on the test set is reported next to the majority-class rate.
    For an invariant model (icvae), accuracy near the majority rate means z holds little of
    the class. Also reported: the test images' reconstruction MSE (decoder mean, with the
    true condition for conditional models).

    Args:
        run_dir: The run folder; its data must be labelled.
        options: A [ProbeOptions][vaelab.options.ProbeOptions], or its fields as keywords:
        layers: Hidden layers of the classifier, 0 to 3.
        hidden: Width of each hidden layer.
        epochs: Training epochs of the classifier.
        seed: The seed of the classifier's initialisation and data order.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        write: Write the result to ``RUN_DIR/probe.json``.
        dataset: A ``vaelab.data.Dataset`` to use instead of loading the run's data.

    Returns:
        dict: a JSON-able dict, ``accuracy``, ``train_accuracy``, ``majority``, ``recon_mse`` and the
        settings used.

    Raises:
        ValueError: `layers` is outside 0-3.
        vaelab.data.DataError: The data are unlabelled.

    Examples:
        >>> from vaelab.evaluate import probe
        >>> r = probe(run.path, epochs=1, write=False)
        >>> 0 <= r["accuracy"] <= 1, r["n_train"], r["n_test"]
        (True, 2000, 500)
    """
    from torch import nn

    from vaelab.nets import mlp

    o = options_of(ProbeOptions, options, **settings)
    layers, hidden, epochs, seed, device = o.layers, o.hidden, o.epochs, o.seed, o.device
    if not 0 <= layers <= 3:
        raise ValueError(f"probe layers must be 0-3, got {layers}")
    if write:
        writable(Path(run_dir) / "probe.json")  # refused now, not after the probe has trained
    tune_malloc()
    dev = resolve_device(run_device(run_dir, device))
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
    line = ProgressLine(f"training the probe on the codes of {n:,} {data.name} images", epochs, "epochs")
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g, device=dev).split(256):
            loss = nn.functional.cross_entropy(clf(feats["train"][idx]), y["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        line.update(1)
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


# ----------------------------------------------------------------------------- what z encodes
# Per-dimension or per-layer KL, I(x; z) under the aggregate posterior, and a posterior
# collapse warning, on the same test inputs as the likelihood.

COLLAPSE_SHARE = 0.10  # fewer active dimensions than this share of the latent ones: collapse
KL_SAMPLES = 10  # Monte-Carlo samples per image for a KL with no closed form
MI_BATCH = 1000  # images per batch of the I(x; z) estimate
PAIR_ELEMENTS = 1 << 24  # elements of one (codes x images x D) block: 64 MB of fp32


def _kl_kind(q, prior) -> str:
    """How the KL splits: "dim" (closed form per dimension), "level" (per layer of a chain, by
    Monte Carlo) or "total" (one Monte-Carlo number: flows, mixture priors)."""
    if isinstance(q, DiagonalGaussian) and isinstance(prior, StandardNormal):
        return "dim"
    if isinstance(q, GaussianChain) and isinstance(prior, GaussianChain):
        return "level"
    if hasattr(q, "log_prob_levels") and hasattr(prior, "log_prob_levels"):  # a top-down hierarchy (ladder)
        return "level"
    return "total"


def _kl_terms(q, prior, kind: str, index: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """Each image's KL terms, (B, U): U = D per dimension, L per layer, or 1 (the total).
    Monte-Carlo noise is tied to the images' `index` (B,), so any sharding gives the same."""
    if kind == "dim":
        return q.kl_standard_normal_per_dim()
    z, log_q = q.rsample_with_log_prob(samples, generator=ExampleNoise(index, seed))  # (S, B, D), (S, B)
    if kind == "level":  # (L, S, B) -> (B, L)
        return (q.log_prob_levels(z) - prior.log_prob_levels(z)).mean(1).T
    return (log_q - prior.log_prob(z)).mean(0)[:, None]


@torch.inference_mode()
def kl_terms(model, inputs: SplitInputs, dist: Dist = Dist(), samples: int = KL_SAMPLES,
             seed: int = 0) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The KL of every test image split as far as it splits, and the posterior means, this
    process's shard computed and every process's gathered: (kind, KL (N, U), means (N, D));
    kind and U as in `_kl_terms`."""
    model.eval()
    prior = model.prior()
    kind = _kl_kind(model.encode(*inputs.rows(0, 1)[:2]), prior)
    units = {"dim": model.latent_dim, "level": len(getattr(model, "sizes", ())), "total": 1}[kind]
    # a mixture prior's log-density makes (S, B, K, D) values: rows per step keep that bounded
    components = len(prior.means) if isinstance(prior, GaussianMixture) else 1
    step = min(1000, max(1, PAIR_ELEMENTS // (samples * model.latent_dim * components)))
    first, last = dist.shard(len(inputs))
    kl = [torch.empty(0, units, device=inputs.device)]
    means = [torch.empty(0, model.latent_dim, device=inputs.device)]
    for i in range(first, last, step):
        x, c, _ = inputs.rows(i, min(last, i + step))
        q = model.encode(x, c)
        kl.append(_kl_terms(q, prior, kind, inputs.index(i, i + len(x)), samples, seed).float())
        means.append(q.mean.float())
    n = len(inputs)
    return kind, dist.gather_rows(torch.cat(kl), n), dist.gather_rows(torch.cat(means), n)


def active_mask(means: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> torch.Tensor:
    """Find the active latent dimensions: those whose posterior mean varies over the images.

    A dimension is active when the variance of its posterior mean across images is above
    `threshold` (Burda et al. 2016); an inactive one stays near the prior whatever the image.

    Args:
        means: Posterior means ``(N, D)``, e.g. from ``posterior_means``.
        threshold: The variance above which a dimension counts as active.

    Returns:
        A bool mask ``(D,)``, True where the dimension is active.

    Examples:
        >>> import torch
        >>> from vaelab.evaluate import active_mask
        >>> active_mask(torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.5]]))
        tensor([False,  True])
    """
    m = means.double()
    return active_dims(m.mean(0), m.square().mean(0), threshold)


def mi_terms(q, z: torch.Tensor) -> torch.Tensor:
    """log q(z_i | x_i) - log (1/N) sum_j q(z_i | x_j) for one code z_i ~ q(z | x_i) per image
    of a batch of N whose posterior `q` has batch shape (N,): codes (N, D) -> (N,). Its mean is
    He et al. 2019's minibatch estimate of I(x; z); each term is at most log N. Blocks of
    codes keep the (codes, N, D) values under PAIR_ELEMENTS."""
    n, d = z.shape
    rows = max(1, PAIR_ELEMENTS // (n * d))
    out = []
    for a in range(0, n, rows):
        lp = q.log_prob(z[a : a + rows, None, :])  # (m, N): log q(z_i | x_j)
        out.append(lp.diagonal(offset=a) - torch.logsumexp(lp, 1) + math.log(n))
    return torch.cat(out)


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of ceil(n / size) batches whose sizes differ by at most one."""
    nb = max(1, math.ceil(n / size))
    bounds = [round(b * n / nb) for b in range(nb + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@torch.inference_mode()
def mutual_information(model, inputs: SplitInputs, dist: Dist = Dist(), batch: int = MI_BATCH,
                       seed: int = 0) -> dict[str, Any]:
    """Estimate the mutual information I(x; z) between images and codes, in nats.

    He et al. 2019's minibatch estimator: over batches of about `batch` images,
    I ~= mean_i [log q(z_i|x_i) - log (1/N) sum_j q(z_i|x_j)] with one z_i ~ q(z|x_i) per image.
    It can never exceed log N (N the batch size): a value near log N means the batches are
    too small to measure it. Samples are tied to the images and `seed`, so any number of
    processes gives the same. A flow posterior has no density at any z: then only a note is
    returned.

    Args:
        model: A trained vaelab model with a posterior q(z|x), e.g. ``run.model``.
        inputs: The images as the model is evaluated on them, from
            ``vaelab.batches.model_inputs``; images ``(N, C, H, W)``.
        dist: How the work is shared among processes; the default is this process alone.
        batch: Images per batch of the estimate.
        seed: The seed of the codes drawn.

    Returns:
        dict: ``mi`` (nats), ``mi_batch`` (the batch size N), ``mi_bound`` (log N) and
        ``mi_note`` (how to read it); only ``mi_note`` when it cannot be estimated.

    Examples:
        >>> from vaelab.batches import model_inputs
        >>> from vaelab.data import load_dataset
        >>> from vaelab.evaluate import mutual_information
        >>> inputs = model_inputs(run.model, run.config, load_dataset("mnist-sample").test.head(200), 10)
        >>> r = mutual_information(run.model, inputs)
        >>> sorted(r), r["mi_batch"], 0 <= r["mi"] <= r["mi_bound"]
        (['mi', 'mi_batch', 'mi_bound', 'mi_note'], 200, True)
    """
    model.eval()
    q = model.encode(*inputs.rows(0, 1)[:2])
    if not hasattr(q, "log_prob"):
        return {"mi_note": "I(x; z) not estimated: it needs the posterior's density at any z, and a flow "
                           "posterior has it only at its own samples"}
    if getattr(q, "pairs_cost_a_pass", False):
        return {"mi_note": "I(x; z) not estimated: a top-down posterior scores a code under each other image's "
                           "posterior with a pass of the model per pair (N x N passes per batch)"}
    n = len(inputs)
    batches = _batches(n, batch)
    terms = torch.zeros(n, dtype=torch.float64, device=inputs.device)  # each row filled by one process
    first, last = dist.shard(len(batches))
    for i, j in batches[first:last]:
        x, c, _ = inputs.rows(i, j)
        q = model.encode(x, c)
        z = q.rsample_with_log_prob(1, generator=ExampleNoise(inputs.index(i, j), seed))[0][0]  # (N, D)
        terms[i:j] = mi_terms(q, z).double()
    mi = float(dist.sum_(terms).mean())
    size = min(j - i for i, j in batches)
    bound = math.log(size)
    sizes = f"N = {size}" + (f" or {size + 1}" if size != max(j - i for i, j in batches) else "")
    return {"mi": mi, "mi_batch": size, "mi_bound": bound,
            "mi_note": f"minibatch estimate (He et al. 2019), one z per image: the aggregate posterior q(z) "
                       f"is the mixture of the posteriors of a batch's {sizes} images, so the estimate is "
                       f"biased and never above log N = {bound:.2f} nats; a value near log N means the "
                       "batches are too small to measure I(x; z)"}


def collapse_note(active: int, dims: int, hierarchical: bool = False) -> str | None:
    """A warning when fewer than COLLAPSE_SHARE of the `dims` latent dimensions are `active`."""
    if dims <= 0 or active >= COLLAPSE_SHARE * dims:
        return None
    fewer = "--latent-dim, --lower-latents" if hierarchical else "--latent-dim"
    return (f"posterior collapse: {active} of {dims} latent dimensions are active (under "
            f"{COLLAPSE_SHARE:.0%}; active: posterior-mean variance over the test images above "
            f"{ACTIVE_VARIANCE}); in the inactive ones q(z|x) stays near the prior whatever x is, so they "
            f"tell the decoder little about x. What to try when training: --kl-warmup EPOCHS (the KL weight rises from "
            f"0), a smaller --beta, fewer dimensions ({fewer}), or a smaller decoder (--decoder-hidden)")


def _kl_note(model) -> str:
    """Why a model's KL is not split over dimensions."""
    if isinstance(model.prior(), StandardNormal):
        what = "a posterior that is not a diagonal Gaussian (flows)"
    else:
        what = "a prior that is not a product over dimensions (a mixture)"
    return (f"no KL per dimension: it splits over dimensions only for a diagonal Gaussian posterior and the "
            f"N(0, I) prior, and this model has {what}; the total KL is a Monte-Carlo estimate")


def kl_summary(model, inputs: SplitInputs, dist: Dist = Dist(), samples: int = KL_SAMPLES,
               seed: int = 0) -> tuple[dict[str, Any], torch.Tensor]:
    """Measure KL(q(z|x) || p(z)) on a set of images, split per latent dimension where it splits.

    The KL is in closed form per dimension for a diagonal Gaussian posterior with the N(0, I)
    prior; per layer (Monte Carlo) for a hierarchical model; otherwise (flows, mixture
    priors) one Monte-Carlo total, with a note saying why it does not split.

    Args:
        model: A trained vaelab model with a posterior q(z|x), e.g. ``run.model``.
        inputs: The images as the model is evaluated on them, from
            ``vaelab.batches.model_inputs``; images ``(N, C, H, W)``.
        dist: How the work is shared among processes; the default is this process alone.
        samples: Monte-Carlo samples per image, where the KL has no closed form.
        seed: The seed of the Monte-Carlo samples.

    Returns:
        tuple: ``(entries, active)``, the KL entries of ``eval.json`` (``kl`` in nats per image and
        ``kl_stderr``, ``kl_estimator``, and ``kl_per_dim`` ``(D,)`` or ``kl_per_level`` ``(L,)``
        as lists, or ``kl_note``), and the active dimensions as a bool mask ``(D,)``.

    Examples:
        >>> from vaelab.batches import model_inputs
        >>> from vaelab.data import load_dataset
        >>> from vaelab.evaluate import kl_summary
        >>> inputs = model_inputs(run.model, run.config, load_dataset("mnist-sample").test.head(200), 10)
        >>> entries, active = kl_summary(run.model, inputs)
        >>> sorted(entries), len(entries["kl_per_dim"]), active.shape
        (['kl', 'kl_estimator', 'kl_per_dim', 'kl_stderr'], 2, torch.Size([2]))
    """
    kind, kl, means = kl_terms(model, inputs, dist, samples, seed)
    active = active_mask(means)
    r: dict[str, Any] = {}
    r["kl"], r["kl_stderr"] = _mean_stderr(kl.double().sum(1))
    mc = f"Monte Carlo, {samples} samples per image tied to the image (seed {seed})"
    per_unit = [float(v) for v in kl.double().mean(0)]
    if kind == "dim":
        r["kl_estimator"] = "closed form per dimension: 0.5 (mu^2 + sigma^2 - 1) - log sigma (Kingma & Welling 2014)"
        r["kl_per_dim"] = per_unit
    elif kind == "level" and not isinstance(model.prior(), GaussianChain):
        r["kl_estimator"] = f"{mc}: log q(z_l | x, z_>l) - log p(z_l | z_>l) per level l, z_1 next to the data"
        r["kl_per_level"], r["latent_sizes"] = per_unit, list(model.sizes)
        r["active_per_level"] = [int(a.sum()) for a in active.split(list(model.sizes))]
    elif kind == "level":
        r["kl_estimator"] = (f"{mc}: log q(z_l | z_l-1) - log p(z_l | z_l+1) per layer l, z_1 next to the "
                              "data (z_0 = x; the top layer's prior is N(0, I))")
        r["kl_per_level"], r["latent_sizes"] = per_unit, list(model.sizes)
        r["active_per_level"] = [int(a.sum()) for a in active.split(list(model.sizes))]
    else:
        r["kl_estimator"] = f"{mc}: log q(z|x) - log p(z)"
        r["kl_note"] = _kl_note(model)
    return r, active


def kl_figure(r: dict[str, Any], active: torch.Tensor):
    """Draw the KL bar chart of ``kl_per_dim.png``: one bar per latent dimension, largest first.

    Active dimensions are coloured; a hierarchical model gets one bar per layer instead.

    Args:
        r: KL entries as ``kl_summary`` returns them (or ``eval.json``), with
            ``kl_per_dim`` or ``kl_per_level``.
        active: The active dimensions, a bool mask ``(D,)``.

    Returns:
        A matplotlib Figure.

    Examples:
        >>> from vaelab.batches import model_inputs
        >>> from vaelab.data import load_dataset
        >>> from vaelab.evaluate import kl_figure, kl_summary
        >>> inputs = model_inputs(run.model, run.config, load_dataset("mnist-sample").test.head(200), 10)
        >>> fig = kl_figure(*kl_summary(run.model, inputs))
        >>> type(fig).__name__, len(fig.axes)
        ('Figure', 1)
    """
    count = f"{int(active.sum())} of {len(active)} latent dimensions active (posterior-mean variance > {ACTIVE_VARIANCE})"
    if "kl_per_level" in r:
        names = [f"z_{i + 1}\n{d} dims\n{a} active"
                 for i, (d, a) in enumerate(zip(r["latent_sizes"], r["active_per_level"]))]
        return kl_bars(r["kl_per_level"], f"KL(q || p) per layer, z_1 next to the data: {count}", names=names,
                       sort=False)
    return kl_bars(r["kl_per_dim"], f"KL(q(z|x) || p(z)) per latent dimension, largest first: {count}",
                   active=active.tolist())


def _diagnostics(model, inputs: SplitInputs, dist: Dist, run_dir: str | Path | None) -> dict[str, Any]:
    """What z encodes: ``active_units`` of ``latent_dim``, the KL and its split over
    dimensions or layers (`kl_summary`), I(x; z) (`mutual_information`) and a
    ``collapse_note`` when under COLLAPSE_SHARE of the dimensions are active; with `run_dir`,
    kl_per_dim.png there (a folder that cannot be written is noted, not fatal)."""
    kl, active = kl_summary(model, inputs, dist)  # the posterior means it gathers give the active units too
    r: dict[str, Any] = {"active_units": int(active.sum()), "latent_dim": model.latent_dim}
    r.update(kl)
    r.update(mutual_information(model, inputs, dist))
    note = collapse_note(r["active_units"], model.latent_dim, hierarchical="kl_per_level" in r)
    if note:
        r["collapse_note"] = note
    if run_dir is not None and ("kl_per_dim" in r or "kl_per_level" in r):
        try:
            save_figure(kl_figure(r, active), Path(run_dir) / "kl_per_dim.png")
            r["kl_figure"] = "kl_per_dim.png"
        except FileError as e:
            r["kl_figure_note"] = f"kl_per_dim.png not written: {e}"
    return r
