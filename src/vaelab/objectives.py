"""Training objectives. Each returns per-example terms, shape (B,), with ``loss``
the quantity minimised (averaged over the batch by the training loop) and the other
entries reported in the metrics. All terms are in nats per image."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vaelab.distributions import standard_normal_log_prob


def elbo(model, x: torch.Tensor, samples: int = 1, beta: float = 1.0, kl: str = "analytic") -> dict[str, torch.Tensor]:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 10).

    The reconstruction term averages `samples` reparameterised draws z ~ q(z|x). The
    KL to N(0, I) is analytic (their appendix B) when ``kl="analytic"`` and q is a
    diagonal Gaussian; otherwise it is the Monte-Carlo estimate mean(log q(z) - log p(z))
    over the same draws, which is what posteriors with flows need: then the bound is
    log p(x, z_K) - log q_0(z_0) + sum log|det| (Rezende & Mohamed 2015, eq. 15).
    `beta` weights the KL (Higgins et al. 2017); ``elbo`` is reported with beta = 1.
    """
    q = model.encode(x)
    z, log_q = q.rsample_with_log_prob(samples)  # (L, B, D), (L, B)
    recon = model.decode(z).log_prob(x).mean(0)
    if kl == "analytic" and hasattr(q, "kl_standard_normal"):
        kl_term = q.kl_standard_normal()
    else:
        kl_term = (log_q - standard_normal_log_prob(z)).mean(0)
    return {"loss": -(recon - beta * kl_term), "recon": recon, "kl": kl_term, "elbo": recon - kl_term}


def iwae(model, x: torch.Tensor, samples: int = 5, beta: float = 1.0, kl: str = "analytic") -> dict[str, torch.Tensor]:
    """Importance-weighted bound log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016, eq. 8).

    Built from per-sample log-weights (no analytic KL inside), with the weights kept in
    the graph: the gradient is the self-normalised importance-weighted average of the
    per-sample gradients (their eq. 14). k = `samples`; k = 1 is the ELBO. `beta` and
    `kl` do not apply.
    """
    if beta != 1.0:
        raise ValueError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    lw = model.log_weights(x, samples)  # (k, B)
    bound = torch.logsumexp(lw, 0) - math.log(samples)
    return {"loss": -bound, "iwae": bound, "elbo": lw.mean(0)}


def reconstruction(model, x: torch.Tensor, samples: int = 1, beta: float = 1.0, kl: str = "analytic") -> dict[str, torch.Tensor]:
    """Plain autoencoder: maximise log p(x | z = f(x)); no prior, no KL."""
    recon = model.decode(model.encode(x).mean).log_prob(x)
    return {"loss": -recon, "recon": recon}


OBJECTIVES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "elbo": elbo,
    "iwae": iwae,
    "reconstruction": reconstruction,
}
