"""Models wire networks, a posterior, the prior and a likelihood together.

Shared interface (checked for every registered model by ``tests/test_contract.py``):

- ``encode(x)``: (B, C, H, W) -> posterior over codes, with ``.mean`` (B, D) and ``.rsample(n)``
- ``decode(z)``: (..., D) -> likelihood distribution over images (..., C, H, W)
- ``sample(n)``: decode n codes drawn from the prior -> likelihood distribution
- ``log_weights(x, k)``: (k, B) log p(x, z_k) - log q(z_k | x), z_k ~ q(z|x); only for
  models with a density (``has_density``)
- ``objective``: the bound ``vaelab.objectives.Objective`` that ``forward`` runs: the
  model's own (``default_objective``) with its defaults, until ``bind_objective``
  binds a run's choice and settings
- ``forward(x, c, schedule=, generator=, x_in=, peers=)``: data only; runs the objective on
  them (one ``vaelab.objectives.Step``) and returns its per-example terms (``schedule``: the
  training step's ``vaelab.objectives.Schedule``, e.g. the KL warm-up; ``x_in``: the
  encoder's input when it differs from x, for denoising),
  so that DistributedDataParallel, which synchronises gradients only for work done inside
  the wrapped module's forward, sees all of it

Every model class above is a subclass of one base class that implements ``forward``,
``decode``, ``sample`` and ``log_weights``; a model class adds its ``encode`` (and, where it
differs, ``prior``). ``MODELS`` maps a ``--model`` name to its class and ``PRIORS`` a
``--prior`` name to the builder of its parameters; a class added to ``MODELS`` is built by
``build_model`` and trained from the command line like the built-in ones.

A module of your own (not a subclass) works with what it provides:

- ``vaelab.objectives.elbo`` and ``iwae`` need ``encode(x, c=None)`` returning a posterior
  with ``rsample_with_log_prob(n, generator=None)`` (a ``DiagonalGaussian`` has it),
  ``decode(z, c=None)`` returning a likelihood with ``log_prob(x)``, and ``prior()`` returning
  a distribution with ``log_prob(z)``;
- ``vaelab.evaluate.log_likelihood``, the scores and ``vaelab ood`` also need
  ``has_density = True`` and ``log_weights(x, k, q=None, generator=None, c=None)`` returning
  (k, B) log-weights; subclassing ``VAE`` (and replacing its ``encoder``/``decoder`` nets)
  gives both, with the run folder, resume and every command on top.
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
from vaelab.ladder import Ladder
from vaelab.nets import ACTIVATIONS, NETS, mlp
from vaelab.objectives import Objective, Schedule, Step, bind
from vaelab.runtime import Dist

__all__ = [
    "MODELS",
    "VAE",
    "HVAE",
    "AE",
    "CVAE",
    "ICVAE",
    "Censored",
    "PointMass",
    "build_model",
    "bind_objective",
    "check_config",
    "active_units",
    "active_dims",
    "ACTIVE_VARIANCE",
]


class PointMass:
    """The 'posterior' of a deterministic autoencoder: all its mass on one code per image.

    ``AE.encode`` returns one, so code written for a VAE's posterior (``.mean``,
    ``.rsample(n)``) runs on an autoencoder too.

    Args:
        code: The codes, shape (B, D); also available as ``.mean``.

    Examples:
        >>> from vaelab.models import PointMass
        >>> q = PointMass(torch.zeros(4, 2))
        >>> q.mean.shape, q.rsample().shape, q.rsample(3).shape
        (torch.Size([4, 2]), torch.Size([4, 2]), torch.Size([3, 4, 2]))
    """

    def __init__(self, code: torch.Tensor) -> None:
        self.mean = code

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The code itself, (B, D), or n copies of it, (n, B, D); `generator` is unused."""
        return self.mean if n is None else self.mean.expand(n, *self.mean.shape)


