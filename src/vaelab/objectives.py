"""Training objectives. Each returns per-example terms, shape (B,), with ``loss``
the quantity minimised (averaged over the batch by the training loop) and the other
entries reported in the metrics. All terms are in nats per image; ``elbo`` is always the
evidence lower bound itself (beta = 1), whatever the loss weighs.

An objective is registered once, in ``OBJECTIVES`` (or from outside the package with
``@objective(name, terms=..., options=...)``), with the names of its terms and of the
TrainConfig fields it takes, and bound once to a run's settings (``bind``): the
resulting ``Objective`` is called with data only, the same way in training and in
the test pass.

`generator` is where reparameterisation noise comes from: a torch.Generator, None (the
global RNG), or a ``vaelab.noise.ExampleNoise`` tied to the examples, which
makes a data-parallel run draw what a single process draws.

`x_in`, when given, is what the encoder sees instead of x (a corrupted copy, shape of
x): the bound then scores the clean x under q(z|x_in), the denoising variational bound
of Im et al. 2017 (for the autoencoder, the denoising criterion of Vincent et al. 2008).

`peers`, in a data-parallel job, gives a batch-level term the whole global batch: a
function from this process's rows (B, ...) to (all rows of the global batch in order,
offset of this process's rows among them), with gradients flowing back to the process
that owns each row (``vaelab.runtime.Dist.batch_peers``). None: the rows given are
the whole batch. Only icvae's marginal term uses it; per-example objectives ignore it.

`schedule`, for objectives that declare they read it, is a ``Schedule``: what changes with
the training step (the KL warm-up's share of beta), a function of the step alone so that a
resumed run goes on exactly. None, as in the test pass: the full weights."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vaelab.config import MARGINALS, ConfigError, TrainConfig
from vaelab.distributions import DiagonalGaussian

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveSpec",
    "Schedule",
    "objective",
    "bind",
    "elbo",
    "iwae",
    "icvae",
    "censor",
    "reconstruction",
    "kl_to_prior",
    "pairwise_gaussian_kl",
    "sampled_marginal_kl",
    "dependence",
]


@dataclass(frozen=True)
class Schedule:
    """What an objective weighs at one training step: the settings that change with the step.

    Built by ``Schedule.at`` from the run's settings and the step alone (so a resumed run
    continues exactly); the model's ``forward`` hands it to objectives that declare the
    fields they read (``ObjectiveSpec.schedule``). Each field names the TrainConfig setting
    that drives it in its metadata, and ``bind`` refuses that setting for an objective that
    does not read the field.

    Attributes:
        kl_scale: The share of the KL weight beta the loss uses at this step, in [0, 1]:
            rises linearly from 0 to 1 over ``kl_warmup`` epochs (Bowman et al. 2016;
            Sønderby et al. 2016), then stays at 1.

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> from vaelab.objectives import Schedule
        >>> t = TrainConfig(kl_warmup=2)
        >>> [Schedule.at(t, step, 100).kl_scale for step in (0, 50, 100, 200, 300)]
        [0.0, 0.25, 0.5, 1.0, 1.0]
        >>> Schedule.at(TrainConfig(kl_warmup=0), 0, 100)
        Schedule(kl_scale=1.0)
    """

    kl_scale: float = field(default=1.0, metadata={"setting": "kl_warmup", "what": "no KL term to warm up"})

    @classmethod
    def at(cls, t: TrainConfig, step: int, steps_per_epoch: int) -> Schedule:
        """The schedule of optimiser step `step` (0-based) of a run with `steps_per_epoch` steps an epoch."""
        warm = min(1.0, step / (t.kl_warmup * steps_per_epoch)) if t.kl_warmup else 1.0
        return cls(kl_scale=warm)


FULL = Schedule()  # every weight at its end value: the test pass, and calls without a schedule


@dataclass(frozen=True)
class ObjectiveSpec:
    """One entry of the objective registry ``OBJECTIVES``: a function and what it needs and returns.

    Made by the ``objective`` decorator (or written into ``OBJECTIVES`` directly);
    ``bind`` and ``Objective`` read it.

    Attributes:
        fn: ``fn(model, x, c, *, <options>, generator, x_in, peers) -> dict`` of per-example
            terms, each of shape (B,).
        terms: Names of the returned terms, ``"loss"`` first; every process of a data-parallel
            job reduces these same keys.
        options: The ``vaelab.config.TrainConfig`` fields passed to ``fn`` as keywords.
        check: Raises ``ConfigError`` for training settings the objective cannot honour; None: none.
        needs: Model traits required to train with it (``density``, ``conditional``,
            ``autoencoder``; see ``traits`` in ``vaelab.models``).
        schedule: The ``Schedule`` fields ``fn`` reads (it is then called with ``schedule=``);
            the settings that drive the others are refused. Empty: ``fn`` takes no schedule.

    Examples:
        >>> from vaelab.objectives import OBJECTIVES
        >>> spec = OBJECTIVES["iwae"]
        >>> spec.terms, spec.options, spec.needs, spec.schedule
        (('loss', 'iwae', 'elbo'), ('samples', 'beta'), ('density',), ())
        >>> OBJECTIVES["icvae"].needs, OBJECTIVES["icvae"].schedule
        (('density', 'conditional'), ('kl_scale',))
    """

    fn: Callable[..., dict[str, torch.Tensor]]
    terms: tuple[str, ...]
    options: tuple[str, ...] = ()
    check: Callable[[TrainConfig], None] | None = None  # refuses settings it cannot honour
    # what a model must be to train with it (vaelab.models' traits: density, conditional, autoencoder)
    needs: tuple[str, ...] = ("density",)
    schedule: tuple[str, ...] = ()  # the Schedule fields fn reads, passed as schedule=


def objective(name: str, terms: tuple[str, ...], options: tuple[str, ...] = (),
              check: Callable[[TrainConfig], None] | None = None, needs: tuple[str, ...] = ("density",),
              schedule: tuple[str, ...] = ()):
    """Register a new training objective under a name (a decorator).

    The decorated function has the signature
    ``fn(model, x, c=None, *, <options>, generator=None, x_in=None, peers=None)`` and returns
    a dict of per-example terms, each of shape (B,), with the keys ``terms``. Once
    registered, the name works everywhere a built-in objective does: ``--objective name``,
    ``bind``, ``Objective``, and every model whose traits include ``needs``.

    Args:
        name: The objective's name in ``OBJECTIVES`` (a name already there is replaced).
        terms: Names of the returned terms; ``"loss"`` (minimised, averaged over the batch by
            the training loop) must come first; the others are reported as metrics.
        options: ``vaelab.config.TrainConfig`` fields passed to the function as keywords,
            e.g. ``("samples", "beta")``.
        check: Called with the run's TrainConfig; raises ``ConfigError`` for settings the
            objective cannot honour.
        needs: Model traits the objective requires (``density``, ``conditional``, ``autoencoder``).
        schedule: The ``Schedule`` fields the function reads, e.g. ``("kl_scale",)`` for one
            that weighs a KL term by ``beta * schedule.kl_scale``; it is then called with a
            ``schedule=`` keyword (None in the test pass: full weights). Settings that drive
            the other fields (``kl_warmup``) are refused for it.

    Returns:
        The decorator, which registers the function and returns it unchanged.

    Raises:
        ValueError: An option is not a TrainConfig field, a schedule field is not a
            ``Schedule`` field, or ``"loss"`` is not the first term.

    Examples:
        >>> from vaelab.objectives import OBJECTIVES, Objective, elbo, objective
        >>> @objective("half-kl", terms=("loss", "recon", "kl", "elbo"), options=("samples",))
        ... def half_kl(model, x, c=None, *, samples=1, generator=None, x_in=None, peers=None):
        ...     return elbo(model, x, c, samples=samples, beta=0.5, generator=generator, x_in=x_in)
        >>> Objective("half-kl", {"samples": 2}).terms
        ('loss', 'recon', 'kl', 'elbo')
        >>> del OBJECTIVES["half-kl"]  # the registry is global: tidy up after the example
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(TrainConfig)}
    unknown |= set(schedule) - {f.name for f in dataclasses.fields(Schedule)}
    if unknown or not terms or terms[0] != "loss":
        raise ValueError(f"objective {name}: {sorted(unknown)} are not TrainConfig fields (options) or "
                         f"Schedule fields (schedule), or 'loss' is not its first term")

    def register(fn):
        OBJECTIVES[name] = ObjectiveSpec(fn, tuple(terms), tuple(options), check, tuple(needs), tuple(schedule))
        return fn

    return register


