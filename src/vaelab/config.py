"""The one config tree. Every default of vaelab lives here.

A run is fully described by a :class:`Config`; ``config.json`` in a run folder is
``Config.to_dict()`` and ``Config.from_dict`` rebuilds it, rejecting unknown keys so
that a typo never silently falls back to a default.

This module imports nothing from vaelab: it checks types and ranges only. Names
(models, nets, likelihoods, datasets...) are checked where they are looked up, with
:func:`choose`, so every registry stays next to what it registers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


AUTO = "auto"  # a name field left for `resolve` to choose from the data (numbers use None)


NOISE_KINDS = ("uniform", "salt-pepper", "gaussian")  # the corruptions of vaelab.corruption.add_noise


def choose(registry: Any, name: str, what: str) -> Any:
    """``registry[name]``, or a ConfigError listing the choices (registries call this)."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name] if isinstance(registry, dict) else name


@dataclass(frozen=True)
class DataConfig:
    # a named dataset (mnist, fashion-mnist, mnist-sample, cifar10) or the path of an
    # image folder or a .npy/.npz array file (stored absolute once a run starts)
    dataset: str = "mnist"
    data_dir: str | None = None
    # folders and arrays: resize the shorter side to fit (H, W), then centre-crop; None
    # keeps the images' own size (they must then all have one size)
    image_size: tuple[int, ...] | None = None
    # 1 (grey) or 3 (RGB); 0: grey when every image is grey, else RGB
    channels: int = 0
    # transparent pixels are composited on this colour: white, black, grey or #rrggbb
    background: str = "white"
    # folders without train/ and test/ subfolders: the share of images held out for test,
    # chosen by a stable hash of each file's relative path
    test_fraction: float = 0.1
    # skip (and list in the run folder) images that cannot be decoded, instead of stopping
    skip_bad_images: bool = False
    # a training split whose uint8 images fit in this many MiB is held in memory on the
    # training device; a larger one is streamed from the memory-mapped cache. 0: auto
    # (a quarter of the machine's memory on CPU, half the free GPU memory on CUDA)
    memory_budget_mb: int = 0
    # set by training: the data's identity (file names, sizes, times or content hash)
    fingerprint: str | None = None
    # dynamic: fresh Bernoulli(pixel/255) sample each time an image is used;
    # fixed: one sample drawn with `binarization_seed`; none: grey levels in [0, 1];
    # auto: dynamic for the binary benchmarks (MNIST family) and images whose pixels are
    # all 0 or 255, none (8-bit pixels) for every other dataset (see `resolve`)
    binarization: str = AUTO
    binarization_seed: int = 0
    download: bool = True
    # cvae/icvae: an .npz with float arrays `train` and `test` of side information, used
    # as the condition c instead of the one-hot class label
    conditions: str | None = None


@dataclass(frozen=True)
class ModelConfig:
    model: str = "vae"
    # mlp | conv | conv-transpose | resnet; auto: the recipe's (see `resolve`)
    net: str = AUTO
    # Encoder hidden sizes (MLP) or channel widths per 2x downsampling level (conv nets).
    # The decoder mirrors them unless `decoder_hidden` is given (listed from z outwards).
    # None: the recipe's. The binary recipe pairs a 512-512 encoder with a 256-256
    # decoder: k=1000 importance sampling decodes every test image 1000 times, so the
    # decoder sets evaluation cost, while the encoder runs once per image (docs/benchmarks.md).
    hidden: tuple[int, ...] | None = None
    decoder_hidden: tuple[int, ...] | None = None
    latent_dim: int | None = None
    # ELU beat ReLU by ~2.4 nats of test NLL in a 3-minute MNIST budget (docs/benchmarks.md)
    activation: str = "elu"
    # bernoulli | gaussian | logistic | logistic-mixture; auto: bernoulli for binarised
    # data, the recipe's 8-bit likelihood otherwise
    likelihood: str = AUTO
    # gaussian/logistic only: fixed | global | pixel | decoder (see distributions.py); auto:
    # pixel in the binary recipe, decoder (a scale per pixel and image) in the 8-bit one
    likelihood_scale: str = AUTO
    # the scale of `fixed`, and the initial scale of the learned ones (data in [0, 1])
    likelihood_std: float = 0.1
    # normalizing flows in the posterior (VAE only): how many, and which kind
    flows: int = 0
    # p(z): normal = N(0, I); mog = a learned mixture of Gaussians; vamp = the VampPrior
    # (Tomczak & Welling 2018), a mixture of the posteriors of learned pseudo-inputs.
    # prior_components = K of mog/vamp; 0 picks 10 for mog and 500 for vamp (the paper's)
    prior: str = "normal"
    prior_components: int = 0
    flow_type: str = "planar"
    # hvae: the stochastic layers below the top one (which has latent_dim units), listed
    # from the data up, and the widths of the deterministic layers of every network between
    # two stochastic layers; the defaults give Burda et al. 2016's two-layer model
    # x -> z1 (100) -> z2 (latent_dim 50), with 100-100 between z1 and z2
    lower_latents: tuple[int, ...] = (100,)
    latent_hidden: tuple[int, ...] = (100, 100)
    # cvae/icvae: also feed the condition to the encoder (the decoder always gets it)
    condition_encoder: bool = False
    # conv nets: residual blocks per resolution level, after each downsampling and
    # before each upsampling (0: plain strided convs); None: the recipe's
    res_blocks: int | None = None
    # logistic-mixture likelihood: number of mixture components (Salimans et al. 2017)
    mixture: int = 10


