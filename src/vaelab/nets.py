"""Backbones: networks that map tensors to distribution *parameters*.

Encoders take an optional condition vector c (appended to their input features);
conditional decoders are ordinary decoders whose input is the concatenation [z, c].

``hidden`` means layer widths for MLPs; for conv nets it gives the channel width of
each 2x downsampling level, so ``len(hidden)`` is the depth in levels and H and W must
each be divisible by 2**len(hidden) (any C x H x W, non-square included).
``res_blocks`` (conv nets only) adds that many residual blocks per level at the level's
resolution: in the encoder after its stride-2 conv, in the decoder before its upsampling.

No probability code lives here; ``vaelab.distributions`` turns the outputs into
distributions. Every encoder maps (B, C, H, W) -> (B, out_features); every decoder
maps (B, latent_dim) -> (B, out_channels, H, W).

``NETS`` maps a ``--net`` name to its (encoder class, decoder class) pair and ``ACTIVATIONS``
an ``--activation`` name to its ``nn.Module`` class; models look ``ModelConfig.net`` and
``ModelConfig.activation`` up in them when they are built. The nets' own default activation
is ``relu``; the models' (``ModelConfig.activation``) is ``elu``, so a net built here to
match a vaelab model needs ``activation="elu"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vaelab.config import ConfigError

__all__ = [
    "ACTIVATIONS",
    "NETS",
    "mlp",
    "MLPEncoder",
    "MLPDecoder",
    "ResBlock",
    "ConvEncoder",
    "SubPixelDecoder",
    "TransposedConvDecoder",
    "ResNetEncoder",
    "ResNetDecoder",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}
"""Activation name (``ModelConfig.activation``, ``--activation``) -> its ``nn.Module`` class."""


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """A multilayer perceptron: linear layers of the given widths with an activation between them.

    No activation follows the last layer, so the output can be any real number (a mean, a
    log-scale, a logit). This is the building block of the MLP encoder and decoder and of the
    layers between the stochastic layers of ``vaelab.models.HVAE``.

    Args:
        sizes: Widths from input to output, e.g. ``[784, 512, 20]``: ``len(sizes) - 1`` linear
            layers mapping (B, sizes[0]) -> (B, sizes[-1]).
        activation: A name from ``ACTIVATIONS``: relu, elu, gelu, silu, tanh or softplus.

    Returns:
        An ``nn.Sequential`` mapping (B, sizes[0]) -> (B, sizes[-1]).

    Examples:
        >>> from vaelab.nets import mlp
        >>> net = mlp([10, 32, 4], "elu")
        >>> net
        Sequential(
          (0): Linear(in_features=10, out_features=32, bias=True)
          (1): ELU(alpha=1.0)
          (2): Linear(in_features=32, out_features=4, bias=True)
        )
        >>> net(torch.randn(3, 10)).shape
        torch.Size([3, 4])
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """A fully connected encoder: flattens each image, appends an optional condition and runs an MLP.

    Maps images (B, C, H, W) [+ a condition (B, cond_dim)] to features (B, out_features),
    which a model reads as the parameters of q(z|x) (e.g. a mean and a log-std per latent
    dimension, so ``out_features = 2 * D``). Any image shape works.

    Args:
        image_shape: (C, H, W) of the input images.
        hidden: Hidden layer widths, from the input onwards, e.g. ``(512, 512)``.
        out_features: Width of the output.
        activation: A name from ``ACTIVATIONS`` (relu, elu, gelu, silu, tanh, softplus).
        cond_dim: Features of the condition appended to the flattened image; 0 for none.

    Examples:
        >>> from vaelab.nets import MLPEncoder
        >>> enc = MLPEncoder((1, 28, 28), hidden=(64,), out_features=4)
        >>> enc(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5, 4])
        >>> enc = MLPEncoder((1, 28, 28), hidden=(64,), out_features=4, cond_dim=10)
        >>> enc(torch.rand(5, 1, 28, 28), torch.eye(10)[:5]).shape
        torch.Size([5, 4])
    """

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        self.net = mlp([math.prod(image_shape) + cond_dim, *hidden, out_features], activation)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images x (B, C, H, W), with conditions c (B, cond_dim) if built with a
        ``cond_dim``, into features (B, out_features)."""
        h = x.flatten(1)
        return self.net(h if c is None else torch.cat([h, c], 1))


class MLPDecoder(nn.Module):
    """A fully connected decoder: an MLP from a code to one output map per image.

    Maps codes (B, latent_dim) to (B, *out_shape), typically the likelihood's parameters
    per pixel, (B, C_out, H, W). ``hidden`` is given in encoder order (from the image
    inwards) and applied reversed, so the same widths give a mirror of ``MLPEncoder``.

    Args:
        latent_dim: Input width: the code size D (plus the condition size for conditional
            models, whose decoders see [z, c]).
        hidden: Hidden widths in encoder order; the decoder uses them reversed.
        out_shape: Shape of one output, e.g. (C_out, H, W).
        activation: A name from ``ACTIVATIONS``.

    Examples:
        >>> from vaelab.nets import MLPDecoder
        >>> dec = MLPDecoder(latent_dim=2, hidden=(64, 32), out_shape=(1, 28, 28))
        >>> [m.out_features for m in dec.net if isinstance(m, torch.nn.Linear)]
        [32, 64, 784]
        >>> dec(torch.randn(5, 2)).shape
        torch.Size([5, 1, 28, 28])
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu") -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = mlp([latent_dim, *reversed(hidden), math.prod(out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode codes z (B, latent_dim) into outputs (B, *out_shape), e.g. (B, C_out, H, W)."""
        return self.net(z).unflatten(-1, self.out_shape)


