"""The one config tree. Every configurable default of a run lives here.

A run is fully described by a ``Config``; ``config.json`` in a run folder is
``Config.to_dict()`` and ``Config.from_dict`` rebuilds it, rejecting unknown keys so
that a typo never silently falls back to a default.

This module imports nothing from vaelab: it checks types and ranges only. Names
(models, nets, likelihoods, datasets...) are checked where they are looked up, with
``choose``, so every registry stays next to what it registers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Config", "DataConfig", "ModelConfig", "TrainConfig", "ConfigError", "load", "save", "validate"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix.

    It is a ``ValueError``, raised by ``Config.from_dict``, ``Config.replace``, ``load`` and
    ``validate`` (the dataclasses themselves do not check), and by the registries when a name
    (model, net, likelihood, ...) is not one of theirs.

    Examples:
        >>> from vaelab.config import Config, ConfigError
        >>> try:
        ...     Config().replace(train={"epochs": 0})
        ... except ConfigError as e:
        ...     print(e)
        train.epochs must be a positive integer, got 0
    """


AUTO = "auto"  # a name field left for `resolve` to choose from the data (numbers use None)


NOISE_KINDS = ("uniform", "salt-pepper", "gaussian")  # the corruptions of vaelab.corruption.add_noise


def did_you_mean(name: str, names: Any) -> str:
    """"; did you mean X?" naming the closest of `names` to a mistyped `name` (case, "_"
    for "-" and a letter or two off), or "" when none is close."""
    names = [str(n) for n in names]
    folded = {n.lower().replace("_", "-"): n for n in names}
    key = str(name).lower().replace("_", "-")
    close = [folded[key]] if key in folded else [folded[c] for c in difflib.get_close_matches(key, folded, n=1)]
    return f"; did you mean {close[0]}?" if close else ""


def choose(registry: Any, name: str, what: str) -> Any:
    """``registry[name]``, or a ConfigError listing the choices (registries call this)."""
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(registry)}{did_you_mean(name, registry)}")
    return registry[name] if isinstance(registry, dict) else name


# ----------------------------------------------------------------------------- settings
#
# Every field of the tree is declared with `setting`: its default, the help text of its
# command-line flag, and how its value is checked. The command line is made from these
# declarations (vaelab.cli), and `validate` checks every range here, once.