@dataclass(frozen=True)
class TrainConfig:
    # None: the recipe's. The binary recipe's 40 epochs of MNIST take 2.5-4 minutes on 2
    # CPU cores and give IS-NLL 90.15-90.22 (docs/benchmarks.md); the 8-bit recipe sets
    # epochs from the number of training images (`eight_bit_epochs`)
    epochs: int | None = None
    # a budget of training time in minutes (0: none): the run stops before an epoch that
    # would take it past the budget (paced by the slowest of its last few epochs), at
    # `epochs` at the latest; the summed epoch times of all its sessions count
    minutes: float = 0.0
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adam"
    # exp: lr * decay**(epochs done), smooth per step; its value at a step does not
    # depend on the total number of epochs, so `--resume --epochs N` continues the same
    # curve an uninterrupted N-epoch run follows. cosine anneals to 0 at `epochs`.
    schedule: str = "exp"
    lr_decay: float | None = None
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
    # clip the global gradient norm to this value (0: off); None: the recipe's
    clip_grad: float | None = None
    # KL warm-up (Sønderby et al. 2016): the KL weight rises linearly from 0 to `beta` over
    # this many epochs (0: off); None: the recipe's
    kl_warmup: float | None = None
    # L samples of z per image for the ELBO, k for the IWAE bound
    samples: int = 1
    seed: int = 0
    device: str = "auto"
    # autocast dtype for the networks (log-densities, logsumexp and KL stay fp32):
    # auto = bf16 on GPUs that support it, fp32 elsewhere; fp16 adds gradient scaling
    precision: str = "auto"
    # run the training step's forward through torch.compile
    compile: bool = False
    # Grids of reconstructions / prior samples are refreshed every this many epochs.
    image_every: int = 1
    # denoising training, "KIND:LEVEL" (KIND one of NOISE_KINDS, 0 < LEVEL < 1) or
    # "KIND:LOW-HIGH" (a level per image, uniform in [LOW, HIGH]): every step the encoder
    # sees the batch corrupted with fresh noise and the likelihood scores the clean batch
    # (Vincent et al. 2008; Im et al. 2017); None: plain training
    denoise: str | None = None


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
        kind = str(known[name].type)
        optional = kind.endswith("| None")
        kind = kind.removesuffix(" | None")
        where = f"{section}.{name}"
        if value is None and optional:
            pass  # an optional field left unset (for the recipe fields: chosen from the data)
        elif kind.startswith("tuple"):
            value = _as_int_tuple(value, where)
        elif kind == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
        elif kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where} must be an integer, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where} must be a number, got {value!r}")
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
    """Check values' ranges. Names are checked where they are looked up (the registries), and
    which model takes which prior, flows and objective beside each model (vaelab.models)."""
    d, m, t = cfg.data, cfg.model, cfg.train
    if d.binarization not in (AUTO, "dynamic", "fixed", "none"):
        raise ConfigError(f"unknown binarization {d.binarization!r}; choose one of: auto, dynamic, fixed, none")
    if m.flows < 0:
        raise ConfigError(f"model.flows must be >= 0, got {m.flows}")
    if m.prior_components < 0:
        raise ConfigError(f"model.prior_components must be >= 0 (0: 10 for mog, 500 for vamp), got "
                          f"{m.prior_components}")
    if t.minutes < 0:
        raise ConfigError(f"train.minutes must be >= 0 (0: no time budget), got {t.minutes}")
    if t.minutes and t.schedule == "cosine":
        raise ConfigError("a time budget (--minutes) cannot tell the cosine schedule when training ends; "
                          "use --schedule exp or constant, or give --epochs alone")
    if t.kl not in ("analytic", "mc"):
        raise ConfigError(f"unknown kl {t.kl!r}; choose one of: analytic, mc")
    if t.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {t.precision!r}; choose one of: auto, fp32, bf16, fp16")
    if t.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {t.device!r}; choose one of: auto, cpu, cuda")
    for name, sizes in (("hidden", m.hidden or ()), ("decoder_hidden", m.decoder_hidden or ()),
                        ("lower_latents", m.lower_latents), ("latent_hidden", m.latent_hidden)):
        if any(h <= 0 for h in sizes):
            raise ConfigError(f"{name} sizes must be positive, got {','.join(map(str, sizes))}")
    if d.image_size is not None and (len(d.image_size) != 2 or min(d.image_size) <= 0):
        raise ConfigError(f"data.image_size must be two positive integers (height, width), got {d.image_size}")
    if d.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels must be 1 (grey), 3 (RGB) or 0 (auto), got {d.channels}")
    if not 0 <= d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in [0, 1), got {d.test_fraction}")
    if not _is_colour(d.background):
        raise ConfigError(f"data.background must be white, black, grey or #rrggbb, got {d.background!r}")
    positive = {
        "model.latent_dim": m.latent_dim,
        "model.mixture": m.mixture,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.samples": t.samples,
        "train.image_every": t.image_every,
    }
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value}")
    for name, value in (("model.res_blocks", m.res_blocks), ("data.memory_budget_mb", d.memory_budget_mb),
                        ("train.warmup_steps", t.warmup_steps), ("train.clip_grad", t.clip_grad),
                        ("train.kl_warmup", t.kl_warmup)):
        if value is not None and not value >= 0:  # also rejects nan
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if not m.likelihood_std > 0:
        raise ConfigError(f"model.likelihood_std must be positive, got {m.likelihood_std}")
    if t.lr is not None and not t.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if t.lr_decay is not None and not 0 < t.lr_decay <= 1:
        raise ConfigError(f"train.lr_decay must be in (0, 1], got {t.lr_decay}")
    if t.beta < 0:
        raise ConfigError(f"train.beta must be >= 0, got {t.beta}")
    if t.lam < 0:
        raise ConfigError(f"train.lam must be >= 0, got {t.lam}")
    if t.denoise is not None:
        parse_denoise(t.denoise)


