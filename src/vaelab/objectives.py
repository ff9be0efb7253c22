"""Training objectives. Each returns per-example terms, shape (B,), with ``loss``
the quantity minimised (averaged over the batch by the training loop) and the other
entries reported in the metrics. All terms are in nats per image."""

from __future__ import annotations

from collections.abc import Callable

import torch


def elbo(model, x: torch.Tensor, samples: int = 1, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 10).

    The reconstruction term is a Monte-Carlo average over `samples` reparameterised
    draws z ~ q(z|x); the KL to N(0, I) is analytic. `beta` weights the KL
    (beta-VAE, Higgins et al. 2017); ``elbo`` is always reported with beta = 1.
    """
    q = model.encode(x)
    z = q.rsample(samples if samples > 1 else None)  # (L, B, D) or (B, D)
    recon = model.decode(z).log_prob(x)  # (L, B) or (B,)
    if samples > 1:
        recon = recon.mean(0)
    kl = q.kl_standard_normal()
    return {"loss": -(recon - beta * kl), "recon": recon, "kl": kl, "elbo": recon - kl}


def reconstruction(model, x: torch.Tensor, samples: int = 1, beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Plain autoencoder: maximise log p(x | z = f(x)); no prior, no KL."""
    recon = model.decode(model.encode(x).mean).log_prob(x)
    return {"loss": -recon, "recon": recon}


OBJECTIVES: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "elbo": elbo,
    "reconstruction": reconstruction,
}