BINARIZATIONS = (AUTO, "dynamic", "fixed", "none")
KL_KINDS = ("analytic", "mc")
MARGINALS = ("pairwise", "sampled")  # icvae's estimates of KL(q(z|x) || q(z)), vaelab.objectives.icvae
ADVERSARY_LOSSES = ("reverse", "confusion")  # how icvae's encoder works against its adversary
DEVICES = (AUTO, "cpu", "cuda")
PRECISIONS = (AUTO, "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Flag:
    """How the command line names, shows and reads a setting or option.

    name: the flag when it is not the field's name with dashes (``--scale`` for
    likelihood_scale); metavar: the value's placeholder in --help; parse: how the text is
    read (one of PARSERS, or of vaelab.options.PARSERS for options), which also checks a
    value from a config file. A command's options (``vaelab.options.option``) also take:
    aliases (more names of the flag), default (the command line's default where it differs
    from the Python function's: ``auto`` devices), positional, nargs, required, and
    exclusive (a group of which the command line needs exactly one)."""

    name: str | None = None
    metavar: str | None = None
    parse: str | None = None
    aliases: tuple[str, ...] = ()
    default: Any = None
    positional: bool = False
    nargs: str | None = None
    required: bool = False
    exclusive: str | None = None


def setting(default: Any, help: str, flag: Flag | None = None, *, choices: tuple | None = None,
            within: str | None = None, internal: str | None = None) -> Any:
    """A config field with what its flag and its checks need (dataclass field metadata).

    flag: its name, placeholder and reader on the command line (a `Flag`); choices: the
    allowed values, checked here (a field that takes a registry's names declares none: the
    registry checks them where it is looked up, and ``vaelab.catalogue`` gives the command line
    its names); within: the range of a number, or of each entry of a tuple, as ``">= 1"``,
    ``"> 0"`` or an interval such as ``"[0, 1)"``; internal: why a field has no flag."""
    f = flag or Flag()
    if f != Flag(f.name, f.metavar, f.parse):
        raise TypeError(f"a config setting's flag takes a name, metavar and parse only, got {f}")
    meta = {"help": help, "flag": f.name, "metavar": f.metavar, "choices": choices, "range": interval(within),
            "parse": f.parse, "internal": internal}
    return field(default=default, metadata=meta)


def interval(text: str | None) -> tuple[float | None, bool, float | None, bool] | None:
    """(low, open_low, high, open_high) of a range written ``">= 1"``, ``"> 0"``, ``"[0, 1)"``
    or ``"(0, 1]"`` (None: no range); an end that is None is unbounded."""
    if text is None:
        return None
    t = text.replace(" ", "")

    def number(s: str) -> float:
        return int(s) if s.lstrip("-").isdigit() else float(s)

    if t.startswith((">=", ">")):
        return number(t.lstrip(">=")), not t.startswith(">="), None, False
    if len(t) > 4 and t[0] in "[(" and t[-1] in "])" and t.count(",") == 1:
        low, high = t[1:-1].split(",")
        return number(low), t[0] == "(", number(high), t[-1] == ")"
    raise ValueError(f"a range is written >= A, > A or as an interval [A, B), got {text!r}")


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section of a config: which images to train on and how they are read.

    Each field but ``fingerprint`` is also a flag of ``vaelab train`` (``image_size`` is ``--image-size``); its help
    there says more. Frozen: change a field with ``Config.replace``.

    Attributes:
        dataset: A named dataset (``mnist``, ``fashion-mnist``, ``mnist-sample``, ``cifar10``),
            a folder of images or an ``.npy``/``.npz`` array file.
        data_dir: The folder holding a named dataset's files; None to search the usual places.
        image_size: ``(H, W)`` that folders and arrays are resized and centre-cropped to; None
            keeps the images' own size.
        channels: 1 (grey), 3 (RGB) or 0 (grey when every image is grey).
        background: The colour transparent pixels are laid on: white, black, grey or ``#rrggbb``.
        test_fraction: The share of a folder's or array file's images held out for testing
            when no split is given, in [0, 1).
        skip_bad_images: Skip images that cannot be decoded instead of stopping.
        memory_budget_mb: MiB of training images kept on the device; a larger split is
            streamed from disk. 0: half the free GPU memory on CUDA, a quarter of the RAM on CPU.
        fingerprint: The data's identity, set by training (None before).
        binarization: ``dynamic``, ``fixed``, ``none`` or ``auto`` (chosen from the data).
        binarization_seed: The seed of fixed binarisation and of the test set's.
        download: Fetch a named dataset's official files when they are not found.
        conditions: An ``.npz`` of side information for conditional models; None uses the
            one-hot class labels.
        subset: For a factor dataset, train on this many random images (the same every run); 0: all.

    Examples:
        >>> from vaelab.config import DataConfig
        >>> d = DataConfig(dataset="mnist-sample")
        >>> d.dataset, d.binarization, d.test_fraction
        ('mnist-sample', 'auto', 0.1)
    """

    dataset: str = setting(
        "mnist", "a named dataset (mnist, fashion-mnist, mnist-sample, cifar10; the factor datasets dsprites, "
        "xyobject, drawn on first use), a folder of images (class "
        "subfolders give labels; train/ and test/ give splits) or an .npy/.npz array file (stored absolute "
        "once a run starts)", Flag(metavar="NAME|PATH"))
    data_dir: str | None = setting(None, "directory holding a named dataset's files", Flag(metavar="DIR"))
    image_size: tuple[int, ...] | None = setting(
        None, "folders/arrays: resize the shorter side to fit (H, W), then centre-crop; unset: the images' "
        "own size, which must then be the same for all", Flag(metavar="S|HxW", parse="size"), within=">= 1")
    channels: int = setting(0, "1 (grey) or 3 (RGB); 0: grey when every image is grey, else RGB",
                            choices=(0, 1, 3))
    background: str = setting("white", "transparent pixels are composited on white, black, grey or #rrggbb",
                              Flag(metavar="COLOUR", parse="colour"))
    test_fraction: float = setting(
        0.1, "folders without train/ and test/: the share of images held out for test, chosen by a stable "
        "hash of each file's relative path", Flag(metavar="F"), within="[0, 1)")
    skip_bad_images: bool = setting(
        False, "skip images that cannot be decoded (listed in RUN/skipped_images.txt) instead of stopping")
    memory_budget_mb: int = setting(
        0, "training images up to this size (e.g. 500MB or 2GB; binary units: MiB, GiB) are held on the "
        "device; a larger split is streamed from the disk cache; 0: a quarter of RAM, half the free GPU "
        "memory", Flag("--memory-budget", metavar="SIZE", parse="megabytes"), within=">= 0")
    fingerprint: str | None = setting(None, "the data's identity (file names, sizes, times or content hash)",
                                      internal="set by training")
    binarization: str = setting(
        AUTO, "dynamic: a fresh Bernoulli(pixel/255) sample each time an image is used; fixed: one sample, "
        "drawn with --binarization-seed; none: the 256 grey levels; auto: dynamic for the MNIST family and "
        "images whose pixels are all 0 or 255, none for other data", choices=BINARIZATIONS)
    binarization_seed: int = setting(0, "the seed of the fixed binarisation (and of the test set's, binarised "
                                        "once for evaluation)", within=">= 0")
    download: bool = setting(True, "fetch a named dataset's official files (checksums verified) when they are "
                                   "not found; --no-download: only look for them")
    conditions: str | None = setting(
        None, "cvae/icvae/censored: an .npz with float arrays 'train' and 'test' of side information, used as the "
        "condition c instead of the one-hot class label", Flag(metavar="FILE.npz"))
    subset: int = setting(0, "factor datasets (dsprites, xyobject): train on this many of the images, drawn at "
                             "random (the same ones every run); 0: all of them", Flag(metavar="N"), within=">= 0")


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` section of a config: the model, its networks, prior and likelihood.

    Fields left at ``"auto"`` or None are chosen from the data when training starts, and
    ``config.json`` in the run folder records the choice. Frozen: change a field with
    ``Config.replace``.

    Attributes:
        model: The model's name: ``vae``, ``ae``, ``hvae``, ``cvae``, ``icvae``, ...
        net: The networks: ``mlp``, ``conv``, ``conv-transpose``, ``resnet`` or ``auto``.
        hidden: Encoder layer widths (mlp) or channels per downsampling level (conv nets).
        decoder_hidden: Decoder widths from z outwards; None mirrors ``hidden``.
        latent_dim: D, the size of z (for hvae: of the top layer).
        activation: The networks' activation, e.g. ``elu`` or ``relu``.
        likelihood: p(x|z): ``bernoulli``, ``gaussian``, ``logistic``, ``logistic-mixture`` or ``auto``.
        likelihood_scale: How a Gaussian or logistic scale is set: ``fixed``, ``global``,
            ``pixel``, ``decoder`` or ``auto``.
        likelihood_std: The fixed scale, and the starting value of learned ones.
        flows: The number of normalizing flows in the posterior (0: none).
        prior: p(z): ``normal``, ``mog`` (a learned mixture) or ``vamp`` (the VampPrior).
        prior_components: Mixture components or pseudo-inputs; 0 takes the default.
        flow_type: The kind of flow, e.g. ``planar``.
        lower_latents: hvae: sizes of the stochastic layers below the top one, from the data up.
        latent_hidden: hvae: widths of the layers between two stochastic layers.
        condition_encoder: cvae/icvae: give the condition to the encoder too.
        res_blocks: Conv nets: residual blocks per resolution level.
        mixture: logistic-mixture: the number of components.
        levels: ladder: the latent levels, bottom first, as text (``"8x14x14,16,8"``: C x H x W
            spatial levels, then vector sizes D); ``auto`` chooses them from the images.

    Examples:
        >>> from vaelab.config import ModelConfig
        >>> m = ModelConfig(latent_dim=2, hidden=(32,))
        >>> m.model, m.latent_dim, m.hidden, m.prior
        ('vae', 2, (32,), 'normal')
    """

    model: str = setting("vae", "the model")
    net: str = setting(
        AUTO, "mlp; conv (strided conv encoder, sub-pixel conv decoder); conv-transpose; resnet (residual conv "
        "net with a 1x1 output head, widths sized for the images); auto: mlp for the MNIST family, resnet for "
        "other images")
    # The binary recipe pairs a 512-512 encoder with a 256-256 decoder: k=1000 importance
    # sampling decodes every test image 1000 times, so the decoder sets evaluation cost,
    # while the encoder runs once per image (docs/benchmarks.md).
    hidden: tuple[int, ...] | None = setting(
        None, "encoder layer widths (mlp) or channels per 2x downsampling level (conv nets); given alone, the "
        "decoder mirrors it (chosen: 512,512 for the MLP, 32,64 for conv, resnet by image size)",
        Flag(metavar="H1,H2", parse="ints"), within=">= 1")
    decoder_hidden: tuple[int, ...] | None = setting(
        None, "decoder widths listed from z outwards (unset: the mirror of --hidden; the MLP's recipe pairs a "
        "512,512 encoder with a 256,256 decoder)", Flag(metavar="H1,H2", parse="ints"), within=">= 1")
    latent_dim: int | None = setting(None, "latent size", Flag(metavar="D"), within=">= 1")
    # ELU beat ReLU by ~2.4 nats of test NLL in a 3-minute MNIST budget (docs/benchmarks.md)
    activation: str = setting("elu", "the networks' activation")
    likelihood: str = setting(
        AUTO, "p(x|z): bernoulli for binarised data; gaussian (a density), logistic (discretized over 256 "
        "levels) or logistic-mixture (Salimans et al. 2017) for grey levels; auto: bernoulli for binarised "
        "data, logistic otherwise")
    likelihood_scale: str = setting(
        AUTO, "gaussian/logistic scale: fixed (--fixed-std), one learned global, learned per pixel, or "
        "predicted by the decoder per pixel and image; auto: pixel for the MNIST family, decoder for other "
        "images", Flag("--scale"))
    likelihood_std: float = setting(0.1, "the fixed scale, and the initial value of learned ones (data in [0, 1])",
                                    Flag("--fixed-std", metavar="S"), within="> 0")
    flows: int = setting(0, "normalizing flows in the posterior", Flag(metavar="K"), within=">= 0")
    prior: str = setting(
        "normal", "p(z): normal = N(0, I); mog = a learned mixture of Gaussians; vamp = the VampPrior, the "
        "mixture of the posteriors of learned pseudo-inputs (Tomczak & Welling 2018); KL by Monte Carlo for "
        "mog and vamp")
    prior_components: int = setting(0, "mog: components; vamp: pseudo-inputs (0: 10 for mog, 500 for vamp, "
                                       "the paper's)", Flag(metavar="K"), within=">= 0")
    flow_type: str = setting("planar", "the kind of flow")
    # the hvae defaults give Burda et al. 2016's two-layer model x -> z1 (100) -> z2 (latent_dim 50)
    lower_latents: tuple[int, ...] = setting(
        (100,), "hvae: sizes of the stochastic layers below the top one (--latent-dim), from the data up",
        Flag(metavar="D1,..", parse="ints"), within=">= 1")
    latent_hidden: tuple[int, ...] = setting(
        (100, 100), "hvae: deterministic layer widths between two stochastic layers",
        Flag(metavar="H1,H2", parse="ints"), within=">= 1")
    condition_encoder: bool = setting(False, "cvae/icvae/censored: feed the condition to the encoder too (the decoder "
                                             "always gets it)")
    res_blocks: int | None = setting(None, "conv nets: residual blocks per resolution level, after each "
                                           "downsampling and before each upsampling", Flag(metavar="R"), within=">= 0")
    mixture: int = setting(10, "logistic-mixture: number of components (Salimans et al. 2017)", Flag(metavar="K"),
                           within=">= 1")
    levels: str = setting(
        AUTO, "ladder: the latent levels, the one next to the data first: CxHxW for a spatial level (its sides the "
        "image's divided by a power of 2), D for a vector (above every spatial level); auto: chosen from the "
        "images (8x14x14,16,8 for binary 28x28, as Havtorn et al. 2021; 8-channel levels at 16x16, 8x8 and 4x4 "
        "for 8-bit 32x32 and 64x64)", Flag(metavar="CxHxW,..,D", parse="levels"))


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of a config: the objective, optimiser, schedule and device.

    Fields left at ``"auto"`` or None are chosen from the data when training starts. Frozen:
    change a field with ``Config.replace``.

    Attributes:
        epochs: Total epochs; None chooses from the data (40 for the MNIST family).
        minutes: A time budget in minutes; 0 for none.
        batch_size: Images per step (the global batch across processes).
        lr: The peak learning rate.
        optimizer: The optimiser's name, e.g. ``adam``.
        schedule: The learning-rate schedule: ``exp``, ``cosine`` or ``constant``.
        lr_decay: The per-epoch factor of the ``exp`` schedule, in (0, 1].
        warmup_steps: Steps of linear learning-rate warm-up.
        objective: ``elbo``, ``iwae``, ``icvae``, ``reconstruction`` or ``auto`` (the model's own).
        kl: The ELBO's KL term: ``analytic`` or ``mc`` (Monte Carlo).
        beta: The weight of the KL term.
        lam: icvae: the weight of KL(q(z|x) || q(z)); censored: the scale of the adversary's reversed gradient.
        marginal: icvae: the estimate of KL(q(z|x) || q(z)), ``pairwise`` or ``sampled``.
        hsic: icvae: the weight of the codes' dependence on c (normalised HSIC over the batch).
        adversary: icvae: the weight of an adversary that reads c from the codes, 0 for none.
        adversary_loss: icvae: how the encoder works against the adversary, ``reverse`` (its
            loss's gradient reversed) or ``confusion`` (its predictions pulled to chance).
        clip_grad: The largest global gradient norm; 0 turns clipping off.
        kl_warmup: Epochs over which the KL weight rises from 0 to ``beta``; 0 turns it off.
        free_bits: Nats per image below which a latent level's KL stops counting in the loss; 0 turns it off.
        tc_estimator: tcvae: how log q(z) is estimated from the batch, ``mss`` or ``mws``.
        mi_weight: tcvae: the weight alpha of the index-code mutual information.
        dwkl_weight: tcvae: the weight gamma of the dimension-wise KL.
        dataset_size: tcvae: N, the number of images q(z) averages over; set from the training data.
        tc_weight: factorvae: the weight gamma of the discriminator's total-correlation estimate.
        discriminator_hidden: factorvae: the discriminator's layer widths.
        capacity: capacity: C_max, the KL in nats the capacity C rises to; 0 turns it off.
        capacity_steps: capacity: the steps over which C rises from 0 to ``capacity``.
        capacity_weight: capacity: the weight gamma of |KL - C|.
        dip_type: dipvae: ``i`` or ``ii``.
        dip_offdiag: dipvae: the weight lambda_od of the off-diagonal covariances.
        dip_diag: dipvae: the weight lambda_d of the diagonal's distance to 1; None: from ``dip_type``.
        free_bits_cooldown: Epochs over which free bits hold (the first half) and then fall to 0
            (the second half); 0: they hold for the whole run.
        skip_grad: A global gradient norm above which a step is skipped; 0 turns it off.
        samples: Samples of z per image (L for the ELBO, k for IWAE).
        seed: The seed of all randomness in training.
        device: ``cpu``, ``cuda`` or ``auto``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``auto``.
        threads: Intra-op CPU threads; 0 chooses this process's share of the CPUs it may use
            beside the other vaelab processes running, and follows it as they start and end.
        compile: Run the training step through ``torch.compile``.
        image_every: Refresh the run's ``recon.png`` and ``samples.png`` every this many epochs.
        denoise: Denoising training as ``KIND:LEVEL`` or ``KIND:LOW-HIGH`` (e.g.
            ``uniform:0-0.4``); None trains on clean inputs.

    Examples:
        >>> from vaelab.config import TrainConfig
        >>> t = TrainConfig(epochs=5, beta=0.5)
        >>> t.epochs, t.beta, t.objective
        (5, 0.5, 'auto')
    """

    # The binary recipe's 40 epochs of MNIST take 2.5-4 minutes on 2 CPU cores and give
    # IS-NLL 90.15-90.22 (docs/benchmarks.md); the 8-bit recipe sets epochs from the number
    # of training images (`eight_bit_epochs`)
    epochs: int | None = setting(None, "total epochs (chosen: 40 for the MNIST family; for other images "
                                       "200,000 images seen in all, at most 100 epochs)", within=">= 1")
    minutes: float = setting(
        0.0, "a budget of training time: stop before an epoch that would go past M minutes of summed epoch "
        "time (at --epochs at the latest; every session of a resumed run counts); not with --schedule cosine; "
        "0: none", Flag(metavar="M"), within=">= 0")
    batch_size: int | None = setting(None, "images per step (the global batch under torchrun)", within=">= 1")
    lr: float | None = setting(None, "peak learning rate", within="> 0")
    optimizer: str = setting("adam", "the optimiser (fused where torch has it)")
    # exp's value at a step does not depend on the total number of epochs, so
    # `--resume --epochs N` continues the curve an uninterrupted N-epoch run follows
    schedule: str = setting("exp", "exp: lr * decay^epoch, smooth per step; cosine: to 0 at --epochs; constant")
    lr_decay: float | None = setting(None, "per-epoch factor of the exp schedule (chosen: 0.92 for the MNIST "
                                           "family; for other images a tenfold fall over the run)",
                                     Flag(metavar="G"), within="(0, 1]")
    warmup_steps: int = setting(100, "linear learning-rate warm-up, at most one epoch", Flag(metavar="N"),
                                within=">= 0")
    objective: str = setting(
        AUTO, "elbo; iwae (importance-weighted bound with --samples k); icvae; reconstruction; the "
        "disentangling tcvae (beta-TCVAE), factorvae, capacity (annealed capacity) and dipvae; auto: the "
        "model's own (elbo for VAEs, reconstruction for the AE)")
    kl: str = setting("analytic", "KL term of the ELBO: closed form, or Monte Carlo (flows always use mc)",
                      choices=KL_KINDS)
    beta: float = setting(1.0, "KL weight (Higgins et al. 2017); the logged ELBO keeps weight 1", within=">= 0")
    lam: float = setting(1.0, "icvae: weight of KL(q(z|x) || q(z)) (Moyer et al. 2018), the reconstruction "
                              "weighted 1 + lambda; censored: how strongly the encoder works against the "
                              "adversary (its reversed gradient's scale)", Flag("--lambda"), within=">= 0")
    marginal: str = setting(
        "pairwise", "icvae: the estimate of KL(q(z|x) || q(z)), with q(z) the batch's mixture of posteriors: pairwise, "
        "the mean KL to the batch's other posteriors (an upper bound); sampled, log q(z|x) - log q(z) at a draw "
        "from q(z|x) (Esmaeili et al. 2018)", choices=MARGINALS)
    hsic: float = setting(
        0.0, "icvae: weight of the codes' dependence on c, the normalised HSIC between the batch's posterior means "
        "and conditions, in [0, 1] (Lopez et al. 2018): it reaches what a probe on the codes reads; 0 = off",
        within=">= 0")
    adversary: float = setting(
        0.0, "icvae: weight of an adversary (2 hidden layers of 256, like the probe) that learns to read c from the "
        "codes while the encoder learns to defeat it (Edwards & Storkey 2016), as --model censored's --lambda; "
        "0 = no adversary", within=">= 0")
    adversary_loss: str = setting(
        "reverse", "icvae: how the encoder works against the adversary: reverse, the adversary's loss with its "
        "gradient reversed (Ganin & Lempitsky 2015); confusion, its predictions pulled to chance (Tzeng et al. 2015)",
        choices=ADVERSARY_LOSSES)
    clip_grad: float | None = setting(None, "clip the global gradient norm to NORM, 0 = off; steadies training "
                                            "with flows", Flag(metavar="NORM"), within=">= 0")
    kl_warmup: float | None = setting(None, "raise the KL weight linearly from 0 to --beta over this many epochs "
                                            "(Sønderby et al. 2016), 0 = off", Flag(metavar="EPOCHS"), within=">= 0")
    free_bits: float | None = setting(
        None, "ELBO: each latent level's KL counts at least this many nats per image in the loss (free bits, "
        "Kingma et al. 2016; per level of a hierarchy); the logged ELBO keeps the true KL; 0 = off (chosen: 0, "
        "and 2 per level for the ladder model, as Havtorn et al. 2021)", Flag(metavar="NATS"), within=">= 0")
    free_bits_cooldown: float | None = setting(
        None, "free bits hold at --free-bits for the first half of this many epochs, then fall linearly to 0 by "
        "its end (Havtorn et al. 2021's cool-down); 0 = they hold for the whole run (chosen: 0, and 10 for the "
        "ladder model)", Flag(metavar="EPOCHS"), within=">= 0")
    # the disentangling objectives' own settings (Chen et al. 2018; Kim & Mnih 2018; Burgess et al. 2018;
    # Kumar et al. 2018)
    tc_estimator: str = setting(
        "mss", "tcvae: the estimator of log q(z) from the batch (Chen et al. 2018): mss (minibatch stratified "
        "sampling) or mws (minibatch weighted sampling, biased low: log N below it when every posterior is "
        "the same)", choices=("mss", "mws"))
    mi_weight: float = setting(1.0, "tcvae: weight alpha of the index-code mutual information (--beta weighs the "
                                    "total correlation)", Flag(metavar="ALPHA"), within=">= 0")
    dwkl_weight: float = setting(1.0, "tcvae: weight gamma of the dimension-wise KL", Flag(metavar="GAMMA"),
                                 within=">= 0")
    dataset_size: int | None = setting(
        None, "tcvae: N, the number of images q(z) is the average posterior over, in its estimators; unset: the "
        "training images, recorded in config.json when training starts", Flag(metavar="N"), within=">= 1")
    tc_weight: float = setting(
        10.0, "factorvae: weight gamma of the discriminator's total-correlation estimate (Kim & Mnih 2018; "
        "published sweeps on dSprites span 10-100)", Flag(metavar="GAMMA"), within=">= 0")
    discriminator_hidden: tuple[int, ...] = setting(
        (1000, 1000, 1000, 1000, 1000, 1000), "factorvae: layer widths of the discriminator, an MLP with leaky "
        "ReLUs over codes (the paper's: six of 1000)", Flag(metavar="H1,H2", parse="ints"), within=">= 1")
    capacity: float = setting(
        0.0, "capacity: C_max, the KL in nats per image the code may carry at the end of --capacity-steps "
        "(Burgess et al. 2018 use 25 on dSprites); 0 = off", Flag(metavar="NATS"), within=">= 0")
    capacity_steps: int = setting(100_000, "capacity: optimiser steps over which the capacity C rises linearly "
                                           "from 0 to --capacity", Flag(metavar="N"), within=">= 1")
    capacity_weight: float = setting(1000.0, "capacity: weight gamma of |KL - C| (Burgess et al. 2018: 1000)",
                                     Flag(metavar="GAMMA"), within=">= 0")
    dip_type: str = setting("ii", "dipvae: i matches the covariance of the posterior means to I, ii that of q(z) "
                                  "(Kumar et al. 2018)", choices=("i", "ii"))
    dip_offdiag: float = setting(10.0, "dipvae: weight lambda_od of the squared off-diagonal covariances",
                                 Flag(metavar="LAMBDA"), within=">= 0")
    dip_diag: float | None = setting(None, "dipvae: weight lambda_d of the diagonal's squared distance to 1; "
                                           "unset: 10 x --dip-offdiag for type i, --dip-offdiag for ii",
                                     Flag(metavar="LAMBDA"), within=">= 0")
    skip_grad: float | None = setting(
        None, "skip a step whose global gradient norm (before clipping) is above NORM, counted in metrics.jsonl "
        "as skipped_large_grad (Child 2021); 0 = off (chosen: 0, and for the ladder model 4 per pixel value of "
        "binary images, 3136 at 28x28, and 50 per value of 8-bit images, 153600 at 32x32x3)", Flag(metavar="NORM"),
        within=">= 0")
    samples: int = setting(1, "samples of z per image: L for the ELBO, k for IWAE", Flag(metavar="N"), within=">= 1")
    seed: int = setting(0, "the seed of everything random: data order, pixel and reparameterisation noise",
                        within=">= 0")
    device: str = setting(AUTO, "where to train (auto: cuda when available)", choices=DEVICES)
    precision: str = setting(
        AUTO, "autocast dtype of the networks; log-densities, logsumexp and KL stay fp32; auto = bf16 on GPUs "
        "that support it and for conv nets on CPUs with bf16 instructions (AMX or AVX512-BF16), fp32 "
        "otherwise; fp16 adds gradient scaling (the value used is recorded in config.json)", choices=PRECISIONS)
    threads: int = setting(
        0, "CPU threads of this process (a machine setting: --resume may change it); 0: its share of the CPUs "
        "it may use (affinity, cgroup quota) beside the other vaelab processes running, followed as they start "
        "and end; an exported OMP_NUM_THREADS counts as asked", Flag(metavar="N"), within=">= 0")
    compile: bool = setting(False, "run the training step's forward through torch.compile (a one-off compile "
                                   "time)")
    image_every: int = setting(1, "refresh RUN/recon.png and samples.png every this many epochs", Flag(metavar="N"),
                               within=">= 1")
    denoise: str | None = setting(
        None, "denoising training, KIND:LEVEL or KIND:LOW-HIGH: the encoder sees each batch corrupted with "
        "fresh KIND noise (uniform: U(0,1) added to a fraction LEVEL of the pixels; salt-pepper: a fraction "
        "LEVEL set to 0 or 1; gaussian: N(0, LEVEL^2) added) and the likelihood scores the clean image "
        "(Vincent et al. 2008; Im et al. 2017); LOW-HIGH draws a level per image uniformly in that range, "
        "e.g. uniform:0-0.4, which beat the noisy input's PSNR at every level 0.1-0.4 (docs/benchmarks.md)",
        Flag(metavar="KIND:LEVEL", parse="denoise"))


@dataclass(frozen=True)
class Config:
    """A complete description of a run: its data, model and training settings.

    ``config.json`` in a run folder is ``to_dict``, and ``from_dict`` reads it back.
    Unknown keys are refused, so a misspelt field raises ``ConfigError`` instead of
    quietly keeping its default. A Config is frozen: ``replace`` returns a changed copy.

    Attributes:
        data: The data section (``DataConfig``).
        model: The model section (``ModelConfig``).
        train: The training section (``TrainConfig``).

    Examples:
        >>> from vaelab.config import Config
        >>> cfg = Config().replace(data={"dataset": "mnist-sample"}, model={"latent_dim": 2})
        >>> cfg.data.dataset, cfg.model.latent_dim
        ('mnist-sample', 2)
        >>> sorted(cfg.to_dict())
        ['data', 'model', 'train']
        >>> Config.from_dict(cfg.to_dict()) == cfg
        True
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts, ``{"data": {...}, "model": {...}, "train": {...}}``.

        Returns:
            A dict that ``json.dumps`` can write (tuples become lists there).
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build a config from nested dicts, as read from ``config.json``, and check it.

        Sections and fields left out keep their defaults. Lists of widths may also be given
        as text such as ``"512,512"``.

        Args:
            d: A dict with any of the sections ``data``, ``model`` and ``train``.

        Returns:
            The checked Config.

        Raises:
            ConfigError: A section or field is unknown, or a value has the wrong type or range.
        """
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
        """Return a copy with some fields changed: ``cfg.replace(train={"epochs": 3})``.

        Args:
            **sections: For each section to change (``data``, ``model``, ``train``), a dict of
                field names and their new values.

        Returns:
            A new, checked Config; this one is unchanged.

        Raises:
            ConfigError: A section or field is unknown, or a new value is invalid.
        """
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
    """Check a config's values: choices, number ranges, formats and conflicting settings.

    Every field is checked as its declaration says, along with the one combination no part
    of vaelab could honour (a time budget with the cosine schedule). Names of models, nets,
    likelihoods, ... are checked where they are looked up, and which model takes which prior,
    flows and objective is checked by ``vaelab.models``. ``Config.from_dict`` and
    ``Config.replace`` call this already.

    Args:
        cfg: The config to check.

    Raises:
        ConfigError: The first problem found, naming the field.

    Examples:
        >>> from vaelab.config import Config, ConfigError, TrainConfig, validate
        >>> validate(Config())
        >>> try:
        ...     validate(Config(train=TrainConfig(beta=-1.0)))
        ... except ConfigError as e:
        ...     print(e)
        train.beta must be >= 0, got -1.0
    """
    for section in ("data", "model", "train"):
        sub = getattr(cfg, section)
        for f in fields(sub):
            problem = field_problem(f, getattr(sub, f.name))
            if problem:
                raise ConfigError(f"{section}.{f.name} {problem}")
    t = cfg.train
    if t.minutes and t.schedule == "cosine":
        raise ConfigError("a time budget (--minutes) cannot tell the cosine schedule when training ends; "
                          "use --schedule exp or constant, or give --epochs alone")


def _kind(f: dataclasses.Field) -> tuple[str, bool]:
    """(type name: int, float, str, bool or tuple, whether None is allowed) of a field."""
    text = str(f.type)
    return text.removesuffix(" | None").split("[")[0], text.endswith("| None")


def _range_text(f: dataclasses.Field) -> str:
    """The range of a number field in words: 'a positive integer', '>= 0', 'in (0, 1]'."""
    low, open_low, high, open_high = f.metadata["range"]
    if high is not None:
        return f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low == 1 and _kind(f)[0] in ("int", "tuple"):
        return "a positive integer"
    return f"{'>' if open_low else '>='} {low:g}" if low != 0 or not open_low else "positive"


def _in_range(f: dataclasses.Field, v: float) -> bool:
    low, open_low, high, open_high = f.metadata["range"]
    if v != v:  # nan
        return False
    ok_low = low is None or (v > low if open_low else v >= low)
    return ok_low and (high is None or (v < high if open_high else v <= high))


def field_problem(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with `value` for field `f` ('must be ...'), or None."""
    meta, (kind, optional) = f.metadata, _kind(f)
    if value is None:
        return None if optional else "must be set"
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"must be one of: {', '.join(map(str, meta['choices']))}; got {value!r}"
    if meta.get("range") is not None:
        values = value if kind == "tuple" else (value,)  # an empty tuple is refused where it matters
        if not all(_in_range(f, v) for v in values):
            if kind == "tuple":
                return f"sizes must be positive, got {','.join(map(str, values))}"
            return f"must be {_range_text(f)}, got {value}"
    parse = meta.get("parse")
    if parse == "size" and len(value) != 2:
        return f"must be two positive integers (height, width), got {value}"
    if parse == "colour" and not _is_colour(value):
        return f"must be white, black, grey or #rrggbb, got {value!r}"
    if parse == "denoise":
        parse_denoise(value)
    if parse == "levels" and value != AUTO:
        parse_levels(value)
    return None


def comma_list(convert: Callable[[str], Any], what: str, example: str) -> Callable[[str], tuple]:
    """A reader of comma-separated values, e.g. 512,512: a non-empty tuple, or a ConfigError
    that names `what` was expected, with `example`."""
    def read(text: str) -> tuple:
        try:
            values = tuple(convert(p) for p in text.split(",") if p.strip())
        except ValueError:
            values = ()
        if not values:
            raise ConfigError(f"expected comma-separated {what} such as {example}, got {text!r}")
        return values
    return read


_ints = comma_list(int, "integers", "512,512")


def _size(text: str) -> tuple[int, int]:
    try:
        size = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        size = ()
    size = size * 2 if len(size) == 1 else size
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"expected a size S or HxW such as 64 or 48x64, got {text!r}")
    return size  # type: ignore[return-value]


def _megabytes(text: str) -> int:
    units = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024}
    t = text.strip().lower()
    number = t.rstrip("abgimk")
    try:
        v = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise ConfigError(f"expected a size such as 500MB or 2GB, got {text!r}") from None
    if v < 1:
        raise ConfigError(f"expected at least 1 MB, got {text!r}")
    return int(v)


# how the command line reads a field's text, for fields whose `setting` names one
PARSERS = {"ints": _ints, "size": _size, "megabytes": _megabytes, "colour": str, "denoise": str, "levels": str}


def read_flag(f: dataclasses.Field, text: str) -> Any:
    """A field's value from its command-line text, checked as `validate` checks it; a
    ConfigError says what was expected."""
    kind = _kind(f)[0]
    parse = f.metadata.get("parse")
    if parse:
        value = PARSERS[parse](text)
    elif kind in ("int", "float"):
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            value = None
        if value is None:
            raise ConfigError(f"expected {_expected(f)}, got {text!r}")
    else:
        value = text
    problem = field_problem(f, value)
    if problem:
        if kind == "tuple" and f.metadata.get("range"):
            raise ConfigError(f"layer sizes must be positive integers such as 512,512, got {text!r}")
        if f.metadata.get("range") and kind in ("int", "float"):
            raise ConfigError(f"expected {_expected(f)}, got {text}")
        raise ConfigError(problem)
    return value


def _expected(f: dataclasses.Field) -> str:
    """'a positive integer', 'a number >= 0', 'a number in (0, 1]'... for a number field."""
    integer = _kind(f)[0] in ("int", "tuple")
    noun = "an integer" if integer else "a number"
    if not f.metadata.get("range"):
        return noun
    low, open_low, high, _ = f.metadata["range"]
    if high is None and ((low == 1 and integer) or (low == 0 and open_low)):
        return "a positive integer" if integer else "a positive number"
    return f"{noun} {_range_text(f)}"


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
# ... but never more than this many epochs: on a folder of 731 images (274 epochs) the test
# bound was best after 60-100 epochs and 0.85 bits/dim worse by the end (docs/colour.md).
EIGHT_BIT_MAX_EPOCHS = 100
# Over the recipe's own number of epochs (`eight_bit_epochs`), its learning rate falls by this
# factor. The per-epoch decay does not depend on --epochs, so that a run resumed to more epochs
# follows the curve an uninterrupted run of that length follows (it keeps falling past them).
EIGHT_BIT_LR_FALL = 0.1


# The ladder model (top-down hierarchy) overrides these recipe fields of whichever recipe the
# data takes: residual stages of 64 channels with one cell per level (Havtorn et al. 2021 use
# 64-channel stages), a KL warm-up (Sønderby et al. 2016 call it crucial for deep
# hierarchies), a moderate learning rate and clipping, and gradient skipping (Child 2021).
LADDER = "ladder"
LADDER_RECIPE: dict[str, dict[str, Any]] = {
    "model": {"hidden": (64,), "res_blocks": 1},
    "train": {"lr": 1e-3, "clip_grad": 200.0, "kl_warmup": 5.0, "free_bits": 2.0, "free_bits_cooldown": 10.0},
}
# ... and skips a step whose gradient norm passes this many times the number of pixel values:
# on binary 28x28 digits (3136) the norms of a fresh ladder start near 1,500 and fall to 50-300
# within three epochs, so only an outlier several times the first steps' norm is skipped. 8-bit
# colour under the logistic mixture has far larger gradients: on 32x32x3 colour digits the norms
# of a fresh ladder ran 10,000-70,000 (3-23 per value) over its first four epochs, rising with
# the KL warm-up, so at 4 per value every step was skipped and the run stopped.
LADDER_SKIP_PER_VALUE = 4.0
LADDER_SKIP_PER_VALUE_8BIT = 50.0
# ... and reads neither the encoder/decoder net nor a single code's size: its nets and codes are
# its levels (`levels`, `hidden` as their width, `res_blocks` cells each)
LADDER_IGNORES = ("model.net", "model.latent_dim", "model.decoder_hidden")


@dataclass(frozen=True)
class DataFacts:
    """What `resolve` needs to know of a dataset."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    n_train: int
    # a binary benchmark (MNIST family), or images whose pixels are all 0 or 255
    binary: bool


def parse_levels(text: str) -> tuple[tuple[int, ...], ...]:
    """Latent levels from their text, the one next to the data first: ``"8x14x14,16,8"`` ->
    ((8, 14, 14), (16,), (8,)); a ConfigError names what is wrong. Spatial levels are C x H x W,
    vectors D, and no spatial level sits above a vector."""
    levels = []
    for part in text.replace(" ", "").lower().split(","):
        try:
            shape = tuple(int(p) for p in part.split("x"))
        except ValueError:
            shape = ()
        if len(shape) not in (1, 3) or min(shape) < 1:
            raise ConfigError(f"model.levels: {part!r} is not a level; write CxHxW (e.g. 8x14x14) or a vector size "
                              f"D (e.g. 16), bottom level first, such as 8x14x14,16,8")
        levels.append(shape)
    vector = [len(s) == 1 for s in levels]
    if any(vector[i] and not vector[i + 1] for i in range(len(levels) - 1)):
        raise ConfigError(f"model.levels {text}: a spatial level sits above a vector level; list the spatial levels "
                          "first (bottom first), then the vectors")
    return tuple(levels)


def check_levels(text: str, height: int, width: int) -> tuple[tuple[int, ...], ...]:
    """The levels of `text` (``parse_levels``), checked against images of height x width: each
    spatial level's sides are the image's divided by the same power of 2, and no level is larger
    than the one below it; a one-line ConfigError otherwise."""
    levels = parse_levels(text)
    previous = 1
    for shape in levels:
        if len(shape) == 1:
            continue
        _, h, w = shape
        factor = height // h if h and height % h == 0 else 0
        if not factor or factor & (factor - 1) or w * factor != width:
            raise ConfigError(f"model.levels: a {h}x{w} level does not fit {height}x{width} images; its sides must "
                              f"be the image's divided by a power of 2 (e.g. {height // 2}x{width // 2} when both "
                              "sides are even)")
        if factor < previous:
            raise ConfigError(f"model.levels {text}: a {h}x{w} level sits above a smaller one; list the levels from "
                              "the largest (next to the data) to the smallest")
        previous = factor
    return levels


def ladder_levels(facts: DataFacts) -> str:
    """The ladder recipe's levels for a dataset: binary images get Havtorn et al. 2021's
    8 x (H/2) x (W/2), 16, 8 (a vector pair only when the sides are odd); 8-bit images get
    8-channel spatial levels at the sizes between 16 and 4 pixels a side reached by halving
    (32x32 and 64x64: 16x16, 8x8, 4x4), or vectors 32,16 when none is reached."""
    _, h, w = facts.image_shape
    if facts.binary:
        return (f"8x{h // 2}x{w // 2}," if h % 2 == 0 and w % 2 == 0 else "") + "16,8"
    sides, f = [], 2
    while h % f == 0 and w % f == 0 and min(h, w) // f >= 4 and len(sides) < 3:
        if max(h, w) // f <= 16:
            sides.append(f"8x{h // f}x{w // f}")
        f *= 2
    return ",".join(sides) or "32,16"


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
    """Epochs of the 8-bit recipe: EIGHT_BIT_IMAGES images in all, between 1 and
    EIGHT_BIT_MAX_EPOCHS epochs."""
    return max(1, min(EIGHT_BIT_MAX_EPOCHS, round(EIGHT_BIT_IMAGES / facts.n_train)))


class _Picks:
    """What a recipe fills in: the values by section ("model": {"hidden": ...}) and, in the
    order chosen, each as text ("model.hidden": "32,64,128")."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {"data": {}, "model": {}, "train": {}}
        self.chosen: dict[str, str] = {}

    def __call__(self, where: str, value: Any) -> None:
        section, name = where.split(".")
        self.sections[section][name] = value
        self.chosen[where] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)

    def get(self, where: str, default: Any) -> Any:
        section, name = where.split(".")
        return self.sections[section].get(name, default)


