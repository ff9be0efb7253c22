"""Counter-based noise: random numbers that depend only on (key, counter).

A number drawn for an example depends on the example's index, the sample and the
dimension, not on the batch, device or process that draws it, so a data-parallel run on
N processes, or an evaluation sharded or chunked any way, draws exactly what one process
draws. The bottom of the library: batches use it for pixel noise, distributions for the
reparameterisation noise.
"""

from __future__ import annotations

import math

import torch

__all__ = ["counter_uniform", "pixel_uniform", "ExampleNoise", "normal_noise"]

_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _i64(v: int) -> int:
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(counters: torch.Tensor, key: int) -> torch.Tensor:
    """Uniform random numbers in [0, 1) that depend only on (key, counter).

    The splitmix64 finaliser (Steele et al. 2014) of counter + (key + 1) * golden ratio:
    a number depends only on (key, counter), not on the batch, device or process that
    draws it, so the same counter always gives the same number. 24 random bits each
    (float32's mantissa).

    Args:
        counters: int64 counters of any shape, e.g. (N,) or (B, D), on any device.
        key: The stream: different keys give independent-looking numbers for the same
            counters.

    Returns:
        float32 numbers in [0, 1) of the same shape as `counters`, on their device.

    Examples:
        >>> from vaelab.noise import counter_uniform
        >>> u = counter_uniform(torch.arange(4), key=7)
        >>> u
        tensor([0.7715, 0.5231, 0.7391, 0.8887])
        >>> counter_uniform(torch.tensor([[2, 3]]), key=7)   # counters 2 and 3 again: the same numbers
        tensor([[0.7391, 0.8887]])
        >>> torch.equal(counter_uniform(torch.arange(4), key=8), u)
        False
    """
    x = counters + _i64((key + 1) * _GOLDEN)
    x = (x ^ _lsr(x, 30)) * _i64(_M1)
    x = (x ^ _lsr(x, 27)) * _i64(_M2)
    x = x ^ _lsr(x, 31)
    return _lsr(x, 40).to(torch.float32) * 2.0**-24


