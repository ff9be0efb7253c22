"""The one config tree. Every default of vaelab lives here.

A run is fully described by a :class:`Config`; ``config.json`` in a run folder is
``Config.to_dict()`` and ``Config.from_dict`` rebuilds it, rejecting unknown keys so
that a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    data_dir: str | None = None
    # dynamic: fresh Bernoulli(pixel/255) sample each time an image is used;
    # fixed: one sample drawn with `binarization_seed`; none: grey levels in [0, 1].
    binarization: str = "dynamic"
    binarization_seed: int = 0
    download: bool = True
    # cvae/icvae: an .npz with float arrays `train` and `test` of side information, used
    # as the condition c instead of the one-hot class label
    conditions: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    model: str = "vae"
    net: str = "mlp"
    # Encoder hidden sizes. The decoder mirrors them unless `decoder_hidden` is given
    # (listed from z outwards). The default pairs a 512-512 encoder with a 256-256
    # decoder: k=1000 importance sampling decodes every test image 1000 times, so the
    # decoder sets evaluation cost, while the encoder runs once per image. See README
    # "Choosing the default recipe" for the measurements behind it.
    hidden: tuple[int, ...] = (512, 512)
    decoder_hidden: tuple[int, ...] | None = (256, 256)
    latent_dim: int = 50
    # ELU beat ReLU by ~2.4 nats of test NLL in a 3-minute MNIST budget (README)
    activation: str = "elu"
    likelihood: str = "bernoulli"
    # gaussian/logistic only: fixed | global | pixel | decoder (see distributions.py)
    likelihood_scale: str = "pixel"
    # the scale of `fixed`, and the initial scale of the learned ones (data in [0, 1])
    likelihood_std: float = 0.1
    # normalizing flows in the posterior (VAE only): how many, and which kind
    flows: int = 0
    flow_type: str = "planar"
    # cvae/icvae: also feed the condition to the encoder (the decoder always gets it)
    condition_encoder: bool = False


@dataclass(frozen=True)
class TrainConfig:
    # 25 epochs of MNIST take ~2.7 minutes on 2 EPYC cores (README "Numbers")
    epochs: int = 25
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adam"
    # exp: lr * decay**(epochs done), smooth per step; its value at a step does not
    # depend on the total number of epochs, so `--resume --epochs N` continues the same
    # curve an uninterrupted N-epoch run follows. cosine anneals to 0 at `epochs`.
    schedule: str = "exp"
    lr_decay: float = 0.92
    warmup_steps: int = 100
    # auto: the model's own (elbo for VAEs, reconstruction for the AE); or elbo | iwae
    objective: str = "auto"
    # analytic KL for diagonal Gaussian posteriors, or a Monte-Carlo estimate (mc);
    # posteriors with flows always use mc
    kl: str = "analytic"
    beta: float = 1.0
    # icvae: weight of KL(q(z|x) || q(z)) (Moyer et al. 2018); the reconstruction is
    # weighted 1 + lam
    lam: float = 1.0
    # clip the global gradient norm to this value (0: off); a guard for flows
    clip_grad: float = 0.0
    # L samples of z per image for the ELBO, k for the IWAE bound
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    # Grids of reconstructions / prior samples are refreshed every this many epochs.
    image_every: int = 1


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {sorted(unknown)}; expected {sorted(sections)}"
            )
        parts = {}
        for name, sub_cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            parts[name] = _build(sub_cls, d.get(name, {}), name)
        cfg = cls(**parts)
        validate(cfg)
        return cfg

    def replace(self, **sections: dict[str, Any]) -> Config:
        """Return a copy with some fields changed: ``cfg.replace(train={"epochs": 3})``."""
        d = self.to_dict()
        for name, values in sections.items():
            if name not in d:
                raise ConfigError(f"unknown config section {name!r}")
            d[name].update(values)
        return Config.from_dict(d)


def _build(sub_cls: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(sub_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(
            f"unknown field(s) {sorted(unknown)} in config section {section!r}; "
            f"known fields: {sorted(known)}"
        )
    kwargs = {}
    for name, value in values.items():
        default = getattr(sub_cls(), name)
        if name == "decoder_hidden" and value is None:
            pass  # None: mirror the encoder
        elif isinstance(default, tuple) or name == "decoder_hidden":
            value = _as_int_tuple(value, f"{section}.{name}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{section}.{name} must be true or false, got {value!r}")
        elif isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{section}.{name} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{section}.{name} must be a number, got {value!r}")
            value = float(value)
        kwargs[name] = value
    return sub_cls(**kwargs)


def _as_int_tuple(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(
                f"{name} must be comma-separated integers such as 512,512, got {value!r}"
            ) from None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"{name} must be a list of integers such as [512, 512], got {value!r}")
    return tuple(value)


def validate(cfg: Config) -> None:
    """Check values that have a valid range; names come from the registries."""
    # Imported here: the registries import this module.
    from vaelab.data import DATASETS
    from vaelab.distributions import LIKELIHOODS, SCALES
    from vaelab.flows import FLOWS
    from vaelab.models import MODELS
    from vaelab.nets import ACTIVATIONS, NETS
    from vaelab.objectives import OBJECTIVES
    from vaelab.train import OPTIMIZERS, SCHEDULES

    def choice(value: str, options: Any, name: str) -> None:
        if value not in options:
            raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(options)}")

    d, m, t = cfg.data, cfg.model, cfg.train
    choice(d.dataset, DATASETS, "dataset")
    choice(d.binarization, ("dynamic", "fixed", "none"), "binarization")
    choice(m.model, MODELS, "model")
    choice(m.net, NETS, "net")
    choice(m.activation, ACTIVATIONS, "activation")
    choice(m.likelihood, LIKELIHOODS, "likelihood")
    choice(m.likelihood_scale, SCALES, "likelihood scale")
    if not m.likelihood_std > 0:
        raise ConfigError(f"model.likelihood_std must be positive, got {m.likelihood_std}")
    choice(t.optimizer, OPTIMIZERS, "optimizer")
    choice(t.objective, ("auto", *OBJECTIVES), "objective")
    choice(t.kl, ("analytic", "mc"), "kl")
    choice(m.flow_type, FLOWS, "flow type")
    if m.flows < 0:
        raise ConfigError(f"model.flows must be >= 0, got {m.flows}")
    if m.flows and m.model == "ae":
        raise ConfigError("flows shape a posterior; the plain autoencoder has none (use --model vae)")
    if m.flows and m.model == "icvae":
        raise ConfigError("the ICVAE penalty needs a diagonal Gaussian posterior; drop --flows or use --model cvae")
    if t.objective == "iwae" and t.beta != 1.0:
        raise ConfigError("the IWAE bound has no KL weight; use --objective elbo with --beta")
    if m.model == "ae" and t.objective not in ("auto", "reconstruction"):
        raise ConfigError(f"the plain autoencoder has no {t.objective} bound; it trains by reconstruction")
    choice(t.schedule, SCHEDULES, "schedule")
    choice(t.device, ("auto", "cpu", "cuda"), "device")
    for name, sizes in (("hidden", m.hidden), ("decoder_hidden", m.decoder_hidden or ())):
        if any(h <= 0 for h in sizes):
            raise ConfigError(f"{name} sizes must be positive, got {','.join(map(str, sizes))}")
    positive = {
        "model.latent_dim": m.latent_dim,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.samples": t.samples,
        "train.image_every": t.image_every,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value}")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if not 0 < t.lr_decay <= 1:
        raise ConfigError(f"train.lr_decay must be in (0, 1], got {t.lr_decay}")
    if t.beta < 0:
        raise ConfigError(f"train.beta must be >= 0, got {t.beta}")
    if t.clip_grad < 0:
        raise ConfigError(f"train.clip_grad must be >= 0, got {t.clip_grad}")
    if t.lam < 0:
        raise ConfigError(f"train.lam must be >= 0, got {t.lam}")
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    LIKELIHOODS[m.likelihood].check_binarization(d.binarization)


def load(path: str | Path) -> Config:
    """Read a config from a ``.json`` or ``.toml`` file (sections data/model/train)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            raw = json.loads(text)
    except ModuleNotFoundError:
        raise ConfigError("TOML configs need Python >= 3.11; use a .json config") from None
    except ValueError as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    return Config.from_dict(raw)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
