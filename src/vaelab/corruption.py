"""Corrupted images: the noise of denoising training and of the noise-removal experiment.

Three kinds: ``uniform``, ``salt-pepper`` and ``gaussian`` (Vincent et al. 2008 and 2010
train denoising autoencoders on masking, salt-and-pepper and Gaussian corruptions). In
training, the noise is tied to each image by counter-based numbers, so an image is
corrupted alike in any batch or process.
"""

from __future__ import annotations

import torch

from vaelab.config import NOISE_KINDS
from vaelab.noise import counter_uniform, pixel_uniform

__all__ = ["add_noise", "corrupt", "PixelNoise"]


class PixelNoise:
    """Random numbers tied to images, the same in any batch or process.

    The numbers for image `idx[b]`, pixel p and stream s depend only on those and `key`, not
    on the batch the image lands in or the process that draws it. Pass one as the `generator`
    of ``add_noise`` to corrupt each image alike every time. Streams 0-1: uniforms for
    ``add_noise``, 2-3: its normals (Box-Muller), 4: one number per image.

    Args:
        idx: The images' indices in their split, (B,) integers; B is the batch.
        key: The stream of the noise, e.g. a seed: other keys give other noise.

    Examples:
        >>> from vaelab.corruption import PixelNoise
        >>> like = torch.zeros(2, 1, 4, 4)                    # the images' shape (B, C, H, W)
        >>> noise = PixelNoise(torch.tensor([3, 7]), key=0)
        >>> noise.rand(like, 0).shape, noise.randn(like).shape, noise.per_image().shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2, 1, 4, 4]), torch.Size([2]))
        >>> alone = PixelNoise(torch.tensor([7]), key=0).rand(like[:1], 0)   # image 7 in a batch of its own
        >>> torch.equal(alone[0], noise.rand(like, 0)[1])
        True
    """

    STREAMS = 8

    def __init__(self, idx: torch.Tensor, key: int) -> None:
        self.idx, self.key = idx.to(torch.int64), key

    def _key(self, stream: int) -> int:
        # a key range of its own (bit 63), apart from the binarisation keys (seed * 4 + split)
        # and the reparameterisation keys (2 * ((seed << 32) + step) + 0 or 1)
        return (1 << 63) + self.STREAMS * self.key + stream

    def rand(self, like: torch.Tensor, stream: int) -> torch.Tensor:
        """Uniform numbers in [0, 1) for every pixel, from stream `stream`.

        Args:
            like: Images (B, C, H, W), B = len(idx): the shape, device and dtype wanted.
            stream: Which of the streams 0 .. STREAMS - 1 to draw from.

        Returns:
            Numbers of `like`'s shape (B, C, H, W) and dtype.
        """
        u = pixel_uniform(self.idx.to(like.device), like[0].numel(), self._key(stream))
        return u.view(like.shape).to(like.dtype)

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal numbers for every pixel: Box-Muller on streams 2 and 3.

        Args:
            like: Images (B, C, H, W), B = len(idx): the shape, device and dtype wanted.

        Returns:
            N(0, 1) numbers of `like`'s shape (B, C, H, W) and dtype.
        """
        r = torch.sqrt(-2.0 * torch.log1p(-self.rand(like, 2)))  # log(1 - u), u in [0, 1): finite
        return r * torch.cos(2 * torch.pi * self.rand(like, 3))

    def per_image(self) -> torch.Tensor:
        """One uniform number in [0, 1) per image (stream 4), e.g. its noise level.

        Returns:
            float32 numbers (B,) on idx's device.
        """
        return counter_uniform(self.idx, self._key(4))


def _rand(x: torch.Tensor, generator: torch.Generator | PixelNoise | None, stream: int) -> torch.Tensor:
    if isinstance(generator, PixelNoise):
        return generator.rand(x, stream)
    return torch.rand(x.shape, generator=generator, device=x.device)


def add_noise(x: torch.Tensor, kind: str, level: float | torch.Tensor,
              generator: torch.Generator | PixelNoise | None = None) -> torch.Tensor:
    """Corrupt images with noise: the corruptions of denoising training, of the denoise figure
    (``vaelab plot --what denoise``) and of ``vaelab serve``.

    ``uniform`` adds U(0, 1) to a fraction `level` of the pixels and clips at 1,
    ``salt-pepper`` sets a fraction `level` to 0 or 1 (a fair coin each), ``gaussian`` adds
    N(0, level^2) to every pixel and clips to [0, 1].

    Args:
        x: Float images (B, C, H, W) with pixels in [0, 1].
        kind: ``"uniform"``, ``"salt-pepper"`` or ``"gaussian"``.
        level: The fraction of pixels hit (uniform, salt-pepper) or the standard deviation
            (gaussian): a number, or one per image (B,).
        generator: Where the noise comes from: a torch.Generator, a ``PixelNoise``
            tied to the images, or None for torch's global random state.

    Returns:
        The corrupted images, float (B, C, H, W) in [0, 1], on x's device.

    Raises:
        ValueError: `kind` is not one of the three.

    Examples:
        >>> from vaelab.corruption import add_noise
        >>> x = torch.full((2, 1, 28, 28), 0.5)
        >>> g = torch.Generator().manual_seed(0)
        >>> y = add_noise(x, "salt-pepper", 0.25, g)
        >>> y.shape, sorted(y.unique().tolist())
        (torch.Size([2, 1, 28, 28]), [0.0, 0.5, 1.0])
        >>> abs((y != x).float().mean().item() - 0.25) < 0.05      # about a quarter of the pixels hit
        True
        >>> y = add_noise(x, "uniform", torch.tensor([0.0, 1.0]), g)   # one level per image
        >>> (y != x).float().mean((1, 2, 3))
        tensor([0., 1.])
        >>> add_noise(x, "blur", 0.1)
        Traceback (most recent call last):
        ...
        ValueError: unknown noise 'blur'; choose uniform, salt-pepper, gaussian
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
    """The encoder's input in denoising training: images corrupted alike in any batch or process.

    Each image gets `denoise` = (kind, low, high) noise (see ``add_noise``) at a level
    drawn per image uniformly in [low, high] (low == high: that level). All of it is tied to
    (key, image index), so an image is corrupted alike in any batch or process.

    Args:
        x: Float images (B, C, H, W) with pixels in [0, 1].
        idx: The images' indices in their split, (B,) integers on x's device.
        denoise: (kind, low, high): the noise kind and the range of its level.
        key: The stream of the noise, e.g. derived from the seed and the training step
            (``vaelab.training.noise_key``).

    Returns:
        The corrupted images, float (B, C, H, W) in [0, 1].

    Examples:
        >>> from vaelab.corruption import corrupt
        >>> x = torch.rand(4, 1, 8, 8)
        >>> y = corrupt(x, torch.arange(4), ("salt-pepper", 0.1, 0.5), key=0)
        >>> y.shape
        torch.Size([4, 1, 8, 8])
        >>> torch.equal(corrupt(x[2:], torch.arange(2, 4), ("salt-pepper", 0.1, 0.5), key=0), y[2:])
        True
    """
    kind, low, high = denoise
    noise = PixelNoise(idx, key)
    level = low if low == high else low + (high - low) * noise.per_image()
    return add_noise(x, kind, level, noise)
