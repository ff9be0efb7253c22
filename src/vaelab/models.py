"""Models wire networks, a posterior, the prior and a likelihood together.

Shared interface (checked for every registered model by ``tests/test_contract.py``):

- ``encode(x)``: (B, C, H, W) -> posterior over codes, with ``.mean`` (B, D) and ``.rsample(n)``
- ``decode(z)``: (..., D) -> likelihood distribution over images (..., C, H, W)
- ``sample(n)``: decode n codes drawn from the prior -> likelihood distribution
- ``log_weights(x, k)``: (k, B) log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x); only for
  models with a density (``has_density``)
- ``objective``: the bound :class:`vaelab.objectives.Objective` that ``forward`` runs: the
  model's own (``default_objective``) with its defaults, until :func:`bind_objective`
  binds a run's choice and settings
- ``forward(x, c, generator=, x_in=, peers=)``: data only; runs the objective and returns its
  per-example terms (``x_in``: the encoder's input when it differs from x, for denoising),
  so that DistributedDataParallel, which synchronises gradients only for work done inside
  the wrapped module's forward, sees all of it
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vaelab.batches import SplitInputs
from vaelab.config import AUTO, Config, ConfigError, DataFacts, ModelConfig, TrainConfig, choose, resolve, unresolved
from vaelab.distributions import (
    LIKELIHOODS,
    SCALES,
    DiagonalGaussian,
    GaussianChain,
    GaussianMixture,
    MixturePrior,
    StandardNormal,
)
from vaelab.flows import FLOWS, FlowPosterior
from vaelab.nets import ACTIVATIONS, NETS, mlp
from vaelab.objectives import Objective, bind
from vaelab.runtime import Dist


class PointMass:
    """The 'posterior' of a deterministic autoencoder: all mass on one code (B, D)."""

    def __init__(self, code: torch.Tensor) -> None:
        self.mean = code

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean if n is None else self.mean.expand(n, *self.mean.shape)


class _Base(nn.Module):
    has_density = False
    conditional = False
    default_objective = "elbo"
    # what the model is (an objective's `needs` must be among these) and what it accepts,
    # checked by `check` with a message that lists it; `objectives` None: every registered
    # objective whose needs the traits meet
    traits: tuple[str, ...] = ("density",)
    objectives: tuple[str, ...] | None = None
    priors: tuple[str, ...] = ("normal",)
    takes_flows = False

    @classmethod
    def accepted_objectives(cls) -> tuple[str, ...]:
        if cls.objectives is not None:
            return cls.objectives
        from vaelab.objectives import OBJECTIVES  # the registry as it is now, with objectives added since

        fits = [n for n, spec in OBJECTIVES.items() if set(spec.needs) <= set(cls.traits)]
        return tuple(sorted(fits, key=lambda n: n != cls.default_objective))

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        """Refuse a prior, flows or an objective this model does not take."""
        name = m.model
        if m.prior not in PRIORS:
            raise ConfigError(f"unknown prior {m.prior!r}; choose one of: {', '.join(PRIORS)}")
        if m.prior not in cls.priors:
            raise ConfigError(f"the {name} model takes the prior{'s' if len(cls.priors) > 1 else ''} "
                              f"{', '.join(cls.priors)}, not {m.prior}{cls._why_not('prior', m.prior)}")
        if m.flows and not cls.takes_flows:
            raise ConfigError(f"the {name} model takes no flows{cls._why_not('flows', m.flows)}")
        accepted = cls.accepted_objectives()
        if objective != AUTO and objective not in accepted:
            raise ConfigError(f"the {name} model trains with {', '.join(accepted)}, not {objective}"
                              f"{cls._why_not('objective', objective)}")

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        return ""

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], encoder_out: int,
                 cond_dim: int = 0, decoder_in: int | None = None) -> None:
        super().__init__()
        self.cfg, self.image_shape, self.latent_dim = cfg, tuple(image_shape), cfg.latent_dim
        self.objective = Objective(self.default_objective)
        self.cond_dim = cond_dim if self.conditional else 0
        encoder_cls, decoder_cls = choose(NETS, cfg.net, "net")
        choose(ACTIVATIONS, cfg.activation, "activation")
        choose(SCALES, cfg.likelihood_scale, "likelihood scale")
        self.likelihood = choose(LIKELIHOODS, cfg.likelihood, "likelihood")(
            self.image_shape, scale=cfg.likelihood_scale, fixed_std=cfg.likelihood_std, mixture=cfg.mixture)
        _, h, w = self.image_shape
        self.encode_condition = self.conditional and cfg.condition_encoder
        # conv nets take residual blocks per level; the MLP has no levels
        extra = {} if cfg.net == "mlp" else {"res_blocks": cfg.res_blocks}
        self.encoder = encoder_cls(self.image_shape, cfg.hidden, encoder_out, cfg.activation,
                                   cond_dim=self.cond_dim if self.encode_condition else 0, **extra)
        # decoder_hidden is listed from z outwards; decoders take encoder order and reverse it.
        dec_hidden = cfg.hidden if cfg.decoder_hidden is None else tuple(reversed(cfg.decoder_hidden))
        decoder_in = cfg.latent_dim if decoder_in is None else decoder_in
        self.decoder = decoder_cls(decoder_in + self.cond_dim, dec_hidden, (self.likelihood.out_channels, h, w),
                                   cfg.activation, **extra)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, *, generator=None,
                x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
        """Per-example terms (B,) of the bound objective on images x (B, C, H, W).
        `generator`: the reparameterisation noise (objectives.py). `x_in` (B, C, H, W): what
        the encoder sees instead of x (denoising training). `peers`: the rest of the global
        batch in a data-parallel job (objectives.py)."""
        return self.objective(self, x, c, generator=generator, x_in=x_in, peers=peers)

    def _condition(self, c: torch.Tensor | None, lead: tuple[int, ...]) -> torch.Tensor | None:
        if not self.conditional:
            return None
        if c is None:
            raise ValueError(f"{type(self).__name__} needs a condition c of shape (B, {self.cond_dim})")
        if c.shape[-1] != self.cond_dim:
            raise ValueError(f"condition has {c.shape[-1]} features, the model was built for {self.cond_dim}")
        return c.expand(*lead, self.cond_dim)

    amp_dtype: torch.dtype | None = None
    channels_last = False

    def set_precision(self, dtype: torch.dtype | None, channels_last: bool = False) -> None:
        """Run the networks under autocast to `dtype` (None: fp32). Their outputs are cast
        back to fp32 before any distribution sees them, so every log-density, logsumexp
        and KL is computed in fp32. `channels_last`: conv nets' memory format (faster with
        cuDNN and with oneDNN on CPUs)."""
        self.amp_dtype, self.channels_last = dtype, channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _net(self, net: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        if self.amp_dtype is None:
            return net(*args)
        device = next(self.parameters()).device.type
        with torch.autocast(device, dtype=self.amp_dtype):
            return net(*args).float()

    def encoder_input(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net(self.encoder, x, self._condition(c, (len(x),)) if self.encode_condition else None)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """(..., B, D) codes [+ conditions (B, C')] -> likelihood distribution over (..., B, C, H, W)."""
        lead = z.shape[:-1]
        cond = self._condition(c, lead)
        if cond is not None:
            z = torch.cat([z, cond], -1)
        out = self._net(self.decoder, z.reshape(-1, z.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    def prior(self) -> StandardNormal | GaussianMixture | GaussianChain:
        """p(z), with ``log_prob(z)`` and ``sample(n, generator)``: N(0, I) here (an AE has no
        prior of its own: its 'samples' decode N(0, I) codes)."""
        return StandardNormal(self.latent_dim, next(self.parameters()).device)

    def sample(self, n: int, generator: torch.Generator | None = None, c: torch.Tensor | None = None):
        """Decode n codes drawn from the prior [under conditions c (n, C')] -> distribution (n, C, H, W)."""
        return self.decode(self.prior().sample(n, generator=generator), c)

    def log_weights(self, x: torch.Tensor, k: int, q=None, generator: torch.Generator | None = None,
                    c: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) for k samples z ~ q(z|x): (B, C, H, W) -> (k, B).

        Pass `q` (the result of ``encode(x)``) to reuse an encoding across chunks of k.
        For conditional models every term is conditioned on c: log p(x|c) is estimated.
        """
        q = self.encode(x, c) if q is None else q
        z, log_q = q.rsample_with_log_prob(k, generator=generator)  # (k, B, D), (k, B)
        return self.decode(z, c).log_prob(x) + self.prior().log_prob(z) - log_q


class VAE(_Base):
    """Variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

    q(z|x) = N(mu(x), diag sigma(x)^2) from the encoder, optionally pushed through
    `cfg.flows` normalizing flows whose parameters the encoder also predicts
    (Rezende & Mohamed 2015); p(z) = N(0, I), a learned mixture of Gaussians (``mog``) or
    the VampPrior (``vamp``: (1/K) sum_k q(z | u_k) over K learned pseudo-inputs u_k,
    Tomczak & Welling 2018); p(x|z) from the configured likelihood.
    """

    has_density = True
    default_objective = "elbo"
    priors = ("normal", "mog", "vamp")
    takes_flows = True

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        super().check(m, objective)
        if m.prior == "vamp" and m.flows:
            raise ConfigError("the VampPrior evaluates the posterior's density at any z, which flows cannot; "
                              "use --prior mog with --flows, or drop --flows")

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        flows = choose(FLOWS, cfg.flow_type, "flow type")(cfg.latent_dim, cfg.flows) if cfg.flows else None
        super().__init__(cfg, image_shape, 2 * cfg.latent_dim + (flows.num_params if flows else 0), cond_dim)
        self.flows = flows
        self.mixture_prior, self.pseudo_inputs = None, None
        choose(PRIORS, cfg.prior, "prior")(self, cfg)

    def prior(self) -> StandardNormal | GaussianMixture:
        if self.mixture_prior is not None:
            return self.mixture_prior()
        if self.pseudo_inputs is not None:  # the posteriors of the pseudo-inputs, equally weighted
            q = self.encode(torch.sigmoid(self.pseudo_inputs))
            return GaussianMixture(q.mean, q.log_std, torch.zeros(len(q.mean), device=q.mean.device))
        return super().prior()

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian | FlowPosterior:
        out = self.encoder_input(x, c)
        d = self.latent_dim
        base = DiagonalGaussian(out[:, :d], out[:, d : 2 * d])
        return base if self.flows is None else FlowPosterior(base, self.flows, out[:, 2 * d :])


class HVAE(_Base):
    """VAE with a hierarchy of stochastic layers z_1 (next to the data) ... z_L (top), as in
    Burda et al. 2016's two-layer MNIST model (their section 5): the generative path is
    top-down, p(z_L) = N(0, I), p(z_j | z_{j+1}) and p(x | z_1), every conditional a
    diagonal Gaussian from an MLP; inference is bottom-up, q(z_1 | x) q(z_2 | z_1) ....
    (A ladder-style top-down posterior, Sønderby et al. 2016, was built and measured: without
    their batch norm and KL warm-up it trained far slower and diverged on 3 of 3 seeds at the
    default learning rate; docs/doing-better.md.)

    A code is [z_1, ..., z_L] (D = the sum of the layer sizes): ``decode`` reads z_1, the
    prior is the top-down chain (its log-density is the sum over layers), so ELBO, IWAE and
    IS-NLL cover all layers, with the KL by Monte Carlo. x -> layer 1 uses the configured net
    and z_1 -> x the configured decoder; between layers MLPs of ``latent_hidden`` widths.
    """

    has_density = True
    default_objective = "elbo"

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        if not m.lower_latents:
            raise ConfigError("the hvae model needs at least one stochastic layer below the top one, "
                              "e.g. --lower-latents 100")
        super().check(m, objective)

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        return (": its prior is its own top-down chain and its posterior a bottom-up one: drop --flows and "
                "--prior (or use --model vae)")

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        sizes = (*cfg.lower_latents, cfg.latent_dim)
        super().__init__(cfg, image_shape, 2 * sizes[0], cond_dim, decoder_in=sizes[0])
        self.sizes, self.latent_dim = sizes, sum(sizes)
        pairs = list(zip(sizes[:-1], sizes[1:]))
        # up[j]: z_{j+1} -> q(z_{j+2} | z_{j+1}); down[j]: z_{j+2} -> p(z_{j+1} | z_{j+2})
        self.up = nn.ModuleList(mlp([a, *cfg.latent_hidden, 2 * b], cfg.activation) for a, b in pairs)
        self.down = nn.ModuleList(mlp([b, *reversed(cfg.latent_hidden), 2 * a], cfg.activation) for a, b in pairs)

    def _gaussian(self, net: nn.Module, h: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(*self._net(net, h).chunk(2, -1))

    def _priors(self) -> list:
        """p(z_j | z_{j+1}) as callables, top-down: [p(z_{L-1} | z_L), ..., p(z_1 | z_2)]."""
        return [partial(self._gaussian, net) for net in reversed(self.down)]

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> GaussianChain:
        first = DiagonalGaussian(*self.encoder_input(x, c).chunk(2, -1))
        return GaussianChain(first, [partial(self._gaussian, net) for net in self.up], self.sizes)

    def prior(self) -> GaussianChain:
        top = DiagonalGaussian.standard((self.sizes[-1],), device=next(self.parameters()).device)
        return GaussianChain(top, self._priors(), self.sizes[::-1], reverse=True)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """Codes [z_1, ..., z_L] (..., D) -> p(x | z_1) over (..., C, H, W)."""
        return super().decode(z[..., : self.sizes[0]], c)


class AE(_Base):
    """Deterministic autoencoder: a code per image, no prior, no density.

    Trained by maximising log p(x | z = f(x)) with the same likelihood families as the
    VAE (Bernoulli log-likelihood = binary cross-entropy). ``sample`` decodes N(0, I)
    codes only to show why that fails: nothing made the codes of real images look
    like draws from N(0, I).
    """

    default_objective = "reconstruction"
    traits = ("autoencoder",)

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        return {"prior": ": a prior needs a VAE; the plain autoencoder has none (use --model vae)",
                "flows": ": flows shape a posterior; the plain autoencoder has none (use --model vae)",
                "objective": f": the plain autoencoder has no {value} bound; it trains by reconstruction"}[what]

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        super().__init__(cfg, image_shape, cfg.latent_dim, cond_dim)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> PointMass:
        return PointMass(self.encoder_input(x, c))

    def log_weights(self, x: torch.Tensor, k: int, **_) -> torch.Tensor:
        raise TypeError(
            "a plain autoencoder defines no density p(x), so it has no ELBO or log-likelihood; "
            "train --model vae to evaluate one"
        )


class CVAE(VAE):
    """Conditional VAE (Sohn et al. 2015): the decoder sees [z, c]; with
    ``condition_encoder`` the encoder sees [x, c] too. c is a one-hot class label by
    default, or any side-information vector (see vaelab.data.conditions)."""

    conditional = True
    traits = ("density", "conditional")
    priors = ("normal", "mog")

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        return ": the VampPrior's pseudo-inputs carry no condition; use --prior mog" if value == "vamp" else ""


class ICVAE(CVAE):
    """Invariant conditional VAE (Moyer et al. 2018): a CVAE trained with the
    ``icvae`` objective, which adds lambda * KL(q(z|x) || q(z)) to push the
    information about c out of z (the decoder gets c anyway)."""

    default_objective = "icvae"
    takes_flows = False

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        if what == "flows":
            return ": the ICVAE penalty needs a diagonal Gaussian posterior; drop --flows or use --model cvae"
        return super()._why_not(what, value)


# ----------------------------------------------------------------------------- priors
# A prior's builder gives a VAE the parameters its prior() reads; "normal" has none.


def _normal_prior(model: VAE, cfg: ModelConfig) -> None:
    """p(z) = N(0, I)."""


def _mixture_prior(model: VAE, cfg: ModelConfig) -> None:
    """A learned mixture of `prior_components` (default 10) diagonal Gaussians."""
    model.mixture_prior = MixturePrior(cfg.latent_dim, cfg.prior_components or 10)


def _vamp_prior(model: VAE, cfg: ModelConfig) -> None:
    """The VampPrior (Tomczak & Welling 2018): (1/K) sum_k q(z | u_k) over K (default 500)
    learned pseudo-inputs, kept in logit space (sigmoid makes them images in (0, 1)),
    starting as grey noise."""
    k = cfg.prior_components or 500
    model.pseudo_inputs = nn.Parameter(0.1 * torch.randn(k, *model.image_shape,
                                                         generator=torch.Generator().manual_seed(0)))


PRIORS = {"normal": _normal_prior, "mog": _mixture_prior, "vamp": _vamp_prior}

MODELS: dict[str, type[_Base]] = {
    "vae": VAE,
    "hvae": HVAE,
    "ae": AE,
    "cvae": CVAE,
    "icvae": ICVAE,
}


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> _Base:
    """The registered model `cfg.model`, built for images of `image_shape` (C, H, W) and,
    for conditional models, conditions of `cond_dim` features.

    Fields left to the recipe are filled as training fills them (vaelab.config.resolve),
    from the image shape alone: the binary recipe when the likelihood is Bernoulli or unset,
    the 8-bit recipe otherwise. Training resolves against the data first."""
    if unresolved(Config(model=cfg)):
        binary = cfg.likelihood in (AUTO, "bernoulli")
        cfg = resolve(Config(model=cfg), DataFacts(tuple(image_shape), 1, binary))[0].model
    model_cls = choose(MODELS, cfg.model, "model")
    model_cls.check(cfg)
    if model_cls.conditional and cond_dim <= 0:
        raise ConfigError(f"the {cfg.model} model needs conditions: a labelled dataset (class folders, "
                          "'labels' in the array file) or --conditions FILE.npz")
    return model_cls(cfg, tuple(image_shape), cond_dim)


def bind_objective(model: _Base, t: TrainConfig) -> Objective:
    """Bind the run's objective (``--objective``, or the model's own when auto) with its
    settings (--samples, --beta, --kl, --lambda) to the model; training and the test pass
    both run it, so the options mean the same on both."""
    type(model).check(model.cfg, t.objective)
    model.objective = bind(model.default_objective if t.objective == AUTO else t.objective, t)
    return model.objective


def check_config(cfg: Config) -> None:
    """Refuse combinations the chosen model or objective cannot honour, before any work."""
    model_cls = choose(MODELS, cfg.model.model, "model")
    model_cls.check(cfg.model, cfg.train.objective)
    name = model_cls.default_objective if cfg.train.objective == AUTO else cfg.train.objective
    bind(name, cfg.train)


def check_data_fit(cfg: ModelConfig, binarization: str) -> None:
    """Refuse a likelihood that does not model the data as configured (binary vs grey levels)."""
    choose(LIKELIHOODS, cfg.likelihood, "likelihood").check_binarization(binarization)


ACTIVE_VARIANCE = 0.01  # an active unit's posterior-mean variance (Burda et al. 2016, section 5.2)


def active_dims(mean: torch.Tensor, square: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> torch.Tensor:
    """Which latent dimensions are active, from the mean (D,) and the mean square (D,) over the
    images of their posterior means: the variance above `threshold` -> (D,) bool."""
    return (square - mean.square()) > threshold


@torch.no_grad()
def active_units(model: _Base, inputs: SplitInputs, dist: Dist = Dist(), threshold: float = ACTIVE_VARIANCE) -> int:
    """Latent dimensions whose posterior mean varies across the split's images with variance
    above `threshold` (Burda et al. 2016, section 5.2): the units the model uses. A
    collapsed posterior, q(z|x) = p(z) for every x, has none."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, model.latent_dim, dtype=torch.float64, device=inputs.device)  # sum of m, of m^2
    a, b = dist.shard(len(inputs))
    for i in range(a, b, 1000):
        x, c, _ = inputs.rows(i, min(b, i + 1000))
        mean = model.encode(x, c).mean.double()
        sums += torch.stack([mean.sum(0), mean.square().sum(0)])
    model.train(was_training)
    mean, square = dist.sum_(sums) / len(inputs)
    return int(active_dims(mean, square, threshold).sum())