def _recipe(model: str, facts: DataFacts) -> dict[str, dict[str, Any]]:
    """The data's recipe, with the ladder's own fields over it for the ladder model."""
    recipe = BINARY_RECIPE if facts.binary else EIGHT_BIT_RECIPE
    if model == LADDER:
        recipe = {k: {**v, **LADDER_RECIPE.get(k, {})} for k, v in recipe.items()}
    return recipe


def _pick_likelihood(cfg: Config, recipe: dict[str, dict[str, Any]], pick: _Picks) -> None:
    """The binarisation and the likelihood, each following the other where one was set: an
    explicit Bernoulli likelihood makes the binarisation dynamic, an explicit binarisation
    picks the likelihood that models it."""
    d, m = cfg.data, cfg.model
    if d.binarization == AUTO:
        if m.likelihood != AUTO:
            pick("data.binarization", "dynamic" if m.likelihood == "bernoulli" else "none")
        else:
            pick("data.binarization", recipe["data"]["binarization"])
    if m.likelihood == AUTO:
        binary = pick.get("data.binarization", d.binarization) != "none"
        pick("model.likelihood", "bernoulli" if binary else EIGHT_BIT_RECIPE["model"]["likelihood"])
    if m.likelihood_scale == AUTO:
        pick("model.likelihood_scale", recipe["model"]["likelihood_scale"])