def _check_divisible(image_shape: Sequence[int], levels: int) -> tuple[int, int]:
    _, h, w = image_shape
    if levels < 1:
        raise ConfigError("a conv net needs at least one channel width in --hidden, e.g. --hidden 32,64")
    f = 2**levels
    if h % f or w % f:
        raise ConfigError(
            f"a conv net with {levels} downsampling levels needs height and width divisible by {f}, "
            f"got {h}x{w}; use fewer --hidden channel widths or --net mlp"
        )
    return h // f, w // f


class ResBlock(nn.Module):
    """A pre-activation residual block, x + conv3x3(act(conv3x3(act(x)))), that keeps the shape.

    Maps (B, C, H, W) to the same shape. The branch follows the pre-activation ordering of
    He et al. 2016; its last conv starts at zero (Goyal et al. 2017; Zhang et al. 2019), so
    a new block is the identity and adding blocks does not change a net at initialisation.
    There is no normalisation, so training and evaluation modes compute the same function.

    Args:
        channels: C, the channels in and out.
        act: The activation class, e.g. ``torch.nn.ELU`` (a class, not a name).

    Examples:
        >>> from vaelab.nets import ResBlock
        >>> block = ResBlock(8, torch.nn.ELU)
        >>> x = torch.randn(2, 8, 7, 5)
        >>> block(x).shape
        torch.Size([2, 8, 7, 5])
        >>> torch.equal(block(x), x)  # the identity until trained
        True
    """

    def __init__(self, channels: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.branch = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1),
                                    act(), nn.Conv2d(channels, channels, 3, padding=1))
        # zero-init residual branch (Goyal et al. 2017; Fixup, Zhang et al. 2019): each
        # block starts as the identity, so a deep net starts as the plain one
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the residual branch to x (B, C, H, W); the result has the same shape."""
        return x + self.branch(x)


def _res_blocks(n: int, channels: int, act: type[nn.Module]) -> list[nn.Module]:
    if n < 0:
        raise ConfigError(f"res_blocks must be >= 0, got {n}")
    return [ResBlock(channels, act) for _ in range(n)]


def _downsampling_levels(image_shape: Sequence[int], hidden: Sequence[int], out_features: int, cond_dim: int,
                         level) -> tuple[nn.Module, nn.Module]:
    """What the conv encoders share: (features, head). `features` run each level's layers,
    ``level(c_in, c)`` (a 2x downsampling to c channels and its residual blocks), from the
    image inwards, then flatten; `head` maps the flattened features [+ condition] to
    `out_features`."""
    h, w = _check_divisible(image_shape, len(hidden))
    layers: list[nn.Module] = []
    for c_in, c in zip([image_shape[0], *hidden], hidden):
        layers += level(c_in, c)
    return nn.Sequential(*layers, nn.Flatten()), nn.Linear(hidden[-1] * h * w + cond_dim, out_features)


def _upsampling_levels(latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int], act: type[nn.Module],
                       level) -> tuple[tuple[int, int, int], nn.Module, list[nn.Module]]:
    """What the conv decoders share: (start, fc, layers). `fc` maps a code (B, latent_dim) to the
    deepest level's map, flattened, of shape `start` (C, H / 2^L, W / 2^L); `layers` are each
    level's, ``level(c_in, c_out)`` (its residual blocks and a 2x upsampling), deepest level
    first, ending at full resolution with hidden[0] channels."""
    h, w = _check_divisible(out_shape, len(hidden))
    widths = list(reversed(hidden))  # deepest level first
    fc = nn.Sequential(nn.Linear(latent_dim, widths[0] * h * w), act())
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
        layers += level(c_in, c_out)
    return (widths[0], h, w), fc, layers


class ConvEncoder(nn.Module):
    """A convolutional encoder that halves the resolution at each level, then a linear head.

    Each level is a 3x3 conv and a stride-2 3x3 conv to that level's channel width, followed
    by ``res_blocks`` residual blocks (``ResBlock``); a linear layer maps the flattened
    features [+ condition] to ``out_features``.
    Maps (B, C, H, W) [+ (B, cond_dim)] -> (B, out_features).

    Args:
        image_shape: (C, H, W) of the inputs; H and W must each be divisible by
            ``2 ** len(hidden)`` (non-square images are fine).
        hidden: Channel width of each level, e.g. ``(32, 64)`` for two levels.
        out_features: Width of the output.
        activation: A name from ``ACTIVATIONS``.
        cond_dim: Features of a condition appended to the flattened features; 0 for none.
        res_blocks: Residual blocks per level, after its downsampling conv.

    Raises:
        ConfigError: H or W is not divisible by ``2 ** len(hidden)``, or ``hidden`` is empty.

    Examples:
        >>> from vaelab.nets import ConvEncoder
        >>> enc = ConvEncoder((3, 16, 24), hidden=(8, 16), out_features=6, res_blocks=1)
        >>> enc(torch.rand(2, 3, 16, 24)).shape
        torch.Size([2, 6])
    """

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0, *, res_blocks: int = 0) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]

        def level(c_in: int, c: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c, 3, padding=1), act(), nn.Conv2d(c, c, 3, stride=2, padding=1), act(),
                    *_res_blocks(res_blocks, c, act)]

        self.features, self.head = _downsampling_levels(image_shape, hidden, out_features, cond_dim, level)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images x (B, C, H, W), with conditions c (B, cond_dim) if built with a
        ``cond_dim``, into features (B, out_features)."""
        h = self.features(x)
        return self.head(h if c is None else torch.cat([h, c], 1))