class _Base(nn.Module):
    has_density = False
    conditional = False
    default_objective = "elbo"
    # what the model is (an objective's or a score's `needs` must be among these: density,
    # hierarchical (layers `sizes`, z_1 first, with per-layer log_prob_levels), conditional,
    # autoencoder) and what it accepts, checked by `check` with a message that lists it;
    # `objectives` None: every registered objective whose needs the traits meet
    traits: tuple[str, ...] = ("density",)
    objectives: tuple[str, ...] | None = None
    priors: tuple[str, ...] = ("normal",)
    takes_flows = False

    @classmethod
    def accepted_objectives(cls) -> tuple[str, ...]:
        """Names of the objectives this model trains with, its default first: the class's
        ``objectives`` when set, else every registered objective whose ``needs`` are among
        the class's ``traits`` (objectives registered later included)."""
        if cls.objectives is not None:
            return cls.objectives
        from vaelab.objectives import OBJECTIVES  # the registry as it is now, with objectives added since

        fits = [n for n, spec in OBJECTIVES.items() if set(spec.needs) <= set(cls.traits)]
        return tuple(sorted(fits, key=lambda n: n != cls.default_objective))

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        """Refuse a prior, flows or an objective this model does not take.

        Args:
            m: The model settings.
            objective: The run's objective name; ``"auto"`` (the model's own) is always accepted.

        Raises:
            ConfigError: With a one-line message naming what the model takes.
        """
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
        if objective != AUTO:
            from vaelab.objectives import OBJECTIVES  # the registry as it is now

            fits = OBJECTIVES[objective].fits  # what the objective asks of the model's settings (flows, prior)
            if fits is not None:
                fits(cls, m)

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

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, *, schedule: Schedule | None = None,
                generator=None, x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
        """Run the model's bound objective (``self.objective``) on a batch: per-example terms, each (B,).

        Args:
            x: Images (B, C, H, W).
            c: Conditions (B, C') for conditional models; None otherwise.
            schedule: The training step's ``vaelab.objectives.Schedule`` (the KL warm-up's share
                of beta), for objectives that read one; None: full weights, as in the test pass.
            generator: The reparameterisation noise (see ``vaelab.objectives``).
            x_in: What the encoder sees instead of x, (B, C, H, W) (denoising training); None: x.
            peers: The rest of the global batch in a data-parallel job (see ``vaelab.objectives``).

        Returns:
            The objective's terms, a dict of (B,) tensors with ``loss`` first.
        """
        return self.objective(self, Step(x, c, generator=generator, x_in=x_in, schedule=schedule, peers=peers))

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
        """The encoder's raw output for images x (B, C, H, W), with conditions c (B, C') when
        the model encodes them, under the model's precision: (B, encoder_out) in fp32. Each
        model's ``encode`` turns it into a posterior."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._net(self.encoder, x, self._condition(c, (len(x),)) if self.encode_condition else None)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """The likelihood p(x|z): codes (B, D), or (K, B, D) for K draws per image, [+ conditions
        (B, C')] -> a distribution over images (B, C, H, W) or (K, B, C, H, W): ``mean`` and
        ``sample()`` have that image shape, ``log_prob(x)`` has shape (B,) or (K, B)."""
        lead = z.shape[:-1]
        cond = self._condition(c, lead)
        if cond is not None:
            z = torch.cat([z, cond], -1)
        out = self._net(self.decoder, z.reshape(-1, z.shape[-1]))
        return self.likelihood(out.reshape(*lead, *out.shape[1:]))

    def prior(self) -> StandardNormal | GaussianMixture | GaussianChain:
        """p(z), with ``log_prob(z)`` (..., D) -> (...) and ``sample(n, generator)`` -> (n, D):
        N(0, I) here (an AE has no prior of its own: its 'samples' decode N(0, I) codes)."""
        return StandardNormal(self.latent_dim, next(self.parameters()).device)

    def sample(self, n: int, generator: torch.Generator | None = None, c: torch.Tensor | None = None):
        """Decode n codes drawn from the prior [under conditions c (n, C')]: a likelihood
        distribution over (n, C, H, W); take its ``mean`` or ``sample()`` for images."""
        return self.decode(self.prior().sample(n, generator=generator), c)

    def log_weights(self, x: torch.Tensor, k: int, q=None, generator: torch.Generator | None = None,
                    c: torch.Tensor | None = None) -> torch.Tensor:
        """Importance log-weights log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x).

        logsumexp over the k weights minus log k is the IWAE bound and, for large k, an
        estimate of log p(x) (Burda et al. 2016). Pass `q` (the result of ``encode(x)``) to
        reuse an encoding across chunks of k. For conditional models every term is
        conditioned on c (B, C'), and log p(x|c) is estimated.

        Args:
            x: Images (B, C, H, W).
            k: Draws per image.
            q: The posterior ``encode(x, c)``, if already computed.
            generator: The reparameterisation noise.
            c: Conditions (B, C') for conditional models.

        Returns:
            Log-weights in nats, shape (k, B).
        """
        q = self.encode(x, c) if q is None else q
        z, log_q = q.rsample_with_log_prob(k, generator=generator)  # (k, B, D), (k, B)
        return self.decode(z, c).log_prob(x) + self.prior().log_prob(z) - log_q


class VAE(_Base):
    """A variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014).

    q(z|x) = N(mu(x), diag sigma(x)^2) from the encoder, optionally pushed through
    ``cfg.flows`` normalizing flows whose parameters the encoder also predicts
    (Rezende & Mohamed 2015); p(z) = N(0, I), a learned mixture of Gaussians (``mog``) or
    the VampPrior (``vamp``: (1/K) sum_k q(z | u_k) over K learned pseudo-inputs u_k,
    Tomczak & Welling 2018); p(x|z) from the configured likelihood. Trains with the ELBO by
    default, or IWAE.

    Build it with ``build_model``, which fills the fields a ModelConfig leaves to the
    recipe. Besides ``encode`` and ``prior`` below it has the shared interface of the module
    docstring: ``forward``, ``decode``, ``sample``, ``log_weights``.

    Args:
        cfg: The model settings, with every ``auto`` field resolved.
        image_shape: (C, H, W) of the images.
        cond_dim: Condition features (used by the conditional subclasses only).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> vae = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> q = vae.encode(x)
        >>> q.mean.shape, q.rsample(3).shape
        (torch.Size([4, 2]), torch.Size([3, 4, 2]))
        >>> vae.decode(q.rsample(3)).log_prob(x).shape
        torch.Size([3, 4])
        >>> vae(x)["loss"].shape  # the ELBO's per-example terms
        torch.Size([4])
        >>> vae.log_weights(x, k=8).shape
        torch.Size([8, 4])
        >>> vae.sample(6).mean.shape
        torch.Size([6, 1, 28, 28])
    """

    has_density = True
    default_objective = "elbo"
    priors = ("normal", "mog", "vamp")
    takes_flows = True

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        """Refuse what the VAE does not take (see the base check), and the VampPrior with flows.

        Raises:
            ConfigError: With a one-line message naming what the model takes.
        """
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
        """p(z): N(0, I), the learned mixture (``mog``) or the VampPrior (the equally weighted
        mixture of the pseudo-inputs' posteriors), with ``log_prob(z)`` (..., D) -> (...) and
        ``sample(n)`` -> (n, D)."""
        if self.mixture_prior is not None:
            return self.mixture_prior()
        if self.pseudo_inputs is not None:  # the posteriors of the pseudo-inputs, equally weighted
            q = self.encode(torch.sigmoid(self.pseudo_inputs))
            return GaussianMixture(q.mean, q.log_std, torch.zeros(len(q.mean), device=q.mean.device))
        return super().prior()

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> DiagonalGaussian | FlowPosterior:
        """The posterior q(z|x) of images x (B, C, H, W) [conditions c (B, C')]: a diagonal
        Gaussian with ``mean`` and ``log_std`` (B, D), or, with flows, a FlowPosterior whose
        ``mean`` (B, D) is its base Gaussian's mean pushed through the flows; ``rsample(n)``
        gives (n, B, D)."""
        out = self.encoder_input(x, c)
        d = self.latent_dim
        base = DiagonalGaussian(out[:, :d], out[:, d : 2 * d])
        return base if self.flows is None else FlowPosterior(base, self.flows, out[:, 2 * d :])


class HVAE(_Base):
    """VAE with a hierarchy of stochastic layers z_1 (next to the data) ... z_L (top), as in
    Burda et al. 2016's two-layer MNIST model (their section 5): the generative path is
    top-down, p(z_L) = N(0, I), p(z_j | z_{j+1}) each a diagonal Gaussian from an MLP, and
    p(x | z_1) from the configured likelihood and decoder; inference is bottom-up,
    q(z_1 | x) q(z_2 | z_1) ....
    (A ladder-style top-down posterior, Sønderby et al. 2016, was built and measured: without
    their batch norm and KL warm-up it trained far slower and diverged on 3 of 3 seeds at the
    default learning rate; docs/doing-better.md.)

    A code is [z_1, ..., z_L] (D = the sum of the layer sizes): ``decode`` reads z_1, the
    prior is the top-down chain (its log-density is the sum over layers), so ELBO, IWAE and
    IS-NLL cover all layers, with the KL by Monte Carlo. x -> layer 1 uses the configured net
    and z_1 -> x the configured decoder; between layers MLPs of ``latent_hidden`` widths.
    The layer sizes are ``lower_latents`` (from the data up) then ``latent_dim`` (the top).

    Args:
        cfg: The model settings, with every ``auto`` field resolved.
        image_shape: (C, H, W) of the images.
        cond_dim: Unused (the HVAE is not conditional).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> cfg = ModelConfig(model="hvae", latent_dim=2, lower_latents=(4,), latent_hidden=(8,), hidden=(16,))
        >>> hvae = build_model(cfg, (1, 28, 28))
        >>> hvae.sizes, hvae.latent_dim  # z_1 has 4 dimensions, z_2 (the top) 2
        ((4, 2), 6)
        >>> x = (torch.rand(5, 1, 28, 28) < 0.3).float()
        >>> z = hvae.encode(x).rsample(3)  # codes [z_1, z_2]
        >>> z.shape, hvae.prior().log_prob(z).shape
        (torch.Size([3, 5, 6]), torch.Size([3, 5]))
        >>> hvae.decode(z).mean.shape
        torch.Size([3, 5, 1, 28, 28])
    """

    has_density = True
    default_objective = "elbo"
    traits = ("density", "hierarchical")

    @classmethod
    def check(cls, m: ModelConfig, objective: str = AUTO) -> None:
        """Refuse settings without a stochastic layer below the top one, a prior other than
        its own chain, flows, or an objective it does not take.

        Raises:
            ConfigError: With a one-line message naming what the model takes.
        """
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
        """The bottom-up posterior q(z_1|x) q(z_2|z_1) ... of images x (B, C, H, W): a chain
        over codes [z_1, ..., z_L] (B, D); ``rsample(n)`` gives (n, B, D) and ``mean`` (B, D)."""
        first = DiagonalGaussian(*self.encoder_input(x, c).chunk(2, -1))
        return GaussianChain(first, [partial(self._gaussian, net) for net in self.up], self.sizes)

    def prior(self) -> GaussianChain:
        """The top-down prior p(z_L) p(z_{L-1}|z_L) ... p(z_1|z_2) over codes [z_1, ..., z_L]:
        ``log_prob(z)`` (..., D) -> (...), the sum over layers, and ``sample(n)`` -> (n, D)."""
        top = DiagonalGaussian.standard((self.sizes[-1],), device=next(self.parameters()).device)
        return GaussianChain(top, self._priors(), self.sizes[::-1], reverse=True)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None):
        """The likelihood p(x | z_1): codes [z_1, ..., z_L], (B, D) or (K, B, D) for K draws, -> a
        distribution over images (B, C, H, W) or (K, B, C, H, W); only z_1 is read."""
        return super().decode(z[..., : self.sizes[0]], c)


class AE(_Base):
    """Deterministic autoencoder: a code per image, no prior, no density.

    Trained by maximising log p(x | z = f(x)) with the same likelihood families as the
    VAE (Bernoulli log-likelihood = binary cross-entropy). ``sample`` decodes N(0, I)
    codes only to show why that fails: nothing made the codes of real images look
    like draws from N(0, I).

    Args:
        cfg: The model settings, with every ``auto`` field resolved.
        image_shape: (C, H, W) of the images.
        cond_dim: Unused (the AE is not conditional).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> ae = build_model(ModelConfig(model="ae", latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> ae.encode(x).mean.shape  # one code per image
        torch.Size([4, 2])
        >>> sorted(ae(x))  # trained by reconstruction
        ['loss', 'recon']
        >>> ae.log_weights(x, 8)
        Traceback (most recent call last):
        ...
        TypeError: a plain autoencoder defines no density p(x), so it has no ELBO or log-likelihood; ...
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
        """The codes of images x (B, C, H, W), as a ``PointMass`` with ``mean`` (B, D)."""
        return PointMass(self.encoder_input(x, c))

    def log_weights(self, x: torch.Tensor, k: int, **_) -> torch.Tensor:
        """Always raises: an autoencoder has no density, so no log-weights (k, B) for x (B, C, H, W).

        Raises:
            TypeError: Always.
        """
        raise TypeError(
            "a plain autoencoder defines no density p(x), so it has no ELBO or log-likelihood; "
            "train --model vae to evaluate one"
        )


class CVAE(VAE):
    """A conditional VAE (Sohn et al. 2015): models p(x|c) for a condition c such as a class label.

    The decoder sees [z, c]; with ``condition_encoder`` the encoder sees [x, c] too. c is a
    one-hot class label by default, or any side-information vector (see
    vaelab.data.conditions). Every method of ``VAE`` takes the conditions c (B, C') as
    well; ``sample(n, c=...)`` takes (n, C'). The VampPrior is not available.

    Args:
        cfg: The model settings, with every ``auto`` field resolved.
        image_shape: (C, H, W) of the images.
        cond_dim: C', the condition's features (> 0).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> cvae = build_model(ModelConfig(model="cvae", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> c = torch.eye(10)[[3, 1, 4, 1]]  # one-hot labels, (4, 10)
        >>> cvae(x, c)["elbo"].shape
        torch.Size([4])
        >>> cvae.sample(3, c=torch.eye(10)[[7, 7, 7]]).mean.shape  # three images of class 7
        torch.Size([3, 1, 28, 28])
        >>> cvae.log_weights(x, 5, c=c).shape  # estimates log p(x|c)
        torch.Size([5, 4])
    """

    conditional = True
    traits = ("density", "conditional")
    priors = ("normal", "mog")

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        return ": the VampPrior's pseudo-inputs carry no condition; use --prior mog" if value == "vamp" else ""


class ICVAE(CVAE):
    """An invariant conditional VAE (Moyer et al. 2018): a CVAE whose codes carry little information about c.

    A ``CVAE`` trained with the ``vaelab.objectives.icvae`` objective, which weights the
    reconstruction by 1 + lambda and adds lambda times a bound on KL(q(z|x) || q(z)) (the
    mean pairwise KL between the batch's posteriors) to push the information about c out of
    z (the decoder gets c anyway). Its posterior is a plain diagonal Gaussian: no flows. Same arguments and
    shapes as ``CVAE``.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> icvae = build_model(ModelConfig(model="icvae", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> icvae.objective
        Objective(name='icvae', options={})
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> terms = icvae(x, torch.eye(10)[[3, 1, 4, 1]])
        >>> sorted(terms), terms["kl_marginal"].shape
        (['adversary', 'confusion', 'dependence', 'elbo', 'kl', 'kl_marginal', 'loss', 'recon'], torch.Size([4]))
    """

    default_objective = "icvae"
    takes_flows = False

    @classmethod
    def _why_not(cls, what: str, value) -> str:
        if what == "flows":
            return ": the ICVAE penalty needs a diagonal Gaussian posterior; drop --flows or use --model cvae"
        return super()._why_not(what, value)


class Censored(CVAE):
    """An adversarially censored CVAE (Edwards & Storkey 2016): a CVAE whose encoder learns to hide c from an adversary.

    The ``adversary`` network, two hidden layers of 256 units reading a draw z ~ q(z|x),
    learns to predict c (the class, or the side-information vector), while the encoder,
    through the adversary's reversed gradient, learns to defeat it (the
    ``vaelab.objectives.censor`` objective, weighted by lambda). The adversary's parameters
    are the model's, so checkpoints, resume and data-parallel training carry them. Same
    arguments and shapes as ``CVAE``.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="censored", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> model.objective.name, model.adversary(torch.zeros(5, 2)).shape  # codes (5, D) -> c (5, C')
        ('censor', torch.Size([5, 10]))
        >>> terms = model((torch.rand(4, 1, 28, 28) < 0.3).float(), torch.eye(10)[[3, 1, 4, 1]])
        >>> sorted(terms), terms["adversary"].shape
        (['adversary', 'elbo', 'kl', 'loss', 'recon'], torch.Size([4]))
    """

    default_objective = "censor"
    traits = ("density", "conditional", "adversary")

    def __init__(self, cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        super().__init__(cfg, image_shape, cond_dim)
        # as deep and wide as the 2-hidden-layer probe that measures what the codes still hold
        self.adversary = mlp([cfg.latent_dim, 256, 256, self.cond_dim], "relu")


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

MODELS: dict[str, type[_Base] | type[Ladder]] = {
    "vae": VAE,
    "hvae": HVAE,
    "ae": AE,
    "cvae": CVAE,
    "icvae": ICVAE,
    "censored": Censored,
    "ladder": Ladder,
}
"""The model registry: name (``ModelConfig.model``, ``--model``) -> model class. A class added
here (e.g. a subclass of ``VAE`` with its own ``default_objective``) is built by
``build_model`` and trained from the command line like the built-in ones."""


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], cond_dim: int = 0) -> _Base:
    """Build the model a ModelConfig describes, for images of a given shape.

    Fields left to the recipe (``auto`` or None) are filled as training fills them
    (``vaelab.config.resolve``), from the image shape alone: the binary recipe when the
    likelihood is Bernoulli or unset, the 8-bit recipe otherwise (training resolves against
    the data first). The settings are then checked by the model class's ``check`` and the class
    ``MODELS[cfg.model]`` is built. The model's ``cfg`` holds the resolved settings.

    Args:
        cfg: The model settings; ``cfg.model`` names the model (vae, hvae, ae, cvae, icvae,
            censored or one added to ``MODELS``).
        image_shape: (C, H, W) of the images.
        cond_dim: C', the features of the condition, for conditional models (cvae, icvae, censored).

    Returns:
        The model (an ``nn.Module``), in training mode, on the CPU, with its own objective bound.

    Raises:
        ConfigError: Unknown names, combinations the model does not take, or a conditional
            model without ``cond_dim``.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> type(model).__name__, model.cfg.net, model.cfg.likelihood
        ('VAE', 'mlp', 'bernoulli')
        >>> model = build_model(ModelConfig(latent_dim=4, hidden=(8, 16), likelihood="logistic"), (3, 32, 32))
        >>> model.cfg.net, model.cfg.likelihood_scale  # the 8-bit recipe for colour images
        ('resnet', 'decoder')
        >>> build_model(ModelConfig(model="cvae", latent_dim=2, hidden=(16,)), (1, 28, 28))
        Traceback (most recent call last):
        ...
        vaelab.config.ConfigError: the cvae model needs conditions: ...
    """
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
    """Set the objective a model's ``forward`` runs from a run's training settings.

    Binds the run's objective (``--objective``, or the model's own when auto) with its
    settings (--samples, --beta, --kl, --lambda) to the model; training and the test pass
    both run it, so the options mean the same on both. Networks the objective trains beside
    the model (FactorVAE's discriminator) become its submodules, ``model.objective_nets``, on
    the model's device: bind before building the optimiser or loading a checkpoint.

    Args:
        model: A model from ``build_model``.
        t: The training settings; ``t.objective`` names the objective.

    Returns:
        The bound ``vaelab.objectives.Objective``, also stored as ``model.objective``.

    Raises:
        ConfigError: The model does not train with that objective, or the objective refuses
            the settings.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import bind_objective, build_model
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> bind_objective(model, TrainConfig(objective="iwae", samples=5))
        Objective(name='iwae', options={'samples': 5, 'beta': 1.0})
        >>> sorted(model(torch.zeros(3, 1, 28, 28)))
        ['elbo', 'iwae', 'loss']
        >>> _ = bind_objective(model, TrainConfig(objective="factorvae", discriminator_hidden=(8,)))
        >>> list(model.objective_nets)  # trained beside the model, saved with it
        ['discriminator']
    """
    from vaelab.objectives import OBJECTIVES  # the registry as it is now, with objectives added since

    type(model).check(model.cfg, t.objective)
    name = model.default_objective if t.objective == AUTO else t.objective
    model.objective = bind(name, t)
    build = OBJECTIVES[name].nets
    if build is not None:
        model.objective_nets = nn.ModuleDict(build(model, t)).to(next(model.parameters()).device)
    elif "objective_nets" in model._modules:  # a previous objective's
        del model.objective_nets
    return model.objective


def check_config(cfg: Config) -> None:
    """Refuse combinations the chosen model or objective cannot honour, before any work.

    Args:
        cfg: A whole configuration (model and training settings).

    Raises:
        ConfigError: With a one-line message naming what the model or objective takes.

    Examples:
        >>> from vaelab.config import Config
        >>> from vaelab.models import check_config
        >>> check_config(Config().replace(model={"model": "vae"}, train={"objective": "iwae"}))
        >>> check_config(Config().replace(model={"model": "ae"}, train={"objective": "iwae"}))
        Traceback (most recent call last):
        ...
        vaelab.config.ConfigError: the ae model trains with reconstruction, not iwae: ...
    """
    model_cls = choose(MODELS, cfg.model.model, "model")
    model_cls.check(cfg.model, cfg.train.objective)
    name = model_cls.default_objective if cfg.train.objective == AUTO else cfg.train.objective
    bind(name, cfg.train)


def check_data_fit(cfg: ModelConfig, binarization: str) -> None:
    """Refuse a likelihood that does not model the data as configured (binary vs grey levels)."""
    choose(LIKELIHOODS, cfg.likelihood, "likelihood").check_binarization(binarization)


ACTIVE_VARIANCE = 0.01
"""The variance of its posterior mean above which a latent dimension is active (Burda et al. 2016, section 5.2)."""


def active_dims(mean: torch.Tensor, square: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> torch.Tensor:
    """Which latent dimensions are active: those whose posterior mean varies across images.

    A dimension is active when the variance of its posterior mean over the images exceeds
    `threshold` (Burda et al. 2016, section 5.2). Takes moments rather than the means
    themselves so that they can be accumulated in chunks or across processes.

    Args:
        mean: The average over the images of the posterior means, shape (D,).
        square: The average over the images of their squares, shape (D,).
        threshold: The variance above which a dimension counts as active (default 0.01).

    Returns:
        A boolean mask, shape (D,).

    Examples:
        >>> from vaelab.models import active_dims
        >>> means = torch.tensor([[0.0, 1.0, 0.05], [0.0, -1.0, -0.05]])  # (N, D) posterior means
        >>> active_dims(means.mean(0), means.square().mean(0))
        tensor([False,  True, False])
    """
    return (square - mean.square()) > threshold


@torch.no_grad()
def active_units(model: _Base, inputs: SplitInputs, dist: Dist = Dist(), threshold: float = ACTIVE_VARIANCE,
                 levels: tuple[int, ...] | None = None) -> int | list[int]:
    """Count the latent dimensions a model uses on a split (Burda et al. 2016, section 5.2).

    A dimension is active when its posterior mean varies across the split's images with
    variance above `threshold` (see ``active_dims``). A collapsed posterior,
    q(z|x) = p(z) for every x, has none. The model is run in evaluation mode, in chunks of
    1000 images, and left in the mode it was in.

    Args:
        model: A model from ``build_model``.
        inputs: The split's images as the model sees them (``vaelab.batches.SplitInputs``).
        dist: This process's place in a data-parallel job; the default is a single process.
        threshold: The variance above which a dimension counts as active.
        levels: The sizes of a hierarchy's levels (``model.sizes``, summing to ``latent_dim``)
            to count them per level; None: one count.

    Returns:
        The number of active dimensions, between 0 and ``model.latent_dim``; with `levels`, a
        list of the counts per level.

    Examples:
        >>> from vaelab.batches import Feed, SplitInputs
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.data import Split
        >>> from vaelab.models import active_units, build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> images = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8)
        >>> inputs = SplitInputs(Split(images, torch.zeros(100, dtype=torch.long)), Feed("fixed"), seed=0,
        ...                      device="cpu")
        >>> 0 <= active_units(model, inputs) <= model.latent_dim
        True
        >>> active_units(model, inputs, threshold=1e6)
        0
        >>> active_units(model, inputs, threshold=1e6, levels=(1, 1))  # counted per level
        [0, 0]
    """
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
    active = active_dims(mean, square, threshold)
    return int(active.sum()) if levels is None else [int(a.sum()) for a in active.split(list(levels))]