def _pick_net(m: ModelConfig, recipe: dict[str, dict[str, Any]], h: int, w: int, pick: _Picks) -> None:
    """The net and its widths: the recipe's net where it fits h x w images (else the MLP),
    and widths for it (the resnet's from the image size, the others' from NET_WIDTHS)."""
    if m.net == AUTO:
        net = recipe["model"]["net"]
        if net == "resnet" and resnet_levels(h, w) < 2:
            net = "mlp"  # too small, or sides not divisible by 4: no conv levels fit
        pick("model.net", net)
    net = pick.get("model.net", m.net)
    if net == "resnet" and m.hidden is None and not resnet_levels(h, w):
        raise ConfigError(f"the resnet net needs image sides divisible by 2 and at least 8 pixels, got {h}x{w}; "
                          "pick an --image-size such as 32, or --net mlp")
    if m.hidden is None and "hidden" in recipe["model"]:
        pick("model.hidden", recipe["model"]["hidden"])
    elif m.hidden is None:
        if net == "resnet":
            widths, mirror = resnet_widths(h, w), None
        else:
            widths, mirror = NET_WIDTHS.get(net, NET_WIDTHS["mlp"])
        pick("model.hidden", widths)
        if m.decoder_hidden is None and mirror is not None:
            pick("model.decoder_hidden", mirror)


