"""Splits -> device batches, the model's view of the data.

One path for every source: uint8 images (in memory, or rows of the on-disk cache) are
gathered per batch and only then turned into floats on the training device:
binarised, scaled to grey levels or dequantised. No float copy of a whole split exists.

- **Resident**: a split whose uint8 images fit the memory budget lives as one tensor on
  the device; a batch is one ``index_select``.
- **Streamed**: a larger split stays on disk; a background thread reads each batch's
  rows in sorted order (pinned memory for CUDA) while the previous batch trains.

Both take the same permutation from a CPU generator and the same noise from a device
generator, so they give the same batches for the same seed. Noise that must be the
same every time an image is used (``fixed`` binarisation, the test set binarised or
dequantised once) is a counter-based hash of (key, image index, pixel): it does not
depend on the batch an image lands in, the device or the path.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data import Split, read_rows
from vaelab.noise import pixel_uniform
from vaelab.runtime import Dist

__all__ = ["Feed", "as_input", "Batches", "Loading", "Batch", "SplitInputs", "model_inputs"]

# ----------------------------------------------------------------------------- sources


def memory_budget(d: DataConfig, device: torch.device) -> int:
    """Bytes of uint8 images a split may take to be held on `device` (DataConfig.memory_budget_mb)."""
    if d.memory_budget_mb:
        return d.memory_budget_mb << 20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError):
        return 4 << 30


# ----------------------------------------------------------------------------- uint8 -> model input

TRAIN_KEY, TEST_KEY = 0, 1  # noise streams of the fixed binarisation per split


def binarization_key(seed: int, split_key: int) -> int:
    """The counter-noise key of a split's once-drawn binarisation (or dequantisation)."""
    return seed * 4 + split_key


@dataclass(frozen=True)
class Feed:
    """How uint8 images become what a model reads (``as_input``, ``Batches``, ``SplitInputs``).

    Attributes:
        binarization: ``"dynamic"`` or ``"fixed"`` (x ~ Bernoulli(pixel / 255)), or ``"none"``
            (grey levels).
        dequantize: With ``"none"``: add uniform noise, (pixel + u) / 256, for density
            likelihoods; ignored when binarising.

    Examples:
        >>> from vaelab.batches import Feed
        >>> Feed("none", dequantize=True).dequantize, Feed("dynamic", dequantize=True).dequantize
        (True, False)
    """

    binarization: str = "dynamic"
    dequantize: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dequantize", self.dequantize and self.binarization == "none")