# ----------------------------------------------------------------------------- recipes
#
# Fields left unset (AUTO names, None numbers) are chosen from the data by `resolve`, once,
# when a run starts; config.json records the values chosen. Two recipes:
#
# - binary: the MNIST-family benchmarks, and images whose pixels are all 0 or 255. Dynamic
#   binarisation, a Bernoulli likelihood, an MLP (docs/benchmarks.md has its measurements).
# - 8-bit: every other dataset (grey or colour folders and arrays, CIFAR-10). The pixels'
#   256 levels are modelled by a discretized logistic likelihood (Salimans et al. 2017)
#   whose location and scale the decoder predicts per pixel, with a residual conv net sized
#   for the images (docs/colour.md has the measurements behind each choice).

BINARY_RECIPE: dict[str, dict[str, Any]] = {
    "data": {"binarization": "dynamic"},
    "model": {"likelihood": "bernoulli", "likelihood_scale": "pixel", "net": "mlp", "latent_dim": 50,
              "res_blocks": 0},
    "train": {"epochs": 40, "batch_size": 128, "lr": 2e-3, "lr_decay": 0.92, "clip_grad": 0.0, "kl_warmup": 0.0},
}
EIGHT_BIT_RECIPE: dict[str, dict[str, Any]] = {
    "data": {"binarization": "none"},
    "model": {"likelihood": "logistic", "likelihood_scale": "decoder", "net": "resnet", "latent_dim": 128,
              "res_blocks": 0},
    "train": {"batch_size": 64, "lr": 1e-3, "clip_grad": 0.0, "kl_warmup": 0.0},
}
# default widths per net when `hidden` is unset (resnet: `resnet_widths`)
NET_WIDTHS = {"mlp": ((512, 512), (256, 256)), "conv": ((32, 64), None), "conv-transpose": ((32, 64), None)}
# The 8-bit recipe trains on about this many images in all, whatever the size of the folder:
# 3-5 minutes at 32x32 or 64x64 on 2 CPU cores, where the test bound of a 2,000-image folder
# levels off (docs/colour.md).
EIGHT_BIT_IMAGES = 200_000
# Over the recipe's own number of epochs (`eight_bit_epochs`), its learning rate falls by this
# factor. The per-epoch decay does not depend on --epochs, so that a run resumed to more epochs
# follows the curve an uninterrupted run of that length follows (it keeps falling past them).
EIGHT_BIT_LR_FALL = 0.1