def _pick_numbers(cfg: Config, recipe: dict[str, dict[str, Any]], pick: _Picks) -> None:
    """The recipe's sizes and optimiser numbers left unset; the IWAE bound has no KL term to
    warm up."""
    m, t = cfg.model, cfg.train
    for name in ("latent_dim", "res_blocks"):
        if getattr(m, name) is None:
            pick(f"model.{name}", recipe["model"][name])
    for name in ("batch_size", "lr", "clip_grad", "kl_warmup"):
        if getattr(t, name) is None:
            pick(f"train.{name}", 0.0 if name == "kl_warmup" and t.objective == "iwae" else recipe["train"][name])


def default_skip_grad(model: str, facts: DataFacts) -> float:
    """--skip-grad left unset: off (0) but for the ladder, whose threshold grows with the
    number of pixel values (LADDER_SKIP_PER_VALUE each for binary images, ..._8BIT for grey
    levels and colour); the other models' numbers do not move."""
    per_value = LADDER_SKIP_PER_VALUE if facts.binary else LADDER_SKIP_PER_VALUE_8BIT
    return per_value * math.prod(facts.image_shape) if model == LADDER else 0.0


def _pick_ladder(m: ModelConfig, facts: DataFacts, pick: _Picks) -> None:
    """The ladder's levels, checked against the image size; the fields it does not read are
    still resolved for a complete config.json, but not said."""
    _, h, w = facts.image_shape
    if m.levels == AUTO:
        pick("model.levels", ladder_levels(facts))
    check_levels(pick.get("model.levels", m.levels), h, w)
    for unused in LADDER_IGNORES:
        pick.chosen.pop(unused, None)