@dataclass(frozen=True)
class Objective:
    """A registered objective bound to its options, called with data only.

    ``Objective(name, options)(model, x, c)`` runs the registered function with those
    options and returns its per-example terms, each of shape (B,). Options left out take the
    function's defaults. A model's ``forward`` runs its ``objective`` attribute, an instance
    of this class; ``bind`` builds one from a run's training settings.

    Args:
        name: A name registered in ``OBJECTIVES``: elbo, iwae, icvae, reconstruction, or one
            added with ``objective``.
        options: Keyword options the objective takes, e.g. ``{"samples": 5}``.

    Raises:
        ConfigError: The name is not registered, or an option is not one the objective takes.

    Examples:
        >>> from vaelab.objectives import Objective
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> obj = Objective("iwae", {"samples": 5})
        >>> obj.terms
        ('loss', 'iwae', 'elbo')
        >>> terms = obj(model, x)
        >>> terms["loss"].shape
        torch.Size([4])
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

    def replace(self, **options: Any) -> Objective:
        """A copy with some options changed or added: ``obj.replace(samples=50)``."""
        return Objective(self.name, {**self.options, **options})

    def __call__(self, model, x: torch.Tensor, c: torch.Tensor | None = None, *, schedule: Schedule | None = None,
                 generator=None, x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
        """Per-example terms, each (B,), of the objective on images x (B, C, H, W) with
        conditions c (B, C') for conditional models; `schedule`, `generator`, `x_in`
        (B, C, H, W) and `peers` as in the module docstring."""
        spec = OBJECTIVES[self.name]
        extra = {"schedule": schedule} if spec.schedule else {}  # objectives without one take no keyword
        return spec.fn(model, x, c, generator=generator, x_in=x_in, peers=peers, **extra, **self.options)


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
        {'samples': 1, 'beta': 4.0, 'kl': 'analytic', 'free_bits': 0.0}
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


def elbo(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 1, beta: float = 1.0,
         kl: str = "analytic", free_bits: float = 0.0, schedule: Schedule | None = None, generator=None,
         x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """The evidence lower bound, ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 10).

    The reconstruction term averages `samples` reparameterised draws z ~ q(z|x). The KL to
    N(0, I) is analytic (their appendix B) when ``kl="analytic"`` and q is a diagonal
    Gaussian; otherwise it is the Monte-Carlo estimate mean(log q(z) - log p(z)) over the
    same draws, which is what posteriors with flows need: the bound is then
    log p(x, z_K) - log q_0(z_0) + sum log|det| (Rezende & Mohamed 2015, eq. 15). `beta`
    weights the KL in the loss (Higgins et al. 2017), scaled by the schedule's warm-up share; the
    reported ``elbo`` keeps beta = 1. With `free_bits` > 0 a KL below that many nats counts as
    that many in the loss, so it is not pushed lower (Kingma et al. 2016, per image here); the
    reported ``kl`` and ``elbo`` are unchanged.

    A top-down hierarchy (a model with ``elbo_levels``, ``vaelab.ladder.Ladder``) draws
    each level's posterior given the levels drawn above it in one pass; its KL is the sum of
    the levels' (Sønderby et al. 2016, eq. 14), each reported as ``kl_1`` (next to the data)
    ... ``kl_L``, and free bits apply to each level.

    Args:
        model: A model with a density (``encode``, ``decode``, ``prior``).
        x: Images (B, C, H, W), scored by the likelihood.
        c: Conditions (B, C') for conditional models; None otherwise.
        samples: Draws K of z per image.
        beta: Weight of the KL term in the loss, >= 0.
        kl: ``"analytic"`` (closed form where possible) or ``"mc"`` (Monte Carlo).
        free_bits: Nats per image (per level of a hierarchy) below which the KL stops counting; 0: off.
        schedule: This training step's ``Schedule``; the KL weight is beta * ``kl_scale``.
            None: the full beta.
        generator: Source of the reparameterisation noise: a ``torch.Generator``, None (the
            global RNG) or a ``vaelab.noise.ExampleNoise``.
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        peers: Data-parallel batch gathering (see the module docstring); ignored here.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -(recon - w * kl) with
        w = beta * kl_scale,
        ``recon`` = E_q[log p(x|z)], ``kl`` = KL(q(z|x) || p(z)), ``elbo`` = recon - kl, and
        for a top-down hierarchy ``kl_1`` ... ``kl_L``.

    Examples:
        >>> from vaelab.objectives import Schedule, elbo
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> terms = elbo(model, x, samples=2, beta=4.0)
        >>> sorted(terms), terms["elbo"].shape
        (['elbo', 'kl', 'loss', 'recon'], torch.Size([4]))
        >>> torch.allclose(terms["loss"], -(terms["recon"] - 4.0 * terms["kl"]))
        True
        >>> bool((terms["elbo"] < 0).all())  # a lower bound on log p(x) <= 0 for binary x
        True
        >>> _ = torch.manual_seed(0)
        >>> warm = elbo(model, x, samples=2, beta=4.0, schedule=Schedule(kl_scale=0.25))  # same draws
        >>> torch.allclose(warm["loss"], -(warm["recon"] - 1.0 * warm["kl"]))
        True
    """
    if hasattr(model, "elbo_levels"):  # q(z_l | x, z_>l) needs the levels drawn above: one top-down pass
        recon, levels = model.elbo_levels(x, samples, generator=generator, x_in=x_in, kl=kl)  # (B,), (L, B)
        kl_term = levels.sum(0)
        counted = levels.clamp_min(free_bits).sum(0) if free_bits else kl_term
        weight = beta * (schedule or FULL).kl_scale
        return {"loss": -(recon - weight * counted), "recon": recon, "kl": kl_term, "elbo": recon - kl_term,
                **{f"kl_{i + 1}": v for i, v in enumerate(levels)}}
    q = model.encode(x if x_in is None else x_in, c)
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (L, B, D), (L, B)
    recon = model.decode(z, c).log_prob(x).mean(0)
    kl_term = kl_to_prior(model, q, z, log_q, kl)
    weight = beta * (schedule or FULL).kl_scale
    counted = kl_term.clamp_min(free_bits) if free_bits else kl_term
    return {"loss": -(recon - weight * counted), "recon": recon, "kl": kl_term, "elbo": recon - kl_term}


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


def iwae(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 5, beta: float = 1.0,
         generator=None, x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """The importance-weighted bound log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2016, eq. 8).

    Built from the model's per-sample log-weights (no analytic KL inside), with the weights
    kept in the graph: the gradient is the self-normalised importance-weighted average of
    the per-sample gradients (their eq. 14). The bound tightens as k grows; k = 1 is the
    ELBO. There is no KL to weigh, so `beta` must be 1.

    Args:
        model: A model with a density (``log_weights``).
        x: Images (B, C, H, W).
        c: Conditions (B, C') for conditional models; None otherwise.
        samples: k, the importance samples per image.
        beta: Must be 1; present so the option reads like the ELBO's.
        generator: Source of the reparameterisation noise: a ``torch.Generator``, None (the
            global RNG) or a ``vaelab.noise.ExampleNoise``.
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        peers: Data-parallel batch gathering (see the module docstring); ignored here.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -iwae, ``iwae`` the bound,
        ``elbo`` the mean of the k log-weights (an ELBO estimate from the same draws).

    Raises:
        ValueError: beta is not 1.

    Examples:
        >>> from vaelab.objectives import iwae
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()  # 4 binary images
        >>> terms = iwae(model, x, samples=10)
        >>> sorted(terms), terms["iwae"].shape
        (['elbo', 'iwae', 'loss'], torch.Size([4]))
        >>> bool((terms["iwae"] >= terms["elbo"]).all())  # never below the ELBO of its draws
        True
    """
    if beta != 1.0:
        raise ValueError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    q = None if x_in is None else model.encode(x_in, c)
    lw = model.log_weights(x, samples, q=q, c=c, generator=generator)  # (k, B)
    bound = torch.logsumexp(lw, 0) - math.log(samples)
    return {"loss": -bound, "iwae": bound, "elbo": lw.mean(0)}


def reconstruction(model, x: torch.Tensor, c: torch.Tensor | None = None, *, generator=None,
                   x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
    """The plain autoencoder's objective: maximise log p(x | z = f(x)), with no prior and no KL.

    The code is the posterior's mean (for ``vaelab.models.AE``, the encoder's output).
    With a Bernoulli likelihood this is binary cross-entropy; with ``x_in`` it is the
    denoising criterion of Vincent et al. 2008.

    Args:
        model: Any model with ``encode`` and ``decode``.
        x: Images (B, C, H, W).
        c: Conditions (B, C') for conditional models; None otherwise.
        generator: Unused: the code is not sampled.
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        peers: Data-parallel batch gathering (see the module docstring); ignored here.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` = -recon and
        ``recon`` = log p(x | z = f(x)).

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import reconstruction
        >>> _ = torch.manual_seed(0)
        >>> ae = build_model(ModelConfig(model="ae", latent_dim=2, hidden=(16,)), (1, 28, 28))
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> terms = reconstruction(ae, x)
        >>> sorted(terms), terms["loss"].shape
        (['loss', 'recon'], torch.Size([4]))
    """
    recon = model.decode(model.encode(x if x_in is None else x_in, c).mean, c).log_prob(x)
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


def icvae(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 1, beta: float = 1.0,
          kl: str = "analytic", lam: float = 1.0, marginal: str = "pairwise", hsic: float = 0.0,
          schedule: Schedule | None = None, generator=None, x_in: torch.Tensor | None = None,
          peers=None) -> dict[str, torch.Tensor]:
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

    Args:
        model: A conditional model with a diagonal Gaussian posterior (no flows), e.g.
            ``vaelab.models.ICVAE``.
        x: Images (B, C, H, W).
        c: Conditions (B, C').
        samples: Draws of z per image (for the reconstruction term, and the KL when estimated).
        beta: Weight of the KL to the prior, >= 0.
        kl: ``"analytic"`` or ``"mc"``, for the KL to the prior.
        lam: Weight lambda of the invariance penalty, >= 0; the reconstruction is weighted 1 + lambda.
        marginal: The estimate of KL(q(z|x) || q(z)): ``"pairwise"`` or ``"sampled"``.
        hsic: Weight of the dependence of the codes on c over the batch (``dependence``), in
            nats per image per unit of dependence; 0: none.
        schedule: This training step's ``Schedule``: the KL to the prior weighs
            beta * ``kl_scale``; None: the full beta.
        generator: Source of the reparameterisation noise (see ``elbo``).
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        peers: In a data-parallel job, gathers the global batch's posterior parameters; None:
            this batch is the whole batch.

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss``, ``recon`` = E_q[log p(x|z,c)],
        ``kl`` = KL(q(z|x) || p(z)), ``kl_marginal`` (the estimate of KL(q(z|x) || q(z))),
        ``dependence`` (of the batch's codes on c, the same for every example; 0 without `hsic`)
        and ``elbo`` = recon - kl.

    Raises:
        ValueError: The posterior is not a diagonal Gaussian, or `marginal` is unknown.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import icvae
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="icvae", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> c = torch.eye(10)[[3, 1, 4, 1]]  # one-hot labels, (4, 10)
        >>> terms = icvae(model, x, c, lam=2.0)
        >>> sorted(terms), terms["kl_marginal"].shape
        (['dependence', 'elbo', 'kl', 'kl_marginal', 'loss', 'recon'], torch.Size([4]))
        >>> bool((terms["kl_marginal"] >= 0).all())
        True
    """
    q = model.encode(x if x_in is None else x_in, c)
    if not hasattr(q, "log_std"):
        raise ValueError("the invariance penalty needs a diagonal Gaussian posterior (no flows)")
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)
    recon = model.decode(z, c).log_prob(x).mean(0)
    kl_prior = kl_to_prior(model, q, z, log_q, kl)
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
    return {"loss": loss, "recon": recon, "kl": kl_prior, "kl_marginal": kl_marginal, "dependence": dep,
            "elbo": recon - kl_prior}


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


def censor(model, x: torch.Tensor, c: torch.Tensor | None = None, *, samples: int = 1, beta: float = 1.0,
           kl: str = "analytic", lam: float = 1.0, schedule: Schedule | None = None, generator=None,
           x_in: torch.Tensor | None = None, peers=None) -> dict[str, torch.Tensor]:
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
        x: Images (B, C, H, W).
        c: Conditions (B, C').
        samples: Draws of z per image.
        beta: Weight of the KL to the prior, >= 0.
        kl: ``"analytic"`` or ``"mc"``, for the KL to the prior.
        lam: How strongly the encoder works against the adversary, >= 0 (0: a CVAE with an
            adversary watching).
        schedule: This training step's ``Schedule``: the KL to the prior weighs
            beta * ``kl_scale``; None: the full beta.
        generator: Source of the reparameterisation noise (see ``elbo``).
        x_in: What the encoder sees instead of x, same shape as x (denoising); None: x.
        peers: Data-parallel batch gathering; ignored (every term is per example).

    Returns:
        dict: per-example terms in nats, each of shape (B,), ``loss`` (-recon + beta * kl +
        adversary), ``recon``, ``kl``, ``adversary`` (the adversary's loss: cross-entropy in
        nats for a class) and ``elbo``.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> from vaelab.models import build_model
        >>> from vaelab.objectives import censor
        >>> _ = torch.manual_seed(0)
        >>> model = build_model(ModelConfig(model="censored", latent_dim=2, hidden=(16,)), (1, 28, 28), cond_dim=10)
        >>> x = (torch.rand(4, 1, 28, 28) < 0.3).float()
        >>> c = torch.eye(10)[[3, 1, 4, 1]]  # one-hot labels, (4, 10)
        >>> terms = censor(model, x, c, lam=2.0)
        >>> sorted(terms), terms["adversary"].shape
        (['adversary', 'elbo', 'kl', 'loss', 'recon'], torch.Size([4]))
        >>> torch.allclose(terms["loss"], -terms["recon"] + terms["kl"] + terms["adversary"])
        True
    """
    q = model.encode(x if x_in is None else x_in, c)
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (L, B, D), (L, B)
    recon = model.decode(z, c).log_prob(x).mean(0)
    kl_prior = kl_to_prior(model, q, z, log_q, kl)
    # the adversary reads the codes (the posterior means, what a probe or a user reads) and the
    # draws (what the decoder reads): information below the noise of the draws is still in the means
    # (standardising them over the batch first, as the probe does, did worse in the invariance benchmark)
    seen = torch.cat([q.mean[None], z])  # (1 + L, B, D)
    adversary = _adversary_loss(model.adversary(_ReverseGradient.apply(seen, lam)), c).mean(0)
    loss = -recon + beta * (schedule or FULL).kl_scale * kl_prior + adversary
    return {"loss": loss, "recon": recon, "kl": kl_prior, "adversary": adversary, "elbo": recon - kl_prior}


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "elbo": ObjectiveSpec(elbo, ("loss", "recon", "kl", "elbo"), ("samples", "beta", "kl", "free_bits"),
                          schedule=("kl_scale",)),
    "iwae": ObjectiveSpec(iwae, ("loss", "iwae", "elbo"), ("samples", "beta"), _no_kl_weight),
    "icvae": ObjectiveSpec(icvae, ("loss", "recon", "kl", "kl_marginal", "dependence", "elbo"),
                           ("samples", "beta", "kl", "lam", "marginal", "hsic"), needs=("density", "conditional"),
                           schedule=("kl_scale",)),
    "censor": ObjectiveSpec(censor, ("loss", "recon", "kl", "adversary", "elbo"), ("samples", "beta", "kl", "lam"),
                            needs=("density", "conditional", "adversary"), schedule=("kl_scale",)),
    "reconstruction": ObjectiveSpec(reconstruction, ("loss", "recon"), needs=("autoencoder",)),
}
"""The objective registry: name (``TrainConfig.objective``, ``--objective``) -> ``ObjectiveSpec``.
The ``objective`` decorator registers more from outside the package."""