@dataclass(frozen=True)
class DataFacts:
    """What `resolve` needs to know of a dataset."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    n_train: int
    # a binary benchmark (MNIST family), or images whose pixels are all 0 or 255
    binary: bool


def resnet_levels(height: int, width: int) -> int:
    """2x downsampling levels of the recipe's resnet: as many as keep both sides divisible
    and the smaller side >= 4 at the bottom (32x32 -> 3, 64x64 -> 4, 28x28 -> 2), at most 6."""
    levels = 0
    while levels < 6 and height % 2 ** (levels + 1) == 0 and width % 2 ** (levels + 1) == 0 \
            and min(height, width) // 2 ** (levels + 1) >= 4:
        levels += 1
    return levels


def resnet_widths(height: int, width: int) -> tuple[int, ...]:
    """Channel widths per level, full resolution first: 128 at the deepest level, halving
    towards the image, at least 16 (32x32 -> 32,64,128; 64x64 -> 16,32,64,128)."""
    levels = resnet_levels(height, width)
    return tuple(max(16, 128 >> (levels - 1 - i)) for i in range(levels))


def eight_bit_epochs(facts: DataFacts) -> int:
    """Epochs of the 8-bit recipe: EIGHT_BIT_IMAGES images in all, between 1 and 1000 epochs."""
    return max(1, min(1000, round(EIGHT_BIT_IMAGES / facts.n_train)))


def resolve(cfg: Config, facts: DataFacts) -> tuple[Config, dict[str, str]]:
    """Fill every field left to the recipe (AUTO names, None numbers) from the data.

    Returns the complete config and, for each field chosen here, its value as text
    ("model.hidden": "32,64,128"). Fields the user set are kept, and the recipe's
    other choices follow them: an explicit Bernoulli likelihood makes the binarisation
    dynamic, an explicit binarisation picks the likelihood that models it.
    """
    d, m, t = cfg.data, cfg.model, cfg.train
    recipe = BINARY_RECIPE if facts.binary else EIGHT_BIT_RECIPE
    chosen: dict[str, str] = {}
    data, model, train = {}, {}, {}

    def pick(section: dict[str, Any], name: str, value: Any, where: str) -> None:
        section[name] = value
        chosen[where] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)

    binary_likelihood = m.likelihood == "bernoulli"
    if d.binarization == AUTO:
        if m.likelihood != AUTO:
            pick(data, "binarization", "dynamic" if binary_likelihood else "none", "data.binarization")
        else:
            pick(data, "binarization", recipe["data"]["binarization"], "data.binarization")
    binarization = data.get("binarization", d.binarization)
    if m.likelihood == AUTO:
        pick(model, "likelihood", "bernoulli" if binarization != "none" else
             EIGHT_BIT_RECIPE["model"]["likelihood"], "model.likelihood")
    if m.likelihood_scale == AUTO:
        pick(model, "likelihood_scale", recipe["model"]["likelihood_scale"], "model.likelihood_scale")
    _, h, w = facts.image_shape
    if m.net == AUTO:
        net = recipe["model"]["net"]
        if net == "resnet" and resnet_levels(h, w) < 2:
            net = "mlp"  # too small, or sides not divisible by 4: no conv levels fit
        pick(model, "net", net, "model.net")
    net = model.get("net", m.net)
    if net == "resnet" and m.hidden is None and not resnet_levels(h, w):
        raise ConfigError(f"the resnet net needs image sides divisible by 2 and at least 8 pixels, got {h}x{w}; "
                          "pick an --image-size such as 32, or --net mlp")
    if m.hidden is None:
        if net == "resnet":
            widths, mirror = resnet_widths(h, w), None
        else:
            widths, mirror = NET_WIDTHS.get(net, NET_WIDTHS["mlp"])
        pick(model, "hidden", widths, "model.hidden")
        if m.decoder_hidden is None and mirror is not None:
            pick(model, "decoder_hidden", mirror, "model.decoder_hidden")
    for name in ("latent_dim", "res_blocks"):
        if getattr(m, name) is None:
            pick(model, name, recipe["model"][name], f"model.{name}")
    for name in ("batch_size", "lr", "clip_grad", "kl_warmup"):
        if getattr(t, name) is None:
            pick(train, name, recipe["train"][name], f"train.{name}")
    if t.epochs is None:
        pick(train, "epochs", recipe["train"]["epochs"] if facts.binary else eight_bit_epochs(facts), "train.epochs")
    if t.lr_decay is None:
        decay = recipe["train"]["lr_decay"] if facts.binary else \
            round(EIGHT_BIT_LR_FALL ** (1 / eight_bit_epochs(facts)), 6)
        pick(train, "lr_decay", decay, "train.lr_decay")
    return cfg.replace(data=data, model=model, train=train), chosen


def unresolved(cfg: Config) -> list[str]:
    """The fields still left to the recipe (empty once `resolve` has run)."""
    d, m, t = cfg.data, cfg.model, cfg.train
    names = {"data.binarization": d.binarization == AUTO, "model.net": m.net == AUTO,
             "model.likelihood": m.likelihood == AUTO, "model.likelihood_scale": m.likelihood_scale == AUTO,
             "model.hidden": m.hidden is None, "model.latent_dim": m.latent_dim is None,
             "model.res_blocks": m.res_blocks is None}
    names.update({f"train.{n}": getattr(t, n) is None
                  for n in ("epochs", "batch_size", "lr", "lr_decay", "clip_grad", "kl_warmup")})
    return [n for n, unset in names.items() if unset]


def parse_denoise(spec: str) -> tuple[str, float, float]:
    """"KIND:LEVEL" -> (kind, level, level); "KIND:LOW-HIGH" -> (kind, low, high), a level
    drawn per image uniformly in [low, high]; or a one-line ConfigError."""
    kind, sep, levels = spec.partition(":")
    if not sep:
        raise ConfigError(f"train.denoise must be KIND:LEVEL or KIND:LOW-HIGH such as uniform:0.3, got {spec!r}")
    if kind not in NOISE_KINDS:
        raise ConfigError(f"unknown denoise noise {kind!r}; choose one of: {', '.join(NOISE_KINDS)}")
    low, dash, high = levels.partition("-")
    try:
        lo, hi = float(low), float(high if dash else low)
    except ValueError:
        lo = hi = math.nan
    if not (0 < hi < 1 and (0 <= lo < hi if dash else lo == hi)):
        raise ConfigError(f"the denoise level must be a number in (0, 1) or a range LOW-HIGH with "
                          f"0 <= LOW < HIGH < 1, got {levels!r}")
    return kind, lo, hi


BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "gray": (128, 128, 128)}


def _is_colour(s: str) -> bool:
    try:
        background_rgb(s)
    except ValueError:
        return False
    return True


def background_rgb(s: str) -> tuple[int, int, int]:
    """A background name or #rrggbb -> (r, g, b) in 0..255."""
    if s in BACKGROUNDS:
        return BACKGROUNDS[s]
    if len(s) == 7 and s[0] == "#":
        return int(s[1:3], 16), int(s[3:5], 16), int(s[5:7], 16)
    raise ValueError(f"not a colour: {s!r}")


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
