"""Models wire networks, a posterior, the prior and a likelihood together.

Shared interface (checked for every registered model by ``tests/test_contract.py``):

- ``encode(x)``: (B, C, H, W) -> posterior over codes, with ``.mean`` (B, D) and ``.rsample(n)``
- ``decode(z)``: (..., D) -> likelihood distribution over images (..., C, H, W)
- ``sample(n)``: decode n codes drawn from the prior -> likelihood distribution
- ``log_weights(x, k)``: (k, B) log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x); only for
  models with a density (``has_density``)
- ``objective``: the name of the training objective in :data:`vaelab.objectives.OBJECTIVES`
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.distributions import LIKELIHOODS, DiagonalGaussian, standard_normal_log_prob
from vaelab.flows import FLOWS, FlowPosterior
from vaelab.nets import NETS


class PointMass:
    """The 'posterior' of a deterministic autoencoder: all mass on one code (B, D)."""

    def __init__(self, code: torch.Tensor) -> None:
        self.mean = code

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean if n is None else self.mean.expand(n, *self.mean.shape)


class _Base(nn.Module):
    has_density = False
    objective = "elbo"

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], encoder_out: int) -> None:
        super().__init__()
        self.cfg, self.image_shape, self.latent_dim = cfg, tuple(image_shape), cfg.latent_dim
        encoder_cls, decoder_cls = NETS[cfg.net]
        self.likelihood = LIKELIHOODS[cfg.likelihood](self.image_shape, scale=cfg.likelihood_scale,
                                                      fixed_std=cfg.likelihood_std)
        c, h, w = self.image_shape
        self.encoder = encoder_cls(self.image_shape, cfg.hidden, encoder_out, cfg.activation)
        # decoder_hidden is listed from z outwards; decoders take encoder order and reverse it.
        dec_hidden = cfg.hidden if cfg.decoder_hidden is None else tuple(reversed(cfg.decoder_hidden))
        self.decoder = decoder_cls(cfg.latent_dim, dec_hidden, (c * self.likelihood.channels, h, w), cfg.activation)

    def decode(self, z: torch.Tensor):
        """(..., D) codes -> likelihood distribution over (..., C, H, W) images."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    def prior(self, n: int, device=None) -> DiagonalGaussian:
        return DiagonalGaussian.standard((n, self.latent_dim), device=device)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """Decode n codes drawn from N(0, I) -> likelihood distribution (n, C, H, W)."""
        device = next(self.parameters()).device
        return self.decode(self.prior(n, device).rsample(generator=generator))


class VAE(_Base):
    """Variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

    q(z|x) = N(mu(x), diag sigma(x)^2) from the encoder, optionally pushed through
    `cfg.flows` normalizing flows whose parameters the encoder also predicts
    (Rezende & Mohamed 2015); p(z) = N(0, I); p(x|z) from the configured likelihood.
    """

    has_density = True
    objective = "elbo"

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> None:
        flows = FLOWS[cfg.flow_type](cfg.latent_dim, cfg.flows) if cfg.flows else None
        super().__init__(cfg, image_shape, 2 * cfg.latent_dim + (flows.num_params if flows else 0))
        self.flows = flows

    def encode(self, x: torch.Tensor) -> DiagonalGaussian | FlowPosterior:
        out = self.encoder(x)
        d = self.latent_dim
        base = DiagonalGaussian(out[:, :d], out[:, d : 2 * d])
        return base if self.flows is None else FlowPosterior(base, self.flows, out[:, 2 * d :])

    def log_weights(self, x: torch.Tensor, k: int, q=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for k samples z ~ q(z|x): (B, C, H, W) -> (k, B).

        Pass `q` (the result of ``encode(x)``) to reuse an encoding across chunks of k.
        """
        q = self.encode(x) if q is None else q
        z, log_q = q.rsample_with_log_prob(k, generator=generator)  # (k, B, D), (k, B)
        return self.decode(z).log_prob(x) + standard_normal_log_prob(z) - log_q


class AE(_Base):
    """Deterministic autoencoder (seeds 001/004): a code per image, no prior, no density.

    Trained by maximising log p(x | z = f(x)) with the same likelihood families as the
    VAE (Bernoulli log-likelihood = binary cross-entropy). ``sample`` decodes N(0, I)
    codes only to show why that fails: nothing made the codes of real images look
    like draws from N(0, I).
    """

    objective = "reconstruction"

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__(cfg, image_shape, cfg.latent_dim)

    def encode(self, x: torch.Tensor) -> PointMass:
        return PointMass(self.encoder(x))

    def log_weights(self, x: torch.Tensor, k: int, **_) -> torch.Tensor:
        raise TypeError(
            "a plain autoencoder defines no density p(x), so it has no ELBO or log-likelihood; "
            "train --model vae to evaluate one"
        )


MODELS: dict[str, type[_Base]] = {
    "vae": VAE,
    "ae": AE,
}


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> _Base:
    """The registered model `cfg.model`, built for images of `image_shape` (C, H, W)."""
    return MODELS[cfg.model](cfg, tuple(image_shape))