class SubPixelDecoder(nn.Module):
    """A convolutional decoder, the mirror of ``ConvEncoder``, that upsamples by sub-pixel convolution.

    A linear layer maps the code to the deepest level's feature map; at each level a 3x3 conv
    to 4 * C' channels and a pixel shuffle rearrange them into a twice larger C'-channel map
    (Shi et al. 2016); a last 3x3 conv gives the output channels. ``res_blocks`` residual
    blocks (``ResBlock``) precede each upsampling, at the resolution of the matching
    encoder level. Maps (B, latent_dim) -> (B, C_out, H, W) for out_shape (C_out, H, W), any C_out.

    Args:
        latent_dim: Input width (code size, plus the condition size for conditional models).
        hidden: Channel widths in encoder order (from the image inwards); used reversed.
        out_shape: (C_out, H, W); H and W must each be divisible by ``2 ** len(hidden)``.
        activation: A name from ``ACTIVATIONS``.
        res_blocks: Residual blocks per level, before its upsampling.

    Raises:
        ConfigError: H or W is not divisible by ``2 ** len(hidden)``, or ``hidden`` is empty.

    Examples:
        >>> from vaelab.nets import SubPixelDecoder
        >>> dec = SubPixelDecoder(latent_dim=4, hidden=(8, 16), out_shape=(3, 16, 24))
        >>> dec.start  # the deepest level's map: 16 channels at 16/4 x 24/4
        (16, 4, 6)
        >>> dec(torch.randn(2, 4)).shape
        torch.Size([2, 3, 16, 24])
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu", *, res_blocks: int = 0) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        act = ACTIVATIONS[activation]
        self.start, self.fc, layers = _upsampling_levels(
            latent_dim, hidden, out_shape, act,
            lambda c_in, c_out: [*_res_blocks(res_blocks, c_in, act), *self.upsample(c_in, c_out, act)])
        self.net = nn.Sequential(*layers, nn.Conv2d(hidden[0], out_shape[0], 3, padding=1))

    @staticmethod
    def upsample(c_in: int, c_out: int, act: type[nn.Module]) -> list[nn.Module]:
        """The layers of one 2x upsampling level, (B, c_in, h, w) -> (B, c_out, 2h, 2w): a 3x3
        conv to 4 * c_out channels, the activation, then a pixel shuffle. Subclasses override
        this to change how the decoder upsamples."""
        return [nn.Conv2d(c_in, 4 * c_out, 3, padding=1), act(), nn.PixelShuffle(2)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode codes z (B, latent_dim) into outputs (B, C_out, H, W)."""
        return self.net(self.fc(z).view(-1, *self.start))


