"""Process-level settings: device choice, malloc tuning, the torchrun process group, precision,
progress bars and progress lines."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

_TUNED = False


def tune_malloc() -> bool:
    """Keep freed activation memory in the process instead of returning it to the OS.

    PyTorch's CPU allocator does not cache, and glibc serves every block over 128 KiB
    with a fresh mmap that is zeroed page by page on first touch. A VAE step allocates
    a few such blocks per layer, so elementwise ops ran 3-7x slower than on warm memory
    (IS evaluation 131 s -> 75 s, batch-1024 training +12% on 2 EPYC cores).
    Raising glibc's mmap and trim thresholds keeps those pages mapped. Idempotent; a
    no-op off glibc. Returns whether the settings were applied.
    """
    global _TUNED
    # Denormal floats (< 1e-38) appear in trained weights and Adam moments and make x86
    # arithmetic on them 10-100x slower: a trained conv step took 1.2 s instead of 0.6 s.
    torch.set_flush_denormal(True)
    if _TUNED or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        _TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        _TUNED = False
    return _TUNED


class DeviceError(RuntimeError):
    """The asked-for device cannot be used (no CUDA, an index out of range, ...)."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (for run folders and benchmark reports)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- progress bars


def _jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False


def bar_redraws() -> bool:
    """Whether a progress bar can redraw in place: stderr is a terminal, or this is a
    Jupyter kernel (tqdm.auto draws a widget there). Written to a log file (CI, nohup,
    `!vaelab ...` in a notebook) every redraw would add a carriage-return line."""
    return _isatty(sys.stderr) or _jupyter()


def progress_lines() -> bool:
    """Whether long work should also print plain progress lines on stdout: when stdout goes
    to a file or a pipe (a log followed with `tail -f`) or no bar can be drawn; never in
    Jupyter, whose bar is a widget."""
    return not _jupyter() and (not _isatty(sys.stdout) or not bar_redraws())


def progress_bar(iterable=None, *, show: bool = True, **kwargs):
    """A tqdm.auto bar, disabled unless `show` and it can redraw in place (`bar_redraws`).
    Keyword arguments go to tqdm (desc, total, unit, leave...)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (show and bar_redraws()), dynamic_ncols=True, **kwargs)


# Progress lines for logs: the first FIRST_LINE_S seconds after the work starts, then one
# every LINE_S seconds; a log followed with `tail -f` then tells a slow job from a hung one.
FIRST_LINE_S, LINE_S = 5.0, 30.0


class ProgressLine:
    """Plain progress lines on stdout for long work, the log's counterpart of the bar:
    "scoring mnist test: 2,048/10,000 images  85 images/s  ETA 1:33", the first FIRST_LINE_S
    seconds after the start, then every LINE_S seconds, never at the end (the result follows).

    Lines print only when `show` (not --quiet), `progress_lines()` (stdout is a file or a
    pipe, and this is not Jupyter) and on rank 0 of a torchrun job; otherwise the object
    only counts. `bar`, a `progress_bar`, is updated and closed with it. `clock` is
    replaceable, so tests need no real waiting; training's ProgressLog shares it."""

    clock = staticmethod(time.monotonic)

    def __init__(self, what: str, total: int, unit: str = "images", show: bool = True, bar=None) -> None:
        self.what, self.total, self.unit, self.bar = what, total, unit, bar
        self.show = show and progress_lines() and os.environ.get("RANK", "0") == "0"
        self.done = 0
        self.restart()

    def restart(self) -> None:
        """Time from now: the next line is due FIRST_LINE_S seconds later."""
        self.start = self.clock() if self.show else 0.0
        self.next_line = self.start + FIRST_LINE_S

    def due(self) -> float | None:
        """The time now when a line is due (the one after is then LINE_S later), else None."""
        now = self.clock()
        if now < self.next_line:
            return None
        self.next_line = now + LINE_S
        return now

    def update(self, n: int = 1) -> None:
        """`n` more of the `total` done; prints a line when one is due."""
        if self.bar is not None:
            self.bar.update(n)
        self.done += n
        if not self.show or self.done >= self.total:
            return
        now = self.due()
        if now is not None and self.done > 0:
            rate = self.done / max(now - self.start, 1e-9)
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
            print(f"{self.what}: {self.done:,}/{self.total:,} {self.unit}  {shown} {self.unit}/s  "
                  f"ETA {clock_time((self.total - self.done) / rate)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clock_time(seconds: float) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun).

    Only rank 0 writes files; the helpers below are no-ops in a single process."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over all processes, in place."""
        if self.active:
            torch.distributed.all_reduce(t)
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on any process (every process gets the same answer)."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def shard(self, n: int) -> tuple[int, int]:
        """This process's contiguous share [start, stop) of n rows (sizes differ by at most 1)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather_rows(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every process's shard (see `shard`) of an n-row tensor, in rank order.
        When `t` needs a gradient, the gather is differentiable: each process receives the
        gradient that every process's use of its rows produced (summed), as in one process."""
        if not self.active:
            return t
        sizes = [Dist(r, self.world).shard(n) for r in range(self.world)]
        width = max(b - a for a, b in sizes)
        padded = torch.cat([t, t.new_zeros(width - len(t), *t.shape[1:])])
        if t.requires_grad and torch.is_grad_enabled():
            from torch.distributed.nn.functional import all_gather

            parts = all_gather(padded)
        else:
            parts = [torch.empty_like(padded) for _ in range(self.world)]
            torch.distributed.all_gather(parts, padded)
        return torch.cat([p[: b - a] for p, (a, b) in zip(parts, sizes)])

    def batch_peers(self, n: int):
        """The `peers` argument of the objectives for a global batch of n rows that this
        process holds its shard of: None in a single process. One function per (process,
        n), so a compiled training step sees the same argument at every step."""
        return _batch_peers(self, n) if self.active else None


@functools.cache
def _batch_peers(dist: Dist, n: int):
    start = dist.shard(n)[0]
    return lambda t: (dist.gather_rows(t, n), start)


def distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job this process belongs to, if any (NCCL on CUDA, gloo on CPU;
    one GPU per process, by LOCAL_RANK), and return its Dist and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return Dist(), resolve_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world), dev


def leave_process_group() -> bool:
    """Shut this process's torchrun process group down, if it joined one; True if it did.

    The caller (the command line) then ends the process with ``os._exit``: in interpreter
    teardown, threads that gloo or the autograd engine started can still try to take the
    GIL, and one that finds the interpreter gone aborts the process ("terminate called
    without an active exception"; seen in about one full test-suite run in three on 2 CPUs)
    after the work is done, which torchrun reports as a failed job."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    torch.distributed.destroy_process_group()
    return True


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_bf16() -> str | None:
    """The bf16 matrix instructions of this CPU, as /proc/cpuinfo names them: "amx_bf16"
    (Intel AMX tiles), "avx512_bf16" (AVX-512 BF16 dot products), or None."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    except OSError:
        pass
    return None


def autocast_dtype(precision: str, device: torch.device, conv: bool = False) -> torch.dtype | None:
    """The autocast dtype for the networks, or None for fp32. auto: bf16 on GPUs that
    support it; on CPUs, bf16 for conv nets when the CPU has bf16 instructions (AMX or
    AVX512-BF16: oneDNN's bf16 convolutions trained the colour recipe's net 1.3-1.6x faster
    on a 2-core AVX512-BF16 EPYC, docs/colour.md), else fp32. MLPs stay fp32 on CPUs: bf16
    matmuls at MNIST's batch sizes were slower without AMX (docs/benchmarks.md)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if conv and cpu_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