class ExampleNoise:
    """Standard normal noise tied to examples, the same in any batch or process.

    The number for (example `idx[b]`, sample s, dimension d) depends only on those and
    `key`, so a data-parallel run on N processes, or an evaluation sharded or chunked any
    way, draws exactly what one process draws. Box-Muller on two counter-based uniforms
    (``counter_uniform``). Pass one as the `generator` of ``normal_noise`` or of a
    posterior's ``rsample`` (``vaelab.distributions``).

    Args:
        idx: The examples' indices in their split, (B,) integers; B is the batch.
        key: The stream, e.g. a seed: other keys give other noise.
        first_sample: The number of the first sample s drawn, to draw k samples in chunks
            (samples first_sample, first_sample + 1, ...).

    Examples:
        >>> from vaelab.noise import ExampleNoise
        >>> like = torch.zeros(())                      # the device and dtype of the noise
        >>> z = ExampleNoise(torch.tensor([10, 11, 12]), key=0).randn((3, 2), like)
        >>> z
        tensor([[ 2.3969,  2.0998],
                [-0.5424,  0.4829],
                [-1.2484, -0.2763]])
        >>> ExampleNoise(torch.tensor([12]), key=0).randn((1, 2), like)   # example 12 in a batch of its own
        tensor([[-1.2484, -0.2763]])
        >>> zs = ExampleNoise(torch.tensor([10, 11, 12]), key=0).randn((5, 3, 2), like)   # 5 samples
        >>> zs.shape, torch.equal(zs[0], z)
        (torch.Size([5, 3, 2]), True)
        >>> later = ExampleNoise(torch.tensor([10, 11, 12]), key=0, first_sample=2).randn((3, 3, 2), like)
        >>> torch.equal(later, zs[2:])                  # samples 2..4, drawn as a chunk of their own
        True
    """

    MAX_SAMPLES = 1 << 20

    def __init__(self, idx: torch.Tensor, key: int, first_sample: int = 0) -> None:
        self.idx, self.key, self.first_sample = idx.to(torch.int64), key, first_sample

    def randn(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of `shape` (B, D) or (n, B, D), B = len(idx), on `like`'s device and dtype.

        Args:
            shape: (B, D) for one sample per example, or (n, B, D) for samples
                first_sample .. first_sample + n - 1.
            like: Any tensor with the device and dtype the noise should have.

        Returns:
            A tensor of `shape`.

        Raises:
            ValueError: B is not the number of examples in `idx`.
        """
        return _example_normal(self, shape, like)

    def _randn(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n, (b, d) = (shape[0] if len(shape) == 3 else 1), shape[-2:]
        if b != len(self.idx):
            raise ValueError(f"noise for {len(self.idx)} examples asked for a batch of {b}")
        dev = like.device
        s = torch.arange(self.first_sample, self.first_sample + n, device=dev)
        c = ((self.idx.to(dev)[None, :, None] * self.MAX_SAMPLES + s[:, None, None]) * d
             + torch.arange(d, device=dev)[None, None, :])  # (n, B, D)
        u1 = 1.0 - counter_uniform(c, 2 * self.key)  # (0, 1]
        u2 = counter_uniform(c, 2 * self.key + 1)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
        return z.reshape(shape).to(like.dtype)


def _eager_example_normal(noise: ExampleNoise, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return noise._randn(shape, like)


_example_normal = _eager_example_normal


def keep_noise_out_of_compile() -> None:
    """Run the noise hash eagerly inside torch.compile'd code (inductor cannot lower its
    64-bit wrap-around constants). Called by training with --compile only: wrapping at
    import would load torch._dynamo (~1 s) in every process."""
    global _example_normal
    _example_normal = torch.compiler.disable(_eager_example_normal)


def normal_noise(shape: tuple[int, ...], like: torch.Tensor, generator=None) -> torch.Tensor:
    """Standard normal noise N(0, I), from torch's random numbers or tied to examples.

    What the library's samplers call for the reparameterisation noise: the noise comes from a
    torch.Generator (or the global RNG when `generator` is None), or is tied to examples when
    `generator` is an ``ExampleNoise``.

    Args:
        shape: The shape of the noise, e.g. (B, D) or (n, B, D) (B the batch); an
            ``ExampleNoise`` takes only these two.
        like: Any tensor with the device and dtype the noise should have.
        generator: A torch.Generator, an ``ExampleNoise`` or None.

    Returns:
        A tensor of `shape` on `like`'s device, in its dtype.

    Examples:
        >>> from vaelab.noise import ExampleNoise, normal_noise
        >>> like = torch.zeros((), dtype=torch.float64)
        >>> eps = normal_noise((4, 2), like, torch.Generator().manual_seed(0))
        >>> eps.shape, eps.dtype
        (torch.Size([4, 2]), torch.float64)
        >>> tied = normal_noise((2, 4, 2), like, ExampleNoise(torch.arange(4), key=3))
        >>> torch.equal(tied[:, 1:], normal_noise((2, 3, 2), like, ExampleNoise(torch.arange(1, 4), key=3)))
        True
    """
    if isinstance(generator, ExampleNoise):
        return generator.randn(tuple(shape), like)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def pixel_uniform(idx: torch.Tensor, numel: int, key: int) -> torch.Tensor:
    """Uniform random numbers in [0, 1) for every pixel of some images, tied to the images.

    Each image gets the same numbers whatever batch, device or process draws them: the
    number for pixel p of image i is ``counter_uniform`` of counter i * numel + p.

    Args:
        idx: The images' indices in their split, (B,) integers.
        numel: The number of values per image, C * H * W.
        key: The stream: other keys give other numbers.

    Returns:
        float32 numbers (B, numel) on `idx`'s device; ``.view(B, C, H, W)`` gives them the
        images' shape.

    Examples:
        >>> from vaelab.noise import pixel_uniform
        >>> u = pixel_uniform(torch.tensor([5, 9]), 6, key=1)
        >>> u.shape, u.dtype
        (torch.Size([2, 6]), torch.float32)
        >>> torch.equal(pixel_uniform(torch.tensor([9]), 6, key=1)[0], u[1])   # image 9 alone: the same
        True
    """
    counters = idx.to(torch.int64)[:, None] * numel + torch.arange(numel, device=idx.device)
    return counter_uniform(counters, key)
