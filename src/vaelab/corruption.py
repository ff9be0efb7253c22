"""Corrupted images: the noise of denoising training and of the noise-removal experiment.

Three kinds (``uniform``, ``salt-pepper``, ``gaussian``; Vincent et al. 2008 train
denoising autoencoders on such corruptions). In training, the noise is tied to each image
by counter-based numbers, so an image is corrupted alike in any batch or process.
"""

from __future__ import annotations

import torch

from vaelab.config import NOISE_KINDS
from vaelab.noise import counter_uniform, pixel_uniform


class PixelNoise:
    """Noise tied to images: the numbers for image `idx[b]`, pixel p and stream s depend only
    on those and `key`, not on the batch the image lands in or the process that draws it.
    Streams 0-1: uniforms for `add_noise`, 2-3: its normals (Box-Muller), 4: per image."""

    STREAMS = 8

    def __init__(self, idx: torch.Tensor, key: int) -> None:
        self.idx, self.key = idx.to(torch.int64), key

    def _key(self, stream: int) -> int:
        # a key range of its own (bit 63), apart from the binarisation keys (seed * 4 + split)
        # and the reparameterisation keys (2 * ((seed << 32) + step) + 0 or 1)
        return (1 << 63) + self.STREAMS * self.key + stream

    def rand(self, like: torch.Tensor, stream: int) -> torch.Tensor:
        """U[0, 1) numbers of `like`'s shape (B, C, H, W) and dtype, from stream `stream`."""
        u = pixel_uniform(self.idx.to(like.device), like[0].numel(), self._key(stream))
        return u.view(like.shape).to(like.dtype)

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        """N(0, 1) numbers of `like`'s shape, Box-Muller on streams 2 and 3."""
        r = torch.sqrt(-2.0 * torch.log1p(-self.rand(like, 2)))  # log(1 - u), u in [0, 1): finite
        return r * torch.cos(2 * torch.pi * self.rand(like, 3))

    def per_image(self) -> torch.Tensor:
        """One U[0, 1) number per image (B,), on idx's device."""
        return counter_uniform(self.idx, self._key(4))


def _rand(x: torch.Tensor, generator: torch.Generator | PixelNoise | None, stream: int) -> torch.Tensor:
    if isinstance(generator, PixelNoise):
        return generator.rand(x, stream)
    return torch.rand(x.shape, generator=generator, device=x.device)


def add_noise(x: torch.Tensor, kind: str, level: float | torch.Tensor,
              generator: torch.Generator | PixelNoise | None = None) -> torch.Tensor:
    """Corrupt images x (B, C, H, W) in [0, 1]: ``uniform`` adds U(0, 1) to a fraction `level`
    of the pixels and clips at 1, ``salt-pepper`` sets a
    fraction `level` to 0 or 1 (a fair coin each), ``gaussian`` adds N(0, level^2) to every
    pixel and clips to [0, 1].

    `level`: a number, or one per image (B,). The noise comes from a torch.Generator (or
    the global RNG) or from a :class:`PixelNoise` tied to the images.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise {kind!r}; choose {', '.join(NOISE_KINDS)}")
    if torch.is_tensor(level):
        level = level.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)
    if kind == "gaussian":
        eps = generator.randn(x) if isinstance(generator, PixelNoise) else torch.randn(
            x.shape, generator=generator, device=x.device)
        return (x + level * eps).clamp(0, 1)
    hit = _rand(x, generator, 0) < level
    if kind == "uniform":
        return torch.where(hit, (x + _rand(x, generator, 1)).clamp(max=1), x)
    return torch.where(hit, (_rand(x, generator, 1) < 0.5).to(x.dtype), x)  # salt-pepper


def corrupt(x: torch.Tensor, idx: torch.Tensor, denoise: tuple[str, float, float], key: int) -> torch.Tensor:
    """The encoder's input in denoising training: images x (B, C, H, W) with indices idx (B,)
    in their split (on x's device), corrupted by `denoise` = (kind, low, high) noise at a
    level drawn per image uniformly in [low, high] (low == high: that level). All of it is
    tied to (key, image), so an image is corrupted alike in any batch or process."""
    kind, low, high = denoise
    noise = PixelNoise(idx, key)
    level = low if low == high else low + (high - low) * noise.per_image()
    return add_noise(x, kind, level, noise)