def _pick_length(t: TrainConfig, recipe: dict[str, dict[str, Any]], facts: DataFacts, pick: _Picks) -> None:
    """The epochs and the learning rate's decay: the binary recipe's own, or the 8-bit
    recipe's from the number of images (`eight_bit_epochs`, EIGHT_BIT_LR_FALL over them)."""
    if t.epochs is None:
        pick("train.epochs", recipe["train"]["epochs"] if facts.binary else eight_bit_epochs(facts))
    if t.lr_decay is None:
        decay = recipe["train"]["lr_decay"] if facts.binary else \
            round(EIGHT_BIT_LR_FALL ** (1 / eight_bit_epochs(facts)), 6)
        pick("train.lr_decay", decay)


def resolve(cfg: Config, facts: DataFacts) -> tuple[Config, dict[str, str]]:
    """Fill every field left to the recipe (AUTO names, None numbers) from the data.

    Returns the complete config and, for each field chosen here, its value as text
    ("model.hidden": "32,64,128"). Fields the user set are kept, and the recipe's
    other choices follow them: an explicit Bernoulli likelihood makes the binarisation
    dynamic, an explicit binarisation picks the likelihood that models it.
    """
    m, (_, h, w) = cfg.model, facts.image_shape
    recipe, pick = _recipe(m.model, facts), _Picks()
    _pick_likelihood(cfg, recipe, pick)
    _pick_net(m, recipe, h, w, pick)
    _pick_numbers(cfg, recipe, pick)
    if cfg.train.skip_grad is None:
        pick("train.skip_grad", default_skip_grad(m.model, facts))
    if m.model == LADDER:
        _pick_ladder(m, facts, pick)
    for name in ("free_bits", "free_bits_cooldown"):  # off but for the ladder, and with IWAE (no KL term)
        if getattr(cfg.train, name) is None:
            on = m.model == LADDER and cfg.train.objective != "iwae"
            pick(f"train.{name}", LADDER_RECIPE["train"][name] if on else 0.0)
    _pick_length(cfg.train, recipe, facts, pick)
    if cfg.train.dataset_size is None:  # a fact of the data (tcvae's N): recorded in config.json, not announced
        pick.sections["train"]["dataset_size"] = facts.n_train
    return cfg.replace(**pick.sections), pick.chosen


