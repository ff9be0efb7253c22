"""Training objectives. Each returns per-example terms, shape (B,), with ``loss``
the quantity minimised (averaged over the batch by the training loop) and the other
entries reported in the metrics. All terms are in nats per image; ``elbo`` is always the
evidence lower bound itself (beta = 1), whatever the loss weighs.

Every objective is a function ``fn(model, step, t)`` of three things:

- `model`, the model it trains;
- `step`, a ``Step``: the batch and what comes with it from the training step or the test
  pass (the images x, the conditions c, the encoder's input x_in, the noise `generator`, the
  data-parallel `peers`, the `schedule`), built by the model's ``forward``;
- `t`, a ``vaelab.config.TrainConfig`` holding its settings (samples, beta, kl, lam, ...):
  the run's values of the TrainConfig fields the objective declares, the defaults elsewhere.

An objective is registered once, in ``OBJECTIVES`` (an ``ObjectiveSpec``, or from outside
the package with ``@objective(name, terms=..., options=...)``), with the names of its terms
and of the TrainConfig fields it takes, and bound once to a run's settings (``bind``): the
resulting ``Objective`` is called with the model and a ``Step`` only, the same way in
training and in the test pass.

``Step.generator`` is where reparameterisation noise comes from: a torch.Generator, None
(the global RNG), or a ``vaelab.noise.ExampleNoise`` tied to the examples, which
makes a data-parallel run draw what a single process draws.

``Step.x_in``, when given, is what the encoder sees instead of x (a corrupted copy, shape of
x): the bound then scores the clean x under q(z|x_in), the denoising variational bound
of Im et al. 2017 (for the autoencoder, the denoising criterion of Vincent et al. 2008).

``Step.peers``, in a data-parallel job, gives a batch-level term the whole global batch: a
function from this process's rows (B, ...) to (all rows of the global batch in order,
offset of this process's rows among them), with gradients flowing back to the process
that owns each row (``vaelab.runtime.Dist.batch_peers``). None: the rows given are
the whole batch. Only the batch-level terms use it (icvae, tcvae, factorvae, capacity,
dipvae); per-example objectives ignore it.

``Step.schedule``, for objectives that declare they read it, is a ``Schedule``: what changes
with the training step (the KL warm-up's share of beta), a function of the step alone so that
a resumed run goes on exactly. In the test pass it is ``Schedule()``: the full weights."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import ADVERSARY_LOSSES, MARGINALS, ConfigError, ModelConfig, TrainConfig
from vaelab.distributions import LOG_2PI, DiagonalGaussian
from vaelab.nets import mlp
from vaelab.noise import ExampleNoise, normal_noise

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveSpec",
    "Schedule",
    "Step",
    "objective",
    "bind",
    "elbo",
    "iwae",
    "icvae",
    "censor",
    "reconstruction",
    "kl_to_prior",
    "pairwise_gaussian_kl",
    "minibatch_log_qz",
    "tcvae",
    "factorvae",
    "capacity",
    "dipvae",
    "sampled_marginal_kl",
    "dependence",
]


@dataclass(frozen=True)
class Schedule:
    """What an objective weighs at one training step: the settings that change with the step.

    Built by ``Schedule.at`` from the run's settings and the step alone (so a resumed run
    continues exactly); the model's ``forward`` puts it in the ``Step`` its objective reads
    (``step.schedule``), and objectives declare the fields they read (``ObjectiveSpec.schedule``).
    Each field names the TrainConfig setting that drives it in its metadata, and ``bind``
    refuses that setting for an objective that does not read the field.

    Attributes:
        kl_scale: The share of the KL weight beta the loss uses at this step, in [0, 1]:
            rises linearly from 0 to 1 over ``kl_warmup`` epochs (Bowman et al. 2016;
            Sønderby et al. 2016), then stays at 1.
        capacity_scale: The share of C_max the capacity objective lets the KL reach at this
            step, C(step) / C_max in [0, 1]: rises linearly from 0 to 1 over ``capacity_steps``
            steps (Burgess et al. 2018), then stays at 1.
        free_bits_scale: The share of ``free_bits`` in force at this step, in [0, 1]: with a
            ``free_bits_cooldown`` of E epochs it holds at 1 for the first E / 2 epochs, falls
            linearly to 0 by epoch E and stays there (Havtorn et al. 2021's free-nats
            cool-down); without one it stays at 1.

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> from vaelab.objectives import Schedule
        >>> t = TrainConfig(kl_warmup=2)
        >>> [Schedule.at(t, step, 100).kl_scale for step in (0, 50, 100, 200, 300)]
        [0.0, 0.25, 0.5, 1.0, 1.0]
        >>> Schedule.at(TrainConfig(kl_warmup=0), 0, 100)
        Schedule(kl_scale=1.0, capacity_scale=1.0, free_bits_scale=1.0)
        >>> t = TrainConfig(objective="capacity", capacity=25.0, capacity_steps=1000)
        >>> [25.0 * Schedule.at(t, step, 100).capacity_scale for step in (0, 500, 1000, 5000)]  # C(step), nats
        [0.0, 12.5, 25.0, 25.0]
        >>> t = TrainConfig(free_bits=2.0, free_bits_cooldown=4)
        >>> [Schedule.at(t, step, 100).free_bits_scale for step in (0, 200, 300, 400, 500)]
        [1.0, 1.0, 0.5, 0.0, 0.0]
    """

    kl_scale: float = field(default=1.0, metadata={"setting": "kl_warmup", "what": "no KL term to warm up"})
    capacity_scale: float = field(default=1.0, metadata={"setting": "capacity", "what": "no capacity to anneal"})
    free_bits_scale: float = field(default=1.0, metadata={"setting": "free_bits_cooldown",
                                                          "what": "no KL term for free bits"})

    @classmethod
    def at(cls, t: TrainConfig, step: int, steps_per_epoch: int) -> Schedule:
        """The schedule of optimiser step `step` (0-based) of a run with `steps_per_epoch` steps an epoch."""
        warm = min(1.0, step / (t.kl_warmup * steps_per_epoch)) if t.kl_warmup else 1.0
        free = 1.0
        if t.free_bits_cooldown:  # hold for the first half, then fall linearly to 0 (hvae-oodd)
            half = t.free_bits_cooldown * steps_per_epoch / 2
            free = min(1.0, max(0.0, 2.0 - step / half))
        return cls(kl_scale=warm, capacity_scale=min(1.0, step / t.capacity_steps) if t.capacity else 1.0,
                   free_bits_scale=free)


FULL = Schedule()  # every weight at its end value: the test pass, and calls without a schedule


@dataclass(frozen=True)
class Step:
    """What an objective scores: one batch, and what the training step or the test pass hands along with it.

    The model's ``forward`` builds one from its arguments and runs its bound ``Objective``
    on it, so the training loop and the test pass reach every objective the same way; a
    direct call builds one by hand (``elbo(model, Step(x), TrainConfig())``).

    Attributes:
        x: Images (B, C, H, W), scored by the likelihood.
        c: Conditions (B, C') for conditional models; None otherwise.
        generator: Source of the reparameterisation noise: a ``torch.Generator``, None (the
            global RNG) or a ``vaelab.noise.ExampleNoise``.
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        schedule: This training step's ``Schedule``, read by objectives that declare its fields;
            None is read as ``Schedule()``, the full weights (the test pass).
        peers: In a data-parallel job, gathers the global batch for batch-level terms (see
            the module docstring); None: these rows are the whole batch.

    Examples:
        >>> from vaelab.objectives import Schedule, Step
        >>> x = torch.zeros(4, 1, 28, 28)
        >>> step = Step(x, generator=torch.Generator().manual_seed(0))
        >>> step.x.shape, step.c, step.schedule
        (torch.Size([4, 1, 28, 28]), None, Schedule(kl_scale=1.0, capacity_scale=1.0, free_bits_scale=1.0))
        >>> Step(x, schedule=Schedule(kl_scale=0.5)).schedule.kl_scale
        0.5
    """

    x: torch.Tensor
    c: torch.Tensor | None = None
    _: KW_ONLY
    generator: Any = None
    x_in: torch.Tensor | None = None
    schedule: Schedule | None = None
    peers: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None

    def __post_init__(self) -> None:
        if self.schedule is None:
            object.__setattr__(self, "schedule", FULL)

    @property
    def encoder_input(self) -> torch.Tensor:
        """What the encoder reads, (B, C, H, W): ``x_in`` when given, else x."""
        return self.x if self.x_in is None else self.x_in


@dataclass(frozen=True)
class ObjectiveSpec:
    """One entry of the objective registry ``OBJECTIVES``: a function and what it needs and returns.

    Made by the ``objective`` decorator, or written into ``OBJECTIVES`` directly for the
    fields the decorator does not take (``check``, ``fits``, ``nets``); ``bind`` and
    ``Objective`` read it.

    Attributes:
        fn: ``fn(model, step, t) -> dict`` of per-example terms, each of shape (B,): `step` a
            ``Step``, `t` a ``vaelab.config.TrainConfig`` with the run's values of `options`.
        terms: Names of the returned terms, ``"loss"`` first; every process of a data-parallel
            job reduces these same keys.
        options: The ``vaelab.config.TrainConfig`` fields ``fn`` reads from `t`; the others hold
            their defaults there.
        check: Raises ``ConfigError`` for training settings the objective cannot honour; None: none.
        needs: Model traits required to train with it (``density``, ``conditional``,
            ``autoencoder``; see ``traits`` in ``vaelab.models``).
        schedule: The ``Schedule`` fields ``fn`` reads from ``step.schedule``; the settings
            that drive the others are refused. Empty: ``fn`` reads no schedule.
        fits: Called with a model class and its ``vaelab.config.ModelConfig`` by the model's
            ``check``; raises ``ConfigError`` for a model the objective cannot train (a
            hierarchy, flows, a prior); None: every model whose traits meet ``needs``.
        nets: Builds the networks the objective trains beside the model, ``nets(model, t)`` ->
            {name: nn.Module} (FactorVAE's discriminator); ``vaelab.models.bind_objective`` makes
            them submodules of the model (``model.objective_nets``), so that the optimiser,
            checkpoints, resuming and DistributedDataParallel see them. None: none.

    Raises:
        ValueError: An option is not a TrainConfig field, a schedule field is not a
            ``Schedule`` field, or ``"loss"`` is not the first term.

    Examples:
        >>> from vaelab.objectives import OBJECTIVES
        >>> spec = OBJECTIVES["iwae"]
        >>> spec.terms, spec.options, spec.needs, spec.schedule
        (('loss', 'iwae', 'elbo'), ('samples', 'beta'), ('density',), ())
        >>> OBJECTIVES["icvae"].needs, OBJECTIVES["icvae"].schedule
        (('density', 'conditional'), ('kl_scale',))

        An objective that refuses some settings, entered directly:

        >>> from vaelab.config import ConfigError, TrainConfig
        >>> from vaelab.objectives import Objective, ObjectiveSpec, bind, elbo
        >>> def refuse_mc(t):
        ...     if t.kl != "analytic":
        ...         raise ConfigError("the exact-kl objective computes the KL in closed form; use --kl analytic")
        >>> OBJECTIVES["exact-kl"] = ObjectiveSpec(elbo, ("loss", "recon", "kl", "elbo"), ("samples", "kl"),
        ...                                        check=refuse_mc)
        >>> bind("exact-kl", TrainConfig(kl="mc"))
        Traceback (most recent call last):
        vaelab.config.ConfigError: the exact-kl objective computes the KL in closed form; use --kl analytic
        >>> del OBJECTIVES["exact-kl"]  # the registry is global: tidy up after the example
    """

    fn: Callable[..., dict[str, torch.Tensor]]
    terms: tuple[str, ...]
    options: tuple[str, ...] = ()
    check: Callable[[TrainConfig], None] | None = None  # refuses settings it cannot honour
    # what a model must be to train with it (vaelab.models' traits: density, conditional, autoencoder)
    needs: tuple[str, ...] = ("density",)
    schedule: tuple[str, ...] = ()  # the Schedule fields fn reads from step.schedule
    fits: Callable[[type, ModelConfig], None] | None = None  # refuses models it cannot train
    nets: Callable[[Any, TrainConfig], dict[str, nn.Module]] | None = None  # networks trained beside the model

    def __post_init__(self) -> None:
        unknown = set(self.options) - {f.name for f in dataclasses.fields(TrainConfig)}
        unknown |= set(self.schedule) - {f.name for f in dataclasses.fields(Schedule)}
        if unknown or not self.terms or self.terms[0] != "loss":
            raise ValueError(f"{sorted(unknown)} are not TrainConfig fields (options) or Schedule fields "
                             f"(schedule), or 'loss' is not its first term")


def objective(name: str, terms: tuple[str, ...], options: tuple[str, ...] = (),
              needs: tuple[str, ...] = ("density",), schedule: tuple[str, ...] = ()):
    """Register a new training objective under a name (a decorator).

    The decorated function has the signature ``fn(model, step, t)``: `step` a ``Step`` (the
    batch x, its conditions c, the noise generator, x_in, peers and the schedule), `t` a
    ``vaelab.config.TrainConfig`` whose `options` fields hold the run's values (the others
    their defaults). It returns a dict of per-example terms, each of shape (B,), with the
    keys ``terms``. Once registered, the name works everywhere a built-in objective does:
    ``--objective name``, ``bind``, ``Objective``, and every model whose traits include
    ``needs``. An objective that refuses settings (``check``), some models (``fits``) or
    trains networks of its own (``nets``) is an ``ObjectiveSpec`` written into
    ``OBJECTIVES`` directly.

    Args:
        name: The objective's name in ``OBJECTIVES`` (a name already there is replaced).
        terms: Names of the returned terms; ``"loss"`` (minimised, averaged over the batch by
            the training loop) must come first; the others are reported as metrics.
        options: ``vaelab.config.TrainConfig`` fields the function reads from `t`, e.g.
            ``("samples", "beta")``.
        needs: Model traits the objective requires (``density``, ``conditional``, ``autoencoder``).
        schedule: The ``Schedule`` fields the function reads from ``step.schedule``, e.g.
            ``("kl_scale",)`` for one that weighs a KL term by ``beta * step.schedule.kl_scale``
            (``Schedule()``, the full weights, in the test pass). Settings that drive the other
            fields (``kl_warmup``) are refused for it.

    Returns:
        The decorator, which registers the function and returns it unchanged.

    Raises:
        ValueError: An option is not a TrainConfig field, a schedule field is not a
            ``Schedule`` field, or ``"loss"`` is not the first term.

    Examples:
        >>> import dataclasses
        >>> from vaelab.objectives import OBJECTIVES, Objective, Step, elbo, objective
        >>> @objective("half-kl", terms=("loss", "recon", "kl", "elbo"), options=("samples",))
        ... def half_kl(model, step, t):
        ...     return elbo(model, step, dataclasses.replace(t, beta=0.5))
        >>> Objective("half-kl", {"samples": 2}).terms
        ('loss', 'recon', 'kl', 'elbo')
        >>> del OBJECTIVES["half-kl"]  # the registry is global: tidy up after the example
    """

    def register(fn):
        try:
            spec = ObjectiveSpec(fn, tuple(terms), tuple(options), needs=tuple(needs), schedule=tuple(schedule))
        except ValueError as e:
            raise ValueError(f"objective {name}: {e}") from None
        OBJECTIVES[name] = spec
        return fn

    return register


@dataclass(frozen=True)
class Objective:
    """A registered objective bound to its options, called with the model and a ``Step``.

    ``Objective(name, options)(model, Step(x, c))`` runs the registered function with those
    options and returns its per-example terms, each of shape (B,). Options left out take
    their ``vaelab.config.TrainConfig`` defaults. A model's ``forward`` runs its
    ``objective`` attribute, an instance of this class; ``bind`` builds one from a run's
    training settings.

    Args:
        name: A name registered in ``OBJECTIVES``: elbo, iwae, icvae, reconstruction, or one
            added with ``objective``.
        options: The TrainConfig fields the objective takes and their values, e.g. ``{"samples": 5}``.

    Raises:
        ConfigError: The name is not registered, or an option is not one the objective takes.

    Examples:
        >>> from vaelab.objectives import Objective, Step
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> obj = Objective("iwae", {"samples": 5})
        >>> obj.terms
        ('loss', 'iwae', 'elbo')
        >>> terms = obj(model, Step(x))
        >>> terms["loss"].shape
        torch.Size([4])
        >>> obj.settings.samples, obj.settings.beta  # what the function reads: beta at its default
        (5, 1.0)
        >>> obj.replace(samples=50)
        Objective(name='iwae', options={'samples': 50})
    """

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
        """Names of the terms a call returns, ``"loss"`` first; each term has shape (B,)."""
        return OBJECTIVES[self.name].terms

    @cached_property
    def settings(self) -> TrainConfig:
        """What the function reads: a TrainConfig with these options, the defaults elsewhere."""
        return dataclasses.replace(_DEFAULTS, **self.options)

    def replace(self, **options: Any) -> Objective:
        """A copy with some options changed or added: ``obj.replace(samples=50)``."""
        return Objective(self.name, {**self.options, **options})

    def __call__(self, model, step: Step) -> dict[str, torch.Tensor]:
        """Per-example terms, each (B,), of the objective on `step` (a ``Step``: images x
        (B, C, H, W), conditions c (B, C') for conditional models, and the rest as in the
        module docstring)."""
        return OBJECTIVES[self.name].fn(model, step, self.settings)


_DEFAULTS = TrainConfig()  # the settings an objective reads where no option is given


def bind(name: str, t: TrainConfig) -> Objective:
    """Bind the objective `name` to a run: its options are read from the training settings.

    Each option the objective declares (e.g. ``samples``, ``beta``) takes the value of the
    TrainConfig field of that name, and the objective's ``check`` refuses settings it cannot
    honour, so the same options hold in training and in the test pass.

    Args:
        name: A registered objective name.
        t: The run's training settings.

    Returns:
        The bound ``Objective``.

    Raises:
        ConfigError: Unknown name, or settings the objective refuses (e.g. ``iwae`` with beta != 1).

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> from vaelab.objectives import bind
        >>> bind("iwae", TrainConfig(samples=5))
        Objective(name='iwae', options={'samples': 5, 'beta': 1.0})
        >>> bind("elbo", TrainConfig(beta=4.0)).options
        {'samples': 1, 'beta': 4.0, 'kl': 'analytic', 'free_bits': None}
    """
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose {', '.join(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    for f in dataclasses.fields(Schedule):  # a setting that drives a schedule field it does not read
        setting = f.metadata["setting"]
        if getattr(t, setting) and f.name not in spec.schedule:
            readers = ", ".join(n for n, s in OBJECTIVES.items() if f.name in s.schedule)
            flag = "--" + setting.replace("_", "-")
            raise ConfigError(f"the {name} objective has {f.metadata['what']}; set {flag} 0 (the objectives "
                              f"with one: {readers})")
    if spec.check:
        spec.check(t)
    return Objective(name, {k: getattr(t, k) for k in spec.options})


def elbo(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """The evidence lower bound, ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 10).

    The reconstruction term averages ``samples`` reparameterised draws z ~ q(z|x). The KL to
    N(0, I) is analytic (their appendix B) when ``kl="analytic"`` and q is a diagonal
    Gaussian; otherwise it is the Monte-Carlo estimate mean(log q(z) - log p(z)) over the
    same draws, which is what posteriors with flows need: the bound is then
    log p(x, z_K) - log q_0(z_0) + sum log|det| (Rezende & Mohamed 2015, eq. 15). ``beta``
    weights the KL in the loss (Higgins et al. 2017), scaled by the schedule's warm-up share; the
    reported ``elbo`` keeps beta = 1. With ``free_bits`` > 0 a KL below that many nats counts as
    that many in the loss, so it is not pushed lower (Kingma et al. 2016, per image here); the
    reported ``kl`` and ``elbo`` are unchanged.

    A top-down hierarchy (a model with ``elbo_levels``, ``vaelab.ladder.Ladder``) draws
    each level's posterior given the levels drawn above it in one pass; its KL is the sum of
    the levels' (Sønderby et al. 2016, eq. 14), each reported as ``kl_1`` (next to the data)
    ... ``kl_L``, and free bits apply to each level.

    Args:
        model: A model with a density (``encode``, ``decode``, ``prior``).
        step: The batch (a ``Step``): images x (B, C, H, W), scored by the likelihood; conditions
            c (B, C') for conditional models; the noise ``generator``; ``x_in``, what the encoder
            sees instead of x (denoising); its ``schedule``: the KL weight is beta * ``kl_scale``,
            the free bits ``free_bits`` * ``free_bits_scale``. ``peers`` is ignored.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, draws K of z per
            image; ``beta``, the weight of the KL term in the loss, >= 0; ``kl``, ``"analytic"``
            (closed form where possible) or ``"mc"`` (Monte Carlo); ``free_bits``, nats per image
            (per level of a hierarchy) below which the KL stops counting, 0 or None: off.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -(recon - w * kl) with
        w = beta * kl_scale,
        ``recon`` = E_q[log p(x|z)], ``kl`` = KL(q(z|x) || p(z)), ``elbo`` = recon - kl, and
        for a top-down hierarchy ``kl_1`` ... ``kl_L``.

    Examples:
        >>> from vaelab.objectives import Schedule, Step, elbo
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> t = TrainConfig(samples=2, beta=4.0)
        >>> terms = elbo(model, Step(x), t)
        >>> sorted(terms), terms["elbo"].shape
        (['elbo', 'kl', 'loss', 'recon'], torch.Size([4]))
        >>> torch.allclose(terms["loss"], -(terms["recon"] - 4.0 * terms["kl"]))
        True
        >>> bool((terms["elbo"] < 0).all())  # a lower bound on log p(x) <= 0 for binary x
        True
        >>> _ = torch.manual_seed(0)
        >>> warm = elbo(model, Step(x, schedule=Schedule(kl_scale=0.25)), t)  # the same draws
        >>> torch.allclose(warm["loss"], -(warm["recon"] - 1.0 * warm["kl"]))
        True
    """
    weight = t.beta * step.schedule.kl_scale
    floor = (t.free_bits or 0.0) * step.schedule.free_bits_scale  # None: not chosen yet, none
    if hasattr(model, "elbo_levels"):  # q(z_l | x, z_>l) needs the levels drawn above: one top-down pass
        recon, levels = model.elbo_levels(step.x, t.samples, generator=step.generator, x_in=step.x_in,
                                          kl=t.kl)  # (B,), (L, B)
        kl_term = levels.sum(0)
        counted = levels.clamp_min(floor).sum(0) if floor else kl_term
        return {"loss": -(recon - weight * counted), "recon": recon, "kl": kl_term, "elbo": recon - kl_term,
                **{f"kl_{i + 1}": v for i, v in enumerate(levels)}}
    *_, recon, kl_term = _draw(model, step, t)
    counted = kl_term.clamp_min(floor) if floor else kl_term
    return {"loss": -(recon - weight * counted), "recon": recon, "kl": kl_term, "elbo": recon - kl_term}


def _draw(model, step: Step, t: TrainConfig):
    """What every single-code objective starts from: q(z|x) (read from ``step.x_in`` when given),
    ``t.samples`` reparameterised draws z (L, B, D) with their log q (L, B), the reconstruction
    term E_q[log p(x|z)] (B,) and KL(q(z|x) || p(z)) (B,), in closed form when ``t.kl`` allows."""
    q = model.encode(step.encoder_input, step.c)
    z, log_q = q.rsample_with_log_prob(t.samples, generator=step.generator)  # (L, B, D), (L, B)
    return q, z, log_q, model.decode(z, step.c).log_prob(step.x).mean(0), kl_to_prior(model, q, z, log_q, t.kl)


def kl_to_prior(model, q, z: torch.Tensor, log_q: torch.Tensor, kl: str = "analytic") -> torch.Tensor:
    """KL(q(z|x) || p(z)) per example: in closed form where it exists, else by Monte Carlo.

    Closed form when ``kl="analytic"``, q is a diagonal Gaussian and the model's prior is
    N(0, I); otherwise mean(log q(z) - log p(z)) over the given draws (posteriors with flows;
    mixture and Vamp priors).

    Args:
        model: The model whose ``prior()`` is p(z).
        q: The posterior, ``model.encode(x, c)``.
        z: Draws from q, shape (K, B, D) for K draws.
        log_q: Their log-densities log q(z|x), shape (K, B).
        kl: ``"analytic"`` or ``"mc"``.

    Returns:
        The KL per example, shape (B,).

    Examples:
        >>> from vaelab.objectives import kl_to_prior
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> q = model.encode(x)
        >>> z, log_q = q.rsample_with_log_prob(4000)
        >>> z.shape, log_q.shape
        (torch.Size([4000, 4, 2]), torch.Size([4000, 4]))
        >>> exact = kl_to_prior(model, q, z, log_q)
        >>> estimate = kl_to_prior(model, q, z, log_q, kl="mc")
        >>> exact.shape, bool(((exact - estimate).abs() < 0.05).all())
        (torch.Size([4]), True)
    """
    prior = model.prior()
    if kl == "analytic" and prior.closed_form_kl and hasattr(q, "kl_standard_normal"):
        return q.kl_standard_normal()
    return (log_q - prior.log_prob(z)).mean(0)


def _no_kl_weight(t: TrainConfig) -> None:
    if t.beta != 1.0:
        raise ConfigError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    if t.free_bits:
        raise ConfigError("the IWAE bound has no KL term for free bits; use --objective elbo with --free-bits, "
                          "or --free-bits 0")


def iwae(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """The importance-weighted bound log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016, eq. 8).

    Built from the model's per-sample log-weights (no analytic KL inside), with the weights
    kept in the graph: the gradient is the self-normalised importance-weighted average of
    the per-sample gradients (their eq. 14). The bound tightens as k grows; k = 1 is the
    ELBO. There is no KL to weigh, so ``beta`` must be 1.

    Args:
        model: A model with a density (``log_weights``).
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; the noise ``generator``; ``x_in``, what the encoder sees instead
            of x (denoising). ``schedule`` and ``peers`` are ignored.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, k, the importance
            samples per image; ``beta``, which must be 1 (read so the option means what the ELBO's does).

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -iwae, ``iwae`` the bound,
        ``elbo`` the mean of the k log-weights (an ELBO estimate from the same draws).

    Raises:
        ValueError: beta is not 1.

    Examples:
        >>> from vaelab.objectives import Step, iwae
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> terms = iwae(model, Step(x), TrainConfig(samples=10))
        >>> sorted(terms), terms["iwae"].shape
        (['elbo', 'iwae', 'loss'], torch.Size([4]))
        >>> bool((terms["iwae"] >= terms["elbo"]).all())  # never below the ELBO of its draws
        True
    """
    if t.beta != 1.0:
        raise ValueError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    q = None if step.x_in is None else model.encode(step.x_in, step.c)
    lw = model.log_weights(step.x, t.samples, q=q, c=step.c, generator=step.generator)  # (k, B)
    bound = torch.logsumexp(lw, 0) - math.log(t.samples)
    return {"loss": -bound, "iwae": bound, "elbo": lw.mean(0)}


# ----------------------------------------------------------------------------- disentanglement
# beta-TCVAE, FactorVAE, annealed capacity and DIP-VAE: penalties on the code of a VAE with one
# vector latent, added to its reconstruction term. `_one_code` refuses the models they do not fit.


def _one_code(name: str, gaussian: bool = True):
    """The `fits` of an objective that needs one vector code (no hierarchy) and, when `gaussian`,
    a diagonal Gaussian posterior (no flows) and the N(0, I) prior."""

    def fits(model_cls: type, m: ModelConfig) -> None:
        if "hierarchical" in getattr(model_cls, "traits", ()):
            raise ConfigError(f"the {name} objective works on one vector code, and the {m.model} model's code is "
                              "a hierarchy of layers; use --model vae")
        if gaussian and m.flows:
            raise ConfigError(f"the {name} objective needs the posterior's Gaussian parameters, which flows "
                              "replace; drop --flows")
        if gaussian and m.prior != "normal":
            raise ConfigError(f"the {name} objective measures the code against the N(0, I) prior dimension by "
                              f"dimension; use --prior normal, not {m.prior}")

    return fits


def _gaussian(q, name: str) -> None:
    if not hasattr(q, "log_std"):
        raise ValueError(f"the {name} objective needs a diagonal Gaussian posterior (no flows)")


def _global(peers, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The whole batch's rows of each tensor and this process's offset among them (see ``peers``)."""
    if peers is None:
        return list(tensors), 0
    gathered = [peers(t) for t in tensors]
    return [g for g, _ in gathered], gathered[0][1]


def _log_weights(rows: torch.Tensor, m: int, dataset_size: int, estimator: str) -> torch.Tensor:
    """log w_ij, (S, M): the weight of posterior j of the batch in the estimate of q(z_i), for
    codes drawn from the posteriors of batch rows `rows` (S,). Chen et al. 2018, appendix."""
    n = max(dataset_size, m)  # a batch larger than N (a test chunk) counts as the whole data
    if estimator == "mws":  # minibatch weighted sampling: 1/(NM) each
        return torch.full((len(rows), m), -math.log(n * m), device=rows.device)
    if estimator != "mss":
        raise ValueError(f"unknown estimator {estimator!r}; choose mss or mws")
    others = m - 1
    if others == 0:  # a batch of one: its own posterior is all there is
        return torch.zeros(len(rows), 1, device=rows.device)
    # minibatch stratified sampling: the code's own posterior weighs 1/N, the next row's
    # (N - M + 1) / (N (M - 1)) and the M - 2 others 1/(M - 1) each; a row's weights sum to 1.
    # (The authors' code, rtqichen/beta-tcvae, fills a flat view with stride M, the row length, so
    # its 1/N and next-row weights land in columns 0 and 1 of every row, not on each row's own.)
    w = torch.full((len(rows), m), 1 / others, device=rows.device)
    at = torch.arange(len(rows), device=rows.device)
    w[at, (rows + 1) % m] = (n - others) / (n * others)
    w[at, rows] = 1 / n
    return w.log()


def minibatch_log_qz(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, dataset_size: int,
                     estimator: str = "mss", offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates of log q(z) and sum_d log q(z_d) from a batch of diagonal Gaussian posteriors.

    q(z) = (1/N) sum_n q(z|x_n), the average posterior over the N images of the data set, and
    q(z_d) its marginals, are estimated at codes drawn from the batch's own posteriors by a
    weighted sum over the batch's M posteriors (Chen et al. 2018, their section 4 and appendix):
    minibatch weighted sampling (``mws``, weights 1/(NM): biased low, by log N when every
    posterior is the same) or minibatch stratified sampling (``mss``, the code's own posterior
    weighted 1/N, the others so that the weights sum to 1). Each log q(z_i|x_j) is a
    (codes x M) matrix, computed a few dimensions at a time to bound the memory.

    Args:
        z: Codes, (B, D) or (L, B, D) for L draws: z[..., b, :] was drawn from the posterior of
            batch row ``offset + b``.
        mean: The means of the whole batch's posteriors, (M, D).
        log_std: Their log standard deviations, (M, D).
        dataset_size: N, the number of images q(z) averages over (the training set).
        estimator: ``"mss"`` or ``"mws"``.
        offset: Where the codes' rows start in the batch (a process's share of a global batch).

    Returns:
        tuple: (log q(z), sum_d log q(z_d)), each of z's shape without D: (B,) or (L, B).

    Examples:
        >>> import math
        >>> from vaelab.objectives import minibatch_log_qz
        >>> from vaelab.distributions import DiagonalGaussian
        >>> mean, log_std = torch.zeros(8, 3), torch.zeros(8, 3)  # 8 identical posteriors N(0, I)
        >>> z = torch.randn(8, 3)
        >>> exact = DiagonalGaussian(mean, log_std).log_prob(z)  # q(z) is that same Gaussian
        >>> joint, marginals = minibatch_log_qz(z, mean, log_std, dataset_size=1000)
        >>> torch.allclose(joint, exact, atol=1e-5), torch.allclose(marginals, exact, atol=1e-5)
        (True, True)
        >>> joint, _ = minibatch_log_qz(z, mean, log_std, dataset_size=1000, estimator="mws")
        >>> torch.allclose(joint, exact - math.log(1000), atol=1e-5)  # MWS: log N too low
        True
    """
    lead, d = z.shape[:-1], z.shape[-1]
    codes = z.reshape(-1, d)  # (S, D), the draws of each row in turn
    rows = offset + torch.arange(lead[-1], device=z.device).repeat(len(codes) // lead[-1])  # (S,)
    log_w = _log_weights(rows, len(mean), dataset_size, estimator)  # (S, M)
    joint = torch.zeros_like(log_w)  # sum over d of log q(z_id | x_j), (S, M)
    marginals = torch.zeros(len(codes), device=z.device, dtype=z.dtype)  # sum_d log q(z_id), (S,)
    chunk = max(1, (1 << 22) // max(1, log_w.numel()))  # dimensions at a time: (S, M, chunk) values
    inv_std = torch.exp(-log_std)
    for dims in torch.arange(d, device=z.device).split(chunk):
        u = (codes[:, None, dims] - mean[None, :, dims]) * inv_std[None, :, dims]  # (S, M, chunk)
        per_dim = -0.5 * (u.square() + LOG_2PI) - log_std[None, :, dims]
        joint = joint + per_dim.sum(-1)
        marginals = marginals + torch.logsumexp(per_dim + log_w[:, :, None], 1).sum(-1)
    return torch.logsumexp(joint + log_w, 1).reshape(lead), marginals.reshape(lead)


def tcvae(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """beta-TCVAE (Chen et al. 2018): the ELBO's KL split in three, with the total correlation weighted by beta.

    E_p(x)[KL(q(z|x) || p(z))] = I_q(x; z) + KL(q(z) || prod_d q(z_d)) + sum_d KL(q(z_d) || p(z_d)):
    the index-code mutual information, the total correlation and the dimension-wise KL
    (their decomposition of the KL). Per code z_i ~ q(z|x_i), with log q(z) and log q(z_d) estimated from the
    batch (``minibatch_log_qz``)::

        mi = log q(z_i|x_i) - log q(z_i)      tc = log q(z_i) - sum_d log q(z_id)
        dwkl = sum_d log q(z_id) - log p(z_i)

    which sum to the one-sample estimate log q(z_i|x_i) - log p(z_i) of the KL. The loss is
    -recon + alpha * mi + beta * tc + gamma * dwkl, the three weights scaled by the KL
    warm-up's share. In a data-parallel job the batch is the global one (``step.peers``).

    Args:
        model: A model with one vector code, a diagonal Gaussian posterior and the N(0, I) prior.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; the noise ``generator``; ``x_in`` (denoising); its ``schedule``,
            whose ``kl_scale`` scales the three weights; ``peers``, which in a data-parallel job
            gathers the global batch's posteriors.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, draws of z per
            image; ``beta``, the weight of the total correlation, >= 0 (1: the ELBO when
            alpha = gamma = 1); ``mi_weight``, alpha, the weight of the index-code mutual
            information; ``dwkl_weight``, gamma, the weight of the dimension-wise KL;
            ``tc_estimator``, ``"mss"`` (minibatch stratified sampling) or ``"mws"`` (minibatch
            weighted); ``dataset_size``, N, the number of training images (training sets it
            from the data).

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon`` = E_q[log p(x|z)],
        ``kl`` = KL(q(z|x) || p(z)) in closed form, ``mi``, ``tc``, ``dwkl`` (mi + tc + dwkl is
        the one-sample estimate of kl) and ``elbo`` = recon - kl.

    Raises:
        ValueError: No dataset_size, or a posterior that is not a diagonal Gaussian.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Step, tcvae
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(8, 1, 28, 28) < 0.3).float()
        >>> terms = tcvae(model, Step(x), TrainConfig(beta=6.0, dataset_size=60000))
        >>> sorted(terms), terms["tc"].shape
        (['dwkl', 'elbo', 'kl', 'loss', 'mi', 'recon', 'tc'], torch.Size([8]))
        >>> torch.allclose(terms["loss"], -terms["recon"] + terms["mi"] + 6.0 * terms["tc"] + terms["dwkl"])
        True
    """
    if t.dataset_size is None:
        raise ValueError("the tcvae objective needs dataset_size, the number of training images (training sets it)")
    q = model.encode(step.encoder_input, step.c)
    _gaussian(q, "tcvae")
    z, log_qzx = q.rsample_with_log_prob(t.samples, generator=step.generator)  # (L, B, D), (L, B)
    recon = model.decode(z, step.c).log_prob(step.x).mean(0)
    (mean, log_std), offset = _global(step.peers, q.mean, q.log_std)  # (M, D) each
    log_qz, log_prod = minibatch_log_qz(z, mean, log_std, t.dataset_size, t.tc_estimator, offset)  # (L, B) each
    log_pz = model.prior().log_prob(z)
    mi, tc, dwkl = (log_qzx - log_qz).mean(0), (log_qz - log_prod).mean(0), (log_prod - log_pz).mean(0)
    kl_term = kl_to_prior(model, q, z, log_qzx)
    scale = step.schedule.kl_scale
    loss = -recon + scale * (t.mi_weight * mi + t.beta * tc + t.dwkl_weight * dwkl)
    return {"loss": loss, "recon": recon, "kl": kl_term, "mi": mi, "tc": tc, "dwkl": dwkl, "elbo": recon - kl_term}


def _discriminator(model, t: TrainConfig) -> dict[str, nn.Module]:
    """FactorVAE's discriminator: an MLP from a code (..., D) to the logit (..., 1) that it was drawn
    from q(z) rather than from prod_d q(z_d), with leaky ReLUs (slope 0.2) between the layers."""
    sizes = [model.latent_dim, *t.discriminator_hidden, 1]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
    return {"discriminator": nn.Sequential(*layers[:-1])}


def _side_noise(generator, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise (B, D) drawn apart from the reparameterisation noise: per example
    (its last sample slot) for an ``ExampleNoise``, the generator's next numbers otherwise."""
    if isinstance(generator, ExampleNoise):
        generator = ExampleNoise(generator.idx, generator.key, first_sample=ExampleNoise.MAX_SAMPLES - 1)
    return normal_noise(shape, like, generator)


def _permute_dims(z: torch.Tensor, generator, peers) -> torch.Tensor:
    """Draws from prod_d q(z_d): each dimension of the codes z (B, D) shuffled across the (global)
    batch on its own (Kim & Mnih 2018); this process's rows, (B, D)."""
    (codes, keys), offset = _global(peers, z, _side_noise(generator, tuple(z.shape), z))
    order = keys.argsort(0)  # (M, D): a random permutation of the batch's rows per dimension
    return codes.gather(0, order)[offset : offset + len(z)]


def factorvae(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """FactorVAE (Kim & Mnih 2018): the ELBO plus gamma times a discriminator's estimate of the total correlation.

    A discriminator D (``model.objective_nets["discriminator"]``, an MLP over codes) tells
    codes z ~ q(z) from codes whose dimensions were shuffled across the batch, draws from
    prod_d q(z_d). By the density-ratio trick, TC = KL(q(z) || prod_d q(z_d)) ~ E_q[log D(z) /
    (1 - D(z))], D's logit at z. Both are trained in one backward pass of one
    loss, each part reaching only its own parameters::

        loss = -recon + beta * kl + gamma * logit_D(z)       (the VAE: D's weights held fixed)
             + (softplus(-logit_D(z)) + softplus(logit_D(z_perm))) / 2   (D: on codes held fixed)

    so the optimiser's one step is the VAE's step and the discriminator's, as in the paper's algorithm;
    Adam's moments are per parameter, so this is two Adams with the same settings, and the
    discriminator's are in the optimiser's state that checkpoints keep. beta and gamma are
    scaled by the KL warm-up's share. In a data-parallel job the shuffle spans the global batch.

    Args:
        model: A model with one vector code, bound with ``vaelab.models.bind_objective``
            (which gives it the discriminator).
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; the ``generator`` of the reparameterisation noise and of the
            shuffle; ``x_in`` (denoising); its ``schedule`` (``kl_scale``); ``peers``, which in a
            data-parallel job gathers the global batch's codes for the shuffle.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, draws of z per image
            (the discriminator learns from the first); ``beta``, the weight of the KL to the
            prior (1 in the paper); ``kl``, ``"analytic"`` or ``"mc"``, for the KL to the prior;
            ``tc_weight``, gamma, the weight of the total-correlation estimate.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon``, ``kl``, ``tc``
        (the discriminator's estimate), ``discriminator`` (its cross-entropy, log 2 at chance)
        and ``elbo`` = recon - kl.

    Raises:
        ValueError: The model has no discriminator (it was not bound to this objective).

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import bind_objective, build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), (1, 28, 28))
        >>> _ = bind_objective(model, TrainConfig(objective="factorvae", discriminator_hidden=(32, 32)))
        >>> model.objective_nets["discriminator"]
        Sequential(
          (0): Linear(in_features=3, out_features=32, bias=True)
          (1): LeakyReLU(negative_slope=0.2)
          (2): Linear(in_features=32, out_features=32, bias=True)
          (3): LeakyReLU(negative_slope=0.2)
          (4): Linear(in_features=32, out_features=1, bias=True)
        )
        >>> x = (torch.rand(8, 1, 28, 28) < 0.3).float()
        >>> terms = model(x)  # runs factorvae(model, Step(x), TrainConfig(...)) with the bound settings
        >>> sorted(terms), terms["tc"].shape
        (['discriminator', 'elbo', 'kl', 'loss', 'recon', 'tc'], torch.Size([8]))
    """
    nets = getattr(model, "objective_nets", None)
    if nets is None or "discriminator" not in nets:
        raise ValueError("the factorvae objective needs its discriminator; bind the objective with "
                         "vaelab.models.bind_objective")
    disc = nets["discriminator"]
    _, z, _, recon, kl_term = _draw(model, step, t)
    held = {k: v.detach() for k, v in disc.named_parameters()}  # the VAE's term trains the encoder only
    tc = torch.func.functional_call(disc, held, (z,)).squeeze(-1).mean(0)  # (B,)
    real = z[0].detach()  # (B, D): the discriminator's term trains the discriminator only
    fake = _permute_dims(real, step.generator, step.peers)
    d_loss = 0.5 * (F.softplus(-disc(real)) + F.softplus(disc(fake))).squeeze(-1)
    scale = step.schedule.kl_scale
    loss = -recon + scale * (t.beta * kl_term + t.tc_weight * tc) + d_loss
    return {"loss": loss, "recon": recon, "kl": kl_term, "tc": tc, "discriminator": d_loss, "elbo": recon - kl_term}


def _needs_capacity(t: TrainConfig) -> None:
    if not t.capacity:
        raise ConfigError("the capacity objective needs --capacity NATS, the KL per image the code may carry by "
                          "the end of --capacity-steps (Burgess et al. 2018 use 25 on dSprites)")


def capacity(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """Annealed capacity (Burgess et al. 2018): hold the KL near a capacity C that rises during training.

    loss = -recon + gamma * |KL - C(step)|, with C rising linearly from 0 to C_max (the
    schedule's ``capacity_scale`` times ``capacity``; C_max in the test pass) and KL the batch's
    mean KL(q(z|x) || p(z)), as the reference implementations compute it (so the code as a
    whole, not each image, is held to C; in a data-parallel job the global batch's mean). Each
    image's loss carries the batch's penalty, so their mean is the loss. gamma is scaled by the
    KL warm-up's share, if one is set.

    Args:
        model: A model with a density.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; the noise ``generator``; ``x_in`` (denoising); its ``schedule``
            (``capacity_scale``, ``kl_scale``; ``Schedule()``: C = C_max); ``peers``, which in a
            data-parallel job gathers the global batch's KLs.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, draws of z per
            image; ``kl``, ``"analytic"`` or ``"mc"``, for the KL to the prior; ``capacity``,
            C_max in nats per image; ``capacity_weight``, gamma, the weight of |KL - C|.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon``, ``kl``,
        ``capacity`` (C at this step, the same for every image) and ``elbo`` = recon - kl.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Schedule, Step, capacity
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> step = Step(x, schedule=Schedule(capacity_scale=0.5))
        >>> terms = capacity(model, step, TrainConfig(capacity=25.0, capacity_weight=100.0))
        >>> terms["capacity"]
        tensor([12.5000, 12.5000, 12.5000, 12.5000])
        >>> penalty = 100.0 * (terms["kl"].mean() - 12.5).abs()
        >>> torch.allclose(terms["loss"], -terms["recon"] + penalty)
        True
    """
    terms = elbo(model, step, t)  # its recon and kl (its loss, which beta and the schedule weigh, is not used)
    s = step.schedule
    target = t.capacity * s.capacity_scale
    (kls,), _ = _global(step.peers, terms["kl"][:, None])
    penalty = t.capacity_weight * s.kl_scale * (kls.mean() - target).abs()
    return {"loss": -terms["recon"] + penalty, "recon": terms["recon"], "kl": terms["kl"],
            "capacity": torch.full_like(terms["kl"], target), "elbo": terms["elbo"]}


def dipvae(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """DIP-VAE (Kumar et al. 2018): the ELBO plus a penalty that moves a covariance of the code towards I.

    Type i takes the covariance of the posterior means, Cov_p(x)[mu(x)]; type ii that of the
    average posterior q(z), E_p(x)[Sigma(x)] + Cov_p(x)[mu(x)], both over the (global) batch.
    The penalty is lambda_od * sum_{i != j} Cov_ij^2 + lambda_d * sum_i (Cov_ii - 1)^2, added to
    each image's loss, so their mean carries it once; beta is scaled by the KL warm-up's share.

    Args:
        model: A model with one vector code, a diagonal Gaussian posterior and the N(0, I) prior.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; the noise ``generator``; ``x_in`` (denoising); its ``schedule``
            (``kl_scale``); ``peers``, which in a data-parallel job gathers the global batch's
            posteriors.
        t: The settings read (a ``vaelab.config.TrainConfig``): ``samples``, draws of z per
            image; ``beta``, the weight of the KL to the prior; ``kl``, ``"analytic"`` or
            ``"mc"``, for the KL to the prior; ``dip_type``, ``"i"`` or ``"ii"``;
            ``dip_offdiag``, lambda_od, the weight of the off-diagonal entries; ``dip_diag``,
            lambda_d, the weight of the diagonal's distance to 1 (None: 10 * lambda_od for type
            i, lambda_od for type ii, as disentanglement_lib's study).

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon``, ``kl``, ``dip``
        (the penalty, the same for every image) and ``elbo`` = recon - kl.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Step, dipvae
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=3, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(16, 1, 28, 28) < 0.3).float()
        >>> terms = dipvae(model, Step(x), TrainConfig(dip_type="i", dip_offdiag=5.0))
        >>> sorted(terms), bool((terms["dip"] >= 0).all())
        (['dip', 'elbo', 'kl', 'loss', 'recon'], True)
    """
    q, _, _, recon, kl_term = _draw(model, step, t)
    _gaussian(q, "dipvae")
    (mean, log_std), _ = _global(step.peers, q.mean, q.log_std)  # (M, D) each
    centred = mean - mean.mean(0)
    cov = centred.T @ centred / len(mean)  # Cov[mu(x)], (D, D)
    if t.dip_type == "ii":
        cov = cov + torch.diag(torch.exp(2 * log_std).mean(0))  # + E[Sigma(x)]
    diag = torch.diagonal(cov)
    offdiag = t.dip_offdiag
    lam_d = t.dip_diag if t.dip_diag is not None else (10 * offdiag if t.dip_type == "i" else offdiag)
    penalty = offdiag * (cov.square().sum() - diag.square().sum()) + lam_d * (diag - 1).square().sum()
    loss = -recon + t.beta * step.schedule.kl_scale * kl_term + penalty
    return {"loss": loss, "recon": recon, "kl": kl_term, "dip": penalty.expand(len(step.x)),
            "elbo": recon - kl_term}


def reconstruction(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """The plain autoencoder's objective: maximise log p(x | z = f(x)), with no prior and no KL.

    The code is the posterior's mean (for ``vaelab.models.AE``, the encoder's output).
    With a Bernoulli likelihood this is binary cross-entropy; with ``x_in`` it is the
    denoising criterion of Vincent et al. 2008.

    Args:
        model: Any model with ``encode`` and ``decode``.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C') for
            conditional models; ``x_in``, what the encoder sees instead of x (denoising). The
            code is not sampled: ``generator``, ``schedule`` and ``peers`` are ignored.
        t: The settings (a ``vaelab.config.TrainConfig``); none is read.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -recon and
        ``recon`` = log p(x | z = f(x)).

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Step, reconstruction
        >>> _ = torch.manual_seed(0)
        >>> ae = build_model(ModelConfig(model="ae", latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> terms = reconstruction(ae, Step(x), TrainConfig())
        >>> sorted(terms), terms["loss"].shape
        (['loss', 'recon'], torch.Size([4]))
    """
    recon = model.decode(model.encode(step.encoder_input, step.c).mean, step.c).log_prob(step.x)
    return {"loss": -recon, "recon": recon}


def pairwise_gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor, mean_j: torch.Tensor | None = None,
                         log_std_j: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q_i || q_j) between every pair of diagonal Gaussians, as a matrix.

    0.5 * [tr(S_j^-1 S_i) + (m_i - m_j)^T S_j^-1 (m_i - m_j) + log|S_j| - log|S_i| - D],
    with each term a (B, D) x (D, M) matrix product, so memory is O(BM), not O(BMD). The
    ``icvae`` penalty averages its rows.

    Args:
        mean: Means m_i of the first set, shape (B, D).
        log_std: Log standard deviations of the first set, shape (B, D).
        mean_j: Means m_j of a second set, shape (M, D); None: the first set again.
        log_std_j: Log standard deviations of the second set, shape (M, D).

    Returns:
        KL(q_i || q_j) in nats, shape (B, M) ((B, B) without a second set); the diagonal of
        the (B, B) matrix is 0 up to rounding.

    Examples:
        >>> from vaelab.objectives import pairwise_gaussian_kl
        >>> mean = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> pairwise_gaussian_kl(mean, torch.zeros(3, 2))  # unit variances: 0.5 * |m_i - m_j|^2
        tensor([[0.0000, 0.5000, 2.0000],
                [0.5000, 0.0000, 2.5000],
                [2.0000, 2.5000, 0.0000]])
        >>> pairwise_gaussian_kl(mean, torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(1, 2)).shape
        torch.Size([3, 1])
    """
    if mean_j is None:
        mean_j, log_std_j = mean, log_std
    var, inv = torch.exp(2 * log_std), torch.exp(-2 * log_std_j)
    trace = var @ inv.T
    # sum_d (m_id - m_jd)^2 / v_jd expanded; clamped: rounding can dip just below 0
    maha = (mean.square() @ inv.T - 2 * mean @ (mean_j * inv).T
            + (mean_j.square() * inv).sum(1)[None, :]).clamp_min(0)
    return 0.5 * (trace + maha + 2 * log_std_j.sum(1)[None, :] - 2 * log_std.sum(1)[:, None] - mean.shape[1])


def icvae(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """The invariant conditional VAE loss, which pushes information about c out of z (Moyer et al. 2018).

    Minimises (without the erroneous extra term of the paper's first version)::

        (1 + lam) * E_q[-log p(x|z,c)] + beta * KL(q(z|x) || p(z)) + lam * KL(q(z|x) || q(z))

    (beta scaled by the schedule's KL warm-up share during warm-up)
    where q(z) is the batch's mixture of posteriors. `marginal` chooses the estimate of
    KL(q(z|x_i) || q(z)) (``--marginal``): ``pairwise``, the bound from the convexity of KL,
    mean_{j != i} KL(q(z|x_i) || q(z|x_j)), the pairwise Gaussian KLs of
    ``pairwise_gaussian_kl`` (the corrected form keeps the log-determinant terms); or
    ``sampled``, log q(z|x_i) - log q(z) at the draws z ~ q(z|x_i) with q(z) the batch's
    mixture (``sampled_marginal_kl``; Alemi et al. 2017, Esmaeili et al. 2018). In a
    data-parallel job the batch is the global one (`peers`), so the penalty, and the
    optimisation, do not depend on the number of processes.

    With `hsic` > 0 the loss adds hsic times ``dependence`` of the batch's codes (posterior
    means) on its conditions, a kernel measure that is 0 when they are independent (Lopez et
    al. 2018 penalise HSIC in a VAE to the same end): it reaches what a probe on the codes
    reads, which the KL terms, blind to differences below the posterior's noise, do not.

    With `adversary` > 0 an adversary (``model.objective_nets["adversary"]``, an MLP as deep
    and wide as the 2-hidden-layer probe) learns to read c from the codes (the posterior
    means and the draws), and the encoder learns to defeat it (Edwards & Storkey 2016; Moyer
    et al. compare the two approaches, this combines them). `adversary_loss` says how:
    ``reverse``, the adversary's loss reaches the encoder with its gradient reversed and
    scaled by `adversary`, as in the ``censor`` objective; ``confusion``, the adversary
    learns on codes held fixed, and the loss adds `adversary` times ``confusion``, the
    divergence from chance (the batch's class shares) of its predictions with its weights
    held fixed (``_confusion``; Tzeng et al. 2015): the encoder is pulled to leave it
    guessing rather than pushed to make it wrong.

    Args:
        model: A conditional model with a diagonal Gaussian posterior (no flows), e.g.
            ``vaelab.models.ICVAE``.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C'); the noise
            ``generator``; ``x_in`` (denoising); its ``schedule``: the KL to the prior weighs
            beta * ``kl_scale``; ``peers``, which in a data-parallel job gathers the global
            batch's posterior parameters (None: this batch is the whole batch).
        t: The settings read (a ``vaelab.config.TrainConfig``):
            ``samples``, draws of z per image (for the reconstruction term, and the KL when estimated);
            ``beta``, the weight of the KL to the prior, >= 0;
            ``kl``, ``"analytic"`` or ``"mc"``, for the KL to the prior;
            ``lam``, the weight lambda of the invariance penalty, >= 0; the reconstruction is weighted 1 + lambda;
            ``marginal``, the estimate of KL(q(z|x) || q(z)): ``"pairwise"`` or ``"sampled"``;
            ``hsic``, the weight of the dependence of the codes on c over the batch (``dependence``), in
            nats per image per unit of dependence; 0: none.
            ``adversary``, the weight of the adversary, >= 0; 0: no adversary (the model must be bound
            with ``vaelab.models.bind_objective``, which gives it the adversary);
            ``adversary_loss``, ``"reverse"`` or ``"confusion"``.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon`` = E_q[log p(x|z,c)],
        ``kl`` = KL(q(z|x) || p(z)), ``kl_marginal`` (the estimate of KL(q(z|x) || q(z))),
        ``dependence`` (of the batch's codes on c, the same for every example; 0 without `hsic`),
        ``adversary`` (the adversary's loss: its cross-entropy in nats for a class; 0 without
        `adversary`), ``confusion`` (0 but with the confusion loss) and ``elbo`` = recon - kl.

    Raises:
        ValueError: The posterior is not a diagonal Gaussian, `marginal` or `adversary_loss`
            is unknown, or `adversary` > 0 and the model has no adversary.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Step, icvae
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="icvae", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> c = torch.eye(10)[[3, 1, 4, 1]]  # one-hot labels, (4, 10)
        >>> terms = icvae(model, Step(x, c), TrainConfig(lam=2.0))
        >>> sorted(terms), terms["kl_marginal"].shape
        (['adversary', 'confusion', 'dependence', 'elbo', 'kl', 'kl_marginal', 'loss', 'recon'], torch.Size([4]))
        >>> bool((terms["kl_marginal"] >= 0).all())
        True
    """
    x, c, peers, schedule = step.x, step.c, step.peers, step.schedule
    beta, lam, marginal, hsic = t.beta, t.lam, t.marginal, t.hsic
    adversary, adversary_loss = t.adversary, t.adversary_loss
    q, z, log_q, recon, kl_prior = _draw(model, step, t)
    if not hasattr(q, "log_std"):
        raise ValueError("the invariance penalty needs a diagonal Gaussian posterior (no flows)")
    (mean_j, offset), (log_std_j, _) = (peers(q.mean), peers(q.log_std)) if peers else ((q.mean, 0), (q.log_std, 0))
    if marginal == "sampled":
        kl_marginal = sampled_marginal_kl(z, log_q, mean_j, log_std_j)
    elif marginal == "pairwise":
        pair = pairwise_gaussian_kl(q.mean, q.log_std, mean_j, log_std_j)  # (B, whole batch)
        rows = torch.arange(len(x), device=pair.device)
        kl_marginal = (pair.sum(1) - pair[rows, offset + rows]) / max(1, len(mean_j) - 1)
    else:
        raise ValueError(f"unknown marginal estimate {marginal!r}; choose {', '.join(MARGINALS)}")
    loss = -(1 + lam) * recon + beta * (schedule or FULL).kl_scale * kl_prior + lam * kl_marginal
    dep = torch.zeros_like(loss)
    if hsic:
        (codes, _), (conds, _) = (peers(q.mean), peers(c)) if peers else ((q.mean, 0), (c, 0))
        dep = dependence(codes, conds).expand(len(x))  # one number for the whole batch
        loss = loss + hsic * dep
    adv, confusion = torch.zeros_like(loss), torch.zeros_like(loss)
    if adversary:
        nets = getattr(model, "objective_nets", None)
        if nets is None or "adversary" not in nets:
            raise ValueError("icvae with adversary > 0 needs its adversary; bind the objective with "
                             "vaelab.models.bind_objective")
        net, seen = nets["adversary"], torch.cat([q.mean[None], z])  # codes and draws, (1 + L, B, D)
        if adversary_loss == "reverse":
            adv = _adversary_loss(net(_ReverseGradient.apply(seen, adversary)), c).mean(0)
        elif adversary_loss == "confusion":
            adv = _adversary_loss(net(seen.detach()), c).mean(0)  # trains the adversary only
            held = {k: v.detach() for k, v in net.named_parameters()}  # the confusion trains the encoder only
            confusion = _confusion(torch.func.functional_call(net, held, (seen,)), c).mean(0)
        else:
            raise ValueError(f"unknown adversary loss {adversary_loss!r}; choose {', '.join(ADVERSARY_LOSSES)}")
        loss = loss + adv + adversary * confusion
    return {"loss": loss, "recon": recon, "kl": kl_prior, "kl_marginal": kl_marginal, "dependence": dep,
            "adversary": adv, "confusion": confusion, "elbo": recon - kl_prior}


def _icvae_adversary(model, t: TrainConfig) -> dict[str, nn.Module]:
    """The icvae objective's adversary when --adversary > 0: an MLP from a code (..., D) to the
    logits of c (..., C'), two hidden layers of 256 with ReLUs, as deep and wide as the probe."""
    if not t.adversary:
        return {}
    return {"adversary": mlp([model.latent_dim, 256, 256, model.cond_dim], "relu")}  # as the censored model's


def sampled_marginal_kl(z: torch.Tensor, log_q: torch.Tensor, mean_j: torch.Tensor,
                        log_std_j: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x_i) || q(z)) estimated at draws from q(z|x_i), with q(z) the batch's mixture of posteriors.

    log q(z|x_i) - log (1/M) sum_j q(z|x_j), averaged over the draws: the minibatch estimate
    of the aggregate posterior of Alemi et al. 2017 and Esmaeili et al. 2018 (the mixture
    includes q(z|x_i) itself). Unlike the pairwise bound it is not an upper bound, and it
    never exceeds log M: its gradient falls as the codes of the batch separate, and is
    largest on the information about x that is shared by many images of the batch.

    Args:
        z: Draws z ~ q(z|x_i), shape (L, B, D).
        log_q: Their log-densities log q(z|x_i), shape (L, B).
        mean_j: Means of the M posteriors of the mixture (the whole batch, this one's rows
            included), shape (M, D).
        log_std_j: Their log standard deviations, shape (M, D).

    Returns:
        The estimate in nats per example, shape (B,), between 0 - rounding and log M.

    Examples:
        >>> from vaelab.distributions import DiagonalGaussian
        >>> from vaelab.objectives import sampled_marginal_kl
        >>> _ = torch.manual_seed(0)
        >>> far = DiagonalGaussian(torch.tensor([[-50.0], [50.0]]), torch.zeros(2, 1))  # two separate codes
        >>> z, log_q = far.rsample_with_log_prob(10)
        >>> sampled_marginal_kl(z, log_q, far.mean, far.log_std)  # log 2: each is half the mixture
        tensor([0.6931, 0.6931])
        >>> same = DiagonalGaussian(torch.zeros(2, 1), torch.zeros(2, 1))  # identical posteriors
        >>> z, log_q = same.rsample_with_log_prob(10)
        >>> sampled_marginal_kl(z, log_q, same.mean, same.log_std).abs().max() < 1e-6
        tensor(True)
    """
    log_mix = DiagonalGaussian(mean_j, log_std_j).log_prob(z[..., None, :])  # (L, B, M)
    return (log_q - (torch.logsumexp(log_mix, -1) - math.log(len(mean_j)))).mean(0)


def _centred_gaussian_kernel(a: torch.Tensor) -> torch.Tensor:
    """The Gaussian kernel matrix of the rows of a (N, F), bandwidth the median distance between
    rows (Gretton et al. 2005), double-centred: H K H with H = I - 1/N. (N, N)."""
    d2 = torch.cdist(a, a).square()
    width = d2.detach()[~torch.eye(len(a), dtype=torch.bool, device=a.device)].median().clamp_min(1e-12)
    k = torch.exp(-d2 / width)
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _standardised(z: torch.Tensor) -> torch.Tensor:
    """Each column of z (..., N, D) at mean 0 and standard deviation 1 over the N rows, as a
    probe standardises the codes it reads: a dimension cannot hide the label by being small."""
    return (z - z.mean(-2, keepdim=True)) / z.std(-2, keepdim=True).clamp_min(1e-6)


def dependence(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """How much the codes z depend on the conditions c over a batch: normalised HSIC, in [0, 1].

    HSIC(z, c) / sqrt(HSIC(z, z) HSIC(c, c)) with Gaussian kernels whose bandwidths are the
    median distances (Gretton et al. 2005; normalised as centred kernel alignment, Cortes et
    al. 2012), each dimension of z standardised over the batch first, as a probe reads
    codes: 0 when z and c are independent (up to the batch's sampling noise), 1 when one
    is a function of the other that the kernels see whole. Any vector c works (one-hot
    labels, side information); the ``icvae`` objective penalises it with ``hsic``.

    Args:
        z: Codes, shape (N, D).
        c: Conditions, shape (N, C').

    Returns:
        The dependence, a scalar tensor, differentiable in z.

    Examples:
        >>> from vaelab.objectives import dependence
        >>> _ = torch.manual_seed(0)
        >>> c = torch.eye(4)[torch.arange(200) % 4]  # four classes
        >>> float(dependence(torch.randn(200, 3), c)) < 0.05  # codes that ignore the class
        True
        >>> float(dependence(c[:, :3] * 5 + 0.1 * torch.randn(200, 3), c)) > 0.8  # codes that are the class
        True
    """
    kz, kc = _centred_gaussian_kernel(_standardised(z)), _centred_gaussian_kernel(c)
    return (kz * kc).sum() / ((kz * kz).sum() * (kc * kc).sum()).sqrt().clamp_min(1e-12)


class _ReverseGradient(torch.autograd.Function):
    """The identity forward; the gradient times -scale backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def _adversary_loss(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The adversary's loss per draw and example, (L, B): cross-entropy of the class when every
    c is one-hot, else the squared error of the side-information vector (a unit-variance
    Gaussian's negative log-density up to a constant). logits (L, B, C'), c (B, C')."""
    one_hot = bool(((c == 0) | (c == 1)).all() and (c.sum(-1) == 1).all())
    if one_hot:
        target = c.argmax(-1).expand(logits.shape[:-1])  # (L, B)
        return torch.nn.functional.cross_entropy(logits.flatten(0, -2), target.flatten(),
                                                 reduction="none").view(target.shape)
    return 0.5 * (logits - c).square().sum(-1)


def _confusion(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """How far an adversary's predictions are from chance, per draw and example, (L, B): for
    one-hot c, KL(pi || softmax(logits)) with pi the batch's class shares; for a vector c, half
    the squared distance of the prediction from the batch's mean of c (the best constant
    guess). 0 when the adversary can only guess. logits (L, B, C'), c (B, C')."""
    prior = c.mean(0)  # (C',)
    if bool(((c == 0) | (c == 1)).all() and (c.sum(-1) == 1).all()):
        log_prior = prior.clamp_min(1e-12).log()
        return (prior * (log_prior - torch.log_softmax(logits, -1))).sum(-1)
    return 0.5 * (logits - prior).square().sum(-1)


def censor(model, step: Step, t: TrainConfig) -> dict[str, torch.Tensor]:
    """Adversarial censoring (Edwards & Storkey 2016): the ELBO, with an adversary that reads c from z
    and an encoder trained to defeat it.

    The model's ``adversary`` network predicts c from the code (the posterior mean) and from
    each draw z ~ q(z|x): the class by cross-entropy when c is one-hot, a side-information vector by squared error; its loss is
    the mean over the code and the draws. It is added to the loss once, but its gradient reaches z reversed and scaled by lambda
    (gradient reversal, Ganin & Lempitsky 2015): one optimiser step trains the adversary to
    minimise its loss and the encoder to maximise lambda times it, the minimax of
    ``-ELBO - lam * adversary_loss``. Its parameters live in the model, so checkpoints,
    resume and data-parallel training carry them.

    Args:
        model: A conditional model with an ``adversary`` network (latent_dim -> C'), e.g.
            ``vaelab.models.Censored``.
        step: The batch (a ``Step``): images x (B, C, H, W); conditions c (B, C'); the noise
            ``generator``; ``x_in`` (denoising); its ``schedule``: the KL to the prior weighs
            beta * ``kl_scale``. ``peers`` is ignored (every term is per example).
        t: The settings read (a ``vaelab.config.TrainConfig``):
            ``samples``, draws of z per image;
            ``beta``, the weight of the KL to the prior, >= 0;
            ``kl``, ``"analytic"`` or ``"mc"``, for the KL to the prior;
            ``lam``, how strongly the encoder works against the adversary, >= 0 (0: a CVAE with an
            adversary watching).

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` (-recon + beta * kl +
        adversary), ``recon``, ``kl``, ``adversary`` (the adversary's loss: cross-entropy in
        nats for a class) and ``elbo``.

    Examples:
        >>> from vaelab.config import ModelConfig, TrainConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import Step, censor
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="censored", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> c = torch.eye(10)[[3, 1, 4, 1]]  # one-hot labels, (4, 10)
        >>> terms = censor(model, Step(x, c), TrainConfig(lam=2.0))
        >>> sorted(terms), terms["adversary"].shape
        (['adversary', 'elbo', 'kl', 'loss', 'recon'], torch.Size([4]))
        >>> torch.allclose(terms["loss"], -terms["recon"] + terms["kl"] + terms["adversary"])
        True
    """
    c, schedule, beta, lam = step.c, step.schedule, t.beta, t.lam
    q, z, _, recon, kl_prior = _draw(model, step, t)
    # the adversary reads the codes (the posterior means, what a probe or a user reads) and the
    # draws (what the decoder reads): information below the noise of the draws is still in the means
    # (standardising them over the batch first, as the probe does, did worse in the invariance benchmark)
    seen = torch.cat([q.mean[None], z])  # (1 + L, B, D)
    adversary = _adversary_loss(model.adversary(_ReverseGradient.apply(seen, lam)), c).mean(0)
    loss = -recon + beta * (schedule or FULL).kl_scale * kl_prior + adversary
    return {"loss": loss, "recon": recon, "kl": kl_prior, "adversary": adversary, "elbo": recon - kl_prior}


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "elbo": ObjectiveSpec(elbo, ("loss", "recon", "kl", "elbo"), ("samples", "beta", "kl", "free_bits"),
                          schedule=("kl_scale", "free_bits_scale")),
    "iwae": ObjectiveSpec(iwae, ("loss", "iwae", "elbo"), ("samples", "beta"), _no_kl_weight),
    "icvae": ObjectiveSpec(icvae, ("loss", "recon", "kl", "kl_marginal", "dependence", "adversary", "confusion",
                                   "elbo"),
                           ("samples", "beta", "kl", "lam", "marginal", "hsic", "adversary", "adversary_loss"),
                           needs=("density", "conditional"), schedule=("kl_scale",), nets=_icvae_adversary),
    "censor": ObjectiveSpec(censor, ("loss", "recon", "kl", "adversary", "elbo"), ("samples", "beta", "kl", "lam"),
                            needs=("density", "conditional", "adversary"), schedule=("kl_scale",)),
    "reconstruction": ObjectiveSpec(reconstruction, ("loss", "recon"), needs=("autoencoder",)),
    "tcvae": ObjectiveSpec(tcvae, ("loss", "recon", "kl", "mi", "tc", "dwkl", "elbo"),
                           ("samples", "beta", "mi_weight", "dwkl_weight", "tc_estimator", "dataset_size"),
                           schedule=("kl_scale",), fits=_one_code("tcvae")),
    "factorvae": ObjectiveSpec(factorvae, ("loss", "recon", "kl", "tc", "discriminator", "elbo"),
                               ("samples", "beta", "kl", "tc_weight"), schedule=("kl_scale",),
                               fits=_one_code("factorvae", gaussian=False), nets=_discriminator),
    "capacity": ObjectiveSpec(capacity, ("loss", "recon", "kl", "capacity", "elbo"),
                              ("samples", "kl", "capacity", "capacity_weight"), _needs_capacity,
                              schedule=("kl_scale", "capacity_scale")),
    "dipvae": ObjectiveSpec(dipvae, ("loss", "recon", "kl", "dip", "elbo"),
                            ("samples", "beta", "kl", "dip_type", "dip_offdiag", "dip_diag"),
                            schedule=("kl_scale",), fits=_one_code("dipvae")),
}
"""The objective registry: name (``TrainConfig.objective``, ``--objective``) -> ``ObjectiveSpec``.
The ``objective`` decorator registers more from outside the package."""

