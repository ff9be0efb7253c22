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

_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _i64(v: int) -> int:
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(counters: torch.Tensor, key: int) -> torch.Tensor:
    """U[0, 1) numbers, one per int64 counter, float32 of the counters' shape.

    The splitmix64 finaliser (Steele et al. 2014) of counter + (key + 1) * golden ratio:
    a number depends only on (key, counter), not on the batch, device or process that
    draws it. 24 random bits each (float32's mantissa).
    """
    x = counters + _i64((key + 1) * _GOLDEN)
    x = (x ^ _lsr(x, 30)) * _i64(_M1)
    x = (x ^ _lsr(x, 27)) * _i64(_M2)
    x = x ^ _lsr(x, 31)
    return _lsr(x, 40).to(torch.float32) * 2.0**-24


class ExampleNoise:
    """Standard normal noise tied to examples: the number for (example `idx[b]`, sample s,
    dimension d) depends only on those and `key`, so a data-parallel run on N processes,
    or an evaluation sharded or chunked any way, draws exactly what one process draws.
    Box-Muller on two counter-based uniforms. `first_sample` offsets s (chunks of k)."""

    MAX_SAMPLES = 1 << 20

    def __init__(self, idx: torch.Tensor, key: int, first_sample: int = 0) -> None:
        self.idx, self.key, self.first_sample = idx.to(torch.int64), key, first_sample

    def randn(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Noise of `shape` (B, D) or (n, B, D), B = len(idx), on `like`'s device and dtype."""
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
    """N(0, I) noise of `shape`: from a torch.Generator (or the global RNG), or tied to
    examples when `generator` is an :class:`ExampleNoise`."""
    if isinstance(generator, ExampleNoise):
        return generator.randn(tuple(shape), like)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def pixel_uniform(idx: torch.Tensor, numel: int, key: int) -> torch.Tensor:
    """U[0, 1) numbers for pixels 0..numel-1 of images `idx` (B,) -> (B, numel), float32:
    each image gets the same numbers whatever batch, device or process draws them."""
    counters = idx.to(torch.int64)[:, None] * numel + torch.arange(numel, device=idx.device)
    return counter_uniform(counters, key)