# the fields a recipe fills when they are left unset (AUTO names, None numbers)
RECIPE_FIELDS = ("data.binarization", "model.net", "model.likelihood", "model.likelihood_scale", "model.hidden",
                 "model.latent_dim", "model.res_blocks", "model.levels", "train.epochs", "train.batch_size",
                 "train.lr", "train.lr_decay", "train.clip_grad", "train.kl_warmup", "train.free_bits",
                 "train.free_bits_cooldown", "train.skip_grad")


def unresolved(cfg: Config) -> list[str]:
    """The fields still left to the recipe (empty once `resolve` has run)."""
    out = []
    for name in RECIPE_FIELDS:
        if name == "model.levels" and cfg.model.model != LADDER:
            continue  # only the ladder model has levels
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is None or value == AUTO:
            out.append(name)
    return out


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
    r"""Read a config from a ``.json`` or ``.toml`` file with sections data, model and train.

    Sections and fields left out keep their defaults.

    Args:
        path: The file; a ``.toml`` suffix reads TOML, any other JSON.

    Returns:
        The checked Config.

    Raises:
        ConfigError: The file is missing, cannot be parsed or holds an invalid config.

    Examples:
        >>> from pathlib import Path
        >>> from vaelab.config import load
        >>> _ = Path(tmp, "small.toml").write_text('[model]\nlatent_dim = 8\n')
        >>> load(Path(tmp, "small.toml")).model.latent_dim
        8
    """
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
    """Write a config to `path` as indented JSON, the format of a run's ``config.json``.

    Args:
        cfg: The config to write.
        path: The file to write (replaced if it exists).

    Examples:
        >>> from pathlib import Path
        >>> from vaelab.config import Config, load, save
        >>> save(Config().replace(train={"epochs": 3}), Path(tmp, "config.json"))
        >>> load(Path(tmp, "config.json")).train.epochs
        3
    """
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