class TransposedConvDecoder(SubPixelDecoder):
    """``SubPixelDecoder`` with each upsampling done by a stride-2 transposed convolution instead.

    Kept for comparison with the other upsamplers (``--net conv-transpose``): transposed
    convolutions are prone to checkerboard artefacts (Odena et al. 2016).
    Same arguments and shapes as ``SubPixelDecoder``: (B, latent_dim) -> (B, C_out, H, W).

    Examples:
        >>> from vaelab.nets import TransposedConvDecoder
        >>> dec = TransposedConvDecoder(latent_dim=4, hidden=(8, 16), out_shape=(1, 28, 28))
        >>> dec(torch.randn(2, 4)).shape
        torch.Size([2, 1, 28, 28])
        >>> sum(isinstance(m, torch.nn.ConvTranspose2d) for m in dec.net)
        2
    """

    @staticmethod
    def upsample(c_in: int, c_out: int, act: type[nn.Module]) -> list[nn.Module]:
        """One 2x upsampling level, (B, c_in, h, w) -> (B, c_out, 2h, 2w): a 4x4 stride-2
        transposed conv and the activation."""
        return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]


class ResNetEncoder(nn.Module):
    """A residual convolutional encoder for 8-bit (grey-level or colour) images.

    Inputs in [0, 1] are first centred to [-1, 1]. Each level is one stride-2 3x3 conv to the
    level's width and ``res_blocks`` residual blocks (``ResBlock``); a linear layer maps
    the flattened features [+ condition] to ``out_features``. One conv per level (not two, as
    in ``ConvEncoder``) halves the work at full resolution.
    Maps (B, C, H, W) [+ (B, cond_dim)] -> (B, out_features).

    Args:
        image_shape: (C, H, W) of the inputs; H and W must each be divisible by
            ``2 ** len(hidden)``.
        hidden: Channel width of each level.
        out_features: Width of the output.
        activation: A name from ``ACTIVATIONS``.
        cond_dim: Features of a condition appended to the flattened features; 0 for none.
        res_blocks: Residual blocks per level, after its downsampling conv.

    Raises:
        ConfigError: H or W is not divisible by ``2 ** len(hidden)``, or ``hidden`` is empty.

    Examples:
        >>> from vaelab.nets import ResNetEncoder
        >>> enc = ResNetEncoder((3, 32, 32), hidden=(8, 16, 16), out_features=10, res_blocks=1)
        >>> enc(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0, *, res_blocks: int = 0) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]

        def level(c_in: int, c: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c, 3, stride=2, padding=1), act(), *_res_blocks(res_blocks, c, act)]

        self.features, self.head = _downsampling_levels(image_shape, hidden, out_features, cond_dim, level)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Encode images x (B, C, H, W) with values in [0, 1], with conditions c
        (B, cond_dim) if built with a ``cond_dim``, into features (B, out_features)."""
        h = self.features(2 * x - 1)
        return self.head(h if c is None else torch.cat([h, c], 1))


