"""Training objectives. Each returns per-example terms, shape (B,), with ``loss``
the quantity minimised (averaged over the batch by the training loop) and the other
entries reported in the metrics. All terms are in nats per image; ``elbo`` is always the
evidence lower bound itself (beta = 1), whatever the loss weighs.

An objective is registered once, in :data:`OBJECTIVES` (or from outside the package with
``@objective(name, terms=..., options=...)``), with the names of its terms and of the
TrainConfig fields it takes, and bound once to a run's settings (:func:`bind`): the
resulting :class:`Objective` is called with data only, the same way in training and in
the test pass.

`generator` is where reparameterisation noise comes from: a torch.Generator, None (the
global RNG), or a :class:`vaelab.noise.ExampleNoise` tied to the examples, which
makes a data-parallel run draw what a single process draws.

`x_in`, when given, is what the encoder sees instead of x (a corrupted copy, shape of
x): the bound then scores the clean x under q(z|x_in), the denoising variational bound
of Im et al. 2017 (for the autoencoder, the denoising criterion of Vincent et al. 2008).

`peers`, in a data-parallel job, gives a batch-level term the whole global batch: a
function from this process's rows (B, ...) to (all rows of the global batch in order,
offset of this process's rows among them), with gradients flowing back to the process
that owns each row (:meth:`vaelab.runtime.Dist.batch_peers`). None: the rows given are
the whole batch. Only icvae's pairwise term uses it; per-example objectives ignore it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vaelab.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its function, the terms it returns (every process of a
    data-parallel job reduces the same keys) and the TrainConfig fields it takes."""

    fn: Callable[..., dict[str, torch.Tensor]]
    terms: tuple[str, ...]
    options: tuple[str, ...] = ()
    check: Callable[[TrainConfig], None] | None = None  # refuses settings it cannot honour
    # what a model must be to train with it (vaelab.models' traits: density, conditional, autoencoder)
    needs: tuple[str, ...] = ("density",)




def objective(name: str, terms: tuple[str, ...], options: tuple[str, ...] = (),
              check: Callable[[TrainConfig], None] | None = None, needs: tuple[str, ...] = ("density",)):
    """Register `fn(model, x, c, *, <options>, generator, x_in, peers) -> terms` as `name`.
    Each option must be a field of TrainConfig; ``loss`` must be the first term. `check`
    raises ConfigError for training settings the objective cannot honour; every model whose
    traits include `needs` can train with it."""
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown or not terms or terms[0] != "loss":
        raise ValueError(f"objective {name}: options {sorted(unknown)} are not TrainConfig fields, or "
                         f"'loss' is not its first term")

    def register(fn):
        OBJECTIVES[name] = ObjectiveSpec(fn, tuple(terms), tuple(options), check, tuple(needs))
        return fn

    return register


@dataclass(frozen=True)
class Objective:
    """An objective bound to its options: ``objective(model, x, c, generator=, x_in=, peers=)``
    -> per-example terms. Options left out take the function's defaults."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.name!r}; choose {', '.join(OBJECTIVES)}")
        extra = set(self.options) - set(OBJECTIVES[self.name].options)
        if extra:
            raise ConfigError(f"the {self.name} objective takes no {', '.join(sorted(extra))}")

    @property
    def terms(self) -> tuple[str, ...]:
        return OBJECTIVES[self.name].terms

    def replace(self, **options: Any) -> Objective:
        return Objective(self.name, {**self.options, **options})

    def __call__(self, model, x: torch.Tensor, c: torch.Tensor | None = None, *, generator=None,
                 x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
        return OBJECTIVES[self.name].fn(model, x, c, generator=generator, x_in=x_in, peers=peers, **self.options)


def bind(name: str, t: TrainConfig) -> Objective:
    """The objective `name` with its options taken from the run's training settings."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose {', '.join(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    if spec.check:
        spec.check(t)
    return Objective(name, {k: getattr(t, k) for k in spec.options})


