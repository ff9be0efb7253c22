"""Backbones: networks that map tensors to distribution *parameters*.

Encoders take an optional condition vector c (appended to their input features);
conditional decoders are ordinary decoders whose input is the concatenation [z, c].

``hidden`` means layer widths for MLPs; for conv nets it gives the channel width of
each 2x downsampling level, so ``len(hidden)`` is the depth in levels and H and W must
each be divisible by 2**len(hidden) (any C x H x W, non-square included).
``res_blocks`` (conv nets only) adds that many residual blocks per level at the level's
resolution: in the encoder after its stride-2 conv, in the decoder before its upsampling.

No probability code lives here; :mod:`vaelab.distributions` turns the outputs into
distributions. Every encoder maps (B, C, H, W) -> (B, out_features); every decoder
maps (B, latent_dim) -> (B, out_channels, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from vaelab.config import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of `sizes` with `activation` between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """(B, C, H, W) [+ condition (B, cond_dim)] -> (B, out_features)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0) -> None:
        super().__init__()
        self.net = mlp([math.prod(image_shape) + cond_dim, *hidden, out_features], activation)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        return self.net(h if c is None else torch.cat([h, c], 1))


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu") -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = mlp([latent_dim, *reversed(hidden), math.prod(out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, *out_shape)
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
    """Pre-activation residual block x + conv3x3(act(conv3x3(act(x)))): (B, C, H, W) -> same.

    No normalisation, so training and evaluation modes compute the same function."""

    def __init__(self, channels: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.branch = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1),
                                    act(), nn.Conv2d(channels, channels, 3, padding=1))
        # zero-init residual branch (Goyal et al. 2017; Fixup, Zhang et al. 2019): each
        # block starts as the identity, so a deep net starts as the plain one
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _res_blocks(n: int, channels: int, act: type[nn.Module]) -> list[nn.Module]:
    if n < 0:
        raise ConfigError(f"res_blocks must be >= 0, got {n}")
    return [ResBlock(channels, act) for _ in range(n)]


class ConvEncoder(nn.Module):
    """Conv blocks: per level a 3x3 conv then a stride-2 3x3 conv, with
    `hidden` channel widths per level, each level followed by `res_blocks` ResBlocks; a
    linear layer maps the features [+ condition] to `out_features`.
    (B, C, H, W) [+ (B, cond_dim)] -> (B, out_features); H and W must each be divisible
    by 2**len(hidden)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0, *, res_blocks: int = 0) -> None:
        super().__init__()
        h, w = _check_divisible(image_shape, len(hidden))
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for c in hidden:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), act(), nn.Conv2d(c, c, 3, stride=2, padding=1), act()]
            layers += _res_blocks(res_blocks, c, act)
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * h * w + cond_dim, out_features)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        return self.head(h if c is None else torch.cat([h, c], 1))


class SubPixelDecoder(nn.Module):
    """Mirror of ConvEncoder that upsamples by sub-pixel convolution (Shi et al. 2016):
    at each level a 3x3 conv to 4 * C' channels and a pixel shuffle that rearranges
    them into a 2x larger C'-channel map; a last 3x3 conv gives the output channels.
    `res_blocks` ResBlocks precede each upsampling, at the resolution of the matching
    encoder level. (B, D) -> (B, *out_shape) with out_shape (C_out, H, W), any C_out;
    H and W must each be divisible by 2**len(hidden)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu", *, res_blocks: int = 0) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        h, w = _check_divisible(out_shape, len(hidden))
        act = ACTIVATIONS[activation]
        widths = list(reversed(hidden))  # deepest level first
        self.start = (widths[0], h, w)
        self.fc = nn.Sequential(nn.Linear(latent_dim, widths[0] * h * w), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
            layers += _res_blocks(res_blocks, c_in, act)
            layers += self.upsample(c_in, c_out, act)
        layers.append(nn.Conv2d(widths[-1], out_shape[0], 3, padding=1))
        self.net = nn.Sequential(*layers)

    @staticmethod
    def upsample(c_in: int, c_out: int, act: type[nn.Module]) -> list[nn.Module]:
        """One 2x upsampling level: conv to 4 * c_out channels, then pixel shuffle."""
        return [nn.Conv2d(c_in, 4 * c_out, 3, padding=1), act(), nn.PixelShuffle(2)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start))


class TransposedConvDecoder(SubPixelDecoder):
    """The same decoder upsampling with stride-2 transposed convolutions, for comparison."""

    @staticmethod
    def upsample(c_in: int, c_out: int, act: type[nn.Module]) -> list[nn.Module]:
        return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]


class ResNetEncoder(nn.Module):
    """A residual conv encoder for 8-bit images: per level one stride-2 3x3 conv to the
    level's width and `res_blocks` ResBlocks, then a linear map of the flattened features
    [+ condition] to `out_features`. Inputs in [0, 1] are centred to [-1, 1] first.
    One conv per level (not two, as in ConvEncoder) halves the full-resolution work.
    (B, C, H, W) [+ (B, cond_dim)] -> (B, out_features)."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu", cond_dim: int = 0, *, res_blocks: int = 0) -> None:
        super().__init__()
        h, w = _check_divisible(image_shape, len(hidden))
        act = ACTIVATIONS[activation]
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for c in hidden:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), act(), *_res_blocks(res_blocks, c, act)]
            c_in = c
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c_in * h * w + cond_dim, out_features)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(2 * x - 1)
        return self.head(h if c is None else torch.cat([h, c], 1))


class ResNetDecoder(nn.Module):
    """Mirror of ResNetEncoder: a linear map to the deepest level, then per level
    `res_blocks` ResBlocks and a 2x upsampling by resize-convolution (nearest-neighbour
    upsampling, then a 3x3 conv: Odena et al. 2016), which has the sub-pixel conv's cost but
    no checkerboard artefacts (with sub-pixel upsampling, prior samples of a colour VAE were
    crossed by a grid); a 1x1 conv head maps the full-resolution features to the
    likelihood's parameters, so a wide head (a 10-component colour mixture has 100
    channels) costs 9x less than a 3x3 one. (B, D) -> (B, *out_shape)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu", *, res_blocks: int = 0) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        h, w = _check_divisible(out_shape, len(hidden))
        act = ACTIVATIONS[activation]
        widths = list(reversed(hidden))  # deepest level first
        self.start = (widths[0], h, w)
        self.fc = nn.Sequential(nn.Linear(latent_dim, widths[0] * h * w), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
            up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1), act()]
            layers += [*_res_blocks(res_blocks, c_in, act), *up]
        self.net = nn.Sequential(*layers)
        self.head = nn.Conv2d(widths[-1], out_shape[0], 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.net(self.fc(z).view(-1, *self.start))
        if torch.is_autocast_enabled(h.device.type):
            # the head in fp32: bf16's 8-bit mantissa would put a pixel's location on a grid
            # as coarse as one grey level (2^-8 near 1)
            with torch.autocast(h.device.type, enabled=False):
                return self.head(h.float())
        return self.head(h)


# name -> (encoder class, decoder class). Decoders take hidden sizes listed from the
# input (encoder order) and reverse them, so the same tuple gives a mirrored pair.
NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
    "conv": (ConvEncoder, SubPixelDecoder),
    "conv-transpose": (ConvEncoder, TransposedConvDecoder),
    "resnet": (ResNetEncoder, ResNetDecoder),
}