def as_input(u8: torch.Tensor, feed: Feed, *, generator: torch.Generator | None = None,
             idx: torch.Tensor | None = None, key: int = 0, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Turn uint8 images into what a model reads: binarised, grey levels or dequantised floats.

    ``dynamic``/``fixed``: x ~ Bernoulli(pixel / 255); grey levels (``none``): pixel / 255,
    or dequantised (density likelihoods) (pixel + u) / 256, u ~ U(0, 1). The noise
    comes from `generator`, or, when `idx` is given, from ``vaelab.noise.pixel_uniform`` keyed
    by `key` (the same every time an image is used).

    Args:
        u8: uint8 images (B, C, H, W), pixels 0..255.
        feed: The binarisation, and whether grey levels are dequantised (a ``Feed``).
        generator: The torch.Generator of the noise (None: torch's global random state).
        idx: The images' indices in their split (B,): noise tied to each image instead.
        key: The stream of the tied noise.
        rows: (total, offset): the generator draws noise for `total` images and this batch
            takes rows offset.. of it, so every process of a data-parallel job draws what a
            single process would.

    Returns:
        float32 model input (B, C, H, W) in [0, 1], on u8's device.

    Raises:
        ValueError: An unknown `binarization`.

    Examples:
        >>> from vaelab.batches import Feed, as_input
        >>> u8 = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)     # (1, 1, 1, 3)
        >>> as_input(u8, Feed("none"))
        tensor([[[[0.0000, 0.5020, 1.0000]]]])
        >>> sorted(as_input(u8, Feed("dynamic")).unique().tolist())   # binary: 0 or 1
        [0.0, 1.0]
        >>> a = as_input(u8, Feed("fixed"), idx=torch.tensor([4]), key=0)
        >>> torch.equal(a, as_input(u8, Feed("fixed"), idx=torch.tensor([4]), key=0))   # image 4: always alike
        True
        >>> x = as_input(u8, Feed("none", dequantize=True), idx=torch.tensor([0]), key=1)   # (pixel + u) / 256
        >>> bool(((x * 256).floor() == u8).all())
        True
    """
    binarization = feed.binarization
    if binarization == "none" and not feed.dequantize:
        return u8.float().div_(255.0)
    shape = u8.shape
    if idx is not None:
        u = pixel_uniform(idx, int(np.prod(shape[1:])), key).view(shape)
    else:
        total, offset = rows or (shape[0], 0)
        u = torch.rand((total, *shape[1:]), generator=generator, device=u8.device)[offset : offset + shape[0]]
    if binarization == "none":
        return u8.float().add_(u).div_(256.0)
    if binarization in ("dynamic", "fixed"):
        return (u < u8.float().div_(255.0)).float()
    raise ValueError(f"unknown binarization {binarization!r}; choose dynamic, fixed or none")


# ----------------------------------------------------------------------------- training batches


class Batch(NamedTuple):
    """One training batch as ``Batches`` yields it: inputs, labels, conditions, indices.

    Attributes:
        x: Float model input (B, C, H, W): this process's rows of the global batch.
        labels: int64 labels (B,); -1 for unlabelled images.
        cond: Conditions (B, C') for conditional models, or None.
        idx: The images' indices in their split (B,).
        size: The number of images in the global batch (all processes).

    Examples:
        >>> from vaelab.batches import Batch
        >>> b = Batch(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), None, torch.arange(4), 4)
        >>> b.x.shape, b.size
        (torch.Size([4, 1, 28, 28]), 4)
    """

    x: torch.Tensor  # (b, C, H, W) model input, this process's rows of the global batch
    labels: torch.Tensor  # (b,)
    cond: torch.Tensor | None  # (b, C') or None
    idx: torch.Tensor  # (b,) indices of the images in the split
    size: int  # images in the global batch (all processes)


@dataclass(frozen=True)
class Loading:
    """How ``Batches`` draws a split's batches and where it keeps the images.

    Attributes:
        seed: The seed of the order and of the dynamic binarisation or dequantisation noise
            (fixed binarisation uses `fixed_key`).
        shuffle: A new random order each epoch (False: the split's order).
        resident: Hold the uint8 images on the device (True) or stream them from disk (False);
            None decides by the split's size against `budget` bytes.
        budget: Bytes of uint8 images that may be held on the device.
        prefetch: Batches read ahead when streaming.
        fixed_key: The noise key of ``fixed`` binarisation.
        rank: This process's number in a data-parallel job of `world` processes: every
            process draws the same global batch and keeps its contiguous slice.
        world: The number of processes.

    Examples:
        >>> from vaelab.batches import Loading
        >>> Loading(seed=3).shuffle, Loading(seed=3, rank=1, world=2).world
        (True, 2)
    """

    seed: int = 0
    shuffle: bool = True
    resident: bool | None = None
    budget: int = 4 << 30
    prefetch: int = 3
    fixed_key: int = 0
    rank: int = 0
    world: int = 1


class Batches:
    """Mini-batches of one split for training: iterate once per epoch to get ``Batch`` es.

    Every image is used once per epoch (the last batch may be smaller). ``dynamic``
    binarisation and dequantisation draw fresh noise per batch; ``fixed`` uses each
    image's own counter-based noise, the same every epoch. The order and noise come from
    the seed of `loading`, so a split held in memory and one streamed from disk give the
    same batches.

    Args:
        split: The split (``vaelab.data.Split``); images (N, C, H, W) uint8.
        batch_size: Images per global batch.
        feed: The binarisation, and whether grey levels are dequantised (a ``Feed``).
        device: Where the batches go.
        cond: Conditions (N, C') to hand out with the images, or None.
        loading: The seed, order, memory budget, streaming and this process's share (a
            ``Loading``; None: its defaults).

    Examples:
        >>> from vaelab.batches import Batches, Feed, Loading
        >>> from vaelab.data import Split
        >>> split = Split(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.arange(10) % 3)
        >>> batches = Batches(split, 4, Feed("dynamic"), "cpu", loading=Loading(seed=0))
        >>> len(batches), [b.x.shape[0] for b in batches]          # one epoch
        (3, [4, 4, 2])
        >>> b = next(iter(batches))
        >>> b.x.shape, b.x.dtype, b.labels.shape, b.size
        (torch.Size([4, 1, 28, 28]), torch.float32, torch.Size([4]), 4)
    """

    def __init__(self, split: Split, batch_size: int, feed: Feed, device: torch.device | str,
                 cond: torch.Tensor | None = None, loading: Loading | None = None) -> None:
        o = loading or Loading()
        self.device = torch.device(device)
        self.dist = Dist(o.rank, o.world)
        self.batch_size, self.feed, self.shuffle = batch_size, feed, o.shuffle
        self.fixed_key, self.prefetch = o.fixed_key, o.prefetch
        self.n = len(split)
        resident = split.nbytes <= o.budget if o.resident is None else o.resident
        self.resident = resident
        self.images = split.to(self.device).images if resident else split.images
        if not resident and split.in_memory:
            self.images = split.images.cpu()
        self.labels = split.labels.to(self.device)
        self.cond = None if cond is None else cond.to(self.device)
        self.order_generator = torch.Generator().manual_seed(o.seed)  # CPU: the same order on any device
        self.generator = torch.Generator(device=self.device).manual_seed(o.seed)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def _order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.n, generator=self.order_generator)
        return torch.arange(self.n)

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 rows `idx` from memory or the cache file, on the CPU (pinned for CUDA)."""
        rows = read_rows(self.images, idx)
        return rows.pin_memory() if self.device.type == "cuda" else rows

    def _streamed(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(cpu idx of the global batch, uint8 rows of this process's slice) per batch,
        read ahead by a background thread."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            try:
                for i in range(len(self)):
                    if stop.is_set():
                        return
                    idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                    a, b = self.dist.shard(len(idx))
                    q.put((idx, self._read(idx[a:b])))
                q.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                q.put(e)

        thread = threading.Thread(target=work, daemon=True, name="vaelab-prefetch")
        thread.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    def __iter__(self) -> Iterator[Batch]:
        order = self._order()
        if self.resident:
            order_dev = order.to(self.device)
            source = ((order_dev[i * self.batch_size : (i + 1) * self.batch_size], None) for i in range(len(self)))
        else:
            source = self._streamed(order)
        for gidx, rows in source:
            a, b = self.dist.shard(len(gidx))
            idx = gidx[a:b].to(self.device, non_blocking=True)
            u8 = self.images.index_select(0, idx) if rows is None else rows.to(self.device, non_blocking=True)
            fixed = self.feed.binarization == "fixed"
            x = as_input(u8, self.feed, generator=self.generator,
                         idx=idx if fixed else None, key=self.fixed_key, rows=(len(gidx), a))
            c = None if self.cond is None else self.cond.index_select(0, idx)
            yield Batch(x, self.labels.index_select(0, idx), c, idx, len(gidx))

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The state of the order and noise generators, for a checkpoint.

        Returns:
            dict: ``{"data_order": ..., "data_noise": ...}``, each generator's state, a uint8 tensor of shape (S,).
        """
        return {"data_order": self.order_generator.get_state(), "data_noise": self.generator.get_state()}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generators from ``rng_state``, so that a resumed run draws the same batches.

        Args:
            state: A dict with uint8 tensors ``data_order`` and ``data_noise`` of shape (S,), as
                ``rng_state`` gives them (other keys ignored); a dict without them leaves the
                generators as they are.
        """
        if "data_order" in state:
            self.order_generator.set_state(state["data_order"])
            self.generator.set_state(state["data_noise"])


# ----------------------------------------------------------------------------- evaluation inputs


class SplitInputs:
    """A split as a model is evaluated on it, read in chunks of rows, the same in any chunking.

    Test images are binarised once (x ~ Bernoulli(pixel/255), as in Burda et al. 2016) or
    dequantised once with noise keyed by (`seed`, image index), or plain grey levels; plus
    conditions (conditional models) and labels. The same rows give the same inputs in any
    chunking. ``model_inputs`` makes one as a trained model needs it.

    Args:
        split: The split (``vaelab.data.Split``); images (N, C, H, W) uint8.
        feed: The binarisation (``"dynamic"`` and ``"fixed"`` both binarise once, ``"none"``
            keeps grey levels), and whether grey levels are dequantised (a ``Feed``).
        seed: The seed of the binarisation or dequantisation noise.
        device: Where the inputs go.
        cond: Conditions (N, C') of the images, or None.
        budget: Bytes of uint8 images that may be held on `device`; a larger split stays where
            it is (CPU memory or the disk cache) and is moved to `device` chunk by chunk.

    Examples:
        >>> from vaelab.batches import Feed, SplitInputs
        >>> from vaelab.data import Split
        >>> split = Split(torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8), torch.arange(10) % 3)
        >>> inputs = SplitInputs(split, Feed("dynamic"), seed=0, device="cpu")
        >>> x, cond, labels = inputs.rows(0, 4)
        >>> len(inputs), x.shape, cond, labels
        (10, torch.Size([4, 1, 28, 28]), None, tensor([0, 1, 2, 0]))
        >>> torch.equal(inputs.rows(2, 4)[0], x[2:])                # rows 2, 3 alike in any chunk
        True
        >>> x4 = inputs.spread(4)[0]                                  # rows 0, 3, 6 and 9
        >>> torch.equal(x4, torch.cat([inputs.rows(i, i + 1)[0] for i in (0, 3, 6, 9)]))
        True
        >>> [x.shape[0] for x, _, _ in inputs.chunks(4)]
        [4, 4, 2]
    """

    def __init__(self, split: Split, feed: Feed, seed: int, device: torch.device | str,
                 cond: torch.Tensor | None = None, budget: int = 4 << 30) -> None:
        self.split, self.feed, self.seed = split, feed, seed
        self.binarization = feed.binarization
        self.device = torch.device(device)
        self.images = split.to(self.device).images if split.nbytes <= budget else split.images
        self.labels = split.labels.to(self.device)
        self.cond = None if cond is None else cond.to(self.device)

    def __len__(self) -> int:
        return len(self.split)

    def index(self, start: int, stop: int) -> torch.Tensor:
        """Indices (B,) of rows [start, stop) on the device (stop clipped to N): keys for per-image noise."""
        return torch.arange(start, min(stop, len(self)), device=self.device)

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The model's inputs for rows [start, stop), always the same for a row.

        Returns:
            (x (B, C, H, W) float32 in [0, 1], conditions (B, C') or None, labels (B,)), where
            B = min(stop, N) - start.
        """
        return self._at(self.index(start, stop))

    def spread(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The model's inputs for `n` rows spread evenly over the split, the first and last
        included: a sample of the whole split (the first rows of a folder are often alike:
        its first files by name), the same every time.

        Returns:
            (x (B, C, H, W) float32 in [0, 1], conditions (B, C') or None, labels (B,)), where
            B = min(n, N); each row as ``rows`` gives it.
        """
        b = min(n, len(self))
        return self._at(torch.linspace(0, len(self) - 1, b).round().long().to(self.device))

    def _at(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        u8 = read_rows(self.images, idx).to(self.device)
        once = Feed("fixed") if self.binarization == "dynamic" else self.feed  # binarised once
        x = as_input(u8, once, idx=idx, key=binarization_key(self.seed, TEST_KEY))
        return x, None if self.cond is None else self.cond[idx], self.labels[idx]

    def chunks(self, size: int = 2000) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """The whole split in chunks of `size` rows, each as ``rows`` gives it.

        Yields:
            (x (B, C, H, W) float32, conditions (B, C') or None, labels (B,)), B <= size.
        """
        for i in range(0, len(self), size):
            yield self.rows(i, i + size)


def model_inputs(model, cfg, split: Split, n_classes: int, device: torch.device | str | None = None,
                 budget: int = 4 << 30) -> SplitInputs:
    """A split's inputs as a trained model is evaluated on them.

    Binarised or dequantised as the model's config and likelihood ask, with conditions for
    a conditional model.

    Args:
        model: A trained vaelab model, e.g. ``run.model``.
        cfg: The config it was trained with, e.g. ``run.config``.
        split: The split (``vaelab.data.Split``); images (N, C, H, W) uint8.
        n_classes: The number of classes, the width of one-hot conditions.
        device: Where the inputs go; None: the model's device.
        budget: Bytes of uint8 images that may be held on the device.

    Returns:
        A ``SplitInputs``.

    Examples:
        >>> from vaelab.batches import model_inputs
        >>> from vaelab.data import load_dataset
        >>> inputs = model_inputs(run.model, run.config, load_dataset("mnist-sample").test.head(100), 10)
        >>> x, cond, labels = inputs.rows(0, 8)
        >>> len(inputs), x.shape, labels.shape
        (100, torch.Size([8, 1, 28, 28]), torch.Size([8]))
    """
    cond = split.conditions(n_classes) if model.conditional else None
    dev = device if device is not None else next(model.parameters()).device
    feed = Feed(cfg.data.binarization, dequantize=not model.likelihood.discrete)
    return SplitInputs(split, feed, cfg.data.binarization_seed, dev, cond, budget)