def elbo(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 1, beta: float = 1.0,
         kl: str = "analytic", generator=None, x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 10).

    The reconstruction term averages `samples` reparameterised draws z ~ q(z|x). The
    KL to N(0, I) is analytic (their appendix B) when ``kl="analytic"`` and q is a
    diagonal Gaussian; otherwise it is the Monte-Carlo estimate mean(log q(z) - log p(z))
    over the same draws, which is what posteriors with flows need: then the bound is
    log p(x, z_K) - log q_0(z_0) + sum log|det| (Rezende & Mohamed 2015, eq. 15).
    `beta` weights the KL (Higgins et al. 2017); ``elbo`` is reported with beta = 1.
    """
    q = model.encode(x if x_in is None else x_in, c)
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (L, B, D), (L, B)
    recon = model.decode(z, c).log_prob(x).mean(0)
    kl_term = kl_to_prior(model, q, z, log_q, kl)
    return {"loss": -(recon - beta * kl_term), "recon": recon, "kl": kl_term, "elbo": recon - kl_term}


def kl_to_prior(model, q, z: torch.Tensor, log_q: torch.Tensor, kl: str = "analytic") -> torch.Tensor:
    """KL(q(z|x) || p(z)) per example (B,): in closed form when ``kl="analytic"``, q is a
    diagonal Gaussian and p is N(0, I); otherwise mean(log q(z) - log p(z)) over the draws z
    (L, B, D) whose log-densities are log_q (L, B) (flows; mixture and Vamp priors)."""
    prior = model.prior()
    if kl == "analytic" and prior.closed_form_kl and hasattr(q, "kl_standard_normal"):
        return q.kl_standard_normal()
    return (log_q - prior.log_prob(z)).mean(0)


def _no_kl_weight(t: TrainConfig) -> None:
    if t.beta != 1.0:
        raise ConfigError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    if t.kl_warmup:
        raise ConfigError("the IWAE bound has no KL term to warm up; use --objective elbo with --kl-warmup, "
                          "or --kl-warmup 0")


def iwae(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 5, beta: float = 1.0,
         generator=None, x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """Importance-weighted bound log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016, eq. 8).

    Built from per-sample log-weights (no analytic KL inside), with the weights kept in
    the graph: the gradient is the self-normalised importance-weighted average of the
    per-sample gradients (their eq. 14). k = `samples`; k = 1 is the ELBO. There is no
    KL to weigh: `beta` must be 1.
    """
    if beta != 1.0:
        raise ValueError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    q = None if x_in is None else model.encode(x_in, c)
    lw = model.log_weights(x, samples, q=q, c=c, generator=generator)  # (k, B)
    bound = torch.logsumexp(lw, 0) - math.log(samples)
    return {"loss": -bound, "iwae": bound, "elbo": lw.mean(0)}


def reconstruction(model, x: torch.Tensor, c: torch.Tensor | None = None, *, generator=None,
                   x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """Plain autoencoder: maximise log p(x | z = f(x)); no prior, no KL."""
    recon = model.decode(model.encode(x if x_in is None else x_in, c).mean, c).log_prob(x)
    return {"loss": -recon, "recon": recon}


def pairwise_gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor, mean_j: torch.Tensor | None = None,
                         log_std_j: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q_i || q_j) for every pair of diagonal Gaussians: (B, D) -> (B, B), or, given
    a second set (mean_j, log_std_j) (M, D), q_i from the first and q_j from it: (B, M).

    0.5 * [tr(S_j^-1 S_i) + (m_i - m_j)^T S_j^-1 (m_i - m_j) + log|S_j| - log|S_i| - D],
    each term a (B, D) x (D, M) product, so memory is O(BM), not O(BMD).
    """
    if mean_j is None:
        mean_j, log_std_j = mean, log_std
    var, inv = torch.exp(2 * log_std), torch.exp(-2 * log_std_j)
    trace = var @ inv.T
    # sum_d (m_id - m_jd)^2 / v_jd expanded; clamped: rounding can dip just below 0
    maha = (mean.square() @ inv.T - 2 * mean @ (mean_j * inv).T
            + (mean_j.square() * inv).sum(1)[None, :]).clamp_min(0)
    return 0.5 * (trace + maha + 2 * log_std_j.sum(1)[None, :] - 2 * log_std.sum(1)[:, None] - mean.shape[1])


def icvae(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 1, beta: float = 1.0,
          kl: str = "analytic", lam: float = 1.0, generator=None,
          x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """Invariant conditional VAE loss (Moyer et al. 2018, without the erroneous extra term
    of the paper's first version):

        (1 + lam) * E_q[-log p(x|z,c)] + beta * KL(q(z|x) || p(z)) + lam * KL(q(z|x) || q(z)).

    q(z) is the batch's mixture of posteriors; by convexity of KL,
    KL(q(z|x_i) || q(z)) <= mean_{j != i} KL(q(z|x_i) || q(z|x_j)), the pairwise
    Gaussian KLs (the corrected form keeps the log-determinant terms). The batch is the
    global one in a data-parallel job (`peers`), so the penalty, and the optimisation,
    do not depend on the number of processes.
    """
    q = model.encode(x if x_in is None else x_in, c)
    if not hasattr(q, "log_std"):
        raise ValueError("the invariance penalty needs a diagonal Gaussian posterior (no flows)")
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)
    recon = model.decode(z, c).log_prob(x).mean(0)
    kl_prior = kl_to_prior(model, q, z, log_q, kl)
    (mean_j, offset), (log_std_j, _) = (peers(q.mean), peers(q.log_std)) if peers else ((q.mean, 0), (q.log_std, 0))
    pair = pairwise_gaussian_kl(q.mean, q.log_std, mean_j, log_std_j)  # (B, whole batch)
    rows = torch.arange(len(x), device=pair.device)
    kl_marginal = (pair.sum(1) - pair[rows, offset + rows]) / max(1, len(mean_j) - 1)
    loss = -(1 + lam) * recon + beta * kl_prior + lam * kl_marginal
    return {"loss": loss, "recon": recon, "kl": kl_prior, "kl_marginal": kl_marginal, "elbo": recon - kl_prior}


# the registry: name -> objective (`objective` registers more from outside)
OBJECTIVES: dict[str, ObjectiveSpec] = {
    "elbo": ObjectiveSpec(elbo, ("loss", "recon", "kl", "elbo"), ("samples", "beta", "kl")),
    "iwae": ObjectiveSpec(iwae, ("loss", "iwae", "elbo"), ("samples", "beta"), _no_kl_weight),
    "icvae": ObjectiveSpec(icvae, ("loss", "recon", "kl", "kl_marginal", "elbo"), ("samples", "beta", "kl", "lam"),
                           needs=("density", "conditional")),
    "reconstruction": ObjectiveSpec(reconstruction, ("loss", "recon"), needs=("autoencoder",)),
}
