"""Backbones: networks that map tensors to distribution *parameters*.

No probability code lives here; :mod:`vaelab.distributions` turns the outputs into
distributions. Every encoder maps (B, C, H, W) -> (B, out_features); every decoder
maps (B, latent_dim) -> (B, out_channels, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

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
    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], out_features: int,
                 activation: str = "relu") -> None:
        super().__init__()
        self.net = mlp([math.prod(image_shape), *hidden, out_features], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out)
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: Sequence[int], out_shape: Sequence[int],
                 activation: str = "relu") -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = mlp([latent_dim, *reversed(hidden), math.prod(out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, *out_shape)
        return self.net(z).unflatten(-1, self.out_shape)


# name -> (encoder class, decoder class). Decoders take hidden sizes listed from the
# input (encoder order) and reverse them, so the same tuple gives a mirrored pair.
NETS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "mlp": (MLPEncoder, MLPDecoder),
}
