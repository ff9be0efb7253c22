"""Process-level settings: device choice, malloc tuning, threads, the torchrun process group, precision,
progress bars and progress lines, and stop signals taken at safe points."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ----------------------------------------------------------------------------- threads
#
# A torch process runs one intra-op thread per core by default. Two such processes on the
# same cores wait on each other at every parallel region: on 2 cores, two colour trainings
# of 2 threads each ran at 0.25x their solo speed, two of 1 thread each at 0.68x (together
# more than one alone), and OMP_WAIT_POLICY=PASSIVE made it worse (0.04x). So each vaelab
# process doing torch work takes its share of the CPUs it may use, shared with the other
# vaelab processes of the same user, and re-checks that share while it runs.

# a process registered "on demand" (vaelab serve) counts as a peer only this long after
# its last piece of work: an idle explorer page takes no share from a training beside it
ON_DEMAND_WINDOW_S = 20.0


def cgroup_cpus(root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when unlimited.

    Read from cgroup v2's ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for none) or cgroup
    v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1 for none) under `root`.

    Examples:
        >>> cgroup_cpus(tmp)  # a folder with neither file: no quota
        >>> _ = (Path(tmp) / "cpu.max").write_text("150000 100000\\n")
        >>> cgroup_cpus(tmp)
        1.5
    """
    root = Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu", "."):
        try:
            quota = int((root / sub / "cpu.cfs_quota_us").read_text())
            period = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def usable_cpus(affinity: set[int] | None = None, cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

    A quota of 1.5 CPUs gives 1: a thread beyond the quota is throttled for the rest of each
    scheduling period, and every other thread of a parallel region waits for it.

    Args:
        affinity: the CPU set (default ``os.sched_getaffinity(0)``, or ``os.cpu_count()``
            where the system has no affinity call).
        cgroup: the cgroup file-system root to read the quota from (see `cgroup_cpus`).

    Returns:
        A count of CPUs, at least 1.

    Examples:
        >>> usable_cpus({0, 1, 2, 3}, cgroup=tmp)
        4
        >>> _ = (Path(tmp) / "cpu.max").write_text("250000 100000\\n")
        >>> usable_cpus({0, 1, 2, 3}, cgroup=tmp)
        2
    """
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # macOS, Windows
            affinity = set(range(os.cpu_count() or 1))
    n = len(affinity)
    quota = cgroup_cpus(cgroup)
    if quota is not None:
        n = min(n, math.floor(quota + 1e-9))
    return max(1, n)


def registry_folder() -> Path:
    """The folder where this user's vaelab processes doing torch work register (one file each)."""
    try:
        user = str(os.getuid())
    except AttributeError:  # Windows
        user = os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"vaelab-{user}" / "processes"


def _start_time(pid: int) -> str | None:
    """When process `pid` started (/proc/PID/stat field 22, in clock ticks since boot); None
    where it is gone or there is no /proc. A reused pid has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return stat.rsplit(")", 1)[1].split()[19]  # fields from 3 (state) on, after the command name
    except IndexError:
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process an entry names still runs: the pid exists and, where /proc tells
    start times, started when the entry says (not a later process given the same pid)."""
    if Path("/proc/self/stat").exists():
        now = _start_time(pid)
        return now is not None and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _job() -> str | None:
    """The torchrun job this process belongs to (its workers on this machine share it), or None."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) <= 1:
        return None
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}@{os.environ.get('MASTER_ADDR', '')}:" \
        f"{os.environ.get('MASTER_PORT', '')}"


def register(folder: str | Path | None = None, *, on_demand: bool = False) -> Path | None:
    """Enter this process in the registry that other vaelab processes count; returns the
    entry (remove it with `unregister`), or None when the folder cannot be written.

    on_demand: a process that works only when asked (``vaelab serve``): it counts for
    `ON_DEMAND_WINDOW_S` seconds after each `touch` of its entry.

    Examples:
        >>> entry = register(tmp)
        >>> entry.name == str(os.getpid()), count_peers(tmp)  # oneself is not a peer
        (True, 0)
        >>> unregister(entry)
    """
    folder = Path(folder) if folder is not None else registry_folder()
    entry = folder / str(os.getpid())
    info = {"started": _start_time(os.getpid()), "on_demand": on_demand, "job": _job()}
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, entry)
    except OSError:
        return None
    if on_demand:  # idle until its first piece of work
        try:
            os.utime(entry, (0, 0))
        except OSError:
            pass
    return entry


def unregister(entry: Path | None) -> None:
    """Remove a registry entry made by `register` (nothing when it is None or gone)."""
    if entry is not None:
        try:
            entry.unlink()
        except OSError:
            pass


def count_peers(folder: str | Path | None = None, *, now: float | None = None) -> int:
    """How many other vaelab processes doing torch work are running: the live entries of the
    registry, without this process and its own torchrun job. Entries of processes that are
    gone (or whose pid now belongs to another process) are removed.

    Examples:
        >>> count_peers(tmp)
        0
    """
    folder = Path(folder) if folder is not None else registry_folder()
    now = time.time() if now is None else now
    me, job = os.getpid(), _job()
    try:
        entries = [p for p in folder.iterdir() if p.name.isdigit()]
    except OSError:
        return 0
    peers = 0
    for p in entries:
        pid = int(p.name)
        if pid == me:
            continue
        try:
            info = json.loads(p.read_text())
            mtime = p.stat().st_mtime
        except (OSError, ValueError):
            continue  # being written or removed just now
        if not isinstance(info, dict) or not _alive(pid, info.get("started")):
            unregister(p)
            continue
        if job is not None and info.get("job") == job:
            continue  # a worker of this job: counted by the local world size
        if info.get("on_demand") and now - mtime > ON_DEMAND_WINDOW_S:
            continue
        peers += 1
    return peers


def _env_threads(env) -> int | None:
    """OMP_NUM_THREADS when the user set it: a positive integer, and not the 1 that torchrun
    gives each of several workers when the user set nothing."""
    try:
        n = int(env.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    if n <= 0:
        return None
    torchrun_default = n == 1 and int(env.get("LOCAL_WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in env
    return None if torchrun_default else n


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count a process uses and why.

    Attributes:
        threads: the torch intra-op threads.
        cpus: the CPUs the process may use (affinity and cgroup quota).
        peers: other vaelab processes counted (auto only; the siblings of a torchrun job included).
        reason: ``auto``, ``asked`` (the threads setting) or ``OMP_NUM_THREADS`` (set by the user).

    Examples:
        >>> ThreadChoice(1, 2, 1, "auto").line()
        'threads: 1 of 2 CPUs (1 other vaelab process running)'
        >>> ThreadChoice(2, 2, 0, "auto").record()
        {'threads': 2, 'cpus': 2, 'other_processes': 0, 'reason': 'auto'}
    """

    threads: int
    cpus: int
    peers: int
    reason: str

    def line(self) -> str:
        """The one line said when work starts."""
        if self.reason == "asked":
            why = "as asked with --threads"
        elif self.reason == "OMP_NUM_THREADS":
            why = "OMP_NUM_THREADS is set"
        elif self.peers:
            why = f"{self.peers} other vaelab process{'es' if self.peers > 1 else ''} running"
        else:
            why = "no other vaelab process running"
        return f"threads: {self.threads} of {self.cpus} CPUs ({why})"

    def record(self) -> dict[str, Any]:
        """The choice as run.json records it."""
        return {"threads": self.threads, "cpus": self.cpus, "other_processes": self.peers, "reason": self.reason}


def choose_threads(requested: int = 0, *, cpus: int | None = None, peers: int | None = None,
                   env=None) -> ThreadChoice:
    """This process's intra-op thread count.

    In order: `requested` when positive (the ``threads`` setting, ``--threads``); else
    ``OMP_NUM_THREADS`` when the user exported it; else the fair share of the usable CPUs,
    ``cpus // (processes)``, where the processes are this one (or its torchrun job's
    workers on this machine) and the other vaelab processes running, and at least 1.

    Args:
        requested: the threads asked for; 0 chooses.
        cpus: the usable CPUs (default `usable_cpus`).
        peers: other vaelab processes (default `count_peers`).
        env: the environment (default ``os.environ``).

    Examples:
        >>> choose_threads(cpus=4, peers=1, env={}).threads
        2
        >>> choose_threads(3, cpus=4, peers=1, env={}).threads
        3
        >>> choose_threads(cpus=4, peers=0, env={"OMP_NUM_THREADS": "1"}).reason
        'OMP_NUM_THREADS'
    """
    env = os.environ if env is None else env
    cpus = usable_cpus() if cpus is None else cpus
    if requested > 0:
        return ThreadChoice(requested, cpus, 0, "asked")
    omp = _env_threads(env)
    if omp is not None:
        return ThreadChoice(omp, cpus, 0, "OMP_NUM_THREADS")
    local = int(env.get("LOCAL_WORLD_SIZE", "1")) if "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env else 1
    peers = count_peers() if peers is None else peers
    return ThreadChoice(max(1, cpus // (max(1, local) + peers)), cpus, peers + max(1, local) - 1, "auto")


_ACTIVE: list[ThreadPolicy] = []  # the policies in force in this process, innermost last


class ThreadPolicy:
    """This process's share of the CPUs while a piece of work runs: a context manager.

    On entry it registers the process (so that other vaelab processes count it), chooses
    the thread count (`choose_threads`) and sets it; `check`, called often (every step),
    re-counts the other processes every `interval` seconds and changes the thread count
    when the fair share changed, so a training that was alone shrinks when a second one
    starts and grows back when it ends. On exit the entry is removed and the thread count
    the process had before is restored (a notebook kernel keeps its own setting).

    Inside another policy (a command calling another), a policy asking for nothing leaves
    the outer one in charge.

    Args:
        requested: the threads asked for (0: choose, and follow the other processes).
        on_demand: the process works only when asked (``vaelab serve``; see `register`).
        interval: seconds between two counts of the other processes.
        clock: a monotonic clock in seconds (injectable for tests).
        folder: the registry folder (default `registry_folder`).
        cpus: the usable CPUs (default `usable_cpus`).

    Examples:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with ThreadPolicy(1, folder=tmp) as policy:
        ...     policy.choice.threads, torch.get_num_threads()
        (1, 1)
        >>> torch.get_num_threads() == before
        True
    """

    def __init__(self, requested: int = 0, *, on_demand: bool = False, interval: float = 5.0, clock=time.monotonic,
                 folder: str | Path | None = None, cpus: int | None = None) -> None:
        self.requested, self.on_demand, self.interval, self.clock = requested, on_demand, interval, clock
        self.folder = Path(folder) if folder is not None else registry_folder()
        self.cpus = cpus
        self.choice: ThreadChoice | None = None
        self.entry: Path | None = None
        self.inherited = False
        self._last = self._touched = -math.inf

    def __enter__(self) -> ThreadPolicy:
        import torch

        self.previous = torch.get_num_threads()
        outer = _ACTIVE[-1] if _ACTIVE else None
        self.inherited = outer is not None and self.requested <= 0
        if self.inherited:
            self.choice = outer.choice
        else:
            if outer is None:
                self.entry = register(self.folder, on_demand=self.on_demand)
            self.cpus = usable_cpus() if self.cpus is None else self.cpus
            self.choice = self._choose()
            torch.set_num_threads(self.choice.threads)
            self._last = self.clock()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        _ACTIVE.remove(self)
        unregister(self.entry)
        self.entry = None
        torch.set_num_threads(self.previous)

    def _choose(self) -> ThreadChoice:
        return choose_threads(self.requested, cpus=self.cpus, peers=count_peers(self.folder))

    @property
    def follows(self) -> bool:
        """Whether the thread count follows the other processes (it was not asked for)."""
        return not self.inherited and self.choice is not None and self.choice.reason == "auto"

    def check(self, force: bool = False) -> ThreadChoice | None:
        """Re-count the other processes when `interval` seconds have passed (or `force`) and
        set the new fair share; returns the new choice when the thread count changed."""
        if self.on_demand:
            self.touch()
        if not self.follows or (not force and self.clock() - self._last < self.interval):
            return None
        import torch

        self._last = self.clock()
        new = self._choose()
        changed = new.threads != self.choice.threads
        self.choice = new
        if changed:
            torch.set_num_threads(new.threads)
        return new if changed else None

    def touch(self) -> None:
        """Mark an on-demand process busy now (at most once a second)."""
        if self.entry is None or self.clock() - self._touched < 1.0:
            return
        self._touched = self.clock()
        try:
            os.utime(self.entry)
        except OSError:
            pass


@contextlib.contextmanager
def command_threads(command: str, threads: int, *, say: bool = True):
    """The threads of one ``vaelab`` command while it runs, `threads` as its ``--threads``
    asks: a [ThreadPolicy][vaelab.runtime.ThreadPolicy], its choice said in one line when
    `say`. compare only waits on its runs, which count themselves and get ``--threads``
    through the environment (OMP_NUM_THREADS); serve counts only while it answers requests,
    and says nothing (its first line is the page's address)."""
    if command == "compare":
        before = os.environ.get("OMP_NUM_THREADS")
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
        try:
            yield
        finally:
            if threads and before is None:
                del os.environ["OMP_NUM_THREADS"]
            elif threads:
                os.environ["OMP_NUM_THREADS"] = before
        return
    with ThreadPolicy(threads, on_demand=command == "serve") as policy:
        if say and command != "serve":
            print(policy.choice.line(), flush=True)
        yield


def rebalance_threads(force: bool = False) -> ThreadChoice | None:
    """`ThreadPolicy.check` of the policy in force in this process, if any: long loops
    (evaluation, scoring, the web explorer's work) call it every batch; it costs a clock
    read between counts.

    Examples:
        >>> rebalance_threads() is None  # no policy in force
        True
    """
    return _ACTIVE[-1].check(force) if _ACTIVE else None


def active_threads() -> ThreadChoice | None:
    """The thread choice of the policy in force in this process, or None outside one.

    Examples:
        >>> active_threads() is None
        True
    """
    return _ACTIVE[-1].choice if _ACTIVE else None


def cpu_budget() -> int:
    """The CPUs this process's work may keep busy at once: the threads of the policy in
    force, else this process's fair share now. Decoding worker processes take it in place
    of ``os.cpu_count()``.

    Examples:
        >>> cpu_budget() >= 1
        True
    """
    if _ACTIVE:
        return _ACTIVE[-1].choice.threads
    return choose_threads().threads


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


# what gloo and NCCL say when another process of the job is gone
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused",
              "NCCL communicator was aborted", "remote process exited", "Socket Timeout")


def lost_peer(e: RuntimeError) -> bool:
    """Whether `e` is a collective failing because another process of a torchrun job died."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(p in str(e) for p in _PEER_GONE)


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


class StopSignals:
    """While entered, SIGINT (Ctrl-C) and SIGTERM (what schedulers send) only set a flag that
    a loop checks at its safe points (`requested`), so no file is left half written; a second
    Ctrl-C interrupts at once. Only installed in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, dist: Dist, device: torch.device) -> bool:
        """Whether any process got a signal (a collective under torchrun: every process calls
        it at the same step, so all stop together); then `signum` is set in every process."""
        if dist.any(self.signum is not None, device):
            self.signum = self.signum or signal.SIGTERM
            return True
        return False

    @property
    def name(self) -> str:
        """The signal's name, such as SIGTERM."""
        return signal.Signals(self.signum).name


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