class ResNetDecoder(nn.Module):
    """A residual convolutional decoder, the mirror of ``ResNetEncoder``, with a 1x1 output head.

    A linear layer maps the code to the deepest level's feature map; each level then runs
    ``res_blocks`` residual blocks (``ResBlock``) and a 2x upsampling by
    resize-convolution (nearest-neighbour upsampling, then a 3x3 conv; Odena et al. 2016),
    which costs what a sub-pixel conv costs but leaves no checkerboard artefacts (sub-pixel
    upsampling can leave a grid across samples). A 1x1 conv
    head maps the full-resolution features to the likelihood's parameters, so a wide head (a
    10-component colour mixture has 100 channels) costs 9x less than a 3x3 one. Under
    autocast the head runs in fp32. Maps (B, latent_dim) -> (B, C_out, H, W).

    Args:
        latent_dim: Input width (code size, plus the condition size for conditional models).
        hidden: Channel widths in encoder order (from the image inwards); used reversed.
        out_shape: (C_out, H, W); H and W must each be divisible by ``2 ** len(hidden)``.
        activation: A name from ``ACTIVATIONS``.
        res_blocks: Residual blocks per level, before its upsampling.

    Raises:
        ConfigError: H or W is not divisible by ``2 ** len(hidden)``, or ``hidden`` is empty.

    Examples:
        >>> from vaelab.nets import ResNetDecoder
        >>> dec = ResNetDecoder(latent_dim=4, hidden=(8, 16), out_shape=(100, 16, 16), res_blocks=1)
        >>> dec.head
        Conv2d(8, 100, kernel_size=(1, 1), stride=(1, 1))
        >>> dec(torch.randn(2, 4)).shape
        torch.Size([2, 100, 16, 16])
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu", *, res_blocks: int = 0) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        act = ACTIVATIONS[activation]

        def level(c_in: int, c_out: int) -> list[nn.Module]:
            up = self.upsample(c_in, c_out, act)  # made before the blocks: a seed initialises it as it always has
            return [*_res_blocks(res_blocks, c_in, act), *up]

        self.start, self.fc, layers = _upsampling_levels(latent_dim, hidden, out_shape, act, level)
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv2d(hidden[0], out_shape[0], 1)

    @staticmethod
    def upsample(c_in: int, c_out: int, act: type[nn.Module]) -> list[nn.Module]:
        """One 2x upsampling level, (B, c_in, h, w) -> (B, c_out, 2h, 2w): nearest-neighbour
        upsampling, a 3x3 conv and the activation (resize-convolution)."""
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), act()]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode codes z (B, latent_dim) into outputs (B, C_out, H, W); the head in fp32 under autocast."""
        h = self.net(self.fc(z).view(-1, *self.start))
        if torch.is_autocast_enabled(h.device.type):
            # the head in fp32: bf16's 8-bit mantissa would put a pixel's location on a grid
            # as coarse as one grey level (2^-8 near 1)
            with torch.autocast(h.device.type, enabled=False):
                return self.head(h.float())
        return self.head(h)


NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, SubPixelDecoder),
    "conv-transpose": (ConvEncoder, TransposedConvDecoder),
    "resnet": (ResNetEncoder, ResNetDecoder),
}
"""Backbone name (``ModelConfig.net``, ``--net``) -> (encoder class, decoder class).

Decoders take hidden sizes listed from the input (encoder order) and reverse them, so the
same ``hidden`` gives a mirrored pair. Models build every net but ``mlp`` with the keyword
``res_blocks``."""
